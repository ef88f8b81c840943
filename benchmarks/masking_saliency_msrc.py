"""The dissertation's ch. 2 on msrc-voc (CPU): Table 2.3's ablation layout and Table 2.6's refinement scales.

    .venv/bin/python benchmarks/masking_saliency_msrc.py                                # the recipe's own row
    .venv/bin/python benchmarks/masking_saliency_msrc.py --saliency spectral_residual ground_truth \\
        --rows sal sal+ref sal+ref+attn1 sal+ref+attn2 sal+ref+attn3                      # Table 2.3
    .venv/bin/python benchmarks/masking_saliency_msrc.py --saliency ground_truth --rows sal+ref+attn2 \\
        --scale-sets 0.5,1,1.5 0.5,0.75,1 1,1.25,1.5                                     # Table 2.6
    .venv/bin/python benchmarks/masking_saliency_msrc.py --upper                         # + fully supervised

Every row uses recipes/masking_saliency.yaml's settings except what it names:
- ``sal``: DeepLab trained with the saliency loss on the unrefined saliency masks;
- ``sal+ref``: on the masks refined by the CAMs (eq. 2.6);
- ``sal+ref+attnN``: plus the image-masking attention loss over N classification paths.
``--saliency``: spectral_residual / fine_grained (OpenCV's substitute) or ground_truth (the binarised
masks: the dissertation's oracle rows C1-C4). ``--scale-sets``: make_cam's scales for eq. 2.4.
Each row reports the saliency masks' foreground IoU before and after refinement on train, val
mIoU without and with the dense CRF, per-class IoU, seconds per epoch and, with ``--upper``, the
same DeepLab trained on the true masks (cross-entropy, one scale: the bound, and plain DeepLab's
seconds per epoch) beside it. Stages shared by
rows (classifier, CAMs, saliency) run once per seed and are linked into each row's run. Runs
live in --runs and resume; rows of an earlier result file that this call does not rerun are kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common
from common import MSRC, ROOT, class_iou, earlier_rows, machine, merge_rows, pct, write_result
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging
from tagseg.threads import set_threads

RECIPE = ROOT / "recipes" / "masking_saliency.yaml"
DEFAULT_SCALES = "0.5,1,1.5"


def row_keys(row: str) -> list[str]:
    """train_seg KEY=VALUE settings of a row."""
    if row == "sal":
        return ["labels=saliency", "attention_paths=0"]
    if row == "sal+ref":
        return ["labels=refine_saliency", "attention_paths=0"]
    if row.startswith("sal+ref+attn"):
        return ["labels=refine_saliency", f"attention_paths={int(row.removeprefix('sal+ref+attn'))}"]
    raise SystemExit(f"unknown row {row!r}: sal, sal+ref or sal+ref+attnN")


def run_stages(run: Path, names: list[str], keys: list[str], linked: dict[str, Path], args) -> None:
    common.run_stages(RECIPE, run, names, [f"dataset={args.data}", *keys, *args.overrides], linked)


def foreground(manifest: dict | None) -> dict | None:
    if not manifest or "metrics" not in manifest:
        return None
    return {"iou": pct(manifest["metrics"]["per_class"]["foreground"]["iou"]),
            "precision": pct(manifest["metrics"]["per_class"]["foreground"]["precision"]),
            "recall": pct(manifest["metrics"]["per_class"]["foreground"]["recall"]),
            "unlabelled": pct(manifest.get("unlabelled"))}


def run_row(row: str, source: str, scales: str, seed: int, args) -> dict:
    base = args.runs / f"seed{seed}"
    seeds = [f"stages.train_cam.seed={seed}", f"stages.train_seg.seed={seed}"]
    scale_keys = [f"stages.make_cam.scales=[{scales}]"]
    started = time.time()
    run_stages(base / "cam", ["train_cam"], seeds, {}, args)
    cams = base / f"cams_{scales}"
    run_stages(cams, ["make_cam"], seeds + scale_keys, {"train_cam": base / "cam" / "train_cam"}, args)
    salient = base / f"{source}_{scales}"
    run_stages(salient, ["saliency", "refine_saliency"], seeds + scale_keys + [f"stages.saliency.source={source}"],
               {"train_cam": base / "cam" / "train_cam", "make_cam": cams / "make_cam"}, args)
    shared = {stage: salient / stage for stage in ("saliency", "refine_saliency")}
    shared.update(train_cam=base / "cam" / "train_cam", make_cam=cams / "make_cam")
    row_run = salient / row
    run_stages(row_run, ["train_seg", "segment"], seeds + [f"stages.train_seg.{k}" for k in row_keys(row)], shared,
               args)
    with_crf = salient / f"{row}_crf"
    run_stages(with_crf, ["segment"], ["stages.segment.crf=true"], {"train_seg": row_run / "train_seg"}, args)
    trained = read_manifest(row_run / "train_seg")
    segmented, refined_crf = read_manifest(row_run / "segment_val"), read_manifest(with_crf / "segment_val")
    return {"row": row, "saliency": source, "scales": scales, "seed": seed, "command": " ".join(["python", *sys.argv]),
            "train_seg_keys": row_keys(row),
            "saliency_train": foreground(read_manifest(salient / "saliency")),
            "refined_train": foreground(read_manifest(salient / "refine_saliency")),
            "val_miou": pct(segmented["metrics"]["miou"]), "val_miou_crf": pct(refined_crf["metrics"]["miou"]),
            "class_iou": class_iou(segmented), "class_iou_crf": class_iou(refined_crf),
            "seconds_per_epoch": trained.get("seconds_per_epoch"), "wall_seconds": round(time.time() - started, 1)}


def run_upper(seed: int, args) -> dict:
    """The same DeepLab, schedule and training scale trained on the true masks with cross-entropy: the bound,
    and plain DeepLab's seconds per epoch."""
    run = args.runs / f"seed{seed}" / "fully_supervised"
    keys = ["labels=ground_truth", "objective=masks", "attention_paths=0", "loss_scales=[1.0]", f"seed={seed}"]
    run_stages(run, ["train_seg", "segment"], [f"stages.train_seg.{k}" for k in keys], {}, args)
    segmented = read_manifest(run / "segment_val")
    return {"row": "fully supervised", "saliency": "-", "scales": "-", "seed": seed,
            "command": " ".join(["python", *sys.argv]), "train_seg_keys": keys,
            "val_miou": pct(segmented["metrics"]["miou"]), "class_iou": class_iou(segmented),
            "seconds_per_epoch": read_manifest(run / "train_seg").get("seconds_per_epoch")}


