"""The training loop every trained stage shares: poly LR, AMP on GPU, a checkpoint per epoch, exact resume.

A killed run restarts from its last checkpoint and ends with the same weights as an
uninterrupted one, provided each epoch's batches depend only on (seed, epoch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tagseg.progress import track
from tagseg.rundir import ArtifactDir, atomic_write
from tagseg.threads import worker_count

log = logging.getLogger(__name__)


def epoch_loader(crops: torch.utils.data.Dataset, batch_size: int, seed: int, epoch: int,
                 workers: int = 1) -> torch.utils.data.DataLoader:
    """One epoch's batches: the shuffle depends only on (seed, epoch); an incomplete last batch is dropped.

    ``workers`` loader processes, capped at the thread budget (torch runs each single-threaded)."""
    crops.epoch = epoch
    order = torch.Generator().manual_seed(seed * 1000 + epoch)
    workers = worker_count(workers)
    return torch.utils.data.DataLoader(crops, batch_size=batch_size, shuffle=True, generator=order, drop_last=True,
                                       num_workers=workers if workers > 1 else 0)


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


def train_epochs(net: nn.Module, optimizer: torch.optim.Optimizer, stage: ArtifactDir, checkpoint_path: Path, *,
                 crops: torch.utils.data.Dataset, epochs: int, batch_size: int, seed: int, workers: int,
                 step_loss: Callable[[object, int, int], dict], set_train_mode: Callable[[], None],
                 device: str, name: str) -> tuple[list[dict], int]:
    """Run (or resume) ``epochs`` epochs; returns the per-epoch history (mean losses, seconds) and
    how many epochs this call ran.

    ``crops`` is a dataset with an ``epoch`` attribute its augmentation depends on;
    ``step_loss(batch, step, total_steps)`` returns a dict of losses whose ``loss`` entry is minimised.
    """
    on_gpu = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=on_gpu)
    history, first_epoch = [], 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, first_epoch = state["history"], state["epoch"]
        log.info("%s: resuming after epoch %d of %d", name, first_epoch, epochs)
    steps_per_epoch = len(crops) // batch_size
    total_steps = steps_per_epoch * epochs
    for epoch in range(first_epoch, epochs):
        set_train_mode()
        started, sums = time.perf_counter(), {}
        batches = epoch_loader(crops, batch_size, seed, epoch, workers)
        for index, batch in enumerate(track(batches, steps_per_epoch, f"{name} epoch {epoch + 1}/{epochs}")):
            step = epoch * steps_per_epoch + index
            poly_lr(optimizer, step, total_steps)
            with torch.autocast("cuda", enabled=on_gpu):
                parts = step_loss(batch, step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        history.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 2),
                        **{k: round(v / steps_per_epoch, 5) for k, v in sums.items()}})
        log.info("%s: epoch %d loss %.4f (%.0f s)", name, epoch + 1, history[-1]["loss"], history[-1]["seconds"])
        state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "history": history, "epoch": epoch + 1}
        atomic_write(checkpoint_path, lambda tmp: torch.save(state, tmp))
        stage.record(history=history)
    return history, epochs - first_epoch


def mean_epoch_seconds(history: list[dict]) -> float:
    return round(float(np.mean([h["seconds"] for h in history])), 2)
