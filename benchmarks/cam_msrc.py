"""CAM variants on msrc-voc (CPU): classifier mAP, CAM mIoU at oracle / label-free thresholds, speed.

    .venv/bin/python benchmarks/cam_msrc.py                       # all four heads, default recipe
    .venv/bin/python benchmarks/cam_msrc.py --heads cam puzzle --set epochs=4
    .venv/bin/python benchmarks/cam_msrc.py --heads cam puzzle --seeds 0 1 2   # mean and spread over seeds

Runs are resumable (they live in --runs, one run directory per head, ``<head>_seed<N>`` for
seeds other than 0); the result goes to benchmarks/results/cam_msrc.json and a Markdown table
beside it. With several seeds the table adds each head's mean and standard deviation, because
one run's mIoU moves by about 2 points with the seed alone.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

from common import MSRC, ROOT, class_iou, machine, pct, write_result
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.runtime import setup_logging
from tagseg.stages.make_cam import MakeCamConfig, make_cams
from tagseg.stages.train_cam import CamTrainConfig, train_cam


def run_head(head: str, seed: int, data: Path, runs: Path, overrides: list[str], cam_overrides: list[str]) -> dict:
    train, val = open_dataset(data, "train"), open_dataset(data, "val")
    config = load_config(CamTrainConfig, None, [f"head={head}", *overrides, f"seed={seed}"])
    run = runs / (head if seed == 0 else f"{head}_seed{seed}")
    trained = train_cam(train, run, config, eval_dataset=val)
    cams = make_cams(train, run, load_config(MakeCamConfig, None, cam_overrides))
    free = cams["label_free"]
    return {
        "head": head, "seed": seed, "config": config.model_dump(), "cam_config": cams["config"],
        "val_map": pct(trained["classification"]["map"]),
        "oracle": {"threshold": cams["threshold"], "miou": pct(cams["metrics"]["miou"]),
                   "mfp": cams["metrics"]["mfp"], "mfn": cams["metrics"]["mfn"],
                   "class_iou": class_iou(cams)},
        "label_free": {"threshold": free["threshold"], "miou": pct(free["metrics"]["miou"]),
                       "mfp": free["metrics"]["mfp"], "mfn": free["metrics"]["mfn"]},
        "seconds_per_epoch": trained["seconds_per_epoch"],
        "cam_images_per_second": cams.get("images_per_second"),
    }


def seed_summary(rows: list[dict]) -> list[dict]:
    """Per head: the seeds run and the mean / sample standard deviation of both CAM mIoUs."""
    summary = []
    for head in dict.fromkeys(r["head"] for r in rows):
        runs = [r for r in rows if r["head"] == head]
        oracle, free = [r["oracle"]["miou"] for r in runs], [r["label_free"]["miou"] for r in runs]
        spread = statistics.stdev if len(runs) > 1 else (lambda values: 0.0)
        summary.append({"head": head, "seeds": [r["seed"] for r in runs],
                        "oracle_mean": round(statistics.mean(oracle), 2), "oracle_std": round(spread(oracle), 2),
                        "label_free_mean": round(statistics.mean(free), 2), "label_free_std": round(spread(free), 2)})
    return summary


def table(rows: list[dict]) -> str:
    several = len({r["seed"] for r in rows}) > 1
    lines = ["| head | val mAP | CAM mIoU (oracle t) | mFP / mFN | CAM mIoU (label-free t) | s / epoch | CAM img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        o, f = r["oracle"], r["label_free"]
        name = f"{r['head']} (seed {r['seed']})" if several else r["head"]
        lines.append(f"| {name} | {r['val_map']:.1f} | {o['miou']:.1f} ({o['threshold']:.2f}) | "
                     f"{o['mfp']:.2f} / {o['mfn']:.2f} | {f['miou']:.1f} ({f['threshold']:.2f}) | "
                     f"{r['seconds_per_epoch']:.0f} | {r['cam_images_per_second'] or float('nan'):.2f} |")
    if several:
        lines += ["", "| head | seeds | CAM mIoU (oracle t), mean ± std | CAM mIoU (label-free t), mean ± std |",
                  "|---|---|---|---|"]
        lines += [f"| {s['head']} | {', '.join(map(str, s['seeds']))} | {s['oracle_mean']:.1f} ± {s['oracle_std']:.1f} | "
                  f"{s['label_free_mean']:.1f} ± {s['label_free_std']:.1f} |" for s in seed_summary(rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_cam_msrc")
    parser.add_argument("--heads", nargs="+", default=["cam", "puzzle", "attention", "dilated"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train each head once per seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train_cam KEY=VALUE")
    parser.add_argument("--cam-set", dest="cam_overrides", action="append", default=[], help="make_cam KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cam_msrc.json")
    args = parser.parse_args()
    setup_logging("INFO")
    started = time.time()
    rows = []
    # Seeds outermost, so a cut-short run has compared every head on the same seeds; the result is
    # rewritten after every run, so it still reports.
    for seed, head in itertools.product(args.seeds, args.heads):
        rows.append(run_head(head, seed, args.data, args.runs, args.overrides, args.cam_overrides))
        result = {"benchmark": "cam_msrc", "dataset": str(args.data), "split": "train (CAMs), val (mAP)",
                  "command": " ".join(["python", *sys.argv]), "machine": machine(),
                  "wall_seconds": round(time.time() - started, 1), "rows": rows, "seed_summary": seed_summary(rows)}
        write_result(args.out, result, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
