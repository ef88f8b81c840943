"""Score a folder of predictions (masks, score maps or boundary maps) against ground-truth masks."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tagseg.artifacts import load_score_map
from tagseg.data.dataset import Dataset, read_class_names
from tagseg.data.imageio import IGNORE_INDEX, read_boundary_map, read_label_map, read_mask
from tagseg.errors import DataError
from tagseg.label_free import SCORE_BINS, best_score_histogram, otsu, stage_threshold
from tagseg.metrics import (BoundarySweep, ConfusionMatrix, ThresholdSweep, labels_from_scores,
                            scores_from_confusion, superpixel_scores)
from tagseg.progress import parallel_map
from tagseg.rundir import read_manifest
from tagseg.skipping import skipped_by

DEFAULT_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.0, 1.0, 0.01))
# 0.01 .. 0.99: at 0 every pixel would be a boundary, at 1 only saturated ones
BOUNDARY_THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.01, 1.0, 0.01))
DEFAULT_TOLERANCE = 2.0
# the manifest kind of a boundary_maps stage folder: as the stage names it, or as stage_dir() writes it
BOUNDARY_MAP_KINDS = ("boundary_maps", "'boundary_maps' stage")


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth mask files by image id, with the class names they index."""

    masks: dict[str, Path]
    class_names: tuple[str, ...]
    source: str

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "GroundTruth":
        masks = {r.id: r.mask_path for r in dataset.records if r.mask_path is not None}
        if not masks:
            raise DataError(f"{dataset.root}: split {dataset.split!r} has no ground-truth masks to evaluate against")
        return cls(masks, dataset.class_names, f"{dataset.root} ({dataset.split or 'all'})")

    @classmethod
    def from_folder(cls, folder: Path, classes_file: Path | None) -> "GroundTruth":
        candidates = [classes_file] if classes_file else [folder / "classes.txt", folder.parent / "classes.txt"]
        found = next((c for c in candidates if c is not None and c.exists()), None)
        if found is None:
            raise DataError(f"{folder}: a folder of masks needs its class names: pass --classes FILE "
                            "(one name per line, background first)")
        masks = {p.stem: p for p in sorted(folder.glob("*.png")) if not p.name.startswith(".")}
        if not masks:
            raise DataError(f"{folder}: no PNG masks found")
        return cls(masks, read_class_names(found), str(folder))


def prediction_kind(folder: Path) -> str:
    """'boundaries' or 'superpixels' when the folder's manifest says it holds boundary or superpixel maps,
    else 'masks' when it holds PNG masks, else 'scores' when it holds npz score maps."""
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("kind") in BOUNDARY_MAP_KINDS:
        return "boundaries"
    if manifest is not None and manifest.get("kind") in SUPERPIXEL_KINDS:
        return "superpixels"
    visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.suffix == ".png" for p in visible):
        return "masks"
    if any(p.suffix == ".npz" for p in visible):
        return "scores"
    raise DataError(f"{folder}: no predictions found (expected <id>.png masks or <id>.npz score maps)")


def _paired(prediction_dir: Path, truth: GroundTruth, suffix: str) -> list[tuple[str, Path, Path]]:
    pairs = [(i, prediction_dir / f"{i}{suffix}", path) for i, path in truth.masks.items()]
    missing = [i for i, p, _ in pairs if not p.exists()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"{prediction_dir}: {len(missing)} of {len(pairs)} images have no prediction "
                        f"<id>{suffix} (e.g. {shown})")
    return pairs


def _read_pair(truth_path: Path, prediction: np.ndarray, prediction_path: Path, num_classes: int) -> np.ndarray:
    truth = read_mask(truth_path, num_classes)
    if truth.shape != prediction.shape[-2:]:
        raise DataError(f"{prediction_path}: prediction is {prediction.shape[-1]}x{prediction.shape[-2]} but "
                        f"ground truth {truth_path.name} is {truth.shape[1]}x{truth.shape[0]}")
    return truth


def evaluate_masks(prediction_dir: Path, truth: GroundTruth, workers: int = 1) -> dict:
    num_classes = len(truth.class_names)
    confusion = ConfusionMatrix(num_classes)
    pairs = _paired(prediction_dir, truth, ".png")

    def load(pair):
        _, prediction_path, truth_path = pair
        prediction = read_mask(prediction_path, num_classes)
        return _read_pair(truth_path, prediction, prediction_path, num_classes), prediction

    for gt, prediction in parallel_map(load, pairs, len(pairs), "evaluating", workers):
        confusion.update(gt, prediction)
    return {"kind": "masks", "num_images": len(pairs), "threshold": None,
            "metrics": confusion.scores(truth.class_names), "curve": []}


FOREGROUND_NAMES = ("background", "foreground")


