"""The 'affinity_labels' stage: confident seeds from a score stage, the training targets of affinity nets.

Each image gets ``<run>/affinity_labels/<id>.png``: the class where its score is clearly high
(> fg_threshold), background where every score is clearly low (<= bg_threshold), 255
(ignore) in between, each map snapped to colour edges by a dense CRF as IRN does. Reads any
score stage (``make_cam`` or ``perimeterfit``). The stage scores its seeds against the masks:
precision of the labelled pixels and the fraction labelled.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tagseg.artifacts import load_score_map
from tagseg.config import CrfConfig
from tagseg.data.dataset import Dataset, Record
from tagseg.data.imageio import IGNORE_INDEX, read_image, read_mask, write_mask
from tagseg.data.imageio import image_size as image_dimensions
from tagseg.errors import StageError
from tagseg.label_free import histogram_of, recorded_threshold, score_floor
from tagseg.progress import parallel_map
from tagseg.refine.affinity_labels import affinity_seed_labels
from tagseg.refine.crf import CrfParams
from tagseg.rundir import finished_stage, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, resolve_image_size
from tagseg.skipping import record_skipped, without_skipped_by

STAGE = "affinity_labels"
log = logging.getLogger(__name__)


class AffinityLabelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cams: str = Field("make_cam", description="the score stage to take seeds from")
    fg_threshold: float | None = Field(None, gt=0, lt=1, description="default: the source's label-free threshold")
    bg_threshold: float | None = Field(None, ge=0, lt=1, description="default: a third of the way from the source "
                                                                     "maps' floor to fg_threshold (fg_threshold / 3 "
                                                                     "for maps that reach 0)")
    crf: bool = Field(True,
                      description="snap the foreground and background seed maps to colour edges with a dense CRF (IRN)")
    crf_settings: CrfConfig = Field(default_factory=CrfConfig, description="the dense CRF's kernels")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)

    @model_validator(mode="after")
    def _order(self) -> "AffinityLabelsConfig":
        if self.fg_threshold is not None and self.bg_threshold is not None and self.bg_threshold > self.fg_threshold:
            raise ValueError(f"bg_threshold {self.bg_threshold} is above fg_threshold {self.fg_threshold}")
        return self


def resolve_thresholds(fg_threshold: float | None, bg_threshold: float | None, source: dict, source_name: str,
                       stage: str, bg_fraction: float, floor: float | None = None) -> tuple[float, float]:
    """The seed thresholds: as set, else the source's label-free threshold and the point ``bg_fraction``
    of the way from the maps' ``floor`` (:func:`~tagseg.label_free.score_floor`; None: 0) up to it. With
    a floor of 0 that is ``bg_fraction`` of it, the papers' rule; maps lifted everywhere (SEAM's PCM
    output, floor 0.715 on msrc-voc) would otherwise get a background threshold no pixel falls under,
    and seeds without background."""
    fg = fg_threshold
    if fg is None:
        fg = recorded_threshold(source)
        if fg is None:
            raise StageError(f"{stage}: the source stage '{source_name}' has no label-free threshold "
                             "in its manifest; set fg_threshold")
    base = min(floor or 0.0, fg)
    bg = bg_threshold if bg_threshold is not None else base + (fg - base) * bg_fraction
    if bg > fg:
        raise StageError(f"{stage}: bg_threshold {bg} is above fg_threshold {fg}")
    return float(fg), float(bg)


def source_floor(folder: Path, dataset: Dataset, bg_threshold: float | None, workers: int = 1) -> float | None:
    """The source maps' floor when the background threshold is derived from it (``bg_threshold`` unset)."""
    return None if bg_threshold is not None else score_floor(histogram_of(folder, dataset.ids, workers))


def seed_labels(score_path: Path, record: Record, fg: float, bg: float, crf_params: CrfParams | None) -> np.ndarray:
    """One image's seeds from its score map, which must cover the image's tags and size (the image is
    read for the CRF, only its header without)."""
    scores, classes = load_score_map(score_path)
    if sorted(classes.tolist()) != sorted(record.labels):
        raise StageError(f"{score_path}: scores for classes {sorted(classes.tolist())} but image {record.id} is "
                         f"tagged {sorted(record.labels)}: the score stage was made for other tags")
    if crf_params is not None:
        image = read_image(record.image_path)[0]
        size = image.shape[:2]
    else:
        image, (width, height) = None, image_dimensions(record.image_path)
        size = (height, width)
    if tuple(size) != scores.shape[1:]:
        raise StageError(f"{score_path}: score map is {scores.shape[1]}x{scores.shape[2]} (HxW) but image "
                         f"{record.image_path} is {size[0]}x{size[1]}")
    return affinity_seed_labels(scores, classes, fg, bg, image=image, crf_params=crf_params)


def _seed_job(job: tuple) -> None:
    """One image (module level, so it runs in a worker process): scores -> seed PNG."""
    score_path, record, out_path, fg, bg, crf_params = job
    write_mask(out_path, seed_labels(score_path, record, fg, bg, crf_params))


def make_affinity_labels(dataset: Dataset, run: Path, config: AffinityLabelsConfig, *, workers: int = 1,
                         force: bool = False) -> dict:
    run = Path(run)
    source = finished_stage(run, config.cams, STAGE)
    dataset = without_skipped_by(dataset, source, config.cams)
    floor = source_floor(run / config.cams, dataset, config.bg_threshold, workers)
    fg, bg = resolve_thresholds(config.fg_threshold, config.bg_threshold, source, config.cams, STAGE, 1 / 3, floor)
    image_size = resolve_image_size(config.image_size, dataset)
    stage_config = {**config.model_dump(), "image_size": image_size, "source_config": source["config"],
                    "thresholds": [float(fg), float(bg)], **dataset.identity()}
    crf_params: CrfParams | None = config.crf_settings.params(image_size) if config.crf else None
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        stage.record(fg_threshold=fg, bg_threshold=bg, score_floor=floor)
        todo = stage.share(stage.pending(dataset.ids, ".png"))
        jobs = [(run / config.cams / f"{i}.npz", dataset.record(i), stage.item_path(i, ".png"), fg, bg,
                 crf_params) for i in todo]
        for _ in parallel_map(_seed_job, jobs, len(jobs), f"affinity labels ({len(jobs)} images)", workers,
                              processes=config.crf):
            pass
        computed = stage.gather(len(jobs))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        if any(r.mask_path for r in dataset.records):
            stage.record(seed_quality=seed_quality(dataset, stage.path, workers))
        return stage.manifest


def seed_quality(dataset: Dataset, folder: Path, workers: int = 1) -> dict:
    """Precision of labelled seed pixels and the fraction of pixels labelled, against the masks."""
    def counts(record):
        truth = read_mask(record.mask_path, dataset.num_classes)
        seeds = read_mask(folder / f"{record.id}.png", dataset.num_classes)
        scored = truth != IGNORE_INDEX
        labelled = scored & (seeds != IGNORE_INDEX)
        foreground = labelled & (seeds > 0)
        return (int(scored.sum()), int(labelled.sum()), int((seeds[labelled] == truth[labelled]).sum()),
                int(foreground.sum()), int((seeds[foreground] == truth[foreground]).sum()))

    records = [r for r in dataset.records if r.mask_path]
    total = np.zeros(5, np.int64)
    for row in parallel_map(counts, records, len(records), "scoring seeds", workers):
        total += row
    scored, labelled, correct, foreground, foreground_correct = (int(v) for v in total)
    return {"labelled_fraction": labelled / max(scored, 1), "precision": correct / max(labelled, 1),
            "foreground_precision": foreground_correct / max(foreground, 1)}
