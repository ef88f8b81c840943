"""CAM variants on msrc-voc (CPU): classifier mAP, CAM mIoU at oracle / label-free thresholds, speed.

    .venv/bin/python benchmarks/cam_msrc.py                       # all four heads, default recipe
    .venv/bin/python benchmarks/cam_msrc.py --heads cam puzzle --set epochs=4

Runs are resumable (they live in --runs, one run directory per head); the result goes to
benchmarks/results/cam_msrc.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from common import MSRC, ROOT, class_iou, pct, write_result
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.runtime import setup_logging
from tagseg.stages.make_cam import MakeCamConfig, make_cams
from tagseg.stages.train_cam import CamTrainConfig, train_cam


def run_head(head: str, data: Path, runs: Path, overrides: list[str], cam_overrides: list[str]) -> dict:
    train, val = open_dataset(data, "train"), open_dataset(data, "val")
    config = load_config(CamTrainConfig, None, [f"head={head}", *overrides])
    run = runs / head
    trained = train_cam(train, run, config, eval_dataset=val)
    cams = make_cams(train, run, load_config(MakeCamConfig, None, cam_overrides))
    free = cams["label_free"]
    return {
        "head": head, "config": config.model_dump(), "cam_config": cams["config"],
        "val_map": pct(trained["classification"]["map"]),
        "oracle": {"threshold": cams["threshold"], "miou": pct(cams["metrics"]["miou"]),
                   "mfp": cams["metrics"]["mfp"], "mfn": cams["metrics"]["mfn"],
                   "class_iou": class_iou(cams)},
        "label_free": {"threshold": free["threshold"], "miou": pct(free["metrics"]["miou"]),
                       "mfp": free["metrics"]["mfp"], "mfn": free["metrics"]["mfn"]},
        "seconds_per_epoch": trained["seconds_per_epoch"],
        "cam_images_per_second": cams.get("images_per_second"),
    }


def table(rows: list[dict]) -> str:
    lines = ["| head | val mAP | CAM mIoU (oracle t) | mFP / mFN | CAM mIoU (label-free t) | s / epoch | CAM img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        o, f = r["oracle"], r["label_free"]
        lines.append(f"| {r['head']} | {r['val_map']:.1f} | {o['miou']:.1f} ({o['threshold']:.2f}) | "
                     f"{o['mfp']:.2f} / {o['mfn']:.2f} | {f['miou']:.1f} ({f['threshold']:.2f}) | "
                     f"{r['seconds_per_epoch']:.0f} | {r['cam_images_per_second'] or float('nan'):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_cam_msrc")
    parser.add_argument("--heads", nargs="+", default=["cam", "puzzle", "attention", "dilated"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="train_cam KEY=VALUE")
    parser.add_argument("--cam-set", dest="cam_overrides", action="append", default=[], help="make_cam KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cam_msrc.json")
    args = parser.parse_args()
    setup_logging("INFO")
    started = time.time()
    rows = []
    for head in args.heads:  # the result is rewritten after every head, so a cut-short run still reports
        rows.append(run_head(head, args.data, args.runs, args.overrides, args.cam_overrides))
        result = {"benchmark": "cam_msrc", "dataset": str(args.data), "split": "train (CAMs), val (mAP)",
                  "command": " ".join(["python", *sys.argv]), "machine": {
                      "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                      "torch": torch.__version__},
                  "wall_seconds": round(time.time() - started, 1), "rows": rows}
        write_result(args.out, result, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
