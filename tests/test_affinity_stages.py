"""affinity_labels -> train_affinity -> random_walk -> pseudo_labels on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tagseg.artifacts import load_score_map, save_score_map
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_mask
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import ConfigError, StageError
from tagseg.refine.random_walk import neighbor_offsets, path_affinities
from tagseg.stages import random_walk
from tagseg.stages.affinity_labels import AffinityLabelsConfig, make_affinity_labels, resolve_thresholds
from tagseg.stages.pseudo_labels import PseudoLabelConfig, make_pseudo_labels, pseudo_label, source_threshold
from tagseg.stages.random_walk import RandomWalkConfig, propagate, random_walk_stage
from tagseg.stages.train_affinity import AffinityTrainConfig, train_affinity
from test_perimeterfit_stage import fake_cams

real_from_source = random_walk.from_source

TINY = dict(epochs=2, min_steps=0, batch_size=2, crop_size=64, radius=3)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 6, seed=3, size=(64, 48), val_fraction=0.34)
    return root


def test_propagate_fills_a_walled_region_and_stops_at_the_wall():
    boundary = torch.zeros(12, 16)
    boundary[:, 8] = 1.0
    offsets = neighbor_offsets(3)
    scores = np.zeros((1, 48, 64), np.float32)
    scores[0, 16:24, 8:16] = 1.0  # a seed in the left half (stride-4 cells 4..5, 2..3)
    walked = propagate(scores, path_affinities(boundary, offsets), None, offsets, beta=8, logt=6)
    left, right = walked[0, :, :28], walked[0, :, 36:]
    assert walked.max() == pytest.approx(1.0)
    assert left.min() > 0.2 and right.max() < 1e-3


def test_pseudo_label_threshold_crf_and_ignore_band():
    scores = np.zeros((2, 20, 20), np.float32)
    scores[0, :, :10] = 0.9
    scores[1, :, 10:] = 0.5
    scores[1, :, 15:] = 0.1
    classes = np.array([3, 7])
    labels = pseudo_label(scores, classes, 0.3, None, 0.7, None, 0.0)
    assert set(np.unique(labels[:, :10])) == {3} and set(np.unique(labels[:, 10:15])) == {7}
    assert set(np.unique(labels[:, 15:])) == {0}
    banded = pseudo_label(scores, classes, 0.45, None, 0.7, None, 0.1)
    assert set(np.unique(banded[:, 10:15])) == {255} and set(np.unique(banded[:, :10])) == {3}
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :10] = 200
    image[:, 10:15] = 90
    from tagseg.refine.crf import CrfParams

    noisy = scores.copy()
    noisy[0, 5, 5] = 0.0  # one hole the CRF should close
    snapped = pseudo_label(noisy, classes, 0.3, image, 0.7, CrfParams(), 0.0)
    assert snapped[5, 5] == 3 and set(np.unique(snapped)) <= {0, 3, 7}


def test_pseudo_label_threshold_choice():
    scored = {"threshold": 0.29, "label_free": {"threshold": 0.417}}
    source = Path("run/random_walk")
    assert source_threshold(scored, 0.3, source) == 0.3
    assert source_threshold(scored, "label_free", source) == 0.417
    assert source_threshold(scored, "oracle", source) == 0.29
    with pytest.raises(StageError, match=r"run/random_walk has no oracle threshold \(it was scored without"):
        source_threshold({"label_free": {"threshold": 0.4}}, "oracle", source)
    with pytest.raises(ValueError, match="label_free"):
        PseudoLabelConfig(threshold="best")
    with pytest.raises(ValueError, match="less than 1"):
        PseudoLabelConfig(threshold=1.5)


def test_chain_runs_end_to_end_and_resumes(synthetic, tmp_path, monkeypatch):
    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    with pytest.raises(StageError, match="make_cam"):
        make_affinity_labels(dataset, tmp_path / "empty", AffinityLabelsConfig())

    labels = make_affinity_labels(dataset, tmp_path, AffinityLabelsConfig(fg_threshold=0.6, bg_threshold=0.2))
    quality = labels["seed_quality"]
    assert 0.2 < quality["labelled_fraction"] <= 1 and quality["precision"] > 0.8
    for record in dataset.records:
        seeds = read_mask(tmp_path / "affinity_labels" / f"{record.id}.png", dataset.num_classes)
        assert set(np.unique(seeds)) <= {0, 255, *record.labels}

    for kind in ("boundary", "affinitynet"):
        run = tmp_path / kind
        run.mkdir()
        for name in ("make_cam", "affinity_labels"):
            (run / name).symlink_to(tmp_path / name)
        trained = train_affinity(dataset, run, AffinityTrainConfig(kind=kind, **TINY))
        assert [h["epoch"] for h in trained["history"]] == [1, 2] and np.isfinite(trained["history"][-1]["loss"])
        walked = random_walk_stage(dataset, run, RandomWalkConfig(radius=3, logt=4))
        assert "metrics" in walked and 0 <= walked["threshold"] < 1
        # the default (masking) needs the run's classifier; without one the walk keeps the source's foreground
        # share at its label-free (here Otsu's) threshold, and says why
        free = walked["label_free"]
        assert free["method"] == "from_source" and 0 < free["source_threshold"] < 1 and 0 < free["threshold"] < 1
        assert "train_cam/model.pt" in free["note"]
        for record in dataset.records:
            cam, cam_classes = load_score_map(run / "make_cam" / f"{record.id}.npz")
            scores, classes = load_score_map(run / "random_walk" / f"{record.id}.npz")
            np.testing.assert_array_equal(classes, cam_classes)
            assert scores.shape == cam.shape and scores.min() >= 0 and scores.max() <= 1.001
        masks = make_pseudo_labels(dataset, run, PseudoLabelConfig())
        assert masks["metrics"]["miou"] > 0
        assert len(list((run / "pseudo_labels").glob("*.png"))) == len(dataset)

        stamps = {p: p.stat().st_mtime_ns for p in (run / "random_walk").glob("*.npz")}
        matched = []
        monkeypatch.setattr(random_walk, "from_source", lambda *a: matched.append(a) or real_from_source(*a))
        again = random_walk_stage(dataset, run, RandomWalkConfig(radius=3, logt=4))
        assert again["timings"]["items_computed"] == len(dataset)
        assert not matched and again["label_free"] == free  # the same rule and inputs: the record is kept
        asked = random_walk_stage(dataset, run, RandomWalkConfig(radius=3, logt=4, label_free="from_source"))
        assert len(matched) == 1 and asked["label_free_rule"]["method"] == "from_source"  # a new rule rescores
        monkeypatch.undo()
        assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
        assert train_affinity(dataset, run, AffinityTrainConfig(kind=kind, **TINY))["history"] == trained["history"]
        masks_again = make_pseudo_labels(dataset, run, PseudoLabelConfig())
        assert masks_again["timings"]["items_computed"] == len(dataset)

    seeds = sorted((tmp_path / "affinity_labels").glob("*.png"))
    seeds[0].unlink()
    stamps = {p: p.stat().st_mtime_ns for p in seeds[1:]}
    resumed = make_affinity_labels(dataset, tmp_path, AffinityLabelsConfig(fg_threshold=0.6, bg_threshold=0.2))
    assert resumed["timings"]["items_computed"] == len(dataset) + 1 and seeds[0].exists()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_affinity_training_resumes_exactly(synthetic, tmp_path, interrupted):
    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    with pytest.raises(StageError, match="no label-free threshold"):
        make_affinity_labels(dataset, tmp_path, AffinityLabelsConfig(crf=False))  # fake CAMs were never scored
    make_affinity_labels(dataset, tmp_path, AffinityLabelsConfig(crf=False, fg_threshold=0.5))
    config = AffinityTrainConfig(**TINY)
    whole = tmp_path / "whole"
    whole.mkdir()
    for name in ("make_cam", "affinity_labels"):
        (whole / name).symlink_to(tmp_path / name)
    train_affinity(dataset, whole, config)

    interrupted(train_affinity, dataset, tmp_path, config)
    train_affinity(dataset, tmp_path, config)
    first = torch.load(whole / "train_affinity" / "model.pt", weights_only=False)["state_dict"]
    second = torch.load(tmp_path / "train_affinity" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_configs_are_validated():
    with pytest.raises(ConfigError, match="bg_threshold"):
        load_config(AffinityLabelsConfig, None, ["fg_threshold=0.2", "bg_threshold=0.5"])
    with pytest.raises(ConfigError, match="kind"):
        load_config(AffinityTrainConfig, None, ["kind=psa"])
    with pytest.raises(ConfigError, match="logt"):
        load_config(RandomWalkConfig, None, ["logt=40"])


def test_cli_chain(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app

    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    runner = CliRunner()
    steps = [["affinity-labels", "--set", "fg_threshold=0.6", "--workers", "1"],
             ["train-affinity", "--device", "cpu", *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]],
             ["random-walk", "--device", "cpu", "--set", "radius=3", "--set", "logt=3"],
             ["pseudo-labels", "--set", "crf=false"]]
    expected = ["precision", "final loss", "random_walk: mIoU", "pseudo_labels: 4 masks"]
    for step, text in zip(steps, expected):
        result = runner.invoke(app, [step[0], str(synthetic), str(tmp_path), *step[1:]])
        assert result.exit_code == 0, result.output
        assert text in result.output


def test_background_threshold_starts_from_the_maps_floor():
    source = {"label_free": {"threshold": 0.9}}
    assert resolve_thresholds(None, None, source, "make_cam", "affinity_labels", 1 / 3) == pytest.approx((0.9, 0.3))
    lifted = resolve_thresholds(None, None, source, "make_cam", "affinity_labels", 1 / 3, 0.6)
    assert lifted == pytest.approx((0.9, 0.7))  # a third of the way from 0.6 to 0.9
    floor_above = resolve_thresholds(0.5, None, source, "make_cam", "affinity_labels", 1 / 3, 0.8)
    assert floor_above == (0.5, 0.5)  # a floor above fg_threshold: background up to it
    assert resolve_thresholds(None, 0.2, source, "make_cam", "affinity_labels", 1 / 3, 0.6) == (0.9, 0.2)  # as set


def test_lifted_maps_still_get_background_seeds(synthetic, tmp_path):
    """Maps that an averaging step lifts to 0.7 everywhere (as SEAM's PCM does): a background threshold of
    fg / 3 labels no pixel background; starting from the maps' floor labels the clear background."""
    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)
    for path in (tmp_path / "make_cam").glob("*.npz"):
        scores, classes = load_score_map(path)
        save_score_map(path, 0.7 + 0.3 * scores, classes)
    config = AffinityLabelsConfig(fg_threshold=0.9, crf=False)
    manifest = make_affinity_labels(dataset, tmp_path, config)
    assert manifest["score_floor"] == pytest.approx(0.7)
    assert manifest["bg_threshold"] == pytest.approx(0.7 + 0.2 / 3, abs=0.006)
    seeds = [read_mask(tmp_path / "affinity_labels" / f"{r.id}.png", dataset.num_classes) for r in dataset.records]
    assert all((s == 0).any() for s in seeds)
    truth = np.concatenate([read_mask(r.mask_path, dataset.num_classes).ravel() for r in dataset.records])
    assert (truth[np.concatenate([s.ravel() for s in seeds]) == 0] == 0).mean() > 0.95
