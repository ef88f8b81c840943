"""Superpixel-guided seeded region growing while the segmentation network trains (dissertation ch. 3,
§3.3.3, eq. 3.6-3.8).

Each step starts again from the initial seeds (eq. 3.4-3.5). Within every superpixel the pixels
the seeds leave unlabelled (S~_i = S_i minus the seeds) get the network's mean softmax over
background and the image's tags (eq. 3.6); when the best of those means exceeds beta, all of
them take that class (eq. 3.7). Seeds are never overwritten. The network then learns from the
grown labels with the balanced seed loss (eq. 3.8, from DSRG): background and foreground
labelled pixels averaged separately, unlabelled pixels ignored.

The dissertation writes eq. 3.8 for one image and does not say how a batch is reduced; here it
is computed per image and averaged over the batch, as the saliency loss of ch. 2
(:mod:`tagseg.models.image_masking`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

UNLABELLED = 255


@torch.no_grad()
def grow_seeds(probabilities: torch.Tensor, seeds: torch.Tensor, regions: torch.Tensor, tags: torch.Tensor,
               beta: float = 0.7) -> torch.Tensor:
    """Eq. 3.6-3.7 on a batch: ``probabilities`` (B, C+1, H, W) softmax, ``seeds`` (B, H, W) with 255 unlabelled,
    ``regions`` (B, H, W) superpixel ids (-1 = padding, never grown), ``tags`` (B, C) multi-hot.
    Returns the grown labels (B, H, W); the seeds' labelled pixels are kept as they are."""
    batch, channels = probabilities.shape[:2]
    open_pixels = (seeds == UNLABELLED) & (regions >= 0)
    if not open_pixels.any():
        return seeds.clone()
    span = int(regions.max()) + 1
    ids = (regions + span * torch.arange(batch, device=regions.device)[:, None, None])[open_pixels]
    values = probabilities.permute(0, 2, 3, 1)[open_pixels].float()  # (pixels, C+1)
    sums = torch.zeros(batch * span, channels, device=values.device).index_add_(0, ids, values)
    counts = torch.bincount(ids, minlength=batch * span).clamp_min(1)
    means = sums / counts[:, None]  # eq. 3.6
    allowed = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=tags.device), tags.bool()], dim=1)
    means = means.masked_fill(~allowed.repeat_interleave(span, dim=0), -1.0)  # background and the tags only
    best, winner = means.max(dim=1)
    accepted = best > beta  # eq. 3.7
    grown = seeds.clone()
    grown[open_pixels] = torch.where(accepted[ids], winner[ids], torch.full_like(winner[ids], UNLABELLED)).to(
        seeds.dtype)
    return grown


def balanced_seed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3.8 averaged over images: -mean over background pixels of log H_0 - mean over foreground pixels of
    log H at their label; 255 ignored. An image without one of the sets adds nothing for it."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    labelled = labels != UNLABELLED
    picked = log_probs.gather(1, torch.where(labelled, labels, 0).long()[:, None])[:, 0]
    zero = log_probs.new_zeros(())

    def set_mean(members: torch.Tensor) -> torch.Tensor:
        sums = torch.where(members, -picked, zero).flatten(1).sum(dim=1)
        return sums / members.flatten(1).sum(dim=1).clamp_min(1)

    return (set_mean(labelled & (labels == 0)) + set_mean(labelled & (labels > 0))).mean()
