"""Captions of toy scenes in a small, closed English, and their exact inverse.

``caption(scene)`` gives a canonical caption; ``caption(scene, rng)`` varies
the phrasing (synonyms, shape order, where the background and the style are
mentioned). ``parse_caption`` inverts every phrasing the generator uses.

A *brief* caption (``caption(scene, rng, brief=True)``: "a red circle and a
blue star on a white background") leaves every size and position unsaid, as
real captions leave most of a photograph unsaid; a text-to-image model given
one must choose the layout itself. ``parse_brief`` reads what such a caption
(or a complete one) says: a :class:`Brief`.

The parser is keyword based rather than a full grammar, which keeps it short
and exact because the vocabulary is designed for it: every content word
belongs to exactly one class (size, colour, kind, background colour,
position, style, count), background colour names are disjoint from shape
colour names, and a shape phrase always reads ``size colour kind position``.
Words outside :data:`VOCABULARY` are rejected, so text that the generator
could not have written fails loudly instead of being half-understood.

Random phrasing is drawn as a fixed-length *plan* before looking at the
scene, so two captions drawn from identically seeded generators use the same
phrasing even when the scenes have different shape counts. Seed triplets use
this to make an edited caption read like its input caption.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .scene import BACKGROUNDS, COLORS, KINDS, MAX_SHAPES, MIN_SHAPES, POSITIONS, SIZES, Scene, Shape

# ---------------------------------------------------------------------------
# Word classes
# ---------------------------------------------------------------------------

SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {bg: (bg,) for bg in BACKGROUNDS}
BACKGROUND_WORDS["gray"] = ("gray", "grey")

# Position phrases; the first one is canonical. Parsing only looks at the
# vertical/horizontal/centre words, so the fillers around them are free.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the top left", "at the upper left"),
    "top": ("at the top", "at the top center", "in the top middle"),
    "top right": ("at the top right", "in the top right corner", "in the top right", "at the upper right"),
    "left": ("on the left", "on the left side", "at the center left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "on the right side", "at the center right"),
    "bottom left": (
        "at the bottom left",
        "in the bottom left corner",
        "in the bottom left",
        "at the lower left",
    ),
    "bottom": ("at the bottom", "at the bottom center", "in the bottom middle"),
    "bottom right": (
        "at the bottom right",
        "in the bottom right corner",
        "in the bottom right",
        "at the lower right",
    ),
}
assert tuple(POSITION_PHRASES) == POSITIONS

VERTICAL_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
HORIZONTAL_WORDS = {"left": "left", "right": "right"}
CENTER_WORDS = frozenset({"center", "middle"})
STYLE_WORDS = {
    "outlined": "outlined",
    "outline": "outlined",
    "outlines": "outlined",
    "hollow": "outlined",
    "filled": "filled",
    "solid": "filled",
    "fill": "filled",
}
COUNT_WORDS = {"one": 1, "single": 1, "two": 2, "three": 3}
_COUNT_NAMES = {1: "one", 2: "two", 3: "three"}

# Words with no meaning of their own in a caption.
CAPTION_FILLERS = frozenset(
    "a the at in on corner side and shape shapes background with against all drawn as".split() + [",", ":"]
)
# Extra words that only instructions use (see ip2p.toy.edits, which checks at
# import time that its templates stay inside VOCABULARY).
INSTRUCTION_WORDS = frozenset(
    "make color paint turn change of to into replace transform set use put add draw place "
    "remove delete erase take away get rid".split()
)

SIZE_OF = {w: size for size, words in SIZE_WORDS.items() for w in words}
BACKGROUND_OF = {w: bg for bg, words in BACKGROUND_WORDS.items() for w in words}
POSITION_WORDS = frozenset(VERTICAL_WORDS) | frozenset(HORIZONTAL_WORDS) | CENTER_WORDS

CAPTION_WORDS = (
    frozenset(SIZE_OF)
    | frozenset(COLORS)
    | frozenset(KINDS)
    | frozenset(BACKGROUND_OF)
    | POSITION_WORDS
    | frozenset(STYLE_WORDS)
    | frozenset(COUNT_WORDS)
    | CAPTION_FILLERS
)

# Every token a caption or an instruction can contain, sorted: the word-level
# vocabulary of the toy text encoder.
VOCABULARY: list[str] = sorted(CAPTION_WORDS | INSTRUCTION_WORDS)

_TOKEN = re.compile(r"[a-z]+|[^\sa-z]")


def tokenize(text: str) -> list[str]:
    """Lowercase words, with every other symbol (",", ":", ...) its own token."""
    return _TOKEN.findall(text.lower())


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------

LAYOUTS = ("on", "against", "on_bare", "with", "count")
STYLE_FORMS = ("prefix", "suffix", "drawn", "adjective")


@dataclass(frozen=True)
class CaptionPlan:
    """Every phrasing choice of a caption, independent of the scene."""

    layout: str = "on"
    style_form: str = "prefix"  # how a non-implicit style is mentioned
    explicit_filled: bool = False  # filled is implicit unless this is set
    size_word: tuple[int, int] = (0, 0)  # synonym index for small, large
    position_variant: tuple[int, ...] = (0,) * 9  # phrase index per position
    order_keys: tuple[float, ...] | None = None  # None: canonical order
    oxford_comma: bool = False
    single_word: str = "one"  # "one shape" or "a single shape"
    grey: bool = False


CANONICAL_PLAN = CaptionPlan()


def random_plan(rng: random.Random) -> CaptionPlan:
    """Draw a phrasing plan; always the same number of draws from ``rng``."""
    layout = rng.choice(LAYOUTS)
    style_form = rng.choice(STYLE_FORMS)
    explicit_filled = rng.random() < 0.3
    size_word = (rng.randrange(len(SIZE_WORDS["small"])), rng.randrange(len(SIZE_WORDS["large"])))
    position_variant = tuple(rng.randrange(len(POSITION_PHRASES[p])) for p in POSITIONS)
    shuffle = rng.random() < 0.5
    keys = tuple(rng.random() for _ in POSITIONS)
    oxford = rng.random() < 0.3
    single_word = rng.choice(("one", "single"))
    grey = rng.random() < 0.3
    return CaptionPlan(
        layout=layout,
        style_form=style_form,
        explicit_filled=explicit_filled,
        size_word=size_word,
        position_variant=position_variant,
        order_keys=keys if shuffle else None,
        oxford_comma=oxford,
        single_word=single_word,
        grey=grey,
    )


def size_word(size: str, plan: CaptionPlan = CANONICAL_PLAN) -> str:
    return SIZE_WORDS[size][plan.size_word[SIZES.index(size)]]


def position_phrase(position: str, plan: CaptionPlan = CANONICAL_PLAN) -> str:
    return POSITION_PHRASES[position][plan.position_variant[POSITIONS.index(position)]]


def background_word(background: str, plan: CaptionPlan = CANONICAL_PLAN) -> str:
    return "grey" if background == "gray" and plan.grey else background


def shape_phrase(
    shape: Shape, plan: CaptionPlan = CANONICAL_PLAN, adjective: str = "", brief: bool = False
) -> str:
    """'a small red circle at the top left' (adjective goes before the kind); brief: 'a red circle'."""
    words = ["a"] if brief else ["a", size_word(shape.size, plan)]
    words.append(shape.color)
    if adjective:
        words.append(adjective)
    words.append(shape.kind)
    if not brief:
        words.append(position_phrase(shape.position, plan))
    return " ".join(words)


def _join(phrases: list[str], oxford: bool) -> str:
    if len(phrases) == 1:
        return phrases[0]
    last = (", and " if oxford and len(phrases) > 2 else " and ") + phrases[-1]
    return ", ".join(phrases[:-1]) + last


def caption(scene: Scene, rng: random.Random | None = None, brief: bool = False) -> str:
    """Describe a scene. Canonical phrasing without ``rng``, varied with it; ``brief``: without sizes and
    positions."""
    return caption_with_plan(scene, CANONICAL_PLAN if rng is None else random_plan(rng), brief)


def caption_with_plan(scene: Scene, plan: CaptionPlan, brief: bool = False) -> str:
    """Realise a phrasing plan for a scene (``brief``: every size and position left unsaid)."""
    scene.validate()
    mention_style = scene.style == "outlined" or plan.explicit_filled
    form = plan.style_form if mention_style else None
    adjective = {"outlined": "outlined", "filled": "filled"}[scene.style] if form == "adjective" else ""

    shapes = list(scene.shapes)
    if plan.order_keys is not None:
        shapes.sort(key=lambda s: plan.order_keys[POSITIONS.index(s.position)])
    elif brief:  # canonical order is the grid's: a brief caption must not tell the layout by its order
        shapes.sort(key=lambda s: (s.color, s.kind))
    body = _join([shape_phrase(s, plan, adjective, brief) for s in shapes], plan.oxford_comma)
    bg = background_word(scene.background, plan)

    style_adj = "outlined" if scene.style == "outlined" else "solid"
    if plan.layout == "count":
        n = len(shapes)
        count = ("a single" if plan.single_word == "single" else "one") if n == 1 else _COUNT_NAMES[n]
        noun = "shape" if n == 1 else "shapes"
        if form == "prefix":  # the style joins the count phrase
            count += f" {style_adj}"
            form = None
        text = f"{count} {noun} on a {bg} background: {body}"
    elif plan.layout == "with":
        text = f"a {bg} background with {body}"
    elif plan.layout == "against":
        text = f"{body} against a {bg} background"
    elif plan.layout == "on_bare":
        text = f"{body} on {bg}"
    else:
        text = f"{body} on a {bg} background"

    if form == "prefix":
        text = f"{'outlined' if scene.style == 'outlined' else 'filled'} shapes: {text}"
    elif form == "suffix":
        text += f", all {'outlined' if scene.style == 'outlined' else 'filled'}"
    elif form == "drawn":
        text += ", drawn as outlines" if scene.style == "outlined" else ", drawn as solid shapes"
    return text


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def resolve_position(words: list[str]) -> str:
    """Position name from the position words of one phrase ('upper', 'left')."""
    vertical = {VERTICAL_WORDS[w] for w in words if w in VERTICAL_WORDS}
    horizontal = {HORIZONTAL_WORDS[w] for w in words if w in HORIZONTAL_WORDS}
    if not words:
        raise ValueError("missing position")
    if len(vertical) > 1 or len(horizontal) > 1:
        raise ValueError(f"contradictory position words {' '.join(words)!r}")
    parts = [*vertical, *horizontal]
    return " ".join(parts) if parts else "center"


def parse_shape_phrases(tokens: list[str]) -> list[Shape]:
    """Shapes from a token sequence: 'a small red circle at the top left and ...'.

    Size and colour words open a shape and must precede its kind; position
    words after a kind belong to it. Other (filler) words are skipped; the
    caller decides which words are allowed at all.
    """
    shapes = []
    for fields in _shape_fields(tokens):
        if "size" not in fields:
            raise ValueError(f"shape phrase without a size: {fields}")
        shapes.append(
            Shape(
                kind=str(fields["kind"]),
                color=str(fields["color"]),
                size=str(fields["size"]),
                position=resolve_position(list(fields.get("where", []))),  # type: ignore[arg-type]
            )
        )
    return shapes


def _shape_fields(tokens: list[str]) -> list[dict[str, object]]:
    """The words of each shape phrase: colour and kind always, size and position words where said."""
    shapes: list[dict[str, object]] = []
    current: dict[str, object] = {}

    def close() -> None:
        if not current:
            return
        for attr in ("color", "kind"):
            if attr not in current:
                raise ValueError(f"shape phrase without a {attr}: {current}")
        shapes.append(dict(current))
        current.clear()

    for tok in tokens:
        if tok in SIZE_OF or tok in COLORS:
            attr, value = ("size", SIZE_OF[tok]) if tok in SIZE_OF else ("color", tok)
            if "kind" in current:
                close()
            if attr in current:
                raise ValueError(f"two {attr} words for one shape: {current[attr]!r} and {value!r}")
            current[attr] = value
        elif tok in KINDS:
            if "kind" in current:
                close()
            current["kind"] = tok
        elif tok in POSITION_WORDS:
            if "kind" not in current:
                raise ValueError(f"position word {tok!r} before any shape kind")
            current.setdefault("where", []).append(tok)  # type: ignore[union-attr]
    close()
    return shapes


def _check_vocabulary(tokens: list[str], allowed: frozenset[str], what: str) -> None:
    unknown = [t for t in tokens if t not in allowed]
    if unknown:
        raise ValueError(f"unknown word(s) in {what}: {', '.join(map(repr, unknown))}")


def _single_style(tokens: list[str]) -> str | None:
    styles = {STYLE_WORDS[t] for t in tokens if t in STYLE_WORDS}
    if len(styles) > 1:
        raise ValueError("both filled and outlined style words")
    return styles.pop() if styles else None


def _caption_frame(text: str) -> tuple[list[str], str, str, int | None]:
    """(tokens, background, style, count word or None) of a caption, complete or brief."""
    tokens = tokenize(text)
    if not tokens:
        raise ValueError("empty caption")
    _check_vocabulary(tokens, CAPTION_WORDS, "caption")
    backgrounds = [BACKGROUND_OF[t] for t in tokens if t in BACKGROUND_OF]
    if len(backgrounds) != 1:
        raise ValueError(f"a caption names exactly one background colour, found {len(backgrounds)}")
    counts = [COUNT_WORDS[t] for t in tokens if t in COUNT_WORDS]
    if len(counts) > 1:
        raise ValueError(f"several count words: {counts}")
    return tokens, backgrounds[0], _single_style(tokens) or "filled", counts[0] if counts else None


def parse_caption(text: str) -> Scene:
    """Invert :func:`caption` (any phrasing). Raises ValueError on bad input."""
    tokens, background, style, count = _caption_frame(text)
    shapes = parse_shape_phrases(tokens)
    if count is not None and count != len(shapes):
        raise ValueError(f"caption says {count} shape(s) but describes {len(shapes)}")
    return Scene(shapes=tuple(shapes), background=background, style=style).validate()


@dataclass(frozen=True)
class Brief:
    """What a brief caption says of a scene: each shape's colour and kind (sorted), the background, the style."""

    shapes: tuple[tuple[str, str], ...]  # (color, kind) of each shape, sorted
    background: str
    style: str

    @classmethod
    def of(cls, scene: Scene) -> Brief:
        """What a brief caption of ``scene`` says."""
        return cls(tuple(sorted((s.color, s.kind) for s in scene.shapes)), scene.background, scene.style)

    def describes(self, scene: Scene) -> bool:
        """True when ``scene`` fits this description, whatever its sizes and positions."""
        return Brief.of(scene) == self


def parse_brief(text: str) -> Brief:
    """What a caption says, sizes and positions aside: inverts ``caption(scene, rng, brief=True)`` and reads
    complete captions too. Raises ValueError on bad input."""
    tokens, background, style, count = _caption_frame(text)
    fields = _shape_fields(tokens)
    if not MIN_SHAPES <= len(fields) <= MAX_SHAPES:
        raise ValueError(f"a caption describes {MIN_SHAPES}-{MAX_SHAPES} shapes, found {len(fields)}")
    if count is not None and count != len(fields):
        raise ValueError(f"caption says {count} shape(s) but describes {len(fields)}")
    return Brief(tuple(sorted((str(f["color"]), str(f["kind"])) for f in fields)), background, style)
