"""The 'random_walk' stage: scores propagated over the trained affinities (PSA / IRN inference).

Per image: affinities at stride 4 from the trained network (averaged with the mirror
image's), a sparse row-stochastic transition matrix (affinity^beta within the radius,
self-loops), the tagged classes' scores shrunk to stride 4, 2^logt walk steps, upsampled to
the image and divided by their maximum per class. Output ``<run>/random_walk/<id>.npz`` in
the CAM format (foreground classes only): the background is whatever stays under the
threshold, IRN's sem_seg_bg_thres.

Defaults differ from IRN where msrc-voc measured better (benchmarks/affinity_msrc.py): IRN
multiplies the scores by 1 - boundary and divides by the overall maximum, which cost 9 and
4 mIoU points with a boundary net trained on a few hundred images; both stay available
(``boundary_mask``, ``normalize: global``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from tagseg.artifacts import load_score_map, save_score_map
from tagseg.data.dataset import Dataset
from tagseg.data.imageio import read_image
from tagseg.data.transforms import resize, to_batch
from tagseg.evaluate import score_stage, score_stage_fields
from tagseg.label_free import Method as LabelFreeMethod, histogram_of, matched_area, otsu, recorded_threshold
from tagseg.models.affinity import AffinityModel, BoundaryModel
from tagseg.progress import parallel_map
from tagseg.refine.random_walk import neighbor_offsets, path_affinities, random_walk, transition_matrix
from tagseg.rundir import file_digest, finished_stage, stage_dir
from tagseg.sizing import IMAGE_SIZE_HELP, ImageSize, input_scales, resolve_image_size
from tagseg.skipping import record_skipped, without_skipped_by
from tagseg.stages.train_affinity import MODEL_FILE, STAGE as TRAIN_STAGE, load_affinity_model
from tagseg.stages.train_cam import run_classifier

STAGE = "random_walk"
log = logging.getLogger(__name__)


class RandomWalkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cams: str = Field("make_cam", description="the score stage to propagate")
    beta: float = Field(10.0, gt=0, description="affinities are raised to this power (IRN 10, PSA 8)")
    logt: int = Field(6, ge=0, le=12, description="2^logt walk steps (IRN: 8)")
    radius: int = Field(5, ge=2, description="affinities to neighbours within this distance (stride-4 pixels)")
    flip: bool = Field(True, description="average the affinities of the image and its mirror image")
    boundary_mask: bool = Field(False, description="multiply scores by 1 - boundary before walking (IRN)")
    normalize: Literal["global", "per_class"] = Field(
        "per_class", description="divide the walked scores by each class's maximum, or by their overall maximum (IRN)")
    image_size: ImageSize = Field("auto", description=IMAGE_SIZE_HELP)
    label_free: Literal["from_source"] | LabelFreeMethod = Field(
        "masking", description="how the output's label-free background threshold is chosen (rescoring only): "
                               "masking asks the run's classifier about the walked maps; from_source keeps the "
                               "source's foreground area")


def network_input(image_path: Path, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The image as the affinity net sees it (rescaled by 320 / image_size: the pixel sizes it was trained
    on) and its original (height, width)."""
    image, _ = read_image(image_path)
    height, width = image.shape[:2]
    if scale != 1.0:
        image = resize(image, max(1, round(height * scale)), max(1, round(width * scale)))
    return image, (height, width)


def _batch(net: AffinityModel, image: np.ndarray, flip: bool, device: str) -> torch.Tensor:
    return to_batch([image, np.ascontiguousarray(image[:, ::-1])] if flip else [image],
                    net.backbone.mean, net.backbone.std).to(device)


@torch.no_grad()
def image_boundary(net: BoundaryModel, image: np.ndarray, flip: bool, device: str) -> torch.Tensor:
    """A boundary net's map (h, w) at stride 4, averaged with the mirror image's when ``flip``."""
    boundary = net.boundary(_batch(net, image, flip, device))
    return (boundary[0] + boundary[1].flip(-1)) / 2 if flip else boundary[0]


@torch.no_grad()
def image_affinities(net: AffinityModel, image: np.ndarray, offsets, flip: bool, device: str):
    """Affinities (K, h, w) at stride 4 and, for a boundary net, the boundary map (h, w)."""
    if isinstance(net, BoundaryModel):
        boundary = image_boundary(net, image, flip, device)
        return path_affinities(boundary, offsets), boundary
    batch = _batch(net, image, flip, device)
    if flip:
        # the mirror's pair (p, p + (dy, dx)) is the original's (p', p' + (dy, -dx)): average over matching pairs
        mirrored_offsets = np.asarray(offsets) * np.array([1, -1])
        forward = net.affinities(batch[:1], offsets)[0]
        backward = net.affinities(batch[1:], mirrored_offsets)[0].flip(-1)
        return (forward + backward) / 2, None
    return net.affinities(batch, offsets)[0], None


