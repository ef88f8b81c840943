import numpy as np
import pytest
from PIL import Image

from conftest import CLASSES, SHARED_MSRC, random_image, two_region_mask
from tagseg.data.check import check_dataset
from tagseg.data.dataset import VOC_CLASSES, DatasetError, evenly_spaced, open_dataset
from tagseg.data.imageio import write_mask
from tagseg.errors import DataError


def kinds(dataset_or_report):
    return {(p.level, p.kind) for p in dataset_or_report.problems}


def test_voc_layout_samples(make_voc):
    root = make_voc()
    dataset = open_dataset(root, "train")
    assert dataset.format == "voc" and dataset.class_names == CLASSES
    assert dataset.ids == ["a", "b"] and dataset.splits == {"train": 2, "val": 2}
    sample = dataset[1]
    assert sample.id == "b" and sample.labels == (2,)
    assert sample.image.shape == (24, 32, 3) and sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.multi_hot, [0, 1])
    np.testing.assert_array_equal(sample.mask, two_region_mask(cls=2))
    assert len(open_dataset(root)) == 4  # no split: every image


def test_voc_tags_from_annotations_then_masks(make_voc):
    root = make_voc(tags_csv=False)
    assert open_dataset(root, "train").record("a").labels == (1,)  # from the mask
    (root / "Annotations").mkdir()
    for item_id in "abcd":
        (root / "Annotations" / f"{item_id}.xml").write_text(
            "<annotation><object><name>dog</name><part><name>head</name></part></object>"
            "<object><name>cat</name></object></annotation>")
    assert open_dataset(root, "train").record("a").labels == (1, 2)  # from the XML, parts ignored


def test_voc_default_class_names_and_aug_masks(make_voc, tmp_path):
    root = make_voc()
    (root / "classes.txt").unlink()
    (root / "SegmentationClass").rename(root / "SegmentationClassAug")
    (root / "labels.csv").write_text("image,tags\na,aeroplane\nb,bicycle\nc,aeroplane\nd,bicycle\n")
    dataset = open_dataset(root, "val")
    assert dataset.class_names == VOC_CLASSES and dataset.record("c").mask_path.parent.name == "SegmentationClassAug"


def test_folder_layout(make_folder):
    root = make_folder()
    dataset = open_dataset(root)
    assert dataset.format == "folder" and dataset.class_names == ("background", "cat", "dog")
    assert dataset.record("x3").labels == (1, 2)
    assert dataset[2].mask.max() == 2


def test_folder_split_column_and_classes_file(make_folder):
    root = make_folder(with_masks=False)
    (root / "tags.csv").write_text("image,tags,split\nx1.png,cat,train\nx2.png,dog;cat,val\nx3.png,dog,train\n")
    (root / "classes.txt").write_text("background\ndog\ncat\nbird\n")
    dataset = open_dataset(root, "val")
    assert dataset.ids == ["x2"] and dataset.record("x2").labels == (1, 2) and dataset.num_classes == 4
    with pytest.raises(DataError, match="no split 'test'"):
        open_dataset(root, "test")


def test_unknown_tag_duplicate_id_and_missing_image_are_errors(make_folder):
    root = make_folder()
    (root / "tags.csv").write_text("image,tags\nx1.png,cat\nx2.png,dgo\nx1,dog\nx9.png,cat\nx3.png,cat\n")
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    Image.fromarray(random_image()).save(root / "images" / "x3.jpg")  # x3.png exists too
    with pytest.raises(DatasetError) as caught:
        open_dataset(root)
    message = str(caught.value)
    assert "tags.csv: line 3: unknown tag 'dgo'" in message
    assert "tags.csv: line 4: duplicate image id 'x1'" in message
    assert "tags.csv: line 5: image 'x9' not found" in message
    assert "x3.png: duplicate image id 'x3' (also x3.jpg)" in message or "x3.jpg: duplicate image id" in message


