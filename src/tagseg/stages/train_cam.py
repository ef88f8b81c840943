"""The 'train_cam' stage: a multi-label classifier trained from tags only.

Writes ``<run>/train_cam/checkpoint.pt`` after every epoch (a killed run resumes from the
last one and ends with the same weights as an uninterrupted run: data order and
augmentation depend only on (seed, epoch, index)), then ``model.pt`` and the classifier's
mAP on held-out tags: the eval split's, or else a tag-only hold-out carved from the training
split (left out of classifier training only). A weak classifier sounds the alarm of
:mod:`tagseg.classifier_check` in the log and the manifest.

With ``init`` the head starts from a trained model (a fine-tune) instead of ``weights``. With
``smoothing`` any head trains with the structure-aware smoothing branch
(:mod:`tagseg.models.smoothing`), supervised by the boundaries of an earlier run's segmentation
of the training images: jointly from the start, or with ``init`` as the paper's one-epoch
fine-tune of a trained head. ``model.pt`` keeps the head alone.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tagseg.classifier_check import advice, carve_holdout, classifier_alarm, finding_lines
from tagseg.data.dataset import Dataset, Record
from tagseg.data.imageio import image_size, read_image, read_mask
from tagseg.data.transforms import normalize, random_scale_flip_crop, resize
from tagseg.errors import ConfigError, DataError
from tagseg.metrics import average_precision
from tagseg.models.backbones import create_backbone
from tagseg.models.cam import CamNet, build_cam_net
from tagseg.models.smoothing import SmoothedCamNet, canny_edges
from tagseg.progress import track
from tagseg import distributed
from tagseg.rundir import ArtifactDir, atomic_write, file_digest, read_manifest, stage_dir
from tagseg.sizing import REFERENCE_SIZE
from tagseg.skipping import record_skipped
from tagseg.training import (SyncBatchNorm, build_optimizer, mean_epoch_seconds, set_train_mode, train_epochs,
                              training_steps)

STAGE = "train_cam"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
log = logging.getLogger(__name__)


HEAD_KEYS = {"puzzle": ("puzzle_alpha", "puzzle_reconstruction"), "attention": ("attention_intensity",),
             "dilated": ("dilations", "lambda_cls", "dense_at_inference"),
             "seam": ("seam_scale", "seam_top_fraction")}  # settings only that head reads


class AlarmConfig(BaseModel):
    """When to warn that the classifier is too weak to build on (AP values as fractions: 0.7 = 70 mAP)."""

    model_config = ConfigDict(extra="forbid")

    min_map: float = Field(0.7, ge=0, le=1, description="warn when the held-out mAP is below this")
    min_class_ap: float = Field(0.5, ge=0, le=1, description="warn when a class's AP is below this")
    min_images: int = Field(10, ge=0, description="fewest training images a class should have")


class SmoothingConfig(BaseModel):
    """The structure-aware smoothing branch (eq. 1-6 of its paper); dropped at inference."""

    model_config = ConfigDict(extra="forbid")

    boundaries: Path = Field(description="folder of an earlier segmentation of the training images, one label "
                                         "PNG per image (e.g. runs/x/pseudo_labels): its class boundaries are S")
    lambda_boundary: float = Field(0.05, ge=0, description="lambda_1 of eq. 6: weight of the boundary loss L_B")
    lambda_smooth: float = Field(1.0, ge=0, description="lambda_2 of eq. 6: weight of the smoothness loss L_S")
    alpha: float = Field(10.0, ge=0, description="alpha of eq. 3-4: how much a change of S relaxes the penalty")
    lambda_s: float = Field(10.0, ge=0, description="lambda_S of eq. 5: weight between the derivative orders")
    lambda_s_on: Literal["second", "first"] = Field(
        "second", description="the order lambda_s weighs: second (eq. 5 of the paper) or first (the authors' code)")
    canny: tuple[float, float] = Field((100.0, 200.0), description="Canny's low and high gradient thresholds "
                                                                  "(0-255 grey levels) for the edges E of eq. 1")
    channels: int = Field(32, ge=1, description="M of eq. 1: channels per backbone level inside the SBDM")

    @model_validator(mode="after")
    def _check(self) -> "SmoothingConfig":
        if not 0 <= self.canny[0] <= self.canny[1]:
            raise ValueError(f"canny must satisfy 0 <= low <= high, got {self.canny}")
        return self


class CamTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(
        "efficientnet_lite0", description="efficientnet_lite0, resnet50, resnet101, resnest50, resnest101, "
                                          "vit_small_dino or vit_base_dino")
    weights: str | None = Field("imagenet", description="'imagenet', a state-dict file, or null for random init")
    output_stride: Literal[8, 16] = Field(
        16, description="8 or 16 (CNN backbones dilate their last stages; ViTs are always 16)")
    head: Literal["cam", "puzzle", "attention", "dilated", "seam"] = Field(
        "cam", description="cam (GAP), puzzle (Puzzle-CAM), attention (BES attention pooling), dilated "
                           "(dilated blocks) or seam (SEAM: equivariance + PCM)")
    epochs: int = Field(5, ge=1, description="passes over the data (see min_steps and steps)")
    steps: int | None = Field(None, ge=1, description="optimisation steps in all; overrides epochs and min_steps")
    min_steps: int = Field(200, ge=0, description="train at least this many steps: a small dataset's 5 epochs are too few updates")
    batch_size: int = Field(8, ge=1, description="crops per step")
    crop_size: int = Field(320, ge=32, description="square training crop side (px)")
    scale_range: tuple[float, float] = Field((0.7, 1.3),
                                             description="random rescale of the long side, as multiples of crop_size")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="poly learning-rate decay either way")
    lr: float = Field(0.01, gt=0, description="backbone learning rate")
    head_lr_multiplier: float = Field(10.0, gt=0, description="new layers learn this many times faster")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay")
    freeze_bn: bool = Field(True, description="keep the backbone's BatchNorm statistics fixed (small batches)")
    pool_padding: bool = Field(True, description="pool class scores over the padding of crops larger than the "
                                                 "rescaled image too (as the reference code does); false pools "
                                                 "over the real image only")
    puzzle_alpha: float = Field(
        4.0, ge=0, description="Puzzle-CAM: weight of L_re (alpha of eq. 7), ramped up over the first half of training")
    puzzle_reconstruction: Literal["tagged_logits", "tagged", "all"] = Field(
        "tagged_logits", description="L_re on the tagged classes' raw logits (the reference code's masking), "
                                     "their ReLU'd CAMs, or all classes' raw logits (eq. 6 as printed)")
    attention_intensity: float = Field(
        1e-3, ge=0, description="attention head: BES's k of eq. 7; the pooling is dropped at inference")
    dilations: tuple[int, ...] = Field((3, 6, 9), description="dilated head: the dilation rates of the extra blocks")
    lambda_cls: float = Field(0.1, ge=0, description="dilated head: weight of the CAM loss")
    dense_at_inference: bool = Field(
        False, description="dilated head: use the dense CAM max(M0, mean Mi) at inference instead of M0")
    seam_scale: float = Field(0.3, gt=0, lt=1, description="seam head: the second pass sees the crop rescaled by this")
    seam_top_fraction: float = Field(0.2, gt=0, le=1, description="seam head: L_ECR averages this share of the "
                                                                  "largest per-pixel differences")
    init: Path | None = Field(None, description="a train_cam model.pt (same head settings and classes) to fine-tune "
                                                "instead of starting from `weights`: e.g. the smoothing paper's one "
                                                "more epoch, with or without the branch")
    smoothing: SmoothingConfig | None = Field(None, description="train with the structure-aware smoothing branch "
                                                                "(any head); null: without")
    seed: int = Field(0, description="data order and augmentation depend only on (seed, epoch, image)")
    sync_batchnorm: SyncBatchNorm = False
    holdout_fraction: float = Field(0.1, ge=0, le=0.5, description="without an eval split: share of each class's "
                                    "images held out of training to measure mAP; 0 = none")
    alarm: AlarmConfig = Field(default_factory=AlarmConfig, description="when to warn that the classifier is weak")

    def identity(self) -> dict:
        """The settings that determine the trained model: other heads' keys are left out, so changing
        a Puzzle-CAM default does not invalidate a plain-CAM run. The alarm only reads the result, and
        the hold-out matters only without an eval split (:func:`train_cam` adds it then)."""
        unused = {key for head, keys in HEAD_KEYS.items() if head != self.head for key in keys}
        unused |= {"alarm", "holdout_fraction"}
        unused |= {key for key in ("init", "smoothing") if getattr(self, key) is None}  # older runs stay valid
        unused |= set() if self.sync_batchnorm else {"sync_batchnorm"}
        if self.pool_padding:
            unused.add("pool_padding")  # at its default: runs made before the setting existed stay valid
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in unused}

    @model_validator(mode="after")
    def _check(self) -> "CamTrainConfig":
        if self.head == "puzzle" and self.crop_size % (2 * self.output_stride):
            raise ValueError(f"puzzle needs crop_size divisible by {2 * self.output_stride} (two tiles of stride "
                             f"{self.output_stride}), got {self.crop_size}")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if self.head == "dilated" and not self.dilations:
            raise ValueError("the dilated head needs at least one dilation rate")
        return self


class TagCrops(torch.utils.data.Dataset):
    """Augmented crops, multi-hot tags and real-pixel masks; with the smoothing branch also the earlier
    segmentation put through the same augmentation and the crop's Canny edges. Randomness depends
    only on (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, records: list[Record], config: CamTrainConfig, mean, std) -> None:
        self.dataset, self.records, self.config = dataset, records, config
        self.mean, self.std = mean, std
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image, _ = read_image(record.image_path)
        smoothing = self.config.smoothing
        labels = (None if smoothing is None else  # sizes checked before training (smoothing_source)
                  read_mask(Path(smoothing.boundaries) / f"{record.id}.png", self.dataset.num_classes))
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        crop, valid, labels = random_scale_flip_crop(image, rng, self.config.crop_size, self.config.scale_range, labels)
        pixels = normalize(crop, self.mean, self.std)
        pixels[:, ~valid] = 0.0
        tags = self.dataset.multi_hot(record.labels)
        items = (torch.from_numpy(pixels), torch.from_numpy(tags), torch.from_numpy(valid))
        if smoothing is None:
            return items
        edges = canny_edges(crop, valid, *smoothing.canny)
        return (*items, torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(edges))


