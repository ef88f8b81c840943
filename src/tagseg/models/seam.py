"""SEAM, self-supervised equivariant attention (Wang et al., CVPR 2020): the smoothing paper's baseline.

The structure-aware smoothing paper (§III-A, §IV-A) builds on SEAM but describes it only by
citation, and SEAM's paper is not among ours; where both are silent this module follows the
SEAM authors' public training code, and says so. Terms follow SEAM's paper: CAMs y, PCM-revised
CAMs y-hat, the affine transform A (here a rescale by ``scale``, 0.3 in SEAM), losses L_cls,
L_ER and L_ECR, total L = L_cls + L_ER + L_ECR.

Training runs the crop I and A(I) through the network. Each pass gives raw CAMs and, through
the pixel correlation module (PCM), CAMs revised by feature affinities. The CAMs of the full
pass are rescaled by A before they are compared with the small pass's, so both losses measure
how far the network is from equivariance, CAM(A(I)) = A(CAM(I)).

Inference returns the PCM output (foreground channels) of each scale; make_cam sums scales and
flips as for every head.

Deviations from the authors' code, kept out on purpose: their extra "adaptive min pooling" term
(absent from the paper; their comment says it does not change the best result) and the dropout
before the classifier.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tagseg import losses
from tagseg.models.backbones import Backbone
from tagseg.models.cam import CamNet, global_average

EPS = 1e-5


def max_norm(cams: torch.Tensor) -> torch.Tensor:
    """Each map (B, C, h, w) ReLU'd and stretched to [0, 1] by its own minimum and maximum (as SEAM's code)."""
    cams = F.relu(cams)
    low = cams.amin(dim=(2, 3), keepdim=True)
    high = cams.amax(dim=(2, 3), keepdim=True)
    return F.relu(cams - low - EPS) / (high - low + EPS)


def with_background(foreground: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) foreground maps in [0, 1] -> (B, 1 + K, h, w) with background = 1 - max foreground."""
    return torch.cat([1 - foreground.amax(dim=1, keepdim=True), foreground], dim=1)


def keep_top_class(maps: torch.Tensor) -> torch.Tensor:
    """(B, 1 + K, h, w): zero every foreground value below its pixel's foreground maximum (SEAM's code
    does this to the PCM input and to the L_ECR targets; the background channel is left alone)."""
    foreground = maps[:, 1:]
    top = foreground.amax(dim=1, keepdim=True)
    return torch.cat([maps[:, :1], foreground * (foreground >= top)], dim=1)


def pcm_affinity(embedding: torch.Tensor) -> torch.Tensor:
    """PCM affinity (B, hw, hw) of an embedding (B, D, h, w): ReLU of the cosine similarity between
    positions, each column divided by its sum, so a revised map is an affinity-weighted mean."""
    flat = embedding.flatten(2)
    flat = flat / (flat.norm(dim=1, keepdim=True) + EPS)
    affinity = F.relu(flat.transpose(1, 2) @ flat)
    return affinity / (affinity.sum(dim=1, keepdim=True) + EPS)


