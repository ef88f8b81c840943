from functools import partial

import numpy as np
import pytest
import torch

from tagseg.refine.affinity_labels import affinity_loss, affinity_seed_labels, pair_labels
from tagseg.progress import parallel_map
from tagseg.refine.crf import CrfParams, crf_labels, crf_probabilities


def two_region_scene(seed: int = 0, height: int = 32, width: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A dark left half and a bright right half with slight noise, and its true mask (right = 1)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), dtype=np.int64)
    truth[:, width // 2:] = 1
    image = np.where(truth[..., None] == 1, 200.0, 40.0) + rng.normal(0, 3, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), truth


def flip_labels(truth: np.ndarray, fraction: float, seed: int = 1) -> np.ndarray:
    flip = np.random.default_rng(seed).random(truth.shape) < fraction
    return np.where(flip, 1 - truth, truth)


def test_crf_labels_clean_up_flipped_pixels():
    image, truth = two_region_scene()
    noisy = flip_labels(truth, 0.1).astype(np.uint8)
    assert (noisy == truth).mean() < 0.93
    out = crf_labels(image, noisy, num_labels=2)
    assert out.shape == truth.shape and out.dtype == np.uint8
    assert (out == truth).mean() > 0.99


def test_crf_labels_reject_out_of_range_and_pass_a_single_label_through():
    image, truth = two_region_scene()
    with pytest.raises(ValueError, match="labels outside"):
        crf_labels(image, truth * 2, num_labels=2)
    zeros = np.zeros_like(truth)
    np.testing.assert_array_equal(crf_labels(image, zeros, num_labels=1), zeros)


def test_crf_probabilities_are_a_distribution_of_the_input_shape():
    image, truth = two_region_scene()
    noisy = flip_labels(truth, 0.1)
    probabilities = np.stack([0.9 - 0.8 * noisy, 0.1 + 0.8 * noisy]).astype(np.float64)
    posterior = crf_probabilities(image, probabilities, CrfParams(iterations=5))
    assert posterior.shape == (2, *truth.shape) and posterior.dtype == np.float32
    np.testing.assert_allclose(posterior.sum(0), 1.0, atol=1e-5)
    assert (posterior.argmax(0) == truth).mean() > 0.99


def test_crf_image_must_be_rgb_of_the_maps_size():
    image, truth = two_region_scene()
    with pytest.raises(ValueError, match="image"):
        crf_labels(image[..., 0], truth, num_labels=2)
    with pytest.raises(ValueError, match="unary pixels"):
        crf_labels(image[:-1], truth, num_labels=2)


def test_crf_over_processes_keeps_order_and_raises_errors():
    image, truth = two_region_scene()
    label_maps = [flip_labels(truth, 0.1, seed) for seed in range(3)]
    function = partial(crf_labels, image, num_labels=2)
    expected = [function(labels) for labels in label_maps]
    for result, wanted in zip(parallel_map(function, label_maps, 3, "crf", 2, processes=True), expected, strict=True):
        np.testing.assert_array_equal(result, wanted)
    with pytest.raises(ValueError, match="labels outside"):
        list(parallel_map(function, [truth, truth * 5], 2, "crf", 2, processes=True))


def test_seed_labels_without_crf():
    scores = np.array([
        [[0.9, 0.1, 0.3, 0.2],
         [0.6, 0.0, 0.2, 0.1]],
        [[0.2, 0.1, 0.1, 0.0],
         [0.8, 0.15, 0.5, 0.7]],
    ], dtype=np.float32)
    seeds = affinity_seed_labels(scores, np.array([3, 7]), fg_threshold=0.5, bg_threshold=0.2)
    # best score > 0.5 -> its class; <= 0.2 -> 0 (background); in between (0.3, exactly 0.5) -> 255
    expected = np.array([[3, 0, 255, 0],
                         [7, 0, 255, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(seeds, expected)
    assert seeds.dtype == np.uint8
    empty = affinity_seed_labels(np.zeros((0, 2, 4), np.float32), np.array([], dtype=np.int64), 0.5, 0.2)
    np.testing.assert_array_equal(empty, np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="bg_threshold"):
        affinity_seed_labels(scores, np.array([3, 7]), fg_threshold=0.2, bg_threshold=0.5)


def test_seed_labels_with_crf_follow_the_image():
    image, truth = two_region_scene()
    rng = np.random.default_rng(2)
    # class 5 scores high on the bright right half, low on the dark left, with a noisy 10 % of pixels swapped
    score = np.where(flip_labels(truth, 0.1) == 1, 0.9, 0.05) + rng.uniform(-0.02, 0.02, truth.shape)
    scores = score[None].astype(np.float32)
    plain = affinity_seed_labels(scores, np.array([5]), 0.5, 0.2)
    refined = affinity_seed_labels(scores, np.array([5]), 0.5, 0.2, image=image)
    expected = np.where(truth == 1, 5, 0)
    assert (plain == expected).mean() < 0.93
    assert (refined == expected).mean() > 0.99
    assert set(np.unique(refined)) <= {0, 5, 255}


def test_pair_labels_on_a_row():
    labels = pair_labels(np.array([[0, 0, 1, 255]], dtype=np.uint8), [[0, 1]])
    assert set(labels) == {"fg_positive", "bg_positive", "negative"}
    assert labels["fg_positive"].dtype == torch.bool and labels["fg_positive"].shape == (1, 1, 4)
    np.testing.assert_array_equal(labels["fg_positive"][0, 0], [False, False, False, False])
    np.testing.assert_array_equal(labels["bg_positive"][0, 0], [True, False, False, False])
    np.testing.assert_array_equal(labels["negative"][0, 0], [False, True, False, False])


def test_pair_labels_two_offsets():
    seeds = torch.tensor([[1, 1, 0],
                          [1, 2, 255]], dtype=torch.uint8)
    labels = pair_labels(seeds, np.array([[0, 1], [1, 0]]))
    fg = [[[1, 0, 0], [0, 0, 0]],
          [[1, 0, 0], [0, 0, 0]]]
    negative = [[[0, 1, 0], [1, 0, 0]],
                [[0, 1, 0], [0, 0, 0]]]
    np.testing.assert_array_equal(labels["fg_positive"], np.array(fg, bool))
    np.testing.assert_array_equal(labels["negative"], np.array(negative, bool))
    assert not labels["bg_positive"].any()


def test_affinity_loss_by_hand():
    predicted = torch.tensor([0.9, 0.2, 0.5, 0.7]).reshape(1, 1, 1, 4).requires_grad_()
    labels = {"fg_positive": torch.tensor([True, False, True, False]).reshape(1, 1, 4),
              "bg_positive": torch.tensor([False, False, False, True]).reshape(1, 1, 4),
              "negative": torch.tensor([False, True, False, False]).reshape(1, 1, 4)}
    out = affinity_loss(predicted, labels)
    eps = 1e-5
    fg = -(np.log(0.9 + eps) + np.log(0.5 + eps)) / 2
    bg = -np.log(0.7 + eps)
    neg = -np.log(1 + eps - 0.2)
    assert out["fg"].item() == pytest.approx(fg, rel=1e-5)
    assert out["bg"].item() == pytest.approx(bg, rel=1e-5)
    assert out["neg"].item() == pytest.approx(neg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(fg / 4 + bg / 4 + neg / 2, rel=1e-5)
    out["loss"].backward()
    assert predicted.grad is not None and torch.isfinite(predicted.grad).all()


def test_affinity_loss_empty_set_contributes_zero_and_batches_broadcast():
    labels = pair_labels(np.array([[0, 0, 1, 255]], dtype=np.uint8), [[0, 1]])
    predicted = torch.tensor([0.9, 0.2, 0.5, 0.7]).reshape(1, 1, 1, 4)
    out = affinity_loss(predicted, labels)
    bg, neg = -np.log(0.9 + 1e-5), -np.log(1 + 1e-5 - 0.2)
    assert out["fg"].item() == 0.0
    assert out["loss"].item() == pytest.approx(bg / 4 + neg / 2, rel=1e-5)
    batch = torch.tensor([[0.9, 0.2, 0.5, 0.7], [0.5, 0.6, 0.5, 0.5]]).reshape(2, 1, 1, 4)
    # labels shared by both images: each term averages over 2 pairs
    assert affinity_loss(batch, labels)["bg"].item() == pytest.approx((bg - np.log(0.5 + 1e-5)) / 2, rel=1e-5)
    nothing = {name: torch.zeros(1, 1, 4, dtype=torch.bool) for name in labels}
    leaf = predicted.clone().requires_grad_()
    empty = affinity_loss(leaf, nothing)
    assert empty["loss"].item() == 0.0
    empty["loss"].backward()
    assert torch.equal(leaf.grad, torch.zeros_like(leaf))


@pytest.mark.parametrize("radius", [1, 3])
def test_embedding_distances_match_the_broadcast_formula_and_its_gradient(radius):
    from tagseg.models.affinity import embedding_distances
    from tagseg.refine.random_walk import neighbor_maps, neighbor_offsets

    offsets = neighbor_offsets(radius)
    features = torch.randn(2, 5, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(radius),
                           requires_grad=True)
    broadcast = (features.unsqueeze(0) - neighbor_maps(features, offsets, 0.0)).abs().mean(dim=2).transpose(0, 1)
    distances = embedding_distances(features, offsets)
    torch.testing.assert_close(distances, broadcast)
    upstream = torch.randn_like(distances)
    torch.testing.assert_close(torch.autograd.grad(distances, features, upstream)[0],
                               torch.autograd.grad(broadcast, features, upstream)[0])
    assert torch.autograd.gradcheck(lambda f: embedding_distances(f, offsets), (features,))
