"""Perimeter maps: Canny edges of an image simplified to piecewise-constant colour clusters.

Edges of the raw photo are too fine to outline objects; edges of the USS-simplified image
(every pixel painted with its cluster's mean colour) mostly follow object perimeters.
"""

from __future__ import annotations

import cv2
import numpy as np


def simplified_image(image: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Paint each cluster of ``clusters`` (H, W ints) with its mean RGB colour (uint8)."""
    flat = clusters.reshape(-1)
    counts = np.bincount(flat)
    means = np.stack([np.bincount(flat, weights=image[..., c].reshape(-1), minlength=len(counts))
                      for c in range(3)], axis=1) / np.maximum(counts, 1)[:, None]
    return np.round(means[clusters]).astype(np.uint8)


def perimeter_map(simplified: np.ndarray, sigma: float = 1.0, low_threshold: float = 50.0,
                  high_threshold: float = 100.0) -> np.ndarray:
    """Canny edges (bool H, W) of an RGB image: Gaussian smoothing (``sigma`` pixels, 0 = none),
    then OpenCV's Canny, whose gradient is the largest over the three colour channels."""
    image = np.ascontiguousarray(simplified, dtype=np.uint8)
    if sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return cv2.Canny(image, low_threshold, high_threshold, L2gradient=True) > 0
