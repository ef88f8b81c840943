"""The weak-classifier alarm on real photos (CPU): msrc-voc as it is, and with its tags shuffled.

    .venv/bin/python benchmarks/alarm_msrc.py                 # the SILOP recipe's classifier
    .venv/bin/python benchmarks/alarm_msrc.py --set stages.train_cam.head=puzzle

Builds, under --runs, a copy of msrc-voc whose tags are permuted across images (photos, masks and
splits are symlinks to the originals; labels.csv is rewritten; never committed), trains the
recipe's classifier on the train split of each and measures it on the val split's tags, where the
alarm reads it. A working alarm stays quiet on the real tags and fires, naming classes, on the
shuffled ones. Result: benchmarks/results/alarm_msrc.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from common import MSRC, ROOT, pct, write_result
from tagseg.classifier_check import finding_lines
from tagseg.data.dataset import open_dataset
from tagseg.pipeline import load_recipe
from tagseg.runtime import setup_logging
from tagseg.stages.train_cam import train_cam


def shuffled_copy(source: Path, target: Path, seed: int) -> Path:
    """``source`` with its tag lists permuted across images (seeded); everything else linked."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name != "labels.csv" and not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry.resolve())
    with open(source / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    order = np.random.default_rng(seed).permutation(len(body))
    with open(target / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([row[0], *body[k][1:]] for row, k in zip(body, order))
    return target


def run_one(name: str, data: Path, run: Path, config) -> dict:
    manifest = train_cam(open_dataset(data, "train"), run, config, eval_dataset=open_dataset(data, "val"))
    classification, alarm = manifest["classification"], manifest["alarm"]
    return {"dataset": name, "val_map": pct(classification["map"]), "fired": alarm["fired"],
            "classes_named": alarm["classes"], "findings": finding_lines(alarm, classification.get("split")),
            "class_ap": {k: pct(v) for k, v in classification["per_class"].items()},
            "train_seconds": manifest["timings"]["seconds"]}


def table(rows: list[dict]) -> str:
    lines = ["| dataset | val mAP | alarm | classes named |", "|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['val_map']} | {'fired' if r['fired'] else 'quiet'} | "
              f"{len(r['classes_named'])}: {', '.join(r['classes_named']) or '-'} |" for r in rows]
    lines += ["", "Findings:"]
    lines += [f"- {r['dataset']}: {line}" for r in rows for line in r["findings"] or ["none"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "silop.yaml")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="recipe overrides KEY=VALUE")
    parser.add_argument("--shuffle-seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_alarm")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "alarm_msrc.json")
    args = parser.parse_args()
    setup_logging("INFO")
    _, configs = load_recipe(args.recipe, args.overrides)
    shuffled = shuffled_copy(MSRC, args.runs / "msrc_shuffled", args.shuffle_seed)
    rows = [run_one("msrc-voc", MSRC, args.runs / "run_real", configs["train_cam"]),
            run_one("msrc-voc, tags shuffled", shuffled, args.runs / "run_shuffled", configs["train_cam"])]
    write_result(args.out, {"command": " ".join(sys.argv), "recipe": str(args.recipe.relative_to(ROOT)),
                            "overrides": args.overrides, "shuffle_seed": args.shuffle_seed, "rows": rows}, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
