"""The 'saliency' stage: one class-agnostic object mask per image (dissertation ch. 2, the map O of eq. 2.6).

Sources (``source``):
- ``folder``: the user's own saliency maps, ``<folder>/<id>.png`` of any bit depth (the usual
  case: most users have a saliency model). Maps of another size are resized to the image when
  their aspect ratio matches; a missing map, an unreadable one or one of another aspect ratio
  stops the stage before anything is written, naming the file.
- ``spectral_residual`` / ``fine_grained``: OpenCV's model-free static saliency, a substitute
  for a trained saliency detector (the report and docs say so).
- ``ground_truth``: the dataset's masks binarised, the oracle upper bound (the dissertation's
  Table 2.3 rows C1-C4); never a label-free result.

A map is binarised at ``threshold`` (default: 0.5 for a folder of maps, Otsu's split of each
map for OpenCV's, whose values are only relative). Output: ``<run>/saliency/<id>.png`` with 0 =
background, 1 = foreground (255 = void, ground truth only), scored against the binarised
masks when the dataset has them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tagseg.data.dataset import Dataset, Record
from tagseg.data.imageio import image_size, read_image, read_mask, read_saliency_map, write_mask
from tagseg.errors import DataError
from tagseg.evaluate import GroundTruth, evaluate_foreground
from tagseg.progress import parallel_map
from tagseg.refine.saliency import binarize, ground_truth_saliency, opencv_saliency
from tagseg.rundir import stage_dir
from tagseg.skipping import record_skipped

STAGE = "saliency"
SUBSTITUTES = ("spectral_residual", "fine_grained")
ASPECT_TOLERANCE = 0.02  # a map may be a rescaled copy of its image, not a crop or another image
log = logging.getLogger(__name__)


class SaliencyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["folder", "spectral_residual", "fine_grained", "ground_truth"] = Field(
        "spectral_residual", description="folder (your maps), spectral_residual or fine_grained (OpenCV's "
                                         "substitute), ground_truth (binarised masks: the oracle)")
    folder: Path | None = Field(None, description="source folder: the maps, <folder>/<id>.png, any bit depth")
    threshold: float | Literal["otsu"] | None = Field(
        None, description="saliency above it is foreground: a number in (0, 1), or 'otsu' (per map); "
                          "null: 0.5 for a folder of maps, otsu for OpenCV's")

    @model_validator(mode="after")
    def _consistent(self):
        if self.source == "folder" and self.folder is None:
            raise ValueError("source 'folder' needs folder: the directory of <id>.png saliency maps")
        if self.source != "folder" and self.folder is not None:
            raise ValueError(f"folder is only read with source 'folder' (source is {self.source!r})")
        if isinstance(self.threshold, float) and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        return self

    def resolved_threshold(self) -> float | str | None:
        """The threshold the source uses (None for ground truth, which is already binary)."""
        if self.source == "ground_truth":
            return None
        if self.threshold is not None:
            return self.threshold
        return 0.5 if self.source == "folder" else "otsu"


def map_paths(dataset: Dataset, folder: Path) -> dict[str, Path]:
    """Every image's map in ``folder``, checked from the file headers before any work: a clear error
    naming the first missing or mismatched map (and how many there are)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: saliency folder not found")
    paths = {r.id: folder / f"{r.id}.png" for r in dataset.records}
    missing = [p for p in paths.values() if not p.exists()]
    if missing:
        raise DataError(f"{missing[0]}: saliency map missing ({len(missing)} of {len(paths)} images have no "
                        f"<id>.png in {folder})")
    for record in dataset.records:
        width, height = image_size(paths[record.id])
        image_width, image_height = image_size(record.image_path)
        if abs(width / height - image_width / image_height) > ASPECT_TOLERANCE * image_width / image_height:
            raise DataError(f"{paths[record.id]}: saliency map is {width}x{height} but its image "
                            f"{record.image_path.name} is {image_width}x{image_height} (another aspect ratio: "
                            "the map of another image?)")
    return paths


def saliency_mask(record: Record, config: SaliencyConfig, map_path: Path | None, num_classes: int) -> np.ndarray:
    """One image's 0/1 (255 = void) saliency mask at the image size."""
    if config.source == "ground_truth":
        return ground_truth_saliency(read_mask(record.mask_path, num_classes))
    if config.source == "folder":
        values = read_saliency_map(map_path)
        width, height = image_size(record.image_path)
        if values.shape != (height, width):
            values = cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        values = opencv_saliency(read_image(record.image_path)[0], config.source)
    return binarize(values, config.resolved_threshold())


def make_saliency(dataset: Dataset, run: Path, config: SaliencyConfig, *, workers: int = 1,
                  force: bool = False) -> dict:
    """Write ``<run>/saliency/<id>.png`` for every image; resumes; scores them when masks exist."""
    if config.source == "ground_truth":
        missing = [r.id for r in dataset.records if r.mask_path is None]
        if missing:
            raise DataError(f"{dataset.root}: source ground_truth needs every image's mask; {len(missing)} of "
                            f"{len(dataset)} have none (e.g. {missing[0]})")
    paths = map_paths(dataset, Path(config.folder)) if config.source == "folder" else {}
    stage_config = {**config.model_dump(mode="json"), "threshold": config.resolved_threshold(), **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = [dataset.record(i) for i in stage.share(stage.pending(dataset.ids, ".png"))]
        log.info("saliency: %d of %d images to do (%s)", len(todo), len(dataset), config.source)

        def make(record: Record) -> None:
            mask = saliency_mask(record, config, paths.get(record.id), dataset.num_classes)
            write_mask(stage.item_path(record.id, ".png"), mask)

        for _ in parallel_map(make, todo, len(todo), f"saliency ({config.source})", workers):
            pass
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed, substitute=config.source in SUBSTITUTES,
                     oracle=config.source == "ground_truth")
        if any(r.mask_path for r in dataset.records):
            result = evaluate_foreground(stage.path, GroundTruth.from_dataset(dataset), workers)
            stage.record(metrics=result["metrics"], unlabelled=result["unlabelled"])
        return stage.manifest
