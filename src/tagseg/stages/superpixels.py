"""The 'superpixels' stage: one superpixel label map per image (dissertation ch. 3, §3.3.1; baselines).

``method: discovery`` groups stride-8 patch features (:mod:`tagseg.models.patch_features`: a
DINO ViT's keys with ``features: vit``, else the default CNN's levels) with Table 3.1
(:func:`tagseg.refine.superpixels.discover_superpixels`) and upsamples the grid to the image;
``ncut`` cuts the same patch affinity with the dissertation's repeated normalised cut (§3.5,
eq. 3.13-3.15; :func:`tagseg.refine.superpixels.ncut_superpixels`) into at most ``target_count``
superpixels, at discovery's tau; ``slic``, ``seeds`` and ``lsc`` are the classic baselines, asked for the count that gives
``target_count`` superpixels per image on a sample (they give fewer than asked). tau is a
number, or ``auto``: the tau whose mean count on a sample of the images is closest to
``target_count`` with discovery, chosen without masks (the dissertation's tau 0.3 gives about 29 per VOC image
with DINO keys; other features need another tau for the same count). ``crf`` snaps the
upsampled superpixels to colour edges with a dense CRF. Output ``<run>/superpixels/<id>.png``
(16-bit label maps), scored with UE / ASA / BR / BP when the dataset has masks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tagseg.config import CrfConfig
from tagseg.data.dataset import Dataset, evenly_spaced
from tagseg.data.imageio import read_image, write_label_map
from tagseg.data.transforms import to_batch
from tagseg.evaluate import GroundTruth, evaluate_superpixels
from tagseg.models.backbones import DEFAULT_BACKBONE, create_backbone
from tagseg.models.patch_features import GRID_STRIDE, patch_features
from tagseg.progress import parallel_map, track
from tagseg.refine.crf import crf_labels
from tagseg.refine.superpixels import (baseline_request, baseline_superpixels, discover_superpixels, ncut_superpixels,
                                       relabel, tau_for_count, upsample_labels)
from tagseg.rundir import stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, resolve_image_size
from tagseg.skipping import record_skipped

STAGE = "superpixels"
VIT_BACKBONE = "vit_small_dino8"
FEATURE_METHODS = ("discovery", "ncut")  # the methods that group patch features
log = logging.getLogger(__name__)


class SuperpixelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["discovery", "ncut", "slic", "seeds", "lsc"] = Field(
        "discovery", description="discovery (Table 3.1 on patch features), ncut (repeated normalised cut on the "
                                 "same affinity, eq. 3.13-3.15, at most target_count per image) or a baseline: "
                                 "slic, seeds, lsc")
    features: Literal["cnn", "vit"] = Field(
        "cnn", description="discovery and ncut: vit (a DINO ViT's last-block keys; weights from a file offline) or cnn (the "
                           "default CNN's levels on a stride-8 grid)")
    backbone: str | None = Field(None, description="the feature network (null: efficientnet_lite0 for cnn, "
                                                   "vit_small_dino8 for vit)")
    weights: str | None = Field("imagenet", description="the feature network's weights: 'imagenet' (downloads "
                                                        "DINO for vit) or a state-dict file")
    tau: Annotated[float, Field(ge=0, lt=1)] | Literal["auto"] = Field(
        "auto", description="similarity threshold of discovery and ncut in [0, 1), or auto: chosen on tau_sample "
                            "images to give target_count discovered superpixels per image")
    target_count: float = Field(29.0, gt=1, description="mean superpixels per image that tau: auto and the "
                                                        "baselines aim at (the dissertation's VOC mean)")
    tau_sample: int = Field(40, ge=1, description="images (evenly spread) on which tau: auto, or a baseline's "
                                                   "requested count, is chosen")
    crf: bool = Field(False, description="snap the upsampled superpixels to colour edges with a dense CRF")
    crf_settings: CrfConfig = Field(default_factory=CrfConfig, description="the dense CRF's kernels")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)

    def feature_backbone(self) -> str:
        return self.backbone or (VIT_BACKBONE if self.features == "vit" else DEFAULT_BACKBONE)


def feature_grid(net, image: np.ndarray, kind: str, device: str) -> np.ndarray:
    """One image's (h, w, D) patch features on the stride-8 grid."""
    batch = to_batch([image], net.mean, net.std).to(device)
    return patch_features(net, batch, kind)[0].permute(1, 2, 0).float().cpu().numpy()


