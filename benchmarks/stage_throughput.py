"""Every stage of a recipe timed on one device: images (or training crops) per second, peak memory, and the
wall time that projects for PASCAL VOC + SBD and COCO with one process (one GPU).

    .venv/bin/python benchmarks/stage_throughput.py                                  # CPU, VOC-sized synthetic data
    .venv/bin/python benchmarks/stage_throughput.py --device cuda --images 300       # on a GPU machine
    .venv/bin/python benchmarks/stage_throughput.py --data ../shared/data/msrc-voc

The data: the synthetic dataset at VOC's usual 500 x 375 px (``--images`` training images, a third as many
for val), or ``--data``, whole. Each stage of ``--recipe`` runs in a
process of its own, in the recipe's order, on those images: per-image stages on all of them (``segment``
on val); training stages for ``--train-steps`` steps, timed from their pass history (no model loading).
Peak memory: the stage process's resident set, and on a GPU ``torch.cuda.max_memory_allocated``.
Projection per dataset: a per-image stage's seconds per image times the split's images; a training stage's
seconds per step times the steps the recipe's schedule gives that many images (its epochs and
``min_steps``). With N processes the per-image stages take about 1/N of it; training about 1/N when the
GPUs are not starved by data loading (not measured here).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import common
from common import ROOT, machine, write_result

DATASETS = {"VOC 2012 + SBD": (10582, 1449), "COCO 2014": (82783, 40504)}  # train images, val images
TRAINING = ("train_cam", "train_affinity", "train_seg")


def synthetic(images: int, out: Path) -> Path:
    """The synthetic dataset at VOC's usual size: ``images`` training images and a third as many for val."""
    from tagseg.data.make_synthetic import write_synthetic_dataset

    val = max(1, images // 3)
    if not (out / "labels.csv").exists():
        write_synthetic_dataset(out, images + val, seed=0, size=(500, 375), val_fraction=val / (images + val))
    return out


def run_stage(recipe: Path, run: Path, name: str, keys: list[str], device: str, threads: int | None, queue) -> None:
    """One stage in this process; puts its wall seconds and peak memory on ``queue``."""
    import torch

    from tagseg.runtime import setup_logging
    from tagseg.threads import set_threads

    setup_logging("WARNING")
    set_threads(threads)
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    common.run_stages(recipe, run, [name], [f"device={device}", *keys], {})
    queue.put({"wall_seconds": round(time.perf_counter() - started, 2),
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None})


def measure(recipe_file: Path, data: Path, run: Path, args) -> list[dict]:
    from tagseg.data.dataset import open_dataset
    from tagseg.pipeline import PIPELINE_FILE, load_recipe
    from tagseg.training import training_steps

    keys = [f"dataset={data}", *[f"stages.{s}.steps={args.train_steps}" for s in TRAINING]]
    recipe, configs = load_recipe(recipe_file, [f"run={run}", "upper_bound_run=null", *keys])
    counts = {"train": len(open_dataset(data, recipe.train_split)), "val": len(open_dataset(data, recipe.eval_split))}
    full = load_recipe(recipe_file)[1]  # the schedules as shipped (the projection's steps)
    context = multiprocessing.get_context("spawn")
    rows = []
    for name in configs:
        queue = context.Queue()
        process = context.Process(target=run_stage, args=(recipe_file, run, name, keys, args.device, args.threads,
                                                          queue))
        process.start()
        result = queue.get()
        process.join()
        if process.exitcode:
            raise SystemExit(f"stage {name} failed (exit code {process.exitcode})")
        record = json.loads((run / PIPELINE_FILE).read_text())["stages"][name]
        manifest = json.loads((run / record["output"] / "manifest.json").read_text())
        row = {"stage": name, **result}
        if name in TRAINING:
            history = manifest["history"]
            per_step = sum(h["seconds"] for h in history) / sum(h["steps"] for h in history)
            batch = configs[name].batch_size
            row.update(kind="training", seconds_per_step=round(per_step, 3), batch_size=batch,
                       images_per_second=round(batch / per_step, 2),
                       projected_hours={d: round(per_step * training_steps(
                           train, batch, full[name].epochs, full[name].steps, full[name].min_steps) / 3600, 2)
                           for d, (train, _) in DATASETS.items()})
        else:
            split = "val" if name == "segment" else "train"
            per_image = result["wall_seconds"] / counts[split]
            row.update(kind="per-image", split=split, images=counts[split], seconds_per_image=round(per_image, 3),
                       images_per_second=round(1 / per_image, 2),
                       projected_hours={d: round(per_image * (val if split == "val" else train) / 3600, 2)
                                        for d, (train, val) in DATASETS.items()})
        rows.append(row)
        print(f"{name}: {row['images_per_second']} images/s, {row['projected_hours']} h projected", flush=True)
    return rows


def table(result: dict) -> str:
    names = list(DATASETS)
    lines = [f"{result['recipe']} on {result['data']} ({result['device']}), one process", "",
             "| stage | kind | images / s | s / image or step | peak RSS MiB | peak GPU MiB | "
             + " | ".join(f"projected h, {n}" for n in names) + " |", "|---" * (6 + len(names)) + "|"]
    for r in result["rows"]:
        pace = r.get("seconds_per_image", r.get("seconds_per_step"))
        lines.append(f"| {r['stage']} | {r['kind']} | {r['images_per_second']} | {pace} | {r['peak_rss_mib']} | "
                     f"{r['peak_gpu_mib'] if r['peak_gpu_mib'] is not None else '-'} | "
                     + " | ".join(str(r["projected_hours"][n]) for n in names) + " |")
    totals = {n: round(sum(r["projected_hours"][n] for r in result["rows"]), 1) for n in names}
    lines.append("| all | | | | | | " + " | ".join(str(totals[n]) for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "silop.yaml")
    parser.add_argument("--data", type=Path, help="a dataset (default: synthetic images at 500 x 375 px)")
    parser.add_argument("--images", type=int, default=24, help="synthetic training images")
    parser.add_argument("--train-steps", type=int, default=4, help="steps each training stage is timed over")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch/OpenCV threads (default: every core)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_stage_throughput")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/stage_throughput_<device>.json")
    args = parser.parse_args()
    kind = "gpu" if args.device.startswith("cuda") else "cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"stage_throughput_{kind}.json"
    data = args.data or synthetic(args.images, args.runs / "data")
    started = time.time()
    rows = measure(args.recipe, data, args.runs / f"run_{kind}", args)
    result = {"benchmark": "stage_throughput", "recipe": args.recipe.name,
              "data": str(args.data or f"synthetic 500x375, {args.images} train images"), "device": args.device,
              "train_steps": args.train_steps, "datasets": DATASETS, "machine": machine(),
              "command": " ".join(["python", "benchmarks/stage_throughput.py", *sys.argv[1:]]),
              "wall_seconds": round(time.time() - started, 1), "rows": rows}
    write_result(out, result, table(result))
    print(table(result))


if __name__ == "__main__":
    main()
