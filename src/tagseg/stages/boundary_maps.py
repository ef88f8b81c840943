"""The 'boundary_maps' stage: the trained boundary network's class-agnostic boundary map of every image.

The random walk uses boundaries internally; this stage puts them on disk, so they can be scored
against the masks' boundaries (BES §4.2: precision, recall, best F) and looked at. Writes
``<run>/boundary_maps/<id>.png``: 8-bit grayscale, value / 255 = boundary probability, at the
image's size. Boundary networks only (``train_affinity`` kind ``boundary`` or ``benet``): an
AffinityNet embedding has no boundary map. The network sees the image at the size the walk
gives it (rescaled by 320 / image_size), averaged with its mirror image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from tagseg.data.dataset import Dataset
from tagseg.data.imageio import write_boundary_map
from tagseg.errors import StageError
from tagseg.evaluate import GroundTruth, evaluate_boundaries
from tagseg.models.affinity import BoundaryModel
from tagseg.progress import parallel_map
from tagseg.rundir import file_digest, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, input_scales, resolve_image_size
from tagseg.skipping import record_skipped
from tagseg.stages.random_walk import image_boundary, network_input
from tagseg.stages.train_affinity import MODEL_FILE, STAGE as TRAIN_STAGE, load_affinity_model

STAGE = "boundary_maps"
log = logging.getLogger(__name__)


class BoundaryMapsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flip: bool = Field(True, description="average each map with its mirror image's")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)
    tolerance: float = Field(2.0, ge=0, description="px: how far a boundary pixel may be from the mask's boundary "
                                                    "and still count (scoring only)")


def make_boundary_maps(dataset: Dataset, run: Path, config: BoundaryMapsConfig, *, device: str = "cpu",
                       workers: int = 1, force: bool = False) -> dict:
    run = Path(run)
    model_path = run / TRAIN_STAGE / MODEL_FILE
    net, saved = load_affinity_model(model_path, device)
    if not isinstance(net, BoundaryModel):
        raise StageError(f"boundary_maps: {model_path} is a {saved['config']['kind']} network, which predicts no "
                         "boundary map; train_affinity kind boundary or benet does")
    image_size = resolve_image_size(config.image_size, dataset)
    (scale,) = input_scales([1.0], image_size)
    stage_config = {**config.model_dump(exclude={"tolerance"}), "image_size": image_size,
                    "model": f"{TRAIN_STAGE}/{MODEL_FILE}", "model_digest": file_digest(model_path),
                    **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = stage.share(stage.pending(dataset.ids, ".png"))

        def load(item_id: str):
            return item_id, *network_input(dataset.record(item_id).image_path, scale)

        for item_id, image, size in parallel_map(load, todo, len(todo), f"boundary maps ({len(todo)} images)",
                                                 workers):
            boundary = image_boundary(net, image, config.flip, device)
            with torch.no_grad():
                full = F.interpolate(boundary[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            write_boundary_map(stage.item_path(item_id, ".png"), full.clamp(0, 1).cpu().numpy())
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        if any(r.mask_path for r in dataset.records):
            result = evaluate_boundaries(stage.path, GroundTruth.from_dataset(dataset), tolerance=config.tolerance,
                                         workers=workers)
            stage.record(boundary_metrics=result)
        return stage.manifest
