"""The 'train_seg' stage: a DeepLab network trained on pseudo-labels (or, as the upper bound, true masks).

Reads masks from a stage of the run (``labels: pseudo_labels``) or the dataset's own masks
(``labels: ground_truth``, the fully supervised upper bound); 255 is ignored. Random
rescale / flip / crop, AdamW (or SGD) with poly LR and a 10x rate on the new head; a
checkpoint per epoch and exact resume (tagseg.training).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from tagseg.data.dataset import Dataset
from tagseg.data.imageio import IGNORE_INDEX, read_image, read_mask
from tagseg.data.transforms import normalize, random_scale_flip_crop
from tagseg.errors import ConfigError, DataError
from tagseg.models.backbones import create_backbone
from tagseg.models.segmentation import SegmentationNet, build_segmentation_net
from tagseg.rundir import atomic_write, finished_stage, stage_dir
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.training import build_optimizer, mean_epoch_seconds, set_train_mode, train_epochs, training_steps

STAGE = "train_seg"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
GROUND_TRUTH = "ground_truth"
log = logging.getLogger(__name__)


class SegTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: str = Field("pseudo_labels", description="a mask stage of the run, or 'ground_truth'")
    head: Literal["deeplabv3plus", "deeplabv2"] = Field(
        "deeplabv3plus", description="deeplabv3plus (ASPP + decoder) or deeplabv2 (four dilated classifiers summed)")
    backbone: str = Field("efficientnet_lite0", description="as for train_cam")
    weights: str | None = Field("imagenet", description="'imagenet', a state-dict file, or null for random init")
    output_stride: Literal[8, 16] = Field(16, description="8 or 16")
    epochs: int = Field(10, ge=1, description="passes over the data (see min_steps and steps)")
    steps: int | None = Field(None, ge=1, description="optimisation steps in all; overrides epochs and min_steps")
    min_steps: int = Field(400, ge=0, description="train at least this many steps")
    batch_size: int = Field(8, ge=1, description="crops per step")
    crop_size: int = Field(320, ge=32, description="square training crop side (px)")
    scale_range: tuple[float, float] = Field((0.5, 1.5),
                                             description="random rescale of the long side, as multiples of crop_size")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="AdamW: SGD at DeepLab's usual rates barely learned foreground in a few hundred steps")
    lr: float = Field(3e-4, gt=0, description="backbone learning rate (poly decay)")
    head_lr_multiplier: float = Field(10.0, gt=0, description="new layers learn this many times faster")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay")
    freeze_bn: bool = Field(True, description="keep the backbone's BatchNorm statistics fixed (small batches)")
    seed: int = Field(0, description="data order and augmentation depend only on (seed, epoch, image)")


class MaskCrops(torch.utils.data.Dataset):
    """Augmented crops and their masks; randomness depends only on (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, mask_paths: list[Path], config: SegTrainConfig, mean, std) -> None:
        self.dataset, self.mask_paths, self.config = dataset, mask_paths, config
        self.mean, self.std = mean, std
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.mask_paths)

    def __getitem__(self, index: int):
        record = self.dataset.records[index]
        image, _ = read_image(record.image_path)
        mask = read_mask(self.mask_paths[index], self.dataset.num_classes)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{self.mask_paths[index]}: mask {mask.shape} does not match image {record.image_path}")
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        crop, valid, mask = random_scale_flip_crop(image, rng, self.config.crop_size, self.config.scale_range, mask)
        pixels = normalize(crop, self.mean, self.std)
        pixels[:, ~valid] = 0.0
        return torch.from_numpy(pixels), torch.from_numpy(mask.astype(np.int64))


def build_net(config: SegTrainConfig, num_classes: int, weights: str | None) -> SegmentationNet:
    backbone = create_backbone(config.backbone, weights=weights, output_stride=config.output_stride)
    return build_segmentation_net(config.head, backbone, num_classes)


def load_seg_net(path: Path, device: str = "cpu") -> tuple[SegmentationNet, dict]:
    """Rebuild a trained segmentation network from ``model.pt``; returns it (eval mode) and its metadata."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no trained segmentation model (run `tagseg train-seg` first)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        config = SegTrainConfig(**saved["config"])
    except Exception as error:  # a damaged or foreign file: say which, never a traceback
        raise DataError(f"{path}: not a TagSeg segmentation model ({error})") from None
    net = build_net(config, len(saved["class_names"]), weights=None)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval(), saved


def _mask_paths(dataset: Dataset, run: Path, labels: str) -> list[Path]:
    if labels == GROUND_TRUTH:
        missing = [r.id for r in dataset.records if r.mask_path is None]
        if missing:
            raise DataError(f"{dataset.root}: {len(missing)} images of split {dataset.split!r} have no mask "
                            f"(e.g. {missing[0]}); labels: ground_truth needs them all")
        return [r.mask_path for r in dataset.records]
    paths = [Path(run) / labels / f"{r.id}.png" for r in dataset.records]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{missing[0]}: mask missing ({len(missing)} of {len(paths)} in {Path(run) / labels})")
    return paths


def train_seg(dataset: Dataset, run: Path, config: SegTrainConfig, *, device: str = "cpu", workers: int = 1,
              force: bool = False) -> dict:
    run = Path(run)
    if config.labels != GROUND_TRUTH:
        dataset = without_skipped_by(dataset, finished_stage(run, config.labels, STAGE), config.labels)
    if len(dataset) < config.batch_size:
        raise ConfigError(f"train_seg: {len(dataset)} images are fewer than batch_size {config.batch_size}")
    mask_paths = _mask_paths(dataset, run, config.labels)
    stage_config = {**config.model_dump(), **dataset.identity(),
                    "classes": list(dataset.class_names)}
    with stage_dir(run, STAGE, stage_config, force=force) as stage:
        model_path = stage.path / MODEL_FILE
        if model_path.exists():
            log.info("train_seg: already trained (%s)", model_path)
            return stage.manifest
        torch.manual_seed(config.seed)
        net = build_net(config, dataset.num_classes, config.weights).to(device)
        net = net.to(memory_format=torch.channels_last)  # faster on CPU too (about 20% per step)
        optimizer = build_optimizer(net, net.new_modules(), config.optimizer, config.lr, config.head_lr_multiplier,
                                    config.momentum, config.weight_decay)
        crops = MaskCrops(dataset, mask_paths, config, net.backbone.mean, net.backbone.std)

        def step_loss(batch, step: int, total_steps: int) -> dict:
            images, masks = (t.to(device) for t in batch)
            images = images.contiguous(memory_format=torch.channels_last)
            logits = net(images)
            if not (masks != IGNORE_INDEX).any():  # every pixel ignored: no signal, and a mean over nothing is NaN
                return {"loss": logits.sum() * 0.0}
            return {"loss": F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)}

        steps = training_steps(len(dataset), config.batch_size, config.epochs, config.steps, config.min_steps)
        history, steps_run = train_epochs(
            net, optimizer, stage, stage.path / CHECKPOINT_FILE, steps=steps,
            crops=crops, batch_size=config.batch_size, seed=config.seed, workers=workers, step_loss=step_loss,
            set_train_mode=lambda: set_train_mode(net, config.freeze_bn), device=device, name=STAGE)
        saved = {"state_dict": net.state_dict(), "config": config.model_dump(), "class_names": dataset.class_names}
        atomic_write(model_path, lambda tmp: torch.save(saved, tmp))
        stage.record(items_computed=steps_run * config.batch_size, steps=steps, train_images=len(dataset),
                     history=history,
                     seconds_per_epoch=mean_epoch_seconds(history))
        record_skipped(stage, dataset)
        return stage.manifest
