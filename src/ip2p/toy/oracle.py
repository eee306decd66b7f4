"""The exact judge: read a scene back from pixels and score images and edits.

``read_scene`` inverts :func:`ip2p.toy.render.render` and is meant to judge
images made by a diffusion model too, so every decision is a nearest-match
rather than an equality test:

1. background: median of the image border, snapped to the nearest
   background colour (shapes never touch the border);
2. per grid cell, pixels far from the background are the shape; a cell with
   too few of them is empty;
3. colour: the palette colour whose line from the background best explains
   those pixels (so anti-aliased edge pixels, which are blends of shape and
   background, vote for the right colour instead of a lighter/darker one);
4. from that colour, a per-pixel coverage map, matched by soft IoU against
   the renderer's own coverage maps of every kind, size and style at that
   cell, allowing shifts of up to two pixels; a cell whose best match is
   poor is empty (noise, or a sliver of a neighbour);
5. style is global, so it is chosen by summing the best scores of each style
   over all shapes; then each shape takes its best kind and size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from .edits import Edit
from .render import cell_box, shape_alpha
from .scene import BACKGROUNDS, COLORS, KINDS, POSITIONS, SIZES, STYLES, Scene, Shape

ImageLike = Image.Image | np.ndarray

# A pixel belongs to a shape when it is this far (RGB distance) from the
# background. Every shape colour is >= ~115 from every background, so this
# keeps pixels with more than ~40% coverage, while Gaussian noise of
# sigma 8 (distance ~14 on average) almost never reaches it.
FG_THRESHOLD = 45.0
# A cell with fewer shape pixels than this (at 64 px) is empty. The smallest
# shape (a small outlined triangle) has ~50.
MIN_PIXELS = 8
# A cell whose best template match (soft IoU) is below this is empty. Pure
# noise (sigma 25) or a neighbour's sliver scores <= ~0.12; real shapes
# score >= ~0.55 under noise, blur of 0.7 px or a 2 px shift (~0.2 under a
# heavy 2 px blur).
MIN_SCORE = 0.15
# Coverage below this (and above 1 - it) is treated as 0 (1) in both the
# image and the templates before matching, so that noise on the many
# background pixels does not swamp the IoU.
ALPHA_DEADZONE = 0.15
# Template shifts in pixels, to forgive a generated shape that is
# a little off-centre. (0, 0) comes first so exact renders prefer it on ties.
MAX_SHIFT = 2
SHIFTS: tuple[tuple[int, int], ...] = ((0, 0),) + tuple(
    (dy, dx)
    for dy in range(-MAX_SHIFT, MAX_SHIFT + 1)
    for dx in range(-MAX_SHIFT, MAX_SHIFT + 1)
    if (dy, dx) != (0, 0)
)

_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float32)
_BG_NAMES = tuple(BACKGROUNDS)
_BG_PALETTE = np.array([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float32)
# Order of the template stack: (style, kind, size), each repeated per shift.
_COMBOS = tuple((style, kind, size) for style in STYLES for kind in KINDS for size in SIZES)


@dataclass(frozen=True)
class Detection:
    """A shape found in one grid cell, with how well it matched."""

    shape: Shape
    score: float  # soft IoU with the chosen template, in [0, 1]
    pixels: int  # pixels far from the background in the cell


@dataclass(frozen=True)
class Reading:
    """Everything :func:`detect` read from an image."""

    background: str
    background_rgb: tuple[float, float, float]
    style: str | None  # None when no shape was found
    detections: tuple[Detection, ...]

    def scene(self) -> Scene:
        """As a Scene; not validated (an image may hold 0 or >3 shapes)."""
        return Scene(
            shapes=tuple(d.shape for d in self.detections),
            background=self.background,
            style=self.style or "filled",
        )


def to_array(image: ImageLike) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255] from a PIL image or an HWC/CHW array.

    Float arrays with values <= 1.5 are taken to be in [0, 1].
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    out = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating) and out.size and float(out.max()) <= 1.5:
        out *= 255.0
    return out


@lru_cache(maxsize=64)
def _templates(position: str, size: int) -> np.ndarray:
    """Coverage templates (len(_COMBOS) * len(SHIFTS), h, w) for a cell."""
    stack = []
    for style, kind, shape_size in _COMBOS:
        alpha = shape_alpha(kind, shape_size, position, style, size)
        for dy, dx in SHIFTS:
            shifted = np.zeros_like(alpha)
            h, w = alpha.shape
            shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = alpha[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            stack.append(shifted)
    out = _deadzone(np.stack(stack))
    out.setflags(write=False)
    return out


def _deadzone(alpha: np.ndarray) -> np.ndarray:
    t = ALPHA_DEADZONE
    return np.clip((alpha - t) / (1.0 - 2.0 * t), 0.0, 1.0).astype(np.float32)


def _border_median(img: np.ndarray) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    return np.median(border, axis=0)


def _nearest(palette: np.ndarray, rgb: np.ndarray) -> int:
    return int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))


def _cell_scores(
    img: np.ndarray, bg: np.ndarray, position: str, size: int
) -> tuple[int, int, np.ndarray] | None:
    """(colour index, shape pixels, IoU per template) for a cell, or None if empty."""
    y0, x0, y1, x1 = cell_box(position, size)
    diff = img[y0:y1, x0:x1] - bg  # (h, w, 3)
    fg = np.sqrt((diff**2).sum(axis=-1)) > FG_THRESHOLD
    n = int(fg.sum())
    if n < max(3, round(MIN_PIXELS * (size / 64) ** 2)):
        return None

    # Colour: for each palette colour, the best blend factor per shape pixel
    # and the residual of that blend; the smallest total residual wins.
    offsets = _PALETTE - bg  # (K, 3)
    px = diff[fg]  # (n, 3)
    norms = np.maximum((offsets**2).sum(axis=1), 1.0)  # (K,)
    a = np.clip(px @ offsets.T / norms, 0.0, 1.0)  # (n, K)
    resid = ((px[:, None, :] - a[..., None] * offsets[None]) ** 2).sum(axis=(0, 2))
    k = int(np.argmin(resid))

    # Coverage of the cell by that colour, matched against every template.
    alpha = _deadzone(diff @ offsets[k] / norms[k])
    templates = _templates(position, size)
    inter = np.minimum(templates, alpha).sum(axis=(1, 2))
    union = np.maximum(templates, alpha).sum(axis=(1, 2))
    scores = inter / np.maximum(union, 1e-6)
    if float(scores.max()) < MIN_SCORE:
        return None
    return k, n, scores


def detect(image: ImageLike) -> Reading:
    """Read background, style and every shape (with scores) from an image."""
    img = to_array(image)
    size = img.shape[0]
    if img.shape[1] != size:
        raise ValueError(f"expected a square image, got {img.shape[1]}x{size}")
    bg = _border_median(img)
    background = _BG_NAMES[_nearest(_BG_PALETTE, bg)]

    cells = []
    for position in POSITIONS:
        found = _cell_scores(img, bg, position, size)
        if found is not None:
            cells.append((position, *found))
    if not cells:
        return Reading(background, tuple(map(float, bg)), None, ())

    # Scores as (cell, style, kind, size, shift); style is chosen globally.
    per_cell = [s.reshape(len(STYLES), len(KINDS), len(SIZES), len(SHIFTS)) for *_, s in cells]
    style_totals = sum(s.max(axis=(1, 2, 3)) for s in per_cell)
    si = int(np.argmax(style_totals))

    detections = []
    for (position, k, n, _), scores in zip(cells, per_cell, strict=True):
        best = scores[si].max(axis=2)  # (kind, size)
        ki, zi = np.unravel_index(int(np.argmax(best)), best.shape)
        shape = Shape(KINDS[ki], _PALETTE_NAMES[k], SIZES[zi], position)
        detections.append(Detection(shape, float(best[ki, zi]), n))
    return Reading(background, tuple(map(float, bg)), STYLES[si], tuple(detections))


def read_scene(image: ImageLike) -> Scene:
    """The scene an image shows (not validated: it may hold 0 or >3 shapes)."""
    return detect(image).scene()


# ---------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------


def judge(image: ImageLike, scene: Scene) -> dict[str, bool]:
    """Per-attribute correctness of an image against the scene it should show.

    Keys: ``shape{i}.presence/kind/color/size/position`` for each expected
    shape i (canonical order), ``background``, ``style`` and
    ``extra_shapes`` (True when no unexpected shape is present). A missing
    expected shape is matched to an unexpected detection of the same kind and
    colour elsewhere, if any, so that a moved shape fails only ``position``.
    """
    reading = detect(image)
    found = {d.shape.position: d.shape for d in reading.detections}
    expected = set(scene.positions)
    used: set[str] = set()
    out: dict[str, bool] = {}
    for i, want in enumerate(scene.shapes):
        got = found.get(want.position)
        at_place = got is not None
        if got is None:
            moved = [
                s
                for p, s in found.items()
                if p not in expected and p not in used and s.kind == want.kind and s.color == want.color
            ]
            got = moved[0] if moved else None
        if got is not None:
            used.add(got.position)
        out[f"shape{i}.presence"] = got is not None
        out[f"shape{i}.kind"] = got is not None and got.kind == want.kind
        out[f"shape{i}.color"] = got is not None and got.color == want.color
        out[f"shape{i}.size"] = got is not None and got.size == want.size
        out[f"shape{i}.position"] = at_place
    out["background"] = reading.background == scene.background
    out["style"] = reading.style == scene.style
    out["extra_shapes"] = all(p in used for p in found)
    return out


def all_correct(image: ImageLike, scene: Scene) -> bool:
    """True when every attribute of ``judge`` holds."""
    return all(judge(image, scene).values())


def scene_attributes(scene: Scene) -> dict[str, object]:
    """Position-keyed attributes: background, style, and per cell presence
    plus kind/colour/size of a present shape. Edits are diffs of these."""
    attrs: dict[str, object] = {"background": scene.background, "style": scene.style}
    for position in POSITIONS:
        shape = scene.shape_at(position)
        attrs[f"{position}.presence"] = shape is not None
        if shape is not None:
            attrs[f"{position}.kind"] = shape.kind
            attrs[f"{position}.color"] = shape.color
            attrs[f"{position}.size"] = shape.size
    return attrs


def judge_edit(before_image: ImageLike, after_image: ImageLike, edit: Edit) -> dict[str, bool]:
    """Score an edited image.

    - ``edit_correct``: the attributes the edit changes read as in ``edit.after``;
    - ``preserved``: every other attribute of ``edit.after`` reads correctly;
    - ``input_correct``: ``before_image`` reads exactly as ``edit.before``;
    - ``preserved_vs_input``: the unchanged attributes read the same in both
      images (useful when the input image is itself generated).
    """
    want_before, want_after = scene_attributes(edit.before), scene_attributes(edit.after)
    edited = {k for k, v in want_after.items() if want_before.get(k) != v}
    got_before = scene_attributes(read_scene(before_image))
    got_after = scene_attributes(read_scene(after_image))
    kept = [k for k in want_after if k not in edited]
    return {
        "edit_correct": all(got_after.get(k) == want_after[k] for k in edited),
        "preserved": all(got_after.get(k) == want_after[k] for k in kept),
        "input_correct": got_before == want_before,
        "preserved_vs_input": all(got_after.get(k) == got_before.get(k) for k in kept),
    }
