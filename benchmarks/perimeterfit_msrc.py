"""PerimeterFit on msrc-voc train (CPU): CAM vs refined CAM in SILOP's Table II / VI layout, and speed.

    .venv/bin/python benchmarks/perimeterfit_msrc.py --cam-run runs/bench_cam_msrc/cam

Needs a CAM run with ``make_cam`` finished on the train split (benchmarks/cam_msrc.py makes
one); its make_cam is linked into --run, where the perimeter maps (reduced-resolution USS,
the default) and the stage go, and into --full-run for a subset at full resolution. All
steps resume. Results go to
benchmarks/results/perimeterfit_msrc.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from common import MSRC, ROOT, link, pct, write_result
from tagseg.artifacts import load_score_map
from tagseg.data.dataset import open_dataset
from tagseg.evaluate import GroundTruth
from tagseg.refine.perimeterfit import fit_masks, flood_fill_reference, perimeter_regions
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging
from tagseg.stages.perimeter import perimeter_maps, read_perimeter, stage_name
from tagseg.stages.perimeterfit import PerimeterFitConfig, _load, grid_search, perimeterfit

METHODS = [("slic: cam*slic", ("slic",), "product"), ("quickshift: cam*quick", ("quickshift",), "product"),
           ("both: cam*slic*quick", ("slic", "quickshift"), "product"),
           ("slic: cam*slic + cam", ("slic",), "silop"), ("quickshift: cam*quick + cam", ("quickshift",), "silop"),
           ("silop: cam*slic*quick + cam", ("slic", "quickshift"), "silop")]



def cam_row(cam_manifest: dict) -> dict:
    metrics = cam_manifest["metrics"]
    return {"method": "CAM", "miou": pct(metrics["miou"]), "mfp": metrics["mfp"], "mfn": metrics["mfn"],
            "threshold": cam_manifest["threshold"], "fit_thresholds": None}


def cam_curve_row(cam_manifest: dict, ids: set[str] | None, dataset, run: Path) -> dict:
    """The CAM's own oracle row on a subset of images (for the full-resolution comparison)."""
    from tagseg.metrics import ThresholdSweep
    from tagseg.data.imageio import read_mask
    from tagseg.evaluate import DEFAULT_THRESHOLDS

    sweep = ThresholdSweep(np.asarray(DEFAULT_THRESHOLDS), dataset.num_classes)
    for record in dataset.records:
        if record.id in ids:
            scores, classes = load_score_map(run / "make_cam" / f"{record.id}.npz")
            sweep.update(read_mask(record.mask_path, dataset.num_classes), scores, classes)
    best = max(sweep.curve(), key=lambda r: r["miou"] or 0)
    return {"method": "CAM", "miou": pct(best["miou"]), "mfp": best["mfp"], "mfn": best["mfn"],
            "threshold": best["threshold"], "fit_thresholds": None}


def method_rows(dataset, run: Path, ids: list[str], grid, workers: int) -> list[dict]:
    truth = GroundTruth.from_dataset(dataset)
    rows = []
    for name, variants, combination in METHODS:
        dirs = {v: run / stage_name(v) for v in variants}
        items = [(i, truth.masks[i], lambda i=i, dirs=dirs: _load(run / "make_cam", dirs, i)) for i in ids]
        best = grid_search(items, variants, grid, combination, dataset.num_classes, len(items), workers)[0]
        rows.append({"method": name, "miou": pct(best["miou"]), "mfp": best["mfp"], "mfn": best["mfn"],
                     "threshold": best["threshold"], "fit_thresholds": best["thresholds"]})
        print(f"  {name}: {rows[-1]['miou']} (fit {best['thresholds']}, t {best['threshold']})", file=sys.stderr)
    return rows


def flood_fill_seconds(cam: np.ndarray, perimeter: np.ndarray, threshold: float) -> float:
    """One class with the per-pixel flood fill of SILOP's Algorithm 2 (pure Python BFS), for contrast."""
    started = time.perf_counter()
    flood_fill_reference(cam[None], perimeter, threshold)
    return time.perf_counter() - started


