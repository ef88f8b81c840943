"""Background thresholds chosen without ground truth, for score maps without a background channel.

A pixel is background unless its best tagged-class score is above a global threshold t.
The oracle picks t on the training masks; these rules pick it from the data alone (the stages'
``label_free`` methods; PerimeterFit and the walk add their own, derived from their source stage's
threshold, in their modules; docs/benchmarks/label-free.md has the measurements):

- ``expected_iou``: the t with the highest mIoU expected if every pixel's best score were the
  probability that it belongs to the class winning it. Histograms only; it trusts the head's
  calibration, and misses by 18.7 mIoU on SEAM's spread-out maps.
- ``otsu``: Otsu's split of the histogram of every pixel's best score over the split.
- ``masking`` (the CAM default: the best worst case over the heads measured): ask the
  classifier. For each t and tagged class, erase the class's mask (pixels set to the
  backbone's mean colour) and, separately, erase everything but the mask.
  A good mask takes the class's score with it when erased and keeps it when kept; an
  over-large mask does both trivially (t -> 0 erases the whole image), so each term is
  measured against a random mask of the same area, whose erasure would remove that fraction
  of the score: per class, ``kept - erased - (2 * area - 1) * (full - blank)`` in
  probabilities, zero for the empty and the full mask. The threshold with the largest sum
  over the split's (image, tagged class) pairs wins. A classifier that sees fewer than half of
  the tagged classes it is asked about cannot judge masks: Otsu's threshold is used instead (the
  walk's ``from_source`` there).
- ``crf`` (measured by the benchmark, not a stage method: it favours thresholds whose labels the
  CRF has little to change, not good ones): the threshold whose labels a dense CRF changes least
  (mean IoU of each image's labels and their CRF-refined labels, over the labels present in either).

Everything here takes arrays (and, for ``masking``, a callable classifier) and returns arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from tagseg.artifacts import load_score_map
from tagseg.data.dataset import evenly_spaced
from tagseg.data.imageio import read_image
from tagseg.data.transforms import normalize, resize
from tagseg.metrics import otsu_threshold
from tagseg.progress import parallel_map, track
from tagseg.refine.crf import CrfParams, crf_labels

METHODS = ("expected_iou", "masking", "otsu")
Method = Literal["expected_iou", "masking", "otsu"]
FINE_GRID = tuple(round(t, 2) for t in np.arange(0.01, 0.995, 0.01))  # thresholds the histogram rules try
SCORE_BINS = np.linspace(0.0, 1.0, 201)
GRID = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.05))  # thresholds the image-based rules try
SAMPLE = 128  # images the classifier is asked about (evenly spaced over the split; label-free.md: 32 moved BES by 2.8)
MIN_SEEN = 0.5  # share of the asked (image, tagged class) pairs the classifier must see to judge masks
FLOOR_SHARE = 0.01  # share of pixels at or below a score map folder's floor (a few stray pixels do not set it)
log = logging.getLogger(__name__)


def best_score_histogram(scores: np.ndarray) -> np.ndarray:
    """Histogram of each pixel's best class score (0 where no class is tagged) over [0, 1]."""
    best = scores.max(axis=0) if len(scores) else np.zeros(scores.shape[1:], np.float32)
    return np.histogram(np.clip(best, 0.0, 1.0), bins=SCORE_BINS)[0]


def otsu(histogram: np.ndarray) -> float:
    """Otsu's split of a best-score histogram (CAM scores are roughly bimodal: background near 0)."""
    return round(otsu_threshold(histogram, SCORE_BINS), 3)


def score_floor(histogram: np.ndarray, share: float = FLOOR_SHARE) -> float:
    """The lowest best score the maps reach: the lower edge of the :data:`SCORE_BINS` bin where the
    cumulative ``share`` of pixels is reached. 0 for CAMs, whose background pixels score 0; higher
    for maps that an averaging step lifts everywhere (SEAM's PCM output), where a seed threshold
    taken as a fraction of another would fall below every pixel."""
    cumulative = np.cumsum(histogram) / max(int(np.sum(histogram)), 1)
    return float(SCORE_BINS[min(int(np.searchsorted(cumulative, share)), len(SCORE_BINS) - 2)])


