"""Several processes, one run: PyTorch's own distributed engine, launched by ``torchrun``.

``torchrun --nproc-per-node N -m tagseg run RECIPE`` (or ``tagseg run RECIPE --nproc N``, which
starts torchrun itself) gives each process a rank. The training stages train one model together
(:func:`tagseg.training.train_epochs` wraps it in DistributedDataParallel: each process takes its
share of every global batch, gradients are averaged); every per-image stage splits its images
(:meth:`tagseg.rundir.ArtifactDir.share`); rank 0 alone writes checkpoints, models, manifests and
logs. Backends: nccl on GPUs, gloo on CPUs. Without torchrun nothing here does anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun describes (no-op without torchrun, or when already joined)."""
    if not launched() or dist.is_initialized():
        return
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if on_gpu else "gloo")


def join_local(rank: int, world: int, port: int) -> None:
    """Join a group of ``world`` CPU processes on this machine as torchrun would set it up (gloo on
    127.0.0.1:``port``): for processes started by ``torch.multiprocessing.spawn``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    init_from_env("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(action: Callable[[], object]) -> None:
    """Run ``action`` on rank 0 only (a file every process would write alike), then wait for it."""
    if is_main():
        action()
    barrier()


def local_device(device: str) -> str:
    """``cuda`` becomes this process's own GPU (``cuda:<LOCAL_RANK>``) under torchrun."""
    if launched() and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's sum over the processes (an all-reduce in float64: counts stay exact; it also waits for
    every process)."""
    if not active() or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # nccl reduces GPU tensors only
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {k: float(v) for k, v in zip(keys, tensor)}


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each key's mean over the processes (what a pass's logged losses are)."""
    return {k: v / world_size() for k, v in sum_over_ranks(values).items()}
