"""Would a peak between the masking grid's thresholds land closer to the oracle? A study on finished runs.

    .venv/bin/python benchmarks/masking_subgrid.py --runs runs      # reads manifests; runs nothing

``masking`` scores 19 thresholds (0.05 to 0.95 by 0.05, :data:`tagseg.label_free.GRID`) with the
classifier and keeps the best. The oracle searches every 0.01, and on maps whose mIoU changes fast
with the threshold (SEAM's, near 0.9) a 0.05 grid alone can cost a point. The vertex of the parabola
through the peak and its two neighbours is a sub-grid estimate that costs no classifier call. This
script reads every finished score stage under ``--runs`` whose manifest holds a masking criterion and
the oracle curve (mIoU every 0.01, measured on the masks), and scores both choices on that curve.
Stages that share one criterion (a stage hard-linked into several runs) count once. Writes
benchmarks/results/masking_subgrid.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from common import ROOT, write_result
from tagseg.label_free import GRID, choose
from tagseg.rundir import MANIFEST, read_manifest


def subgrid_peak(thresholds, criterion: np.ndarray) -> float:
    """The vertex of the parabola through the grid's best threshold and its neighbours (the best one
    itself at the grid's ends or where the three do not bend down), rounded to 0.01."""
    values = np.asarray(criterion, dtype=float)
    best = int(np.argmax(values))
    peak = choose(thresholds, values)
    if 0 < best < len(values) - 1:
        left, middle, right = values[best - 1:best + 2]
        bend = left - 2 * middle + right
        if bend < 0:
            step = thresholds[best + 1] - thresholds[best]
            peak += 0.5 * (left - right) / bend * step
    return round(peak, 2)


def stage_rows(root: Path) -> list[dict]:
    """One row per distinct masking criterion under ``root``: the oracle, grid and sub-grid choices."""
    rows, seen = [], set()
    for path in sorted(root.glob(f"**/{MANIFEST}")):
        manifest = read_manifest(path.parent)
        free, curve = manifest.get("label_free") or {}, manifest.get("curve")
        criterion = free.get("criterion")
        if free.get("method") != "masking" or not criterion or not curve:
            continue
        key = json.dumps(criterion, sort_keys=True) + json.dumps(curve[::10])
        if key in seen:
            continue
        seen.add(key)
        thresholds = [float(t) for t in criterion]
        values = np.array(list(criterion.values()))
        miou = {round(point["threshold"], 2): 100 * point["miou"] for point in curve}
        oracle = max(miou, key=miou.get)
        grid, sub = round(choose(thresholds, values), 2), subgrid_peak(thresholds, values)
        rows.append({"stage": str(path.parent.relative_to(root)), "oracle_threshold": oracle,
                     "oracle_miou": round(miou[oracle], 2), "grid_threshold": grid,
                     "grid_gap": round(miou[grid] - miou[oracle], 2), "subgrid_threshold": sub,
                     "subgrid_gap": round(miou[sub] - miou[oracle], 2)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| score stage | oracle t | oracle mIoU | grid t | grid gap | sub-grid t | sub-grid gap | change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['oracle_threshold']:.2f} | {r['oracle_miou']:.1f} | "
                     f"{r['grid_threshold']:.2f} | {r['grid_gap']:+.1f} | {r['subgrid_threshold']:.2f} | "
                     f"{r['subgrid_gap']:+.1f} | {r['subgrid_gap'] - r['grid_gap']:+.1f} |")
    folders: dict[str, list[dict]] = {}
    for r in rows:
        folders.setdefault(r["stage"].split("/")[0], []).append(r)
    for name, group in [("all", rows), *sorted(folders.items())] if rows else []:
        change = [r["subgrid_gap"] - r["grid_gap"] for r in group]
        lines += ["", f"{name}, {len(group)} stages: gap to the oracle "
                      f"{statistics.mean(r['grid_gap'] for r in group):+.2f} on the grid, "
                      f"{statistics.mean(r['subgrid_gap'] for r in group):+.2f} sub-grid; the sub-grid choice is "
                      f"closer on {sum(c > 0 for c in change)}, level on {sum(c == 0 for c in change)}, further on "
                      f"{sum(c < 0 for c in change)} (worst {min(change):+.1f}, best {max(change):+.1f})."]
    return "\n".join(lines) + "\n"


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="folder searched for finished stages")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "masking_subgrid.json")
    args = parser.parse_args()
    rows = stage_rows(args.runs)
    text = table(rows)
    write_result(args.out, {"benchmark": "masking_subgrid", "runs": shown(args.runs), "grid": list(GRID),
                            "rows": rows}, text)
    print(text)


if __name__ == "__main__":
    main()
