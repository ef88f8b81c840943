"""Size normalisation: one recipe works on 320 px, 500 px and 640 px datasets alike.

Every size-dependent default is expressed for images whose long side is ``REFERENCE_SIZE``
(320 px, msrc-voc's size, on which the shipped defaults were measured). A dataset's
``image_size`` (its median long side unless set) converts them:

- inference scales (make_cam, segment, the random walk's input) are multiplied by
  ``REFERENCE_SIZE / image_size``, so the networks see the same pixel sizes as in training
  whatever the photos' resolution (make_cam at 1.5-3 gives long sides of 480-960 px on
  320 px and on 640 px photos alike);
- widths in image pixels (the dense CRF's kernels, BES's counting window) are multiplied by
  ``image_size / REFERENCE_SIZE``.

Training crops need no conversion: every training stage rescales an image so that its long
side is ``crop_size * U(scale_range)`` pixels, whatever its original size. USS likewise runs on
the image shrunk to an absolute ``max_side``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from tagseg.data.dataset import Dataset
from tagseg.data.imageio import image_size as image_dimensions
from tagseg.errors import DataError

REFERENCE_SIZE = 320
SAMPLED_IMAGES = 500  # header reads for the median: enough for a stable value on COCO-sized sets

ImageSize = Annotated[int, Field(ge=16)] | Literal["auto"]
IMAGE_SIZE_HELP = ("long side (px) the size-dependent settings are converted for; 'auto': the median long side "
                   "of the split's images")


def median_long_side(paths: list) -> int:
    """The median long side of (up to ``SAMPLED_IMAGES`` evenly spaced) image files, read from headers.

    Unreadable files are passed over here: the stage that reads their pixels reports them.
    """
    step = max(1, len(paths) // SAMPLED_IMAGES)
    sides = []
    for path in paths[::step]:
        try:
            sides.append(max(image_dimensions(path)))
        except DataError:
            continue
    return int(round(float(np.median(sides)))) if sides else REFERENCE_SIZE


def resolve_image_size(value: int | str, dataset: Dataset) -> int:
    """``value`` itself, or for 'auto' the median long side of the dataset's images."""
    return median_long_side([r.image_path for r in dataset.records]) if value == "auto" else int(value)


def input_scales(scales, image_size: int) -> tuple[float, ...]:
    """Inference scales given for a ``REFERENCE_SIZE`` image, as factors for images of ``image_size``."""
    return tuple(round(s * REFERENCE_SIZE / image_size, 6) for s in scales)


def image_pixels(width: float, image_size: int) -> float:
    """A width in pixels of a ``REFERENCE_SIZE`` image, in pixels of an ``image_size`` image."""
    return round(width * image_size / REFERENCE_SIZE, 6)


def odd_window(width: float, image_size: int, minimum: int = 3) -> int:
    """A window side given for a ``REFERENCE_SIZE`` image, as the nearest odd pixel count (at least
    ``minimum``) for an ``image_size`` image: a window centred on its pixel has an odd side."""
    pixels = image_pixels(width, image_size)
    return max(minimum, 2 * int(np.floor((pixels - 1) / 2 + 0.5)) + 1)
