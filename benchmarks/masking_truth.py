"""Where the masking criterion peaks on the true masks: each tagged class's ground-truth mask grown or shrunk
by a share of the long side, scored as make_cam's ``masking`` rule scores a threshold's masks.

If the criterion peaked away from the truth, a label-free threshold chosen by it would miss its oracle
whatever the maps; if it peaks at the truth, a miss comes from the maps (no single threshold of them
draws the objects). Usage::

    .venv/bin/python benchmarks/masking_truth.py --runs runs/bench_pipeline/silop_seed2 \
        runs/bench_pipeline_synth/cam_rw_seed0 --datasets ../shared/data/msrc-voc runs/synth
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from common import ROOT, machine, write_result
from tagseg.data.dataset import evenly_spaced, open_dataset
from tagseg.data.imageio import read_image
from tagseg.label_free import SAMPLE, label_masking_logits, masking_criterion, rescaled
from tagseg.progress import track
from tagseg.rundir import finished_stage
from tagseg.sizing import REFERENCE_SIZE, input_scales
from tagseg.stages.train_cam import MODEL_FILE, load_cam_net
from tagseg.threads import set_threads

SHARES = (-0.08, -0.04, -0.02, 0.0, 0.02, 0.04, 0.08, 0.16)  # of the long side: < 0 erodes, > 0 dilates


def moved(masks: np.ndarray, share: float) -> np.ndarray:
    """A (H, W) label map indexing [background, *classes] of (K, H, W) boolean masks, each dilated
    (``share`` > 0) or eroded by ``share`` of the long side; where grown masks meet, the earlier class
    keeps the pixel."""
    radius = int(round(abs(share) * max(masks.shape[1:])))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    out = np.zeros(masks.shape[1:], np.uint8)
    for index, mask in enumerate(masks.astype(np.uint8), start=1):
        if radius:
            mask = cv2.dilate(mask, kernel) if share > 0 else cv2.erode(mask, kernel)
        out[(mask > 0) & (out == 0)] = index
    return out


def criterion_of(run: Path, dataset_dir: Path, count: int) -> dict:
    dataset = open_dataset(dataset_dir, "train")
    net, _ = load_cam_net(run / "train_cam" / MODEL_FILE)
    image_size = finished_stage(run, "make_cam", "the masking-truth benchmark")["config"].get("image_size",
                                                                                            REFERENCE_SIZE)
    (scale,) = input_scales([1.0], image_size)
    total, images = np.zeros(len(SHARES)), 0
    ids = evenly_spaced(dataset.ids, count)
    for item_id in track(ids, len(ids), f"{run.name}: true masks"):
        record = dataset.record(item_id)
        if not record.labels:
            continue
        truth = dataset.load_mask(record)
        masks = np.stack([truth == c for c in record.labels]).astype(np.float32)  # resized per class
        image, masks = rescaled(read_image(record.image_path)[0], masks, scale)
        labels = np.stack([moved(masks > 0.5, s) for s in SHARES])
        logits = label_masking_logits(image, labels, np.asarray(record.labels) - 1, net)
        total += masking_criterion(**logits)
        images += 1
    criterion = total / max(images, 1)
    return {"run": str(run), "dataset": str(dataset_dir), "images": images, "scale": scale,
            "criterion": {str(s): round(float(v), 4) for s, v in zip(SHARES, criterion)},
            "peak": SHARES[int(np.argmax(criterion))]}


def table(rows: list[dict]) -> str:
    head = "| run | images | " + " | ".join(f"{s:+.0%}" for s in SHARES) + " | peak |"
    lines = [head, "|" + "---|" * (len(SHARES) + 3)]
    for row in rows:
        values = [row["criterion"][str(s)] for s in SHARES]
        cells = [f"**{v:.3f}**" if s == row["peak"] else f"{v:.3f}" for s, v in zip(SHARES, values)]
        lines.append(f"| {Path(row['run']).name} ({Path(row['dataset']).name}) | {row['images']} | "
                     + " | ".join(cells) + f" | {row['peak']:+.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="runs with train_cam and make_cam")
    parser.add_argument("--datasets", type=Path, nargs="+", required=True, help="each run's dataset, in order")
    parser.add_argument("--images", type=int, default=SAMPLE, help="training images, evenly spaced")
    parser.add_argument("--threads", type=int, help="torch/OpenCV threads (default: every core)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "masking_truth.json")
    args = parser.parse_args()
    if len(args.runs) != len(args.datasets):
        parser.error(f"{len(args.runs)} runs but {len(args.datasets)} datasets: give one dataset per run")
    set_threads(args.threads)
    started = time.perf_counter()
    rows = [criterion_of(run, data, args.images) for run, data in zip(args.runs, args.datasets)]
    write_result(args.out, {"benchmark": "masking_truth", "machine": machine(), "shares": list(SHARES),
                            "seconds": round(time.perf_counter() - started, 1), "rows": rows}, table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
