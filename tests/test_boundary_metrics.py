"""Boundary precision / recall / best F of class-agnostic boundary maps, from the metric to `tagseg eval`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tagseg.data.imageio import write_mask
from tagseg.errors import DataError
from tagseg.evaluate import BOUNDARY_THRESHOLDS, GroundTruth, evaluate, evaluate_boundaries
from tagseg.metrics import BoundarySweep, ground_truth_boundaries

VOID = 255


def square_mask() -> np.ndarray:
    """A 20 x 20 square of class 1 (rows and columns 10..29) on background, 40 x 40."""
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 1
    return mask


def square_sides(shift: int) -> np.ndarray:
    """The square's ground-truth boundary with each side moved ``shift`` px outwards along its normal.

    The ground truth (right / lower neighbour rule) is row 9 and column 9 outside the square, row 29 and
    column 29 inside it; moved sides keep their length, so every moved pixel is exactly ``shift`` px
    from its own ground-truth pixel and farther from every other.
    """
    sides = np.zeros((40, 40), bool)
    sides[9 - shift, 10:30] = True
    sides[10:30, 9 - shift] = True
    sides[29 + shift, 10:30] = True
    sides[10:29, 29 + shift] = True
    return sides


def scores(mask, boundary, tolerance=2.0, thresholds=BOUNDARY_THRESHOLDS) -> dict:
    sweep = BoundarySweep(np.asarray(thresholds), tolerance)
    sweep.add(sweep.histograms(mask, np.asarray(boundary, np.float64)))
    return sweep.scores()


def at(result: dict, threshold: float) -> dict:
    return next(point for point in result["curve"] if point["threshold"] == threshold)


def test_ground_truth_boundaries_outline_each_labelled_region_once():
    touching = np.zeros((3, 6), np.uint8)
    touching[:, 3:] = 1
    expected = np.zeros((3, 6), bool)
    expected[:, 2] = True  # one line between two regions; the image border is no boundary
    assert np.array_equal(ground_truth_boundaries(touching), expected)
    assert np.array_equal(ground_truth_boundaries(square_mask()), square_sides(0))

    surrounded = np.full((6, 6), VOID, np.uint8)
    surrounded[1:5, 1:5] = 1
    expected = np.zeros((6, 6), bool)
    expected[1:5, 1:5] = True
    expected[2:4, 2:4] = False  # the whole outline against void, upper and left sides included
    assert np.array_equal(ground_truth_boundaries(surrounded), expected)
    assert not ground_truth_boundaries(np.full((4, 4), 2, np.uint8)).any()


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 4])
def test_outline_shifted_within_tolerance_is_perfect_and_beyond_it_is_all_wrong(shift):
    result = scores(square_mask(), square_sides(shift), tolerance=2)
    expected = 1.0 if shift <= 2 else 0.0
    assert result["num_images"] == 1 and result["boundary_pixels"] == 79
    assert (result["precision"], result["recall"], result["f"]) == (expected, expected, expected)
    assert all(point["precision"] == expected and point["recall"] == expected for point in result["curve"])


def test_tolerance_is_a_euclidean_disk_for_precision_and_recall_alike():
    mask = np.full((11, 11), VOID, np.uint8)
    mask[5, 5] = 0  # one labelled pixel: the only ground-truth boundary pixel
    for (dy, dx), hit in [((0, 2), True), ((1, 1), True), ((1, 2), False), ((0, 3), False)]:
        predicted = np.zeros((11, 11))
        predicted[5 + dy, 5 + dx] = 1.0
        point = at(scores(mask, predicted), 0.5)
        # a miss lies on void, so it is left out of precision rather than counted wrong
        assert (point["precision"], point["recall"]) == ((1.0, 1.0) if hit else (None, 0.0)), (dy, dx)


def test_a_contour_along_a_voc_void_band_needs_a_tolerance_of_three():
    mask = np.zeros((12, 20), np.uint8)
    mask[:, 10:] = 1
    mask[:, 5:10] = VOID  # a 5 px band: labelled rims at columns 4 and 10
    predicted = np.zeros((12, 20))
    predicted[:, 7] = 1.0  # the contour along the middle of the band, 3 px from both rims
    assert at(scores(mask, predicted, tolerance=2), 0.5) == {"threshold": 0.5, "precision": None, "recall": 0.0,
                                                              "f": None}
    assert at(scores(mask, predicted, tolerance=3), 0.5)["f"] == 1.0


def test_void_predictions_cannot_be_judged_but_labelled_ones_can():
    mask = square_mask()
    mask[31:40, 0:9] = VOID  # a void block whose labelled rim is ground truth as well
    truth = ground_truth_boundaries(mask)
    count = int(truth.sum())
    predicted = truth.astype(np.float64)
    assert at(scores(mask, predicted), 0.5)["precision"] == 1.0

    predicted[36, 4] = 1.0  # deep inside the void block, 5 px from its rim
    predicted[31, 4] = 1.0  # on void but next to the rim: a true positive
    result = at(scores(mask, predicted), 0.5)
    assert (result["precision"], result["recall"]) == (1.0, 1.0)

    predicted[3, 35] = 1.0  # labelled background far from every boundary: a false positive
    result = at(scores(mask, predicted), 0.5)
    assert result["precision"] == round((count + 1) / (count + 2), 6) and result["recall"] == 1.0


def test_threshold_sweep_finds_the_level_that_keeps_only_the_right_pixels():
    mask = square_mask()
    predicted = np.where(square_sides(0), 204 / 255, 0.0)  # stored as 8-bit PNG levels: 0.8 ...
    predicted[2, 5:35] = 102 / 255  # ... and 0.4, a line far from every boundary
    result = scores(mask, predicted)
    assert 0.4 < result["threshold"] <= 0.8 and result["f"] == 1.0
    assert at(result, 0.8)["f"] == 1.0  # a level of exactly 0.8 counts at threshold 0.8
    low = at(result, 0.4)
    assert low["precision"] == round(79 / (79 + 30), 6) and low["recall"] == 1.0
    assert at(result, 0.81) == {"threshold": 0.81, "precision": None, "recall": 0.0, "f": None}


def test_nothing_to_score_gives_no_best_threshold():
    result = scores(np.full((8, 8), 2, np.uint8), np.zeros((8, 8)))  # no boundary, nothing predicted
    assert (result["threshold"], result["precision"], result["recall"], result["f"]) == (None, None, None, None)
    assert result["boundary_pixels"] == 0 and result["num_images"] == 1


def test_bad_sweep_settings_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        BoundarySweep(np.array([0.5, 0.2]))
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        BoundarySweep(np.array([0.5]), tolerance=-1)


def write_boundary(path, values: np.ndarray) -> None:
    Image.fromarray(np.round(values * 255).astype(np.uint8), mode="L").save(path)


@pytest.fixture
def boundary_folders(tmp_path):
    """Ground-truth masks (with classes.txt) and matching boundary maps, two images."""
    truth, predictions = tmp_path / "truth", tmp_path / "pred"
    truth.mkdir()
    predictions.mkdir()
    (truth / "classes.txt").write_text("background\nthing\n")
    for name, shift in (("a", 0), ("b", 1)):
        write_mask(truth / f"{name}.png", square_mask())
        write_boundary(predictions / f"{name}.png", square_sides(shift).astype(np.float64))
    return truth, predictions


def test_evaluate_boundaries_on_a_folder_and_its_errors(boundary_folders):
    truth_dir, predictions = boundary_folders
    truth = GroundTruth.from_folder(truth_dir, None)
    result = evaluate_boundaries(predictions, truth, tolerance=1, workers=2)
    assert result["kind"] == "boundaries" and result["num_images"] == 2 and result["tolerance"] == 1.0
    assert result["metrics"] == {"precision": 1.0, "recall": 1.0, "f": 1.0, "boundary_pixels": 158}
    assert result["threshold"] == 0.01 and len(result["curve"]) == 99
    assert evaluate_boundaries(predictions, truth, tolerance=0)["metrics"]["f"] == 0.5  # b is 1 px off

    write_boundary(predictions / "b.png", np.zeros((30, 40)))
    with pytest.raises(DataError, match=r"b\.png: prediction is 40x30 but ground truth b\.png is 40x40"):
        evaluate_boundaries(predictions, truth)
    write_mask(predictions / "b.png", square_mask())  # a class mask is no boundary map
    with pytest.raises(DataError, match=r"b\.png: a boundary map must be an 8-bit grayscale image, this one is 'P'"):
        evaluate_boundaries(predictions, truth)
    (predictions / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"b\.png: cannot decode image"):
        evaluate_boundaries(predictions, truth)


def test_boundary_maps_stage_folder_is_scored_as_boundaries_without_asking(boundary_folders):
    truth_dir, predictions = boundary_folders
    (predictions / "manifest.json").write_text(json.dumps({"kind": "'boundary_maps' stage", "status": "complete"}))
    result = evaluate(predictions, GroundTruth.from_folder(truth_dir, None))
    assert result["kind"] == "boundaries" and result["metrics"]["f"] == 1.0
    (predictions / "manifest.json").write_text(json.dumps({"kind": "boundary_maps", "status": "complete"}))
    assert evaluate(predictions, GroundTruth.from_folder(truth_dir, None))["kind"] == "boundaries"


def test_cli_scores_a_plain_folder_of_boundary_maps(boundary_folders, tmp_path):
    truth_dir, predictions = boundary_folders
    result = subprocess.run([sys.executable, "-m", "tagseg.cli", "eval", str(predictions), str(truth_dir),
                             "--boundary", "--tolerance", "0", "--thresholds", "0.1:1:0.1"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert ("boundaries within 0 px: precision 50.00  recall 50.00  best F 50.00 at threshold 0.10  images 2"
            in result.stderr)
    written = json.loads((tmp_path / "eval_pred.json").read_text())
    assert written["kind"] == "boundaries" and written["tolerance"] == 0.0 and written["threshold"] == 0.1
    assert written["metrics"]["f"] == 0.5 and len(written["curve"]) == 9
    assert written["ground_truth"] == str(truth_dir) and written["prediction"] == str(predictions)
