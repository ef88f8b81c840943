"""PerimeterFit against the per-pixel flood-fill reference; USS and perimeter maps on known images."""

from __future__ import annotations

import numpy as np
import pytest

from tagseg.refine.perimeter import perimeter_map, simplified_image
from tagseg.refine.perimeterfit import combine, fit_masks, flood_fill_reference, perimeter_regions
from tagseg.refine.uss import presegment, unsupervised_segmentation, upsample_labels


def random_perimeter(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random straight and diagonal edge lines, some touching the border, some closed boxes."""
    edges = np.zeros((height, width), bool)
    for _ in range(rng.integers(0, 4)):
        edges[rng.integers(0, height), rng.integers(0, width // 2):] = True
    for _ in range(rng.integers(0, 3)):
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        y1, x1 = y0 + rng.integers(2, 6), x0 + rng.integers(2, 6)
        edges[y0:y1 + 1, [x0, min(x1, width - 1)]] = True
        edges[[y0, min(y1, height - 1)], x0:x1 + 1] = True
    start = rng.integers(0, width)
    for step in range(min(height, width)):  # an 8-connected diagonal: 4-connected fills must not cross it
        if start + step < width:
            edges[step, start + step] = rng.random() < 0.9
    return edges


@pytest.mark.parametrize("seed", range(12))
def test_perimeterfit_equals_flood_fill_reference(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(6, 20, size=2)
    classes = int(rng.integers(1, 4))
    blobs = rng.random((classes, height, width)).astype(np.float32)
    scores = (blobs ** rng.uniform(0.2, 3)).astype(np.float32)
    perimeter = random_perimeter(rng, height, width)
    for threshold in (0.0, 0.2, 0.5, 0.9):
        expected = flood_fill_reference(scores, perimeter, threshold)
        np.testing.assert_array_equal(fit_masks(scores, perimeter_regions(perimeter), threshold), expected)


def test_perimeterfit_edge_cases():
    perimeter = np.zeros((6, 8), bool)
    perimeter[:, 4] = True  # a wall from border to border: two regions
    regions = perimeter_regions(perimeter)
    assert set(np.unique(regions)) == {0, 1, 2}
    empty = np.zeros((1, 6, 8), np.float32)
    assert not fit_masks(empty, regions, 0.3).any()
    full = np.ones((2, 6, 8), np.float32)
    assert fit_masks(full, regions, 0.3).all()
    left_only = np.zeros((1, 6, 8), np.float32)
    left_only[0, :, :4] = 0.9
    left_only[0, 0, 7] = 0.9  # a positive pixel in the right region, which also has negatives
    expected = np.zeros((6, 8), bool)
    expected[:, :4] = True  # the right region goes: it holds negatives besides its positive pixel
    np.testing.assert_array_equal(fit_masks(left_only, regions, 0.3)[0], expected)
    no_edges = perimeter_regions(np.zeros((6, 8), bool))
    assert np.unique(no_edges).tolist() == [1]
    one_negative = np.ones((1, 6, 8), np.float32)
    one_negative[0, 5, 7] = 0.1
    assert not fit_masks(one_negative, no_edges, 0.3).any()


def test_combination_rules():
    scores = np.array([[[0.8, 0.6, 0.4]]], np.float32)
    slic = np.array([[[True, True, False]]])
    quick = np.array([[[True, False, False]]])
    np.testing.assert_allclose(combine(scores, [slic, quick], "product"), [[[0.8, 0.0, 0.0]]])
    np.testing.assert_allclose(combine(scores, [slic, quick], "silop"), [[[0.8, 0.3, 0.2]]])
    np.testing.assert_allclose(combine(scores, [], "silop"), scores)


def two_colour_image(height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 40, np.float64)
    image[12:36, 20:48] = (200, 60, 60)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["slic", "quickshift"])
def test_uss_is_deterministic_and_bounded(method):
    image = two_colour_image()
    segments = presegment(image, method, slic_segments=100)
    first = unsupervised_segmentation([image], [segments], clusters=8, iterations=12, min_clusters=2, seeds=[3])[0]
    again = unsupervised_segmentation([image], [segments], clusters=8, iterations=12, min_clusters=2, seeds=[3])[0]
    np.testing.assert_array_equal(first, again)
    assert first.shape == image.shape[:2]
    assert 1 <= first.max() + 1 <= 8
    assert np.unique(first).tolist() == list(range(first.max() + 1))  # renumbered 0..n-1


def test_uss_batched_equals_one_by_one():
    images = [two_colour_image(), np.ascontiguousarray(two_colour_image()[::-1])]
    segments = [presegment(image, "slic", slic_segments=100) for image in images]
    together = unsupervised_segmentation(images, segments, clusters=8, iterations=10, min_clusters=2, seeds=[1, 2])
    for image, segment, seed, batched in zip(images, segments, [1, 2], together):
        alone = unsupervised_segmentation([image], [segment], clusters=8, iterations=10, min_clusters=2,
                                          seeds=[seed])[0]
        assert (alone == batched).mean() > 0.99


def test_uss_stops_below_min_clusters():
    image = two_colour_image()
    segments = presegment(image, "slic", slic_segments=60)
    labels = unsupervised_segmentation([image], [segments], clusters=16, iterations=200, min_clusters=5, seeds=[0])[0]
    assert labels.max() + 1 < 5


def test_perimeter_map_outlines_a_flat_square():
    clusters = np.zeros((40, 50), np.int64)
    clusters[10:30, 15:35] = 1
    image = np.zeros((40, 50, 3), np.uint8)
    image[clusters == 1] = (220, 30, 30)
    simple = simplified_image(image, clusters)
    np.testing.assert_array_equal(simple, image)
    edges = perimeter_map(simple, sigma=1.0)
    assert edges[10:30, 13:17].any() and edges[8:12, 15:35].any()
    assert not edges[:5].any() and not edges[15:25, 20:30].any()
    assert not perimeter_map(np.full((20, 20, 3), 90, np.uint8)).any()
    regions = perimeter_regions(edges)
    assert regions[20, 25] != regions[2, 2] and regions[20, 25] > 0


def test_upsample_labels_is_nearest():
    labels = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(upsample_labels(labels, 4, 4),
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
