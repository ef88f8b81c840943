"""Recipes end to end on msrc-voc (CPU): pseudo-label mIoU on train, DeepLab mIoU on val, fully supervised ratio.

    .venv/bin/python benchmarks/pipeline_msrc.py                      # silop, puzzle_affinitynet, fully_supervised
    .venv/bin/python benchmarks/pipeline_msrc.py --recipes silop --set stages.train_cam.head=cam

Each recipe runs with `tagseg run` semantics (resumable, into the recipe's run directory,
which --runs can move). Writes benchmarks/results/pipeline_msrc.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import MSRC, ROOT, class_iou, pct, write_result
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging


def run_one(name: str, runs: Path, extra: list[str]) -> dict:
    run = runs / name
    recipe, configs = load_recipe(ROOT / "recipes" / f"{name}.yaml",
                                  [f"run={run}", f"upper_bound_run={runs / 'fully_supervised'}",
                                   f"dataset={MSRC}", *extra])
    record = run_recipe(recipe, configs)
    stages = {k: v.get("seconds") for k, v in record["stages"].items()}
    pseudo = read_manifest(run / "pseudo_labels") or {}
    final = read_manifest(run / f"segment_{recipe.eval_split}") or {}
    return {"recipe": name, "run": str(run), "overrides": extra,
            "pseudo_label_train_miou": pct((pseudo.get("metrics") or {}).get("miou")),
            "final_val_miou": pct((final.get("metrics") or {}).get("miou")),
            "pseudo_label_train_class_iou": class_iou(pseudo), "final_val_class_iou": class_iou(final),
            "stage_seconds": stages, "stage_configs": {k: v["config"] for k, v in record["stages"].items()}}


def table(rows: list[dict], upper: float | None) -> str:
    lines = ["| recipe | pseudo-labels mIoU (train) | DeepLab mIoU (val) | ratio to fully supervised | wall time |",
             "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['final_val_miou'] / upper:.1%}" if upper and r["final_val_miou"] is not None else "-"
        total = sum(v or 0 for v in r["stage_seconds"].values())
        pseudo = "-" if r["pseudo_label_train_miou"] is None else f"{r['pseudo_label_train_miou']:.1f}"
        lines.append(f"| {r['recipe']} | {pseudo} | {r['final_val_miou']:.1f} | {ratio} | {total / 60:.1f} min |")
    lines += ["", "| recipe | stage | seconds |", "|---|---|---|"]
    for r in rows:
        for stage, seconds in r["stage_seconds"].items():
            lines.append(f"| {r['recipe']} | {stage} | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["fully_supervised", "silop", "puzzle_affinitynet"])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_pipeline")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="recipe overrides KEY=VALUE applied to every recipe but fully_supervised")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_msrc.json")
    args = parser.parse_args()
    setup_logging()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    rows = {r["recipe"]: r for r in previous["rows"]}
    for name in args.recipes:
        rows[name] = run_one(name, args.runs, [] if name == "fully_supervised" else args.overrides)
        print(f"{name}: {rows[name]['final_val_miou']}", file=sys.stderr)
        upper = rows.get("fully_supervised", {}).get("final_val_miou")
        ordered = list(rows.values())
        write_result(args.out, {"benchmark": "pipeline_msrc", "upper_bound_val_miou": upper, "rows": ordered},
                     table(ordered, upper))
    print(table(list(rows.values()), rows.get("fully_supervised", {}).get("final_val_miou")))


if __name__ == "__main__":
    main()