def test_check_reports_each_kind_of_bad_input(make_voc):
    root = make_voc({f"i{k}": 1 + k % 2 for k in range(9)}, splits={"train": [f"i{k}" for k in range(9)]})
    (root / "JPEGImages" / "i0.jpg").write_bytes(b"\xff\xd8 corrupt")                       # corrupt image
    data = (root / "JPEGImages" / "i1.jpg").read_bytes()
    (root / "JPEGImages" / "i1.jpg").write_bytes(data[: len(data) // 3])                   # truncated image
    (root / "SegmentationClass" / "i2.png").unlink()                                       # missing mask
    write_mask(root / "SegmentationClass" / "i3.png", np.zeros((10, 10), np.uint8))       # size mismatch
    write_mask(root / "SegmentationClass" / "i4.png", two_region_mask(cls=9))             # out of range
    Image.fromarray(random_image()).convert("L").save(root / "JPEGImages" / "i5.jpg")      # grayscale
    Image.fromarray(random_image()).convert("CMYK").save(root / "JPEGImages" / "i6.jpg")   # CMYK
    csv = (root / "labels.csv").read_text().replace("i7,dog", "i7,").replace("i8,cat", "i8,wolf")
    (root / "labels.csv").write_text(csv)                                                  # no tags, unknown tag
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text(
        "\n".join(f"i{k}" for k in range(9)) + "\ni3\n")                                    # duplicate id
    report = check_dataset([open_dataset(root, "train", strict=False)])
    found = {}
    for p in report.problems:
        found[p.level, p.kind] = found.get((p.level, p.kind), "") + str(p) + "\n"
    assert "i0.jpg: cannot decode image" in found["error", "unreadable image"]
    assert "i1.jpg: cannot decode image" in found["error", "unreadable image"]  # truncated
    assert "i2.jpg: no mask in SegmentationClass/" in found["warning", "missing mask"]
    assert "i3.png: mask is 10x10 but image i3.jpg is 32x24" in found["error", "size mismatch"]
    assert "i4.png: mask values [9] are outside the class range 0..2" in found["error", "bad mask"]
    assert "labels.csv: line 10: unknown tag 'wolf'" in found["error", "unknown tag"]
    assert "i7.jpg: image has no tags" in found["warning", "no tags"]
    assert "train.txt: line 10: duplicate id 'i3'" in found["error", "duplicate id"]
    assert "i5.jpg: L image, read as RGB" in found["warning", "converted image"]
    assert "i6.jpg: CMYK image, read as RGB" in found["warning", "converted image"]


def test_non_ascii_paths_work_and_errors_name_them(make_folder, tmp_path):
    root = make_folder({"chat_é": "cat", "犬": "dog"}, root=tmp_path / "données")
    dataset = open_dataset(root)
    assert sorted(dataset.ids) == ["chat_é", "犬"] and dataset.record("犬").labels == (2,)
    assert dataset[0].image.shape == (24, 32, 3)
    (root / "images" / "犬.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="données/images/犬.png: cannot decode image"):
        dataset.load(dataset.record("犬"))


def test_load_refuses_size_mismatch(make_voc):
    root = make_voc()
    write_mask(root / "SegmentationClass" / "a.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match="a.png: mask is 5x5 but image a.jpg is 32x24"):
        open_dataset(root, "train")[0]


def test_not_a_dataset_and_missing_split(tmp_path, make_voc):
    with pytest.raises(DataError, match="not a dataset"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="no split 'test' .*available: train, val"):
        open_dataset(make_voc(), "test")


@pytest.mark.skipif(not SHARED_MSRC.exists(), reason="needs ../shared/data/msrc-voc")
def test_msrc_voc_benchmark_checks_clean():
    datasets = [open_dataset(SHARED_MSRC, s) for s in ("train", "val")]
    report = check_dataset(datasets, workers=2)
    assert report.split_sizes == {"train": 346, "val": 148}
    assert len(report.class_names) == 15 and not report.problems
    assert report.class_counts["train"]["person"] == 36 and report.class_counts["val"]["person"] == 31


def test_content_key_survives_a_move_and_changes_with_the_tags(make_folder, tmp_path):
    import shutil

    root = make_folder()
    key = open_dataset(root).content_key
    moved = tmp_path / "moved" / "data"
    shutil.copytree(root, moved)
    assert open_dataset(moved).content_key == key
    assert open_dataset(moved).identity() == {"dataset": key, "split": None}
    (moved / "tags.csv").write_text((moved / "tags.csv").read_text().replace("x1.png,cat", "x1.png,dog"))
    assert open_dataset(moved).content_key != key


def test_evenly_spaced_spans_first_to_last_and_keeps_short_lists():
    items = [f"im{i}" for i in range(10)]
    assert evenly_spaced(items, 4) == ["im0", "im3", "im6", "im9"]
    assert evenly_spaced(items, 1) == ["im0"]
    assert evenly_spaced(items, 10) == items and evenly_spaced(items, 25) == items
    assert len(set(evenly_spaced(list(range(346)), 128))) == 128
