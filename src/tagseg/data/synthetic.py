"""Procedural synthetic dataset for weakly supervised segmentation demos and tests.

Each sample is a textured background with 1..N textured objects painted on top.
Every class has its own silhouette *and* its own texture, so a small CNN can learn
the classes from image-level tags alone, while random colours, sizes, rotations,
backgrounds and occlusions keep the task from being trivial.

One class (``WATER_CLASS``) always comes with a band of water below it that is
labelled background.  This reproduces the co-occurrence problem of real WSSS data
(boats/water, trains/rails): class activation maps of that class leak into the
water, which is exactly what refinement stages have to fix.

Everything is a pure function of ``(seed, index)``: no state, no file I/O, so
any sample can be produced independently, in any order or process.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from skimage.draw import polygon as _raster_polygon

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "background",
    "disc",
    "box",
    "triangle",
    "star",
    "cross",
    "boat",
)
WATER_CLASS = "boat"

_BOAT_INDEX = SYNTHETIC_CLASSES.index(WATER_CLASS)
# Object size (longest extent) as a fraction of the short image side.
DEFAULT_OBJECT_SIZE = (0.15, 0.45)
_MIN_OBJECT_SIZE_PX = 6.0
# Every placed object keeps at least this fraction of its own area visible,
# so the tags read from the mask equal the set of placed objects.
_MIN_VISIBLE_FRACTION = 0.25
_MIN_VISIBLE_PX = 4
_PLACEMENT_TRIES = 30
_WATER_WITHOUT_BOAT_P = 0.1
_MIN_IMAGE_SIDE = 32

Grid = tuple[np.ndarray, np.ndarray]  # (yy, xx) pixel coordinates, float32 HxW
# paint(rng, xs, ys, part_ids, cx, cy) -> (N, 3) float colours of the pixels (ys, xs)
Painter = Callable[
    [np.random.Generator, np.ndarray, np.ndarray, np.ndarray, float, float], np.ndarray
]


# --------------------------------------------------------------------------- colours


def _colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float],
            hue: float | None = None) -> np.ndarray:
    """Random RGB colour (0..255 float) drawn in HSV so saturation/brightness are controllable."""
    h = rng.random() if hue is None else hue % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _muted(rng: np.random.Generator) -> np.ndarray:
    """Background colours are desaturated so saturated objects usually stand out."""
    return _colour(rng, (0.05, 0.5), (0.25, 0.9))


def _contrasting_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two clearly different colours for a two-tone texture (different hue and brightness)."""
    hue = rng.random()
    light = _colour(rng, (0.45, 1.0), (0.7, 1.0), hue)
    dark = _colour(rng, (0.3, 1.0), (0.15, 0.45), hue + rng.uniform(0.2, 0.8))
    return (light, dark) if rng.random() < 0.5 else (dark, light)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel linear blend of two colours; ``t`` has shape (N,) or (H, W)."""
    t = t[..., None]
    return a * (1.0 - t) + b * t


# ----------------------------------------------------------------------- backgrounds


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int],
                 channels: int = 1) -> np.ndarray:
    """Smooth random field in [0, 1]: a coarse random lattice, smoothstep-interpolated."""
    cy, cx = cells
    lattice = rng.random((cy + 1, cx + 1, channels), dtype=np.float32)
    fy = (np.arange(h, dtype=np.float32) + 0.5) * (cy / h)
    fx = (np.arange(w, dtype=np.float32) + 0.5) * (cx / w)
    y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
    ty, tx = fy - y0, fx - x0
    ty = (ty * ty * (3 - 2 * ty))[:, None, None]
    tx = (tx * tx * (3 - 2 * tx))[None, :, None]
    rows = lattice[y0] * (1 - ty) + lattice[y0 + 1] * ty
    return rows[:, x0] * (1 - tx) + rows[:, x0 + 1] * tx


def _bg_gradient(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    yy, xx = grid
    angle = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _mix(_muted(rng), _muted(rng), t)


def _bg_clouds(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    h, w = grid[0].shape
    field = _value_noise(rng, h, w, (int(rng.integers(2, 5)), int(rng.integers(2, 6))))[..., 0]
    tint = _value_noise(rng, h, w, (int(rng.integers(3, 7)), int(rng.integers(3, 7))), 3)
    return _mix(_muted(rng), _muted(rng), field) + (tint - 0.5) * 50.0


def _bg_blobs(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    yy, xx = grid
    h, w = yy.shape
    img = np.broadcast_to(_muted(rng), (h, w, 3)).astype(np.float32)
    for _ in range(int(rng.integers(3, 8))):
        cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
        sigma = rng.uniform(0.08, 0.3) * max(h, w)
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma * sigma))
        img = _mix(img, _muted(rng), weight * rng.uniform(0.5, 1.0))
    return img


def _bg_mottled(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    h, w = grid[0].shape
    coarse = (int(rng.integers(4, 9)), int(rng.integers(5, 12)))
    fine = (2 * coarse[0], 2 * coarse[1])
    field = 0.65 * _value_noise(rng, h, w, coarse) + 0.35 * _value_noise(rng, h, w, fine)
    img = _muted(rng) * (1.0 + (field - 0.5) * rng.uniform(0.4, 0.8))
    return img + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(4, 10)


_BACKGROUND_STYLES: tuple[Callable[[np.random.Generator, Grid], np.ndarray], ...] = (
    _bg_gradient, _bg_clouds, _bg_blobs, _bg_mottled,
)


def _background(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """One background style, optionally blended with a second, plus fine grain."""
    h, w = grid[0].shape
    img = _BACKGROUND_STYLES[rng.integers(len(_BACKGROUND_STYLES))](rng, grid)
    if rng.random() < 0.5:
        other = _BACKGROUND_STYLES[rng.integers(len(_BACKGROUND_STYLES))](rng, grid)
        alpha = rng.uniform(0.25, 0.6)
        img = img * (1.0 - alpha) + other * alpha
    return img + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2, 7)


# ----------------------------------------------------------------------------- water


def _water_surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Per-column y of the wavy water line, in the lower half of the image."""
    level = rng.uniform(0.5, 0.66) * h
    amplitude = rng.uniform(0.01, 0.03) * h
    wavelength = rng.uniform(0.25, 0.6) * w
    x = np.arange(w, dtype=np.float32)
    return level + amplitude * np.sin(2 * np.pi * x / wavelength + rng.uniform(0, 2 * np.pi))


