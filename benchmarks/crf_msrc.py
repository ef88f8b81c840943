"""Dense-CRF settings for pseudo-labels on msrc-voc (CPU): does the CRF after the walk help, and with what kernels?

    .venv/bin/python benchmarks/crf_msrc.py    # needs benchmarks/pipeline_msrc.py's SILOP run (its random walk)

Each variant runs the real `pseudo_labels` stage on the same walk scores and threshold (one
scratch run per variant under --runs, resumable) and is scored on the train masks. Writes
benchmarks/results/crf_msrc.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import MSRC, ROOT, link, pct, write_result
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.runtime import setup_logging
from tagseg.stages.pseudo_labels import PseudoLabelConfig, make_pseudo_labels

PSA_WIDTH = "crf_settings.bilateral_sxy=50"  # PSA's kernel, pinned: TagSeg's default is now 32 at 320 px
VARIANTS = {  # name -> pseudo_labels overrides; PSA / IRN kernels unless named
    "no CRF": ["crf=false"],
    "PSA defaults (gt_prob 0.7, bilateral sxy 50, srgb 5)": [PSA_WIDTH],
    "gt_prob 0.9": ["crf_gt_prob=0.9", PSA_WIDTH],
    "bilateral srgb 10": ["crf_settings.bilateral_srgb=10", PSA_WIDTH],
    "bilateral sxy 32 (50 x 320 / 500 px)": ["crf_settings.bilateral_sxy=32"],
    "bilateral sxy 20": ["crf_settings.bilateral_sxy=20"],
}
CLASSES_SHOWN = ("aeroplane", "bird", "boat", "cat")


def table(rows: list[dict]) -> str:
    lines = ["| CRF | pseudo-label mIoU | mFP / mFN | " + " | ".join(CLASSES_SHOWN) + " | s |",
             "|---|---|---|" + "---|" * len(CLASSES_SHOWN) + "---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['miou']:.1f} | {r['mfp']:.2f} / {r['mfn']:.2f} | "
                     + " | ".join(f"{r['iou'][c]:.2f}" for c in CLASSES_SHOWN) + f" | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--scores", type=Path, default=ROOT / "runs" / "bench_pipeline" / "silop" / "random_walk",
                        help="a finished score stage (default: the SILOP pipeline run's random walk)")
    parser.add_argument("--threshold", default="oracle", help="pseudo_labels threshold (the recipes use oracle)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_crf")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crf_msrc.json")
    args = parser.parse_args()
    setup_logging("INFO")
    train = open_dataset(args.data, "train")
    rows = []
    for number, (name, overrides) in enumerate(VARIANTS.items()):
        run = args.runs / f"variant{number}"
        link(args.scores, run / args.scores.name)
        config = load_config(PseudoLabelConfig, None, [f"scores={args.scores.name}", f"threshold={args.threshold}",
                                                       *overrides])
        started = time.time()
        manifest = make_pseudo_labels(train, run, config, workers=args.workers)
        metrics = manifest["metrics"]
        rows.append({"variant": name, "overrides": overrides, "threshold": manifest["threshold"],
                     "miou": pct(metrics["miou"]), "mfp": metrics["mfp"], "mfn": metrics["mfn"],
                     "iou": {c: v["iou"] for c, v in metrics["per_class"].items()},
                     "seconds": round(time.time() - started, 1)})
    result = {"benchmark": "crf_msrc", "dataset": str(args.data), "split": "train", "scores": str(args.scores),
              "command": " ".join(["python", *sys.argv]), "rows": rows}
    write_result(args.out, result, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
