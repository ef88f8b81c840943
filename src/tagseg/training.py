"""The training loop every trained stage shares: a step budget, poly LR, AMP on GPU, a checkpoint per pass,
exact resume.

A killed run restarts from its last checkpoint and ends with the same weights as an
uninterrupted one, provided each epoch's batches depend only on (seed, epoch).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn

from tagseg import distributed
from tagseg.errors import ConfigError
from tagseg.progress import track
from tagseg.rundir import ArtifactDir, atomic_write
from tagseg.threads import worker_count

log = logging.getLogger(__name__)


# the training stages' ``sync_batchnorm`` key (see :func:`train_epochs`)
SyncBatchNorm = Annotated[bool, Field(description="under torchrun on GPUs: BatchNorm layers that train normalise "
                                                  "over the whole global batch (SyncBatchNorm); frozen ones are "
                                                  "unaffected")]


def epoch_batches(items: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """One epoch's global batches (a shuffle that depends only on (seed, epoch); an incomplete last batch
    dropped), each cut into ``world`` equal parts of which this process takes part ``rank``.

    With one process the order is the one a shuffling DataLoader with this generator gives (it draws
    a worker seed before the permutation), so runs made before several processes existed repeat."""
    if batch_size % world:
        raise ConfigError(f"batch_size {batch_size} does not split over {world} processes; use a multiple of {world}")
    order = torch.Generator().manual_seed(seed * 1000 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=order)  # the DataLoader's worker seed
    permutation = torch.randperm(items, generator=order).tolist()
    share = batch_size // world
    return [permutation[start + rank * share:start + (rank + 1) * share]
            for start in range(0, items - batch_size + 1, batch_size)]


def epoch_loader(crops: torch.utils.data.Dataset, batch_size: int, seed: int, epoch: int,
                 workers: int = 1) -> torch.utils.data.DataLoader:
    """One epoch's batches of this process (:func:`epoch_batches`); ``workers`` loader processes, capped at
    the thread budget (torch runs each single-threaded)."""
    crops.epoch = epoch
    workers = worker_count(workers)
    batches = epoch_batches(len(crops), batch_size, seed, epoch, distributed.rank(), distributed.world_size())
    return torch.utils.data.DataLoader(crops, batch_sampler=batches, num_workers=workers if workers > 1 else 0)


class _Step(nn.Module):
    """A training step as a module, so DistributedDataParallel sees the forward pass of every head's loss
    (heads compute their losses in methods of their own, not in ``forward``)."""

    def __init__(self, net: nn.Module, step_loss: Callable) -> None:
        super().__init__()
        self.net, self.step_loss = net, step_loss

    def forward(self, batch, step: int, total: int) -> dict:
        return self.step_loss(batch, step, total)


def build_optimizer(net: nn.Module, new_modules: list[nn.Module], kind: str, lr: float, new_lr_multiplier: float,
                    momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD or AdamW with ``new_lr_multiplier`` x ``lr`` for layers trained from scratch; frozen parameters left out."""
    new = {id(p) for m in new_modules for p in m.parameters()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in new], "lr": lr, "base_lr": lr},
              {"params": [p for p in trainable if id(p) in new], "lr": lr * new_lr_multiplier,
               "base_lr": lr * new_lr_multiplier}]
    groups = [g for g in groups if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def set_train_mode(net: nn.Module, freeze_bn: bool) -> None:
    """Training mode, except the backbone's BatchNorm layers when ``freeze_bn`` (small batches)."""
    net.train()
    if freeze_bn:
        for module in net.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def poly_lr(optimizer: torch.optim.Optimizer, step: int, total: int, power: float = 0.9) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * (1 - step / total) ** power


def training_steps(items: int, batch_size: int, epochs: int, steps: int | None, min_steps: int) -> int:
    """How many optimisation steps a stage trains for: ``steps`` when given, else ``epochs`` passes over the
    data but at least ``min_steps``, so a small dataset still gets enough updates (a large one is bounded by
    its epochs). An incomplete last batch of a pass is dropped."""
    if steps is not None:
        return steps
    return max(epochs * (items // batch_size), min_steps)


def train_epochs(net: nn.Module, optimizer: torch.optim.Optimizer, stage: ArtifactDir, checkpoint_path: Path, *,
                 crops: torch.utils.data.Dataset, steps: int, batch_size: int, seed: int, workers: int,
                 step_loss: Callable[[object, int, int], dict], set_train_mode: Callable[[], None],
                 device: str, name: str, sync_batchnorm: bool = False) -> tuple[list[dict], int]:
    """Run (or resume) ``steps`` optimisation steps in passes over ``crops`` (the last pass cut short);
    returns the per-pass history (mean losses, steps, seconds) and how many steps this call ran.

    The poly learning-rate schedule runs over the ``steps``; a checkpoint is written after every pass.
    ``crops`` is a dataset with an ``epoch`` attribute its augmentation depends on;
    ``step_loss(batch, step, total_steps)`` returns a dict of losses whose ``loss`` entry is minimised.
    Under torchrun the processes train one model (DistributedDataParallel, each its share of every
    batch); rank 0 writes the checkpoints, which any number of processes can resume from. With
    ``sync_batchnorm`` the BatchNorm layers that train normalise over the whole global batch there
    (SyncBatchNorm: GPUs only); with one process it changes nothing.
    """
    on_gpu = device.startswith("cuda")
    if sync_batchnorm and distributed.active():
        if not on_gpu:
            raise ConfigError(f"{name}: sync_batchnorm needs a GPU per process (PyTorch's SyncBatchNorm runs on CUDA "
                              "only); set it false for CPU processes")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # swaps the layers in place, keeping their parameters
    scaler = torch.amp.GradScaler("cuda", enabled=on_gpu)
    history, first_epoch = [], 0
    steps_per_epoch = len(crops) // batch_size
    epochs = -(-steps // steps_per_epoch)
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, first_epoch = state["history"], state["epoch"]
        log.info("%s: resuming after pass %d of %d", name, first_epoch, epochs)
    steps_run = 0
    step_module = _Step(net, step_loss)
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        on_cuda = device.startswith("cuda")
        step_module = DistributedDataParallel(step_module, device_ids=[torch.device(device)] if on_cuda else None,
                                              find_unused_parameters=True)
    for epoch in range(first_epoch, epochs):
        set_train_mode()
        started, sums = time.perf_counter(), {}
        in_this_pass = min(steps_per_epoch, steps - epoch * steps_per_epoch)
        batches = itertools.islice(epoch_loader(crops, batch_size, seed, epoch, workers), in_this_pass)
        for index, batch in enumerate(track(batches, in_this_pass, f"{name} pass {epoch + 1}/{epochs}")):
            step = epoch * steps_per_epoch + index
            poly_lr(optimizer, step, steps)
            with torch.autocast("cuda", enabled=on_gpu):
                parts = step_module(batch, step, steps)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        steps_run += in_this_pass
        means = distributed.mean_over_ranks({k: v / in_this_pass for k, v in sums.items()})
        history.append({"epoch": epoch + 1, "steps": in_this_pass, "seconds": round(time.perf_counter() - started, 2),
                        **{k: round(v, 5) for k, v in means.items()}})
        log.info("%s: pass %d loss %.4f (%.0f s)", name, epoch + 1, history[-1]["loss"], history[-1]["seconds"])
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "history": history, "epoch": epoch + 1}
        distributed.on_main(lambda: atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp)))
        stage.record(history=history)
    return history, steps_run


def mean_epoch_seconds(history: list[dict]) -> float:
    """Mean seconds of a whole pass over the data (a cut-short last pass left out)."""
    longest = max(h.get("steps", 0) for h in history)
    return round(float(np.mean([h["seconds"] for h in history if h.get("steps", 0) == longest])), 2)
