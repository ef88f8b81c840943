"""Dissertation ch. 3: superpixel discovery (Table 3.1), the baselines, and the superpixel metrics."""

from __future__ import annotations

import numpy as np
import pytest

from tagseg.metrics import superpixel_scores
from tagseg.refine.superpixels import (baseline_superpixels, count_for_tau, discover_superpixels,
                                       initial_seeds, ncut_superpixels, relabel, second_eigenvector, tau_for_count,
                                       upsample_labels)

# three groups: X = {0, 1, 5} (p5 close to X, slightly towards Y), Y = {2, 3}, Z = {4}
GRID = np.array([[[1, 0, 0], [1, 0, 0], [0, 1, 0]],
                 [[0, 1, 0], [0, 0, 1], [0.9, 0.1, 0]]], np.float32)


def test_discovery_takes_the_lowest_degree_first_and_groups_above_tau():
    # degrees (B counts itself): p4 1; p0, p1, p2, p3 3; p5 5 (positive with X and Y)
    labels = discover_superpixels(GRID, tau=0.3)
    np.testing.assert_array_equal(labels, [[1, 1, 2], [2, 0, 1]])  # Z first, then X (first of the ties), then Y
    # at a tau above p5's similarity to X (0.994), p5 is left over and becomes its own superpixel last
    np.testing.assert_array_equal(discover_superpixels(GRID, tau=0.999), [[1, 1, 2], [2, 0, 3]])


def test_every_patch_lands_in_exactly_one_superpixel_and_tau_sets_the_count():
    features = np.random.default_rng(0).normal(size=(12, 16, 8)).astype(np.float32)
    coarse, fine = discover_superpixels(features, 0.1), discover_superpixels(features, 0.6)
    for labels in (coarse, fine):
        assert labels.min() == 0 and set(np.unique(labels)) == set(range(labels.max() + 1))
    assert fine.max() > coarse.max()
    assert count_for_tau([features], 0.6) == fine.max() + 1
    tau, count = tau_for_count([features], target=fine.max() + 1)
    assert abs(count - (fine.max() + 1)) <= 0.25 * (fine.max() + 1)
    with pytest.raises(ValueError, match="tau"):
        discover_superpixels(features, 1.0)


def test_ncut_cuts_off_the_smaller_part_and_stops_when_the_rest_is_alike():
    # three orthogonal groups on a 12 x 12 grid: left 4 columns (48), right top (64), right bottom (32)
    features = np.zeros((12, 12, 3))
    features[:, :4, 0] = 1
    features[:8, 4:, 1] = 1
    features[8:, 4:, 2] = 1
    labels = ncut_superpixels(features, tau=0.3, count=10)
    groups = [labels[:, :4], labels[:8, 4:], labels[8:, 4:]]
    assert all(len(np.unique(group)) == 1 for group in groups)  # no group is cut
    assert len({int(group[0, 0]) for group in groups}) == 3  # and each is its own superpixel: n = 3 < count
    # the first cut is the balanced one, {right top} against {left, right bottom}: its smaller side (64 < 80)
    # is the first superpixel, then the rest splits into its two groups
    assert labels[0, 4] == 0 and labels[8, 4] == 1 and labels[0, 0] == 2
    assert ncut_superpixels(features, tau=0.3, count=2).max() == 1  # the count caps the cuts
    assert ncut_superpixels(features, tau=0.3, count=1).max() == 0
    with pytest.raises(ValueError, match="count"):
        ncut_superpixels(features, 0.3, 0)


def test_ncut_eigenvector_sparse_solver_equals_the_dense_one():
    rng = np.random.default_rng(0)
    affinity = np.where(rng.random((120, 120)) > 0.6, 1.0, 1e-3)
    affinity = np.maximum(affinity, affinity.T)
    np.fill_diagonal(affinity, 1.0)
    sparse, dense = second_eigenvector(affinity, dense_below=0), second_eigenvector(affinity, dense_below=1000)
    np.testing.assert_allclose(sparse, dense, atol=1e-7)
    # eq. 3.15 holds: (D - W) y = lambda D y, with lambda the second smallest generalised eigenvalue
    degree = affinity.sum(axis=1)
    residual = (np.diag(degree) - affinity) @ dense
    value = float(dense @ residual / (dense @ (degree * dense)))
    np.testing.assert_allclose(residual, value * degree * dense, atol=1e-9)
    scaled = affinity / np.sqrt(np.outer(degree, degree))
    assert np.isclose(1 - value, np.sort(np.linalg.eigvalsh(scaled))[-2])


