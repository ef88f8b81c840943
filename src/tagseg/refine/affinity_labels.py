"""Training targets for affinity networks (PSA / IRN): confident seeds from CAMs, then pixel-pair labels.

Only pixels whose CAM is clearly high (a class) or clearly low (background) become seeds;
the band in between is ignored. Pairs of seed pixels within the affinity radius are then
positive (same label) or negative (different labels), and the loss balances the three sets.
"""

from __future__ import annotations

import numpy as np
import torch

from tagseg.data.imageio import IGNORE_INDEX
from tagseg.losses import masked_mean
from tagseg.refine.crf import CrfParams, crf_labels
from tagseg.refine.random_walk import Offsets, neighbor_maps

EPSILON = 1e-5


def _threshold_argmax(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Index into [background, *classes]: the best class where its score exceeds ``threshold``, else 0."""
    background = np.full((1, *scores.shape[1:]), threshold, dtype=scores.dtype)
    return np.argmax(np.concatenate([background, scores]), axis=0)


def affinity_seed_labels(scores: np.ndarray, classes: np.ndarray, fg_threshold: float, bg_threshold: float,
                         image: np.ndarray | None = None, crf_params: CrfParams | None = None) -> np.ndarray:
    """Seed map (H, W) uint8: class index, 0 for background, 255 (ignore) where unsure.

    ``scores`` (K, H, W) in [0, 1] belong to the tagged ``classes`` (K,). Two label maps are
    made by putting a background plane at a threshold in front of the scores and taking the
    argmax (ties go to background): the fg map at ``fg_threshold``, the bg map at
    ``bg_threshold``. With ``image`` both maps are first refined by :func:`crf_labels`
    (IRN's cam_to_ir_label). A pixel then takes the fg map's class where that is not
    background, 0 where both maps say background, and 255 otherwise. Without the CRF this is:
    class where the best score > fg_threshold, 0 where it is <= bg_threshold, else 255.
    """
    if bg_threshold > fg_threshold:
        raise ValueError(f"bg_threshold {bg_threshold} above fg_threshold {fg_threshold}")
    scores = np.asarray(scores, dtype=np.float32)
    keys = np.concatenate([[0], np.asarray(classes, dtype=np.int64)])
    foreground = _threshold_argmax(scores, fg_threshold)
    background = _threshold_argmax(scores, bg_threshold)
    if image is not None:
        params = crf_params or CrfParams()
        foreground = crf_labels(image, foreground, len(keys), params=params)
        background = crf_labels(image, background, len(keys), params=params)
    foreground, background = keys[foreground], keys[background]
    seeds = np.full(scores.shape[1:], IGNORE_INDEX, dtype=np.uint8)
    seeds[foreground > 0] = foreground[foreground > 0]
    seeds[(foreground == 0) & (background == 0)] = 0
    return seeds


def pair_labels(seed_labels: np.ndarray | torch.Tensor, offsets: Offsets) -> dict[str, torch.Tensor]:
    """Bool maps (K, H, W) for the pairs (p, p + offset_k), indexed at p.

    ``fg_positive``: both the same class other than 0; ``bg_positive``: both 0; ``negative``:
    different labels. Pairs with a 255 pixel or leaving the image are in none of the three.
    """
    labels = torch.as_tensor(seed_labels).long()
    partner = neighbor_maps(labels, offsets, IGNORE_INDEX)
    valid = (labels != IGNORE_INDEX) & (partner != IGNORE_INDEX)
    same = valid & (labels == partner)
    return {"fg_positive": same & (labels != 0), "bg_positive": same & (labels == 0),
            "negative": valid & (labels != partner)}


def affinity_loss(predicted_affinity: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PSA's balanced affinity loss: fg/4 + bg/4 + neg/2, each term averaged over its own pair set.

    ``predicted_affinity`` (B, K, h, w) in (0, 1); ``labels`` from :func:`pair_labels`, stacked
    over the batch or broadcastable. Positives cost -log(a + 1e-5), negatives -log(1 + 1e-5 - a).
    """
    positive = -torch.log(predicted_affinity + EPSILON)
    negative = -torch.log(1 + EPSILON - predicted_affinity)
    fg = masked_mean(positive, labels["fg_positive"])
    bg = masked_mean(positive, labels["bg_positive"])
    neg = masked_mean(negative, labels["negative"])
    return {"loss": fg / 4 + bg / 4 + neg / 2, "fg": fg, "bg": bg, "neg": neg}