def threshold_labels(scores: np.ndarray, thresholds) -> np.ndarray:
    """(T, H, W) uint8 labels indexing [background, *classes] of (K, H, W) scores at each threshold."""
    thresholds = np.asarray(thresholds, np.float32)
    if len(scores) == 0:
        return np.zeros((len(thresholds), *scores.shape[1:]), np.uint8)
    best = scores.max(axis=0)
    winner = (scores.argmax(axis=0) + 1).astype(np.uint8)
    return np.where(best[None] > thresholds[:, None, None], winner[None], np.uint8(0))


def choose(thresholds, totals: np.ndarray) -> float:
    """The threshold with the largest criterion total (the lowest one on ties)."""
    return float(np.asarray(thresholds)[int(np.argmax(totals))])


# --- expected IoU --------------------------------------------------------------------------------------------

def class_histograms(scores: np.ndarray, classes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the histogram over :data:`SCORE_BINS` of the best scores of the pixels it wins
    (counts) and the sum of those scores per bin (sums), both (num_classes, bins)."""
    bins = len(SCORE_BINS) - 1
    if not len(scores):
        return np.zeros((num_classes, bins), np.int64), np.zeros((num_classes, bins))
    best = np.clip(scores.max(axis=0), 0.0, 1.0).ravel()
    winner = np.asarray(classes)[scores.argmax(axis=0)].ravel()
    index = winner * bins + np.minimum((best * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=num_classes * bins).reshape(num_classes, bins)
    sums = np.bincount(index, weights=best, minlength=num_classes * bins).reshape(num_classes, bins)
    return counts, sums


def expected_miou(counts: np.ndarray, sums: np.ndarray, thresholds=FINE_GRID) -> np.ndarray:
    """(T,) mIoU expected at each threshold if every pixel's best score were the probability that it
    belongs to the class that wins it (and else to background), from :func:`class_histograms` totals.

    Class c: expected intersection = sum of the scores above t, expected union = pixels above t plus
    the scores below it; background likewise with 1 - score. Averaged over background and the
    classes that win any pixel, as mIoU averages over classes.
    """
    centres = (SCORE_BINS[:-1] + SCORE_BINS[1:]) / 2
    above = (centres[None] > np.asarray(thresholds, np.float64)[:, None]).astype(np.float64)  # (T, bins)
    below = 1.0 - above
    counts = np.asarray(counts, np.float64)
    present = counts.sum(axis=1) > 0
    counts, sums = counts[present], np.asarray(sums, np.float64)[present]
    inter = above @ sums.T
    union = above @ counts.T + below @ sums.T
    pixels, mass = counts.sum(axis=0), sums.sum(axis=0)
    bg_inter = below @ (pixels - mass)
    bg_union = below @ pixels + above @ (pixels - mass)
    ious = np.concatenate([inter / np.maximum(union, 1e-12), (bg_inter / np.maximum(bg_union, 1e-12))[:, None]], 1)
    return ious.mean(axis=1)


# --- masking ---------------------------------------------------------------------------------------------

@torch.no_grad()
def masking_logits(classify: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, labels: np.ndarray,
                   classes, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The classifier's logits of the tagged ``classes`` (0-based outputs) on erased copies of ``image``.

    ``image`` is one normalised (3, H, W) input (erased pixels become 0, the backbone's mean);
    ``labels`` (T, H, W) are :func:`threshold_labels` at H x W. Returns ``full`` and ``blank`` (K,)
    (nothing / everything erased), ``erased`` and ``kept`` (T, K) (the class's mask erased / all
    but it erased) and ``area`` (T, K), the mask's fraction of the image.
    """
    classes = np.asarray(classes, np.int64)
    count, k = len(labels), len(classes)
    masks = torch.from_numpy(labels[:, None] == np.arange(1, k + 1)[None, :, None, None])  # (T, K, H, W)
    masks = masks.reshape(count * k, 1, *labels.shape[1:]).to(image.device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        return classify(batch).float()[:, classes].cpu()

    full, blank = run(torch.stack([image, torch.zeros_like(image)])).numpy()
    erased, kept = [torch.zeros(0, k)], [torch.zeros(0, k)]
    for chunk in masks.split(max(1, batch_size // 2)) if len(masks) else ():
        out = run(torch.cat([image[None] * ~chunk, image[None] * chunk]))
        erased.append(out[: len(chunk)])
        kept.append(out[len(chunk):])
    own = (torch.arange(count * k), torch.arange(k).repeat(count))  # each mask's own class
    return {"full": full, "blank": blank,
            "erased": torch.cat(erased)[own].numpy().reshape(count, k),
            "kept": torch.cat(kept)[own].numpy().reshape(count, k),
            "area": masks.flatten(1).float().mean(1).cpu().numpy().reshape(count, k)}


def masking_criterion(full, blank, erased, kept, area, space: str = "probability") -> np.ndarray:
    """(T,) sum over classes of ``kept - erased - (2 * area - 1) * (full - blank)``.

    Inputs are logits as :func:`masking_logits` returns them ((K,) and (T, K); ``area`` a fraction),
    compared as probabilities (the stages) or as logits (``space``). For a classifier whose logit
    is linear in the visible pixels (global average pooling of a CAM, up to its receptive field)
    the logit form is, per class, (evidence in the mask) - area * (evidence in the image): it keeps
    exactly the pixels with more than the image's average evidence, too few (2.7 mIoU below the
    oracle on msrc-voc's plain CAMs, docs/benchmarks/label-free.md). A probability saturates, so
    that form asks whether the mask holds enough of the evidence to convince the classifier.
    Classes the classifier does not see in the image (``full <= blank``: no more evidence than a
    blank image) say nothing about masks and count 0.
    """
    values = [np.asarray(x, np.float64) for x in (full, blank, erased, kept)]
    if space == "probability":
        values = [1.0 / (1.0 + np.exp(-v)) for v in values]
    elif space != "logit":
        raise ValueError(f"space must be 'logit' or 'probability', got {space!r}")
    informative = values[0] > values[1]
    full, blank, erased, kept = values
    return ((kept - erased - (2 * np.asarray(area) - 1) * (full - blank)[None]) * informative[None]).sum(axis=1)


# --- CRF agreement ---------------------------------------------------------------------------------------

def label_agreement(a: np.ndarray, b: np.ndarray, num_labels: int) -> float:
    """Mean IoU of two label maps over the labels present in either."""
    ious = []
    for label in range(num_labels):
        x, y = a == label, b == label
        union = np.count_nonzero(x | y)
        if union:
            ious.append(np.count_nonzero(x & y) / union)
    return float(np.mean(ious))


def crf_agreement(image: np.ndarray, labels: np.ndarray, num_labels: int, gt_prob: float = 0.7,
                  params: CrfParams = CrfParams()) -> np.ndarray:
    """(T,) agreement of each threshold's labels (T, H, W) with their CRF refinement on ``image``."""
    return np.array([label_agreement(l, crf_labels(image, l, num_labels, gt_prob, params), num_labels)
                     for l in labels])


# --- a score stage's label-free threshold ----------------------------------------------------------------

def histogram_of(folder: Path, ids: list[str], workers: int = 1) -> np.ndarray:
    """:func:`best_score_histogram` summed over a folder of score maps."""
    histogram = np.zeros(len(SCORE_BINS) - 1, np.int64)

    def load(item_id: str) -> np.ndarray:
        return best_score_histogram(load_score_map(Path(folder) / f"{item_id}.npz")[0])

    for counts in parallel_map(load, ids, len(ids), "score histogram", workers):
        histogram += counts
    return histogram


def recorded_threshold(manifest: dict) -> float | None:
    """The label-free threshold a score stage's manifest records, None when it has none."""
    return (manifest.get("label_free") or {}).get("threshold")


def otsu_of(folder: Path, ids: list[str], workers: int = 1) -> float:
    """Otsu's threshold of a folder of score maps."""
    return otsu(histogram_of(folder, ids, workers))


def matched_area(source_histogram: np.ndarray, source_threshold: float, histogram: np.ndarray,
                 thresholds=FINE_GRID) -> float:
    """The threshold at which the share of pixels above it in ``histogram`` is closest to the share
    above ``source_threshold`` in ``source_histogram`` (best-score histograms over :data:`SCORE_BINS`)."""
    centres = (SCORE_BINS[:-1] + SCORE_BINS[1:]) / 2
    share = source_histogram[centres > source_threshold].sum() / max(source_histogram.sum(), 1)
    above = centres[None] > np.asarray(thresholds)[:, None]
    shares = (above * histogram[None]).sum(axis=1) / max(histogram.sum(), 1)
    return float(np.asarray(thresholds)[int(np.argmin(np.abs(shares - share)))])


def expected_iou_of(folder: Path, ids: list[str], num_classes: int, workers: int = 1) -> tuple[float, np.ndarray]:
    """The expected-IoU threshold of a folder of score maps and the criterion per :data:`FINE_GRID` threshold."""
    counts = np.zeros((num_classes, len(SCORE_BINS) - 1), np.int64)
    sums = np.zeros(counts.shape)

    def load(item_id: str):
        return class_histograms(*load_score_map(Path(folder) / f"{item_id}.npz"), num_classes)

    for image_counts, image_sums in parallel_map(load, ids, len(ids), "score histograms", workers):
        counts += image_counts
        sums += image_sums
    criterion = expected_miou(counts, sums)
    return choose(FINE_GRID, criterion), criterion


def rescaled(image: np.ndarray, scores: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """An RGB ``image`` and its (K, H, W) ``scores`` resized by ``scale``: the classifier judges masks at
    the pixel sizes it was trained and run at (``REFERENCE_SIZE / image_size``, see :mod:`tagseg.sizing`)."""
    height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    if (height, width) == image.shape[:2]:
        return image, scores
    return (resize(image, height, width),
            np.stack([resize(s, height, width) for s in scores]) if len(scores) else scores[:, :height, :width])


def image_masking_logits(image: np.ndarray, scores: np.ndarray, classes, net, scale: float = 1.0,
                         device: str = "cpu", thresholds=GRID) -> dict[str, np.ndarray]:
    """:func:`masking_logits` of one RGB uint8 ``image`` and its (K, H, W) ``scores`` for the tagged
    ``classes`` (0-based) at ``thresholds`` (none: ``full`` and ``blank`` only), both :func:`rescaled`
    by ``scale`` first."""
    image, scores = rescaled(image, scores, scale)
    return label_masking_logits(image, threshold_labels(scores, thresholds), classes, net, device)


def label_masking_logits(image: np.ndarray, labels: np.ndarray, classes, net,
                         device: str = "cpu") -> dict[str, np.ndarray]:
    """:func:`masking_logits` of one RGB uint8 ``image`` and (T, H, W) label maps of its size (0
    background, ``k`` the ``k``-th of the tagged ``classes``) asked of ``net``, a CAM classifier."""
    x = torch.from_numpy(normalize(image, net.backbone.mean, net.backbone.std)).to(device)
    return masking_logits(net.class_scores, x, labels, classes)


def masking_of(folder: Path, dataset, net, device: str = "cpu", count: int = SAMPLE,
               scale: float = 1.0) -> tuple[np.ndarray, int, int]:
    """The masking criterion of a folder of score maps per :data:`GRID` threshold (mean over the
    sampled images), asking ``net`` (a CAM classifier, ``class_scores``) about each image rescaled by
    ``scale``, and how many of the (image, tagged class) pairs it asked about the classifier sees
    (full image above blank). A classifier that sees under :data:`MIN_SEEN` of them cannot judge
    masks: the criterion is then all zeros, and the masks are never scored (most of the cost)."""
    ids = evenly_spaced(dataset.ids, count)
    samples = [(item_id, *load_score_map(Path(folder) / f"{item_id}.npz")) for item_id in ids]
    # each photo read once for both passes and kept at the classifier's size, not the photo's
    samples = [(*rescaled(read_image(dataset.record(item_id).image_path)[0], scores, scale), classes)
               for item_id, scores, classes in samples if len(classes)]
    total = np.zeros(len(GRID))

    def ask(thresholds, what: str):
        for image, scores, classes in track(samples, len(samples), f"label-free masking: {what}"):
            yield image_masking_logits(image, scores, classes - 1, net, 1.0, device, thresholds)

    seen = sum(int(np.count_nonzero(l["full"] > l["blank"])) for l in ask((), "classes seen"))
    pairs = sum(len(classes) for _, _, classes in samples)
    if seen >= MIN_SEEN * pairs:
        for logits in ask(GRID, f"masks ({len(samples)} images)"):
            total += masking_criterion(**logits)
    return total / max(len(ids), 1), seen, pairs


def masking_fallback(seen: int, pairs: int, criterion: np.ndarray) -> str | None:
    """Why the masking criterion cannot choose (the stage then takes Otsu's), or None when it can:
    the classifier sees under :data:`MIN_SEEN` of the ``pairs`` (image, tagged class) it was asked
    about, or no threshold's masks beat random ones of their area (criterion never above 0)."""
    if seen < MIN_SEEN * pairs:
        return "the classifier sees too few of the tagged classes"
    if np.max(criterion) <= 0:
        return "no mask beat a random one for the classifier"
    return None


def stage_threshold(folder: Path, dataset, method: str, net=None, device: str = "cpu", workers: int = 1,
                    scale: float = 1.0, fallback: Callable[[], dict] | None = None) -> dict:
    """What a score stage records as its label-free choice: ``method``, ``threshold`` and, for
    ``masking``, the criterion over :data:`GRID` (images rescaled by ``scale`` for the classifier).
    Without a classifier ``masking`` falls back, saying so, and so it does when the classifier sees
    fewer than :data:`MIN_SEEN` of the tagged classes it is asked about (it cannot judge masks of
    classes it does not see) or when no mask beats a random one of its area. The fallback is the
    record the stage's ``fallback()`` makes when it gives one (the walk's ``from_source``), else Otsu's."""
    def fell_back(note: str, **extra) -> dict:
        record = fallback() if fallback is not None else {"method": "otsu",
                                                          "threshold": otsu_of(folder, dataset.ids, workers)}
        return {**record, "note": note, **extra}

    if method == "masking" and net is None:
        chosen = fell_back("masking needs train_cam/model.pt")
        log.warning("%s: no trained classifier in the run for the masking threshold; using %s's", folder,
                    chosen["method"])
        return chosen
    if method == "masking":
        criterion, seen, pairs = masking_of(folder, dataset, net, device, scale=scale)
        found = {"images": len(evenly_spaced(dataset.ids, SAMPLE)), "classes_seen": seen, "classes_asked": pairs,
                 "criterion": {str(t): round(float(v), 5) for t, v in zip(GRID, criterion)}}
        why = masking_fallback(seen, pairs, criterion)
        if why:
            chosen = fell_back(why, masking=found)
            log.warning("%s: %s (%d of %d seen) to choose a masking threshold; using %s's", folder, why, seen,
                        pairs, chosen["method"])
            return chosen
        return {"method": method, "threshold": choose(GRID, criterion), **found}
    if method == "otsu":
        return {"method": method, "threshold": otsu_of(folder, dataset.ids, workers)}
    if method == "expected_iou":
        threshold, criterion = expected_iou_of(folder, dataset.ids, dataset.num_classes, workers)
        return {"method": method, "threshold": threshold}
    raise ValueError(f"unknown label-free method {method!r}; choose from {METHODS}")