def test_upsample_and_relabel():
    np.testing.assert_array_equal(upsample_labels(np.array([[0, 1]]), 2, 4), [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(relabel(np.array([[7, 7, 3], [9, 3, 3]])), [[0, 0, 1], [2, 1, 1]])


@pytest.mark.parametrize("method", ["slic", "seeds", "lsc"])
def test_baselines_give_about_the_asked_count(method):
    rng = np.random.default_rng(0)
    image = np.zeros((96, 128, 3), np.uint8)
    image[:, 64:] = 200
    image = np.clip(image.astype(int) + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    labels = baseline_superpixels(image, method, 24)
    assert labels.shape == (96, 128) and labels.min() == 0
    assert 6 <= labels.max() + 1 <= 96
    # the strong vertical edge at column 64 is (nearly) never inside a superpixel
    assert superpixel_scores(labels, (np.arange(128)[None].repeat(96, 0) >= 64).astype(np.uint8))["asa"] > 0.97


def test_superpixel_metrics_on_hand_made_6x6_maps():
    truth = np.zeros((6, 6), np.uint8)
    truth[:, :3] = 1
    perfect = superpixel_scores(truth.astype(np.int32), truth)
    assert perfect == {"n": 2, "ue": 0.0, "asa": 1.0, "br": 1.0, "bp": 1.0}

    shifted = np.zeros((6, 6), np.int32)
    shifted[:, 4:] = 1  # superpixel 0 = columns 0-3 (18 px of class 1, 6 of background)
    scores = superpixel_scores(shifted, truth)
    assert scores["ue"] == pytest.approx(12 / 36) and scores["asa"] == pytest.approx(30 / 36)
    assert scores["br"] == 1.0 and scores["bp"] == 1.0  # one column off: within 2 px
    strict = superpixel_scores(shifted, truth, tolerance=0)
    assert strict["br"] == 0.0 and strict["bp"] == 0.0

    void = truth.copy()
    void[:, 0] = 255  # void pixels count for neither error nor accuracy: 30 labelled, 6 + 6 straddling
    assert superpixel_scores(shifted, void)["ue"] == pytest.approx(12 / 30)
    void[:, 3] = 255  # the straddling column is void: no error left
    assert superpixel_scores(shifted, void)["ue"] == 0.0 and superpixel_scores(shifted, void)["asa"] == 1.0


# --- seeds, growth, the balanced seed loss (eq. 3.4-3.8) ---------------------------------------------------

def test_initial_seeds_follow_eq_3_4_then_eq_3_5():
    superpixels = np.array([[0, 0, 1, 1],
                            [0, 0, 1, 1],
                            [2, 2, 2, 2]])
    scores = np.array([[[0.9, 0.6, 0.1, 0.0],
                        [0.4, 0.7, 0.2, 0.0],
                        [0.3, 0.3, 0.3, 0.3]],
                       [[0.2, 0.8, 0.0, 0.1],
                        [0.1, 0.1, 0.0, 0.0],
                        [0.6, 0.1, 0.2, 0.3]]], np.float32)
    seeds = initial_seeds(scores, np.array([3, 5]), superpixels, alpha=0.5)
    # eq. 3.4: best class above 0.5; eq. 3.5: superpixel 1 has the lowest mean max-score (0.1) -> background
    np.testing.assert_array_equal(seeds, [[3, 5, 0, 0],
                                          [255, 3, 0, 0],
                                          [5, 255, 255, 255]])


def test_growth_labels_a_superpixel_only_above_beta_and_never_overwrites_a_seed():
    import torch

    from tagseg.models.region_growing import grow_seeds

    regions = torch.tensor([[[0, 0, 1, 1, 2, -1]]])
    seeds = torch.tensor([[[2, 255, 255, 255, 255, 255]]])
    probabilities = torch.zeros(1, 4, 1, 6)  # background + 3 classes; the image is tagged with 1 and 2
    probabilities[0, :, 0, 0] = torch.tensor([0.9, 0.05, 0.05, 0.0])  # the seed itself disagrees: kept
    probabilities[0, :, 0, 1] = torch.tensor([0.0, 0.1, 0.8, 0.1])   # region 0's open pixel: class 2 at 0.8
    probabilities[0, :, 0, 2:4] = torch.tensor([0.5, 0.3, 0.2, 0.0])[:, None]  # region 1: best 0.5 < beta
    probabilities[0, :, 0, 4] = torch.tensor([0.0, 0.05, 0.05, 0.9])  # region 2: class 3 is not a tag
    probabilities[0, :, 0, 5] = torch.tensor([1.0, 0.0, 0.0, 0.0])    # padding: never grown
    grown = grow_seeds(probabilities, seeds, regions, torch.tensor([[1.0, 1.0, 0.0]]), beta=0.7)
    assert grown.tolist() == [[[2, 2, 255, 255, 255, 255]]]
    assert grow_seeds(probabilities, seeds, regions, torch.tensor([[1.0, 1.0, 0.0]]), beta=0.4).tolist() == \
        [[[2, 2, 0, 0, 255, 255]]]


def test_balanced_seed_loss_matches_a_hand_computation():
    import math

    import torch

    from tagseg.models.region_growing import balanced_seed_loss

    logits = torch.tensor([[[[0.0, 1.0, 2.0, 0.5]], [[1.0, 0.0, 0.0, 0.5]], [[0.0, 2.0, 1.0, 0.5]]]])
    labels = torch.tensor([[[0, 0, 2, 255]]])
    p = torch.softmax(logits, dim=1)[0, :, 0]
    expected = -(math.log(p[0, 0]) + math.log(p[0, 1])) / 2 - math.log(p[2, 2])
    assert balanced_seed_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_crop_carries_superpixels_through_the_same_geometry():
    from tagseg.data.transforms import random_scale_flip_crop

    rng_image = np.random.default_rng(0)
    image = rng_image.integers(0, 255, (30, 40, 3), np.uint8)
    regions = np.arange(30 * 40, dtype=np.int32).reshape(30, 40) // 7
    labels = (regions % 250).astype(np.uint8)
    crop, valid, mask, grid = random_scale_flip_crop(image, np.random.default_rng(3), 48, (0.8, 1.2), labels, regions)
    again, _, mask_only = random_scale_flip_crop(image, np.random.default_rng(3), 48, (0.8, 1.2), labels)
    np.testing.assert_array_equal(crop, again)
    np.testing.assert_array_equal(mask, mask_only)
    np.testing.assert_array_equal(grid[valid] % 250, mask[valid])
    assert (grid[~valid] == -1).all()


# --- stages --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from tagseg.data.make_synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 6, seed=4, size=(64, 48), val_fraction=0.34)
    return root


def test_superpixel_stages_then_training_with_growth(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app
    from tagseg.data.dataset import open_dataset
    from tagseg.data.imageio import read_label_map
    from tagseg.errors import StageError
    from tagseg.stages.make_cam import MakeCamConfig, make_cams
    from tagseg.stages.superpixel_seeds import SuperpixelSeedsConfig, make_superpixel_seeds
    from tagseg.stages.superpixels import SuperpixelConfig, make_superpixels
    from tagseg.stages.train_cam import CamTrainConfig, train_cam
    from tagseg.stages.train_seg import SegTrainConfig, train_seg

    dataset = open_dataset(synthetic, "train")
    run = tmp_path / "run"
    manifest = make_superpixels(dataset, run, SuperpixelConfig(weights=None, target_count=6, tau_sample=2))
    assert 0 <= manifest["tau"] < 1 and manifest["tau_sample_count"] > 1
    assert set(manifest["metrics"]) == {"n", "ue", "asa", "br", "bp"} and 0 < manifest["metrics"]["asa"] <= 1
    first = read_label_map(run / "superpixels" / f"{dataset.ids[0]}.png")
    assert first.shape == (48, 64) and first.min() == 0
    again = make_superpixels(dataset, run, SuperpixelConfig(weights=None, target_count=6, tau_sample=2))
    assert again["timings"]["items_computed"] == len(dataset)  # resumed: nothing recomputed
    slic = make_superpixels(dataset, tmp_path / "slic", SuperpixelConfig(method="slic", target_count=6))
    assert "tau" not in slic["config"] and slic["metrics"]["n"] > 1 and slic["requested_count"] >= 2
    ncut = make_superpixels(dataset, tmp_path / "ncut", SuperpixelConfig(method="ncut", weights=None, target_count=6,
                                                                       tau_sample=2))
    assert 0 <= ncut["tau"] < 1 and 1 < ncut["metrics"]["n"] <= 6
    snapped = make_superpixels(dataset, tmp_path / "crf", SuperpixelConfig(method="slic", target_count=6, crf=True))
    assert snapped["metrics"]["n"] > 1  # the CRF may merge or drop superpixels, never invents labels

    result = CliRunner().invoke(app, ["eval", str(run / "superpixels"), str(synthetic), "--split", "train",
                                      "--json", str(tmp_path / "eval.json")])
    assert result.exit_code == 0 and "UE" in result.output and "ASA" in result.output

    with pytest.raises(StageError, match="make_cam"):
        make_superpixel_seeds(dataset, run, SuperpixelSeedsConfig())
    train_cam(dataset, run, CamTrainConfig(epochs=1, min_steps=0, batch_size=2, crop_size=64, weights=None))
    make_cams(dataset, run, MakeCamConfig(scales=(1.0,)))
    seeds = make_superpixel_seeds(dataset, run, SuperpixelSeedsConfig())
    assert 0 < seeds["seed_quality"]["labelled_fraction"] <= 1

    config = SegTrainConfig(epochs=1, min_steps=0, batch_size=2, crop_size=64, weights=None, head="deeplabv2",
                            labels="superpixel_seeds", objective="seeds", growth="superpixels", growth_beta=0.3)
    trained = train_seg(dataset, run, config)
    assert 0 < trained["history"][-1]["labelled"] <= 1 and trained["config"]["growth"] == "superpixels"
    with pytest.raises(ValueError, match="objective 'seeds'"):
        SegTrainConfig(growth="superpixels")