def fit_speed(run: Path, ids: list[str], repeats: int = 20) -> dict:
    """PerimeterFit per 500x375 image (both variants, every tagged class) on one thread."""
    cv2.setNumThreads(1)
    per_image, classes_seen, flood = [], 0, None
    for item_id in ids[:20]:
        scores, _ = load_score_map(run / "make_cam" / f"{item_id}.npz")
        scores = np.stack([cv2.resize(s, (500, 375), interpolation=cv2.INTER_LINEAR) for s in scores])
        perimeters = [cv2.resize(read_perimeter(run / stage_name(v) / f"{item_id}.png").astype(np.uint8), (500, 375),
                                 interpolation=cv2.INTER_NEAREST) > 0 for v in ("slic", "quickshift")]
        started = time.perf_counter()
        for _ in range(repeats):
            for perimeter in perimeters:
                fit_masks(scores, perimeter_regions(perimeter), 0.3)
        per_image.append((time.perf_counter() - started) / repeats)
        classes_seen += len(scores)
        if flood is None:
            flood = flood_fill_seconds(scores[0], perimeters[0], 0.3)
    return {"image_size": [500, 375], "ms_per_image_both_variants": round(1000 * float(np.mean(per_image)), 3),
            "mean_tagged_classes": round(classes_seen / len(per_image), 2),
            "python_flood_fill_seconds_one_class_one_variant": round(flood, 3)}


