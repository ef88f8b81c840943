"""Helpers the benchmark scripts share (they run as `python benchmarks/<name>.py`, so this imports as `common`)."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MSRC = ROOT.parent / "shared" / "data" / "msrc-voc"


def pct(value):
    """A 0-1 score as a percentage rounded for tables (None stays None)."""
    return None if value is None else round(100 * value, 2)


def machine() -> dict:
    """Where a result was measured: torch's thread count, the platform and the torch version."""
    return {"torch_threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__}


def class_iou(manifest: dict) -> dict | None:
    """Per-class IoU of a scored stage's manifest, rounded for JSON (None when it was not scored)."""
    per_class = (manifest.get("metrics") or {}).get("per_class")
    return {name: round(values["iou"], 4) for name, values in per_class.items()} if per_class else None


def link(target: Path, name: Path) -> None:
    """Point the symlink ``name`` at ``target`` (the inputs under study), replacing an older link."""
    name.parent.mkdir(parents=True, exist_ok=True)
    if name.is_symlink() and name.resolve() != target.resolve():
        name.unlink()
    if not name.exists():
        name.symlink_to(target.resolve())


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` of a metric over seeds, to one decimal."""
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def write_result(out: Path, result: dict, table: str | None = None) -> None:
    """Write the JSON result and, when given, its Markdown table beside it (same name, ``.md``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if table is not None:
        out.with_suffix(".md").write_text(table if table.endswith("\n") else table + "\n")


def merge_rows(earlier: list[dict], new: list[dict], key) -> list[dict]:
    """An earlier result's rows, each replaced in place by the row of ``new`` with the same ``key(row)``, then
    the rest of ``new``: a long benchmark can run its seeds or rows in several sittings."""
    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in earlier]
    return merged + [r for r in new if key(r) in fresh]


def earlier_rows(out: Path) -> list[dict]:
    """The rows of the result file ``out`` when it exists."""
    return json.loads(out.read_text())["rows"] if out.exists() else []


def run_stages(recipe_file: Path, run: Path, names: list[str], keys: list[str], linked: dict[str, Path]) -> None:
    """Run the stages ``names`` of a recipe into ``run`` with ``keys`` as --set, after linking the stage
    directories ``linked`` (stage -> an earlier run's directory) in: rows that share their first stages
    train them once."""
    from tagseg.pipeline import load_recipe, run_recipe

    for stage, source in linked.items():
        link(source, run / stage)
    recipe, configs = load_recipe(recipe_file, [f"run={run}", "upper_bound_run=null", *keys])
    run_recipe(recipe, {name: configs[name] for name in names})
