"""Training a segmentation network without pseudo-labels: the dissertation's ch. 2, §2.3.3 (eq. 2.7-2.12).

Two losses replace the cross-entropy on pseudo-labels:

- the saliency loss (eq. 2.7) teaches foreground versus background from a (refined) saliency
  mask: the background channel H_0 on its background pixels, the sum of the tagged classes'
  channels H^f on its foreground pixels, each set averaged on its own so a small object weighs
  as much as a large background;
- the image-masking attention loss (eq. 2.8-2.11) teaches which class is where: per tagged
  class a fair coin b_c; the image is multiplied by F = 1 - sum_c b_c H_c (erased pixels take the
  mean colour, eq. 2.9); a frozen classifier scores the masked image, which should still show
  the classes not erased (target t' = t (1 - b), eq. 2.10); averaged over N draws (eq. 2.11).

The gradient of the attention loss reaches the segmentation network only through the masked
image; the classifier's weights and BatchNorm statistics never change (§2.3.3, last sentence).

Where the dissertation is silent or loose, and what is done here:
- eq. 2.7 is written for one image; here it is computed per image and averaged over the
  batch (an image without one of the sets adds nothing for that set). A foreground pixel of
  an image without tags has no class to sum and is skipped.
- eq. 2.9 subtracts "the RGB mean of the training images"; the networks here take inputs
  normalised by their backbone's ImageNet mean and deviation, and the masked image is formed
  in the classifier's normalisation, so erased pixels take the ImageNet mean colour.
- the attention loss reads the segmentation output of the first training scale (the
  full-size crop by default); the multi-scale outputs feed the saliency loss only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def saliency_loss(logits: torch.Tensor, saliency: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Eq. 2.7 averaged over images. ``logits`` (B, C+1, H, W) with background first; ``saliency``
    (B, H, W) with 0 background, 1 foreground, other values (255) skipped; ``tags`` (B, C) multi-hot."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    tagged = tags.bool()[:, :, None, None].expand_as(log_probs[:, 1:])
    log_foreground = torch.logsumexp(log_probs[:, 1:].masked_fill(~tagged, float("-inf")), dim=1)
    background = saliency == 0
    foreground = (saliency == 1) & tags.bool().any(dim=1)[:, None, None]
    zero = log_probs.new_zeros(())

    def set_mean(log_p: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        counts = members.flatten(1).sum(dim=1)
        sums = torch.where(members, -log_p, zero).flatten(1).sum(dim=1)
        return sums / counts.clamp_min(1)

    return (set_mean(log_probs[:, 0], background) + set_mean(log_foreground, foreground)).mean()


def attention_map(probabilities: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Eq. 2.8: F = 1 - sum_c b_c H_c over the foreground classes. ``probabilities`` (B, C+1, H, W)
    softmax; ``draws`` (B, C) with 1 for the classes to erase (0 for untagged ones)."""
    erased = (probabilities[:, 1:] * draws[:, :, None, None].to(probabilities.dtype)).sum(dim=1)
    return (1.0 - erased).clamp(0.0, 1.0)


def masked_image(pixels: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Eq. 2.9: I' = F (I - mu). ``pixels`` are already mean-subtracted (normalised), so an erased
    pixel becomes 0, the mean colour."""
    return pixels * attention[:, None]


def attention_loss(class_logits: torch.Tensor, tags: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Eq. 2.10: binary cross-entropy over the tagged classes only, target t' = t (1 - b), averaged
    over each image's tagged classes, then over the images that have tags."""
    tagged = tags.float()
    target = tagged * (1.0 - draws.float())
    per_class = F.binary_cross_entropy_with_logits(class_logits.float(), target, reduction="none") * tagged
    per_image = per_class.sum(dim=1) / tagged.sum(dim=1).clamp_min(1)
    has_tags = tagged.sum(dim=1) > 0
    return per_image[has_tags].mean() if has_tags.any() else class_logits.sum() * 0.0


def renormalize(pixels: torch.Tensor, mean_from, std_from, mean_to, std_to) -> torch.Tensor:
    """Pixels normalised with one backbone's mean / std -> the same colours in another's."""
    if list(mean_from) == list(mean_to) and list(std_from) == list(std_to):
        return pixels

    def channels(values) -> torch.Tensor:
        return torch.as_tensor(values, dtype=pixels.dtype, device=pixels.device).reshape(1, 3, 1, 1)

    return (pixels * channels(std_from) + channels(mean_from) - channels(mean_to)) / channels(std_to)


def masking_attention_loss(classifier, pixels: torch.Tensor, logits: torch.Tensor, tags: torch.Tensor,
                           valid: torch.Tensor | None, paths: int, generator: torch.Generator,
                           pixel_stats: tuple, classifier_stats: tuple) -> torch.Tensor:
    """Eq. 2.11: the attention loss averaged over ``paths`` independent draws of b.

    ``classifier`` is a frozen CAM network (eval mode, no trainable parameters); its image-level
    logits come from :meth:`~tagseg.models.cam.CamNet.class_scores`, pooled over the ``valid``
    (non-padding) pixels. ``pixels`` are in the segmentation net's normalisation
    (``pixel_stats`` = its mean, std), converted to the classifier's (``classifier_stats``).
    ``generator`` (CPU) draws the coins, so a resumed run draws the same ones.
    """
    probabilities = F.softmax(logits.float(), dim=1)
    inputs = renormalize(pixels, *pixel_stats, *classifier_stats)
    draws = [(torch.rand(tags.shape, generator=generator) < 0.5).to(tags.device) & tags.bool() for _ in range(paths)]
    # every path's masked image in one batch: the frozen classifier's BatchNorm is in eval mode, so each
    # image is scored as if alone, and one large batch uses the cores better than N small ones
    masked = torch.cat([masked_image(inputs, attention_map(probabilities, d)) for d in draws])
    scores = classifier.class_scores(masked, None if valid is None else valid.repeat(paths, 1, 1))
    return sum(attention_loss(s, tags, d) for s, d in zip(scores.chunk(paths), draws)) / paths
