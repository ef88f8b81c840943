"""BES boundary-label synthesis: eq. 2 shares, eq. 3 labels, and the boundary_labels stage."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest
import yaml

from tagseg.artifacts import load_score_map, save_score_map
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_image, read_mask
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.errors import ConfigError, DataError, StageError
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.refine.affinity_labels import affinity_seed_labels
from tagseg.refine import bes
from tagseg.refine.bes import BACKGROUND, BOUNDARY, FOREGROUND, IGNORE, Shares, boundary_labels, class_shares
from tagseg.rundir import read_manifest
from tagseg.stages.boundary_labels import BoundaryLabelsConfig, make_boundary_labels
from test_perimeterfit_stage import fake_cams

U = 255  # unknown seed


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 6, seed=3, size=(64, 48), val_fraction=0.34)
    return root


def test_label_values():
    assert (BACKGROUND, BOUNDARY, FOREGROUND, IGNORE) == (0, 1, 2, 255)


def test_class_shares_count_unknown_pixels_and_clip_border_windows():
    labels = np.array([[0, 0, 1, 1],
                       [0, U, 1, 2],
                       [0, 0, 2, 2]], np.uint8)
    shares = class_shares(labels, 3, 3)
    # corner (0, 0): 4 in-image pixels 0, 0, 0, U
    assert (shares.background[0, 0], shares.best[0, 0], shares.second[0, 0]) == pytest.approx((3 / 4, 0, 0))
    # centre (1, 1): the full window, 5 x 0, 2 x 1, 1 x 2, 1 x U
    assert (shares.background[1, 1], shares.best[1, 1], shares.second[1, 1]) == pytest.approx((5 / 9, 2 / 9, 1 / 9))
    # (1, 2): 2 x 0, 3 x 1, 3 x 2, 1 x U: a tie between the two classes
    assert (shares.background[1, 2], shares.best[1, 2], shares.second[1, 2]) == pytest.approx((2 / 9, 3 / 9, 3 / 9))
    # corners (0, 3) and (2, 3): three of one class, one of the other, no background
    assert (shares.background[0, 3], shares.best[0, 3], shares.second[0, 3]) == pytest.approx((0, 3 / 4, 1 / 4))
    assert (shares.background[2, 3], shares.best[2, 3], shares.second[2, 3]) == pytest.approx((0, 3 / 4, 1 / 4))
    # edge (2, 1): 6 in-image pixels 0, U, 1, 0, 0, 2
    assert (shares.background[2, 1], shares.best[2, 1], shares.second[2, 1]) == pytest.approx((3 / 6, 1 / 6, 1 / 6))

    # every pixel against a direct count
    for y in range(3):
        for x in range(4):
            window = labels[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]
            per_class = sorted(((window == c).sum() / window.size for c in (1, 2)), reverse=True)
            assert shares.background[y, x] == pytest.approx((window == 0).sum() / window.size)
            assert [shares.best[y, x], shares.second[y, x]] == pytest.approx(per_class)


def test_class_shares_window_larger_than_the_image_and_bad_input():
    labels = np.array([[0, 1, U]], np.uint8)
    shares = class_shares(labels, 2, 5)  # every window covers the whole image
    np.testing.assert_allclose(shares.background, [[1 / 3] * 3])
    np.testing.assert_allclose(shares.best, [[1 / 3] * 3])
    np.testing.assert_allclose(shares.second, [[0] * 3])
    with pytest.raises(ValueError, match="odd"):
        class_shares(labels, 2, 4)
    with pytest.raises(ValueError, match=r"labels \[3\] outside 0..1"):
        class_shares(np.array([[0, 3]], np.uint8), 2, 3)


def two_regions(right: int = 0, height: int = 5, width: int = 24) -> np.ndarray:
    """Class 1 in the left half, ``right`` in the right half."""
    labels = np.full((height, width), right, np.uint8)
    labels[:, :width // 2] = 1
    return labels


def test_boundary_band_between_foreground_and_background():
    # window 11: column j sees columns j-5..j+5 (clipped), so F = its share of columns < 12.
    # col 11: F 6/11, S0 5/11 -> boundary; col 10: F 7/11 -> ignore (neither rule); col 9: F 8/11 > 0.7 -> fg
    labels = boundary_labels(class_shares(two_regions(), 2, 11), 0.35, 0.10)
    assert (labels == labels[0]).all()  # every row alike: the vertical clipping cancels out
    row = labels[0]
    assert np.flatnonzero(row == BOUNDARY).tolist() == [11, 12]
    assert np.flatnonzero(row == IGNORE).tolist() == [10, 13]
    assert np.flatnonzero(row == FOREGROUND).tolist() == list(range(10))
    assert np.flatnonzero(row == BACKGROUND).tolist() == list(range(14, 24))


def test_small_window_has_no_boundary_at_default_thresholds():
    # window 5: shares move in steps of 1/5, so |F - S0| is never below 0.1
    row = boundary_labels(class_shares(two_regions(), 2, 5))[0]
    assert row.tolist() == [FOREGROUND] * 11 + [IGNORE] * 2 + [BACKGROUND] * 11


def test_unknown_pixels_leave_the_window_undecided():
    labels = two_regions()
    labels[:, 8:16] = U
    row = boundary_labels(class_shares(labels, 2, 11))[0]
    assert BOUNDARY not in row and row[12] == IGNORE
    assert row[0] == FOREGROUND and row[23] == BACKGROUND


def test_ties_follow_the_rule_as_written():
    def label(background, best, second=0.0):
        return int(boundary_labels(Shares(*(np.array([[v]]) for v in (background, best, second))))[0, 0])

    assert label(0.45, 0.36) == BOUNDARY
    assert label(0.4, 0.5) == IGNORE  # |F - S0| = 0.1 is not < 0.1 (0.5 - 0.4 rounds below 0.1 in binary)
    assert label(0.45, 49 / 140) == IGNORE  # min = 0.35 is not > 0.35
    assert label(7 / 10, 3 / 10) == IGNORE  # S0 = 0.7 is not > 2 x 0.35
    assert label(0.71, 0.29) == BACKGROUND


def test_boundaries_between_two_foreground_classes_are_optional():
    shares = class_shares(two_regions(right=2), 3, 11)
    plain = boundary_labels(shares)[0]
    assert plain.tolist() == [FOREGROUND] * 10 + [IGNORE] * 4 + [FOREGROUND] * 10
    both = boundary_labels(shares, between_foregrounds=True)[0]
    assert both.tolist() == [FOREGROUND] * 10 + [IGNORE] + [BOUNDARY] * 2 + [IGNORE] + [FOREGROUND] * 10
    # the foreground-background rule does not look at the second class
    assert BOUNDARY not in boundary_labels(class_shares(two_regions(right=2), 3, 11), theta_diff=0.5)


def near_true_edges(truth: np.ndarray, reach: int) -> np.ndarray:
    """Pixels within ``reach`` px (chessboard) of a change of true class."""
    edges = np.zeros(truth.shape, np.uint8)
    edges[:, 1:] |= truth[:, 1:] != truth[:, :-1]
    edges[1:, :] |= truth[1:, :] != truth[:-1, :]
    return cv2.dilate(edges, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0


def test_stage_end_to_end_resume_and_refusal(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "train")
    fake_cams(dataset, tmp_path)  # the ground truth dilated by 4 px and blurred: high thresholds find its edges
    config = BoundaryLabelsConfig(fg_threshold=0.9, bg_threshold=0.75, window=65.0)
    manifest = make_boundary_labels(dataset, tmp_path, config)
    # 65 px of a 320 px photo on these 64 px images: 13 px, as BES's 13 px on 500 px photos
    assert manifest["window_pixels"] == 13 and manifest["config"]["image_size"] == 64
    assert (manifest["fg_threshold"], manifest["bg_threshold"]) == (0.9, 0.75)
    fractions = manifest["label_fractions"]
    assert list(fractions) == ["boundary", "foreground", "background", "ignored"]
    assert sum(fractions.values()) == pytest.approx(1.0) and 0.01 < fractions["boundary"] < 0.1

    counts, near_edges, true_background = np.zeros(4), [], []
    for record in dataset.records:
        labels = read_mask(tmp_path / "boundary_labels" / f"{record.id}.png", 3)
        truth = read_mask(record.mask_path, dataset.num_classes)
        assert set(np.unique(labels)) <= {BACKGROUND, BOUNDARY, FOREGROUND, IGNORE}
        near_edges.append(near_true_edges(truth, 3)[labels == BOUNDARY])
        true_background.append(truth[labels == BACKGROUND] == 0)
        counts += [(labels == v).sum() for v in (BOUNDARY, FOREGROUND, BACKGROUND, IGNORE)]
    assert list(fractions.values()) == pytest.approx(list(counts / counts.sum()))
    assert np.concatenate(near_edges).mean() > 0.9  # boundary labels lie on the objects' outlines
    assert np.concatenate(true_background).mean() > 0.99

    # the labels are eq. 3 of eq. 2 of eq. 1 (the affinity seeds, CRF'd at the stage's CRF width)
    record = dataset.records[0]
    scores, classes = load_score_map(tmp_path / "make_cam" / f"{record.id}.npz")
    seeds = affinity_seed_labels(scores, classes, 0.9, 0.75, read_image(record.image_path)[0],
                                 config.crf_settings.params(64))
    expected = boundary_labels(class_shares(seeds, dataset.num_classes, 13))
    np.testing.assert_array_equal(read_mask(tmp_path / "boundary_labels" / f"{record.id}.png", 3), expected)

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "boundary_labels").glob("*.png")}
    again = make_boundary_labels(dataset, tmp_path, config)
    assert again["timings"]["items_computed"] == len(dataset)  # nothing computed the second time
    assert again["label_fractions"] == fractions
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    changed = config.model_copy(update={"theta_scale": 0.3})
    with pytest.raises(StageError, match=r"different 'boundary_labels' stage config \(theta_scale: 0.35 -> 0.3\)"):
        make_boundary_labels(dataset, tmp_path, changed)
    forced = make_boundary_labels(dataset, tmp_path, changed, force=True)
    assert forced["timings"]["items_computed"] == len(dataset) and forced["config"]["theta_scale"] == 0.3


def test_stage_errors_name_the_problem(synthetic, tmp_path):
    dataset = open_dataset(synthetic, "train")
    with pytest.raises(StageError, match=r"no finished 'make_cam' stage for boundary_labels.*tagseg make-cam"):
        make_boundary_labels(dataset, tmp_path, BoundaryLabelsConfig())
    fake_cams(dataset, tmp_path)
    with pytest.raises(StageError, match="boundary_labels: the source stage 'make_cam' has no label-free threshold"):
        make_boundary_labels(dataset, tmp_path, BoundaryLabelsConfig(crf=False))

    bad = dataset.records[1]
    save_score_map(tmp_path / "make_cam" / f"{bad.id}.npz", np.zeros((len(bad.labels), 20, 30), np.float32),
                   bad.labels)
    for crf in (False, True):
        with pytest.raises(StageError, match=rf"make_cam/{bad.id}.npz: score map is 20x30 \(HxW\) but image "
                                             rf"\S*{bad.id}.jpg is 48x64"):
            make_boundary_labels(dataset, tmp_path, BoundaryLabelsConfig(crf=crf, fg_threshold=0.5), force=True)
        assert not (tmp_path / "boundary_labels" / f"{bad.id}.png").exists()
        assert read_manifest(tmp_path / "boundary_labels")["status"] == "interrupted"

    other = [c for c in range(1, dataset.num_classes) if c not in bad.labels][:1]
    save_score_map(tmp_path / "make_cam" / f"{bad.id}.npz", np.zeros((1, 48, 64), np.float32), other)
    tags = re.escape(str(sorted(bad.labels)))
    with pytest.raises(StageError, match=rf"{bad.id}.npz: scores for classes {re.escape(str(other))} but image "
                                         rf"{bad.id} is tagged {tags}: the score stage was made for other tags"):
        make_boundary_labels(dataset, tmp_path, BoundaryLabelsConfig(crf=False, fg_threshold=0.5), force=True)
    (tmp_path / "make_cam" / f"{bad.id}.npz").unlink()
    with pytest.raises(DataError, match=rf"make_cam/{bad.id}.npz: score map not found"):
        make_boundary_labels(dataset, tmp_path, BoundaryLabelsConfig(crf=False, fg_threshold=0.5), force=True)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="bg_threshold"):
        load_config(BoundaryLabelsConfig, None, ["fg_threshold=0.2", "bg_threshold=0.5"])
    with pytest.raises(ConfigError, match="theta_scale"):
        load_config(BoundaryLabelsConfig, None, ["theta_scale=0.5"])
    with pytest.raises(ConfigError, match="window"):
        load_config(BoundaryLabelsConfig, None, ["window=0"])
    assert [bes.smallest_window(d) for d in (0.10, 0.08, 0.2, 0.3)] == [11, 13, 7, 5]  # 1 / w < theta_diff
    defaults = BoundaryLabelsConfig()
    assert (defaults.window, defaults.theta_scale, defaults.theta_diff) == (8.3, 0.35, 0.10)
    assert (defaults.cams, defaults.crf, defaults.between_foregrounds) == ("make_cam", True, False)


def test_recipe_and_command(synthetic, tmp_path):
    from typer.testing import CliRunner

    from tagseg.cli import app

    dataset = open_dataset(synthetic, "train")
    run = tmp_path / "run"
    fake_cams(dataset, run)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"dataset": str(synthetic), "run": str(run), "device": "cpu", "workers": 1,
                                      "eval_split": None, "stages": {"boundary_labels": {
                                          "cams": "make_cam", "fg_threshold": 0.5, "crf": False}}}))
    record = run_recipe(*load_recipe(recipe))
    assert record["stages"]["boundary_labels"]["status"] == "complete"
    # the default 8.3 px of a 320 px photo would be 3 px on these 64 px images, too small for straight edges
    assert read_manifest(run / "boundary_labels")["window_pixels"] == 11
    assert len(list((run / "boundary_labels").glob("*.png"))) == len(dataset)

    shutil.rmtree(run / "boundary_labels")
    result = CliRunner().invoke(app, ["boundary-labels", str(synthetic), str(run), "--set", "fg_threshold=0.5",
                                      "--set", "crf=false", "--set", "between_foregrounds=true", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "boundary_labels: window 11 px, fg > 0.500, background <= 0.117; pixels: boundary" in result.output
    assert read_manifest(run / "boundary_labels")["config"]["between_foregrounds"] is True