def key(r: dict) -> tuple:
    return r["row"], r["saliency"], r["scales"], r["seed"]


def table(rows: list[dict]) -> str:
    def cell(value):
        return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)

    def fg(score):
        return "-" if not score else f"{score['iou']:.1f}" + (f" ({score['unlabelled']:.1f}% unl.)"
                                                              if score.get("unlabelled") else "")

    upper = {r["seed"]: r for r in rows if r["row"] == "fully supervised"}
    lines = ["| row | saliency | CAM scales | seed | saliency fg IoU (train) | refined fg IoU (train) | val mIoU | "
             "val mIoU + CRF | of fully supervised | s / epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = upper.get(r["seed"])
        ratio = f"{r['val_miou'] / bound['val_miou']:.0%}" if bound and r["row"] != "fully supervised" else "-"
        lines.append(f"| {r['row']} | {r['saliency']} | {r['scales']} | {r['seed']} | {fg(r.get('saliency_train'))} | "
                     f"{fg(r.get('refined_train'))} | {cell(r['val_miou'])} | {cell(r.get('val_miou_crf'))} | {ratio} | "
                     f"{cell(r['seconds_per_epoch'])} |")
    groups = {}
    for r in rows:
        groups.setdefault(key(r)[:3], []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        lines += ["", "| row | saliency | CAM scales | seeds | val mIoU | val mIoU + CRF |", "|---|---|---|---|---|---|"]
        for (row, source, scales), group in groups.items():
            cells = []
            for field in ("val_miou", "val_miou_crf"):
                values = [g[field] for g in group if g.get(field) is not None]
                cells.append("-" if not values else f"{values[0]:.1f}" if len(values) == 1
                             else f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
            lines.append(f"| {row} | {source} | {scales} | {', '.join(str(g['seed']) for g in group)} | "
                         f"{' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_masking_saliency")
    parser.add_argument("--rows", nargs="+", default=["sal+ref+attn2"])
    parser.add_argument("--saliency", nargs="+", default=["spectral_residual"])
    parser.add_argument("--scale-sets", nargs="+", default=[DEFAULT_SCALES],
                        help="make_cam scales for eq. 2.4, comma-separated, e.g. 0.5,0.75,1")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--upper", action="store_true", help="also train the fully supervised DeepLab (the bound)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe KEY=VALUE for every row, e.g. stages.train_seg.epochs=5")
    parser.add_argument("--threads", type=int, help="torch/OpenCV threads (default: every core)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "masking_saliency_msrc.json")
    args = parser.parse_args()
    setup_logging("INFO")
    set_threads(args.threads)
    earlier = earlier_rows(args.out)
    started, rows = time.time(), []

    def save() -> None:
        merged = merge_rows(earlier, rows, key)
        write_result(args.out, {"benchmark": "masking_saliency_msrc", "dataset": str(args.data), "split": "val",
                                "machine": machine(), "wall_seconds": round(time.time() - started, 1),
                                "rows": merged}, table(merged))

    for seed in args.seeds:  # seeds outermost: a cut-short run still compares rows on the same seeds
        if args.upper:
            rows.append(run_upper(seed, args))
            save()
        for scales in args.scale_sets:
            for source in args.saliency:
                for row in args.rows:
                    rows.append(run_row(row, source, scales, seed, args))
                    save()
    print(table(merge_rows(earlier, rows, key)))


if __name__ == "__main__":
    main()
