"""Reading images and masks robustly, writing palette masks atomically.

Everything that touches pixels on disk goes through here so every reader reports bad
files the same way: a :class:`~tagseg.errors.DataError` whose message starts with the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tagseg.errors import DataError
from tagseg.rundir import atomic_write

IGNORE_INDEX = 255
_UNREADABLE = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map (256 x 3 uint8): class i gets the colour VOC tools expect."""
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((index >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


VOC_PALETTE = voc_palette()


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except _UNREADABLE as error:
        raise DataError(f"{path}: cannot decode image ({error})") from None
    return image


def read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """Return the image as RGB uint8 (H, W, 3) and, if it had to be converted, its original mode.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted; the
    second value lets a caller count them.
    """
    image = _open(path)
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy(), None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode != "F" and values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(values / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), mode
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy(), mode


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only: cheap, for indexing large datasets."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except _UNREADABLE as error:
        raise DataError(f"{path}: cannot decode image ({error})") from None


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """Return a class-index mask (H, W) uint8 with values in [0, num_classes) or 255 (ignored).

    Accepts palette PNGs (the usual VOC form), single-channel index PNGs (8 or 16 bit, as in
    SegmentationClassAug) and RGB masks drawn in the VOC colour map.
    """
    image = _open(path)
    if image.mode in ("RGB", "RGBA"):
        mask = _colours_to_indices(np.asarray(image.convert("RGB")), path)
    elif image.mode in ("P", "L", "1", "I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        if values.dtype == bool:
            values = values.astype(np.uint8)
        if values.max(initial=0) > 255 or values.min(initial=0) < 0:
            raise DataError(f"{path}: mask values {_few(np.unique(values[(values > 255) | (values < 0)]))} "
                            "are outside 0..255")
        mask = values.astype(np.uint8)
    else:
        raise DataError(f"{path}: unsupported mask mode {image.mode!r} (use a palette or grayscale PNG)")
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise DataError(f"{path}: mask values {_few(bad)} are outside the class range 0..{num_classes - 1} "
                        f"(and {IGNORE_INDEX} = ignore)")
    return mask


def read_saliency_map(path: Path) -> np.ndarray:
    """A saliency map of any common bit depth as float32 (H, W) in [0, 1].

    1-bit and 8-bit grayscale are divided by their full scale (1, 255), 16-bit by 65535; 32-bit
    integers by 65535 when a value exceeds 255, else by 255; float maps are taken as [0, 1] (or
    0..255 when a value exceeds 1). Colour maps count by their luminance.
    """
    image = _open(path)
    mode = image.mode
    if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
        image, mode = image.convert("L"), "L"
    values = np.asarray(image)
    if mode == "1":
        return values.astype(np.float32)
    if mode == "L":
        return values.astype(np.float32) / 255.0
    if mode.startswith("I;16"):
        return values.astype(np.float32) / 65535.0
    if mode in ("I", "F"):
        values = values.astype(np.float64)
        if not np.isfinite(values).all() or values.min(initial=0) < 0:
            raise DataError(f"{path}: saliency values must be finite and non-negative")
        full = (65535.0 if values.max(initial=0) > 255 else 255.0) if mode == "I" else \
            (255.0 if values.max(initial=0) > 1 else 1.0)
        return np.clip(values / full, 0.0, 1.0).astype(np.float32)
    raise DataError(f"{path}: unsupported saliency map mode {mode!r} (use a grayscale PNG)")


def read_boundary_map(path: Path) -> np.ndarray:
    """A boundary map stored as an 8-bit grayscale PNG, as float64 values / 255 in [0, 1] (H, W).

    Float64 keeps stored levels such as 204 / 255 equal to the decimal threshold 0.8.
    """
    image = _open(path)
    if image.mode != "L":
        raise DataError(f"{path}: a boundary map must be an 8-bit grayscale image, this one is {image.mode!r}")
    return np.asarray(image, dtype=np.float64) / 255.0


def _colours_to_indices(rgb: np.ndarray, path: Path) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_codes = (VOC_PALETTE[:, 0].astype(np.int32) << 16) | (VOC_PALETTE[:, 1].astype(np.int32) << 8) \
        | VOC_PALETTE[:, 2]
    order = np.argsort(palette_codes)
    position = np.searchsorted(palette_codes[order], codes).clip(0, 255)
    found = palette_codes[order][position] == codes
    if not found.all():
        unknown = np.unique(rgb[~found].reshape(-1, 3), axis=0)[:3].tolist()
        raise DataError(f"{path}: RGB mask has colours outside the VOC colour map, e.g. {unknown}")
    return order[position].astype(np.uint8)


def _few(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a class-index mask as a VOC palette PNG (lossless), atomically."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    image = Image.fromarray(mask, mode="P")
    image.putpalette(VOC_PALETTE.tobytes())
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_boundary_map(path: Path, boundary: np.ndarray) -> None:
    """Write a boundary probability map (H, W) in [0, 1] as an 8-bit grayscale PNG (value / 255), atomically."""
    if boundary.ndim != 2:
        raise ValueError(f"boundary map must be 2-D, got {boundary.shape}")
    pixels = np.rint(np.clip(boundary, 0.0, 1.0) * 255).astype(np.uint8)
    atomic_write(path, lambda tmp: Image.fromarray(pixels, mode="L").save(tmp, format="PNG"))


def write_label_map(path: Path, labels: np.ndarray) -> None:
    """Write a region label map (superpixel indices 0..65535) as a 16-bit grayscale PNG, atomically."""
    if labels.ndim != 2 or labels.min(initial=0) < 0 or labels.max(initial=0) > 65535:
        raise ValueError(f"label map must be 2-D with values in 0..65535, got {labels.shape}")
    pixels = labels.astype(np.uint16)
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def read_label_map(path: Path) -> np.ndarray:
    """A region label map written by :func:`write_label_map` (or any 8/16-bit grayscale PNG) as int32 (H, W)."""
    image = _open(path)
    if image.mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
        raise DataError(f"{path}: a label map must be an 8- or 16-bit grayscale image, this one is {image.mode!r}")
    return np.asarray(image).astype(np.int32)


def write_image(path: Path, image: np.ndarray, quality: int = 95) -> None:
    """Write an RGB uint8 image atomically; JPEG or PNG by the file suffix."""
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    options = {"quality": quality} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format=fmt, **options))


def colorize(mask: np.ndarray) -> np.ndarray:
    """RGB rendering of a class-index mask with the VOC colour map."""
    return VOC_PALETTE[mask]
