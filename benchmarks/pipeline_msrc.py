"""Recipes end to end on msrc-voc (CPU): pseudo-label mIoU on train, DeepLab mIoU on val, fully supervised ratio.

    .venv/bin/python benchmarks/pipeline_msrc.py                      # silop, puzzle_affinitynet, fully_supervised
    .venv/bin/python benchmarks/pipeline_msrc.py --recipes silop --set stages.train_cam.head=cam
    .venv/bin/python benchmarks/pipeline_msrc.py --recipes silop --seed 1 --out benchmarks/results/x.json
    .venv/bin/python benchmarks/pipeline_msrc.py --recipes cam_rw --until pseudo_labels   # no DeepLab
    .venv/bin/python benchmarks/pipeline_msrc.py --recipes silop --long-side 640 --until pseudo_labels
    .venv/bin/python benchmarks/pipeline_msrc.py --dataset runs/synth --runs runs/bench_pipeline_synth \
        --out benchmarks/results/pipeline_synth.json             # another dataset (here `tagseg data synth`)

Each recipe runs with `tagseg run` semantics (resumable, into the recipe's run directory,
which --runs can move). --long-side N runs on msrc-voc rescaled to that long side (built under
--runs by benchmarks/size_invariance_msrc.py's rule; the run is named ``<recipe>_<N>px``). --dataset runs
every recipe on another dataset in VOC layout instead (its rows name it); give it its own --runs and --out.
--seed N sets the seed of every stage of the recipe that has one and names the run
``<recipe>_seed<N>``. puzzle_smoothing and seam_smoothing start from the classifier and pseudo-labels
of the run of the recipe they follow (``FOLLOWS``) under the same --runs, which must have run first.
--until STAGE stops after that stage. --force recomputes the stages whose settings or inputs changed (a
--set that differs from the run's, a new default), where a plain rerun refuses them. --table-only
rewrites the tables from --out (a resumed run would record its finished stages' seconds as about 0).
A row is named by its recipe, dataset, long side, seed and --set overrides; running a named row again
replaces it in --out. Writes benchmarks/results/pipeline_msrc.json and two Markdown tables: the
end-to-end figures, and per score stage (CAM, PerimeterFit, walk) the mIoU at the oracle threshold
beside the label-free threshold the recipe uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import MSRC, ROOT, class_iou, mean_std, pct, write_result
from size_invariance_msrc import rescaled_copy
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging


SCORE_STAGES = ("make_cam", "perimeterfit", "random_walk")
# recipes that start from another recipe's run (its classifier and pseudo-labels): run that one first
FOLLOWS = {"puzzle_smoothing": "puzzle_affinitynet", "seam_smoothing": "seam"}
SEEDS = {"train_cam": "seed", "perimeterfit": "perimeter.seed", "train_affinity": "seed", "train_seg": "seed"}


def seed_overrides(recipe_file: Path, seed: int) -> list[str]:
    """``stages.<stage>.<key>=<seed>`` for each stage of the recipe that draws random numbers."""
    stages = load_recipe(recipe_file)[0].stages
    return [f"stages.{stage}.{key}={seed}" for stage, key in SEEDS.items() if stage in stages]


def score_stage_row(manifest: dict) -> dict:
    """Oracle and label-free threshold and mIoU of a scored score stage."""
    free = manifest.get("label_free") or {}
    return {"oracle_threshold": manifest.get("threshold"),
            "oracle_miou": pct((manifest.get("metrics") or {}).get("miou")),
            "label_free_method": free.get("method"), "label_free_threshold": free.get("threshold"),
            "label_free_miou": pct((free.get("metrics") or {}).get("miou"))}


def run_one(name: str, runs: Path, extra: list[str], seed: int | None = None, until: str | None = None,
            long_side: int | None = None, dataset: Path = MSRC, force: bool = False) -> dict:
    recipe_file = ROOT / "recipes" / f"{name}.yaml"
    given = list(extra)
    if seed is not None:
        extra = [*seed_overrides(recipe_file, seed), *extra]
    data = dataset if long_side is None else rescaled_copy(
        dataset, runs / f"{'msrc' if dataset == MSRC else dataset.name}_{long_side}", long_side)
    suffix = ("" if long_side is None else f"_{long_side}px") + ("" if seed is None else f"_seed{seed}")
    run = runs / (name + suffix)
    if name in FOLLOWS:
        first = runs / (FOLLOWS[name] + suffix)
        extra = [f"stages.train_cam.init={first / 'train_cam' / 'model.pt'}",
                 f"stages.train_cam.smoothing.boundaries={first / 'pseudo_labels'}", *extra]
    recipe, configs = load_recipe(recipe_file,
                                  [f"run={run}", f"upper_bound_run={runs / 'fully_supervised'}",
                                   f"dataset={data}", *extra])
    if until in configs:
        names = list(configs)
        configs = {k: configs[k] for k in names[:names.index(until) + 1]}
    record = run_recipe(recipe, configs, force)
    stages = {k: v.get("seconds") for k, v in record["stages"].items()}
    pseudo = read_manifest(run / "pseudo_labels") or {}
    final = read_manifest(run / f"segment_{recipe.eval_split}") or {}
    scores = {stage: score_stage_row(read_manifest(run / stage) or {}) for stage in SCORE_STAGES
              if stage in recipe.stages}
    return {"recipe": name, "dataset": None if dataset == MSRC else dataset.name, "seed": seed,
            "long_side": long_side, "run": str(run), "set": given, "overrides": extra,
            "score_stages": scores,
            "pseudo_label_threshold": pseudo.get("threshold"),
            "pseudo_label_train_miou": pct((pseudo.get("metrics") or {}).get("miou")),
            "final_val_miou": pct((final.get("metrics") or {}).get("miou")),
            "pseudo_label_train_class_iou": class_iou(pseudo), "final_val_class_iou": class_iou(final),
            "stage_seconds": stages, "stage_configs": {k: v["config"] for k, v in record["stages"].items()}}


def label(row: dict) -> str:
    notes = [row["dataset"]] if row.get("dataset") else []
    notes += [f"{row['long_side']} px"] if row.get("long_side") else []
    notes += [] if row.get("seed") is None else [f"seed {row['seed']}"]
    notes += row.get("set") or []  # rows of other settings are other rows
    return row["recipe"] + (f" ({', '.join(notes)})" if notes else "")


def upper_bound(rows: list[dict]) -> float | None:
    """DeepLab val mIoU of the fully supervised row, if one ran."""
    return next((r["final_val_miou"] for r in rows if r["recipe"] == "fully_supervised"), None)


def seed_summary(rows: list[dict]) -> list[str]:
    """Rows that differ only in their seed, when there are at least two: pseudo-label and DeepLab mIoU,
    mean ± sample std, then the per-class IoU means."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("seed") is not None:
            groups.setdefault(label({**r, "seed": None}), []).append(r)
    groups = {name: group for name, group in groups.items() if len(group) > 1}
    if not groups:
        return []
    lines = ["", "| recipe | seeds | pseudo-labels mIoU (train), mean ± std | DeepLab mIoU (val), mean ± std |",
             "|---|---|---|---|"]
    for name, group in groups.items():
        cells = [mean_std(values) if None not in values else "-" for values in
                 ([r["pseudo_label_train_miou"] for r in group], [r["final_val_miou"] for r in group])]
        lines.append(f"| {name} | {', '.join(str(r['seed']) for r in group)} | {' | '.join(cells)} |")
    for name, group in groups.items():
        for key, what in (("pseudo_label_train_class_iou", "pseudo-labels (train)"),
                          ("final_val_class_iou", "DeepLab (val)")):
            if not all(r.get(key) for r in group):
                continue
            classes = list(group[0][key])
            lines += ["", f"{name}, per class, {what}: IoU mean ± std over seeds "
                          f"{', '.join(str(r['seed']) for r in group)}", "",
                      "| " + " | ".join(classes) + " |", "|" + "---|" * len(classes),
                      "| " + " | ".join(mean_std([100 * r[key][c] for r in group]) for c in classes) + " |"]
    return lines


