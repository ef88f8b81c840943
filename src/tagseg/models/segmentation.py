"""Segmentation networks trained on pseudo-labels: DeepLabV2 (ASPP sum) and DeepLabV3+ heads on any backbone.

- ``deeplabv2``: four parallel 3x3 classifiers with dilations 6/12/18/24 on the final
  features, summed (Chen et al. 2017, ASPP-L).
- ``deeplabv3plus``: ASPP (1x1, three dilated 3x3 and image pooling branches) on the final
  features, then a decoder that fuses them with the stride-4 features before the classifier.
  Its 3x3 convolutions are atrous separable (depthwise + pointwise), as in Chen et al. 2018,
  which keeps the head cheap enough to train on a CPU (benchmarks/deeplab_step.py).

Both return logits at the input size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F

from tagseg.models.backbones import Backbone

HEADS = ("deeplabv2", "deeplabv3plus")


def _conv_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """Pointwise 1x1 convolution, group-normalised (batches of a few crops are too small for BN)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.GroupNorm(16, out_channels), nn.ReLU(inplace=True))


def _separable_conv_norm_relu(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise 3x3 (dilated) then pointwise 1x1, each normalised and activated."""
    return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation,
                                   groups=in_channels, bias=False),
                         nn.GroupNorm(16, in_channels), nn.ReLU(inplace=True),
                         _conv_norm_relu(in_channels, out_channels))


class SegmentationNet(nn.Module, ABC):
    """Backbone + head; ``new_modules`` are the layers trained from scratch (larger learning rate)."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes

    def new_modules(self) -> list[nn.Module]:
        return [m for m in self.children() if m is not self.backbone]

    @abstractmethod
    def logits_at_stride(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C, h, w) at the head's own resolution."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.logits_at_stride(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV2(SegmentationNet):
    def __init__(self, backbone: Backbone, num_classes: int, dilations=(6, 12, 18, 24)) -> None:
        super().__init__(backbone, num_classes)
        self.branches = nn.ModuleList(
            nn.Conv2d(backbone.out_channels, num_classes, 3, padding=d, dilation=d) for d in dilations)
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def logits_at_stride(self, images):
        features = self.backbone(images)
        return sum(branch(features) for branch in self.branches)


class DeepLabV3Plus(SegmentationNet):
    def __init__(self, backbone: Backbone, num_classes: int, dilations=(6, 12, 18), channels: int = 128) -> None:
        super().__init__(backbone, num_classes)
        final = backbone.out_channels
        self.aspp = nn.ModuleList([_conv_norm_relu(final, channels)]
                                  + [_separable_conv_norm_relu(final, channels, d) for d in dilations])
        self.pool = _conv_norm_relu(final, channels)
        self.project = _conv_norm_relu(channels * (len(dilations) + 2), channels)
        self.low = _conv_norm_relu(backbone.level_channels[1], 48)
        self.decoder = nn.Sequential(_separable_conv_norm_relu(channels + 48, channels),
                                     _separable_conv_norm_relu(channels, channels))
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def logits_at_stride(self, images):
        final, levels = self.backbone.forward_levels(images)
        pooled = self.pool(final.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *final.shape[-2:])
        context = self.project(torch.cat([branch(final) for branch in self.aspp] + [pooled], dim=1))
        low = self.low(levels[1])
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([context, low], dim=1)))


def build_segmentation_net(head: str, backbone: Backbone, num_classes: int) -> SegmentationNet:
    if head == "deeplabv2":
        return DeepLabV2(backbone, num_classes)
    if head == "deeplabv3plus":
        return DeepLabV3Plus(backbone, num_classes)
    raise ValueError(f"unknown segmentation head {head!r}; choose from {', '.join(HEADS)}")