def evaluate_foreground(prediction_dir: Path, truth: GroundTruth, workers: int = 1) -> dict:
    """Class-agnostic masks (0 background, 1 foreground, 255 unlabelled; saliency maps and their refinement)
    against the ground truth with every object class as foreground, void left out.

    ``metrics`` are over the pixels the masks label (precision, recall and IoU of foreground and
    background); ``unlabelled`` is the share of the non-void pixels they leave unlabelled.
    """
    confusion = ConfusionMatrix(2)
    pairs = _paired(prediction_dir, truth, ".png")

    def load(pair):
        _, prediction_path, truth_path = pair
        prediction = read_mask(prediction_path, 2)
        gt = _read_pair(truth_path, prediction, prediction_path, len(truth.class_names))
        return np.where(gt == IGNORE_INDEX, IGNORE_INDEX, (gt > 0).astype(np.uint8)), prediction

    for gt, prediction in parallel_map(load, pairs, len(pairs), "evaluating foreground", workers):
        confusion.update(gt, prediction)
    unlabelled = confusion.matrix[:, 2].sum() / max(1, confusion.matrix.sum())
    return {"kind": "foreground", "num_images": len(pairs),
            "metrics": scores_from_confusion(confusion.matrix[:, :2], FOREGROUND_NAMES),
            "unlabelled": round(float(unlabelled), 6)}


SUPERPIXEL_KINDS = ("superpixels", "'superpixels' stage")


def evaluate_superpixels(prediction_dir: Path, truth: GroundTruth, tolerance: float = DEFAULT_TOLERANCE,
                         workers: int = 1) -> dict:
    """Superpixel label maps (16-bit ``<id>.png``) against the class masks: UE, ASA, BR, BP and the count n of
    :func:`tagseg.metrics.superpixel_scores`, each averaged over images."""
    pairs = _paired(prediction_dir, truth, ".png")

    def score(pair):
        _, prediction_path, truth_path = pair
        labels = read_label_map(prediction_path)
        return superpixel_scores(labels, _read_pair(truth_path, labels, prediction_path, len(truth.class_names)),
                                 tolerance)

    per_image = list(parallel_map(score, pairs, len(pairs), "evaluating superpixels", workers))
    metrics = {key: round(float(np.mean([s[key] for s in per_image if s[key] is not None])), 6)
               if any(s[key] is not None for s in per_image) else None for key in ("n", "ue", "asa", "br", "bp")}
    return {"kind": "superpixels", "num_images": len(pairs), "tolerance": tolerance, "metrics": metrics}


def evaluate_scores(prediction_dir: Path, truth: GroundTruth, thresholds=DEFAULT_THRESHOLDS,
                    workers: int = 1, label_free: float | None = None) -> dict:
    """Score maps: with a background channel, argmax; without, sweep the background threshold and
    score the label-free one too (``label_free``, else Otsu's of the maps' best-score histogram)."""
    num_classes = len(truth.class_names)
    pairs = _paired(prediction_dir, truth, ".npz")
    sweep = ThresholdSweep(np.asarray(thresholds), num_classes)
    confusion = ConfusionMatrix(num_classes)
    histogram = np.zeros(len(SCORE_BINS) - 1, np.int64)
    with_background = 0

    def load(pair):
        _, prediction_path, truth_path = pair
        scores, classes = load_score_map(prediction_path)
        return _read_pair(truth_path, scores, prediction_path, num_classes), scores, classes

    for gt, scores, classes in parallel_map(load, pairs, len(pairs), "evaluating", workers):
        if 0 in classes:
            with_background += 1
            confusion.update(gt, labels_from_scores(scores, classes, None))
        else:
            sweep.update(gt, scores, classes)
            histogram += best_score_histogram(scores)
    if with_background and with_background < len(pairs):
        raise DataError(f"{prediction_dir}: some score maps have a background channel and some do not")
    if with_background:
        return {"kind": "scores", "num_images": len(pairs), "threshold": None,
                "metrics": confusion.scores(truth.class_names), "curve": []}
    curve = sweep.curve(truth.class_names)
    matrices = sweep.matrices()
    best = max(range(len(curve)), key=lambda k: -1.0 if curve[k]["miou"] is None else curve[k]["miou"])
    free = otsu(histogram) if label_free is None else label_free
    nearest = int(np.argmin(np.abs(sweep.thresholds - free)))
    return {"kind": "scores", "num_images": len(pairs), "threshold": curve[best]["threshold"],
            "metrics": scores_from_confusion(matrices[best], truth.class_names), "curve": curve,
            "label_free": {"threshold": free, "grid_threshold": curve[nearest]["threshold"],
                           "metrics": scores_from_confusion(matrices[nearest], truth.class_names)}}


