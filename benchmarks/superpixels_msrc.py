"""Superpixels on msrc-voc (CPU): the dissertation's Table 3.5 layout, discovery against SLIC / SEEDS / LSC and
the normalised cut of §3.5.

    .venv/bin/python benchmarks/superpixels_msrc.py
    .venv/bin/python benchmarks/superpixels_msrc.py --taus 0.1 0.2 0.3 0.4 0.5 --target 29

Discovery (Table 3.1) groups the default CNN's multi-level patch features (ImageNet weights, the
``features: cnn`` of the superpixels stage: no DINO weights exist offline) at each tau of --taus and
at the tau chosen without masks to give --target superpixels per image (``tau: auto``, chosen on
--tau-sample images as the stage does). The normalised cut (eq. 3.13-3.15) cuts the same affinity at that
tau, and at each of --ncut-taus, into at most the matched count per image: at the same tau it stops
well before (what remains is alike at that tau), so higher taus bring it to the matched count. The baselines run at the count that auto tau gives (matched
n: each is asked for the count that gives that mean on the tau sample). Every method is scored per image against the class masks (UE, ASA, boundary recall / precision
within 2 px, void excluded) and averaged; seconds per image are the method's own (features and
grouping for discovery, measured apart).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from common import MSRC, ROOT, machine, write_result
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_image, read_mask
from tagseg.metrics import superpixel_scores
from tagseg.models.backbones import create_backbone
from tagseg.refine.superpixels import (BASELINES, baseline_request, baseline_superpixels, discover_superpixels,
                                       ncut_superpixels, tau_for_count, upsample_labels)
from tagseg.stages.superpixels import feature_grid
from tagseg.threads import set_threads


def summarise(name: str, tau, scores: list[dict], seconds: float, images: int) -> dict:
    row = {"method": name, "tau": tau, "images": images, "seconds_per_image": round(seconds / images, 4)}
    for key in ("n", "ue", "asa", "br", "bp"):
        values = [s[key] for s in scores if s[key] is not None]
        row[key] = round(float(np.mean(values)), 4) if values else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--taus", nargs="+", type=float, default=[0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--target", type=float, default=29.0, help="tau: auto's mean count per image")
    parser.add_argument("--tau-sample", type=int, default=40)
    parser.add_argument("--ncut-taus", nargs="*", type=float, default=[0.75, 0.85],
                        help="the normalised cut also at these taus (at auto tau it stops early: the rest is alike)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "superpixels_msrc.json")
    args = parser.parse_args()
    set_threads(args.threads)
    dataset = open_dataset(MSRC, "train")
    records = [r for r in dataset.records if r.mask_path]
    net = create_backbone(weights="imagenet").eval()
    started = time.perf_counter()
    images, truths, grids = [], [], []
    with torch.no_grad():
        for record in records:
            images.append(read_image(record.image_path)[0])
            truths.append(read_mask(record.mask_path, dataset.num_classes))
            grids.append(feature_grid(net, images[-1], "cnn", "cpu"))
    feature_seconds = time.perf_counter() - started
    picks = sorted(set(np.linspace(0, len(grids) - 1, min(args.tau_sample, len(grids))).round().astype(int)))
    auto_tau, _ = tau_for_count([grids[i] for i in picks], args.target)
    rows = []
    for tau in [*args.taus, auto_tau]:
        started, scores = time.perf_counter(), []
        for image, truth, grid in zip(images, truths, grids):
            scores.append(superpixel_scores(upsample_labels(discover_superpixels(grid, tau), *image.shape[:2]),
                                            truth))
        seconds = time.perf_counter() - started + feature_seconds
        rows.append(summarise("discovery (cnn)" + (" auto" if tau == auto_tau else ""), tau, scores, seconds,
                              len(records)))
    matched = rows[-1]["n"]
    for tau in [auto_tau, *args.ncut_taus]:
        started = time.perf_counter()
        scores = [superpixel_scores(upsample_labels(ncut_superpixels(grid, tau, round(matched)), *image.shape[:2]),
                                    truth) for image, truth, grid in zip(images, truths, grids)]
        rows.append(summarise("ncut (cnn)" + (" at auto tau" if tau == auto_tau else ""), tau, scores,
                              time.perf_counter() - started + feature_seconds, len(records)))
    for method in BASELINES:  # asked for the count that gives the matched n on the same sample as tau
        request, _ = baseline_request([images[i] for i in picks], method, matched)
        started = time.perf_counter()
        scores = [superpixel_scores(baseline_superpixels(image, method, request), truth)
                  for image, truth in zip(images, truths)]
        rows.append({**summarise(method, None, scores, time.perf_counter() - started, len(records)),
                     "requested": request})
    lines = ["| method | tau | n | UE | BP | BR | ASA | s / image |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {'-' if r['tau'] is None else r['tau']} | {r['n']:.1f} | {100 * r['ue']:.1f} | "
              f"{100 * r['bp']:.1f} | {100 * r['br']:.1f} | {100 * r['asa']:.1f} | {r['seconds_per_image']} |"
              for r in rows]
    write_result(args.out, {"benchmark": "superpixels_msrc", "dataset": str(MSRC), "split": "train",
                            "command": "python benchmarks/superpixels_msrc.py", "machine": machine(),
                            "target_count": args.target, "matched_n": matched, "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
