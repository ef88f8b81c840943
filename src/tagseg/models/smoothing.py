"""The structure-aware smoothing branch (Liu et al. 2021, structure-aware-smoothing-branch.md): a
training-only addition to any CAM head, dropped at inference.

- The semantic boundary detection module (SBDM, eq. 1) predicts per-class boundaries from four
  backbone levels and the crop's Canny edges; trained with L_B (eq. 2) against boundaries S
  taken from an earlier segmentation of the training images (no ground truth).
- The boundary-guided smoothness loss L_S (eq. 3-5) penalises the CAM's first and second
  derivatives, except where S changes: flat scores inside objects, contrast at their edges.
- Total (eq. 6): L = L_b + lambda_1 L_B + lambda_2 L_S (0.05 and 1.0 in the paper).

Where the paper contradicts itself:
- Eq. 2 as printed, sum B log S + (1 - B) log(1 - S), swaps prediction and target (log S is
  undefined for S in {0, 1}) and lacks the minus sign; the text says the SBDM "is trained with a
  cross-entropy loss with S as supervision", so L_B is the binary cross-entropy of sigmoid(B)
  against S.
- B has "(k + 1)" channels (the classes plus background) in §III-A, but the initial boundary has
  "k channels", and eq. 3-4 sum i = 1..k with k "the number of classes plus one". We predict one
  boundary per foreground class and sum both losses over the tagged ones: the background's
  boundary is the union of the others, and our CAM heads have no background channel.
- Eq. 6 writes L_S(B, (S, Y)), eq. 3-4 define it on the CAM C: we follow eq. 3-4.
- Eq. 5 puts lambda_S = 10 on the second-order term; the authors' code puts it on the first
  (``lambda_s_on``: second by default, as the paper).
The paper names no activations inside the SBDM (ReLU here) and no Canny thresholds (config).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tagseg.losses import masked_mean
from tagseg.models.cam import CamNet

SBDM_LEVELS = 4  # the paper's F1, F3, F5, F6 of ResNet38: low to high
CHARBONNIER_EPS = 1e-6


def spread_levels(count: int, wanted: int = SBDM_LEVELS) -> list[int]:
    """``wanted`` level indices spread evenly from the shallowest to the deepest of ``count``."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def canny_edges(crop: np.ndarray, real: np.ndarray, low: float, high: float) -> np.ndarray:
    """E of eq. 1: Canny edges (H, W) float32 in {0, 1} of an RGB uint8 crop; edges on the border of the
    crop's padding are dropped (they outline the padding, not the image)."""
    edges = cv2.Canny(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), low, high) > 0
    inside = cv2.erode(real.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    return (edges & inside).astype(np.float32)


def class_boundaries(labels: torch.Tensor, num_classes: int, real: torch.Tensor) -> torch.Tensor:
    """S of eq. 2-4: (B, H, W) label maps (0 background, 1..K classes, 255 ignore) -> (B, K, H, W) float
    per-class boundaries, each class's mask minus its 3x3 erosion. Padding counts as inside every
    mask for the erosion, so the edge of the real image is no object boundary."""
    classes = torch.arange(1, num_classes + 1, device=labels.device)[None, :, None, None]
    masks = (labels[:, None] == classes).float()
    outside = 1 - torch.maximum(masks, (~real[:, None]).float())
    eroded = 1 - F.max_pool2d(outside, 3, stride=1, padding=1)
    return masks * (1 - eroded)


def boundary_loss(logits: torch.Tensor, boundaries: torch.Tensor, tags: torch.Tensor,
                  real: torch.Tensor) -> torch.Tensor:
    """L_B (eq. 2, see the module note): binary cross-entropy of sigmoid(B) against S, averaged over the
    tagged classes' real pixels. ``logits`` and ``boundaries`` (B, K, H, W), ``tags`` (B, K), ``real`` (B, H, W)."""
    entropy = F.binary_cross_entropy_with_logits(logits, boundaries, reduction="none")
    return masked_mean(entropy, tags[:, :, None, None] * real[:, None])


def _differences(values: torch.Tensor, order: int, dim: int) -> torch.Tensor:
    """Forward differences along ``dim``: first (v[x+1] - v[x]) or second (v[x+1] - 2 v[x] + v[x-1])."""
    size = values.shape[dim]
    if order == 1:
        return values.narrow(dim, 1, size - 1) - values.narrow(dim, 0, size - 1)
    return values.narrow(dim, 2, size - 2) - 2 * values.narrow(dim, 1, size - 2) + values.narrow(dim, 0, size - 2)


def _all_real(real: torch.Tensor, order: int, dim: int) -> torch.Tensor:
    """Positions whose difference uses real pixels only."""
    real = real.float()
    size = real.shape[dim]
    together = real.narrow(dim, 0, size - order)
    for shift in range(1, order + 1):
        together = together * real.narrow(dim, shift, size - order)
    return together


def smoothness_term(scores: torch.Tensor, boundaries: torch.Tensor, tags: torch.Tensor, real: torch.Tensor,
                    order: int, alpha: float) -> torch.Tensor:
    """L_S^1 (eq. 3, ``order`` 1) or L_S^2 (eq. 4, ``order`` 2): Psi(|d C| exp(-alpha |d S|)) summed over
    the tagged classes and both directions, averaged over each image's real positions, then over images.

    ``scores`` C (B, K, H, W) in [0, 1], ``boundaries`` S (B, K, H, W), ``tags`` Y (B, K), ``real`` (B, H, W);
    Psi(s) = sqrt(s^2 + 1e-6), the Charbonnier penalty.
    """
    total = scores.new_zeros(scores.shape[0])
    for dim in (-1, -2):  # x, then y
        if scores.shape[dim] <= order:
            continue
        weighted = _differences(scores, order, dim).abs() * torch.exp(-alpha * _differences(boundaries, order, dim).abs())
        penalty = torch.sqrt(weighted ** 2 + CHARBONNIER_EPS) * tags[:, :, None, None]
        where = _all_real(real, order, dim)
        total = total + (penalty.sum(1) * where).sum((1, 2)) / where.sum((1, 2)).clamp_min(1)
    return total.mean()


def smoothness_loss(scores: torch.Tensor, boundaries: torch.Tensor, tags: torch.Tensor, real: torch.Tensor,
                    alpha: float = 10.0, lambda_s: float = 10.0, lambda_s_on: str = "second") -> dict[str, torch.Tensor]:
    """L_S (eq. 5) = L_S^1 + lambda_S L_S^2 (the paper), or lambda_S L_S^1 + L_S^2 (``lambda_s_on`` first:
    the authors' code)."""
    first = smoothness_term(scores, boundaries, tags, real, 1, alpha)
    second = smoothness_term(scores, boundaries, tags, real, 2, alpha)
    total = first + lambda_s * second if lambda_s_on == "second" else lambda_s * first + second
    return {"loss": total, "first": first, "second": second}


class BoundaryModule(nn.Module):
    """SBDM (eq. 1): B = DConv1(concat{Conv3(Conv3(concat{U(F_m)})), E}).

    U(F_m) is a 1x1 and a 3x3 conv to ``channels`` (32) bilinearly upsampled to the input size; two 3x3
    convs turn their concatenation into K initial boundaries B0; E, the Canny edges, is repeated
    per class and interleaved with B0, and a 1x1 depthwise conv (one group per class, (B0_i, E) in)
    gives the boundary logits B.
    """

    def __init__(self, level_channels: list[int], num_classes: int, channels: int = 32) -> None:
        super().__init__()
        self.levels = spread_levels(len(level_channels))
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(level_channels[i], channels, 1), nn.ReLU(inplace=True),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)) for i in self.levels)
        self.initial = nn.Sequential(nn.Conv2d(channels * len(self.levels), channels, 3, padding=1),
                                     nn.ReLU(inplace=True), nn.Conv2d(channels, num_classes, 3, padding=1))
        self.with_edges = nn.Conv2d(2 * num_classes, num_classes, 1, groups=num_classes)

    def forward(self, levels: list[torch.Tensor], edges: torch.Tensor) -> torch.Tensor:
        """Backbone levels (shallow -> deep) and edges (B, H, W) -> boundary logits (B, K, H, W)."""
        size = edges.shape[-2:]
        upsampled = [F.interpolate(reduce(levels[i]), size=size, mode="bilinear", align_corners=False)
                     for i, reduce in zip(self.levels, self.reduce)]
        initial = self.initial(torch.cat(upsampled, dim=1))
        paired = torch.stack([initial, edges[:, None].expand_as(initial)], dim=2).flatten(1, 2)
        return self.with_edges(paired)


