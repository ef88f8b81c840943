"""Confusion-matrix metrics: mIoU, per-class IoU / precision / recall, mFP / mFN.

mFP and mFN follow SILOP (eq. 3): the mean over foreground classes of FP_c / TP_c and
FN_c / TP_c. Pixels whose ground truth is 255 are ignored; predicted 255 ("no label",
e.g. an ignore band in pseudo-labels) counts as a miss for the true class.
"""

from __future__ import annotations

import math

import numpy as np

from tagseg.data.imageio import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates a (C, C + 1) count matrix: rows ground truth, columns prediction, last = unlabelled."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(self, truth: np.ndarray, prediction: np.ndarray) -> None:
        if truth.shape != prediction.shape:
            raise ValueError(f"shape mismatch: truth {truth.shape}, prediction {prediction.shape}")
        valid = truth != IGNORE_INDEX
        t = truth[valid].astype(np.int64)
        p = prediction[valid].astype(np.int64)
        p[p == IGNORE_INDEX] = self.num_classes
        if t.size and (t.max() >= self.num_classes or p.max() > self.num_classes):
            raise ValueError(f"labels outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(t * (self.num_classes + 1) + p,
                                   minlength=self.num_classes * (self.num_classes + 1)).reshape(self.matrix.shape)

    def scores(self, class_names: tuple[str, ...] | None = None) -> dict:
        return scores_from_confusion(self.matrix, class_names)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def scores_from_confusion(matrix: np.ndarray, class_names: tuple[str, ...] | None = None) -> dict:
    """All metrics of a (C, C) or (C, C + 1) confusion matrix, as plain JSON-ready values.

    IoU of a class is NaN (left out of mIoU) when it appears in neither truth nor prediction.
    mFP / mFN average over the foreground classes with TP > 0; classes with TP = 0 but some
    FP or FN would be infinite there, so they are listed in ``undefined_fp_fn`` instead.
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    num_classes = matrix.shape[0]
    names = class_names or tuple(str(i) for i in range(num_classes))
    square = matrix[:, :num_classes]
    tp = np.diag(square).astype(np.float64)
    fp = square.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    iou = _ratio(tp, tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    fp_ratio = _ratio(fp, tp)
    fn_ratio = _ratio(fn, tp)
    foreground = np.arange(1, num_classes)
    defined = foreground[tp[foreground] > 0]
    undefined = [names[c] for c in foreground if tp[c] == 0 and fp[c] + fn[c] > 0]
    total = matrix.sum()

    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(float(value), 6)

    return {
        "miou": clean(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "pixel_accuracy": clean(tp.sum() / total) if total else None,
        "mfp": clean(fp_ratio[defined].mean()) if defined.size else None,
        "mfn": clean(fn_ratio[defined].mean()) if defined.size else None,
        "undefined_fp_fn": undefined,
        "unlabelled_fraction": clean(matrix[:, num_classes:].sum() / total) if total and matrix.shape[1] > num_classes
        else 0.0,
        "per_class": {
            names[c]: {"iou": clean(iou[c]), "precision": clean(precision[c]), "recall": clean(recall[c]),
                       "fp_over_tp": clean(fp_ratio[c]), "fn_over_tp": clean(fn_ratio[c]),
                       "gt_pixels": int(matrix[c].sum())}
            for c in range(num_classes)
        },
        "confusion": matrix.tolist(),
    }


def labels_from_scores(scores: np.ndarray, classes: np.ndarray, threshold: float | None) -> np.ndarray:
    """Per-pixel labels from score maps (K, H, W) of the listed classes.

    Without background among ``classes`` a pixel is background unless its best class
    scores strictly above ``threshold``; with background present it is a plain argmax.
    """
    classes = np.asarray(classes)
    height, width = scores.shape[1:]
    if len(classes) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    best = np.argmax(scores, axis=0)
    labels = classes[best].astype(np.uint8)
    if 0 not in classes:
        if threshold is None:
            raise ValueError("score maps without background need a threshold")
        labels[np.max(scores, axis=0) <= threshold] = 0
    return labels


class ThresholdSweep:
    """Confusion matrices for many background thresholds in one pass over the data.

    For each pixel the prediction is its best class while that class's score exceeds t,
    else background. Counting each pixel's (truth, best class) in a histogram over the
    threshold grid and taking cumulative sums gives every threshold's matrix at once:
    O(pixels + thresholds * classes^2), not O(pixels * thresholds).
    """

    def __init__(self, thresholds: np.ndarray, num_classes: int) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("thresholds must be a strictly increasing 1-D sequence")
        self.num_classes = num_classes
        bins = len(self.thresholds) + 1
        self.histogram = np.zeros((num_classes, num_classes, bins), dtype=np.int64)

    def update(self, truth: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> None:
        classes = np.asarray(classes)
        if 0 in classes:
            raise ValueError("a threshold sweep needs score maps without a background channel")
        valid = truth != IGNORE_INDEX
        t = truth[valid].astype(np.int64)
        bins = len(self.thresholds) + 1
        if len(classes) == 0:
            best_class = np.zeros_like(t)
            position = np.zeros_like(t)
        else:
            flat = scores.reshape(len(classes), -1)[:, valid.ravel()]
            best_class = classes[np.argmax(flat, axis=0)].astype(np.int64)
            # number of thresholds strictly below the best score = thresholds at which it is foreground
            position = np.searchsorted(self.thresholds, flat.max(axis=0), side="left")
        index = (t * self.num_classes + best_class) * bins + position
        self.histogram += np.bincount(index, minlength=self.histogram.size).reshape(self.histogram.shape)

    def matrices(self) -> np.ndarray:
        """(T, C, C) confusion matrices, one per threshold."""
        # foreground[k] counts pixels whose best score exceeds threshold k: bins k+1 .. T
        above = np.cumsum(self.histogram[..., ::-1], axis=-1)[..., ::-1][..., 1:]
        total = self.histogram.sum(axis=-1, keepdims=True)
        result = np.moveaxis(above, -1, 0).copy()  # [threshold, truth, predicted]
        result[:, :, 0] += (total - above).sum(axis=1).T  # below the threshold: background
        return result

    def curve(self, class_names: tuple[str, ...] | None = None) -> list[dict]:
        """mIoU / mFP / mFN for each threshold."""
        curve = []
        for threshold, matrix in zip(self.thresholds, self.matrices()):
            s = scores_from_confusion(matrix, class_names)
            curve.append({"threshold": round(float(threshold), 6), "miou": s["miou"], "mfp": s["mfp"],
                          "mfn": s["mfn"]})
        return curve


def average_precision(scores: np.ndarray, targets: np.ndarray) -> dict:
    """Per-class average precision of image-level scores (N, K) against multi-hot targets; mAP over
    classes with at least one positive."""
    per_class = []
    for k in range(targets.shape[1]):
        positives = targets[:, k] > 0
        if not positives.any():
            per_class.append(None)
            continue
        order = np.argsort(-scores[:, k], kind="stable")
        hits = positives[order]
        precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
        per_class.append(float(precision_at_hit.mean()))
    defined = [ap for ap in per_class if ap is not None]
    return {"map": float(np.mean(defined)) if defined else None, "per_class": per_class}


def otsu_threshold(scores_histogram: np.ndarray, bin_edges: np.ndarray) -> float:
    """Otsu's threshold of a score histogram: the label-free split between low and high scores."""
    from skimage.filters import threshold_otsu

    centres = (bin_edges[:-1] + bin_edges[1:]) / 2
    occupied = np.flatnonzero(scores_histogram)
    if occupied.size < 2:  # every score in one bin: no split exists, any threshold separates nothing
        return float(centres[occupied[0]]) if occupied.size else 0.5
    return float(threshold_otsu(hist=(scores_histogram, centres)))
