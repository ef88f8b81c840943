"""The 'prior' stage: score maps from the tags alone (a centred Gaussian per tagged class).

It is the floor every real method must beat: what knowing only *which* classes are in
an image, and that photographers centre objects, is worth in mIoU. With several tags
every class gets the same map, so the first class wins each pixel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tagseg.artifacts import save_score_map
from tagseg.data.dataset import Dataset, Record
from tagseg.data.imageio import image_size
from tagseg.evaluate import score_stage, score_stage_fields
from tagseg.progress import parallel_map
from tagseg.rundir import stage_dir
from tagseg.skipping import record_skipped

STAGE = "prior"
log = logging.getLogger(__name__)


class PriorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sigma: float = Field(0.3, gt=0, description="Gaussian width as a fraction of the image side")


def centre_prior(height: int, width: int, sigma: float) -> np.ndarray:
    """A Gaussian bump peaking at 1 in the image centre (H, W) float32."""
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (sigma * height)
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (sigma * width)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def run_prior(dataset: Dataset, run: Path, config: PriorConfig, *, force: bool = False, workers: int = 1) -> dict:
    """Write ``<run>/prior/<id>.npz`` for every image; resumes; scores the maps when masks exist."""
    with stage_dir(run, STAGE, {**config.model_dump(), **dataset.identity()},
                   force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = stage.share(stage.pending(dataset.ids, ".npz"))
        log.info("prior: %d of %d images to do", len(todo), len(dataset))

        def make(record: Record) -> None:
            width, height = image_size(record.image_path)
            prior = centre_prior(height, width, config.sigma)
            save_score_map(stage.item_path(record.id, ".npz"), np.repeat(prior[None], len(record.labels), 0),
                           record.labels)

        records = [dataset.record(i) for i in todo]
        for _ in parallel_map(make, records, len(records), "prior", workers):
            pass
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        score_stage(stage, computed, {"method": "otsu"}, lambda: score_stage_fields(stage.path, dataset, workers))
        return stage.manifest
