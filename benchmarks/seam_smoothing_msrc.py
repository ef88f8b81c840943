"""SEAM and the structure-aware smoothing branch on msrc-voc (CPU): the smoothing paper's ablation layout.

    .venv/bin/python benchmarks/seam_smoothing_msrc.py                      # every row, seed 0
    .venv/bin/python benchmarks/seam_smoothing_msrc.py --seeds 0 1 2 --rows seam seam+1ep seam+sb
    .venv/bin/python benchmarks/seam_smoothing_msrc.py --rows seam+sb --lambda2 0.5 1 1.5 2   # Table VI sweep

Rows (each a run of recipes/seam.yaml's stages up to the pseudo-labels, with these train_cam keys):
- ``cam``, ``puzzle``, ``seam``: the base heads, trained from ImageNet (their pseudo-labels are the
  boundary source S of the rows below; no ground truth is read);
- ``<base>+1ep``: one more epoch of the trained base head (``init``), without the branch;
- ``seam+sbdm``: that epoch with the SBDM and L_B only (``smoothing.lambda_smooth: 0``);
- ``<base>+sb``: that epoch with the whole branch (SBDM + L_S): the paper's "Ours".
Each row reports the CAM (oracle and label-free mIoU, mFP / mFN, per class) and the random walk on
it; ``--deeplab`` adds the DeepLab stages. Runs live in --runs and resume; the JSON result and a
Markdown table are rewritten after every run. Rows of an earlier result file that this call does not
rerun (another seed, another row) are kept, so the seeds of a long ablation can be run in several
sittings. With several seeds a mean +- std table follows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import MSRC, ROOT, class_iou, earlier_rows, machine, merge_rows, pct, write_result
from tagseg.pipeline import load_recipe, run_recipe
from tagseg.rundir import read_manifest
from tagseg.runtime import setup_logging
from tagseg.threads import set_threads

RECIPE = ROOT / "recipes" / "seam.yaml"
BASES = {"cam": ["head=cam"], "puzzle": ["head=puzzle", "puzzle_alpha=1"], "seam": ["head=seam"]}
# seam.yaml picks SEAM's label-free CAM threshold with the classifier (masking); the other heads keep
# expected_iou, the make_cam default when their rows were first run (masking is the default since), so
# every seed of a row is judged alike
LABEL_FREE = {"cam": "expected_iou", "puzzle": "expected_iou", "seam": "masking"}
SCORED = ("make_cam", "random_walk", "pseudo_labels")


def row_keys(row: str, base_run: Path, lambda2: float | None) -> list[str]:
    """train_cam KEY=VALUE settings of a row (``<base>``, ``<base>+1ep``, ``seam+sbdm``, ``<base>+sb``)."""
    base, _, variant = row.partition("+")
    keys = list(BASES[base])
    if not variant:
        return keys
    keys += [f"init={base_run / 'train_cam' / 'model.pt'}", "epochs=1", "min_steps=0"]
    if variant == "1ep":
        return keys
    keys.append(f"smoothing.boundaries={base_run / 'pseudo_labels'}")
    if variant == "sbdm":
        keys.append("smoothing.lambda_smooth=0")
    elif lambda2 is not None:
        keys.append(f"smoothing.lambda_smooth={lambda2}")
    return keys


def scored(manifest: dict | None) -> dict | None:
    if not manifest or "metrics" not in manifest:
        return None
    free = manifest.get("label_free") or {}
    return {"oracle": pct(manifest["metrics"]["miou"]), "threshold": manifest.get("threshold"),
            "label_free": pct((free.get("metrics") or {}).get("miou")), "label_free_threshold": free.get("threshold"),
            "mfp": manifest["metrics"].get("mfp"), "mfn": manifest["metrics"].get("mfn"),
            "class_iou": class_iou(manifest)}


def run_row(row: str, seed: int, lambda2: float | None, args) -> dict:
    name = row if lambda2 is None else f"{row}(l2={lambda2:g})"
    run = args.runs / f"{name}_seed{seed}"
    base_run = args.runs / f"{row.partition('+')[0]}_seed{seed}"
    keys = [f"stages.train_cam.{k}" for k in [*row_keys(row, base_run, lambda2), f"seed={seed}"]]
    keys += [f"stages.make_cam.label_free={LABEL_FREE[row.partition('+')[0]]}", f"stages.train_affinity.seed={seed}",
             f"dataset={args.data}", f"run={run}", "upper_bound_run=null", *args.overrides]
    recipe, configs = load_recipe(RECIPE, keys)
    if not args.deeplab:
        configs = {k: v for k, v in configs.items() if k not in ("train_seg", "segment")}
    if "+" in row and not args.walk:  # a base always runs to its pseudo-labels: they are S of its fine-tunes
        configs = {k: v for k, v in configs.items() if k in ("train_cam", "make_cam")}
    started = time.time()
    run_recipe(recipe, configs)
    trained = read_manifest(run / "train_cam")
    result = {"row": name, "seed": seed, "command": " ".join(["python", *sys.argv]),
              "train_cam_keys": row_keys(row, base_run, lambda2),
              "val_map": pct((trained.get("classification") or {}).get("map")),
              "seconds_per_epoch": trained.get("seconds_per_epoch"), "wall_seconds": round(time.time() - started, 1)}
    result.update({stage: scored(read_manifest(run / stage)) for stage in SCORED})
    if args.deeplab:
        result["deeplab_val"] = scored(read_manifest(run / "segment_val"))
    return result


def summary(rows: list[dict]) -> list[dict]:
    """Per row name: mean and sample std over seeds of the CAM and walk mIoUs (oracle and label-free)."""
    out = []
    for name in dict.fromkeys(r["row"] for r in rows):
        runs = [r for r in rows if r["row"] == name]
        entry = {"row": name, "seeds": [r["seed"] for r in runs]}
        for stage in ("make_cam", "random_walk"):
            for kind in ("oracle", "label_free"):
                ran = [r for r in runs if r.get(stage) and r[stage][kind] is not None]
                values = [r[stage][kind] for r in ran]
                if values:  # [mean, sample std (None for one value), the seeds it is over]
                    entry[f"{stage}_{kind}"] = [round(statistics.mean(values), 2),
                                                round(statistics.stdev(values), 2) if len(values) > 1 else None,
                                                [r["seed"] for r in ran]]
        out.append(entry)
    return out


def table(rows: list[dict]) -> str:
    def cell(score, kind="oracle"):
        return "-" if not score or score[kind] is None else f"{score[kind]:.1f}"

    lines = ["| row | seed | val mAP | CAM oracle | CAM label-free | CAM mFP / mFN | walk oracle | walk label-free "
             "| pseudo-labels | s / epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cam = r["make_cam"]
        errors = f"{cam['mfp']:.2f} / {cam['mfn']:.2f}" if cam and cam["mfp"] is not None else "-"
        lines.append(f"| {r['row']} | {r['seed']} | {r['val_map'] if r['val_map'] is not None else '-'} | {cell(cam)} | "
                     f"{cell(cam, 'label_free')} | {errors} | {cell(r['random_walk'])} | "
                     f"{cell(r['random_walk'], 'label_free')} | {cell(r['pseudo_labels'])} | {r['seconds_per_epoch']} |")
    several = summary(rows)
    if any(len(s["seeds"]) > 1 for s in several):
        lines += ["", "| row | seeds | CAM oracle | CAM label-free | walk oracle | walk label-free |",
                  "|---|---|---|---|---|---|"]
        for s in several:
            cells = [("-" if k not in s else f"{s[k][0]:.1f} (seed {s[k][2][0]} only)" if len(s[k][2]) == 1
                      else f"{s[k][0]:.1f} ± {s[k][1]:.1f}")
                     for k in ("make_cam_oracle", "make_cam_label_free", "random_walk_oracle", "random_walk_label_free")]
            lines.append(f"| {s['row']} | {', '.join(map(str, s['seeds']))} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MSRC)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_seam_smoothing")
    parser.add_argument("--rows", nargs="+", default=["cam", "seam", "seam+1ep", "seam+sbdm", "seam+sb",
                                                      "cam+1ep", "cam+sb", "puzzle", "puzzle+1ep", "puzzle+sb"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--lambda2", nargs="+", type=float, default=None,
                        help="smoothing rows: sweep lambda_2 (smoothing.lambda_smooth) over these values")
    parser.add_argument("--walk", action=argparse.BooleanOptionalAction, default=True,
                        help="fine-tuned rows: also run the random walk on their CAMs")
    parser.add_argument("--deeplab", action="store_true", help="also train and score DeepLab (val)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="recipe KEY=VALUE for every row, e.g. stages.make_cam.scales=[1.0]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "seam_smoothing_msrc.json")
    parser.add_argument("--threads", type=int, help="torch/OpenCV threads (default: every core)")
    args = parser.parse_args()
    setup_logging("INFO")
    set_threads(args.threads)
    earlier = earlier_rows(args.out)
    started, rows = time.time(), []
    for seed in args.seeds:  # seeds outermost: a cut-short run still compares rows on the same seeds
        for row in args.rows:
            sweep = args.lambda2 if (args.lambda2 and row.endswith("+sb")) else [None]
            for lambda2 in sweep:
                base = row.partition("+")[0]
                # a base runs before its fine-tunes (their S and init come from it), once per seed
                for name, value in dict.fromkeys([(base, None), (row, lambda2)]):
                    if not any(r["seed"] == seed and r["row"] == name and value is None for r in rows):
                        rows.append(run_row(name, seed, value, args))
                merged = merge_rows(earlier, rows, lambda r: (r["row"], r["seed"]))
                result = {"benchmark": "seam_smoothing_msrc", "dataset": str(args.data), "split": "train",
                          "command": " ".join(["python", *sys.argv]),
                          "machine": machine(),
                          "wall_seconds": round(time.time() - started, 1), "rows": merged, "summary": summary(merged)}
                write_result(args.out, result, table(merged))
    print(table(merge_rows(earlier, rows, lambda r: (r["row"], r["seed"]))))


if __name__ == "__main__":
    main()
