"""Confusion-matrix metrics: mIoU, per-class IoU / precision / recall, mFP / mFN; boundary
precision / recall / F-measure.

mFP and mFN follow SILOP (eq. 3): the mean over foreground classes of FP_c / TP_c and
FN_c / TP_c. Pixels whose ground truth is 255 are ignored; predicted 255 ("no label",
e.g. an ignore band in pseudo-labels) counts as a miss for the true class.
"""

from __future__ import annotations

import math

import cv2
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


def ground_truth_boundaries(truth: np.ndarray) -> np.ndarray:
    """Class-agnostic ground-truth boundary of a label mask: the outlines of its labelled regions.

    A labelled pixel is on the boundary when its right or lower neighbour has another label
    (one line, one pixel thick, between two touching regions) or when any of its four
    neighbours is void (255). The second rule matters where void surrounds objects (msrc-voc,
    the VOC void bands): marking only right / lower neighbours would keep a region's lower and
    right edges against void and drop its upper and left ones. Void pixels and the image
    border are never boundary.
    """
    labelled = truth != IGNORE_INDEX
    void = ~labelled
    edge = np.zeros(truth.shape, dtype=bool)
    edge[:, :-1] |= (truth[:, :-1] != truth[:, 1:])
    edge[:-1, :] |= (truth[:-1, :] != truth[1:, :])
    edge[:, 1:] |= void[:, :-1]
    edge[1:, :] |= void[:-1, :]
    return edge & labelled


class BoundarySweep:
    """Boundary precision and recall at every threshold of a grid, summed over images.

    At threshold T the predicted boundary is every pixel whose map value is >= T. A predicted
    pixel is a true positive when a ground-truth boundary pixel lies within ``tolerance`` px
    (Euclidean); one on void that is not a true positive cannot be judged and is left out of
    precision. A ground-truth pixel is recalled when a predicted pixel lies within ``tolerance``
    px. There is no one-to-one matching (as in BSDS), so a thick prediction beside the truth
    costs no precision. Counts go into histograms over the grid position, as in
    :class:`ThresholdSweep`, so every threshold comes from one pass per image.
    """

    def __init__(self, thresholds: np.ndarray, tolerance: float = 2.0) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.thresholds.ndim != 1 or len(self.thresholds) == 0 or np.any(np.diff(self.thresholds) <= 0):
            raise ValueError("thresholds must be a strictly increasing, non-empty 1-D sequence")
        if len(self.thresholds) >= np.iinfo(np.uint16).max:
            raise ValueError(f"at most {np.iinfo(np.uint16).max - 1} thresholds, got {len(self.thresholds)}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 px, got {tolerance}")
        self.tolerance = float(tolerance)
        radius = int(math.floor(self.tolerance))
        y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        self._disk = (x * x + y * y <= self.tolerance ** 2).astype(np.uint8)  # the same disk as distance <= t
        # rows: true positives, counted predictions, recalled ground truth; column k: pixels predicted
        # at exactly the k lowest thresholds
        self.histogram = np.zeros((3, len(self.thresholds) + 1), dtype=np.int64)
        self.num_images = 0

    def histograms(self, truth: np.ndarray, boundary: np.ndarray) -> np.ndarray:
        """One image's (3, T + 1) counts; does not touch the running sums (safe in worker threads)."""
        if truth.shape != boundary.shape:
            raise ValueError(f"shape mismatch: truth {truth.shape}, boundary map {boundary.shape}")
        edge = ground_truth_boundaries(truth)
        # the number of thresholds at or below each value: the thresholds at which the pixel is predicted
        position = np.searchsorted(self.thresholds, boundary, side="right").astype(np.uint16)
        distance = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        near = distance <= self.tolerance + 1e-4  # float32 square roots of integers: 2.0 must stay within 2
        judged = near | (truth != IGNORE_INDEX)
        reach = cv2.dilate(position, self._disk)  # the highest position within the disk (monotone in value)
        bins = len(self.thresholds) + 1
        return np.stack([np.bincount(position[near], minlength=bins), np.bincount(position[judged], minlength=bins),
                         np.bincount(reach[edge], minlength=bins)])

    def add(self, histograms: np.ndarray) -> None:
        self.histogram += histograms
        self.num_images += 1

    def scores(self) -> dict:
        """Precision / recall / F per threshold and the best F over one dataset-wide threshold (ODS)."""
        above = np.cumsum(self.histogram[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)
        true_positives, predicted, recalled = above
        truth_pixels = int(self.histogram[2].sum())
        precision = _ratio(true_positives, predicted)
        recall = _ratio(recalled, np.full_like(recalled, truth_pixels))
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f[np.isnan(precision) | np.isnan(recall)] = np.nan

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else round(float(value), 6)

        curve = [{"threshold": round(float(t), 6), "precision": clean(p), "recall": clean(r), "f": clean(v)}
                 for t, p, r, v in zip(self.thresholds, precision, recall, f)]
        # ties go to the lowest threshold; no defined F at all (no ground truth, nothing predicted): all None
        best = curve[int(np.nanargmax(f))] if np.isfinite(f).any() else dict.fromkeys(curve[0])
        return {**best, "tolerance": self.tolerance, "num_images": self.num_images,
                "boundary_pixels": truth_pixels, "curve": curve}


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


def superpixel_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour lies in another superpixel (one line between two regions)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def superpixel_scores(labels: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> dict:
    """One image's superpixel quality against its class mask (each class one region, void left out).

    - ``ue``, undersegmentation error (Neubert & Protzel 2012): for every region G and superpixel S
      touching it, the smaller of |S in G| and |S outside G|, summed and divided by the labelled pixels;
      0 when no superpixel straddles two regions.
    - ``asa``, achievable segmentation accuracy: each superpixel labelled with its majority region,
      the share of labelled pixels that gets right; 1 for a perfect partition.
    - ``br`` / ``bp``: boundary recall and precision within ``tolerance`` px, as
      :class:`BoundarySweep` counts them (ground-truth boundaries from :func:`ground_truth_boundaries`;
      a superpixel edge on void that matches nothing is not judged).
    - ``n``: the number of superpixels.
    """
    if labels.shape != truth.shape:
        raise ValueError(f"shape mismatch: truth {truth.shape}, superpixels {labels.shape}")
    labelled = truth != IGNORE_INDEX
    ids = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    regions = truth[labelled].astype(np.int64)
    superpixels = ids[labelled].astype(np.int64)
    count = int(ids.max()) + 1
    joint = np.bincount(superpixels * 256 + regions, minlength=count * 256).reshape(count, 256)
    size = joint.sum(axis=1, keepdims=True)
    total = max(1, int(labelled.sum()))
    ue = float(np.minimum(joint, size - joint)[joint > 0].sum()) / total
    asa = float(joint.max(axis=1).sum()) / total
    sweep = BoundarySweep(np.array([0.5]), tolerance)
    sweep.add(sweep.histograms(truth, superpixel_boundaries(labels).astype(np.float64)))
    boundary = sweep.scores()
    point = boundary["curve"][0]
    return {"n": count, "ue": round(ue, 6), "asa": round(asa, 6), "br": point["recall"], "bp": point["precision"]}
