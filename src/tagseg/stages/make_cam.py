"""The 'make_cam' stage: multi-scale, flipped CAMs of the tagged classes for every image.

For each scale (default 0.5, 1, 1.5, 2, for a 320 px image: tagseg.sizing converts them to the
dataset's ``image_size``) the image and its mirror go through the network,
the ReLU'd CAMs are resized to the image size and summed (``reduce: max`` takes their maximum
instead, the dissertation's eq. 2.4); only tagged classes are kept and each is divided by its maximum. Images of one size are batched together. Output:
``<run>/make_cam/<id>.npz`` (float16 scores + class indices), then scores: oracle
threshold and curve when masks exist, and a label-free threshold always.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tagseg.artifacts import save_score_map
from tagseg.config import positive_scales
from tagseg.data.dataset import Dataset, Record, batches_by_size
from tagseg.data.imageio import read_image
from tagseg.data.transforms import resize, to_batch
from tagseg.evaluate import score_stage, score_stage_fields
from tagseg.label_free import Method as LabelFreeMethod
from tagseg.models.cam import CamNet, upsampled_cams
from tagseg.progress import parallel_map
from tagseg.rundir import file_digest, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, input_scales, resolve_image_size
from tagseg.skipping import record_skipped
from tagseg.stages.train_cam import MODEL_FILE, STAGE as TRAIN_STAGE, load_cam_net

STAGE = "make_cam"
log = logging.getLogger(__name__)


class MakeCamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scales: tuple[float, ...] = Field((0.5, 1.0, 1.5, 2.0),
                                      description="inference scales of a 320 px photo (converted for image_size)")
    flip: bool = Field(True, description="add each scale's mirror image")
    reduce: Literal["sum", "max"] = Field("sum", description="combine the scales' (and mirrors') CAMs by sum, or by "
                                                             "maximum (dissertation eq. 2.4)")
    batch_size: int = Field(4, ge=1, description="images of the same size per forward pass")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)
    label_free: LabelFreeMethod = Field(
        "masking", description="how the label-free threshold is chosen (rescoring only: not part of the "
                               "stage's identity)")

    _scales = field_validator("scales")(positive_scales)


@torch.no_grad()
def multiscale_cams(net: CamNet, images: list[np.ndarray], scales, flip: bool, device: str,
                    reduce: str = "sum") -> torch.Tensor:
    """CAMs (N, K, H, W) of same-sized images summed (or, ``reduce="max"``, maximised) over scales and mirrors."""
    combine = torch.maximum if reduce == "max" else torch.add
    height, width = images[0].shape[:2]
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = [resize(image, *size) for image in images]
        batch = to_batch(scaled + ([np.ascontiguousarray(i[:, ::-1]) for i in scaled] if flip else []),
                         net.backbone.mean, net.backbone.std).to(device)
        with torch.autocast("cuda", enabled=device.startswith("cuda")):
            cams = upsampled_cams(net, batch, (height, width)).float()
        if flip:
            cams = combine(cams[: len(images)], cams[len(images):].flip(-1))
        total = cams if total is None else combine(total, cams)
    return total


def normalized_tagged(cams: torch.Tensor, labels: tuple[int, ...]) -> np.ndarray:
    """Keep the tagged classes (labels are 1-based) and divide each by its maximum."""
    if not labels:
        return np.zeros((0, *cams.shape[-2:]), np.float32)
    kept = cams[[c - 1 for c in labels]]
    peak = kept.flatten(1).max(dim=1).values.clamp_min(1e-5)
    return (kept / peak[:, None, None]).cpu().numpy()


def make_cams(dataset: Dataset, run: Path, config: MakeCamConfig, *, device: str = "cpu", workers: int = 1,
              force: bool = False) -> dict:
    model_path = Path(run) / TRAIN_STAGE / MODEL_FILE
    net, saved = load_cam_net(model_path, device)
    image_size = resolve_image_size(config.image_size, dataset)
    scales = input_scales(config.scales, image_size)
    # reduce at its default is left out of the identity: runs made before it existed stay valid
    unused = {"label_free"} | ({"reduce"} if config.reduce == "sum" else set())
    stage_config = {**config.model_dump(exclude=unused), "image_size": image_size,
                    "model": f"{TRAIN_STAGE}/{MODEL_FILE}",
                    "model_digest": file_digest(model_path),
                    **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = [dataset.record(i) for i in stage.pending(dataset.ids, ".npz")]
        log.info("make_cam: %d of %d images to do at scales %s (image size %d px)", len(todo), len(dataset),
                 scales, image_size)
        batches = stage.share(batches_by_size(todo, config.batch_size))  # a batch is one unit: same floats
        todo = [record for batch in batches for record in batch]

        def load(batch: list[Record]):
            return batch, [read_image(r.image_path)[0] for r in batch]

        started = time.perf_counter()
        for batch, images in parallel_map(load, batches, len(batches), f"make_cam ({len(todo)} images)", workers):
            cams = multiscale_cams(net, images, scales, config.flip, device, config.reduce)
            for record, image_cams in zip(batch, cams):
                save_score_map(stage.item_path(record.id, ".npz"), normalized_tagged(image_cams, record.labels),
                               record.labels)
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        if computed:
            stage.record(items_computed=computed,
                         images_per_second=round(computed / (time.perf_counter() - started), 3))
        score_stage(stage, computed, {"method": config.label_free}, lambda: score_stage_fields(
            stage.path, dataset, workers, config.label_free, net, device, input_scales([1.0], image_size)[0]))
        return stage.manifest