class SmoothedCamNet(nn.Module):
    """A CAM head trained with the smoothing branch (eq. 6). Only ``head`` is kept for inference."""

    def __init__(self, head: CamNet, *, lambda_boundary: float = 0.05, lambda_smooth: float = 1.0,
                 alpha: float = 10.0, lambda_s: float = 10.0, lambda_s_on: str = "second", channels: int = 32) -> None:
        super().__init__()
        self.head = head
        self.branch = BoundaryModule(head.backbone.level_channels, head.num_classes, channels)
        self.lambda_boundary, self.lambda_smooth = lambda_boundary, lambda_smooth
        self.alpha, self.lambda_s, self.lambda_s_on = alpha, lambda_s, lambda_s_on

    @property
    def backbone(self):
        return self.head.backbone

    def new_modules(self) -> list[nn.Module]:
        return [*self.head.new_modules(), self.branch]

    def loss(self, images: torch.Tensor, targets: torch.Tensor, step: int, total_steps: int,
             valid: torch.Tensor | None, *, real: torch.Tensor, labels: torch.Tensor, edges: torch.Tensor) -> dict:
        """The head's losses plus the branch's. ``valid`` is what the head may pool over (None: all of the
        crop), ``real`` the crop's real pixels (both branch losses skip the padding), ``labels`` (B, H, W)
        the earlier segmentation of the crop, ``edges`` (B, H, W) its Canny edges.

        The branch reads the levels and the CAM of the head's first pass (the whole crop): the backbone
        records them during the head's own forward, so nothing runs twice.
        """
        with self.head.backbone.recording() as taps:
            parts = self.head.loss(images, targets, step, total_steps, valid)
        final, levels = taps[0]
        scores = torch.sigmoid(F.interpolate(self.head.classify(final), size=images.shape[-2:], mode="bilinear",
                                             align_corners=False))
        boundaries = class_boundaries(labels, self.head.num_classes, real)
        boundary = boundary_loss(self.branch(levels, edges), boundaries, targets, real)
        smooth = smoothness_loss(scores, boundaries, targets, real, self.alpha, self.lambda_s, self.lambda_s_on)
        total = parts["loss"] + self.lambda_boundary * boundary + self.lambda_smooth * smooth["loss"]
        return {**parts, "loss": total, "head": parts["loss"].detach(), "boundary": boundary.detach(),
                "smooth": smooth["loss"].detach()}
