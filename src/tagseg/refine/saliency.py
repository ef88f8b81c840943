"""Saliency maps and their refinement by CAMs: the dissertation's ch. 2, §2.3.2 (eq. 2.4-2.6).

A saliency map says which pixels belong to some object, not to which class. Here it comes
from the user's own saliency model (a folder of maps, the usual case), from OpenCV's
model-free static saliency (a substitute: it knows nothing of objects), or from the
binarised ground truth (the dissertation's oracle rows C1-C4). The classifier's CAMs then
correct it (eq. 2.6): confident CAM pixels the map calls background become foreground, and
salient pixels with low CAM scores become unlabelled rather than background, because a low
score may only mean a non-discriminative part of the object (the dissertation's Table 2.5:
relabelling them background cost 5.6 mIoU on VOC).

Maps in this module are float arrays in [0, 1] (continuous saliency) or uint8 masks with 0 =
background, 1 = foreground and 255 = unlabelled. No file I/O here: the stages read and write.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np

from tagseg.data.imageio import IGNORE_INDEX

OPENCV_METHODS = ("spectral_residual", "fine_grained")


def opencv_saliency(image: np.ndarray, method: str) -> np.ndarray:
    """OpenCV's static saliency of an RGB uint8 image: float32 (H, W) in [0, 1].

    ``spectral_residual`` (Hou & Zhang 2007) works on a 64 px wide copy and is smooth and blobby;
    ``fine_grained`` (Montabone & Soto 2010, centre-surround differences) follows edges.
    """
    if method == "spectral_residual":
        detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    elif method == "fine_grained":
        detector = cv2.saliency.StaticSaliencyFineGrained_create()
    else:
        raise ValueError(f"unknown OpenCV saliency method {method!r}; choose from {', '.join(OPENCV_METHODS)}")
    ok, values = detector.computeSaliency(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV wants BGR
    if not ok:
        raise ValueError(f"OpenCV's {method} saliency failed on an image of shape {image.shape}")
    values = np.asarray(values, np.float32)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def binarize(values: np.ndarray, threshold: float | Literal["otsu"]) -> np.ndarray:
    """A [0, 1] saliency map -> uint8 mask, 1 where the value is above ``threshold``.

    ``otsu``: Otsu's split of this map's own histogram (per image, label-free); a constant map
    has no split and is all background.
    """
    if threshold == "otsu":
        levels = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
        if levels.min() == levels.max():
            return np.zeros(values.shape, np.uint8)
        cut, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return (levels > cut).astype(np.uint8)
    return (values > float(threshold)).astype(np.uint8)


def ground_truth_saliency(mask: np.ndarray) -> np.ndarray:
    """A class mask -> the oracle saliency: every object pixel 1, background 0, void stays 255."""
    return np.where(mask == IGNORE_INDEX, IGNORE_INDEX, (mask > 0).astype(np.uint8)).astype(np.uint8)


def class_agnostic_activation(scores: np.ndarray) -> np.ndarray:
    """Eq. 2.5: B = max over the tagged classes of M*_c / max_u M*_c.

    ``scores`` (K, H, W) are the tagged classes' CAMs already divided by their maxima (the
    make_cam stage's output; eq. 2.4's maximum over scales is its ``reduce: max``). No tags:
    B is 0 everywhere.
    """
    if not len(scores):
        return np.zeros(scores.shape[1:], np.float32)
    return scores.max(axis=0).astype(np.float32)


def refine_saliency(activation: np.ndarray, saliency: np.ndarray, tau1: float = 0.8, tau2: float = 0.3) -> np.ndarray:
    """Eq. 2.6: R = 1 where B > tau1 and O = 0; unlabelled (255) where B < tau2 and O = 1; else O.

    ``saliency`` O is a 0/1 mask (255 = void, kept as it is).
    """
    if activation.shape != saliency.shape:
        raise ValueError(f"activation {activation.shape} and saliency {saliency.shape} differ in size")
    refined = saliency.copy()
    refined[(activation > tau1) & (saliency == 0)] = 1
    refined[(activation < tau2) & (saliency == 1)] = IGNORE_INDEX
    return refined
