"""One process against two (torch.distributed with gloo, CPU): a training epoch and a per-image stage on msrc-voc.

    .venv/bin/python benchmarks/distributed_cpu.py

One epoch of train_cam (plain CAM, 346 images, batch 8, AdamW) and make_cam on its model, each run by
one process with every core and by two processes with one core each (``torchrun``'s layout on this
machine); make_cam also by one process with one core. Reports the wall time of each, the largest
weight difference after the epoch (two processes average the gradients of half-batches: equal up to
float rounding, which AdamW's first steps magnify) and whether the CAM files of one and two
processes are byte-identical at one thread per process (a convolution's float sums depend on the
thread count, so files made with another count differ in the last bits).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import time
from pathlib import Path

import torch

from common import MSRC, ROOT, machine, write_result
from tagseg.data.dataset import open_dataset
from tagseg.distributed import join_local
from tagseg.stages.make_cam import MakeCamConfig, make_cams
from tagseg.stages.train_cam import CamTrainConfig, train_cam

TRAIN = dict(head="cam", epochs=1, min_steps=0, batch_size=8, seed=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage(rank: int, world: int, port: int, kind: str, run: Path, threads: int) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        join_local(rank, world, port)
    try:
        dataset = open_dataset(MSRC, "train")
        if kind == "train":
            train_cam(dataset, run, CamTrainConfig(**TRAIN))
        else:
            make_cams(dataset, run, MakeCamConfig(scales=(1.0, 2.0)))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def timed(kind: str, world: int, run: Path, threads: int) -> float:
    started = time.perf_counter()
    if world == 1:
        stage(0, 1, 0, kind, run, threads)
    else:
        torch.multiprocessing.spawn(stage, args=(world, free_port(), kind, run, threads), nprocs=world)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_distributed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed_cpu.json")
    args = parser.parse_args()
    shutil.rmtree(args.runs, ignore_errors=True)
    cores = os.cpu_count() or 1
    layouts = {"1x{}".format(cores): (1, cores), "2x1": (2, 1), "1x1": (1, 1)}  # processes x threads each
    runs = {name: args.runs / name for name in layouts}
    rows = [{"stage": "train_cam (1 epoch)", "processes": layouts[name][0], "threads_each": layouts[name][1],
             "seconds": timed("train", *layouts[name][:1], runs[name], layouts[name][1])}
            for name in list(layouts)[:2]]
    weights = [torch.load(runs[n] / "train_cam" / "model.pt", weights_only=False)["state_dict"]
               for n in list(layouts)[:2]]
    difference = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    first = runs[list(layouts)[0]] / "train_cam"
    for name in list(layouts)[1:]:  # the same model for every CAM run
        shutil.rmtree(runs[name] / "train_cam", ignore_errors=True)
        shutil.copytree(first, runs[name] / "train_cam")
    rows += [{"stage": "make_cam (scales 1, 2)", "processes": layouts[name][0], "threads_each": layouts[name][1],
              "seconds": timed("cams", layouts[name][0], runs[name], layouts[name][1])} for name in layouts]
    files = sorted(p.name for p in (runs["1x1"] / "make_cam").glob("*.npz"))
    identical = all((runs["1x1"] / "make_cam" / n).read_bytes() == (runs["2x1"] / "make_cam" / n).read_bytes()
                    for n in files)
    lines = ["| stage | processes | threads each | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['processes']} | {r['threads_each']} | {r['seconds']} |" for r in rows]
    lines += ["", f"Largest weight difference after the epoch (1 against 2 processes): {difference:.2e}. CAM files of "
                  f"1 and 2 processes at one thread each byte-identical: {'yes' if identical else 'no'} "
                  f"({len(files)} files)."]
    write_result(args.out, {"benchmark": "distributed_cpu", "dataset": str(MSRC), "split": "train",
                            "command": "python benchmarks/distributed_cpu.py", "machine": machine(), "rows": rows,
                            "max_weight_difference": difference, "cams_identical": identical}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
