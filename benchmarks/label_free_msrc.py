"""Label-free background thresholds against the oracle, per score stage (CAM, PerimeterFit, walk).

    .venv/bin/python benchmarks/label_free_msrc.py --run runs/msrc_lf
    .venv/bin/python benchmarks/label_free_msrc.py --run runs/synth_lf --dataset runs/synth \
        --out benchmarks/results/label_free_synth.json

Reads the finished score stages of a run (``make_cam``, ``perimeterfit``, ``random_walk``) and its
classifier (``train_cam/model.pt``). For each stage and rule of :mod:`tagseg.label_free` it computes
the rule's criterion per image (cached under ``<run>/label_free_bench/<stage>/``, so the script
resumes), chooses the threshold from a subset of the images (``--max-images``, evenly spaced) and
reads its mIoU on the whole split from the stage's recorded threshold curve. The oracle is that
curve's best. No rule parameter is fitted to masks: the erase fill (backbone mean), the scale the
classifier sees, the CRF settings (the recipe's) and the threshold grids are fixed in advance.
Rules: ``otsu`` (of the stage's scores), ``expected_iou`` (all images' histograms), ``masking``
(the stages' probability form, falling back to Otsu as the stages do when the classifier sees fewer
than half the tagged classes or no mask beats a random one), ``masking_refined`` (the same, then again
at 0.01 steps between the best grid threshold's neighbours: studied, not adopted), its logit form
(``masking_logit``, the stages' rule before), its uncorrected form (kept - erased: no area term), ``crf`` agreement, and the
chains the stages' defaults build from each CAM rule R but the last two: for PerimeterFit
``from_cams(R)`` (R's CAM threshold through the run's combination, ``combined_threshold``: halved
for ``silop``, which halves the scores of the pixels it does not keep), for the walk
``from_source(R)`` (the threshold keeping the foreground share its source stage, the walk's
``cams``, has at R's threshold there). These score the same
maps at other thresholds: in a real run PerimeterFit also fits, and the affinity labels are cut,
at the chain's thresholds.

``--sample-study 32 64 128`` (with ``--max-images`` at least the split's size, so that every image
has its criteria; checked) measures how much the ``masking`` CAM threshold moves with the images it is
chosen from: random subsets of each size (``--draws``, seeded) and the stages' own evenly spaced ones, with
the CAM's and the chained walk's mIoU gap at each choice.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common import MSRC, ROOT, pct, write_result
from tagseg.artifacts import load_score_map
from tagseg.data.dataset import evenly_spaced, open_dataset
from tagseg.data.imageio import read_image
from tagseg.label_free import (
    GRID, choose, crf_agreement, expected_iou_of, histogram_of, image_masking_logits, masking_criterion,
    masking_fallback, matched_area, otsu_of, threshold_labels,
)
from tagseg.refine.crf import CrfParams
from tagseg.rundir import finished_stage, read_manifest
from tagseg.sizing import REFERENCE_SIZE, input_scales
from tagseg.stages.perimeterfit import combined_threshold
from tagseg.stages.train_cam import MODEL_FILE, load_cam_net

STAGES = ("make_cam", "perimeterfit", "random_walk")
NAMES = {"make_cam": "CAM", "perimeterfit": "PerimeterFit", "random_walk": "walk"}
CHAIN_RULES = ("otsu", "expected_iou", "masking", "masking_logit")  # CAM rules followed downstream


def refined_grid(best: float, step: float = 0.01) -> tuple[float, ...]:
    """The thresholds at ``step`` strictly between ``best``'s :data:`GRID` neighbours, less ``best``."""
    spacing = GRID[1] - GRID[0]
    fine = np.arange(best - spacing + step, best + spacing - step / 2, step)
    return tuple(t for t in (round(float(v), 2) for v in fine) if 0 < t < 1 and t != round(best, 2))


def image_criteria(record, scores: np.ndarray, net, scale: float, crf_params: CrfParams | None) -> dict:
    image = read_image(record.image_path)[0]
    out = {}
    if crf_params is not None:
        out["crf"] = crf_agreement(image, threshold_labels(scores, GRID), len(scores) + 1, 0.7, crf_params)
    if len(scores):
        logits = image_masking_logits(image, scores, [c - 1 for c in record.labels], net, scale)
        out.update({f"masking_{k}": v for k, v in logits.items()})
    return out


def cached(path: Path, crf: bool) -> bool:
    """Whether an image's criteria are on disk (with the crf rule's, when asked for)."""
    if not path.exists():
        return False
    with np.load(path) as data:
        return not crf or "crf" in data.files


