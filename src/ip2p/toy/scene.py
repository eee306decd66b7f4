"""Vocabulary and scene model of the toy world.

A toy scene is a 3x3 grid holding one to three coloured shapes on a plain
background. Everything about a scene is a small closed set of symbols, which
is what makes the world useful: images can be rendered exactly
(:mod:`ip2p.toy.render`), described in a tiny language
(:mod:`ip2p.toy.captions`), edited with exact ground truth
(:mod:`ip2p.toy.edits`) and read back from pixels (:mod:`ip2p.toy.oracle`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")

# Shape colours: saturated and pairwise >= ~100 apart in RGB so that nearest
# colour snapping survives anti-aliasing, noise and a diffusion model's
# colour drift. The closest pair is orange/yellow (~100).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 135, 0),
    "yellow": (250, 230, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "purple": (150, 40, 200),
}

# Background colours. Their names are disjoint from the shape colour names
# (so a colour word alone says whether it names the background) and every
# background is >= ~115 away from every shape colour (gray/purple is the
# closest pair), so shape pixels always stand out from the background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "beige": (230, 215, 180),
    "navy": (20, 30, 80),
}

SIZES: tuple[str, ...] = ("small", "large")

# The 3x3 grid in row-major order; the index of a name is its cell number.
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)

# Global drawing style: every shape of a scene is filled, or every shape is
# drawn as an outline.
STYLES: tuple[str, ...] = ("filled", "outlined")

MIN_SHAPES = 1
MAX_SHAPES = 3

_POSITION_INDEX = {name: i for i, name in enumerate(POSITIONS)}


def position_index(position: str) -> int:
    """Cell number (0..8, row-major) of a position name."""
    try:
        return _POSITION_INDEX[position]
    except KeyError:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}") from None


def position_cell(position: str) -> tuple[int, int]:
    """(row, column) of a position name in the 3x3 grid."""
    return divmod(position_index(position), 3)


# ---------------------------------------------------------------------------
# Scene model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One shape: what it is, its colour, its size and its grid cell."""

    kind: str
    color: str
    size: str
    position: str

    def validate(self) -> None:
        """Raise ValueError naming the first attribute outside the vocabulary."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {KINDS}")
        if self.color not in COLORS:
            raise ValueError(f"unknown shape color {self.color!r}; expected one of {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown shape size {self.size!r}; expected one of {SIZES}")
        position_index(self.position)


def _order_key(shape: Shape) -> tuple[int, str, str, str]:
    # Unknown positions sort last instead of failing here, so that an invalid
    # scene can still be built and then reported by validate().
    return (_POSITION_INDEX.get(shape.position, len(POSITIONS)), shape.kind, shape.color, shape.size)


@dataclass(frozen=True)
class Scene:
    """A whole toy image: shapes on a background, all drawn in one style.

    Shapes are stored in canonical order (by grid cell), so two scenes that
    hold the same shapes compare (and hash) equal whatever order they were
    given in. Construction only normalises; call :meth:`validate` to check the
    invariants (every constructor in this package does).
    """

    shapes: tuple[Shape, ...]
    background: str = "white"
    style: str = "filled"

    def __post_init__(self) -> None:
        # Sorting (and tuple-ising a list argument) keeps equality and hashing
        # independent of the order shapes were listed in.
        object.__setattr__(self, "shapes", tuple(sorted(tuple(self.shapes), key=_order_key)))

    def validate(self) -> Scene:
        """Check the scene invariants; raise ValueError naming the bad value.

        Returns the scene itself so that it can be chained.
        """
        if not MIN_SHAPES <= len(self.shapes) <= MAX_SHAPES:
            raise ValueError(f"a scene holds {MIN_SHAPES}-{MAX_SHAPES} shapes, got {len(self.shapes)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {tuple(BACKGROUNDS)}")
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; expected one of {STYLES}")
        seen: set[str] = set()
        for shape in self.shapes:
            shape.validate()
            if shape.position in seen:
                raise ValueError(f"two shapes share the position {shape.position!r}")
            seen.add(shape.position)
            if shape.color == self.background:
                raise ValueError(f"shape color {shape.color!r} equals the background")
        return self

    # Small conveniences used by captions, edits and the oracle.

    @property
    def positions(self) -> tuple[str, ...]:
        """Occupied positions in canonical order."""
        return tuple(s.position for s in self.shapes)

    def shape_at(self, position: str) -> Shape | None:
        """The shape at a position, or None when that cell is empty."""
        for shape in self.shapes:
            if shape.position == position:
                return shape
        return None

    def free_positions(self) -> tuple[str, ...]:
        """Empty cells in canonical order."""
        used = set(self.positions)
        return tuple(p for p in POSITIONS if p not in used)


def random_shape(rng: random.Random, position: str) -> Shape:
    """A uniformly random shape at a given position."""
    return Shape(
        kind=rng.choice(KINDS),
        color=rng.choice(tuple(COLORS)),
        size=rng.choice(SIZES),
        position=position,
    )


def random_scene(rng: random.Random, n_shapes: int | None = None) -> Scene:
    """Draw a valid scene: uniform shape count (unless given), cells, attributes."""
    if n_shapes is None:
        n_shapes = rng.randint(MIN_SHAPES, MAX_SHAPES)
    if not MIN_SHAPES <= n_shapes <= MAX_SHAPES:
        raise ValueError(f"n_shapes must be in {MIN_SHAPES}..{MAX_SHAPES}, got {n_shapes}")
    background = rng.choice(tuple(BACKGROUNDS))
    style = rng.choice(STYLES)
    positions = rng.sample(POSITIONS, n_shapes)
    shapes = tuple(random_shape(rng, p) for p in positions)
    return Scene(shapes=shapes, background=background, style=style).validate()
