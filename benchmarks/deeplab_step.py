"""Seconds per DeepLab training step (forward, backward, AdamW update) on this machine.

    .venv/bin/python benchmarks/deeplab_step.py [--batch 8 --crop 320 --repeats 3]

Both heads on the default backbone, with contiguous and channels-last memory (train_seg uses
channels-last). Random inputs: the step time does not depend on the pixels. Writes
benchmarks/results/deeplab_step.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import ROOT, write_result
from tagseg.models.backbones import create_backbone
from tagseg.models.segmentation import HEADS, build_segmentation_net


def step_seconds(head: str, channels_last: bool, batch: int, crop: int, repeats: int) -> float:
    torch.manual_seed(0)
    net = build_segmentation_net(head, create_backbone(weights=None), num_classes=15).train()
    images = torch.randn(batch, 3, crop, crop)
    masks = torch.randint(0, 15, (batch, crop, crop))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-4)

    def step() -> None:
        loss = F.cross_entropy(net(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deeplab_step.json")
    args = parser.parse_args()
    rows = [{"head": head, "channels_last": cl,
             "seconds_per_step": round(step_seconds(head, cl, args.batch, args.crop, args.repeats), 3)}
            for head in HEADS for cl in (False, True)]
    result = {"benchmark": "deeplab_step", "batch": args.batch, "crop": args.crop, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "rows": rows}
    lines = [f"Batch {args.batch}, {args.crop}x{args.crop} crops, {torch.get_num_threads()} threads.", "",
             "| head | memory format | s / step |", "|---|---|---|"]
    lines += [f"| {r['head']} | {'channels-last' if r['channels_last'] else 'contiguous'} | "
              f"{r['seconds_per_step']} |" for r in rows]
    write_result(args.out, result, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