def _paint_water(rng: np.random.Generator, img: np.ndarray, grid: Grid,
                 surface: np.ndarray) -> None:
    """Blue band below ``surface``: darker with depth, with wavy light ripples."""
    yy, xx = grid
    h, w = yy.shape
    ys, xs = np.nonzero(yy >= surface[None, :])
    y, x = yy[ys, xs], xx[ys, xs]
    shallow = _colour(rng, (0.55, 0.85), (0.6, 0.9), rng.uniform(0.53, 0.62))
    deep = shallow * rng.uniform(0.55, 0.75)
    depth = np.clip((y - surface[xs]) / max(h - float(surface.min()), 1.0), 0.0, 1.0)
    period_y = rng.uniform(0.04, 0.08) * h
    period_x = rng.uniform(0.15, 0.35) * w
    wobble = _value_noise(rng, h, w, (int(rng.integers(3, 7)), int(rng.integers(4, 10))))[ys, xs, 0]
    phase = (2 * np.pi * y / period_y + 1.5 * np.sin(2 * np.pi * x / period_x + rng.uniform(0, 6.3))
             + 6.0 * wobble)
    highlight = np.clip((np.sin(phase) - 0.6) / 0.4, 0.0, 1.0) * 0.3
    colour = _mix(_mix(shallow, deep, depth), np.float32(255.0), highlight)
    img[ys, xs] = colour + rng.standard_normal((len(ys), 1), dtype=np.float32) * 4.0


# --------------------------------------------------------------------------- objects


def _to_local(x: np.ndarray, y: np.ndarray, cx: float, cy: float,
              angle: float) -> tuple[np.ndarray, np.ndarray]:
    """World pixel coordinates -> object frame (origin at anchor, rotated by ``angle``)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return dx * c + dy * s, -dx * s + dy * c


def _polygon(shape: tuple[int, int], local: np.ndarray, cx: float, cy: float,
             angle: float) -> np.ndarray:
    """Rasterise a polygon given in the object frame; exact boolean mask, no antialiasing."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = local[:, 0], local[:, 1]
    rr, cc = _raster_polygon(cy + u * s + v * c, cx + u * c - v * s, shape)
    mask = np.zeros(shape, dtype=bool)
    mask[rr, cc] = True
    return mask


@dataclass(frozen=True)
class _Object:
    """A sampled object: fixed shape/texture parameters, free placement.

    ``geometry(grid, cx, cy)`` returns a uint8 part map (0 = outside) and
    ``paint(rng, xs, ys, parts, cx, cy)`` returns the (N, 3) colours of exactly
    the pixels ``(ys, xs)`` of that map, so mask and pixels can never disagree.
    ``extent`` is the half size used to keep the object mostly inside the image.
    """

    geometry: Callable[[Grid, float, float], np.ndarray]
    paint: Painter
    extent: float
    floats_on_water: bool = False


