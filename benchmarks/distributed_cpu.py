"""One process against two (torch.distributed with gloo, CPU): a training epoch and a per-image stage on msrc-voc.

    .venv/bin/python benchmarks/distributed_cpu.py

One epoch of train_cam (plain CAM, 346 images, batch 8) and make_cam on its model, each run by one
process with every core and by two processes with one core each (``torchrun``'s layout on this
machine). Reports the wall time of each, the largest weight difference after the epoch (two
processes average the gradients of half-batches: equal up to float rounding) and whether the CAM
files are byte-identical.
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
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        from tagseg.distributed import init_from_env

        init_from_env("cpu")
    try:
        dataset = open_dataset(MSRC, "train")
        if kind == "train":
            train_cam(dataset, run, CamTrainConfig(**TRAIN))
        else:
            make_cams(dataset, run, MakeCamConfig(scales=(1.0, 2.0)))
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def timed(kind: str, world: int, run: Path) -> float:
    started = time.perf_counter()
    if world == 1:
        stage(0, 1, 0, kind, run, os.cpu_count() or 1)
    else:
        torch.multiprocessing.spawn(stage, args=(world, free_port(), kind, run, 1), nprocs=world)
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_distributed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed_cpu.json")
    args = parser.parse_args()
    shutil.rmtree(args.runs, ignore_errors=True)
    runs = {world: args.runs / f"{world}proc" for world in (1, 2)}
    rows = [{"stage": "train_cam (1 epoch)", "processes": world, "seconds": timed("train", world, runs[world])}
            for world in (1, 2)]
    weights = [torch.load(runs[w] / "train_cam" / "model.pt", weights_only=False)["state_dict"] for w in (1, 2)]
    difference = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    shutil.rmtree(runs[2] / "train_cam")
    shutil.copytree(runs[1] / "train_cam", runs[2] / "train_cam")  # the same model for both CAM runs
    rows += [{"stage": "make_cam (scales 1, 2)", "processes": world, "seconds": timed("cams", world, runs[world])}
             for world in (1, 2)]
    files = sorted(p.name for p in (runs[1] / "make_cam").glob("*.npz"))
    identical = all((runs[1] / "make_cam" / n).read_bytes() == (runs[2] / "make_cam" / n).read_bytes() for n in files)
    lines = ["| stage | processes | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['processes']} | {r['seconds']} |" for r in rows]
    lines += ["", f"Largest weight difference after the epoch: {difference:.2e}. CAM files byte-identical: "
                  f"{'yes' if identical else 'no'} ({len(files)} files)."]
    write_result(args.out, {"benchmark": "distributed_cpu", "dataset": str(MSRC), "split": "train",
                            "command": "python benchmarks/distributed_cpu.py", "machine": machine(), "rows": rows,
                            "max_weight_difference": difference, "cams_identical": identical}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
