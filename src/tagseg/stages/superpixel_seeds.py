"""The 'superpixel_seeds' stage: sparse initial seeds from CAMs and superpixels (dissertation eq. 3.3-3.5).

A pixel is seeded with its best tagged class where that class's max-normalised CAM exceeds
``alpha``; the superpixel with the lowest mean CAM (the least object-like) is seeded background.
Everything else stays unlabelled (255) for the segmentation network's region growing
(``train_seg`` with ``objective: seeds`` and ``growth``). Output
``<run>/superpixel_seeds/<id>.png``, with the seeds' precision and labelled share when masks exist.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tagseg.artifacts import load_foreground_scores
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import read_label_map, write_mask
from tagseg.errors import StageError
from tagseg.progress import parallel_map
from tagseg.refine.superpixels import initial_seeds
from tagseg.rundir import finished_stage, stage_dir
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.affinity_labels import seed_quality
from tagseg.stages.superpixels import STAGE as SUPERPIXELS

STAGE = "superpixel_seeds"
log = logging.getLogger(__name__)


class SuperpixelSeedsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cams: str = Field("make_cam", description="score stage of the tagged classes' CAMs (eq. 3.3)")
    superpixels: str = Field(SUPERPIXELS, description="superpixel stage whose least object-like superpixel "
                                                      "seeds the background (eq. 3.5)")
    alpha: float = Field(0.5, gt=0, lt=1, description="CAM score above which a pixel is a foreground seed (eq. 3.4)")


def make_superpixel_seeds(dataset: Dataset, run: Path, config: SuperpixelSeedsConfig, *, workers: int = 1,
                          force: bool = False) -> dict:
    run = Path(run)
    cams = finished_stage(run, config.cams, STAGE)
    superpixels = finished_stage(run, config.superpixels, STAGE)
    dataset = without_skipped_by(without_skipped_by(dataset, cams, config.cams), superpixels, config.superpixels)
    stage_config = {**config.model_dump(), "cams_config": cams["config"],
                    "superpixels_config": superpixels["config"], **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = stage.share(stage.pending(dataset.ids, ".png"))
        log.info("superpixel_seeds: %d of %d images to do", len(todo), len(dataset))

        def make(item_id: str) -> None:
            scores, classes = load_foreground_scores(run / config.cams / f"{item_id}.npz", STAGE)
            regions_path = run / config.superpixels / f"{item_id}.png"
            regions = read_label_map(regions_path)
            if regions.shape != scores.shape[1:]:
                raise StageError(f"{regions_path}: superpixel map {regions.shape} does not match the score map "
                                 f"{scores.shape[1:]} of {config.cams}")
            write_mask(stage.item_path(item_id, ".png"), initial_seeds(scores, classes, regions, config.alpha))

        for _ in parallel_map(make, todo, len(todo), f"superpixel seeds ({len(todo)} images)", workers):
            pass
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        if any(r.mask_path for r in dataset.records):
            stage.record(seed_quality=seed_quality(dataset, stage.path, workers))
        return stage.manifest
