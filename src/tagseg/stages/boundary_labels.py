"""The 'boundary_labels' stage: BES's synthetic boundary labels (§3.1, eq. 1-3) from a score stage.

Each image gets ``<run>/boundary_labels/<id>.png`` with the values of :mod:`tagseg.refine.bes`:
0 non-boundary background, 1 boundary, 2 non-boundary foreground, 255 ignored. The confident
seeds of eq. 1 are made as for ``affinity_labels`` (thresholds, dense CRF), then every pixel's
window is counted (eq. 2) and labelled (eq. 3). The manifest records the share of each label
over the split, the window in pixels and the thresholds used.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tagseg.config import CrfConfig
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import read_mask, write_mask
from tagseg.progress import parallel_map
from tagseg.refine import bes
from tagseg.refine.crf import CrfParams
from tagseg.rundir import finished_stage, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, REFERENCE_SIZE, ImageSize, odd_window, resolve_image_size
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.affinity_labels import resolve_thresholds, seed_labels, source_floor

STAGE = "boundary_labels"
# BES's window of 13 px on ~500 px VOC photos, in pixels of a REFERENCE_SIZE photo
WINDOW = round(bes.WINDOW * REFERENCE_SIZE / 500, 1)
log = logging.getLogger(__name__)


class BoundaryLabelsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cams: str = Field("make_cam", description="the score stage to take seeds from")
    fg_threshold: float | None = Field(None, gt=0, lt=1,
                                       description="theta_fg of eq. 1; default: the source's label-free threshold")
    bg_threshold: float | None = Field(None, ge=0, lt=1, description="theta_bg of eq. 1; default: 0.07 / 0.30 "
                                                                     "(the paper's ratio) of the way from the source "
                                                                     "maps' floor to fg_threshold")
    crf: bool = Field(True, description="snap both threshold maps of eq. 1 to colour edges with a dense CRF")
    crf_settings: CrfConfig = Field(default_factory=CrfConfig, description="the dense CRF's kernels")
    window: float = Field(WINDOW, gt=0, description="w of eq. 2, in pixels of a 320 px photo (the nearest odd "
                                                    "pixel count for the dataset's image_size, but at least the "
                                                    "smallest odd window over 1 / theta_diff)")
    theta_scale: float = Field(bes.THETA_SCALE, gt=0, lt=0.5, description="eq. 3; the authors' code uses 0.30")
    theta_diff: float = Field(bes.THETA_DIFF, gt=0, lt=1, description="eq. 3")
    between_foregrounds: bool = Field(False, description="also mark boundaries between two foreground classes")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)

    @model_validator(mode="after")
    def _order(self) -> "BoundaryLabelsConfig":
        if self.fg_threshold is not None and self.bg_threshold is not None and self.bg_threshold > self.fg_threshold:
            raise ValueError(f"bg_threshold {self.bg_threshold} is above fg_threshold {self.fg_threshold}")
        return self


def _boundary_job(job: tuple) -> None:
    """One image (module level, so it runs in a worker process): scores -> seeds -> boundary label PNG."""
    score_path, record, out_path, fg, bg, crf_params, num_labels, window, theta_scale, theta_diff, between = job
    seeds = seed_labels(score_path, record, fg, bg, crf_params)
    shares = bes.class_shares(seeds, num_labels, window)
    write_mask(out_path, bes.boundary_labels(shares, theta_scale, theta_diff, between))


def make_boundary_labels(dataset: Dataset, run: Path, config: BoundaryLabelsConfig, *, workers: int = 1,
                         force: bool = False) -> dict:
    run = Path(run)
    source = finished_stage(run, config.cams, STAGE)
    dataset = without_skipped_by(dataset, source, config.cams)
    floor = source_floor(run / config.cams, dataset, config.bg_threshold, workers)
    fg, bg = resolve_thresholds(config.fg_threshold, config.bg_threshold, source, config.cams, STAGE,
                                bes.THETA_BG / bes.THETA_FG, floor)
    image_size = resolve_image_size(config.image_size, dataset)
    window = max(odd_window(config.window, image_size), bes.smallest_window(config.theta_diff))
    stage_config = {**config.model_dump(), "image_size": image_size, "source_config": source["config"],
                    "thresholds": [float(fg), float(bg)], **dataset.identity()}
    crf_params: CrfParams | None = config.crf_settings.params(image_size) if config.crf else None
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        stage.record(fg_threshold=fg, bg_threshold=bg, score_floor=floor, window_pixels=window)
        todo = stage.share(stage.pending(dataset.ids, ".png"))
        jobs = [(run / config.cams / f"{i}.npz", dataset.record(i), stage.item_path(i, ".png"), fg, bg,
                 crf_params, dataset.num_classes, window, config.theta_scale, config.theta_diff,
                 config.between_foregrounds) for i in todo]
        for _ in parallel_map(_boundary_job, jobs, len(jobs), f"boundary labels ({len(jobs)} images)", workers,
                              processes=config.crf):
            pass
        computed = stage.gather(len(jobs))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed, label_fractions=label_fractions(stage.path, dataset.ids, workers))
        return stage.manifest


def label_fractions(folder: Path, ids: list[str], workers: int = 1) -> dict:
    """The share of all pixels of the split that carries each boundary label."""
    values = (bes.BOUNDARY, bes.FOREGROUND, bes.BACKGROUND, bes.IGNORE)

    def counts(item_id: str) -> np.ndarray:
        labels = read_mask(folder / f"{item_id}.png", bes.FOREGROUND + 1)
        return np.bincount(labels.ravel(), minlength=256)[list(values)]

    total = np.zeros(len(values), np.int64)
    for row in parallel_map(counts, ids, len(ids), "counting boundary labels", workers):
        total += row
    pixels = max(int(total.sum()), 1)
    return {name: int(count) / pixels for name, count in zip(("boundary", "foreground", "background", "ignored"),
                                                                total)}
