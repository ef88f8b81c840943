"""The 'perimeter' stage: USS-simplified images and their Canny perimeter maps (SILOP step B).

One stage directory per pre-segmentation variant, ``<run>/perimeter_slic/`` and
``<run>/perimeter_quickshift/``, each holding ``<id>.png`` (palette PNG, 1 = edge pixel,
lossless). The maps depend only on the images, so any CAM run can reuse them. USS runs on
the image shrunk to ``max_side`` (labels are upsampled back): the full-resolution net costs
several seconds per image on a CPU for about the same perimeters.
"""

from __future__ import annotations

import logging
import time
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tagseg.data.dataset import Dataset, Record, batches_by_size
from tagseg.data.imageio import read_image, read_mask, write_mask
from tagseg.progress import parallel_map
from tagseg.refine.perimeter import perimeter_map, simplified_image
from tagseg.refine.uss import presegment, reduced, unsupervised_segmentation, upsample_labels
from tagseg.rundir import stage_dir
from tagseg.skipping import record_skipped

Variant = Literal["slic", "quickshift"]
log = logging.getLogger(__name__)


class PerimeterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variants: tuple[Variant, ...] = Field(("slic", "quickshift"), min_length=1,
                                          description="pre-segmentations whose USS perimeter maps are drawn")
    max_side: int | None = Field(160, ge=16,
                                 description="USS on the image shrunk to this longer side; null = full size")
    clusters: int = Field(32, ge=2, description="q: the most clusters USS may keep")
    iterations: int = Field(64, ge=1, description="most USS training steps per image")
    lr: float = Field(0.05, gt=0, description="USS learning rate")
    min_clusters: int = Field(20, ge=1, description="stop training once fewer clusters remain")
    layers: int = Field(2, ge=1, description="conv3x3-ReLU-BN blocks before the 1x1 classifier")
    seed: int = Field(0, description="USS weight initialisation")
    slic_segments: int = Field(1000, ge=1, description="SLIC: about this many superpixels")
    slic_compactness: float = Field(15.0, gt=0, description="SLIC: colour versus space balance")
    quickshift_kernel: float = Field(3.0, gt=0, description="Quickshift: Gaussian kernel width")
    quickshift_max_dist: float = Field(6.0, gt=0, description="Quickshift: cut-off distance between linked pixels")
    quickshift_ratio: float = Field(0.29, ge=0, le=1, description="Quickshift: colour versus space balance (0-1)")
    canny_sigma: float = Field(1.0, ge=0, description="Canny: Gaussian smoothing")
    canny_low: float = Field(50.0, ge=0, description="Canny: low hysteresis threshold (gradient of 0-255 colours)")
    canny_high: float = Field(100.0, ge=0, description="Canny: high hysteresis threshold")
    batch_size: int = Field(1, ge=1, description="same-sized images trained together (useful on GPU)")


def stage_name(variant: str) -> str:
    return f"perimeter_{variant}"


def image_seed(seed: int, item_id: str) -> int:
    """A per-image seed independent of processing order and batching."""
    return (seed * 1_000_003 + zlib.crc32(item_id.encode())) % 2**31


def _variant_config(config: PerimeterConfig, variant: str) -> dict:
    keep = {k: v for k, v in config.model_dump().items() if k not in ("variants", "batch_size")}
    other = "quickshift" if variant == "slic" else "slic"
    return {k: v for k, v in keep.items() if not k.startswith(other)}


def perimeter_maps(dataset: Dataset, run: Path, config: PerimeterConfig, *, device: str = "cpu", workers: int = 1,
                   force: bool = False) -> dict[str, dict]:
    """Compute (or resume) the perimeter maps of every image for each variant; returns the manifests."""
    return {variant: _variant_maps(dataset, run, config, variant, device, workers, force)
            for variant in config.variants}


def _variant_maps(dataset: Dataset, run: Path, config: PerimeterConfig, variant: str, device: str, workers: int,
                  force: bool) -> dict:
    stage_config = {**_variant_config(config, variant), "variant": variant,
                    **dataset.identity()}
    with stage_dir(run, stage_name(variant), stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        pending = [dataset.record(i) for i in stage.pending(dataset.ids, ".png")]
        log.info("perimeter %s: %d of %d images to do", variant, len(pending), len(dataset))
        if not pending:
            return stage.manifest
        batches = stage.share(batches_by_size(pending, config.batch_size))  # per-image seeds: any split is the same
        mine = sum(len(batch) for batch in batches)
        seconds = {"presegment": 0.0, "uss": 0.0, "canny": 0.0}

        def prepare(batch: list[Record]):
            images = [read_image(r.image_path)[0] for r in batch]
            started = time.perf_counter()
            small = [reduced(image, config.max_side) for image in images]
            segments = [presegment(s, variant, slic_segments=config.slic_segments,
                                   slic_compactness=config.slic_compactness, quickshift_kernel=config.quickshift_kernel,
                                   quickshift_max_dist=config.quickshift_max_dist,
                                   quickshift_ratio=config.quickshift_ratio, seed=config.seed) for s in small]
            return batch, images, small, segments, time.perf_counter() - started

        clusters_kept = 0
        for batch, images, small, segments, preseg_seconds in parallel_map(
                prepare, batches, len(batches), f"perimeter {variant} ({mine} images)", workers):
            started = time.perf_counter()
            clusters = unsupervised_segmentation(
                small, segments, clusters=config.clusters, iterations=config.iterations, lr=config.lr,
                min_clusters=config.min_clusters, layers=config.layers,
                seeds=[image_seed(config.seed, r.id) for r in batch], device=device)
            seconds["uss"] += time.perf_counter() - started
            seconds["presegment"] += preseg_seconds
            for record, image, labels in zip(batch, images, clusters):
                started = time.perf_counter()
                labels = upsample_labels(labels, *image.shape[:2])
                edges = perimeter_map(simplified_image(image, labels), config.canny_sigma, config.canny_low,
                                      config.canny_high)
                seconds["canny"] += time.perf_counter() - started
                write_mask(stage.item_path(record.id, ".png"), edges.astype(np.uint8))
                clusters_kept += int(labels.max()) + 1
        totals = stage.total({**seconds, "clusters": clusters_kept})  # over every process's share
        computed = stage.gather(mine)
        if computed is None:  # another process of a torchrun group: rank 0 records
            return stage.manifest
        earlier = stage.manifest.get("seconds", {})
        seconds = {k: earlier.get(k, 0.0) + totals[k] for k in seconds}
        done = stage.manifest["timings"]["items_computed"] + computed
        stage.record(items_computed=computed, seconds=seconds,
                     seconds_per_image={k: round(v / done, 4) for k, v in seconds.items()},
                     mean_clusters_last_run=round(totals["clusters"] / computed, 2))
        return stage.manifest


def read_perimeter(path: Path) -> np.ndarray:
    """A stored perimeter map as a bool array (True = edge)."""
    return read_mask(path, 2) == 1
