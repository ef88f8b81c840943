"""`tagseg run RECIPE.yaml`: the stages of a recipe, in order, into one run directory, resumably.

A recipe names the dataset, the run directory and an ordered mapping of stage -> config.
Every stage config is validated before anything runs (errors name ``stages.<stage>.<key>``).
``<run>/pipeline.json`` records each stage's recipe section, status and wall time; a rerun
skips stages finished with the same section, unless a stage before them ran in this call (they may read
its new output); each stage resumes its own items, and one whose settings or inputs changed is refused
(``force``: recomputed).
With ``on_error: skip`` unreadable images are found once, before the first stage, and left
out of every stage (see :mod:`tagseg.skipping`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tagseg.config import merge, parse_overrides, read_yaml, validate
from tagseg.errors import ConfigError, OnError
from tagseg.rundir import read_manifest, write_json
from tagseg.sizing import ImageSize, resolve_image_size

PIPELINE_FILE = "pipeline.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    config: type[BaseModel]
    run: Callable  # (recipe, train split dataset, eval split dataset, config, force) -> manifest
    output: Callable[[BaseModel, "Recipe"], str]  # the stage directory it writes


def _specs() -> dict[str, StageSpec]:
    from tagseg.stages.affinity_labels import STAGE as AL, AffinityLabelsConfig, make_affinity_labels
    from tagseg.stages.boundary_labels import STAGE as BL, BoundaryLabelsConfig, make_boundary_labels
    from tagseg.stages.boundary_maps import STAGE as BM, BoundaryMapsConfig, make_boundary_maps
    from tagseg.stages.make_cam import STAGE as MC, MakeCamConfig, make_cams
    from tagseg.stages.perimeterfit import STAGE as PF, PerimeterFitConfig, perimeterfit
    from tagseg.stages.pseudo_labels import STAGE as PL, PseudoLabelConfig, make_pseudo_labels
    from tagseg.stages.random_walk import STAGE as RW, RandomWalkConfig, random_walk_stage
    from tagseg.stages.refine_saliency import STAGE as RS, RefineSaliencyConfig, make_refined_saliency
    from tagseg.stages.saliency import STAGE as SA, SaliencyConfig, make_saliency
    from tagseg.stages.segment import STAGE as SG, SegmentConfig, segment_split
    from tagseg.stages.superpixel_seeds import STAGE as SS, SuperpixelSeedsConfig, make_superpixel_seeds
    from tagseg.stages.superpixels import STAGE as SP, SuperpixelConfig, make_superpixels
    from tagseg.stages.train_affinity import STAGE as TA, AffinityTrainConfig, train_affinity
    from tagseg.stages.train_cam import STAGE as TC, CamTrainConfig, train_cam
    from tagseg.stages.train_seg import STAGE as TS, SegTrainConfig, train_seg

    def device_stage(function):
        return lambda r, train, _, c, f: function(train, r.run, c, device=r.device, workers=r.workers, force=f)

    def cpu_stage(function):
        return lambda r, train, _, c, f: function(train, r.run, c, workers=r.workers, force=f)

    return {
        TC: StageSpec(CamTrainConfig, lambda r, train, held_out, c, f: train_cam(
            train, r.run, c, device=r.device, workers=r.workers, eval_dataset=held_out, force=f), lambda c, r: TC),
        MC: StageSpec(MakeCamConfig, device_stage(make_cams), lambda c, r: MC),
        PF: StageSpec(PerimeterFitConfig, device_stage(perimeterfit), lambda c, r: PF),
        AL: StageSpec(AffinityLabelsConfig, cpu_stage(make_affinity_labels), lambda c, r: AL),
        BL: StageSpec(BoundaryLabelsConfig, cpu_stage(make_boundary_labels), lambda c, r: BL),
        TA: StageSpec(AffinityTrainConfig, device_stage(train_affinity), lambda c, r: TA),
        BM: StageSpec(BoundaryMapsConfig, device_stage(make_boundary_maps), lambda c, r: BM),
        RW: StageSpec(RandomWalkConfig, device_stage(random_walk_stage), lambda c, r: RW),
        PL: StageSpec(PseudoLabelConfig, cpu_stage(make_pseudo_labels), lambda c, r: PL),
        SA: StageSpec(SaliencyConfig, cpu_stage(make_saliency), lambda c, r: SA),
        RS: StageSpec(RefineSaliencyConfig, cpu_stage(make_refined_saliency), lambda c, r: RS),
        SP: StageSpec(SuperpixelConfig, device_stage(make_superpixels), lambda c, r: SP),
        SS: StageSpec(SuperpixelSeedsConfig, cpu_stage(make_superpixel_seeds), lambda c, r: SS),
        TS: StageSpec(SegTrainConfig, device_stage(train_seg), lambda c, r: TS),
        SG: StageSpec(SegmentConfig, lambda r, train, held_out, c, f: segment_split(
            held_out or train, r.run, c, device=r.device, workers=r.workers, force=f),
            lambda c, r: f"{SG}_{r.eval_split or r.train_split}"),
    }


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Path = Field(description="dataset root (VOC layout or images/ + tags CSV)")
    run: Path = Field(description="run directory; each stage writes RUN/<stage>/")
    train_split: str = Field("train", description="split the stages train on and process")
    eval_split: str | None = Field("val", description="held-out split: classifier mAP and the final segmentation")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    workers: int = Field(2, ge=1, description="parallel workers per stage (threads, or processes for the CRF stages)")
    on_error: OnError = Field("stop", description="an unreadable image stops the run (stop) or is left out (skip)")
    upper_bound_run: Path | None = Field(None, description="a fully supervised run to compare with in the report")
    image_size: ImageSize = Field("auto", description="long side (px) the stages' size-dependent settings are "
                                                      "converted for; 'auto': the train split's median long side")
    stages: dict[str, dict] = Field(min_length=1, description="ordered mapping of stage name to that stage's keys")

    @field_validator("stages")
    @classmethod
    def _known(cls, stages):
        known = _specs()
        unknown = [name for name in stages if name not in known]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(known)}")
        return {name: section or {} for name, section in stages.items()}


def load_recipe(path: Path, overrides: list[str] | None = None) -> tuple[Recipe, dict[str, BaseModel]]:
    """The recipe and each stage's validated config (relative paths are relative to the current directory)."""
    values = merge(read_yaml(Path(path)), parse_overrides(overrides or []))
    source = f"{path}" + (" + --set" if overrides else "")
    recipe = validate(Recipe, values, source)
    specs = _specs()
    configs = {name: validate(specs[name].config, section, f"{source}: stages.{name}")
               for name, section in recipe.stages.items()}
    return recipe, configs


