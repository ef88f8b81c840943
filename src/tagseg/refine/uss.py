"""Unsupervised segmentation (USS, Kanezaki 2018): simplify an image into a few colour clusters.

A tiny conv net is trained on one image against its own predictions: each pixel's target is
the cluster (argmax channel) that wins a majority vote inside the pixel's pre-segment (SLIC
or Quickshift superpixels), so clusters become constant inside pre-segments and merge
across similar ones. Training stops after ``iterations`` steps or once fewer than
``min_clusters`` clusters remain. SILOP draws object perimeters on the simplified image.

Several same-sized images train together as one grouped network (``groups`` = images), so
every image keeps its own weights and batch-norm statistics: batching changes speed, not
results (up to float rounding).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
from skimage.segmentation import quickshift, slic
from torch import nn

Presegmentation = Literal["slic", "quickshift"]


def presegment(image: np.ndarray, method: Presegmentation, *, slic_segments: int = 1000,
               slic_compactness: float = 15.0, quickshift_kernel: float = 3.0, quickshift_max_dist: float = 6.0,
               quickshift_ratio: float = 0.29, seed: int = 0) -> np.ndarray:
    """Superpixel labels (H, W) int, numbered from 0."""
    if method == "slic":
        labels = slic(image, n_segments=slic_segments, compactness=slic_compactness, start_label=0)
    elif method == "quickshift":
        labels = quickshift(image, kernel_size=quickshift_kernel, max_dist=quickshift_max_dist,
                            ratio=quickshift_ratio, rng=seed)
    else:
        raise ValueError(f"unknown pre-segmentation {method!r}")
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


class GroupedUssNet(nn.Module):
    """``images`` independent Kanezaki nets run as one grouped net: conv3x3-ReLU-BN blocks, 1x1 conv-BN."""

    def __init__(self, images: int, clusters: int, layers: int) -> None:
        super().__init__()
        blocks, channels = [], 3
        for _ in range(layers):
            blocks += [nn.Conv2d(images * channels, images * clusters, 3, padding=1, groups=images), nn.ReLU(),
                       nn.BatchNorm2d(images * clusters)]
            channels = clusters
        blocks += [nn.Conv2d(images * clusters, images * clusters, 1, groups=images), nn.BatchNorm2d(images * clusters)]
        self.body = nn.Sequential(*blocks)
        self.images, self.clusters = images, clusters

    def seed_groups(self, seeds: list[int]) -> None:
        """Initialise image i's weights exactly as a one-image net seeded with ``seeds[i]``."""
        for index, seed in enumerate(seeds):
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            single = GroupedUssNet(1, self.clusters, (len(self.body) - 2) // 3)
            torch.random.set_rng_state(generator_state)
            for mine, theirs in zip(self.body.parameters(), single.body.parameters()):
                part = mine.shape[0] // self.images
                with torch.no_grad():
                    mine[index * part:(index + 1) * part] = theirs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> cluster logits (B, q, H, W)."""
        batch, _, height, width = images.shape
        logits = self.body(images.reshape(1, batch * 3, height, width))
        return logits.reshape(batch, self.clusters, height, width)


def _majority_targets(predicted: torch.Tensor, segments: torch.Tensor, num_segments: torch.Tensor,
                      clusters: int) -> torch.Tensor:
    """Per image, every pixel gets the most frequent predicted cluster of its pre-segment."""
    batch = predicted.shape[0]
    offsets = torch.cumsum(torch.cat([num_segments.new_zeros(1), num_segments[:-1]]), 0)
    flat_segments = (segments + offsets[:, None]).reshape(-1)
    votes = torch.zeros(int(num_segments.sum()) * clusters, dtype=torch.int64, device=predicted.device)
    votes.index_add_(0, flat_segments * clusters + predicted.reshape(-1), torch.ones_like(flat_segments))
    winners = votes.view(-1, clusters).argmax(1)
    return winners[flat_segments].view(batch, -1)


def unsupervised_segmentation(images: list[np.ndarray], presegments: list[np.ndarray], *, clusters: int = 32,
                              iterations: int = 64, lr: float = 0.05, momentum: float = 0.9,
                              min_clusters: int = 20, layers: int = 2, seeds: list[int] | None = None,
                              device: str = "cpu") -> list[np.ndarray]:
    """Cluster labels (H, W) for same-sized RGB images, each numbered 0..n-1 with n <= ``clusters``."""
    if not images:
        return []
    if len({image.shape for image in images}) != 1:
        raise ValueError("unsupervised_segmentation batches must hold images of one size")
    seeds = seeds if seeds is not None else [0] * len(images)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).to(device)
    segments = torch.from_numpy(np.stack(presegments).reshape(len(images), -1)).long().to(device)
    num_segments = segments.max(1).values + 1
    net = GroupedUssNet(len(images), clusters, layers)
    net.seed_groups(seeds)
    net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    results: list[torch.Tensor | None] = [None] * len(images)
    for _ in range(iterations):
        logits = net(batch).flatten(2)
        predicted = logits.argmax(1)
        active = [i for i, result in enumerate(results) if result is None]
        for i in active:
            if torch.unique(predicted[i]).numel() < min_clusters:
                results[i] = predicted[i].detach().clone()
        active = [i for i in active if results[i] is None]
        if not active:
            break
        targets = _majority_targets(predicted.detach(), segments, num_segments, clusters)
        loss = sum(nn.functional.cross_entropy(logits[i:i + 1], targets[i:i + 1]) for i in active)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    else:
        with torch.no_grad():
            final = net(batch).flatten(2).argmax(1)
        results = [final[i] if result is None else result for i, result in enumerate(results)]
    height, width = images[0].shape[:2]
    return [np.unique(r.cpu().numpy(), return_inverse=True)[1].reshape(height, width) for r in results]


def reduced(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image shrunk (area interpolation) so its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a label map to (height, width)."""
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels.astype(np.int32), (width, height), interpolation=cv2.INTER_NEAREST)
