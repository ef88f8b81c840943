"""Saliency sources against the masks (CPU): OpenCV's model-free substitutes on msrc-voc and on the demo data.

    .venv/bin/python benchmarks/saliency_sources.py

Runs the saliency stage with each OpenCV method (Otsu per map, the default threshold) on msrc-voc's
train split and on the synthetic demo data (``make demo``'s generator settings, written under --runs),
and scores the masks against the ground truth with every object class as foreground: foreground
IoU / precision / recall, mIoU of background and foreground, and seconds per image. The
ground-truth source scores 100 by construction and is left out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import MSRC, ROOT, machine, pct, write_result
from tagseg.data.dataset import open_dataset
from tagseg.data.make_synthetic import write_synthetic_dataset
from tagseg.runtime import setup_logging
from tagseg.stages.saliency import SUBSTITUTES, SaliencyConfig, make_saliency


def demo_data(root: Path) -> Path:
    """The demo's dataset (`make demo`: 200 images, at most 2 objects of 0.3-0.6 of the short side)."""
    write_synthetic_dataset(root, 200, 0, (160, 120), 0.25, 2, (0.3, 0.6))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_saliency_sources")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "saliency_sources.json")
    args = parser.parse_args()
    setup_logging("WARNING")
    rows = []
    for name, root in (("msrc-voc", MSRC), ("demo", demo_data(args.runs / "demo_data"))):
        dataset = open_dataset(root, "train")
        for source in SUBSTITUTES:
            started = time.perf_counter()
            manifest = make_saliency(dataset, args.runs / f"{name}_{source}", SaliencyConfig(source=source),
                                     force=True)
            seconds = time.perf_counter() - started
            foreground = manifest["metrics"]["per_class"]["foreground"]
            rows.append({"dataset": name, "images": len(dataset), "source": source,
                         "foreground_iou": pct(foreground["iou"]), "precision": pct(foreground["precision"]),
                         "recall": pct(foreground["recall"]), "miou": pct(manifest["metrics"]["miou"]),
                         "seconds_per_image": round(seconds / len(dataset), 4)})
    lines = ["| dataset | images | source | foreground IoU | precision | recall | mIoU (bg, fg) | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['images']} | {r['source']} | {r['foreground_iou']:.1f} | {r['precision']:.1f} | "
              f"{r['recall']:.1f} | {r['miou']:.1f} | {r['seconds_per_image']} |" for r in rows]
    write_result(args.out, {"benchmark": "saliency_sources", "command": "python benchmarks/saliency_sources.py",
                            "machine": machine(), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
