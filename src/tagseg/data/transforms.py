"""Image transforms for training and inference (numpy / OpenCV in, float tensors out)."""

from __future__ import annotations

import cv2
import numpy as np
import torch


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, H, W) normalised for a backbone."""
    scaled = image.astype(np.float32) / 255.0
    return ((scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def random_scale_flip_crop(image: np.ndarray, rng: np.random.Generator, crop: int,
                           scale_range: tuple[float, float], labels: np.ndarray | None = None,
                           regions: np.ndarray | None = None):
    """Rescale so the long side is crop * U(scale_range), flip half the time, crop/pad to crop x crop.

    Returns the uint8 crop, a boolean mask of real (non-padded) pixels (callers zero the
    padding after normalisation: the backbone's mean colour, as the reference code does),
    and ``labels`` (H, W) put through the same geometry with nearest-neighbour resizing and
    padded with 255 (ignore), or None without labels. With ``regions`` (an (H, W) int32 map,
    e.g. superpixels) a fourth value is that map under the same geometry, padded with -1.
    """
    height, width = image.shape[:2]
    long_side = crop * rng.uniform(*scale_range)
    factor = long_side / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    image = resize(image, new_h, new_w)
    if labels is not None:
        labels = cv2.resize(labels, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    if regions is not None:
        regions = cv2.resize(regions.astype(np.int32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        image = image[:, ::-1]
        labels = labels[:, ::-1] if labels is not None else None
        regions = regions[:, ::-1] if regions is not None else None
    top = int(rng.integers(0, new_h - crop + 1)) if new_h > crop else 0
    left = int(rng.integers(0, new_w - crop + 1)) if new_w > crop else 0
    piece = image[top:top + crop, left:left + crop]
    out_top = int(rng.integers(0, crop - piece.shape[0] + 1))
    out_left = int(rng.integers(0, crop - piece.shape[1] + 1))
    canvas = np.zeros((crop, crop, 3), np.uint8)
    valid = np.zeros((crop, crop), bool)
    canvas[out_top:out_top + piece.shape[0], out_left:out_left + piece.shape[1]] = piece
    valid[out_top:out_top + piece.shape[0], out_left:out_left + piece.shape[1]] = True
    label_canvas = None
    if labels is not None:
        label_canvas = np.full((crop, crop), 255, np.uint8)
        label_canvas[valid] = labels[top:top + crop, left:left + crop].reshape(-1)
    if regions is None:
        return canvas, valid, label_canvas
    region_canvas = np.full((crop, crop), -1, np.int32)
    region_canvas[valid] = regions[top:top + crop, left:left + crop].reshape(-1)
    return canvas, valid, label_canvas, region_canvas


def to_batch(images: list[np.ndarray], mean, std) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalize(i, mean, std) for i in images]))
