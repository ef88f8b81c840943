"""The dissertation's ch. 3 recipe on msrc-voc (CPU): region growing against seeds only, on discovered or
SLIC superpixels, and the alpha / beta sweeps of Tables 3.7-3.8.

    .venv/bin/python benchmarks/superpixel_srg_msrc.py --upper                       # the recipe + the bound
    .venv/bin/python benchmarks/superpixel_srg_msrc.py --rows growth seeds growth:slic
    .venv/bin/python benchmarks/superpixel_srg_msrc.py --rows --alphas 0.3 0.7 --betas 0.5 0.9  # the growth row is the 0.5 / 0.7 point

Rows use recipes/superpixel_srg.yaml's settings except what they name: ``growth`` is the recipe,
``seeds`` trains on the initial seeds without growth, ``<row>:<method>`` uses that superpixel method
(discovery, slic, seeds, lsc) for both the background seed and the growth. ``--alphas`` / ``--betas``
run the growth row at each value (a sweep changes one of them; the other keeps the recipe's). Each
row reports the superpixels (n, UE, ASA), the seeds (labelled share, precision), the labelled share
after growth in the last pass, val mIoU (with ``--crf`` also the same network's output refined by the
dense CRF) and seconds per epoch; ``--upper`` adds the same DeepLab on
the true masks. Stages shared by rows run once per seed; rows of an earlier result file that this
call does not rerun are kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import common
from common import MSRC, ROOT, class_iou, earlier_rows, machine, mean_std, merge_rows, pct, write_result
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging
from tagseg.threads import set_threads

RECIPE = ROOT / "recipes" / "superpixel_srg.yaml"
ALPHA, BETA = 0.5, 0.7  # the recipe's


def run_stages(run: Path, names: list[str], keys: list[str], linked: dict[str, Path], args) -> None:
    common.run_stages(RECIPE, run, names, [f"dataset={args.data}", *keys, *args.overrides], linked)


def run_row(kind: str, method: str, alpha: float, beta: float, seed: int, args) -> dict:
    base = args.runs / f"seed{seed}"
    seeds = [f"stages.train_cam.seed={seed}", f"stages.train_seg.seed={seed}"]
    started = time.time()
    run_stages(base / "cams", ["train_cam", "make_cam"], seeds, {}, args)
    cams = {stage: base / "cams" / stage for stage in ("train_cam", "make_cam")}
    regions = base / f"superpixels_{method}"
    run_stages(regions, ["superpixels"], seeds + [f"stages.superpixels.method={method}"], {}, args)
    seeded = base / f"seeds_{method}_alpha{alpha:g}"
    run_stages(seeded, ["superpixel_seeds"], seeds + [f"stages.superpixels.method={method}",
                                                      f"stages.superpixel_seeds.alpha={alpha}"],
               {**cams, "superpixels": regions / "superpixels"}, args)
    name = f"{kind}:{method}" + (f" alpha {alpha:g}" if alpha != ALPHA else "") + (f" beta {beta:g}" if beta != BETA
                                                                                    else "")
    row_run = seeded / (f"{kind}_beta{beta:g}" if kind == "growth" else kind)
    growth = ["stages.train_seg.growth=superpixels", f"stages.train_seg.growth_beta={beta}"] if kind == "growth" \
        else ["stages.train_seg.growth=null"]
    run_stages(row_run, ["train_seg", "segment"], seeds + growth,
               {**cams, "superpixels": regions / "superpixels", "superpixel_seeds": seeded / "superpixel_seeds"}, args)
    crf = None
    if args.crf:  # Tables 3.7-3.8's "val + crf": the same network, its output refined by the dense CRF
        run_stages(row_run / "crf", ["segment"], seeds + growth + ["stages.segment.crf=true"],
                   {"train_seg": row_run / "train_seg"}, args)
        crf = pct(read_manifest(row_run / "crf" / "segment_val")["metrics"]["miou"])
    superpixels = read_manifest(regions / "superpixels")
    quality = read_manifest(seeded / "superpixel_seeds")["seed_quality"]
    trained, segmented = read_manifest(row_run / "train_seg"), read_manifest(row_run / "segment_val")
    return {"row": name, "kind": kind, "method": method, "alpha": alpha, "beta": beta, "seed": seed,
            "command": " ".join(["python", *sys.argv]),
            "superpixels": {k: superpixels["metrics"][k] for k in ("n", "ue", "asa", "br", "bp")},
            "tau": superpixels.get("tau"), "seeds": {k: round(v, 4) for k, v in quality.items()},
            "labelled_after_growth": trained["history"][-1].get("labelled"),
            "val_miou": pct(segmented["metrics"]["miou"]), "val_miou_crf": crf, "class_iou": class_iou(segmented),
            "seconds_per_epoch": trained.get("seconds_per_epoch"), "wall_seconds": round(time.time() - started, 1)}


def run_upper(seed: int, args) -> dict:
    """The same DeepLab and schedule on the true masks (cross-entropy): the bound."""
    run = args.runs / f"seed{seed}" / "fully_supervised"
    keys = ["labels=ground_truth", "objective=masks", "growth=null", f"seed={seed}"]
    run_stages(run, ["train_seg", "segment"], [f"stages.train_seg.{k}" for k in keys], {}, args)
    segmented = read_manifest(run / "segment_val")
    return {"row": "fully supervised", "kind": "upper", "method": "-", "alpha": None, "beta": None, "seed": seed,
            "command": " ".join(["python", *sys.argv]), "val_miou": pct(segmented["metrics"]["miou"]),
            "class_iou": class_iou(segmented),
            "seconds_per_epoch": read_manifest(run / "train_seg").get("seconds_per_epoch")}


def key(r: dict) -> tuple:
    return r["row"], r["seed"]


def summary(rows: list[dict]) -> list[str]:
    """Rows run with several seeds: val mIoU mean +- sample std, and what growth adds over the seeds alone
    paired by seed (same CAMs, superpixels and seeds)."""
    runs: dict[str, dict[int, float]] = {}
    for r in rows:
        runs.setdefault(r["row"], {})[r["seed"]] = r["val_miou"]
    lines = []
    for name, by_seed in runs.items():
        if len(by_seed) > 1:
            values = [by_seed[k] for k in sorted(by_seed)]
            lines.append(f"| {name} | {', '.join(map(str, sorted(by_seed)))} | {' / '.join(f'{v:.1f}' for v in values)}"
                         f" | {mean_std(values)} |")
    for method in dict.fromkeys(r["method"] for r in rows if r["kind"] == "growth"):
        grown, alone = runs.get(f"growth:{method}", {}), runs.get(f"seeds:{method}", {})
        paired = sorted(set(grown) & set(alone))
        if len(paired) > 1:
            gains = [grown[k] - alone[k] for k in paired]
            lines.append(f"| growth - seeds ({method}) | {', '.join(map(str, paired))} | "
                         f"{' / '.join(f'{g:+.1f}' for g in gains)} | {statistics.mean(gains):+.1f} ± "
                         f"{statistics.stdev(gains):.1f} |")
    lines = ["", "| row | seeds | val mIoU per seed | mean ± std |", "|---|---|---|---|", *lines] if lines else []
    return lines + per_class_gain(rows)


def per_class_gain(rows: list[dict]) -> list[str]:
    """Growth minus seeds alone (discovered superpixels) per class, IoU points averaged over the paired seeds."""
    grown = {r["seed"]: r["class_iou"] for r in rows if r["row"] == "growth:discovery" and r.get("class_iou")}
    alone = {r["seed"]: r["class_iou"] for r in rows if r["row"] == "seeds:discovery" and r.get("class_iou")}
    paired = sorted(set(grown) & set(alone))
    if len(paired) < 2:
        return []
    gains = {name: statistics.mean(100 * (grown[k][name] - alone[k][name]) for k in paired) for name in grown[paired[0]]}
    ordered = sorted(gains.items(), key=lambda item: -item[1])
    return ["", f"Growth - seeds per class (discovery, mean over seeds {', '.join(map(str, paired))}): "
            + ", ".join(f"{name} {gain:+.1f}" for name, gain in ordered)]


def table(rows: list[dict]) -> str:
    upper = {r["seed"]: r for r in rows if r["kind"] == "upper"}
    lines = ["| row | seed | superpixels n / UE / ASA | seeds labelled / precision | labelled in training (last pass) | val mIoU "
             "| val + CRF | of fully supervised | s / epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp, seeds, bound = r.get("superpixels"), r.get("seeds"), upper.get(r["seed"])
        lines.append(
            f"| {r['row']} | {r['seed']} | "
            + (f"{sp['n']:.1f} / {100 * sp['ue']:.1f} / {100 * sp['asa']:.1f}" if sp else "-") + " | "
            + (f"{100 * seeds['labelled_fraction']:.1f}% / {100 * seeds['precision']:.1f}%" if seeds else "-") + " | "
            + (f"{100 * r['labelled_after_growth']:.1f}%" if r.get("labelled_after_growth") is not None else "-")
            + f" | {r['val_miou']:.1f} | "
            + (f"{r['val_miou_crf']:.1f}" if r.get("val_miou_crf") is not None else "-") + " | "
            + (f"{r['val_miou'] / bound['val_miou']:.0%}" if bound and r["kind"] != "upper" else "-")
            + f" | {r['seconds_per_epoch']} |")
    return "\n".join(lines + summary(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_superpixel_srg")
    parser.add_argument("--rows", nargs="*", default=["growth"],
                        help="growth | seeds, optionally :METHOD; none: only the sweeps / the bound")
    parser.add_argument("--alphas", nargs="+", type=float, default=[], help="growth row at each alpha (eq. 3.4)")
    parser.add_argument("--betas", nargs="+", type=float, default=[], help="growth row at each beta (eq. 3.7)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--upper", action="store_true", help="also train the same DeepLab on the true masks")
    parser.add_argument("--crf", action="store_true", help="also score each row's network with a dense CRF on its "
                                                           "output (Tables 3.7-3.8's val + crf)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe KEY=VALUE for every row, e.g. stages.train_seg.epochs=5")
    parser.add_argument("--threads", type=int, help="torch/OpenCV threads (default: every core)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "superpixel_srg_msrc.json")
    parser.add_argument("--table", action="store_true", help="only rewrite the table from the result file")
    args = parser.parse_args()
    if args.table:
        result = json.loads(args.out.read_text())
        write_result(args.out, result, table(result["rows"]))
        return
    setup_logging("INFO")
    set_threads(args.threads)
    earlier, started, rows = earlier_rows(args.out), time.time(), []
    plan = []
    for row in args.rows:
        kind, _, method = row.partition(":")
        if kind not in ("growth", "seeds"):
            raise SystemExit(f"unknown row {row!r}: growth or seeds, optionally :METHOD")
        plan.append((kind, method or "discovery", ALPHA, BETA))
    plan += [("growth", "discovery", alpha, BETA) for alpha in args.alphas]
    plan += [("growth", "discovery", ALPHA, beta) for beta in args.betas]

    def save() -> None:
        merged = merge_rows(earlier, rows, key)
        write_result(args.out, {"benchmark": "superpixel_srg_msrc", "dataset": str(args.data), "split": "val",
                                "machine": machine(), "wall_seconds": round(time.time() - started, 1),
                                "rows": merged}, table(merged))

    for seed in args.seeds:
        if args.upper:
            rows.append(run_upper(seed, args))
            save()
        for item in dict.fromkeys(plan):
            rows.append(run_row(*item, seed, args))
            save()
    print(table(merge_rows(earlier, rows, key)))


if __name__ == "__main__":
    main()
