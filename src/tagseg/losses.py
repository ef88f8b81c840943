"""The papers' losses, each a small pure function of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (broadcast to their shape); 0, still in the graph, when it is empty."""
    mask = torch.broadcast_to(mask, values.shape).to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def multilabel_soft_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Puzzle-CAM eq. 2-3 / dissertation eq. 2.1: mean over classes of -log sigma(+-z)."""
    return F.multilabel_soft_margin_loss(logits, targets)


def puzzle_reconstruction(full_cams: torch.Tensor, merged_cams: torch.Tensor,
                          targets: torch.Tensor | None = None, rectified: bool = True) -> torch.Tensor:
    """Puzzle-CAM eq. 6: L1 distance between the full image's CAMs and the merged tile CAMs (mean).

    With ``targets`` only the tagged classes are compared: their ReLU'd maps (the maps used at
    inference) when ``rectified``, else their raw logits (the reference code's "masking"
    option). On all classes' raw logits the loss fights the classification loss of absent
    classes (which wants them strongly negative, tiles or not) and training collapses.
    """
    if targets is None:
        return (full_cams - merged_cams).abs().mean()
    if rectified:
        full_cams, merged_cams = F.relu(full_cams), F.relu(merged_cams)
    return ((full_cams - merged_cams).abs() * targets[:, :, None, None]).mean()


def puzzle_alpha(step: int, total_steps: int, alpha_max: float = 4.0) -> float:
    """The weight of the reconstruction loss, ramped linearly to its maximum over the first half of training."""
    half = max(1, total_steps // 2)
    return alpha_max * min(1.0, step / half)


def attention_pooling(cams: torch.Tensor, intensity: float = 1e-3,
                      cell_weights: torch.Tensor | None = None) -> torch.Tensor:
    """BES eq. 6-7: class scores as a softmax(k * M)-weighted sum of the localisation map (B, K, h, w) -> (B, K).

    ``cell_weights`` (B, 1, h, w), each cell's share of real image, scale the softmax terms, so
    padding cells (weight 0) take no part and k = 0 gives the same mean as masked average pooling.
    """
    flat = cams.flatten(2)
    logits = intensity * flat
    if cell_weights is not None:
        logits = logits + cell_weights.flatten(2).log()
    weights = torch.softmax(logits, dim=-1)
    return (flat * weights).sum(-1)


def dense_cam(standard: torch.Tensor, dilated: list[torch.Tensor]) -> torch.Tensor:
    """Dissertation §2.3.1: M = max(M0, mean_i Mi), the standard block's CAM widened by the dilated blocks'."""
    return torch.maximum(standard, torch.stack(dilated).mean(0))


def dilated_cam_loss(standard: torch.Tensor, dense: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dissertation eq. 2.2: MSE between ReLU(M) and ReLU(M0) over present classes, divided by C |S|.

    The dense CAM is the target (no gradient flows into it), pulling M0 towards the regions
    the dilated blocks found.
    """
    batch, classes = targets.shape
    positions = standard.shape[-2] * standard.shape[-1]
    squared = (F.relu(dense.detach()) - F.relu(standard)) ** 2 * targets[:, :, None, None]
    return squared.sum() / (classes * positions * batch)


def relaxed_boundary_loss(probabilities: torch.Tensor, boundary: torch.Tensor, foreground: torch.Tensor,
                          background: torch.Tensor, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """BES eq. 4: -mean_{bry} sqrt(P) log P - (mean_{fg} log(1 - P) + mean_{bg} log(1 - P)) / 2.

    ``probabilities`` (B, h, w) are BENet's boundary probabilities, the three bool masks its
    synthesised boundary / non-boundary foreground / non-boundary background pixels (ignored
    pixels, crop padding included, are in none). The weight W = sqrt(P) relaxes boundary labels
    the network finds implausible; it is a weight, not a path for gradients (detached, as in
    the authors' code). Each term is a mean over its own set (0 when the set is empty);
    P is clamped to [eps, 1 - eps] as the authors' code does, so log stays finite.
    """
    p = probabilities.clamp(eps, 1 - eps)
    boundary_term = masked_mean(-p.detach().sqrt() * torch.log(p), boundary)
    foreground_term = masked_mean(-torch.log(1 - p), foreground)
    background_term = masked_mean(-torch.log(1 - p), background)
    return {"loss": boundary_term + (foreground_term + background_term) / 2, "boundary": boundary_term,
            "foreground": foreground_term, "background": background_term}