def table(result: dict) -> str:
    lines = ["| input | method | mIoU | mFP / mFN | fit thresholds | bg threshold |", "|---|---|---|---|---|---|"]
    for section in ("reduced", "full_subset", "reduced_subset"):
        if section not in result:
            continue
        for r in result[section]["rows"]:
            fits = ", ".join(f"{k} {v:.2f}" for k, v in (r["fit_thresholds"] or {}).items()) or "-"
            lines.append(f"| {result[section]['label']} | {r['method']} | {r['miou']:.1f} | {r['mfp']:.2f} / "
                         f"{r['mfn']:.2f} | {fits} | {r['threshold']:.2f} |")
    free = result["stage"]
    lines += ["", f"Stage default ({free['combination']}, grid-searched thresholds {free['thresholds']}): "
              f"{free['miou']:.1f} at the oracle background threshold, {free['label_free_miou']:.1f} at the "
              f"label-free one; label-free fit thresholds (no masks used): {free['label_free_run_miou']:.1f}.", "",
              "| USS input | variant | presegment s/img | USS s/img | Canny s/img | images |", "|---|---|---|---|---|---|"]
    for label, key in (("max side 160", "reduced"), ("full size", "full_subset")):
        for variant, timing in result[key]["seconds_per_image"].items():
            lines.append(f"| {label} | {variant} | {timing['presegment']:.3f} | {timing['uss']:.3f} | "
                         f"{timing['canny']:.4f} | {result[key]['images']} |")
    speed = result["fit_speed"]
    lines += ["", f"PerimeterFit: {speed['ms_per_image_both_variants']:.2f} ms per 500x375 image (both variants, "
              f"{speed['mean_tagged_classes']} tagged classes on average, one thread); a pure-Python per-pixel flood "
              f"fill takes {speed['python_flood_fill_seconds_one_class_one_variant']:.2f} s for one class and variant."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--cam-run", type=Path, default=ROOT / "runs" / "bench_cam_msrc" / "cam")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench_perimeterfit",
                        help="run directory for the perimeter maps and the stage (make_cam is linked in)")
    parser.add_argument("--full-run", type=Path, default=ROOT / "runs" / "bench_perimeterfit_full")
    parser.add_argument("--full-images", type=int, default=40, help="images for the full-resolution USS comparison")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--speed-only", action="store_true",
                        help="re-measure only PerimeterFit's speed, into the existing result file")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "perimeterfit_msrc.json")
    args = parser.parse_args()
    setup_logging()
    dataset = open_dataset(args.data, "train")
    if args.speed_only:
        result = json.loads(args.out.read_text())
        result["fit_speed"] = fit_speed(args.run, dataset.ids)
        write(result, args.out)
        print(table(result))
        return
    cam_manifest = read_manifest(args.cam_run / "make_cam")
    if not cam_manifest or cam_manifest.get("status") != "complete":
        sys.exit(f"{args.cam_run}/make_cam: no finished CAMs (run benchmarks/cam_msrc.py first)")
    defaults = PerimeterFitConfig()
    grid = defaults.grid
    result = {"benchmark": "perimeterfit_msrc", "dataset": str(args.data), "split": "train",
              "cam_run": str(args.cam_run), "cam_config": cam_manifest["config"],
              "perimeter_config": defaults.perimeter.model_dump(), "grid": grid,
              "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}}

    link(args.cam_run / "make_cam", args.run / "make_cam")
    reduced = perimeter_maps(dataset, args.run, defaults.perimeter, workers=args.workers)
    result["reduced"] = {"label": "USS at max side 160", "images": len(dataset),
                         "seconds_per_image": {v: m["seconds_per_image"] for v, m in reduced.items()},
                         "rows": [cam_row(cam_manifest)] + method_rows(dataset, args.run, dataset.ids, grid,
                                                                       args.workers)}
    write(result, args.out)

    subset = dataset.ids[:args.full_images]
    subset_data = dataclasses.replace(dataset, records=[dataset.record(i) for i in subset])
    link(args.cam_run / "make_cam", args.full_run / "make_cam")
    full = perimeter_maps(subset_data, args.full_run, defaults.perimeter.model_copy(update={"max_side": None}),
                          workers=args.workers)
    result["full_subset"] = {"label": f"USS at full size, first {len(subset)} images", "images": len(subset),
                             "seconds_per_image": {v: m["seconds_per_image"] for v, m in full.items()},
                             "rows": [cam_curve_row(cam_manifest, set(subset), dataset, args.cam_run)]
                             + method_rows(dataset, args.full_run, subset, grid, args.workers)}
    result["reduced_subset"] = {"label": f"USS at max side 160, first {len(subset)} images", "images": len(subset),
                                "rows": [cam_curve_row(cam_manifest, set(subset), dataset, args.cam_run)]
                                + method_rows(dataset, args.run, subset, grid, args.workers)}
    write(result, args.out)

    stage = perimeterfit(dataset, args.run, defaults, workers=args.workers, force=True)
    free_run = args.run.with_name(args.run.name + "_label_free")
    for name in ("make_cam", stage_name("slic"), stage_name("quickshift")):
        link(args.run / name, free_run / name)
    free = perimeterfit(dataset, free_run, defaults.model_copy(update={"search": "label_free"}), workers=args.workers,
                        force=True)
    result["stage"] = {"combination": defaults.combination, "thresholds": stage["thresholds"],
                       "threshold": stage["threshold"], "miou": pct(stage["metrics"]["miou"]),
                       "mfp": stage["metrics"]["mfp"], "mfn": stage["metrics"]["mfn"],
                       "label_free_miou": pct(stage["label_free"]["metrics"]["miou"]),
                       "label_free_threshold": stage["label_free"]["threshold"],
                       "label_free_run_thresholds": free["thresholds"],
                       "label_free_run_miou": pct(free["label_free"]["metrics"]["miou"]),
                       "seconds": stage["timings"]["seconds"]}
    result["fit_speed"] = fit_speed(args.run, dataset.ids)
    write(result, args.out)
    print(table(result))



def write(result: dict, out: Path) -> None:
    write_result(out, result, table(result) if "stage" in result else None)


if __name__ == "__main__":
    main()
