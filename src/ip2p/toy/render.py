"""Deterministic, anti-aliased rendering of toy scenes.

Every shape is a polygon in a unit box ``[-1, 1]^2`` scaled to a radius that
depends on its size and centred in its grid cell. Its coverage ("alpha") is
rasterised at ``supersample`` times the output resolution and box-averaged
down, which is exact area anti-aliasing. Compositing the downsampled alphas
at the output resolution is mathematically the same as compositing at high
resolution and then averaging (both are linear), but much cheaper, and it
lets :mod:`ip2p.toy.oracle` reuse the very same alphas as templates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUNDS, COLORS, KINDS, SIZES, STYLES, Scene, position_cell

# Radius of a shape as a fraction of a grid cell (cell = size / 3). Both stay
# below 0.5 so a shape never reaches a neighbouring cell (a large shape leaves
# ~1.3 px of background to the cell edge at 64 px). Area ratio ~2.2.
SIZE_RADIUS: dict[str, float] = {"small": 0.30, "large": 0.44}

# Outline stroke width as a fraction of the shape radius: ~2 px for a large
# shape at 64 px. Scaling with the radius keeps a visible hole in small
# outlined shapes (a fixed 2 px stroke would fill a small star completely).
OUTLINE_WIDTH = 0.21

# Vertices on the unit circle; enough that the polygon is a circle at 64 px.
_CIRCLE_VERTICES = 96


def _circle() -> list[tuple[float, float]]:
    n = _CIRCLE_VERTICES
    return [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]


def _square() -> list[tuple[float, float]]:
    # Half-side 0.82 rather than 1 so its area (2.7) is close to the circle's
    # (3.1): kinds should differ in shape, not in how much colour they carry.
    h = 0.82
    return [(-h, -h), (h, -h), (h, h), (-h, h)]


def _triangle() -> list[tuple[float, float]]:
    # Upright isosceles triangle filling the box's width and height.
    return [(0.0, -1.0), (1.0, 0.9), (-1.0, 0.9)]


def _star() -> list[tuple[float, float]]:
    # Five points, first one straight up; inner radius 0.45 (a bit fatter
    # than the classic 0.38 so that small stars keep their arms at 64 px).
    outer, inner = 1.0, 0.45
    pts = []
    for i in range(10):
        r = outer if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    # The points span y in [-1, 0.81]; centre them vertically.
    shift = (1.0 - math.cos(math.pi / 5)) / 2
    return [(x, y + shift) for x, y in pts]


def _heart() -> list[tuple[float, float]]:
    # The classic parametric heart, normalised to fill the unit box.
    n = 96
    raw = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        raw.append((x, y))
    xs, ys = [p[0] for p in raw], [p[1] for p in raw]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [((x - cx) / half, (y - cy) / half) for x, y in raw]


_UNIT_POLYGONS = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "heart": _heart,
}
assert set(_UNIT_POLYGONS) == set(KINDS)


@cache
def unit_polygon(kind: str) -> tuple[tuple[float, float], ...]:
    """Vertices of a shape kind in the unit box [-1, 1]^2 (y points down)."""
    if kind not in _UNIT_POLYGONS:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {KINDS}")
    return tuple(_UNIT_POLYGONS[kind]())


def cell_box(position: str, size: int) -> tuple[int, int, int, int]:
    """Pixel box (y0, x0, y1, x1) covering a grid cell at a resolution."""
    row, col = position_cell(position)
    cell = size / 3
    y0, x0 = math.floor(row * cell), math.floor(col * cell)
    y1, x1 = min(size, math.ceil((row + 1) * cell)), min(size, math.ceil((col + 1) * cell))
    return y0, x0, y1, x1


@lru_cache(maxsize=4096)
def shape_alpha(
    kind: str, shape_size: str, position: str, style: str, size: int = 64, supersample: int = 4
) -> np.ndarray:
    """Coverage in [0, 1] of one shape over its cell box (see :func:`cell_box`).

    Cached and read-only: a scene is only ever a composite of these, so a
    render costs a few array operations once the cache is warm.
    """
    if shape_size not in SIZES:
        raise ValueError(f"unknown shape size {shape_size!r}; expected one of {SIZES}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    y0, x0, y1, x1 = cell_box(position, size)
    row, col = position_cell(position)
    ss = supersample
    cell = size / 3 * ss
    radius = SIZE_RADIUS[shape_size] * cell
    # Centre in crop coordinates; PIL puts pixel i's centre at i, hence -0.5.
    cx = (col + 0.5) * cell - x0 * ss - 0.5
    cy = (row + 0.5) * cell - y0 * ss - 0.5
    pts = [(cx + radius * u, cy + radius * v) for u, v in unit_polygon(kind)]

    hi_size = ((x1 - x0) * ss, (y1 - y0) * ss)
    fill = Image.new("L", hi_size, 0)
    ImageDraw.Draw(fill).polygon(pts, fill=255)
    mask = np.asarray(fill, dtype=np.float32) / 255.0
    if style == "outlined":
        # A stroke of twice the width centred on the boundary, clipped to the
        # filled shape, is an inner outline of exactly the wanted width with
        # round joins, and keeps the shape's silhouette unchanged.
        width = max(1, round(2 * OUTLINE_WIDTH * radius))
        stroke = Image.new("L", hi_size, 0)
        ImageDraw.Draw(stroke).line(pts + pts[:2], fill=255, width=width, joint="curve")
        mask = np.minimum(mask, np.asarray(stroke, dtype=np.float32) / 255.0)

    h, w = y1 - y0, x1 - x0
    alpha = mask.reshape(h, ss, w, ss).mean(axis=(1, 3))
    alpha.setflags(write=False)
    return alpha


def render_array(scene: Scene, size: int = 64, supersample: int = 4) -> np.ndarray:
    """Render a scene to an (size, size, 3) uint8 array."""
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}; expected one of {tuple(BACKGROUNDS)}")
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for shape in scene.shapes:
        if shape.color not in COLORS:
            raise ValueError(f"unknown shape color {shape.color!r}; expected one of {tuple(COLORS)}")
        alpha = shape_alpha(shape.kind, shape.size, shape.position, scene.style, size, supersample)
        y0, x0, y1, x1 = cell_box(shape.position, size)
        region = img[y0:y1, x0:x1]
        color = np.asarray(COLORS[shape.color], dtype=np.float32)
        region += alpha[..., None] * (color - region)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """Render a scene to an RGB PIL image, deterministically."""
    return Image.fromarray(render_array(scene, size, supersample))


def render_batch(scenes: Iterable[Scene], size: int = 64, supersample: int = 4) -> np.ndarray:
    """Render scenes into one (N, size, size, 3) uint8 array."""
    arrays = [render_array(s, size, supersample) for s in scenes]
    if not arrays:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.stack(arrays)
