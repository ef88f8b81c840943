"""The 'refine_saliency' stage: saliency masks corrected by the classifier's CAMs (dissertation eq. 2.4-2.6).

Reads a score stage (``cams``, default make_cam; run it with ``reduce: max``, ``scales: [0.5, 1,
1.5]`` and ``flip: false`` for eq. 2.4 as written, which the masking_saliency recipe does) and a
saliency stage. Per image: B = the tagged classes' max-normalised maps' maximum (eq. 2.5), then
eq. 2.6 with ``tau1`` / ``tau2``. Output ``<run>/refine_saliency/<id>.png``: 0 background,
1 foreground, 255 unlabelled (the segmentation loss skips it); scored like the saliency stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tagseg.artifacts import load_foreground_scores
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import read_mask, write_mask
from tagseg.errors import StageError
from tagseg.evaluate import GroundTruth, evaluate_foreground
from tagseg.progress import parallel_map
from tagseg.refine.saliency import class_agnostic_activation, refine_saliency
from tagseg.rundir import finished_stage, stage_dir
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.saliency import STAGE as SALIENCY

STAGE = "refine_saliency"
log = logging.getLogger(__name__)


class RefineSaliencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cams: str = Field("make_cam", description="score stage whose tagged-class maps give B (eq. 2.5)")
    saliency: str = Field(SALIENCY, description="saliency stage whose masks are refined")
    tau1: float = Field(0.8, gt=0, lt=1, description="B above it makes a non-salient pixel foreground (eq. 2.6)")
    tau2: float = Field(0.3, gt=0, lt=1, description="B below it makes a salient pixel unlabelled (eq. 2.6)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.tau2 > self.tau1:
            raise ValueError(f"tau2 ({self.tau2}) must not exceed tau1 ({self.tau1})")
        return self


def make_refined_saliency(dataset: Dataset, run: Path, config: RefineSaliencyConfig, *, workers: int = 1,
                          force: bool = False) -> dict:
    run = Path(run)
    cams = finished_stage(run, config.cams, STAGE)
    saliency = finished_stage(run, config.saliency, STAGE)
    dataset = without_skipped_by(without_skipped_by(dataset, cams, config.cams), saliency, config.saliency)
    stage_config = {**config.model_dump(), "cams_config": cams["config"], "saliency_config": saliency["config"],
                    **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = stage.share(stage.pending(dataset.ids, ".png"))
        log.info("refine_saliency: %d of %d images to do", len(todo), len(dataset))

        def make(item_id: str) -> None:
            scores, classes = load_foreground_scores(run / config.cams / f"{item_id}.npz", STAGE)
            salient_path = run / config.saliency / f"{item_id}.png"
            salient = read_mask(salient_path, 2)
            if salient.shape != scores.shape[1:]:
                raise StageError(f"{salient_path}: saliency mask {salient.shape} does not match the score map "
                                 f"{scores.shape[1:]} of {config.cams}")
            write_mask(stage.item_path(item_id, ".png"),
                       refine_saliency(class_agnostic_activation(scores), salient, config.tau1, config.tau2))

        for _ in parallel_map(make, todo, len(todo), f"refine saliency ({len(todo)} images)", workers):
            pass
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        if any(r.mask_path for r in dataset.records):
            result = evaluate_foreground(stage.path, GroundTruth.from_dataset(dataset), workers)
            stage.record(metrics=result["metrics"], unlabelled=result["unlabelled"])
        return stage.manifest
