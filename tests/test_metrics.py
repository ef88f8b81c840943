import numpy as np
import pytest

from tagseg.metrics import ConfusionMatrix, ThresholdSweep, labels_from_scores, scores_from_confusion


def test_hand_made_three_class_example():
    truth = np.array([[0, 0, 1, 1],
                      [0, 2, 2, 1],
                      [255, 2, 2, 0]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 2, 2],
                     [1, 2, 2, 0]], dtype=np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(truth, pred)
    # rows = truth, columns = prediction (last column: predicted 255, none here)
    expected = np.array([[3, 1, 0, 0],
                         [0, 2, 1, 0],
                         [1, 0, 3, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    s = cm.scores(("bg", "a", "b"))
    # IoU: bg 3/(3+1+1)=0.6, a 2/(2+1+1)=0.5, b 3/(3+1+1)=0.6
    assert s["per_class"]["bg"]["iou"] == pytest.approx(0.6)
    assert s["per_class"]["a"]["iou"] == pytest.approx(0.5)
    assert s["per_class"]["b"]["iou"] == pytest.approx(0.6)
    assert s["miou"] == pytest.approx((0.6 + 0.5 + 0.6) / 3)
    assert s["pixel_accuracy"] == pytest.approx(8 / 11)
    # SILOP eq. 3 over foreground: a FP=1 FN=1 TP=2 ; b FP=1 FN=1 TP=3
    assert s["mfp"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert s["mfn"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert s["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert s["per_class"]["b"]["recall"] == pytest.approx(3 / 4)


def test_perfect_prediction_is_100():
    truth = np.random.default_rng(0).integers(0, 4, (20, 30)).astype(np.uint8)
    cm = ConfusionMatrix(4)
    cm.update(truth, truth)
    s = cm.scores()
    assert s["miou"] == 1.0 and s["mfp"] == 0.0 and s["mfn"] == 0.0


def test_unlabelled_prediction_counts_as_miss_and_absent_classes_are_skipped():
    truth = np.array([[1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 255, 0, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(truth, pred)
    s = cm.scores()
    assert s["per_class"]["1"]["iou"] == pytest.approx(0.5)
    assert s["per_class"]["2"]["iou"] is None  # neither in truth nor prediction
    assert s["miou"] == pytest.approx(0.75)
    assert s["unlabelled_fraction"] == pytest.approx(0.25)


def test_zero_true_positives_are_reported_not_averaged():
    s = scores_from_confusion(np.array([[5, 1], [2, 0]]), ("bg", "x"))
    assert s["mfp"] is None and s["undefined_fp_fn"] == ["x"]


def test_labels_from_scores_threshold_and_background_channel():
    scores = np.array([[[0.2, 0.6]], [[0.5, 0.1]]], np.float32)
    np.testing.assert_array_equal(labels_from_scores(scores, np.array([1, 3]), 0.4), [[3, 1]])
    np.testing.assert_array_equal(labels_from_scores(scores, np.array([1, 3]), 0.55), [[0, 1]])
    np.testing.assert_array_equal(labels_from_scores(scores, np.array([1, 3]), 0.6), [[0, 0]])  # ties -> bg
    np.testing.assert_array_equal(labels_from_scores(scores, np.array([0, 2]), None), [[2, 0]])


def test_threshold_sweep_equals_per_threshold_reference():
    rng = np.random.default_rng(1)
    thresholds = np.round(np.arange(0.0, 1.0, 0.05), 2)
    sweep = ThresholdSweep(thresholds, 5)
    reference = [ConfusionMatrix(5) for _ in thresholds]
    for _ in range(6):
        truth = rng.integers(0, 5, (9, 11)).astype(np.uint8)
        truth[rng.random(truth.shape) < 0.1] = 255
        k = int(rng.integers(0, 4))
        classes = np.sort(rng.choice(np.arange(1, 5), k, replace=False))
        scores = np.round(rng.random((k, 9, 11)), 2).astype(np.float32)  # exact ties with the grid occur
        sweep.update(truth, scores, classes)
        for t, cm in zip(thresholds, reference):
            cm.update(truth, labels_from_scores(scores, classes, t))
    for matrix, cm in zip(sweep.matrices(), reference):
        np.testing.assert_array_equal(matrix, cm.matrix[:, :5])


def test_otsu_threshold_splits_two_modes_and_survives_one_mode():
    from tagseg.metrics import otsu_threshold

    edges = np.linspace(0, 1, 11)
    two_modes = np.array([50, 30, 5, 0, 0, 0, 0, 10, 40, 20])
    assert 0.2 <= otsu_threshold(two_modes, edges) <= 0.7
    assert otsu_threshold(np.array([9, 0, 0, 0, 0, 0, 0, 0, 0, 0]), edges) == pytest.approx(0.05)
    assert otsu_threshold(np.zeros(10, int), edges) == 0.5