def run_recipe(recipe: Recipe, configs: dict[str, BaseModel], force: bool = False) -> dict:
    """Run (or resume) every stage; returns the pipeline record. A stage whose settings or inputs changed
    since it ran is refused, naming the change, unless ``force`` (then recomputed).

    Under torchrun every process runs every stage together (the training stages train one model, each
    per-image stage gives every process a share of the images); rank 0 alone writes ``pipeline.json``."""
    from tagseg import distributed
    from tagseg.data.dataset import open_dataset
    from tagseg.runtime import resolve_device
    from tagseg.skipping import readable_only

    recipe = recipe.model_copy(update={"device": resolve_device(recipe.device)})
    distributed.init_from_env(recipe.device)
    train = open_dataset(recipe.dataset, recipe.train_split)
    held_out = open_dataset(recipe.dataset, recipe.eval_split) if recipe.eval_split else None
    if recipe.on_error == "skip":
        train = readable_only(train, recipe.workers)
        held_out = readable_only(held_out, recipe.workers) if held_out is not None else None
    record_path = recipe.run / PIPELINE_FILE
    record = read_pipeline_record(record_path)
    distributed.barrier()  # every process read the record before rank 0 changes it
    image_size = resolve_image_size(recipe.image_size, train)
    log.info("run: image size %d px (%s)", image_size,
             "median long side of the train split" if recipe.image_size == "auto" else "recipe")
    record.update(recipe=recipe.model_dump(mode="json"), image_size=image_size)
    specs = _specs()
    ran = False  # a stage ran in this call: the later ones may read its new output, so they are asked too
    for name, config in configs.items():
        if "image_size" in type(config).model_fields and "image_size" not in recipe.stages[name]:
            config = config.model_copy(update={"image_size": image_size})
        section = config.model_dump(mode="json")
        previous = record["stages"].get(name, {})
        output = specs[name].output(config, recipe)
        manifest = read_manifest(recipe.run / output)
        if (not ran and previous.get("status") == "complete" and previous.get("config") == section and manifest
                and manifest.get("status") == "complete"):
            log.info("run: %s already finished, skipped", name)
            continue
        log.info("run: stage %s", name)
        record["stages"][name] = {"config": section, "status": "running", "output": output}
        if distributed.is_main():
            write_json(record_path, record)
        started = time.perf_counter()
        specs[name].run(recipe, train, held_out, config, force)
        ran = True
        distributed.barrier()
        record["stages"][name].update(status="complete", seconds=round(time.perf_counter() - started, 2))
        if distributed.is_main():
            write_json(record_path, record)
    return record


def read_pipeline_record(path: Path) -> dict:
    """``pipeline.json`` as a dict (an empty record when the run is new)."""
    if not path.exists():
        return {"stages": {}}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: unreadable pipeline record ({error}); delete it to start the record afresh")
    record.setdefault("stages", {})
    return record
