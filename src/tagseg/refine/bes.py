"""BES (Chen et al., ECCV 2020, "Weakly Supervised Semantic Segmentation with Boundary Exploration").

§3.1 synthesises boundary labels for training a boundary network from the localisation maps:

- eq. 1: confident foreground / background / unknown seeds from the score maps, thresholded at
  ``THETA_FG`` and ``THETA_BG`` and refined by a dense CRF. That is exactly IRN's seed recipe,
  :func:`tagseg.refine.affinity_labels.affinity_seed_labels`, which BES's own code also follows;
- eq. 2: :func:`class_shares`, the share of each label in a w x w window around every pixel;
- eq. 3: :func:`boundary_labels`, boundary where background and the best foreground class share
  the window about equally, non-boundary foreground / background where one clearly dominates,
  ignore in between.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from tagseg.data.imageio import IGNORE_INDEX

BACKGROUND = 0  # non-boundary background
BOUNDARY = 1
FOREGROUND = 2  # non-boundary foreground
IGNORE = IGNORE_INDEX

THETA_FG = 0.30  # eq. 1 (§4.1)
THETA_BG = 0.07
WINDOW = 13  # eq. 2, in pixels of the ~500 px VOC photos
THETA_SCALE = 0.35  # eq. 3 as the paper gives it; the authors' code (run_sample.py) uses 0.30
THETA_DIFF = 0.10

# Shares are ratios of pixel counts, so a window that the image border clips can meet a
# threshold exactly (49 of 140 pixels is 0.35). Comparisons allow this much slack, so such a tie
# follows the rule as written instead of the rounding of 0.35 in binary.
TOLERANCE = 1e-9


def smallest_window(theta_diff: float) -> int:
    """The smallest odd window in which a straight edge can be a boundary under eq. 3.

    Across a horizontal or vertical edge between two confident regions the shares of the two
    sides differ by a multiple of 1/w, so |F - S0| < theta_diff needs 1/w < theta_diff. The
    paper's 13 px (VOC, ~500 px photos) passes with theta_diff 0.10; the same window scaled to
    a 320 px photo (9 px) would label only slanted and curved edges.
    """
    width = int(np.floor(1 / theta_diff + TOLERANCE)) + 1
    return width if width % 2 else width + 1


class Shares(NamedTuple):
    """Per-pixel label shares (H, W) float64 in the window around each pixel (eq. 2)."""

    background: np.ndarray  # S^0
    best: np.ndarray  # max over foreground classes c of S^c
    second: np.ndarray  # the second largest S^c (0 when the window has fewer than two classes)


def class_shares(labels: np.ndarray, num_labels: int, window: int) -> Shares:
    """Eq. 2 for a seed map (H, W): labels 0 (background) .. num_labels - 1, or 255 (unknown).

    A label's share is its pixel count in the ``window`` x ``window`` square centred on the pixel
    divided by the number of in-image pixels of that square: w x w inside the image, fewer where
    the border clips it (the paper divides by w x w everywhere, which makes border pixels look
    empty; its code divides by the in-image count, as here). Unknown pixels count in the
    denominator only. One box filter per label present in the map (torch ``avg_pool2d``).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D map, got shape {labels.shape}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}")
    present = np.unique(labels)
    invalid = present[(present < 0) | ((present >= num_labels) & (present != IGNORE_INDEX))]
    if invalid.size:
        raise ValueError(f"labels {invalid.tolist()} outside 0..{num_labels - 1} and {IGNORE_INDEX}")
    foreground = [int(c) for c in present if 0 < c < num_labels]
    planes = torch.from_numpy(np.stack([labels == c for c in (0, *foreground)]).astype(np.float64))
    shares = F.avg_pool2d(planes[None], window, stride=1, padding=window // 2, count_include_pad=False)[0]
    classes = torch.cat([shares[1:], torch.zeros((2, *labels.shape), dtype=shares.dtype)])
    best, second = torch.topk(classes, 2, dim=0).values
    return Shares(shares[0].numpy(), best.numpy(), second.numpy())


def boundary_labels(shares: Shares, theta_scale: float = THETA_SCALE, theta_diff: float = THETA_DIFF,
                    between_foregrounds: bool = False) -> np.ndarray:
    """Eq. 3: BOUNDARY, FOREGROUND, BACKGROUND or IGNORE per pixel (H, W) uint8.

    With F the best foreground share and S0 the background share of the pixel's window:

    - BOUNDARY where min(F, S0) > theta_scale and |F - S0| < theta_diff;
    - BACKGROUND where S0 > 2 theta_scale and S0 - F >= 2 theta_diff;
    - FOREGROUND where F > 2 theta_scale and F - S0 >= 2 theta_diff;
    - IGNORE everywhere else: a band between boundary and non-boundary pixels, and windows with
      too many unknown pixels. Boundary wins where two rules hold.

    The paper prints one non-boundary rule, min(F, S0) > 2 theta_scale, which never holds: F + S0
    <= 1, so min(F, S0) <= 0.5, below 2 theta_scale for any theta_scale >= 0.25 (0.35 in the
    paper). Its loss (eq. 4) splits the non-boundary pixels into foreground and background by
    whether F or S0 is larger. The authors' code (github mt-cly/BES, step/make_boundary_label.py)
    uses the one-sided rules above, and so do we.

    ``between_foregrounds`` also marks as BOUNDARY the pixels between two foreground classes: the
    second best foreground share > theta_scale and best - second < theta_diff (the authors' code
    does this too, as a separate label).
    """
    background, best, second = shares
    labels = np.full(background.shape, IGNORE, dtype=np.uint8)
    labels[(background > 2 * theta_scale + TOLERANCE) & (background - best > 2 * theta_diff - TOLERANCE)] = BACKGROUND
    labels[(best > 2 * theta_scale + TOLERANCE) & (best - background > 2 * theta_diff - TOLERANCE)] = FOREGROUND
    boundary = (np.minimum(best, background) > theta_scale + TOLERANCE) & \
        (np.abs(best - background) < theta_diff - TOLERANCE)
    if between_foregrounds:
        boundary |= (second > theta_scale + TOLERANCE) & (best - second < theta_diff - TOLERANCE)
    labels[boundary] = BOUNDARY
    return labels
