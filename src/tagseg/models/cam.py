"""Classifiers trained from tags whose 1x1-conv maps are class activation maps (CAMs).

One small class per variant, each overriding :meth:`CamNet.loss` (training) and, where
it differs, :meth:`CamNet.cams` (inference):

- ``cam``: GAP + multi-label soft margin (the plain CAM baseline).
- ``puzzle``: Puzzle-CAM, 2x2 tiles whose merged CAMs must match the full image's.
- ``attention``: BES attention pooling (eq. 6-8) instead of GAP; dropped at inference.
- ``dilated``: a standard block and D dilated blocks; dense CAM M = max(M0, mean Mi).
- ``seam``: SEAM's equivariant attention (:mod:`tagseg.models.seam`).

Any head can train with the structure-aware smoothing branch (:mod:`tagseg.models.smoothing`),
which reads the head's CAM through :meth:`CamNet.classify` and is dropped at inference.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tagseg import losses
from tagseg.models.backbones import Backbone

HEADS = ("cam", "puzzle", "attention", "dilated", "seam")
RECONSTRUCTIONS = ("tagged", "tagged_logits", "all")  # which CAMs Puzzle-CAM's L_re compares


def tile_2x2(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (4B, C, H/2, W/2): tiles ordered top-left, top-right, bottom-left, bottom-right."""
    batch, channels, height, width = images.shape
    if height % 2 or width % 2:
        raise ValueError(f"puzzle tiling needs even sizes, got {height}x{width}")
    tiles = images.reshape(batch, channels, 2, height // 2, 2, width // 2)
    return tiles.permute(2, 4, 0, 1, 3, 5).reshape(4 * batch, channels, height // 2, width // 2)


def merge_2x2(tiles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`tile_2x2`: (4B, C, h, w) -> (B, C, 2h, 2w)."""
    quarter, channels, height, width = tiles.shape
    batch = quarter // 4
    grid = tiles.reshape(2, 2, batch, channels, height, width)
    return grid.permute(2, 3, 0, 4, 1, 5).reshape(batch, channels, 2 * height, 2 * width)


def cell_weights(valid: torch.Tensor, size) -> torch.Tensor:
    """(B, H, W) real-pixel mask of the input -> (B, 1, h, w): the fraction of each CAM cell that is image."""
    return F.interpolate(valid[:, None].float(), size=tuple(size), mode="area")


def global_average(cams: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of each map over its cells; with ``valid`` over the real image only, so the padding
    of a crop smaller than the input does not dilute the class score."""
    if valid is None:
        return cams.mean(dim=(2, 3))
    weights = cell_weights(valid, cams.shape[-2:])
    return (cams * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1e-6)


class CamNet(nn.Module):
    """Backbone + 1x1 conv classifier: CAM logits maps at the backbone's stride."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def new_modules(self) -> list[nn.Module]:
        """Layers trained from scratch (they get the larger learning rate)."""
        return [self.classifier]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The backbone's final map -> raw CAM logits (B, K, h, w)."""
        return self.classifier(features)

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        """Raw CAM logits (B, K, h, w) used at inference."""
        return self.classify(self.backbone(images))

    def class_scores(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Image-level logits (B, K), as pooled in training (over the ``valid`` pixels only when given)."""
        return global_average(self.cams(images), valid)

    def loss(self, images: torch.Tensor, targets: torch.Tensor, step: int, total_steps: int,
             valid: torch.Tensor | None = None) -> dict:
        """Training losses; ``valid`` (B, H, W), when given, marks the real pixels that pooling may use."""
        scores = self.class_scores(images, valid)
        cls = losses.multilabel_soft_margin(scores, targets)
        return {"loss": cls, "cls": cls.detach()}


class PuzzleCamNet(CamNet):
    """Puzzle-CAM: L_cls + L_p-cls + alpha * L_re, alpha ramped over the first half of training."""

    def __init__(self, backbone: Backbone, num_classes: int, alpha: float = 4.0,
                 reconstruction: str = "tagged_logits") -> None:
        super().__init__(backbone, num_classes)
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"unknown Puzzle-CAM reconstruction {reconstruction!r}; choose from {RECONSTRUCTIONS}")
        self.alpha = alpha
        self.reconstruction = reconstruction

    def loss(self, images, targets, step, total_steps, valid=None):
        full = self.cams(images)
        merged = merge_2x2(self.cams(tile_2x2(images)))
        if merged.shape[-2:] != full.shape[-2:]:
            raise ValueError(f"tile CAMs {tuple(merged.shape[-2:])} do not merge to the full CAM size "
                             f"{tuple(full.shape[-2:])}: use a crop size divisible by twice the stride")
        cls = losses.multilabel_soft_margin(global_average(full, valid), targets)
        p_cls = losses.multilabel_soft_margin(global_average(merged, valid), targets)
        reconstruction = losses.puzzle_reconstruction(full, merged, None if self.reconstruction == "all" else targets,
                                                      rectified=self.reconstruction == "tagged")
        alpha = losses.puzzle_alpha(step, total_steps, self.alpha)
        return {"loss": cls + p_cls + alpha * reconstruction, "cls": cls.detach(), "p_cls": p_cls.detach(),
                "re": reconstruction.detach(), "alpha": torch.tensor(alpha)}


class AttentionCamNet(CamNet):
    """BES attention pooling: class score = softmax(k M)-weighted sum of the map (training only)."""

    def __init__(self, backbone: Backbone, num_classes: int, intensity: float = 1e-3) -> None:
        super().__init__(backbone, num_classes)
        self.intensity = intensity

    def class_scores(self, images, valid=None):
        cams = self.cams(images)
        weights = None if valid is None else cell_weights(valid, cams.shape[-2:])
        return losses.attention_pooling(cams, self.intensity, weights)


class DilatedCamNet(CamNet):
    """Dissertation §2.3.1: a standard block plus D dilated blocks, each ending in its own classifier.

    Every block is conv3x3 (dilation d) -> ReLU -> conv1x1 to classes. Training sums the
    classification losses of all blocks and adds lambda_cls * the CAM loss pulling M0
    towards the dense CAM. At inference the standard block's M0 is used (the dilated
    blocks are removed, as in the dissertation) unless ``dense_at_inference``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, dilations=(3, 6, 9), hidden: int = 512,
                 lambda_cls: float = 0.1, dense_at_inference: bool = False) -> None:
        super().__init__(backbone, num_classes)
        del self.classifier
        self.standard = self._block(backbone.out_channels, hidden, num_classes, 1)
        self.dilated = nn.ModuleList(self._block(backbone.out_channels, hidden, num_classes, d) for d in dilations)
        self.lambda_cls = lambda_cls
        self.dense_at_inference = dense_at_inference

    @staticmethod
    def _block(channels: int, hidden: int, num_classes: int, dilation: int) -> nn.Sequential:
        block = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
                              nn.Conv2d(hidden, num_classes, 1, bias=False))
        for layer in block:
            if isinstance(layer, nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
        return block

    def new_modules(self):
        return [self.standard, self.dilated]

    def _all_cams(self, images):
        features = self.backbone(images)
        return self.standard(features), [block(features) for block in self.dilated]

    def classify(self, features):
        if not self.dense_at_inference:
            return self.standard(features)
        return losses.dense_cam(self.standard(features), [block(features) for block in self.dilated])

    def class_scores(self, images, valid=None):
        return global_average(self._all_cams(images)[0], valid)

    def loss(self, images, targets, step, total_steps, valid=None):
        standard, dilated = self._all_cams(images)
        sig = sum(losses.multilabel_soft_margin(global_average(m, valid), targets) for m in [standard, *dilated])
        cam = losses.dilated_cam_loss(standard, losses.dense_cam(standard, dilated), targets)
        return {"loss": sig + self.lambda_cls * cam, "sig": sig.detach(), "cam": cam.detach()}


def build_cam_net(head: str, backbone: Backbone, num_classes: int, *, puzzle_alpha: float = 4.0,
                  puzzle_reconstruction: str = "tagged_logits", attention_intensity: float = 1e-3,
                  dilations=(3, 6, 9), dilated_hidden: int = 512,
                  lambda_cls: float = 0.1, dense_at_inference: bool = False, seam_scale: float = 0.3,
                  seam_top_fraction: float = 0.2) -> CamNet:
    if head == "cam":
        return CamNet(backbone, num_classes)
    if head == "puzzle":
        return PuzzleCamNet(backbone, num_classes, puzzle_alpha, puzzle_reconstruction)
    if head == "attention":
        return AttentionCamNet(backbone, num_classes, attention_intensity)
    if head == "dilated":
        return DilatedCamNet(backbone, num_classes, dilations, dilated_hidden, lambda_cls, dense_at_inference)
    if head == "seam":
        from tagseg.models.seam import SeamCamNet  # seam builds on this module's CamNet

        return SeamCamNet(backbone, num_classes, seam_scale, seam_top_fraction)
    raise ValueError(f"unknown CAM head {head!r} (choose from {', '.join(HEADS)})")


def upsampled_cams(net: CamNet, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU'd CAMs bilinearly resized to ``size`` (H, W)."""
    return F.interpolate(F.relu(net.cams(images)), size=size, mode="bilinear", align_corners=False)