def build_net(config: CamTrainConfig, num_classes: int, weights: str | None) -> CamNet:
    backbone = create_backbone(config.backbone, weights=weights, output_stride=config.output_stride)
    return build_cam_net(config.head, backbone, num_classes, puzzle_alpha=config.puzzle_alpha,
                         puzzle_reconstruction=config.puzzle_reconstruction,
                         attention_intensity=config.attention_intensity, dilations=config.dilations,
                         lambda_cls=config.lambda_cls, dense_at_inference=config.dense_at_inference,
                         seam_scale=config.seam_scale, seam_top_fraction=config.seam_top_fraction)


def build_trainee(config: CamTrainConfig, class_names: list[str]) -> CamNet | SmoothedCamNet:
    """The network train_cam optimises: the head, wrapped with the smoothing branch when it is on; a
    fine-tune starts the head from ``init`` (same head settings and classes required)."""
    smoothing, init = config.smoothing, config.init
    net = build_net(config, len(class_names) - 1, None if init is not None else config.weights)
    if init is not None:
        trained, saved = load_cam_net(init)
        if list(saved["class_names"]) != list(class_names):
            raise ConfigError(f"init {init}: trained on classes {list(saved['class_names'])}, "
                              f"this dataset has {list(class_names)}")
        try:
            net.load_state_dict(trained.state_dict())
        except RuntimeError as error:
            raise ConfigError(f"init {init}: its network does not fit this config (head {config.head!r}, "
                              f"backbone {config.backbone!r}); train it with the same head settings: "
                              f"{str(error).splitlines()[0]}") from error
    if smoothing is None:
        return net
    return SmoothedCamNet(net, lambda_boundary=smoothing.lambda_boundary, lambda_smooth=smoothing.lambda_smooth,
                          alpha=smoothing.alpha, lambda_s=smoothing.lambda_s, lambda_s_on=smoothing.lambda_s_on,
                          channels=smoothing.channels)