def stage_criteria(run: Path, stage: str, dataset, ids: list[str], net, scale: float,
                   crf_params: CrfParams | None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict]:
    """Every rule's criterion per image of ``ids`` and threshold ((N, T) arrays; per-image values cached
    on disk), per image how many of its tagged classes the classifier sees (full image above blank), of
    how many (images without a tag: 0 of 0, criterion 0), and the thresholds of the rules not on
    :data:`GRID`: ``masking_refined`` (the grid, then :func:`refined_grid` around its best). No
    ``crf_params``: no ``crf`` rule."""
    cache = run / "label_free_bench" / stage
    cache.mkdir(parents=True, exist_ok=True)
    criteria = {name: np.zeros((len(ids), len(GRID))) for name in ("masking", "masking_logit",
                                                                   "masking_uncorrected", "crf")}
    seen, pairs = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
    started = time.perf_counter()
    for n, item_id in enumerate(ids):
        path = cache / f"{item_id}.npz"
        if not cached(path, crf_params is not None):
            scores, _ = load_score_map(run / stage / f"{item_id}.npz")
            np.savez(path, **image_criteria(dataset.record(item_id), scores, net, scale, crf_params))
            print(f"{stage} {n + 1}/{len(ids)} {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
        with np.load(path) as data:
            if crf_params is not None:
                criteria["crf"][n] = data["crf"]
            if "masking_full" in data:
                logits = {k: data[f"masking_{k}"] for k in ("full", "blank", "erased", "kept", "area")}
                criteria["masking"][n] = masking_criterion(**logits)
                criteria["masking_logit"][n] = masking_criterion(**logits, space="logit")
                # the score's fall with the mask minus its fall with the complement, without the area term
                half = np.full_like(logits["area"], 0.5)  # 2 * area - 1 = 0
                criteria["masking_uncorrected"][n] = masking_criterion(**{**logits, "area": half})
                seen[n] = int(np.count_nonzero(logits["full"] > logits["blank"]))
                pairs[n] = len(logits["full"])
    if crf_params is None:
        del criteria["crf"]
    grids = {}
    coarse = criteria["masking"]
    if not masking_fallback(int(seen.sum()), int(pairs.sum()), coarse.mean(axis=0)):
        best = choose(GRID, coarse.mean(axis=0))
        fine = refined_grid(best)
        extra = np.zeros((len(ids), len(fine)))
        for n, item_id in enumerate(ids):
            record = dataset.record(item_id)
            if not record.labels:
                continue
            path = cache / f"{item_id}.near{best:.2f}.npz"
            if not path.exists():
                scores, _ = load_score_map(run / stage / f"{item_id}.npz")
                logits = image_masking_logits(read_image(record.image_path)[0], scores,
                                              [c - 1 for c in record.labels], net, scale, "cpu", fine)
                np.savez(path, **logits)
            with np.load(path) as data:
                extra[n] = masking_criterion(**{k: data[k] for k in data.files})
        thresholds = np.array(GRID + fine)
        order = np.argsort(thresholds, kind="stable")
        criteria["masking_refined"] = np.concatenate([coarse, extra], axis=1)[:, order]
        grids["masking_refined"] = tuple(float(t) for t in thresholds[order])
    return criteria, seen, pairs, grids


def masking_choice(criterion: np.ndarray, seen: np.ndarray, pairs: np.ndarray, otsu: float,
                   thresholds=GRID) -> float:
    """The masking threshold from per-image criteria (N, T) at ``thresholds``: Otsu's where they fall back."""
    total = criterion.mean(axis=0)
    return otsu if masking_fallback(int(seen.sum()), int(pairs.sum()), total) else choose(thresholds, total)


def sample_study(criterion: np.ndarray, seen: np.ndarray, pairs: np.ndarray, otsu: float, ids: list[str],
                 sizes: list[int], draws: int, curve: list[dict], oracle: float, downstream=None) -> list[dict]:
    """How far the masking threshold moves with the images it is chosen from: for each size, ``draws``
    random subsets of ``ids`` (seeded) and the stages' own evenly spaced subset; the mIoU on the
    whole split at each choice, and, given ``downstream`` (threshold -> (threshold, mIoU, oracle) of a
    later stage through its chain), the later stage's."""
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        size = min(size, len(ids))
        subsets = [rng.choice(len(ids), size, replace=False) for _ in range(draws)]
        own = [ids.index(i) for i in evenly_spaced(ids, size)]
        picks = [masking_choice(criterion[s], seen[s], pairs[s], otsu) for s in subsets]
        gaps = np.array([pct(miou_at(curve, t)) - oracle for t in picks])
        values, counts = np.unique(picks, return_counts=True)
        row = {"images": size, "draws": draws,
               "thresholds": {f"{v:.2f}": int(c) for v, c in zip(values, counts)},
               "gap_mean": round(float(gaps.mean()), 2), "gap_std": round(float(gaps.std()), 2),
               "gap_worst": round(float(gaps.min()), 2)}
        spaced = masking_choice(criterion[own], seen[own], pairs[own], otsu)
        row["evenly_spaced"] = {"threshold": spaced, "gap": round(pct(miou_at(curve, spaced)) - oracle, 2)}
        if downstream is not None:
            later = np.array([miou - best for _, miou, best in map(downstream, picks)])
            row.update(later_gap_mean=round(float(later.mean()), 2), later_gap_std=round(float(later.std()), 2),
                       later_gap_worst=round(float(later.min()), 2))
            _, miou, best = downstream(spaced)
            row["evenly_spaced"]["later_gap"] = round(miou - best, 2)
        rows.append(row)
    return rows


def chained_walk(t: float, combination: str, via_perimeterfit: bool, histograms: tuple[np.ndarray, np.ndarray],
                 curve: list[dict], oracle: float) -> tuple[float, float, float]:
    """The walk's threshold that CAM threshold ``t`` leads to through the defaults' chain (PerimeterFit's
    ``combined_threshold`` when the walk starts there, then ``from_source``), its mIoU and the walk's oracle."""
    source_t = combined_threshold(t, combination) if via_perimeterfit else t
    walk_t = matched_area(histograms[0], source_t, histograms[1])
    return walk_t, pct(miou_at(curve, walk_t)), oracle


def miou_at(curve: list[dict], threshold: float) -> float:
    nearest = min(curve, key=lambda c: abs(c["threshold"] - threshold))
    return nearest["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "msrc_lf")
    parser.add_argument("--dataset", type=Path, default=MSRC)
    parser.add_argument("--split", default="train")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--max-images", type=int, default=64, help="images the image-based rules look at")
    parser.add_argument("--sample-study", type=int, nargs="*", default=[], metavar="N",
                        help="also choose the masking CAM threshold from random subsets of N of those images "
                             "(and the stages' evenly spaced N): how much the choice moves with the sample")
    parser.add_argument("--draws", type=int, default=50, help="random subsets per --sample-study size")
    parser.add_argument("--image-stages", nargs="*", default=list(STAGES), choices=STAGES,
                        help="stages that the image-based rules (masking, crf) also run on")
    parser.add_argument("--scale", type=float, help="image scale the classifier sees when masking (default: 320 / "
                                                     "the run's image_size, as the stages)")
    parser.add_argument("--crf-bilateral-sxy", type=float, default=32.0, help="the recipe's CRF width")
    parser.add_argument("--no-crf", action="store_true", help="leave out the crf rule (most of the per-image time)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_free_msrc.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    dataset = open_dataset(args.dataset, args.split)
    net, _ = load_cam_net(args.run / "train_cam" / MODEL_FILE)
    crf_params = None if args.no_crf else CrfParams(bilateral_sxy=args.crf_bilateral_sxy)
    ids = evenly_spaced(dataset.ids, args.max_images)
    if args.sample_study and len(ids) < len(dataset.ids):
        parser.error(f"--sample-study draws from every image of {args.dataset} ({args.split}: {len(dataset.ids)}); "
                     f"--max-images {args.max_images} looks at {len(ids)}: raise it")
    if args.scale is None:
        args.scale = input_scales([1.0], finished_stage(args.run, "make_cam", "the label-free benchmark")["config"].get(
            "image_size", REFERENCE_SIZE))[0]
    rows, chosen = [], {}  # chosen: stage -> the threshold each CAM rule leads to there
    cam_study, walk_from_cams = None, None
    combination = (read_manifest(args.run / "perimeterfit") or {}).get("config", {}).get("combination", "silop")
    for stage in args.stages:
        manifest = finished_stage(args.run, stage, "the label-free benchmark")
        curve = manifest["curve"]
        started = time.perf_counter()
        criteria, seen, pairs, grids = (stage_criteria(args.run, stage, dataset, ids, net, args.scale, crf_params)
                                        if stage in args.image_stages else ({}, np.zeros(0), np.zeros(0), {}))
        seconds = time.perf_counter() - started
        otsu = otsu_of(args.run / stage, dataset.ids)  # not the stage's record: that is its own rule's choice
        expected, _ = expected_iou_of(args.run / stage, dataset.ids, dataset.num_classes)
        totals = {name: values.mean(axis=0) for name, values in criteria.items()}
        own = {"otsu": otsu, "expected_iou": expected,  # the masking rules with the stages' fallback
               **{name: masking_choice(values, seen, pairs, otsu, grids.get(name, GRID))
                  if name.startswith("masking") else
                  choose(GRID, totals[name]) for name, values in criteria.items()}}
        if stage == "make_cam":
            cam_study = (criteria.get("masking"), seen, pairs, otsu, curve, pct(manifest["metrics"]["miou"]))
            chosen[stage] = {rule: t for rule, t in own.items() if rule in CHAIN_RULES}
        cams = chosen.get("make_cam") or {"expected_iou": expected_iou_of(args.run / "make_cam", dataset.ids,
                                                                          dataset.num_classes)[0]}
        # the defaults' chains: a CAM rule -> PerimeterFit from_cams (combined_threshold) -> walk from_source
        if stage == "perimeterfit":
            chosen[stage] = {rule: combined_threshold(t, combination) for rule, t in cams.items()}
            derived = {f"from_cams({rule})": t for rule, t in chosen[stage].items()}
        elif stage == "random_walk":
            source = manifest["config"].get("cams", "perimeterfit")
            if source not in chosen:
                chosen[source] = ({rule: combined_threshold(t, combination) for rule, t in cams.items()}
                                  if source == "perimeterfit" else cams)
            source_histogram, walked = histogram_of(args.run / source, dataset.ids), histogram_of(args.run / stage,
                                                                                                  dataset.ids)
            derived = {f"from_source({rule})": matched_area(source_histogram, t, walked)
                       for rule, t in chosen[source].items()}
            walk_from_cams = partial(chained_walk, combination=combination, via_perimeterfit=source == "perimeterfit",
                                     histograms=(source_histogram, walked), curve=curve,
                                     oracle=pct(manifest["metrics"]["miou"]))
        else:
            derived = {}
        rules = {**own, **derived}
        oracle = pct(manifest["metrics"]["miou"])
        rows.append({"stage": stage, "oracle_threshold": manifest["threshold"], "oracle_miou": oracle,
                     "rules": {name: {"threshold": t, "miou": pct(miou_at(curve, t)),
                                      "gap": round(pct(miou_at(curve, t)) - oracle, 2)} for name, t in rules.items()},
                     "criteria": {name: [round(float(v), 5) for v in values] for name, values in totals.items()},
                     "criteria_thresholds": {name: list(t) for name, t in grids.items()},
                     "seconds": round(seconds, 1)})
    names = list(dict.fromkeys(name for row in rows for name in row["rules"]))
    table = ["| stage | oracle t | oracle mIoU | " + " | ".join(f"{n} t | {n} mIoU (gap)" for n in names) + " |",
             "|---" * (3 + 2 * len(names)) + "|"]
    for row in rows:
        cells = [f"{row['rules'][n]['threshold']:.3f} | {row['rules'][n]['miou']:.1f} ({row['rules'][n]['gap']:+.1f})"
                 if n in row["rules"] else "- | -" for n in names]
        table.append(f"| {NAMES[row['stage']]} | {row['oracle_threshold']:.2f} | {row['oracle_miou']:.1f} | "
                     + " | ".join(cells) + " |")
    study = []
    if args.sample_study and cam_study is not None and cam_study[0] is not None:
        study = sample_study(*cam_study[:4], ids, args.sample_study, args.draws, *cam_study[4:], walk_from_cams)
        table += ["", "| CAM masking from | draws | thresholds chosen (times) | CAM gap, mean +- std (worst) | "
                  "walk gap, mean +- std (worst) | the stages' evenly spaced images: t, CAM gap, walk gap |",
                  "|---|---|---|---|---|---|"]
        for r in study:
            chosen_t = ", ".join(f"{t} ({c})" for t, c in r["thresholds"].items())
            walk = (f"{r['later_gap_mean']:+.1f} +- {r['later_gap_std']:.1f} ({r['later_gap_worst']:+.1f})"
                    if "later_gap_mean" in r else "-")
            spaced = r["evenly_spaced"]
            table.append(f"| {r['images']} images | {r['draws']} | {chosen_t} | {r['gap_mean']:+.1f} +- "
                         f"{r['gap_std']:.1f} ({r['gap_worst']:+.1f}) | {walk} | {spaced['threshold']:.2f}, "
                         f"{spaced['gap']:+.1f}, " + (f"{spaced['later_gap']:+.1f}" if "later_gap" in spaced else "-")
                         + " |")
    result = {"benchmark": "label-free background thresholds vs the oracle", "run": str(args.run),
              "dataset": str(args.dataset), "split": args.split, "images_for_rules": len(ids),
              "image_stages": args.image_stages, "grid": list(GRID), "scale": args.scale,
              "crf_bilateral_sxy": args.crf_bilateral_sxy,
              "rows": rows, "sample_study": study, "platform": platform.platform(),
              "torch_threads": torch.get_num_threads()}
    write_result(args.out, result, "\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
