"""Fully connected CRF (Krähenbühl & Koltun 2011) via pydensecrf: snaps label and score maps to colour edges.

Defaults are the PSA / IRN settings. pydensecrf never releases the GIL (its extension does
not call PyEval_SaveThread), so threads cannot run two inferences at once: stages spread
images over processes with ``tagseg.progress.parallel_map(..., processes=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

PROBABILITY_FLOOR = 1e-5


@dataclass(frozen=True)
class CrfParams:
    """Kernel widths / weights of the smoothness (gaussian) and appearance (bilateral) terms."""

    gaussian_sxy: float = 3
    gaussian_compat: float = 3
    bilateral_sxy: float = 50
    bilateral_srgb: float = 5
    bilateral_compat: float = 10
    iterations: int = 10


def _infer(image: np.ndarray, unary: np.ndarray, params: CrfParams) -> np.ndarray:
    """Mean-field posterior (C, H * W) for a unary energy (C, H * W)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    if unary.shape[1] != height * width:
        raise ValueError(f"{unary.shape[1]} unary pixels for a {height}x{width} image")
    crf = dcrf.DenseCRF2D(width, height, unary.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=params.bilateral_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32)


def crf_probabilities(image: np.ndarray, probabilities: np.ndarray, params: CrfParams = CrfParams()) -> np.ndarray:
    """Posterior (C, H, W) float32 of class probabilities (C, H, W) that sum to 1 over C.

    The unary energy is -log p, with p floored at 1e-5 so certain zeros stay finite.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    classes, height, width = probabilities.shape
    unary = -np.log(np.clip(probabilities, PROBABILITY_FLOOR, 1.0)).reshape(classes, -1)
    return _infer(image, unary, params).reshape(classes, height, width)


def crf_labels(image: np.ndarray, labels: np.ndarray, num_labels: int, gt_prob: float = 0.7,
               params: CrfParams = CrfParams()) -> np.ndarray:
    """Labels (H, W) in [0, num_labels), dtype of ``labels``, after a CRF trusting each input label with ``gt_prob``.

    The rest of the probability is spread evenly over the other labels (label 0 is a class
    like any other). With a single label there is nothing to decide and the input is returned.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels outside 0..{num_labels - 1}")
    if num_labels < 2:
        return labels.copy()
    unary = unary_from_labels(labels.astype(np.int64), num_labels, gt_prob, zero_unsure=False)
    posterior = _infer(image, unary, params)
    return np.argmax(posterior, axis=0).reshape(labels.shape).astype(labels.dtype)
