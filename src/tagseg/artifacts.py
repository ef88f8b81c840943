"""Per-image score maps on disk: compressed npz with float16 scores and the classes they cover."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from tagseg.errors import DataError, StageError
from tagseg.rundir import atomic_write


def save_score_map(path: Path, scores: np.ndarray, classes) -> None:
    """Save (K, H, W) scores of the K listed class indices (0 = background, if present)."""
    classes = np.asarray(classes, dtype=np.int16)
    if scores.ndim != 3 or scores.shape[0] != len(classes):
        raise ValueError(f"scores {scores.shape} do not match {len(classes)} classes")
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, scores=scores.astype(np.float16), classes=classes))


def load_score_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(scores float32 (K, H, W), classes int (K,)); a damaged file raises DataError naming it."""
    try:
        with np.load(path) as data:
            scores, classes = data["scores"].astype(np.float32), data["classes"].astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path}: score map not found") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"{path}: damaged score map ({error})") from None
    if scores.ndim != 3 or scores.shape[0] != len(classes):
        raise DataError(f"{path}: score map has shape {scores.shape} for {len(classes)} classes")
    return scores, classes


def load_foreground_scores(path: Path, needed_by: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_score_map` of a map of tagged classes only; one with a background channel (a
    segmentation's) raises StageError, as the stages ``needed_by`` that threshold it cannot use it."""
    scores, classes = load_score_map(path)
    if 0 in classes:
        raise StageError(f"{path}: {needed_by} needs foreground-only score maps (no background channel)")
    return scores, classes