def propagate(scores: np.ndarray, affinities: torch.Tensor, boundary: torch.Tensor | None, offsets, beta: float,
              logt: int, per_class: bool = False) -> np.ndarray:
    """Walk (K, H, W) scores over stride-4 affinities; returns (K, H, W) scores scaled to a maximum of 1
    overall, or per class when ``per_class``. With ``boundary``, scores are first multiplied by 1 - boundary."""
    classes, height, width = scores.shape
    if classes == 0:
        return scores
    grid = affinities.shape[-2:]
    small = F.interpolate(torch.from_numpy(scores)[None].to(affinities.device), size=grid, mode="bilinear",
                          align_corners=False)[0]
    if boundary is not None:
        small = small * (1 - boundary)
    walked = random_walk(small, transition_matrix(affinities, offsets, beta), 2 ** logt)
    full = F.interpolate(walked[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    full = full.clamp_min(0)
    peak = full.flatten(1).max(1).values[:, None, None] if per_class else full.max()
    return (full / peak.clamp_min(1e-5)).cpu().numpy()


def random_walk_stage(dataset: Dataset, run: Path, config: RandomWalkConfig, *, device: str = "cpu",
                      workers: int = 1, force: bool = False) -> dict:
    run = Path(run)
    source = finished_stage(run, config.cams, STAGE)
    dataset = without_skipped_by(dataset, source, config.cams)
    model_path = run / TRAIN_STAGE / MODEL_FILE
    net, saved = load_affinity_model(model_path, device)
    offsets = neighbor_offsets(config.radius)
    image_size = resolve_image_size(config.image_size, dataset)
    (scale,) = input_scales([1.0], image_size)
    stage_config = {**config.model_dump(exclude={"label_free"}), "image_size": image_size,
                    "source_config": source["config"],
                    "model": f"{TRAIN_STAGE}/{MODEL_FILE}", "model_digest": file_digest(model_path),
                    **dataset.identity()}
    with stage_dir(run, STAGE, stage_config, force=force, collective=True) as stage:
        record_skipped(stage, dataset)
        todo = stage.share(stage.pending(dataset.ids, ".npz"))

        def load(item_id: str):
            image, _ = network_input(dataset.record(item_id).image_path, scale)
            return item_id, image, load_score_map(run / config.cams / f"{item_id}.npz")

        started = time.perf_counter()
        for item_id, image, (scores, classes) in parallel_map(load, todo, len(todo),
                                                               f"random walk ({len(todo)} images)", workers):
            affinities, boundary = image_affinities(net, image, offsets, config.flip, device)
            save_score_map(stage.item_path(item_id, ".npz"),
                           propagate(scores, affinities, boundary if config.boundary_mask else None, offsets,
                                     config.beta, config.logt, config.normalize == "per_class"), classes)
        computed = stage.gather(len(todo))
        if computed is None:  # another process of a torchrun group: rank 0 records and scores
            return stage.manifest
        if computed:  # wall seconds per image of all the processes together
            stage.record(items_computed=computed,
                         seconds_per_image=round((time.perf_counter() - started) / computed, 4))
        # from_source is the fallback when masking cannot choose: Otsu of walked maps can miss by 37 points
        # (docs/benchmarks/label-free.md)
        def matched() -> dict:
            return from_source(source, run / config.cams, stage.path, dataset.ids, workers)

        def score() -> dict:
            label_free = matched() if config.label_free == "from_source" else config.label_free
            classifier = run_classifier(run, device) if label_free == "masking" else None
            return score_stage_fields(stage.path, dataset, workers, label_free, classifier, device, scale,
                                      matched if config.label_free == "masking" else None)

        score_stage(stage, computed, {"method": config.label_free,
                                      "source_threshold": recorded_threshold(source)}, score)
        return stage.manifest


def from_source(source: dict, source_dir: Path, walked_dir: Path, ids: list[str], workers: int = 1) -> dict:
    """The walk's label-free threshold: the one at which its foreground covers as many pixels as the
    source stage's foreground at the source's label-free threshold. The walk moves scores along
    affinities, towards object boundaries, rather than deciding how much of the image is object."""
    source_histogram = histogram_of(source_dir, ids, workers)
    threshold = recorded_threshold(source)
    if threshold is None:
        threshold = otsu(source_histogram)
    return {"method": "from_source", "threshold": matched_area(source_histogram, threshold,
                                                               histogram_of(walked_dir, ids, workers)),
            "source_threshold": threshold}
