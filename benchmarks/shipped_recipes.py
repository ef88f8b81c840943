"""Every recipe as shipped today: the label-free gap to the oracle per score stage, pseudo-labels and DeepLab.

    .venv/bin/python benchmarks/shipped_recipes.py        # reads benchmarks/results/pipeline_*.json; runs nothing

The end-to-end rows live in many result files (one per study, written by pipeline_msrc.py), and many of
them ran with settings a recipe no longer ships. A row counts as "as shipped" when every stage it ran
was configured exactly as ``recipes/<recipe>.yaml`` configures it now, seeds and the resolved image size
aside (a key the row's run did not record yet, because it was added later, is taken as its default), and
it ran no ``--set``. Such rows are grouped by recipe and dataset (msrc-voc, msrc-voc at another long
side, synthetic data), one row per run. Per group: per score stage (CAM, PerimeterFit, walk) the
label-free and oracle mIoU and their gap, the pseudo-labels' train mIoU and DeepLab's val mIoU (mean
+- sample std over seeds, or the one value), beside the recipes before label-free thresholds
(``pipeline_msrc.json``: every threshold read from the masks). The recipes with no row as shipped are
listed with the settings in which one of their rows differs, so a stale result is visible rather
than counted. Writes benchmarks/results/shipped_recipes.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import ROOT, write_result
from pipeline_msrc import SCORE_STAGES, label
from tagseg.pipeline import load_recipe

RESULTS = ROOT / "benchmarks" / "results"
BEFORE = RESULTS / "pipeline_msrc.json"  # the recipes before label-free thresholds
IGNORED = ("seed", "image_size")  # per run, not per recipe: seeds vary by design, image_size: auto resolves
ORACLE_TWIN = "stages.pseudo_labels.threshold=oracle"  # a shipped run's pseudo-labels cut at the walk's oracle


def differences(now, then, path: str = "") -> list[str]:
    """Dotted keys where a row's recorded config ``then`` differs from today's ``now`` (keys ``then``
    lacks are skipped: they were added later, with the behaviour of the time as default)."""
    if isinstance(now, dict) and isinstance(then, dict):
        return [d for key in now if key in then and key not in IGNORED
                for d in differences(now[key], then[key], f"{path}.{key}")]
    return [] if now == then else [f"{path[1:]}: {then!r} -> {now!r}"]


def shipped_differences(row: dict, recipes: Path, allowed: tuple[str, ...] = ()) -> list[str]:
    """Why ``row`` is not the recipe as shipped now (empty when it is); ``--set`` overrides in ``allowed``
    are let through, and so are the differences they make."""
    given = row.get("set") or []
    if any(key not in allowed for key in given):
        return [f"--set {' '.join(key for key in given if key not in allowed)}"]
    recipe_file = recipes / f"{row['recipe']}.yaml"
    if not recipe_file.exists():
        return [f"no recipe {recipe_file.name}"]
    configs = {name: config.model_dump(mode="json") for name, config in load_recipe(recipe_file, given)[1].items()}
    recorded = row.get("stage_configs") or {}
    extra = [f"stage {name} (not in the recipe now)" for name in recorded if name not in configs]
    return extra + [d for name in recorded if name in configs
                    for d in differences(configs[name], recorded[name], f".{name}")]


def dataset_name(row: dict) -> str:
    name = row.get("dataset") or "msrc-voc"
    return f"{name}, {row['long_side']} px" if row.get("long_side") else name


def twin_key(row: dict) -> tuple:
    return row["recipe"], dataset_name(row), row.get("seed")


def collect(files: list[Path], recipes: Path) -> tuple[list[dict], dict[str, list[str]], dict[tuple, dict]]:
    """The as-shipped rows of ``files`` (one per run directory, the most complete); per recipe and
    dataset without one, how one of its rows differs; and the oracle twins (:data:`ORACLE_TWIN`) by
    recipe, dataset and seed."""
    shipped: dict[str, dict] = {}
    stale: dict[str, list[str]] = {}
    twins: dict[tuple, dict] = {}
    for path in files:
        for row in json.loads(path.read_text()).get("rows", []):
            if "stage_configs" not in row:
                continue
            if row.get("set") == [ORACLE_TWIN]:
                if not shipped_differences(row, recipes, (ORACLE_TWIN,)):
                    twins[twin_key(row)] = row
                continue
            group = f"{row['recipe']} ({dataset_name(row)})"
            why = shipped_differences(row, recipes)
            if why:
                stale[group] = [f"{path.name}: {d}" for d in why[:3]]
                continue
            row = {**row, "file": path.name}
            key = f"{group} {row['run']}"
            known = shipped.get(key)
            if known is None or len(row["stage_seconds"]) > len(known["stage_seconds"]):
                shipped[key] = row
    rows = sorted(shipped.values(), key=lambda r: (dataset_name(r), r["recipe"], r.get("seed") or 0))
    covered = {f"{r['recipe']} ({dataset_name(r)})" for r in rows}
    return rows, {group: why for group, why in stale.items() if group not in covered}, twins


def summary(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": round(statistics.mean(values), 3), "std": round(statistics.stdev(values), 3) if len(values) > 1
            else None, "n": len(values)}


def groups(rows: list[dict], before: dict[str, dict], twins: dict[tuple, dict]) -> list[dict]:
    """Per recipe and dataset: the score stages' gaps, pseudo-labels (label-free, and at the walk's
    oracle threshold where a twin ran) and DeepLab over the seeds."""
    grouped: dict[tuple, list[dict]] = {}
    for r in rows:
        grouped.setdefault((r["recipe"], dataset_name(r)), []).append(r)
    out = []
    for (recipe, dataset), members in grouped.items():
        stages = {}
        for stage in SCORE_STAGES:
            scored = [r["score_stages"][stage] for r in members if stage in (r.get("score_stages") or {})]
            scored = [s for s in scored if s["oracle_miou"] is not None and s["label_free_miou"] is not None]
            if scored:
                stages[stage] = {"rule": sorted({s["label_free_method"] for s in scored}),
                                 "label_free": summary([s["label_free_miou"] for s in scored]),
                                 "oracle": summary([s["oracle_miou"] for s in scored]),
                                 "gap": summary([s["label_free_miou"] - s["oracle_miou"] for s in scored])}
        previous = before.get(recipe) if dataset == "msrc-voc" else None
        twinned = [r for r in members if twin_key(r) in twins and r.get("pseudo_label_train_miou") is not None]
        paired = [(r["pseudo_label_train_miou"], twins[twin_key(r)]["pseudo_label_train_miou"]) for r in twinned]
        out.append({"recipe": recipe, "dataset": dataset, "seeds": [r.get("seed") for r in members],
                    "score_stages": stages,
                    "pseudo_labels": summary([r.get("pseudo_label_train_miou") for r in members]),
                    "pseudo_labels_oracle": summary([oracle for _, oracle in paired]),
                    "pseudo_labels_gap": summary([free - oracle for free, oracle in paired]),
                    "twin_seeds": [r.get("seed") for r in twinned],
                    "deeplab_val": summary([r.get("final_val_miou") for r in members]),
                    "deeplab_seeds": [r.get("seed") for r in members if r.get("final_val_miou") is not None],
                    "before": previous and {"pseudo_labels": previous.get("pseudo_label_train_miou"),
                                            "deeplab_val": previous.get("final_val_miou")},
                    "runs": [f"{r['file']}: {label(r)}" for r in members]})
    return out


def cell(value: dict | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    number = f"{value['mean']:+.1f}" if signed else f"{value['mean']:.1f}"
    return number + (f" ± {value['std']:.1f}" if value["std"] is not None else "")


def table(summaries: list[dict], stale: dict[str, list[str]]) -> str:
    names = {"make_cam": "CAM", "perimeterfit": "PerimeterFit", "random_walk": "walk"}
    columns = [f"{n}: label-free / oracle (gap)" for n in names.values()]
    columns += ["pseudo-labels (train): label-free / oracle (gap)", "DeepLab (val)", "before: pseudo-labels / DeepLab"]
    lines = ["| dataset | recipe | seeds | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for g in summaries:
        stages = []
        for stage in names:
            s = g["score_stages"].get(stage)
            stages.append("-" if s is None else
                          f"{cell(s['label_free'])} / {cell(s['oracle'])} ({cell(s['gap'], signed=True)}), "
                          f"{', '.join(s['rule'])}")
        before = g["before"]
        earlier = "-" if not before else " / ".join("-" if v is None else f"{v:.1f}" for v in before.values())
        seeds = ", ".join("-" if s is None else str(s) for s in g["seeds"])
        pseudo = cell(g["pseudo_labels"])
        if g["pseudo_labels_oracle"]:
            pseudo += f" / {cell(g['pseudo_labels_oracle'])} ({cell(g['pseudo_labels_gap'], signed=True)}"
            if len(g["twin_seeds"]) < len(g["seeds"]):  # the oracle and the gap of these seeds only
                pseudo += f"; seed {', '.join(str(s) for s in g['twin_seeds'])}"
            pseudo += ")"
        deeplab = cell(g["deeplab_val"])
        if g["deeplab_val"] and len(g["deeplab_seeds"]) < len(g["seeds"]):
            deeplab += f" (seed {', '.join(str(s) for s in g['deeplab_seeds'])})"
        lines.append(f"| {g['dataset']} | {g['recipe']} | {seeds} | {' | '.join(stages)} | "
                     f"{pseudo} | {deeplab} | {earlier} |")
    lines += ["", "Rows counted (result file: row):", ""]
    lines += [f"- {run}" for g in summaries for run in g["runs"]]
    if stale:
        lines += ["", "No row as shipped (how one of its rows differs, then -> now):", ""]
        lines += [f"- {group}: {'; '.join(why)}" for group, why in sorted(stale.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the pipeline_*.json files")
    parser.add_argument("--recipes", type=Path, default=ROOT / "recipes")
    parser.add_argument("--out", type=Path, default=RESULTS / "shipped_recipes.json")
    args = parser.parse_args()
    files = sorted(args.results.glob("pipeline_*.json"))
    rows, stale, twins = collect(files, args.recipes)
    before = {r["recipe"]: r for r in json.loads(BEFORE.read_text())["rows"]} if BEFORE.exists() else {}
    summaries = groups(rows, before, twins)
    text = table(summaries, stale)
    write_result(args.out, {"benchmark": "shipped_recipes", "files": [p.name for p in files],
                            "groups": summaries, "stale": stale}, text)
    print(text)


if __name__ == "__main__":
    main()
