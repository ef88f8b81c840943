"""The 'pseudo_labels' stage: final training masks (palette PNGs) from a score stage, optionally CRF'd.

A pixel takes its best tagged class where that class's score is above the background
threshold, else background. The threshold is a number, the source stage's label-free one
(default: needs no masks), or its oracle one (``oracle``: the best on the split's own masks,
as SILOP and IRN pick their thresholds on the training masks). With ``crf`` the
mask is snapped to colour edges by a dense CRF on the labels. With ``ignore_band`` > 0,
pixels whose best score lies within the band around the threshold become 255 (ignored by
the segmentation network's loss).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tagseg.artifacts import load_foreground_scores
from tagseg.config import CrfConfig
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import IGNORE_INDEX, read_image, write_mask
from tagseg.errors import StageError
from tagseg.evaluate import GroundTruth, evaluate_masks
from tagseg.label_free import recorded_threshold
from tagseg.metrics import labels_from_scores
from tagseg.progress import parallel_map
from tagseg.refine.crf import crf_labels
from tagseg.rundir import finished_stage, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, resolve_image_size
from tagseg.skipping import record_skipped, without_skipped_by

STAGE = "pseudo_labels"
log = logging.getLogger(__name__)


class PseudoLabelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scores: str = Field("random_walk", description="the score stage to turn into masks")
    threshold: Annotated[float, Field(ge=0, lt=1)] | Literal["label_free", "oracle"] = Field(
        "label_free", description="background threshold: a number in [0, 1), 'label_free' or 'oracle'")
    crf: bool = Field(True, description="refine the thresholded labels with a dense CRF")
    crf_gt_prob: float = Field(0.7, gt=0, lt=1, description="CRF confidence in the input labels")
    crf_settings: CrfConfig = Field(default_factory=CrfConfig, description="the dense CRF's kernels")
    ignore_band: float = Field(0.0, ge=0, lt=1, description="best scores within this of the threshold -> 255")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)


def source_threshold(source: dict, choice: float | str, source_path: Path) -> float:
    """The background threshold to use: ``choice`` itself, or the one the source stage recorded."""
    if not isinstance(choice, str):
        return float(choice)
    recorded = recorded_threshold(source) if choice == "label_free" else source.get("threshold")
    if recorded is None:
        why = "was scored without ground-truth masks" if choice == "oracle" else "recorded none"
        raise StageError(f"pseudo_labels: {source_path} has no {choice} threshold (it {why}); "
                         "set threshold to a number")
    return float(recorded)


def pseudo_label(scores: np.ndarray, classes: np.ndarray, threshold: float, image: np.ndarray | None,
                 gt_prob: float, crf_params, ignore_band: float) -> np.ndarray:
    """One image's mask (H, W) uint8 from its tagged-class scores."""
    labels = labels_from_scores(scores, classes, threshold)
    if image is not None and len(classes):
        keys = np.concatenate([[0], classes]).astype(np.uint8)
        position = np.zeros(256, np.int64)
        position[keys] = np.arange(len(keys))
        labels = keys[crf_labels(image, position[labels], len(keys), gt_prob=gt_prob, params=crf_params)]
    if ignore_band > 0 and len(classes):
        best = scores.max(axis=0)
        labels[np.abs(best - threshold) < ignore_band] = IGNORE_INDEX
    return labels.astype(np.uint8)


def _label_job(job: tuple) -> None:
    score_path, image_path, out_path, threshold, gt_prob, crf_params, ignore_band = job
    scores, classes = load_foreground_scores(score_path, STAGE)
    image = read_image(image_path)[0] if crf_params is not None else None
    if image is not None and image.shape[:2] != scores.shape[1:]:
        raise StageError(f"{score_path}: score map {scores.shape[1:]} does not match image {image_path}")
    write_mask(out_path, pseudo_label(scores, classes, threshold, image, gt_prob, crf_params, ignore_band))


def make_pseudo_labels(dataset: Dataset, run: Path, config: PseudoLabelConfig, *, workers: int = 1,
                       force: bool = False) -> dict:
    run = Path(run)
    source = finished_stage(run, config.scores, STAGE)
    dataset = without_skipped_by(dataset, source, config.scores)
    threshold = source_threshold(source, config.threshold, run / config.scores)
    image_size = resolve_image_size(config.image_size, dataset)
    stage_config = {**config.model_dump(), "image_size": image_size, "source_config": source["config"],
                    "source_threshold": float(threshold), **dataset.identity()}
    crf_params = config.crf_settings.params(image_size) if config.crf else None
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        stage.record(threshold=float(threshold))
        todo = stage.share(stage.pending(dataset.ids, ".png"))
        jobs = [(run / config.scores / f"{i}.npz", dataset.record(i).image_path, stage.item_path(i, ".png"),
                 float(threshold), config.crf_gt_prob, crf_params, config.ignore_band) for i in todo]
        for _ in parallel_map(_label_job, jobs, len(jobs), f"pseudo labels ({len(jobs)} images)", workers,
                              processes=config.crf):
            pass
        computed = stage.gather(len(jobs))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        if any(r.mask_path for r in dataset.records):
            result = evaluate_masks(stage.path, GroundTruth.from_dataset(dataset), workers=workers)
            stage.record(metrics=result["metrics"])
        return stage.manifest
