"""One feature vector per image patch, for superpixel discovery (dissertation ch. 3, §3.3.1).

- ``vit``: the keys of the last self-attention block, all heads concatenated (the dissertation uses
  DINO ViT-S/8 and ViT-B/8: backbones ``vit_small_dino8`` / ``vit_base_dino8``, weights from a
  file as for every backbone without offline weights). One vector per 8 x 8 patch.
- ``cnn``: without ViT weights, the default CNN backbone's levels (ImageNet weights ship offline),
  each resampled to the stride-8 grid and L2-normalised per patch, then concatenated, so every
  level counts equally in the cosine similarity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tagseg.models.backbones import Backbone

GRID_STRIDE = 8


def grid_size(height: int, width: int, stride: int = GRID_STRIDE) -> tuple[int, int]:
    return math.ceil(height / stride), math.ceil(width / stride)


@torch.no_grad()
def vit_keys(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised -> (B, D, h, w): the last block's attention keys of every patch token."""
    model = backbone.model
    captured = []
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model.forward_features(images)
    finally:
        hook.remove()
    qkv = captured[0]  # (B, tokens, 3 * dim): queries, keys, values, each the heads side by side
    dim = qkv.shape[-1] // 3
    keys = qkv[:, model.num_prefix_tokens:, dim:2 * dim]
    height, width = model.patch_embed.dynamic_feat_size((images.shape[-2], images.shape[-1]))
    return keys.transpose(1, 2).reshape(images.shape[0], dim, height, width)


@torch.no_grad()
def cnn_levels(backbone: Backbone, images: torch.Tensor, stride: int = GRID_STRIDE) -> torch.Tensor:
    """(B, 3, H, W) normalised -> (B, D, ceil(H/stride), ceil(W/stride)): every level and the final map,
    area-averaged (finer levels) or bilinearly resampled (coarser ones) to the grid, each L2-normalised."""
    final, levels = backbone.forward_levels(images)
    size = grid_size(images.shape[-2], images.shape[-1], stride)
    parts = []
    for level in [*levels, final]:
        if level.shape[-2] >= size[0]:
            level = F.adaptive_avg_pool2d(level, size)
        else:
            level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        parts.append(F.normalize(level, dim=1))
    return torch.cat(parts, dim=1)


def patch_features(backbone: Backbone, images: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "vit":
        return vit_keys(backbone, images)
    if kind == "cnn":
        return cnn_levels(backbone, images)
    raise ValueError(f"unknown patch features {kind!r}: vit or cnn")
