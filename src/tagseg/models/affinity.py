"""Networks that predict pixel affinities at stride 4 for the random walk.

- ``affinitynet`` (PSA): a feature embedding f; the affinity of pixels i, j within the
  radius is exp(-mean |f_i - f_j|).
- ``boundary`` (IRN): a class-agnostic boundary map B; the affinity of i, j is
  1 - max B on the segment between them (raised to beta later, in the walk).

Both read the backbone's multi-level features with the backbone frozen (as IRN does): only
the small heads train, which keeps training cheap on a CPU. Both are trained with PSA's
balanced loss on pairs of seed pixels from confident CAM regions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from tagseg.models.backbones import Backbone
from tagseg.refine.affinity_labels import affinity_loss
from tagseg.refine.random_walk import as_offsets, path_affinities, shifted_overlap

KINDS = ("affinitynet", "boundary")
FEATURE_STRIDE = 4


def _branch(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(4, out_channels),
                         nn.ReLU(inplace=True))


class _EmbeddingDistances(torch.autograd.Function):
    """mean_c |f(p) - f(p + offset_k)| for every offset, one offset at a time.

    The plain broadcast formulation materialises (and keeps for backward) K shifted copies of
    the embedding: about 1 GB per batch of eight 320x320 crops at radius 5, slow to allocate
    and to stream through on a CPU. Here backward recomputes each offset's sign instead, so
    memory stays at one embedding plus the (B, K, h, w) output. A partner outside the map
    counts as 0 (the loss never uses such pairs).
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
        ctx.save_for_backward(features)
        ctx.offsets = offsets
        height, width = features.shape[-2:]
        outside = features.abs().mean(dim=1)
        out = outside.unsqueeze(1).repeat(1, len(offsets), 1, 1)
        for k, (dy, dx) in enumerate(offsets):
            y0, y1, x0, x1 = shifted_overlap(height, width, dy, dx)
            here = features[..., y0:y1, x0:x1]
            there = features[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]
            out[:, k, y0:y1, x0:x1] = (here - there).abs().mean(dim=1)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (features,) = ctx.saved_tensors
        _, channels, height, width = features.shape
        grad = torch.zeros_like(features)
        weights = grad_out / channels
        alone = weights.new_zeros(weights.shape[0], height, width)  # summed weight of each pixel's partner-less pairs
        for k, (dy, dx) in enumerate(ctx.offsets):
            y0, y1, x0, x1 = shifted_overlap(height, width, dy, dx)
            outside = torch.ones_like(alone, dtype=torch.bool)
            outside[:, y0:y1, x0:x1] = False
            alone += torch.where(outside, weights[:, k], 0)
            inside = (features[..., y0:y1, x0:x1] - features[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx]).sign_()
            inside *= weights[:, k, y0:y1, x0:x1].unsqueeze(1)
            grad[..., y0:y1, x0:x1] += inside
            grad[..., y0 + dy:y1 + dy, x0 + dx:x1 + dx] -= inside
        return grad + features.sign() * alone.unsqueeze(1), None


def embedding_distances(features: torch.Tensor, offsets) -> torch.Tensor:
    """(B, K, h, w) mean absolute channel difference between each pixel and pixel + offset_k."""
    return _EmbeddingDistances.apply(features, [tuple(o) for o in as_offsets(offsets).tolist()])


class AffinityModel(nn.Module, ABC):
    """Frozen backbone + per-level 1x1 branches fused at stride 4; subclasses turn the fused map into affinities."""

    def __init__(self, backbone: Backbone, branch_channels: int, fused_channels: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.branches = nn.ModuleList(_branch(c, branch_channels) for c in backbone.level_channels[1:])
        self.fuse = _branch(branch_channels * len(self.branches), fused_channels)

    def train(self, mode: bool = True) -> "AffinityModel":
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics stay ImageNet's
        return self

    def new_modules(self) -> list[nn.Module]:
        return [m for m in self.children() if m is not self.backbone]

    def fused(self, images: torch.Tensor) -> torch.Tensor:
        """(B, fused_channels, ceil(H/4), ceil(W/4))."""
        with torch.no_grad():
            _, levels = self.backbone.forward_levels(images)
        size = levels[1].shape[-2:]
        maps = [F.interpolate(branch(level), size=size, mode="bilinear", align_corners=False)
                if level.shape[-2:] != size else branch(level) for branch, level in zip(self.branches, levels[1:])]
        return self.fuse(torch.cat(maps, dim=1))

    @abstractmethod
    def affinities(self, images: torch.Tensor, offsets) -> torch.Tensor:
        """Affinities (B, K, h, w) in [0, 1] between each stride-4 pixel and pixel + offset_k."""

    def loss(self, images: torch.Tensor, pairs: dict[str, torch.Tensor], offsets) -> dict:
        return affinity_loss(self.affinities(images, offsets), pairs)


class AffinityNet(AffinityModel):
    """PSA: affinity = exp(-mean_c |f_i - f_j|) of a learned embedding f."""

    def __init__(self, backbone: Backbone, embedding: int = 128) -> None:
        super().__init__(backbone, branch_channels=64, fused_channels=embedding)
        self.embed = nn.Conv2d(embedding, embedding, 1)

    def affinities(self, images, offsets):
        return torch.exp(-embedding_distances(self.embed(self.fused(images)).float(), offsets))


class BoundaryNet(AffinityModel):
    """IRN: a boundary map B in [0, 1]; affinity = 1 - max B along the segment."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__(backbone, branch_channels=32, fused_channels=64)
        self.head = nn.Conv2d(64, 1, 1)

    def boundary(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) boundary probabilities at stride 4."""
        return torch.sigmoid(self.head(self.fused(images)))[:, 0]

    def affinities(self, images, offsets):
        return path_affinities(self.boundary(images), offsets).transpose(0, 1)


def build_affinity_model(kind: str, backbone: Backbone) -> AffinityModel:
    if kind == "affinitynet":
        return AffinityNet(backbone)
    if kind == "boundary":
        return BoundaryNet(backbone)
    raise ValueError(f"unknown affinity network {kind!r}; choose from {', '.join(KINDS)}")