def smoothing_source(config: SmoothingConfig, records: list[Record]) -> dict | None:
    """Check the branch's segmentation folder before training (every training image needs a label map of its size)
    and return its manifest's config for the stage's identity, so a recomputed source retrains."""
    folder = Path(config.boundaries)
    if not folder.is_dir():
        raise ConfigError(f"smoothing.boundaries: {folder} is not a folder (give an earlier run's stage that "
                          "writes one label PNG per training image, e.g. runs/x/pseudo_labels)")
    missing = [r.id for r in records if not (folder / f"{r.id}.png").exists()]
    if missing:
        raise ConfigError(f"smoothing.boundaries: {folder} has no label map for {len(missing)} of {len(records)} "
                          f"training images (e.g. {', '.join(missing[:3])}.png); run the stage that writes them "
                          "on this dataset's training split first")
    for record in records:  # headers only: a wrong-sized map fails here, not epochs into training
        path = folder / f"{record.id}.png"
        labels_size, size = image_size(path), image_size(record.image_path)
        if labels_size != size:
            raise DataError(f"{path}: label map of {labels_size[0]}x{labels_size[1]} px does not match image "
                            f"{record.image_path} ({size[0]}x{size[1]} px)")
    manifest = read_manifest(folder)
    return manifest.get("config") if manifest else None


