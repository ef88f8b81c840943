"""PerimeterFit (SILOP §III.C, Algorithm 2): shrink CAM positives to object perimeters.

A perimeter map cuts the image into target regions: 4-connected pixels bounded by edges
and the image border. SILOP flood-fills from every CAM-negative pixel and drops what the
fill reaches; equivalently, a region survives for a class only if *none* of its pixels is
negative for that class, i.e. if its minimum score is above the threshold. Edge pixels
belong to no region and stay positive exactly where the CAM is. Computing each region's
minimum once (connected components + an unbuffered minimum) gives the mask for any
threshold without a per-pixel loop, which also makes the threshold grid search cheap.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import cv2
import numpy as np

Combination = Literal["silop", "product"]


def perimeter_regions(perimeter: np.ndarray) -> np.ndarray:
    """Region index per pixel (int32 H, W): 0 on edge pixels, 1..R for the 4-connected regions."""
    return cv2.connectedComponents((~perimeter).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)[1]


def region_minimum(scores: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Each class's minimum score per region (K, R + 1); column 0 (edge pixels) is unused."""
    count = int(regions.max()) + 1
    flat = regions.reshape(-1)
    minimum = np.full((len(scores), count), np.inf, dtype=np.float32)
    for k in range(len(scores)):
        np.minimum.at(minimum[k], flat, scores[k].reshape(-1))
    return minimum


def fit_masks(scores: np.ndarray, regions: np.ndarray, threshold: float,
              minimum: np.ndarray | None = None) -> np.ndarray:
    """Bool (K, H, W): pixels of each class's CAM that lie in a region with no CAM-negative pixel
    (score <= ``threshold``), plus edge pixels whose own score is positive."""
    minimum = region_minimum(scores, regions) if minimum is None else minimum
    keep = minimum > threshold
    keep[:, 0] = True  # edge pixels: decided by their own score below
    # inside a kept region every score is above the threshold already, so the AND only acts on edges
    return keep[:, regions] & (scores > threshold)


def combine(scores: np.ndarray, masks: list[np.ndarray], combination: Combination = "silop") -> np.ndarray:
    """Refined scores from a CAM and its PerimeterFit masks (one per perimeter variant).

    ``silop``: SILOP's ``cam * mask_1 * ... * mask_n + cam``, halved so scores stay in [0, 1]
    (a monotone rescale; thresholds on SILOP's sum are twice ours): pixels every variant
    keeps retain their score, the others drop to half. ``product``: ``cam * mask_1 * ...``,
    Algorithm 2's hard removal.
    """
    kept = np.logical_and.reduce(masks) if masks else np.ones(scores.shape, bool)
    if combination == "product":
        return np.where(kept, scores, 0.0).astype(np.float32)
    if combination == "silop":
        return (scores * (1.0 + kept) / 2.0).astype(np.float32)
    raise ValueError(f"unknown combination {combination!r}")


def flood_fill_reference(scores: np.ndarray, perimeter: np.ndarray, threshold: float) -> np.ndarray:
    """Algorithm 2 literally, for tests and benchmarks only (pure Python, seconds per image): from every
    CAM-negative pixel, flood-fill over 4-neighbours up to the perimeter edges and drop what the fill
    reaches; edge pixels keep their own CAM decision. Same result as :func:`fit_masks`."""
    height, width = perimeter.shape
    masks = np.zeros(scores.shape, bool)
    for k, cam in enumerate(scores):
        removed = np.zeros((height, width), bool)
        for y, x in zip(*np.nonzero((cam <= threshold) & ~perimeter)):
            if removed[y, x]:
                continue
            queue = deque([(y, x)])
            removed[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                    if 0 <= ny < height and 0 <= nx < width and not perimeter[ny, nx] and not removed[ny, nx]:
                        removed[ny, nx] = True
                        queue.append((ny, nx))
        masks[k] = np.where(perimeter, cam > threshold, ~removed)
    return masks