def evaluate_boundaries(prediction_dir: Path, truth: GroundTruth, tolerance: float = DEFAULT_TOLERANCE,
                        thresholds=BOUNDARY_THRESHOLDS, workers: int = 1) -> dict:
    """Class-agnostic boundary maps (8-bit grayscale ``<id>.png``, value / 255): precision, recall and
    F at every threshold, and the best F over one threshold for the whole dataset (ODS); see
    :class:`tagseg.metrics.BoundarySweep` for the definitions."""
    num_classes = len(truth.class_names)
    pairs = _paired(prediction_dir, truth, ".png")
    sweep = BoundarySweep(np.asarray(thresholds), tolerance)

    def count(pair):
        _, prediction_path, truth_path = pair
        boundary = read_boundary_map(prediction_path)
        return sweep.histograms(_read_pair(truth_path, boundary, prediction_path, num_classes), boundary)

    for histograms in parallel_map(count, pairs, len(pairs), "evaluating boundaries", workers):
        sweep.add(histograms)
    result = sweep.scores()
    return {"kind": "boundaries", "num_images": len(pairs), "tolerance": result["tolerance"],
            "threshold": result["threshold"],
            "metrics": {k: result[k] for k in ("precision", "recall", "f", "boundary_pixels")},
            "curve": result["curve"]}


def evaluate(prediction_dir: Path, truth: GroundTruth, workers: int = 1, thresholds=None, boundary: bool = False,
             tolerance: float = DEFAULT_TOLERANCE, superpixels: bool = False) -> dict:
    """Evaluate whatever the folder holds; the result is JSON-ready.

    ``boundary`` scores its PNGs as boundary maps, which a boundary_maps stage folder gets without
    asking, and ``superpixels`` as superpixel label maps, as a superpixels stage folder does;
    ``thresholds`` defaults to the grid of the kind found.

    Images the folder's stage skipped (unreadable, ``on_error: skip``) have no prediction: they
    are left out of the score and listed under ``skipped``.
    """
    prediction_dir = Path(prediction_dir)
    if not prediction_dir.is_dir():
        raise DataError(f"{prediction_dir}: prediction folder not found")
    skipped = sorted(set(skipped_by(read_manifest(prediction_dir))) & set(truth.masks))
    truth = replace(truth, masks={i: p for i, p in truth.masks.items() if i not in skipped})
    kind = "boundaries" if boundary else "superpixels" if superpixels else prediction_kind(prediction_dir)
    if kind == "superpixels":
        result = evaluate_superpixels(prediction_dir, truth, tolerance, workers)
    elif kind == "boundaries":
        result = evaluate_boundaries(prediction_dir, truth, tolerance, thresholds or BOUNDARY_THRESHOLDS, workers)
    elif kind == "masks":
        result = evaluate_masks(prediction_dir, truth, workers)
    else:
        result = evaluate_scores(prediction_dir, truth, thresholds or DEFAULT_THRESHOLDS, workers)
    return {"prediction": str(prediction_dir), "ground_truth": truth.source, **result,
            **({"skipped": skipped} if skipped else {})}


def score_stage_fields(folder: Path, dataset: Dataset, workers: int = 1, label_free: str | dict = "otsu", net=None,
                       device: str = "cpu", scale: float = 1.0,
                       fallback: Callable[[], dict] | None = None) -> dict:
    """What a score stage records about its output: the label-free threshold (``label_free``: the
    method, see :mod:`tagseg.label_free`, with ``net`` the run's classifier for ``masking``, shown the
    images rescaled by ``scale``; or a record the stage chose itself, with ``method`` and
    ``threshold``; ``fallback``: makes the record used when ``masking`` cannot choose, default Otsu's) and,
    when the dataset has masks, oracle metrics, curve and the metrics at the label-free threshold."""
    free = label_free if isinstance(label_free, dict) else stage_threshold(folder, dataset, label_free, net, device,
                                                                            workers, scale=scale,
                                                                            fallback=fallback)
    if any(r.mask_path for r in dataset.records):
        result = evaluate_scores(folder, GroundTruth.from_dataset(dataset), workers=workers,
                                 label_free=free["threshold"])
        return {"metrics": result["metrics"], "threshold": result["threshold"], "curve": result["curve"],
                "label_free": {**free, **result["label_free"]}}
    return {"label_free": free}


def score_stage(stage, computed: int, rule: dict, score: Callable[[], dict]) -> None:
    """Record ``score()`` (the fields of :func:`score_stage_fields`) in ``stage``'s manifest, with
    ``rule``: the label-free method asked for and the values it reads besides the stage's files. A
    stage that was complete when entered, computed nothing now and recorded the same rule keeps its
    record: choosing by ``masking`` runs the classifier for minutes, and a rerun of a pipeline asks
    every stage after one that ran."""
    rule = json.loads(json.dumps(rule))  # as the manifest stores it
    if stage.was_complete and not computed and stage.manifest.get("label_free_rule") == rule:
        return
    stage.record(**score(), label_free_rule=rule)
