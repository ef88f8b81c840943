"""Tests for the procedural synthetic WSSS dataset."""

from __future__ import annotations

import numpy as np
import pytest

from tagseg.data.synthetic import SYNTHETIC_CLASSES, WATER_CLASS, generate_sample

N_SAMPLES = 200
BOAT = SYNTHETIC_CLASSES.index(WATER_CLASS)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate_sample(i, seed=3) for i in range(N_SAMPLES)]


def _tags(mask: np.ndarray) -> set[int]:
    return set(np.unique(mask).tolist()) - {0}


def test_class_list() -> None:
    assert SYNTHETIC_CLASSES[0] == "background"
    assert len(SYNTHETIC_CLASSES) == 7
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert WATER_CLASS in SYNTHETIC_CLASSES[1:]


def test_deterministic_per_seed_and_index() -> None:
    img_a, mask_a = generate_sample(17, seed=5)
    img_b, mask_b = generate_sample(17, seed=5)
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(mask_a, mask_b)


def test_independent_of_generation_order() -> None:
    forward = [generate_sample(i, seed=1)[0] for i in range(5)]
    backward = [generate_sample(i, seed=1)[0] for i in reversed(range(5))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)


def test_different_index_or_seed_changes_image() -> None:
    base = generate_sample(0, seed=0)[0]
    assert not np.array_equal(base, generate_sample(1, seed=0)[0])
    assert not np.array_equal(base, generate_sample(0, seed=1)[0])


@pytest.mark.parametrize("size", [(160, 120), (64, 48), (320, 240), (48, 96)])
def test_shapes_and_dtypes(size: tuple[int, int]) -> None:
    width, height = size
    for index in range(10):
        image, mask = generate_sample(index, seed=2, size=size)
        assert image.shape == (height, width, 3)
        assert image.dtype == np.uint8
        assert mask.shape == (height, width)
        assert mask.dtype == np.uint8
        assert int(mask.max()) < len(SYNTHETIC_CLASSES)
        assert _tags(mask), f"sample {index} at size {size} has no object"


def test_every_sample_has_objects_within_limit(samples) -> None:
    for index, (_, mask) in enumerate(samples):
        assert 1 <= len(_tags(mask)) <= 3, f"sample {index}"


@pytest.mark.parametrize("max_objects", [1, 5])
def test_max_objects(max_objects: int) -> None:
    masks = [generate_sample(i, size=(96, 72), max_objects=max_objects)[1] for i in range(40)]
    counts = [len(_tags(mask)) for mask in masks]
    assert min(counts) >= 1
    assert max(counts) <= max_objects
    if max_objects > 1:
        assert max(counts) >= 3


def test_every_class_appears(samples) -> None:
    seen = set().union(*(_tags(mask) for _, mask in samples))
    assert seen == set(range(1, len(SYNTHETIC_CLASSES)))


def test_boat_images_have_water_background(samples) -> None:
    boat_images = [(img, mask) for img, mask in samples if BOAT in _tags(mask)]
    assert len(boat_images) >= 20
    for image, mask in boat_images:
        bottom = slice(int(0.8 * mask.shape[0]), None)
        background = mask[bottom] == 0
        assert background.sum() > 0.2 * background.size
        pixels = image[bottom][background].astype(np.float64)
        assert pixels[:, 2].mean() - pixels[:, 0].mean() > 25, "no blue water below a boat"


def test_water_is_rare_without_boats(samples) -> None:
    def bottom_is_blue(image: np.ndarray, mask: np.ndarray) -> bool:
        bottom = slice(int(0.8 * mask.shape[0]), None)
        pixels = image[bottom][mask[bottom] == 0].astype(np.float64)
        return len(pixels) > 0 and pixels[:, 2].mean() - pixels[:, 0].mean() > 25

    others = [bottom_is_blue(img, mask) for img, mask in samples if BOAT not in _tags(mask)]
    assert np.mean(others) < 0.35


def test_objects_occlude_each_other(samples) -> None:
    """Different object classes touching (4-neighbours) means one is painted over the other."""

    def touching(mask: np.ndarray) -> bool:
        for a, b in ((mask[1:], mask[:-1]), (mask[:, 1:], mask[:, :-1])):
            if np.any((a != b) & (a > 0) & (b > 0)):
                return True
        return False

    multi = sum(len(_tags(mask)) >= 2 for _, mask in samples)
    occluded = sum(touching(mask) for _, mask in samples)
    assert multi >= N_SAMPLES // 4
    assert occluded >= 10


def test_objects_keep_a_visible_share(samples) -> None:
    """Occlusion never leaves a tagged class as a sliver."""
    for index, (_, mask) in enumerate(samples):
        for cls in _tags(mask):
            assert np.count_nonzero(mask == cls) >= 4, f"sample {index} class {cls}"


def test_object_size_scales_the_objects() -> None:
    """Larger ``object_size`` bounds give larger objects; a single object covers its share of the frame."""

    def mean_area(object_size: tuple[float, float]) -> float:
        masks = [generate_sample(i, size=(96, 72), max_objects=1, object_size=object_size)[1] for i in range(30)]
        return float(np.mean([np.count_nonzero(mask) / mask.size for mask in masks]))

    small, large = mean_area((0.15, 0.2)), mean_area((0.6, 0.7))
    assert large > 4 * small
    assert generate_sample(0, object_size=(0.3, 0.6))[0].shape == generate_sample(0)[0].shape


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        generate_sample(0, max_objects=0)
    with pytest.raises(ValueError):
        generate_sample(0, size=(16, 16))
    for bad in ((0.0, 0.5), (0.6, 0.3), (0.5, 1.5)):
        with pytest.raises(ValueError, match="object_size"):
            generate_sample(0, object_size=bad)
