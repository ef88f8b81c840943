"""The 'train_seg' stage: a DeepLab network trained on pseudo-labels (or, as the upper bound, true masks).

Reads masks from a stage of the run (``labels: pseudo_labels``) or the dataset's own masks
(``labels: ground_truth``, the fully supervised upper bound); 255 is ignored. Random
rescale / flip / crop, AdamW (or SGD) with poly LR and a 10x rate on the new head; a
checkpoint per epoch and exact resume (tagseg.training).

The dissertation's ch. 2 trains without pseudo-labels (:mod:`tagseg.models.image_masking`):
``objective: saliency`` reads 0/1/255 foreground masks (the refine_saliency stage) through the
saliency loss (eq. 2.7), and ``attention_paths`` > 0 adds the image-masking attention loss
judged by the run's frozen classifier (eq. 2.8-2.12), which combines with either objective.
``loss_scales`` feeds rescaled copies of each crop too and sums their losses (§2.3.3 uses
1, 0.75 and 0.5).

The dissertation's ch. 3 (:mod:`tagseg.models.region_growing`): ``objective: seeds`` learns from
sparse seeds (the superpixel_seeds stage) with the balanced seed loss (eq. 3.8), and ``growth``
names a superpixel stage whose superpixels the seeds grow into at every step (eq. 3.6-3.7).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tagseg.config import positive_scales
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import IGNORE_INDEX, read_image, read_label_map, read_mask
from tagseg.data.transforms import normalize, random_scale_flip_crop
from tagseg.errors import ConfigError, DataError, StageError
from tagseg.models.backbones import create_backbone
from tagseg.models.cam import CamNet
from tagseg.models.image_masking import masking_attention_loss, saliency_loss
from tagseg.models.region_growing import balanced_seed_loss, grow_seeds
from tagseg.models.segmentation import SegmentationNet, build_segmentation_net
from tagseg import distributed
from tagseg.rundir import atomic_write, file_digest, finished_stage, stage_dir
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.train_cam import MODEL_FILE as CAM_MODEL_FILE, load_cam_net
from tagseg.training import (SyncBatchNorm, build_optimizer, mean_epoch_seconds, set_train_mode, train_epochs,
                              training_steps)

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
    sync_batchnorm: SyncBatchNorm = False
    objective: Literal["masks", "saliency", "seeds"] = Field(
        "masks", description="masks: cross-entropy on class masks; saliency: the saliency loss on 0/1/255 "
                             "foreground masks (dissertation eq. 2.7); seeds: the balanced seed loss on sparse "
                             "class seeds (eq. 3.8)")
    loss_scales: tuple[float, ...] = Field((1.0,), description="each crop also at these scales, losses summed "
                                                               "(the dissertation: [1, 0.75, 0.5])")
    attention_paths: int = Field(0, ge=0, description="image-masking attention loss: masked copies per crop, N of "
                                                      "eq. 2.11 (0 = off)")
    attention_weight: float = Field(2.0, gt=0, description="its weight, lambda_seg of eq. 2.12")
    classifier: str = Field("train_cam", description="the run's CAM stage whose frozen classifier judges the "
                                                     "masked images")
    growth: str | None = Field(None, description="objective seeds: a superpixel stage of the run whose superpixels "
                                                 "the seeds grow into at every step (eq. 3.6-3.7); null = no growth")
    growth_beta: float = Field(0.7, gt=0, lt=1, description="a superpixel's unlabelled pixels take the class whose "
                                                            "mean probability there exceeds this (eq. 3.7)")

    _scales = field_validator("loss_scales")(positive_scales)

    @model_validator(mode="after")
    def _consistent(self):
        if self.objective == "saliency" and self.labels == GROUND_TRUTH:
            raise ValueError("objective 'saliency' reads foreground masks: run the saliency stage with "
                             "source: ground_truth and set labels: saliency")
        if self.growth is not None and self.objective != "seeds":
            raise ValueError(f"growth grows seeds: it needs objective 'seeds' (objective is {self.objective!r})")
        return self

    def identity(self) -> dict:
        """The settings that determine the trained network; the ch. 2 keys at their defaults are left out,
        so runs made before they existed stay valid, and the classifier only matters with the attention loss."""
        unused = set() if self.attention_paths else {"attention_paths", "attention_weight", "classifier"}
        unused |= set() if self.growth else {"growth", "growth_beta"}
        unused |= {"objective"} if self.objective == "masks" else set()
        unused |= {"loss_scales"} if self.loss_scales == (1.0,) else set()
        unused |= set() if self.sync_batchnorm else {"sync_batchnorm"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in unused}


class MaskCrops(torch.utils.data.Dataset):
    """Augmented crops, their masks, tags (multi-hot), real-pixel masks and superpixel maps (all -1 without
    ``region_paths``); randomness depends only on (seed, epoch, index). Masks are class masks, or 0/1/255
    foreground masks with ``foreground``."""

    def __init__(self, dataset: Dataset, mask_paths: list[Path], config: SegTrainConfig, mean, std,
                 foreground: bool = False, region_paths: list[Path] | None = None) -> None:
        self.dataset, self.mask_paths, self.config = dataset, mask_paths, config
        self.region_paths = region_paths
        self.mean, self.std = mean, std
        self.mask_classes = 2 if foreground else dataset.num_classes
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.mask_paths)

    def __getitem__(self, index: int):
        record = self.dataset.records[index]
        image, _ = read_image(record.image_path)
        mask = read_mask(self.mask_paths[index], self.mask_classes)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{self.mask_paths[index]}: mask {mask.shape} does not match image {record.image_path}")
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        if self.region_paths is None:
            crop, valid, mask = random_scale_flip_crop(image, rng, self.config.crop_size, self.config.scale_range,
                                                       mask)
            regions = np.full(mask.shape, -1, np.int32)
        else:
            regions = read_label_map(self.region_paths[index])
            if regions.shape != image.shape[:2]:
                raise DataError(f"{self.region_paths[index]}: superpixel map {regions.shape} does not match image "
                                f"{record.image_path}")
            crop, valid, mask, regions = random_scale_flip_crop(image, rng, self.config.crop_size,
                                                                self.config.scale_range, mask, regions)
        pixels = normalize(crop, self.mean, self.std)
        pixels[:, ~valid] = 0.0
        return (torch.from_numpy(pixels), torch.from_numpy(mask.astype(np.int64)),
                torch.from_numpy(self.dataset.multi_hot(record.labels)), torch.from_numpy(valid),
                torch.from_numpy(regions.astype(np.int64)))


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


def frozen_classifier(path: Path, device: str) -> CamNet:
    """The trained CAM network as the attention loss's judge: eval mode (BatchNorm statistics fixed), no
    parameter trainable; gradients still flow through it to its input."""
    classifier, _ = load_cam_net(path, device)
    return classifier.eval().requires_grad_(False)


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
    inputs = {}  # the label stages' identities: new labels retrain the network
    if config.labels != GROUND_TRUTH:
        labels = finished_stage(run, config.labels, STAGE)
        dataset = without_skipped_by(dataset, labels, config.labels)
        inputs["labels_config"] = labels["config"]
    if len(dataset) < config.batch_size:
        raise ConfigError(f"train_seg: {len(dataset)} images are fewer than batch_size {config.batch_size}")
    mask_paths = _mask_paths(dataset, run, config.labels)
    region_paths = None
    if config.growth is not None:
        inputs["growth_config"] = finished_stage(run, config.growth, STAGE)["config"]
        region_paths = _mask_paths(dataset, run, config.growth)
    classifier_path = run / config.classifier / CAM_MODEL_FILE
    if config.attention_paths and not classifier_path.exists():
        raise StageError(f"{classifier_path}: attention_paths needs the run's trained classifier "
                         f"(run `tagseg train-cam` first, or set classifier to its stage)")
    stage_config = {**config.identity(), **inputs, **dataset.identity(), "classes": list(dataset.class_names)}
    if config.attention_paths:
        stage_config["classifier_digest"] = file_digest(classifier_path)
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        model_path = stage.path / MODEL_FILE
        if model_path.exists():
            log.info("train_seg: already trained (%s)", model_path)
            return stage.manifest
        torch.manual_seed(config.seed)
        net = build_net(config, dataset.num_classes, config.weights).to(device)
        net = net.to(memory_format=torch.channels_last)  # faster on CPU too (about 20% per step)
        optimizer = build_optimizer(net, net.new_modules(), config.optimizer, config.lr, config.head_lr_multiplier,
                                    config.momentum, config.weight_decay)
        crops = MaskCrops(dataset, mask_paths, config, net.backbone.mean, net.backbone.std,
                          foreground=config.objective == "saliency", region_paths=region_paths)
        classifier = frozen_classifier(classifier_path, device) if config.attention_paths else None

        def step_loss(batch, step: int, total_steps: int) -> dict:
            images, masks, tags, valid, regions = (t.to(device) for t in batch)
            images = images.contiguous(memory_format=torch.channels_last)
            outputs = [net(images) if scale == 1 else F.interpolate(
                net(F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)),
                size=images.shape[-2:], mode="bilinear", align_corners=False) for scale in config.loss_scales]
            extra = {}
            if config.objective == "saliency":
                main = sum(saliency_loss(logits, masks, tags) for logits in outputs)
            elif config.objective == "seeds":
                if config.growth is not None:  # eq. 3.6-3.7, from the initial seeds every step
                    masks = grow_seeds(F.softmax(outputs[0].detach().float(), dim=1), masks, regions, tags,
                                       config.growth_beta)
                extra["labelled"] = ((masks != IGNORE_INDEX) & valid).sum() / valid.sum().clamp_min(1)
                main = sum(balanced_seed_loss(logits, masks) for logits in outputs)
            elif (masks != IGNORE_INDEX).any():
                main = sum(F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX) for logits in outputs)
            else:  # every pixel ignored: no signal, and a mean over nothing is NaN
                main = sum(logits.sum() * 0.0 for logits in outputs)
            if classifier is None:
                return {"loss": main, **extra}
            draws = torch.Generator().manual_seed(config.seed * 1_000_003 + step)  # the same coins on resume
            attention = masking_attention_loss(
                classifier, images, outputs[0], tags, valid, config.attention_paths, draws,
                (net.backbone.mean, net.backbone.std), (classifier.backbone.mean, classifier.backbone.std))
            return {"loss": main + config.attention_weight * attention, config.objective: main.detach(),
                    "attention": attention.detach(), **extra}

        steps = training_steps(len(dataset), config.batch_size, config.epochs, config.steps, config.min_steps)
        history, steps_run = train_epochs(
            net, optimizer, stage, stage.path / CHECKPOINT_FILE, steps=steps,
            crops=crops, batch_size=config.batch_size, seed=config.seed, workers=workers, step_loss=step_loss,
            set_train_mode=lambda: set_train_mode(net, config.freeze_bn), device=device, name=STAGE,
            sync_batchnorm=config.sync_batchnorm)
        saved = {"state_dict": net.state_dict(), "config": config.model_dump(), "class_names": dataset.class_names}
        distributed.on_main(lambda: atomic_write(model_path, lambda tmp: torch.save(saved, tmp)))
        stage.record(items_computed=steps_run * config.batch_size, steps=steps, train_images=len(dataset),
                     history=history,
                     seconds_per_epoch=mean_epoch_seconds(history))
        record_skipped(stage, dataset)
        return stage.manifest