def load_cam_net(path: Path, device: str = "cpu") -> tuple[CamNet, dict]:
    """Rebuild a trained classifier from ``model.pt``; returns the net (eval mode) and its metadata."""
    if not Path(path).exists():
        raise DataError(f"{path}: no trained CAM model (run `tagseg train-cam` first)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    config = CamTrainConfig(**saved["config"])
    net = build_net(config, len(saved["class_names"]) - 1, weights=None)
    net.load_state_dict(saved["state_dict"])
    return net.to(device).eval(), saved


def run_classifier(run: Path, device: str = "cpu") -> CamNet | None:
    """The run's trained classifier (eval mode), or None when ``train_cam`` has not finished there."""
    path = Path(run) / STAGE / MODEL_FILE
    return load_cam_net(path, device)[0] if path.exists() else None


def train_cam(dataset: Dataset, run: Path, config: CamTrainConfig, *, device: str = "cpu", workers: int = 1,
              eval_dataset: Dataset | None = None, force: bool = False) -> dict:
    """Train (or resume training) the classifier; returns the stage manifest."""
    records = [r for r in dataset.records if r.labels]
    if len(records) < len(dataset):
        log.warning("train_cam: %d images without tags are left out of training", len(dataset) - len(records))
    if len(records) < config.batch_size:
        raise ConfigError(f"train_cam: {len(records)} tagged images are fewer than batch_size {config.batch_size}")
    holdout, held = None, []
    if eval_dataset is None:
        holdout, held = hold_out_tags(records, config)
        records = [r for r in records if r.id not in set(holdout["ids"])]
    stage_config = {**config.identity(), **dataset.identity(),
                    "classes": list(dataset.class_names)}
    if config.init is not None:
        if not Path(config.init).is_file():
            raise ConfigError(f"init: {config.init} does not exist (give a train_cam model.pt)")
        stage_config["init_digest"] = file_digest(Path(config.init))
    if config.smoothing is not None:
        stage_config["boundaries_source"] = smoothing_source(config.smoothing, records)
    if eval_dataset is None and config.holdout_fraction > 0:
        stage_config["holdout_fraction"] = config.holdout_fraction  # it changes the training images
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        model_path = stage.path / MODEL_FILE
        if model_path.exists():
            log.info("train_cam: already trained (%s)", model_path)
            check_classifier(stage, dataset, records, config)
            return stage.manifest
        torch.manual_seed(config.seed)
        trainee = build_trainee(config, dataset.class_names).to(device)
        net = trainee.head if isinstance(trainee, SmoothedCamNet) else trainee
        on_gpu = device.startswith("cuda")
        if on_gpu:
            net = net.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(trainee, trainee.new_modules(), config.optimizer, config.lr,
                                    config.head_lr_multiplier, config.momentum, config.weight_decay)
        crops = TagCrops(dataset, records, config, net.backbone.mean, net.backbone.std)

        def step_loss(batch, step: int, total_steps: int) -> dict:
            images, targets, valid, *branch = (t.to(device) for t in batch)
            if on_gpu:
                images = images.contiguous(memory_format=torch.channels_last)
            pooled = None if config.pool_padding else valid
            if not branch:
                return net.loss(images, targets, step, total_steps, pooled)
            labels, edges = branch
            return trainee.loss(images, targets, step, total_steps, pooled, real=valid, labels=labels, edges=edges)

        checkpoint_path = stage.path / CHECKPOINT_FILE
        steps = training_steps(len(records), config.batch_size, config.epochs, config.steps, config.min_steps)
        history, steps_run = train_epochs(trainee, optimizer, stage, checkpoint_path, steps=steps,
                               crops=crops, batch_size=config.batch_size, seed=config.seed, workers=workers,
                               step_loss=step_loss, set_train_mode=lambda: set_train_mode(trainee, config.freeze_bn),
                               device=device, name=STAGE, sync_batchnorm=config.sync_batchnorm)

        fields = {"history": history, "seconds_per_epoch": mean_epoch_seconds(history), "holdout": holdout}
        scored = eval_dataset or (replace(dataset, records=held, split=f"{dataset.split or 'all'} hold-out")
                                  if held else None)
        if scored is not None and distributed.is_main():  # scored once, by the process that records it
            fields["classification"] = {**classification_map(net.eval(), scored, device),
                                        "source": "eval_split" if eval_dataset is not None else "holdout"}
            log.info("train_cam: mAP on %s tags %.2f (per class: %s)", scored.split,
                     100 * fields["classification"]["map"],
                     ", ".join(f"{name} {'-' if ap is None else f'{100 * ap:.1f}'}"
                               for name, ap in fields["classification"]["per_class"].items()))
        saved = {"state_dict": net.state_dict(), "config": config.model_dump(), "class_names": dataset.class_names}
        distributed.on_main(lambda: atomic_write(model_path, lambda tmp: torch.save(saved, tmp)))
        stage.record(items_computed=steps_run * config.batch_size, steps=steps, train_images=len(records), **fields)
        record_skipped(stage, *[d for d in (dataset, eval_dataset) if d is not None])
        if distributed.is_main():  # one alarm, not one per process
            check_classifier(stage, dataset, records, config)
        return stage.manifest


def hold_out_tags(records: list[Record], config: CamTrainConfig) -> tuple[dict, list[Record]]:
    """The tag-only hold-out carved from the training split when no eval split is given: the
    manifest entry (fraction, seed, ids, or why none) and the held-out records."""
    entry = {"fraction": config.holdout_fraction, "seed": config.seed, "ids": []}
    ids = carve_holdout({r.id: r.labels for r in records}, config.holdout_fraction, config.seed)
    if not ids:
        entry["skipped"] = ("holdout_fraction is 0" if config.holdout_fraction == 0 else
                            f"no class has enough images to spare {config.holdout_fraction:g} of them")
    elif len(records) - len(ids) < config.batch_size:
        entry["skipped"] = (f"holding out {len(ids)} of {len(records)} images would leave fewer than "
                            f"batch_size {config.batch_size} to train on")
    else:
        entry["ids"] = ids
        log.info("train_cam: no eval split: %d of %d training images are held out of classifier training to "
                 "measure its mAP (holdout_fraction %g); later stages still use them",
                 len(ids), len(records), config.holdout_fraction)
        chosen = set(ids)
        return entry, [r for r in records if r.id in chosen]
    log.warning("train_cam: no eval split, and no tag-only hold-out: %s; the classifier's mAP is not measured",
                entry["skipped"])
    return entry, []


def check_classifier(stage: ArtifactDir, dataset: Dataset, records: list[Record], config: CamTrainConfig) -> None:
    """Record the weak-classifier alarm (from the manifest's mAP and the training images per class)
    and log it; run again for an already trained model, so new alarm settings apply without retraining."""
    counts = Counter(c for r in records for c in r.labels)
    per_class = {name: counts.get(index, 0) for index, name in enumerate(dataset.class_names) if index > 0}
    classification = stage.manifest.get("classification") or {}
    alarm = classifier_alarm(classification.get("map"), classification.get("per_class", {}), per_class,
                             **config.alarm.model_dump())
    stage.record(train_images_per_class=per_class, alarm=alarm)
    if alarm["fired"]:
        log.warning("train_cam: WEAK CLASSIFIER: %s. %s", "; ".join(finding_lines(alarm, classification.get("split"))),
                    advice(str(dataset.root)))


@torch.no_grad()
def classification_map(net: CamNet, dataset: Dataset, device: str, size: int = REFERENCE_SIZE) -> dict:
    """Image-level mAP of the classifier on a split's tags (single scale, long side = ``size``)."""
    scores, targets = [], []
    for record in track(dataset.records, len(dataset), f"mAP on {dataset.split or 'all'}"):
        image, _ = read_image(record.image_path)
        factor = size / max(image.shape[:2])
        image = resize(image, max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
        batch = torch.from_numpy(normalize(image, net.backbone.mean, net.backbone.std))[None].to(device)
        scores.append(net.class_scores(batch).float().cpu().numpy()[0])
        targets.append(dataset.multi_hot(record.labels))
    result = average_precision(np.stack(scores), np.stack(targets))
    names = dataset.class_names[1:]
    positives = np.stack(targets).sum(axis=0).astype(int).tolist()
    return {"map": result["map"], "per_class": dict(zip(names, result["per_class"])), "split": dataset.split,
            "positives": dict(zip(names, positives))}
