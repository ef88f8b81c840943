"""Networks that predict pixel affinities at stride 4 for the random walk.

- ``affinitynet`` (PSA): a feature embedding f; the affinity of pixels i, j within the
  radius is exp(-mean |f_i - f_j|).
- ``boundary`` (IRN): a class-agnostic boundary map B; the affinity of i, j is
  1 - max B on the segment between them (raised to beta later, in the walk).
- ``benet`` (BES): a boundary map like IRN's, from every backbone level, trained directly on
  synthesised boundary labels (BES eq. 4) instead of pixel pairs; same path affinities (eq. 5).

All read the backbone's multi-level features with the backbone frozen by default (as IRN and
BES do): only the small heads train, which keeps training cheap on a CPU. The first two are
trained with PSA's balanced loss on pairs of seed pixels from confident CAM regions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from tagseg.losses import relaxed_boundary_loss
from tagseg.models.backbones import Backbone
from tagseg.refine.affinity_labels import affinity_loss
from tagseg.refine.bes import BACKGROUND, BOUNDARY, FOREGROUND
from tagseg.refine.random_walk import as_offsets, path_affinities, shifted_overlap

KINDS = ("affinitynet", "boundary", "benet")
PAIR_KINDS = ("affinitynet", "boundary")  # trained on pixel pairs; benet on boundary labels
FEATURE_STRIDE = 4


def _branch(in_channels: int, out_channels: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.GroupNorm(4, out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


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
    """Backbone + per-level 1x1 branches resized to stride 4 and concatenated (then fused by one more
    branch when ``fused_channels``); subclasses turn that map into affinities.

    ``first_level``: the shallowest backbone level used (IRN skips the stride-2 one, BES uses all);
    ``relu_after_resize``: each branch is conv, GroupNorm, resize, ReLU (BES) rather than conv,
    GroupNorm, ReLU, resize (IRN); ``freeze_backbone``: only the new layers train. Either way the
    backbone's BatchNorm statistics stay ImageNet's (batches of a few crops are too small to update them).
    """

    def __init__(self, backbone: Backbone, branch_channels: int, fused_channels: int | None, first_level: int = 1,
                 relu_after_resize: bool = False, freeze_backbone: bool = True) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(not freeze_backbone)
        self.freeze_backbone = freeze_backbone
        self.first_level = first_level
        self.relu_after_resize = relu_after_resize
        self.branches = nn.ModuleList(_branch(c, branch_channels, relu=not relu_after_resize)
                                      for c in backbone.level_channels[first_level:])
        self.fuse = (_branch(branch_channels * len(self.branches), fused_channels) if fused_channels
                     else nn.Identity())

    def train(self, mode: bool = True) -> "AffinityModel":
        super().train(mode)
        self.backbone.eval()
        return self

    def new_modules(self) -> list[nn.Module]:
        return [m for m in self.children() if m is not self.backbone]

    def fused(self, images: torch.Tensor) -> torch.Tensor:
        """(B, channels, h, w) at the stride-4 level's size (ceil(H/4), ceil(W/4) for CNNs)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            _, levels = self.backbone.forward_levels(images)
        size = levels[1].shape[-2:]
        maps = []
        for branch, level in zip(self.branches, levels[self.first_level:]):
            out = branch(level)
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            maps.append(F.relu(out) if self.relu_after_resize else out)
        return self.fuse(torch.cat(maps, dim=1))

    @abstractmethod
    def affinities(self, images: torch.Tensor, offsets) -> torch.Tensor:
        """Affinities (B, K, h, w) in [0, 1] between each stride-4 pixel and pixel + offset_k."""

    def loss(self, images: torch.Tensor, pairs: dict[str, torch.Tensor], offsets) -> dict:
        return affinity_loss(self.affinities(images, offsets), pairs)


class AffinityNet(AffinityModel):
    """PSA: affinity = exp(-mean_c |f_i - f_j|) of a learned embedding f."""

    def __init__(self, backbone: Backbone, embedding: int = 128, freeze_backbone: bool = True) -> None:
        super().__init__(backbone, branch_channels=64, fused_channels=embedding, freeze_backbone=freeze_backbone)
        self.embed = nn.Conv2d(embedding, embedding, 1)

    def affinities(self, images, offsets):
        return torch.exp(-embedding_distances(self.embed(self.fused(images)).float(), offsets))


class BoundaryModel(AffinityModel):
    """A class-agnostic boundary map B in [0, 1] from a 1x1 head; affinity = 1 - max B along the segment
    (IRN, BES eq. 5; the power beta is applied by the walk)."""

    def __init__(self, backbone: Backbone, head_channels: int, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        self.head = nn.Conv2d(head_channels, 1, 1)

    def boundary(self, images: torch.Tensor) -> torch.Tensor:
        """(B, h, w) boundary probabilities at stride 4."""
        return torch.sigmoid(self.head(self.fused(images)))[:, 0]

    def affinities(self, images, offsets):
        return path_affinities(self.boundary(images), offsets).transpose(0, 1)


class BoundaryNet(BoundaryModel):
    """IRN's boundary branch: levels from stride 4 on, 32 channels each, fused to 64 before the head."""

    def __init__(self, backbone: Backbone, freeze_backbone: bool = True) -> None:
        super().__init__(backbone, head_channels=64, branch_channels=32, fused_channels=64,
                         freeze_backbone=freeze_backbone)


class BENet(BoundaryModel):
    """BES's BENet (§3.1, §4.1): every backbone level -> 1x1 conv to 32 channels, GroupNorm, resize to
    stride 4, ReLU; concatenated -> 1x1 conv -> sigmoid. Trained on synthesised boundary labels."""

    def __init__(self, backbone: Backbone, freeze_backbone: bool = True) -> None:
        branches = 32 * len(backbone.level_channels)
        super().__init__(backbone, head_channels=branches, branch_channels=32, fused_channels=None, first_level=0,
                         relu_after_resize=True, freeze_backbone=freeze_backbone)

    def boundary_loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """BES eq. 4 on stride-4 boundary labels (B, h, w) of :mod:`tagseg.refine.bes` (255: ignored)."""
        return relaxed_boundary_loss(self.boundary(images), labels == BOUNDARY, labels == FOREGROUND,
                                     labels == BACKGROUND)


def build_affinity_model(kind: str, backbone: Backbone, freeze_backbone: bool = True) -> AffinityModel:
    if kind == "affinitynet":
        return AffinityNet(backbone, freeze_backbone=freeze_backbone)
    if kind == "boundary":
        return BoundaryNet(backbone, freeze_backbone=freeze_backbone)
    if kind == "benet":
        return BENet(backbone, freeze_backbone=freeze_backbone)
    raise ValueError(f"unknown affinity network {kind!r}; choose from {', '.join(KINDS)}")
