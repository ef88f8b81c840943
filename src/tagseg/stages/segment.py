"""Inference with a trained segmentation network: the 'segment' stage (a dataset split) and `predict` (any folder).

Multi-scale + flip: softmax probabilities averaged over scales and mirror images, optionally
refined by a dense CRF, then argmax. The stage writes ``<run>/segment_<split>/<id>.png`` and
scores them when masks exist; `predict` needs no tags and also writes colour overlays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tagseg.config import CrfConfig, positive_scales
from tagseg.data.dataset import Dataset, Problem, find_images
from tagseg.data.imageio import colorize, read_image, write_image, write_mask
from tagseg.data.transforms import resize, to_batch
from tagseg.errors import DataError
from tagseg.evaluate import GroundTruth, evaluate_masks
from tagseg.export import OnnxSegmenter, load_segmenter
from tagseg.models.segmentation import SegmentationNet
from tagseg.progress import parallel_map, track
from tagseg.refine.crf import CrfParams, crf_probabilities
from tagseg.rundir import ArtifactDir, file_digest, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, input_scales, median_long_side, resolve_image_size
from tagseg.skipping import record_skipped
from tagseg.stages.train_seg import MODEL_FILE, STAGE as TRAIN_STAGE, load_seg_net

STAGE = "segment"
log = logging.getLogger(__name__)


class SegmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scales: tuple[float, ...] = Field((0.75, 1.0, 1.25),
                                      description="inference scales of a 320 px photo (converted for image_size)")
    flip: bool = Field(True, description="add each scale's mirror image")
    crf: bool = Field(False, description="refine the softmax with a dense CRF before the argmax")
    crf_settings: CrfConfig = Field(default_factory=CrfConfig, description="the dense CRF's kernels")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)

    _scales = field_validator("scales")(positive_scales)


@torch.no_grad()
def segment_image(net: SegmentationNet, image: np.ndarray, scales, flip: bool, device: str,
                  crf_params: CrfParams | None = None) -> np.ndarray:
    """Class-index mask (H, W) uint8 of one RGB image."""
    height, width = image.shape[:2]
    total = torch.zeros((net.num_classes, height, width), device=device)
    for scale in scales:
        scaled = resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
        batch = to_batch([scaled, np.ascontiguousarray(scaled[:, ::-1])] if flip else [scaled],
                         net.backbone.mean, net.backbone.std).to(device)
        with torch.autocast("cuda", enabled=device.startswith("cuda")):
            logits = net(batch).float()
        probabilities = F.interpolate(logits.softmax(1), size=(height, width), mode="bilinear", align_corners=False)
        total += probabilities[0] + (probabilities[1].flip(-1) if flip else 0)
    probabilities = (total / total.sum(0, keepdim=True)).cpu().numpy()
    if crf_params is not None:
        probabilities = crf_probabilities(image, probabilities, crf_params)
    return probabilities.argmax(0).astype(np.uint8)


def segment_split(dataset: Dataset, run: Path, config: SegmentConfig, *, device: str = "cpu", workers: int = 1,
                  force: bool = False) -> dict:
    run = Path(run)
    model_path = run / TRAIN_STAGE / MODEL_FILE
    net, _ = load_seg_net(model_path, device)
    name = f"{STAGE}_{dataset.split or 'all'}"
    image_size = resolve_image_size(config.image_size, dataset)
    scales = input_scales(config.scales, image_size)
    stage_config = {**config.model_dump(), "image_size": image_size, "model": f"{TRAIN_STAGE}/{MODEL_FILE}",
                    "model_digest": file_digest(model_path), **dataset.identity()}
    crf_params = config.crf_settings.params(image_size) if config.crf else None
    with stage_dir(run, name, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = stage.share(stage.pending(dataset.ids, ".png"))

        def load(item_id: str):
            return item_id, read_image(dataset.record(item_id).image_path)[0]

        for item_id, image in parallel_map(load, todo, len(todo), f"segmenting {len(todo)} images", workers):
            write_mask(stage.item_path(item_id, ".png"),
                       segment_image(net, image, scales, config.flip, device, crf_params))
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)
        if any(r.mask_path for r in dataset.records):
            stage.record(metrics=evaluate_masks(stage.path, GroundTruth.from_dataset(dataset), workers)["metrics"])
        return stage.manifest


def overlay(image: np.ndarray, mask: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The image with its mask's VOC colours blended in (background left as is)."""
    colours = colorize(mask).astype(np.float32)
    blended = image.astype(np.float32)
    painted = mask > 0
    blended[painted] = (1 - opacity) * blended[painted] + opacity * colours[painted]
    return blended.round().astype(np.uint8)


def predict_folder(model_path: Path, images_dir: Path, out_dir: Path, config: SegmentConfig, *,
                   device: str = "cpu", force: bool = False) -> dict:
    """Masks (``<id>.png``) and overlays (``overlays/<id>.jpg``) for every image in a folder.

    ``model_path`` is a ``model.pt`` or its ONNX export (``tagseg export``, run by onnxruntime). An
    unreadable image is reported and skipped; the others are still done. Reruns skip images
    already predicted.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found")
    net, class_names = load_segmenter(model_path, device)
    if isinstance(net, OnnxSegmenter):
        device = "cpu"  # onnxruntime hands back host arrays
    problems: list[Problem] = []
    images = find_images(images_dir, problems)
    if not images:
        raise DataError(f"{images_dir}: no images (.jpg, .jpeg, .png, ...) found")
    image_size = median_long_side(list(images.values())) if config.image_size == "auto" else config.image_size
    scales = input_scales(config.scales, image_size)
    crf_params = config.crf_settings.params(image_size) if config.crf else None
    settings = {**config.model_dump(), "image_size": image_size, "model": str(Path(model_path).resolve())}
    failed: dict[str, str] = {p.path.name: p.message for p in problems}
    done = 0
    with ArtifactDir(out_dir, "prediction folder", settings, force=force) as folder:
        todo = folder.pending(list(images), ".png")
        for item_id in track(todo, len(todo), f"predicting {len(todo)} images"):
            try:
                image, _ = read_image(images[item_id])
            except DataError as error:
                failed[images[item_id].name] = str(error)
                log.error("%s", error)
                continue
            mask = segment_image(net, image, scales, config.flip, device, crf_params)
            write_mask(folder.item_path(item_id, ".png"), mask)
            write_image(folder.item_path(item_id, ".jpg", "overlays"), overlay(image, mask))
            done += 1
        folder.record(items_computed=done, failed=failed, class_names=list(class_names))
        return folder.manifest