def _disc(rng: np.random.Generator, size: float) -> _Object:
    """Near-circular ellipse painted in a rotated polka-dot pattern."""
    ra = size / 2
    rb = ra * rng.uniform(0.8, 1.0)
    angle = rng.uniform(0, np.pi)
    base, dot = _contrasting_pair(rng)
    period = max(3.5, size * rng.uniform(0.18, 0.28))
    dot_radius = period * rng.uniform(0.22, 0.34)
    grid_angle, offset = rng.uniform(0, np.pi), rng.uniform(0, period, 2)

    def geometry(grid: Grid, cx: float, cy: float) -> np.ndarray:
        u, v = _to_local(grid[1], grid[0], cx, cy, angle)
        return ((u / ra) ** 2 + (v / rb) ** 2 <= 1.0).astype(np.uint8)

    def paint(rng, xs, ys, parts, cx, cy):
        u, v = _to_local(xs, ys, cx, cy, grid_angle)
        du = (u + offset[0]) % period - period / 2
        dv = (v + offset[1]) % period - period / 2
        return _mix(base, dot, (du * du + dv * dv <= dot_radius ** 2).astype(np.float32))

    return _Object(geometry, paint, max(ra, rb))


def _box(rng: np.random.Generator, size: float) -> _Object:
    """Rotated rectangle with hard two-tone stripes."""
    a = size / 2
    b = a * rng.uniform(0.55, 1.0)
    angle = rng.uniform(0, np.pi)
    first, second = _contrasting_pair(rng)
    period = max(4.0, size * rng.uniform(0.14, 0.24))
    stripe_angle = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]) + rng.uniform(-0.15, 0.15)
    offset = rng.uniform(0, period)

    def geometry(grid: Grid, cx: float, cy: float) -> np.ndarray:
        u, v = _to_local(grid[1], grid[0], cx, cy, angle)
        return ((np.abs(u) <= a) & (np.abs(v) <= b)).astype(np.uint8)

    def paint(rng, xs, ys, parts, cx, cy):
        u, _ = _to_local(xs, ys, cx, cy, angle + stripe_angle)
        return _mix(first, second, ((u + offset) % period < period / 2).astype(np.float32))

    return _Object(geometry, paint, float(np.hypot(a, b)))