def pcm_revise(maps: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """y-hat = y A: every position's new score is the affinity-weighted mean of all positions' scores."""
    batch, channels, height, width = maps.shape
    return (maps.flatten(2) @ affinity).reshape(batch, channels, height, width)


def equivariant_regularisation(full_foreground: torch.Tensor, small_foreground: torch.Tensor) -> torch.Tensor:
    """SEAM's L_ER: mean |A(y(I)) - y(A(I))| over the foreground maps (max-normalised, untagged classes zeroed)."""
    return (full_foreground - small_foreground).abs().mean()


def equivariant_cross_regularisation(cams: torch.Tensor, revised: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """One term of SEAM's L_ECR: |y - y-hat| with y from the other pass (detached, top class only, SEAM's
    code) and y-hat this pass's PCM output, both (B, 1 + K, h, w); the mean of each image's largest
    ``top_fraction`` of values (SEAM's code keeps the top 20%: the pixels where the passes disagree)."""
    difference = (keep_top_class(cams.detach()) - revised).abs().flatten(1)
    count = max(1, int(difference.shape[1] * top_fraction))
    return difference.topk(count, dim=1).values.mean()


class SeamCamNet(CamNet):
    """CAM classifier + PCM, trained on the crop and its copy rescaled by ``scale``."""

    def __init__(self, backbone: Backbone, num_classes: int, scale: float = 0.3, top_fraction: float = 0.2) -> None:
        super().__init__(backbone, num_classes)
        if not 0 < scale < 1:
            raise ValueError(f"SEAM's rescale must be in (0, 1), got {scale}")
        self.scale = scale
        self.top_fraction = top_fraction
        # SEAM's PCM reads its backbone's two stages before the last (conv4, conv5 of ResNet38) through
        # 1x1 convs to 64 and 128 channels, then embeds them with the image colours in 192 dimensions.
        mid, high = backbone.level_channels[-2], backbone.level_channels[-1]
        self.pcm_mid = nn.Conv2d(mid, 64, 1, bias=False)
        self.pcm_high = nn.Conv2d(high, 128, 1, bias=False)
        self.pcm_embed = nn.Conv2d(3 + 64 + 128, 192, 1, bias=False)
        nn.init.kaiming_normal_(self.pcm_mid.weight)
        nn.init.kaiming_normal_(self.pcm_high.weight)
        nn.init.xavier_uniform_(self.pcm_embed.weight, gain=4)

    def new_modules(self) -> list[nn.Module]:
        return [self.classifier, self.pcm_mid, self.pcm_high, self.pcm_embed]

    def _pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw CAM logits (B, K, h, w) and the PCM-revised maps (B, 1 + K, h, w) of one pass.

        The PCM's input is the detached CAM, ReLU'd and divided by its maximum, with a background
        channel and only each pixel's top class kept (SEAM's code); its features are detached too,
        so the PCM teaches its own 1x1 convs only, never the backbone.
        """
        final, levels = self.backbone.forward_levels(images)
        cams = self.classify(final)
        size = cams.shape[-2:]
        with torch.no_grad():
            positive = F.relu(cams)
            peak = positive.amax(dim=(2, 3), keepdim=True) + EPS
            seeds = keep_top_class(with_background(F.relu(positive - EPS) / peak))
        features = [F.interpolate(images, size=size, mode="bilinear", align_corners=True)]
        for level, conv in ((levels[-2], self.pcm_mid), (levels[-1], self.pcm_high)):
            level = level.detach()
            if level.shape[-2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=True)
            features.append(F.relu(conv(level)))
        affinity = pcm_affinity(self.pcm_embed(torch.cat(features, dim=1)))
        return cams, pcm_revise(seeds, affinity)

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """The PCM-revised foreground maps: SEAM's inference output."""
        return self._pass(images)[1][:, 1:]

    def class_scores(self, images, valid=None):
        return global_average(self.classify(self.backbone(images)), valid)

    def loss(self, images, targets, step, total_steps, valid=None):
        small_size = (max(1, round(images.shape[-2] * self.scale)), max(1, round(images.shape[-1] * self.scale)))
        small_images = F.interpolate(images, size=small_size, mode="bilinear", align_corners=True)
        full_cams, full_revised = self._pass(images)
        small_cams, small_revised = self._pass(small_images)
        small_valid = None
        if valid is not None:
            small_valid = F.interpolate(valid[:, None].float(), size=small_size, mode="nearest")[:, 0] > 0.5
        cls = (losses.multilabel_soft_margin(global_average(full_cams, valid), targets)
               + losses.multilabel_soft_margin(global_average(small_cams, small_valid), targets)) / 2

        # Both passes' maps at the small input's resolution: the full pass's rescaled by A.
        tags = torch.cat([torch.ones_like(targets[:, :1]), targets], dim=1)[:, :, None, None]

        def at_small(maps: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            size = source.shape[-2:]
            upsampled = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
            return F.interpolate(max_norm(upsampled), size=small_size, mode="bilinear", align_corners=True)

        full_y = at_small(full_cams, images) * targets[:, :, None, None]
        small_y = at_small(small_cams, small_images) * targets[:, :, None, None]
        full_revised = at_small(full_revised, images) * tags
        small_revised = at_small(small_revised, small_images) * tags
        er = equivariant_regularisation(full_y, small_y)
        ecr = (equivariant_cross_regularisation(with_background(small_y), full_revised, self.top_fraction)
               + equivariant_cross_regularisation(with_background(full_y), small_revised, self.top_fraction))
        return {"loss": cls + er + ecr, "cls": cls.detach(), "er": er.detach(), "ecr": ecr.detach()}
