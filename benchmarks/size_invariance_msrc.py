"""Size invariance (CPU): the same recipe on msrc-voc and on msrc-voc rescaled to a 640 px long side.

    .venv/bin/python benchmarks/size_invariance_msrc.py            # SILOP's classifier and CAM settings
    .venv/bin/python benchmarks/size_invariance_msrc.py --set stages.train_cam.head=cam

Builds the rescaled copy under --runs (photos bicubic, masks nearest; never committed), then for
each dataset trains the recipe's classifier on train and takes CAMs of val with the recipe's
make_cam settings, `image_size` left at `auto`. With size normalisation both see the same pixel
sizes at the network, so their CAM mIoU should agree within seed noise. Result:
benchmarks/results/size_invariance_msrc.json and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from common import MSRC, ROOT, class_iou, pct, write_result
from tagseg.data.dataset import open_dataset
from tagseg.data.imageio import read_image, read_mask, write_image, write_mask
from tagseg.pipeline import load_recipe
from tagseg.runtime import setup_logging
from tagseg.stages.make_cam import make_cams
from tagseg.stages.train_cam import train_cam


def rescaled_copy(source: Path, target: Path, long_side: int) -> Path:
    """msrc-voc with every photo and mask rescaled to ``long_side`` (made once, reused)."""
    if (target / "done").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("JPEGImages", "SegmentationClass"))
    dataset = open_dataset(source)
    for record in dataset.records:
        image, _ = read_image(record.image_path)
        height, width = image.shape[:2]
        factor = long_side / max(height, width)
        size = (round(width * factor), round(height * factor))
        write_image(target / "JPEGImages" / record.image_path.name, cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
        if record.mask_path is not None:
            mask = read_mask(record.mask_path, dataset.num_classes)
            write_mask(target / "SegmentationClass" / record.mask_path.name,
                       cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST).astype(np.uint8))
    (target / "done").write_text("")
    return target


def run_one(name: str, data: Path, run: Path, configs: dict) -> dict:
    train, val = open_dataset(data, "train"), open_dataset(data, "val")
    trained = train_cam(train, run, configs["train_cam"], eval_dataset=val)
    cams = make_cams(val, run, configs["make_cam"])
    free = cams["label_free"]
    return {"dataset": name, "image_size": cams["config"]["image_size"],
            "val_map": pct(trained["classification"]["map"]), "train_steps": trained["steps"],
            "oracle": {"threshold": cams["threshold"], "miou": pct(cams["metrics"]["miou"]), "class_iou": class_iou(cams)},
            "label_free": {"threshold": free["threshold"], "miou": pct(free["metrics"]["miou"])},
            "train_seconds": trained["timings"]["seconds"], "cam_images_per_second": cams.get("images_per_second")}


def table(rows: list[dict]) -> str:
    lines = ["| dataset | image_size | val mAP | CAM mIoU (val, oracle) | label-free |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['image_size']} | {r['val_map']} | {r['oracle']['miou']} | {r['label_free']['miou']} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "silop.yaml")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="recipe overrides KEY=VALUE")
    parser.add_argument("--long-side", type=int, default=640)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_size_invariance")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "size_invariance_msrc.json")
    args = parser.parse_args()
    setup_logging("INFO")
    _, configs = load_recipe(args.recipe, args.overrides)
    large = rescaled_copy(MSRC, args.runs / f"msrc_{args.long_side}", args.long_side)
    rows = [run_one("msrc-voc", MSRC, args.runs / "run_orig", configs),
            run_one(f"msrc-voc at {args.long_side} px", large, args.runs / f"run_{args.long_side}", configs)]
    result = {"command": " ".join(sys.argv), "recipe": str(args.recipe.relative_to(ROOT)), "overrides": args.overrides,
              "rows": rows, "difference_oracle": round(rows[1]["oracle"]["miou"] - rows[0]["oracle"]["miou"], 2),
              "difference_label_free": round(rows[1]["label_free"]["miou"] - rows[0]["label_free"]["miou"], 2)}
    write_result(args.out, result, table(rows) + f"\n\nDifference (640 - 320): oracle {result['difference_oracle']}, "
                                                 f"label-free {result['difference_label_free']}.\n")
    print(table(rows))


if __name__ == "__main__":
    main()
