"""BES on msrc-voc in the layout of the paper's Table 1, with IRN's and PSA's walks and boundary P/R/F beside.

    .venv/bin/python benchmarks/bes_msrc.py [--cam-run RUN] [--seed N]

Runs under --runs (each resumable, each with the recipe it ran in ``<run>/recipe.yaml``):
- ``attention``: recipes/bes.yaml as shipped (attention-pooling CAM -> boundary labels -> BENet ->
  boundary walk -> CRF -> DeepLabV2 on val);
- ``cam``: the same chain up to the pseudo-labels from plain CAM (``--cam-run``: a run whose
  ``train_cam`` and ``make_cam`` have exactly these settings, linked in instead of recomputed);
- ``irn`` and ``affinitynet``: the attention CAMs through IRN's boundary net and PSA's
  AffinityNet with the walk settings of recipes/cam_rw.yaml and recipes/silop.yaml, and the
  same CRF as BES;
- ``benet_irn_walk``: BES's BENet (linked from ``attention``) walked with recipes/cam_rw.yaml's
  settings, which separates the boundary net from the walk's settings.
Boundary maps of BENet and of IRN's boundary net, and a soft Canny map of the image (the mean of
Canny edge maps over a grid of thresholds, so a threshold on it is a choice of Canny's), are scored
against the masks' boundaries (2 px). A child process times boundary-label synthesis and the walk
on one synthetic 1000 x 750 photo and reports its peak memory. Writes
benchmarks/results/bes_msrc.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from common import MSRC, ROOT, class_iou, link, pct, write_result
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_image, read_mask, write_boundary_map
from tagseg.evaluate import GroundTruth, evaluate_boundaries
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.progress import parallel_map
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging

CANNY_THRESHOLDS = [(low, 2 * low) for low in range(10, 260, 10)]
UP_TO_PSEUDO_LABELS = ("train_cam", "make_cam", "boundary_labels", "train_affinity", "boundary_maps",
                       "random_walk", "pseudo_labels")


def bes_stages() -> dict:
    return yaml.safe_load((ROOT / "recipes" / "bes.yaml").read_text())["stages"]


def run_variant(run: Path, stages: dict, data: Path, seed: int) -> dict:
    """Run ``stages`` into ``run`` with recipes/bes.yaml's other keys; returns the pipeline record."""
    recipe = {**yaml.safe_load((ROOT / "recipes" / "bes.yaml").read_text()), "dataset": str(data),
              "run": str(run), "stages": stages}
    for stage, key in (("train_cam", "seed"), ("train_affinity", "seed"), ("train_seg", "seed")):
        if stage in stages:
            stages[stage] = {**stages[stage], key: seed}
    run.mkdir(parents=True, exist_ok=True)
    path = run / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return run_recipe(*load_recipe(path))


def score_row(name: str, manifest: dict) -> dict:
    """Oracle and label-free mIoU of a score stage, or the mIoU of a mask stage (its own threshold)."""
    free = manifest.get("label_free") or {}
    return {"method": name, "oracle_miou": pct((manifest.get("metrics") or {}).get("miou")) if free else None,
            "oracle_threshold": manifest.get("threshold") if free else None,
            "label_free_miou": pct((free.get("metrics") or manifest.get("metrics") or {}).get("miou")),
            "label_free_threshold": free.get("threshold", manifest.get("threshold")),
            "class_iou": class_iou(manifest)}


def boundary_row(name: str, result: dict) -> dict:
    metrics = result["metrics"]
    return {"method": name, "precision": pct(metrics["precision"]), "recall": pct(metrics["recall"]),
            "f": pct(metrics["f"]), "threshold": result["threshold"], "tolerance": result["tolerance"]}


