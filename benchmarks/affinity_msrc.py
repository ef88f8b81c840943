"""Affinity refinement on msrc-voc train (CPU): mIoU after CAM, after the random walk, after RW + CRF.

    .venv/bin/python benchmarks/affinity_msrc.py

SILOP Table II layout, for plain-CAM and PerimeterFit inputs. Needs the CAM run of
benchmarks/cam_msrc.py and the PerimeterFit run of benchmarks/perimeterfit_msrc.py; each
input gets its own run directory under --runs with the source stage linked in, then
affinity_labels -> train_affinity -> random_walk -> pseudo_labels (CRF, at the walk's oracle
threshold). All stages resume. Writes benchmarks/results/affinity_msrc.json and a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import MSRC, ROOT, link, pct, write_result
from tagseg.config import load_config
from tagseg.data.dataset import open_dataset
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging
from tagseg.stages.affinity_labels import AffinityLabelsConfig, make_affinity_labels
from tagseg.stages.pseudo_labels import PseudoLabelConfig, make_pseudo_labels
from tagseg.stages.random_walk import RandomWalkConfig, random_walk_stage
from tagseg.stages.train_affinity import AffinityTrainConfig, train_affinity





def metrics_row(manifest: dict) -> dict:
    m = manifest["metrics"]
    return {"miou": pct(m["miou"]), "mfp": m["mfp"], "mfn": m["mfn"], "threshold": manifest.get("threshold")}

PSA_WIDTH = "crf_settings.bilateral_sxy=50"  # the CRF kernel these results were measured with (default now 32)


def run_input(name: str, source_run: Path, source_stage: str, run: Path, data: Path, overrides: dict) -> dict:
    dataset = open_dataset(data, "train")
    link(source_run / source_stage, run / source_stage)
    source = read_manifest(run / source_stage)
    labels = make_affinity_labels(dataset, run, load_config(AffinityLabelsConfig, None, [
        f"cams={source_stage}", PSA_WIDTH, *overrides["labels"]]), workers=2)
    trained = train_affinity(dataset, run, load_config(AffinityTrainConfig, None, overrides["train"]))
    walked = random_walk_stage(dataset, run, load_config(RandomWalkConfig, None,
                                                         [f"cams={source_stage}", *overrides["walk"]]))
    crf = make_pseudo_labels(dataset, run, load_config(PseudoLabelConfig, None, [
        f"threshold={walked['threshold']}", PSA_WIDTH]), workers=2)
    free = walked["label_free"]
    return {
        "input": name, "source_stage": source_stage,
        "cam": metrics_row(source),
        "seeds": {"fg_threshold": labels["fg_threshold"], "bg_threshold": labels["bg_threshold"],
                  **labels["seed_quality"]},
        "affinity": {"kind": trained["config"]["kind"], "seconds_per_epoch": trained["seconds_per_epoch"],
                     "final_loss": trained["history"][-1]["loss"]},
        "rw": metrics_row(walked),
        "rw_label_free": {"threshold": free["threshold"], "miou": pct(free["metrics"]["miou"])},
        "rw_crf": {**metrics_row(crf), "threshold": crf["threshold"]},
        "rw_seconds_per_image": walked.get("seconds_per_image"),
        "crf_seconds_per_image": round(crf["timings"]["seconds"] / max(crf["timings"]["items_computed"], 1), 4),
    }


def table(rows: list[dict]) -> str:
    lines = ["| input | affinity net | CAM | RW | RW + CRF | RW (label-free t) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['affinity']['kind']} | {r['cam']['miou']:.1f} | {r['rw']['miou']:.1f} | "
                     f"{r['rw_crf']['miou']:.1f} | "
                     f"{r['rw_label_free']['miou']:.1f} |")
    lines += ["", "| input | mFP / mFN: CAM | RW | RW + CRF | seed precision / labelled | RW s/img | CRF s/img "
              "| train s/epoch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seeds"]
        lines.append(f"| {r['input']} | {r['cam']['mfp']:.2f} / {r['cam']['mfn']:.2f} | {r['rw']['mfp']:.2f} / "
                     f"{r['rw']['mfn']:.2f} | {r['rw_crf']['mfp']:.2f} / {r['rw_crf']['mfn']:.2f} | "
                     f"{100 * s['precision']:.1f}% / {100 * s['labelled_fraction']:.1f}% | "
                     f"{r['rw_seconds_per_image']} | {r['crf_seconds_per_image']} | "
                     f"{r['affinity']['seconds_per_epoch']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--cam-run", type=Path, default=ROOT / "runs" / "bench_cam_msrc" / "cam")
    parser.add_argument("--perimeterfit-run", type=Path, default=ROOT / "runs" / "bench_perimeterfit")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_affinity")
    parser.add_argument("--inputs", nargs="+", default=["cam", "perimeterfit"], choices=["cam", "perimeterfit"])
    parser.add_argument("--labels-set", nargs="*", default=[], help="affinity_labels overrides KEY=VALUE")
    parser.add_argument("--train-set", nargs="*", default=[], help="train_affinity overrides KEY=VALUE")
    parser.add_argument("--walk-set", nargs="*", default=[], help="random_walk overrides KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "affinity_msrc.json")
    args = parser.parse_args()
    setup_logging()
    overrides = {"labels": args.labels_set, "train": args.train_set, "walk": args.walk_set}
    sources = {"cam": ("plain CAM", args.cam_run, "make_cam"),
               "perimeterfit": ("PerimeterFit", args.perimeterfit_run, "perimeterfit")}
    rows = []
    for key in args.inputs:
        name, source_run, stage = sources[key]
        rows.append(run_input(name, source_run, stage, args.runs / key, args.data, overrides))
        print(f"{name}: {rows[-1]['cam']['miou']} -> RW {rows[-1]['rw']['miou']} -> CRF {rows[-1]['rw_crf']['miou']}",
              file=sys.stderr)
        result = {"benchmark": "affinity_msrc", "dataset": str(args.data), "split": "train", "overrides": overrides,
                  "rows": rows}
        write_result(args.out, result, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
