import numpy as np
import pytest
from PIL import Image

from tagseg.data.imageio import VOC_PALETTE, colorize, read_image, read_mask, write_mask
from tagseg.errors import DataError


def test_voc_palette_known_colours():
    assert VOC_PALETTE[0].tolist() == [0, 0, 0]
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]  # VOC person
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # VOC void


def test_mask_round_trip_is_a_palette_png(tmp_path):
    mask = np.array([[0, 1, 2], [255, 2, 0]], np.uint8)
    path = tmp_path / "m.png"
    write_mask(path, mask)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_mask(path, 3), mask)
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_rgb_and_16bit_masks_are_read_as_indices(tmp_path):
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    Image.fromarray(colorize(mask)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png", 3), mask)
    Image.fromarray(mask.astype(np.uint16)).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "sixteen.png", 3), mask)


def test_mask_values_outside_class_range_name_the_file(tmp_path):
    write_mask(tmp_path / "bad.png", np.array([[0, 7]], np.uint8))
    with pytest.raises(DataError, match=r"bad\.png: mask values \[7\] are outside the class range 0\.\.2"):
        read_mask(tmp_path / "bad.png", 3)
    Image.fromarray(np.array([[0, 5]], np.uint8) * 9 + 1).convert("RGB").save(tmp_path / "odd.png")
    with pytest.raises(DataError, match="odd.png: RGB mask has colours outside the VOC colour map"):
        read_mask(tmp_path / "odd.png", 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_other_image_modes_are_converted_to_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
        path = tmp_path / "img.png"
    else:
        image = base.convert(mode)
        path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    image.save(path)
    pixels, converted_from = read_image(path)
    assert pixels.shape == (8, 10, 3) and pixels.dtype == np.uint8
    assert converted_from is not None
    if mode == "I;16":
        np.testing.assert_array_equal(pixels[..., 0], rgb[..., 0])  # 16-bit scaled back to 8-bit exactly


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="garbage.jpg: cannot decode image"):
        read_image(tmp_path / "garbage.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: cannot decode image"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="missing.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")
