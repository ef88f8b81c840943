"""The 'perimeterfit' stage (SILOP step C): CAMs shrunk to USS perimeter maps.

Reads a CAM stage (``<run>/make_cam/`` by default) and the perimeter maps (computed first
when missing), and writes ``<run>/perimeterfit/<id>.npz`` in the CAM format, so every later
stage takes either. Each variant (SLIC, Quickshift) has its own CAM-negative threshold.
They come from the config, from SILOP's grid search on the training masks (``search:
grid``), or without ground truth (``search: label_free``, also the fallback when the dataset
has no masks): the threshold the output is judged at, i.e. the CAM's label-free threshold
mapped through the combination (:func:`from_cams`), so that a region is kept exactly when
every pixel of it would pass on its own.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tagseg.artifacts import load_score_map, save_score_map
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import read_mask
from tagseg.errors import StageError
from tagseg.evaluate import DEFAULT_THRESHOLDS, GroundTruth, score_stage, score_stage_fields
from tagseg.label_free import Method as LabelFreeMethod, otsu_of, recorded_threshold
from tagseg.metrics import ThresholdSweep
from tagseg.progress import parallel_map
from tagseg.refine.perimeterfit import Combination, combine, fit_masks, perimeter_regions, region_minimum
from tagseg.rundir import finished_stage, read_manifest, stage_dir
from tagseg.sizing import input_scales, resolve_image_size
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.perimeter import PerimeterConfig, Variant, perimeter_maps, read_perimeter, stage_name
from tagseg.stages.train_cam import run_classifier

STAGE = "perimeterfit"
log = logging.getLogger(__name__)


class PerimeterFitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cams: str = Field("make_cam", description="the stage in the run whose score maps are refined")
    perimeter: PerimeterConfig = Field(default_factory=PerimeterConfig,
                                       description="the perimeter maps' keys, as for tagseg perimeter")
    combination: Combination = Field("silop",
                                     description="silop: (cam * masks + cam) / 2; product: cam * masks (Algorithm 2)")
    thresholds: dict[Variant, float] | None = Field(None, description="CAM-negative threshold per variant")
    search: Literal["grid", "label_free"] = Field(
        "grid", description="where thresholds is unset: grid-search the fit thresholds on the masks, or fit at "
                            "the output's label-free threshold (the CAM's mapped through the combination)")
    grid: tuple[float, ...] = Field(tuple(round(0.1 + 0.05 * k, 2) for k in range(9)),
                                    description="fit thresholds the grid search tries")
    label_free: Literal["from_cams"] | LabelFreeMethod = Field(
        "from_cams", description="how the output's label-free background threshold is chosen (rescoring only): "
                                 "from_cams maps the CAM stage's through the combination")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid):
        if not grid or any(not 0 <= t < 1 for t in grid):
            raise ValueError("grid must be a non-empty list of thresholds in [0, 1)")
        return tuple(sorted(set(grid)))

    @model_validator(mode="after")
    def _variants(self) -> "PerimeterFitConfig":
        if self.thresholds is not None and set(self.thresholds) != set(self.perimeter.variants):
            raise ValueError(f"thresholds must name exactly the variants {list(self.perimeter.variants)}, "
                             f"got {sorted(self.thresholds)}")
        return self


def _load(cam_dir: Path, perimeter_dirs: dict[str, Path], item_id: str):
    scores, classes = load_score_map(cam_dir / f"{item_id}.npz")
    regions = {v: perimeter_regions(read_perimeter(d / f"{item_id}.png")) for v, d in perimeter_dirs.items()}
    for variant, labels in regions.items():
        if labels.shape != scores.shape[1:]:
            raise StageError(f"{perimeter_dirs[variant] / (item_id + '.png')}: perimeter map {labels.shape} does not "
                             f"match the score map {scores.shape[1:]} of {cam_dir / (item_id + '.npz')}")
    return scores, classes, regions


def refine(scores: np.ndarray, regions: dict[str, np.ndarray], thresholds: dict[str, float],
           combination: Combination) -> np.ndarray:
    """Refined score map of one image from its CAM and per-variant perimeter regions."""
    return combine(scores, [fit_masks(scores, regions[v], thresholds[v]) for v in regions], combination)


def grid_search(items, variants: tuple[str, ...], grid: tuple[float, ...], combination: Combination,
                num_classes: int, total: int, workers: int = 1) -> list[dict]:
    """mIoU at the best background threshold for every combination of per-variant thresholds.

    ``items`` yields (id, ground truth path, loader); each image's region minima are computed
    once and reused for the whole grid. Rows are sorted best first.
    """
    combos = list(itertools.product(grid, repeat=len(variants)))
    sweeps = [ThresholdSweep(np.asarray(DEFAULT_THRESHOLDS), num_classes) for _ in combos]

    def prepare(item):
        _, truth_path, load = item
        scores, classes, regions = load()
        masks = {}
        for variant in variants:
            minimum = region_minimum(scores, regions[variant])
            masks[variant] = {t: fit_masks(scores, regions[variant], t, minimum) for t in grid}
        return read_mask(truth_path, num_classes), scores, classes, masks

    for truth, scores, classes, masks in parallel_map(prepare, items, total, "PerimeterFit grid search", workers):
        for combo, sweep in zip(combos, sweeps):
            refined = combine(scores, [masks[v][t] for v, t in zip(variants, combo)], combination)
            sweep.update(truth, refined, classes)
    rows = []
    for combo, sweep in zip(combos, sweeps):
        curve = sweep.curve()
        best = max(curve, key=lambda row: -1.0 if row["miou"] is None else row["miou"])
        rows.append({"thresholds": dict(zip(variants, combo)), "threshold": best["threshold"],
                     "miou": best["miou"], "mfp": best["mfp"], "mfn": best["mfn"]})
    return sorted(rows, key=lambda row: -(row["miou"] or 0.0))


def perimeterfit(dataset: Dataset, run: Path, config: PerimeterFitConfig, *, device: str = "cpu", workers: int = 1,
                 force: bool = False) -> dict:
    """Refine a CAM run with PerimeterFit (computing perimeter maps first if needed); returns the manifest."""
    run = Path(run)
    cam_dir = run / config.cams
    cam_manifest = finished_stage(run, config.cams, STAGE)
    dataset = without_skipped_by(dataset, cam_manifest, config.cams)
    perimeter_maps(dataset, run, config.perimeter, device=device, workers=workers, force=force)
    perimeter_dirs = {v: run / stage_name(v) for v in config.perimeter.variants}
    has_masks = any(r.mask_path for r in dataset.records)
    stage_config = {**config.model_dump(exclude={"label_free"}), "cams_config": cam_manifest["config"],
                    **dataset.identity()}
    if config.thresholds is None and (config.search == "label_free" or not has_masks):
        # the fit follows the CAM's label-free threshold: a new one refits
        stage_config["cams_threshold"] = recorded_threshold(cam_manifest)
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        thresholds = stage.agree("thresholds", lambda: _choose_thresholds(
            dataset, cam_dir, perimeter_dirs, config, has_masks, workers, stage))
        todo = stage.share(stage.pending(dataset.ids, ".npz"))

        def refine_one(item_id: str) -> None:
            scores, classes, regions = _load(cam_dir, perimeter_dirs, item_id)
            save_score_map(stage.item_path(item_id, ".npz"), refine(scores, regions, thresholds, config.combination),
                           classes)

        for _ in parallel_map(refine_one, todo, len(todo), f"perimeterfit ({len(todo)} images)", workers):
            pass
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        stage.record(items_computed=computed)

        def score() -> dict:
            if config.label_free == "from_cams":
                label_free = from_cams(cam_manifest, cam_dir, dataset, config.combination, workers)
            else:
                label_free = config.label_free
            net = run_classifier(run, device) if label_free == "masking" else None
            image_size = cam_manifest["config"].get("image_size") or resolve_image_size("auto", dataset)
            return score_stage_fields(stage.path, dataset, workers, label_free, net, device,
                                      input_scales([1.0], image_size)[0])

        score_stage(stage, computed, {"method": config.label_free,
                                      "cams_threshold": recorded_threshold(cam_manifest)},
                    score)
        return stage.manifest


def from_cams(cam_manifest: dict, cam_dir: Path, dataset: Dataset, combination: Combination, workers: int = 1) -> dict:
    """The output's label-free threshold that judges a pixel the fit did not keep exactly as the CAM
    stage's label-free threshold does: the combination halves those pixels' scores (``silop``), so
    half the CAM's threshold; ``product`` keeps the scores it keeps, so the CAM's threshold itself.
    Pixels the fit keeps then need half the CAM's evidence (``silop``). ``search: label_free`` also
    fits at this threshold: fitting at the CAM's own one would keep only regions whose pixels all
    pass it already, and the ``silop`` output would equal the CAM."""
    cams = recorded_threshold(cam_manifest)
    if cams is None:
        cams = otsu_of(cam_dir, dataset.ids, workers)
    return {"method": "from_cams", "threshold": combined_threshold(cams, combination), "cams_threshold": cams}


def combined_threshold(cams_threshold: float, combination: Combination) -> float:
    """A CAM threshold mapped through the combination, for pixels the fit did not keep (:func:`from_cams`)."""
    return round(float(cams_threshold) * (0.5 if combination == "silop" else 1.0), 3)


def _choose_thresholds(dataset: Dataset, cam_dir: Path, perimeter_dirs: dict[str, Path], config: PerimeterFitConfig,
                       has_masks: bool, workers: int, stage) -> dict[str, float]:
    variants = config.perimeter.variants
    if config.thresholds is not None:
        thresholds, how = dict(config.thresholds), "config"
    elif config.search == "grid" and has_masks:
        truth = GroundTruth.from_dataset(dataset)
        items = [(i, truth.masks[i], lambda i=i: _load(cam_dir, perimeter_dirs, i))
                 for i in dataset.ids if i in truth.masks]
        rows = grid_search(items, variants, config.grid, config.combination, len(dataset.class_names),
                           len(items), workers)
        thresholds, how = rows[0]["thresholds"], "grid"
        stage.record(grid=rows)
    else:
        if config.search == "grid":
            log.warning("perimeterfit: %s has no masks for a grid search; using the label-free threshold",
                        dataset.root)
        free = from_cams(read_manifest(cam_dir) or {}, cam_dir, dataset, config.combination, workers)["threshold"]
        thresholds, how = {v: free for v in variants}, "label_free"
    log.info("perimeterfit: thresholds %s (%s)", thresholds, how)
    stage.record(threshold_choice=how)
    return thresholds
