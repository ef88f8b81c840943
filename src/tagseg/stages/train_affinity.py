"""The 'train_affinity' stage: an affinity network (PSA AffinityNet, IRN boundary net or BES BENet).

PSA and IRN read seed labels (``<run>/affinity_labels/``): crops of image and seeds share one
random rescale / flip / crop, the seeds are taken at stride 4 and turned into pair labels within
``radius``. BENet reads synthesised boundary labels (``<run>/boundary_labels/``, BES eq. 3), taken
at stride 4 the same way, and trains on BES eq. 4. The backbone stays frozen by default;
checkpoints every epoch, exact resume (see tagseg.training).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tagseg.data.dataset import Dataset
from tagseg.data.imageio import read_image, read_mask
from tagseg.data.transforms import normalize, random_scale_flip_crop
from tagseg.errors import ConfigError, DataError
from tagseg.models.affinity import FEATURE_STRIDE, PAIR_KINDS, AffinityModel, build_affinity_model
from tagseg.models.backbones import create_backbone
from tagseg.refine.affinity_labels import pair_labels
from tagseg.refine.bes import FOREGROUND
from tagseg.refine.random_walk import neighbor_offsets
from tagseg import distributed
from tagseg.rundir import atomic_write, finished_stage, stage_dir
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.affinity_labels import STAGE as SEED_STAGE
from tagseg.stages.boundary_labels import STAGE as BOUNDARY_LABELS_STAGE
from tagseg.training import SyncBatchNorm, build_optimizer, mean_epoch_seconds, train_epochs, training_steps

STAGE = "train_affinity"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
log = logging.getLogger(__name__)


class AffinityTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["boundary", "affinitynet", "benet"] = Field(
        "boundary", description="boundary (IRN boundary net), affinitynet (PSA embedding) or benet (BES)")
    labels: str | None = Field(None, description="the label stage to train on; default: affinity_labels "
                                                 "(boundary, affinitynet) or boundary_labels (benet)")
    backbone: str = Field("efficientnet_lite0", description="as for train_cam")
    weights: str | None = Field("imagenet", description="'imagenet', a state-dict file, or null for random init")
    freeze_backbone: bool = Field(True, description="train only the new layers (IRN, BES)")
    radius: int = Field(5, ge=2, description="pairs within this distance (stride-4 pixels) are labelled")
    epochs: int = Field(3, ge=1, description="passes over the data (see min_steps and steps)")
    steps: int | None = Field(None, ge=1, description="optimisation steps in all; overrides epochs and min_steps")
    min_steps: int = Field(120, ge=0, description="train at least this many steps")
    batch_size: int = Field(8, ge=1, description="crops per step")
    crop_size: int = Field(320, ge=32, description="square training crop side (px)")
    scale_range: tuple[float, float] = Field((0.7, 1.3),
                                             description="random rescale of the long side, as multiples of crop_size")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="poly learning-rate decay either way")
    lr: float = Field(0.1, gt=0, description="learning rate, poly decay (BES's 0.1)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay")
    seed: int = Field(0, description="data order and augmentation depend only on (seed, epoch, image)")
    sync_batchnorm: SyncBatchNorm = False

    @property
    def labels_stage(self) -> str:
        return self.labels or (SEED_STAGE if self.kind in PAIR_KINDS else BOUNDARY_LABELS_STAGE)

    def identity(self) -> dict:
        """The settings that determine the model; keys left at the values they had before they existed
        (labels unset, frozen backbone) are left out, so older runs stay finished."""
        unused = {key for key, default in (("labels", None), ("freeze_backbone", True), ("sync_batchnorm", False))
                  if getattr(self, key) == default}
        return {k: v for k, v in self.model_dump().items() if k not in unused}


class SeedCrops(torch.utils.data.Dataset):
    """Augmented crops with their stride-4 labels: pair labels for PSA / IRN, the boundary label map for
    BENet. Randomness depends only on (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, labels_dir: Path, config: AffinityTrainConfig, mean, std) -> None:
        self.dataset, self.labels_dir, self.config = dataset, labels_dir, config
        self.mean, self.std = mean, std
        self.offsets = neighbor_offsets(config.radius)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        record = self.dataset.records[index]
        image, _ = read_image(record.image_path)
        label_values = self.dataset.num_classes if self.config.kind in PAIR_KINDS else FOREGROUND + 1
        seeds = read_mask(self.labels_dir / f"{record.id}.png", label_values)
        if seeds.shape != image.shape[:2]:
            raise DataError(f"{self.labels_dir / (record.id + '.png')}: label map {seeds.shape} does not match "
                            f"image {record.image_path} {image.shape[:2]}")
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        crop, valid, seeds = random_scale_flip_crop(image, rng, self.config.crop_size, self.config.scale_range, seeds)
        pixels = normalize(crop, self.mean, self.std)
        pixels[:, ~valid] = 0.0
        size = -(-self.config.crop_size // FEATURE_STRIDE)
        strided = cv2.resize(seeds, (size, size), interpolation=cv2.INTER_NEAREST)
        if self.config.kind not in PAIR_KINDS:
            return torch.from_numpy(pixels), torch.from_numpy(strided)
        pairs = pair_labels(strided, self.offsets)
        return torch.from_numpy(pixels), pairs["fg_positive"], pairs["bg_positive"], pairs["negative"]


def build_model(config: AffinityTrainConfig, weights: str | None) -> AffinityModel:
    return build_affinity_model(config.kind, create_backbone(config.backbone, weights=weights, output_stride=16),
                                freeze_backbone=config.freeze_backbone)


def load_affinity_model(path: Path, device: str = "cpu") -> tuple[AffinityModel, dict]:
    """Rebuild a trained affinity network from ``model.pt``; returns it (eval mode) and its metadata."""
    if not Path(path).exists():
        raise DataError(f"{path}: no trained affinity network (run `tagseg train-affinity` first)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    config = AffinityTrainConfig(**saved["config"])
    net = build_model(config, weights=None)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval(), saved


def train_affinity(dataset: Dataset, run: Path, config: AffinityTrainConfig, *, device: str = "cpu",
                   workers: int = 1, force: bool = False) -> dict:
    run = Path(run)
    labels_stage = config.labels_stage
    labels = finished_stage(run, labels_stage, STAGE)
    dataset = without_skipped_by(dataset, labels, labels_stage)
    if len(dataset) < config.batch_size:
        raise ConfigError(f"train_affinity: {len(dataset)} images are fewer than batch_size {config.batch_size}")
    stage_config = {**config.identity(), "labels_config": labels["config"],
                    **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        model_path = stage.path / MODEL_FILE
        if model_path.exists():
            log.info("train_affinity: already trained (%s)", model_path)
            return stage.manifest
        torch.manual_seed(config.seed)
        net = build_model(config, config.weights).to(device)
        optimizer = build_optimizer(net, net.new_modules(), config.optimizer, config.lr, 1.0, config.momentum,
                                    config.weight_decay)
        crops = SeedCrops(dataset, run / labels_stage, config, net.backbone.mean, net.backbone.std)

        def step_loss(batch, step: int, total_steps: int) -> dict:
            if config.kind not in PAIR_KINDS:
                images, boundary_labels = (t.to(device) for t in batch)
                return net.boundary_loss(images, boundary_labels)
            images, fg, bg, negative = (t.to(device) for t in batch)
            pairs = {"fg_positive": fg, "bg_positive": bg, "negative": negative}
            return net.loss(images, pairs, crops.offsets)

        steps = training_steps(len(dataset), config.batch_size, config.epochs, config.steps, config.min_steps)
        history, steps_run = train_epochs(
            net, optimizer, stage, stage.path / CHECKPOINT_FILE, steps=steps,
            crops=crops, batch_size=config.batch_size, seed=config.seed, workers=workers, step_loss=step_loss,
            set_train_mode=net.train, device=device, name=STAGE, sync_batchnorm=config.sync_batchnorm)
        saved = {"state_dict": net.state_dict(), "config": config.model_dump()}
        distributed.on_main(lambda: atomic_write(model_path, lambda tmp: torch.save(saved, tmp)))
        stage.record(items_computed=steps_run * config.batch_size, steps=steps, train_images=len(dataset),
                     history=history,
                     seconds_per_epoch=mean_epoch_seconds(history))
        record_skipped(stage, dataset)
        return stage.manifest