def _triangle(rng: np.random.Generator, size: float) -> _Object:
    """Jittered (roughly equilateral) triangle with a checkerboard texture."""
    radius = size / 2
    corner_angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.2, 0.2, 3)
    corner_radii = radius * rng.uniform(0.9, 1.1, 3)
    local = np.stack([np.cos(corner_angles), np.sin(corner_angles)], axis=1) * corner_radii[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    first, second = _contrasting_pair(rng)
    cell = max(3.0, size * rng.uniform(0.1, 0.17))
    check_angle = rng.uniform(0, np.pi / 2)

    def geometry(grid: Grid, cx: float, cy: float) -> np.ndarray:
        return _polygon(grid[0].shape, local, cx, cy, angle).astype(np.uint8)

    def paint(rng, xs, ys, parts, cx, cy):
        u, v = _to_local(xs, ys, cx, cy, check_angle)
        parity = (np.floor(u / cell) + np.floor(v / cell)) % 2
        return _mix(first, second, parity.astype(np.float32))

    return _Object(geometry, paint, float(corner_radii.max()))


def _star(rng: np.random.Generator, size: float) -> _Object:
    """Five-pointed star shaded with a radial gradient from its centre to its tips."""
    outer = size / 2
    inner = outer * rng.uniform(0.38, 0.52)
    vertex_angles = np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, outer, inner)
    local = np.stack([np.cos(vertex_angles), np.sin(vertex_angles)], axis=1) * radii[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    centre, tips = _contrasting_pair(rng)
    gamma = rng.uniform(0.7, 1.4)

    def geometry(grid: Grid, cx: float, cy: float) -> np.ndarray:
        return _polygon(grid[0].shape, local, cx, cy, angle).astype(np.uint8)

    def paint(rng, xs, ys, parts, cx, cy):
        t = np.clip(np.hypot(xs - cx, ys - cy) / outer, 0.0, 1.0) ** gamma
        return _mix(centre, tips, t.astype(np.float32))

    return _Object(geometry, paint, outer)


def _cross(rng: np.random.Generator, size: float) -> _Object:
    """Plus-shaped cross filled with strong per-pixel speckle noise."""
    arm = size / 2
    half_width = arm * rng.uniform(0.22, 0.36)
    angle = rng.uniform(0, np.pi / 2)
    base = _colour(rng, (0.4, 1.0), (0.35, 0.85))
    luminance_sigma = rng.uniform(35, 55)
    salt_pepper = rng.uniform(0.03, 0.1)

    def geometry(grid: Grid, cx: float, cy: float) -> np.ndarray:
        u, v = _to_local(grid[1], grid[0], cx, cy, angle)
        au, av = np.abs(u), np.abs(v)
        horizontal = (au <= arm) & (av <= half_width)
        vertical = (au <= half_width) & (av <= arm)
        return (horizontal | vertical).astype(np.uint8)

    def paint(rng, xs, ys, parts, cx, cy):
        n = len(xs)
        colour = base + rng.standard_normal((n, 1), dtype=np.float32) * luminance_sigma
        colour += rng.standard_normal((n, 3), dtype=np.float32) * 12.0
        flips = rng.random(n) < salt_pepper
        colour[flips] = np.where(rng.random((int(flips.sum()), 1)) < 0.5, 20.0, 235.0)
        return colour

    return _Object(geometry, paint, float(np.hypot(arm, half_width)))


_HULL, _MAST, _SAIL = 1, 2, 3


def _boat(rng: np.random.Generator, size: float) -> _Object:
    """Sailing boat: planked hull, mast and one or two sails; anchored at the deck centre."""
    facing = 1.0 if rng.random() < 0.5 else -1.0
    top_width = size
    bottom_width = size * rng.uniform(0.55, 0.75)
    hull_height = size * rng.uniform(0.2, 0.28)
    hull = np.array([
        [-top_width / 2, 0.0],
        [top_width / 2, -0.06 * size],
        [bottom_width / 2, hull_height],
        [-bottom_width / 2 + 0.05 * size, hull_height],
    ])
    mast_x = size * rng.uniform(-0.12, 0.08)
    mast_half = max(1.0, 0.025 * size)
    mast_height = size * rng.uniform(0.65, 0.85)
    boom = -0.1 * size
    mast = np.array([[mast_x - mast_half, -mast_height], [mast_x + mast_half, -mast_height],
                     [mast_x + mast_half, 0.0], [mast_x - mast_half, 0.0]])
    sails = [np.array([[mast_x, -mast_height * 0.95], [mast_x, boom],
                       [mast_x + size * rng.uniform(0.3, 0.45), boom]])]
    if rng.random() < 0.5:
        sails.append(np.array([[mast_x, -mast_height * 0.85], [mast_x, boom],
                               [mast_x - size * rng.uniform(0.25, 0.4), boom]]))
    flip = np.array([facing, 1.0])
    hull, mast, sails = hull * flip, mast * flip, [s * flip for s in sails]
    angle = rng.uniform(-0.15, 0.15)

    if rng.random() < 0.7:
        wood = _colour(rng, (0.4, 0.75), (0.35, 0.7), rng.uniform(0.03, 0.11))
    else:
        wood = _colour(rng, (0.3, 0.9), (0.4, 0.9))
    mast_colour = _colour(rng, (0.2, 0.6), (0.1, 0.3), rng.uniform(0.03, 0.11))
    sail_colour = _colour(rng, (0.0, 0.3), (0.85, 1.0))
    plank = max(3.0, hull_height / rng.uniform(2.5, 4.5))
    plank_phase = rng.uniform(0, 2 * np.pi)

    def geometry(grid: Grid, cx: float, cy: float) -> np.ndarray:
        shape = grid[0].shape
        parts = np.zeros(shape, dtype=np.uint8)
        for sail in sails:
            parts[_polygon(shape, sail, cx, cy, angle)] = _SAIL
        parts[_polygon(shape, hull, cx, cy, angle)] = _HULL
        parts[_polygon(shape, mast, cx, cy, angle)] = _MAST
        return parts

    def paint(rng, xs, ys, parts, cx, cy):
        u, v = _to_local(xs, ys, cx, cy, angle)
        colour = np.empty((len(xs), 3), dtype=np.float32)
        is_hull = parts == _HULL
        row = np.floor(v[is_hull] / plank)
        shade = 1.0 + 0.1 * np.sin(row * 2.7 + plank_phase)
        shade = np.where(v[is_hull] % plank < 1.0, 0.55, shade)
        colour[is_hull] = wood * shade[:, None]
        colour[parts == _MAST] = mast_colour
        is_sail = parts == _SAIL
        billow = np.clip(np.abs(u[is_sail] - mast_x * facing) / (0.45 * size), 0.0, 1.0)
        colour[is_sail] = sail_colour * (1.0 - 0.3 * billow)[:, None]
        return colour

    return _Object(geometry, paint, top_width / 2, floats_on_water=True)


_MAKERS: dict[int, Callable[[np.random.Generator, float], _Object]] = {
    SYNTHETIC_CLASSES.index("disc"): _disc,
    SYNTHETIC_CLASSES.index("box"): _box,
    SYNTHETIC_CLASSES.index("triangle"): _triangle,
    SYNTHETIC_CLASSES.index("star"): _star,
    SYNTHETIC_CLASSES.index("cross"): _cross,
    _BOAT_INDEX: _boat,
}


def _place(rng: np.random.Generator, obj: _Object, size: float, w: int, h: int,
           surface: np.ndarray | None) -> tuple[float, float]:
    """Random anchor keeping the object mostly in frame; boats sit on or in the water."""
    margin = min(0.6 * obj.extent, w / 2)
    cx = rng.uniform(margin, w - margin)
    if not obj.floats_on_water:
        margin = min(0.6 * obj.extent, h / 2)
        return cx, rng.uniform(margin, h - margin)
    assert surface is not None, "boats are only placed in images with water"
    waterline = float(surface[min(int(cx), w - 1)])
    # Deck somewhat above the waterline (boat floating on it), or lower in the band
    # (a boat further away in the water), but never with the mast out of frame.
    deck = waterline + rng.uniform(-0.15, 0.1) * size
    if rng.random() < 0.4:
        deck += rng.uniform(0.0, max(h - waterline - 0.3 * size, 0.0))
    return cx, float(np.clip(deck, 0.8 * size, h - 0.1 * size))


def generate_sample(index: int, seed: int = 0, size: tuple[int, int] = (160, 120),
                    max_objects: int = 3,
                    object_size: tuple[float, float] = DEFAULT_OBJECT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image, mask)`` for sample ``index`` of the synthetic dataset ``seed``.

    ``image`` is uint8 HxWx3 RGB, ``mask`` is uint8 HxW holding indices into
    ``SYNTHETIC_CLASSES``; ``size`` is ``(width, height)``.  The result depends only
    on ``(seed, index)`` and the arguments, so samples can be generated lazily and
    in parallel.  The set of non-zero mask values is exactly the image's tag set.
    ``object_size`` bounds each object's longest extent as fractions of the short side.
    """
    w, h = int(size[0]), int(size[1])
    if min(w, h) < _MIN_IMAGE_SIDE:
        raise ValueError(f"image sides must be >= {_MIN_IMAGE_SIDE}, got size={size}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 0 < object_size[0] <= object_size[1] <= 1:
        raise ValueError(f"object_size must satisfy 0 < min <= max <= 1, got {object_size}")
    rng = np.random.default_rng([seed, index])
    yy, xx = np.indices((h, w), dtype=np.float32)
    grid = (yy, xx)

    classes = rng.integers(1, len(SYNTHETIC_CLASSES), size=int(rng.integers(1, max_objects + 1)))
    image = _background(rng, grid)
    surface = None
    if _BOAT_INDEX in classes or rng.random() < _WATER_WITHOUT_BOAT_P:
        surface = _water_surface(rng, h, w)
        _paint_water(rng, image, grid, surface)

    mask = np.zeros((h, w), dtype=np.uint8)
    owner = np.full((h, w), -1, dtype=np.int16)  # which placed object each pixel shows
    areas: list[int] = []
    short_side = min(w, h)
    for cls in classes:
        obj_size = max(rng.uniform(*object_size) * short_side, _MIN_OBJECT_SIZE_PX)
        obj = _MAKERS[int(cls)](rng, obj_size)
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = _place(rng, obj, obj_size, w, h, surface)
            parts = obj.geometry(grid, cx, cy)
            covered = parts > 0
            area = int(np.count_nonzero(covered))
            if area >= _MIN_VISIBLE_PX and all(
                np.count_nonzero((owner == i) & ~covered) >= _MIN_VISIBLE_FRACTION * areas[i]
                for i in range(len(areas))
            ):
                break
        else:
            continue  # no placement keeps everything visible: leave this object out
        owner[covered] = len(areas)
        areas.append(area)
        mask[covered] = cls
        ys, xs = np.nonzero(covered)
        image[ys, xs] = obj.paint(rng, xs.astype(np.float32), ys.astype(np.float32),
                                  parts[ys, xs], cx, cy)

    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1.5, 4.0)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask
