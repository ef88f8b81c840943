"""The demo's spread over training seeds: `make demo`'s recipes with every training stage seeded N.

    .venv/bin/python benchmarks/demo_seeds.py --seeds 0 1 2

Same data as `make demo` (demo/data, made as the Makefile makes it when missing). Seed 0 is
`make demo` itself (runs demo/run and demo/run_fully_supervised, reused when they are there);
seed N runs into demo/seedN and demo/fs_seedN. Per seed: the classifier's val mAP, each stage's
mIoU at its label-free and oracle thresholds, the network and its fully supervised bound (val);
then mean +- std over the seeds. JSON and table: benchmarks/results/demo_seeds.*
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import ROOT, pct, write_result
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging

STAGES = ("make_cam", "perimeterfit", "random_walk", "pseudo_labels")
SEEDED = ("train_cam", "train_affinity", "train_seg")


def run_seed(seed: int, demo: Path) -> dict:
    run = demo / ("run" if seed == 0 else f"seed{seed}")
    bound = demo / ("run_fully_supervised" if seed == 0 else f"fs_seed{seed}")
    common = [f"dataset={demo / 'data'}"]
    recipe, configs = load_recipe(ROOT / "recipes" / "demo_silop.yaml", [
        *common, f"run={run}", f"upper_bound_run={bound}", *[f"stages.{s}.seed={seed}" for s in SEEDED]])
    run_recipe(recipe, configs)
    recipe, configs = load_recipe(ROOT / "recipes" / "demo_fully_supervised.yaml",
                                  [*common, f"run={bound}", f"stages.train_seg.seed={seed}"])
    run_recipe(recipe, configs)
    row = {"seed": seed, "run": str(run),
           "val_map": pct(read_manifest(run / "train_cam")["classification"]["map"])}
    for stage in STAGES:
        manifest = read_manifest(run / stage)
        free = (manifest.get("label_free") or {}).get("metrics")
        row[stage] = {"label_free": pct(free["miou"]) if free else None, "oracle": pct(manifest["metrics"]["miou"])}
    row["network"] = pct(read_manifest(run / "segment_val")["metrics"]["miou"])
    row["bound"] = pct(read_manifest(bound / "segment_val")["metrics"]["miou"])
    row["ratio"] = round(100 * row["network"] / row["bound"], 1)
    # the pseudo-labels have one threshold (label-free): their score is compared with the walk's label-free one
    chain = [row["make_cam"]["label_free"], row["perimeterfit"]["label_free"], row["random_walk"]["label_free"],
             row["pseudo_labels"]["oracle"]]
    row["each_stage_above_the_last"] = all(b > a for a, b in zip(chain, chain[1:]))
    return row


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| seed | val mAP | CAM | PerimeterFit | walk | pseudo-labels | network (val) | bound (val) | "
             "network / bound | each stage above the last (label-free) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        stages = [f"{r[s]['label_free']} ({r[s]['oracle']})" for s in STAGES[:3]]
        lines.append(f"| {r['seed']} | {r['val_map']} | {' | '.join(stages)} | {r['pseudo_labels']['oracle']} | "
                     f"{r['network']} | {r['bound']} | {r['ratio']}% | {'yes' if r['each_stage_above_the_last'] else 'no'} |")
    if len(rows) > 1:
        stages = [f"{mean_std([r[s]['label_free'] for r in rows])} ({mean_std([r[s]['oracle'] for r in rows])})"
                  for s in STAGES[:3]]
        lines.append(f"| mean ± std | {mean_std([r['val_map'] for r in rows])} | {' | '.join(stages)} | "
                     f"{mean_std([r['pseudo_labels']['oracle'] for r in rows])} | {mean_std([r['network'] for r in rows])} | "
                     f"{mean_std([r['bound'] for r in rows])} | {mean_std([r['ratio'] for r in rows])}% | "
                     f"{sum(r['each_stage_above_the_last'] for r in rows)} of {len(rows)} |")
    return "\n".join(["mIoU (%) at the label-free threshold (oracle in brackets); stages on the 150 training "
                      "images, networks on the 50 val images.", "", *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demo", type=Path, default=ROOT / "demo")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_seeds.json")
    args = parser.parse_args()
    setup_logging("INFO")
    if not (args.demo / "data" / "synthetic.json").exists():  # as the Makefile's demo target makes it
        write_synthetic_dataset(args.demo / "data", 200, max_objects=2, object_size=(0.3, 0.6))
    rows = [run_seed(seed, args.demo) for seed in args.seeds]
    write_result(args.out, {"benchmark": "demo_seeds", "command": " ".join(["python", *sys.argv]), "rows": rows},
                 table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