def canny_maps(dataset, folder: Path, workers: int) -> None:
    """A soft Canny map per image: the share of CANNY_THRESHOLDS at which the pixel is an edge."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(record):
        out = folder / f"{record.id}.png"
        if not out.exists():
            gray = cv2.cvtColor(read_image(record.image_path)[0], cv2.COLOR_RGB2GRAY)
            edges = np.mean([cv2.Canny(gray, low, high) > 0 for low, high in CANNY_THRESHOLDS], axis=0)
            write_boundary_map(out, edges)

    for _ in parallel_map(one, dataset.records, len(dataset), "canny maps", workers):
        pass


def probe() -> dict:
    """Boundary labels and the BES walk on one 1000 x 750 synthetic photo (run in a fresh process, so that
    its peak memory is the chain's, not the benchmark's)."""
    from tagseg.data.make_synthetic import write_synthetic_dataset
    from tagseg.models.affinity import BENet
    from tagseg.models.backbones import create_backbone
    from tagseg.refine import bes
    from tagseg.refine.affinity_labels import affinity_seed_labels
    from tagseg.refine.crf import CrfParams
    from tagseg.refine.random_walk import neighbor_offsets
    from tagseg.stages.random_walk import image_affinities, propagate

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(Path(tmp) / "d", 2, seed=0, size=(1000, 750), val_fraction=0.5)
        dataset = open_dataset(Path(tmp) / "d", "train")
        record = dataset.records[0]
        image = read_image(record.image_path)[0]
        truth = read_mask(record.mask_path, dataset.num_classes)
    scores = np.stack([cv2.GaussianBlur((truth == c).astype(np.float32), (0, 0), 12) for c in record.labels])
    scores /= scores.reshape(len(scores), -1).max(1)[:, None, None]
    started = time.perf_counter()
    seeds = affinity_seed_labels(scores, np.asarray(record.labels), 0.30, 0.07, image=image,
                                 crf_params=CrfParams(bilateral_sxy=50))
    labels = bes.boundary_labels(bes.class_shares(seeds, int(max(record.labels)) + 1, 13))
    synthesis = time.perf_counter() - started
    net = BENet(create_backbone("efficientnet_lite0", weights=None)).eval()
    offsets = neighbor_offsets(5)
    started = time.perf_counter()
    affinities, boundary = image_affinities(net, image, offsets, True, "cpu")
    propagate(scores, affinities, boundary, offsets, beta=5, logt=8)
    walk = time.perf_counter() - started
    return {"image": [int(image.shape[1]), int(image.shape[0])], "boundary_pixels": int((labels == 1).sum()),
            "synthesis_seconds": round(synthesis, 2), "walk_seconds": round(walk, 2),
            "peak_rss_mb": peak_memory_mb()}


def peak_memory_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the address space, so it starts afresh
    at exec; ru_maxrss also keeps the forking parent's peak (3 GB here), so it is only the fallback."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def memory_probe() -> dict:
    done = subprocess.run([sys.executable, __file__, "--probe"], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(result: dict) -> str:
    lines = ["| method | mIoU, oracle threshold | mIoU, label-free threshold |", "|---|---|---|"]
    for r in result["rows"]:
        oracle = "-" if r["oracle_miou"] is None else f"{r['oracle_miou']:.1f} ({r['oracle_threshold']:.2f})"
        lines.append(f"| {r['method']} | {oracle} | {r['label_free_miou']:.1f} ({r['label_free_threshold']:.2f}) |")
    deeplab = result.get("deeplab")
    if deeplab:
        lines += ["", f"DeepLabV2 on the BES pseudo-labels: val mIoU {deeplab['val_miou']:.1f}"
                      + (f" ({deeplab['ratio']:.1%} of the fully supervised {deeplab['upper_bound']:.1f})"
                         if deeplab.get("ratio") else "")]
    lines += ["", "| boundaries (train, 2 px) | precision | recall | best F | threshold |", "|---|---|---|---|---|"]
    for r in result["boundaries"]:
        lines.append(f"| {r['method']} | {r['precision']:.1f} | {r['recall']:.1f} | {r['f']:.1f} | {r['threshold']} |")
    t = result["timing"]
    lines += ["", "| timing | value |", "|---|---|",
              f"| boundary labels (msrc-voc train, CRF included) | {t['boundary_labels_seconds_per_image']} s / image |",
              f"| BENet training | {t['benet_seconds_per_pass']} s / pass |",
              f"| BES walk (msrc-voc train) | {t['walk_seconds_per_image']} s / image |"]
    measured = t.get("probe")
    if measured:
        lines += [f"| 1000 x 750 photo: boundary labels | {measured['synthesis_seconds']} s |",
                  f"| 1000 x 750 photo: BENet + walk (2^8 steps) | {measured['walk_seconds']} s |",
                  f"| 1000 x 750 photo: peak memory of the process | {measured['peak_rss_mb']} MB |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_bes")
    parser.add_argument("--cam-run", type=Path, help="a run with plain-CAM train_cam / make_cam of these settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upper-bound", type=float, help="fully supervised val mIoU (%%) for the ratio")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bes_msrc.json")
    parser.add_argument("--no-deeplab", action="store_true", help="stop the BES run at its pseudo-labels")
    parser.add_argument("--probe", action="store_true", help="only time the 1000 x 750 photo; print JSON")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe()))
        return
    setup_logging()
    started = time.time()
    runs = args.runs / f"seed{args.seed}"
    stages = bes_stages()

    attention = runs / "attention"
    run_variant(attention, {k: v for k, v in stages.items() if k in UP_TO_PSEUDO_LABELS or not args.no_deeplab},
                args.data, args.seed)
    cam = runs / "cam"
    if args.cam_run:
        for stage in ("train_cam", "make_cam"):
            link(args.cam_run / stage, cam / stage)
    plain = {k: v for k, v in stages.items() if k in UP_TO_PSEUDO_LABELS}
    plain["train_cam"] = {**plain["train_cam"], "head": "cam"}
    plain["train_cam"].pop("attention_intensity")
    run_variant(cam, plain, args.data, args.seed)
    cam_rw = yaml.safe_load((ROOT / "recipes" / "cam_rw.yaml").read_text())["stages"]
    silop = yaml.safe_load((ROOT / "recipes" / "silop.yaml").read_text())["stages"]
    others = {"irn": ("boundary", cam_rw["random_walk"]), "affinitynet": ("affinitynet", silop["random_walk"])}
    for name, (kind, walk) in others.items():
        run = runs / name
        for stage in ("train_cam", "make_cam"):
            link(attention / stage, run / stage)
        variant = {"train_cam": stages["train_cam"], "make_cam": stages["make_cam"],
                   "affinity_labels": {"cams": "make_cam"}, "train_affinity": {"kind": kind},
                   **({"boundary_maps": {}} if kind == "boundary" else {}),
                   "random_walk": {**walk, "cams": "make_cam"}, "pseudo_labels": stages["pseudo_labels"]}
        run_variant(run, variant, args.data, args.seed)
    crossed = runs / "benet_irn_walk"
    for stage in ("train_cam", "make_cam", "boundary_labels", "train_affinity"):
        link(attention / stage, crossed / stage)
    run_variant(crossed, {**{k: stages[k] for k in ("train_cam", "make_cam", "boundary_labels", "train_affinity")},
                          "random_walk": {**cam_rw["random_walk"], "cams": "make_cam"},
                          "pseudo_labels": stages["pseudo_labels"]}, args.data, args.seed)

    def manifest(run: Path, stage: str) -> dict:
        return read_manifest(run / stage) or {}

    rows = [score_row("CAM", manifest(cam, "make_cam")),
            score_row("attention-pooling CAM", manifest(attention, "make_cam")),
            score_row("CAM + boundary exploration (BES walk)", manifest(cam, "random_walk")),
            score_row("attention CAM + boundary exploration", manifest(attention, "random_walk")),
            score_row("CAM + boundary exploration + dCRF", manifest(cam, "pseudo_labels")),
            score_row("attention CAM + boundary exploration + dCRF (BES)", manifest(attention, "pseudo_labels")),
            score_row("attention CAM + IRN boundary-net walk", manifest(runs / "irn", "random_walk")),
            score_row("attention CAM + IRN boundary-net walk + dCRF", manifest(runs / "irn", "pseudo_labels")),
            score_row("attention CAM + BENet, IRN walk settings", manifest(crossed, "random_walk")),
            score_row("attention CAM + BENet, IRN walk settings + dCRF", manifest(crossed, "pseudo_labels")),
            score_row("attention CAM + AffinityNet walk", manifest(runs / "affinitynet", "random_walk")),
            score_row("attention CAM + AffinityNet walk + dCRF", manifest(runs / "affinitynet", "pseudo_labels"))]

    dataset = open_dataset(args.data, "train")
    canny = runs / "canny"
    canny_maps(dataset, canny, args.workers)
    truth = GroundTruth.from_dataset(dataset)
    boundaries = [boundary_row("BENet (attention CAM labels)", manifest(attention, "boundary_maps")["boundary_metrics"]),
                  boundary_row("BENet (CAM labels)", manifest(cam, "boundary_maps")["boundary_metrics"]),
                  boundary_row("IRN boundary net (attention CAM seeds)",
                               manifest(runs / "irn", "boundary_maps")["boundary_metrics"]),
                  boundary_row("Canny on the image", evaluate_boundaries(canny, truth, workers=args.workers))]

    final = manifest(attention, "segment_val").get("metrics") or {}
    deeplab = {"val_miou": pct(final.get("miou")), "class_iou": class_iou(manifest(attention, "segment_val")),
               "upper_bound": args.upper_bound,
               "ratio": (pct(final.get("miou")) / args.upper_bound) if args.upper_bound and final else None}
    deeplab = deeplab if final else None
    labels, walked, trained = (manifest(attention, s) for s in ("boundary_labels", "random_walk", "train_affinity"))
    timing = {"boundary_labels_seconds_per_image": round(labels["timings"]["seconds"]
                                                         / max(labels["timings"]["items_computed"], 1), 3),
              "benet_seconds_per_pass": trained.get("seconds_per_epoch"),
              "walk_seconds_per_image": walked.get("seconds_per_image"),
              "probe": memory_probe()}
    result = {"benchmark": "bes_msrc", "dataset": str(args.data), "split": "train", "seed": args.seed,
              "command": " ".join(["python", *sys.argv]),
              "machine": {"torch_threads": torch.get_num_threads(), "platform": platform.platform()},
              "wall_seconds": round(time.time() - started, 1), "label_stats": labels.get("label_fractions"),
              "rows": rows, "deeplab": deeplab, "boundaries": boundaries, "timing": timing}
    write_result(args.out, result, table(result))
    print(table(result))


if __name__ == "__main__":
    main()