def table(rows: list[dict], upper: float | None) -> str:
    lines = ["| recipe | pseudo-labels mIoU (train) | DeepLab mIoU (val) | ratio to fully supervised | wall time |",
             "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['final_val_miou'] / upper:.1%}" if upper and r["final_val_miou"] is not None else "-"
        total = sum(v or 0 for v in r["stage_seconds"].values())
        pseudo = "-" if r["pseudo_label_train_miou"] is None else f"{r['pseudo_label_train_miou']:.1f}"
        final = "-" if r["final_val_miou"] is None else f"{r['final_val_miou']:.1f}"
        lines.append(f"| {label(r)} | {pseudo} | {final} | {ratio} | {total / 60:.1f} min |")
    lines += seed_summary(rows)
    lines += ["", "| recipe | score stage | oracle t | oracle mIoU | label-free rule | label-free t | "
                  "label-free mIoU | gap |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for stage, s in (r.get("score_stages") or {}).items():
            gap = ("-" if s["oracle_miou"] is None or s["label_free_miou"] is None
                   else f"{s['label_free_miou'] - s['oracle_miou']:+.1f}")
            lines.append(f"| {label(r)} | {stage} | {s['oracle_threshold']} | {s['oracle_miou']} | "
                         f"{s['label_free_method']} | {s['label_free_threshold']} | {s['label_free_miou']} | {gap} |")
    lines += ["", "| recipe | stage | seconds |", "|---|---|---|"]
    for r in rows:
        for stage, seconds in r["stage_seconds"].items():
            lines.append(f"| {label(r)} | {stage} | {seconds} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["fully_supervised", "silop", "puzzle_affinitynet"])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_pipeline")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="recipe overrides KEY=VALUE applied to every recipe but fully_supervised")
    parser.add_argument("--until", help="last stage to run (e.g. pseudo_labels: no DeepLab); recipes without it "
                                        "run whole")
    parser.add_argument("--long-side", type=int, help="run on the dataset rescaled to this long side")
    parser.add_argument("--dataset", type=Path, default=MSRC, help="a dataset in VOC layout (default msrc-voc)")
    parser.add_argument("--seed", type=int, help="seed of every seeded stage; the run is <recipe>_seed<N>")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_msrc.json")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the Markdown tables from --out's rows and run nothing")
    parser.add_argument("--force", action="store_true",
                        help="recompute the stages whose settings or inputs changed (tagseg run --force)")
    args = parser.parse_args()
    setup_logging()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
    rows = {label(r): r for r in previous["rows"]}
    if args.table_only:
        ordered = list(rows.values())
        write_result(args.out, previous, table(ordered, upper_bound(ordered)))
        return
    for name in args.recipes:
        row = run_one(name, args.runs, [] if name == "fully_supervised" else args.overrides, args.seed, args.until,
                      args.long_side, args.dataset.resolve(), args.force)
        rows[label(row)] = row
        print(f"{label(row)}: {row['final_val_miou']}", file=sys.stderr)
        ordered = list(rows.values())
        upper = upper_bound(ordered)
        write_result(args.out, {"benchmark": "pipeline_msrc", "dataset": str(args.dataset),
                                "upper_bound_val_miou": upper, "rows": ordered},
                     table(ordered, upper))
    print(table(list(rows.values()), upper_bound(list(rows.values()))))


if __name__ == "__main__":
    main()