def make_superpixels(dataset: Dataset, run: Path, config: SuperpixelConfig, *, device: str = "cpu",
                     workers: int = 1, force: bool = False) -> dict:
    """Write ``<run>/superpixels/<id>.png`` for every image; resumes; scores them when masks exist."""
    image_size = resolve_image_size(config.image_size, dataset)
    stage_config = {**config.model_dump(mode="json"), "image_size": image_size, **dataset.identity()}
    if config.method not in FEATURE_METHODS:  # the feature keys do not apply
        stage_config = {k: v for k, v in stage_config.items() if k not in ("features", "backbone", "weights", "tau")}
    crf_params = config.crf_settings.params(image_size) if config.crf else None
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = [dataset.record(i) for i in stage.share(stage.pending(dataset.ids, ".png"))]
        log.info("superpixels: %d of %d images to do (%s)", len(todo), len(dataset), config.method)
        started = time.perf_counter()

        def finish(record, labels: np.ndarray, image: np.ndarray) -> None:
            if crf_params is not None:
                labels = crf_labels(image, relabel(labels), int(labels.max()) + 1, params=crf_params)
            write_label_map(stage.item_path(record.id, ".png"), relabel(labels))

        if config.method in FEATURE_METHODS:
            net = create_backbone(config.feature_backbone(), weights=config.weights,
                                  output_stride=GRID_STRIDE if config.features == "vit" else 16).to(device).eval()

            def chosen_tau() -> float:
                tau, found = choose_tau(dataset, net, config, device)
                stage.record(tau_sample_count=found)
                return tau

            tau = stage.agree("tau", chosen_tau)  # chosen by rank 0: every process cuts at the same tau
            for record in track(todo, len(todo), f"superpixels ({len(todo)} images)"):
                image = read_image(record.image_path)[0]
                grid = feature_grid(net, image, config.features, device)
                grid = (discover_superpixels(grid, tau) if config.method == "discovery"
                        else ncut_superpixels(grid, tau, round(config.target_count)))
                finish(record, upsample_labels(grid, *image.shape[:2]), image)
        else:
            def requested() -> int:
                request, found = baseline_request([read_image(r.image_path)[0]
                                                   for r in evenly_spaced(dataset.records, config.tau_sample)],
                                                  config.method, config.target_count)
                stage.record(sample_count=round(found, 2))
                return request

            request = stage.agree("requested_count", requested)

            def make(record):
                image = read_image(record.image_path)[0]
                finish(record, baseline_superpixels(image, config.method, request), image)

            for _ in parallel_map(make, todo, len(todo), f"{config.method} ({len(todo)} images)", workers):
                pass
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        if todo:  # rank 0's own pace
            stage.record(items_computed=computed,
                         seconds_per_image=round((time.perf_counter() - started) / len(todo), 4))
        if any(r.mask_path for r in dataset.records):
            result = evaluate_superpixels(stage.path, GroundTruth.from_dataset(dataset), workers=workers)
            stage.record(metrics=result["metrics"], tolerance=result["tolerance"])
        return stage.manifest


def choose_tau(dataset: Dataset, net, config: SuperpixelConfig, device: str) -> tuple[float, float]:
    """tau as configured, or (auto) the one giving ``target_count`` superpixels per image on an evenly spread
    sample; returns it with the mean count it gives there (None when tau was given)."""
    if config.tau != "auto":
        return float(config.tau), None
    picks = evenly_spaced(dataset.records, config.tau_sample)
    grids = [feature_grid(net, read_image(record.image_path)[0], config.features, device)
             for record in track(picks, len(picks), "superpixels: choosing tau")]
    tau, count = tau_for_count(grids, config.target_count)
    log.info("superpixels: tau %.4f gives %.1f superpixels per image (target %.1f)", tau, count, config.target_count)
    return tau, round(count, 2)

