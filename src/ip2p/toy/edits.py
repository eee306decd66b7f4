"""Edits of toy scenes with exact ground truth, and an instruction interpreter.

``random_edit`` draws a possible edit of a scene together with a varied
English instruction; ``apply_instruction`` interprets every instruction
phrasing the generator uses and applies it, so instructions written by a
language model can be checked exactly (a no-op or impossible edit, an
ambiguous reference or an unknown word is a ValueError, never a guess).

Shapes are referred to by the shortest unambiguous description (kind, then
colour and kind, then with position), sometimes with extra words for variety.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from .captions import (
    BACKGROUND_OF,
    POSITION_PHRASES,
    POSITION_WORDS,
    SIZE_OF,
    STYLE_WORDS,
    VOCABULARY,
    background_word,
    parse_shape_phrases,
    random_plan,
    resolve_position,
    shape_phrase,
    tokenize,
)
from .scene import BACKGROUNDS, COLORS, KINDS, MAX_SHAPES, MIN_SHAPES, STYLES, Scene, Shape, random_shape

EDIT_TYPES: tuple[str, ...] = ("recolor", "change_kind", "background", "add", "remove", "style")

# Instruction templates. {ref} is a reference to an existing shape
# ("the red circle"), {shape} a new shape phrase, {color}/{kind}/{bg} values.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "make {ref} {color}",
        "color {ref} {color}",
        "paint {ref} {color}",
        "turn {ref} {color}",
        "change the color of {ref} to {color}",
        "change {ref} to {color}",
    ),
    "change_kind": (
        "turn {ref} into a {kind}",
        "change {ref} into a {kind}",
        "make {ref} a {kind}",
        "replace {ref} with a {kind}",
        "transform {ref} into a {kind}",
    ),
    "background": (
        "paint the background {bg}",
        "change the background to {bg}",
        "make the background {bg}",
        "turn the background {bg}",
        "set the background to {bg}",
        "use a {bg} background",
        "put the shapes on a {bg} background",
    ),
    "add": ("add {shape}", "put {shape}", "draw {shape}", "place {shape}"),
    "remove": ("remove {ref}", "delete {ref}", "erase {ref}", "take away {ref}", "get rid of {ref}"),
}
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "outlined": (
        "make the shapes outlined",
        "draw the shapes as outlines",
        "make the shapes hollow",
        "turn the shapes into outlines",
        "outline the shapes",
    ),
    "filled": (
        "make the shapes filled",
        "make the shapes solid",
        "fill in the shapes",
        "fill the shapes",
    ),
}

_ADD_VERBS = frozenset({"add", "put", "draw", "place"})
_REMOVE_PREFIXES = (("remove",), ("delete",), ("erase",), ("take", "away"), ("get", "rid", "of"))


def _template_words() -> set[str]:
    words: set[str] = set()
    for group in (*TEMPLATES.values(), *STYLE_TEMPLATES.values()):
        for template in group:
            for tok in tokenize(template.replace("{", " ").replace("}", " ")):
                if tok not in {"ref", "shape", "kind", "bg"}:
                    words.add(tok)
    return words


# The text encoder's vocabulary is built from VOCABULARY: fail at import,
# not at training time, if a template word is missing from it.
_missing = _template_words() - set(VOCABULARY)
assert not _missing, f"instruction words missing from VOCABULARY: {sorted(_missing)}"


@dataclass(frozen=True)
class Edit:
    """An instruction with the scenes before and after it."""

    type: str
    instruction: str
    before: Scene
    after: Scene


# ---------------------------------------------------------------------------
# Referring to shapes
# ---------------------------------------------------------------------------


def _matches(shape: Shape, kind: str, color: str | None, size: str | None, position: str | None) -> bool:
    return (
        shape.kind == kind
        and (color is None or shape.color == color)
        and (size is None or shape.size == size)
        and (position is None or shape.position == position)
    )


def referring_expression(scene: Scene, shape: Shape, rng: random.Random | None = None) -> str:
    """'the circle', 'the red circle' or 'the red circle at the top left'.

    The shortest unambiguous description; with ``rng``, sometimes a longer
    (still exact) one, and position phrases vary.
    """
    same_kind = [s for s in scene.shapes if s.kind == shape.kind]
    same_color = [s for s in same_kind if s.color == shape.color]
    words = ["the"]
    if len(same_kind) == 1:
        use_color = rng is not None and rng.random() < 0.25
        use_position = rng is not None and rng.random() < 0.15
    elif len(same_color) == 1:
        use_color, use_position = True, rng is not None and rng.random() < 0.15
    else:
        use_color, use_position = rng is None or rng.random() < 0.6, True
    if use_color:
        words.append(shape.color)
    words.append(shape.kind)
    if use_position:
        phrases = POSITION_PHRASES[shape.position]
        words.append(phrases[0] if rng is None else rng.choice(phrases))
    return " ".join(words)


def resolve_shape(
    scene: Scene, kind: str, color: str | None, size: str | None, position: str | None
) -> Shape:
    """The one shape of ``scene`` that the description picks; ValueError if none or several match."""
    found = [s for s in scene.shapes if _matches(s, kind, color, size, position)]
    desc = " ".join(w for w in (size, color, kind) if w) + (f" at {position}" if position else "")
    if not found:
        raise ValueError(f"no {desc} in the scene")
    if len(found) > 1:
        raise ValueError(f"'{desc}' is ambiguous: {len(found)} shapes match")
    return found[0]


# ---------------------------------------------------------------------------
# Generating edits
# ---------------------------------------------------------------------------


def possible_edit_types(scene: Scene) -> tuple[str, ...]:
    """Edit types that can change this scene."""
    types = []
    for t in EDIT_TYPES:
        if t == "add" and len(scene.shapes) >= MAX_SHAPES:
            continue
        if t == "remove" and len(scene.shapes) <= MIN_SHAPES:
            continue
        types.append(t)
    return tuple(types)


def random_edit(scene: Scene, rng: random.Random, edit_type: str | None = None) -> Edit:
    """Draw a possible edit of ``scene`` (of ``edit_type`` if given)."""
    scene.validate()
    possible = possible_edit_types(scene)
    if edit_type is None:
        edit_type = rng.choice(possible)
    elif edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
    elif edit_type not in possible:
        raise ValueError(f"edit type {edit_type!r} is impossible for a scene with {len(scene.shapes)} shapes")

    shapes = list(scene.shapes)
    if edit_type == "style":
        style = next(s for s in STYLES if s != scene.style)
        return Edit(edit_type, rng.choice(STYLE_TEMPLATES[style]), scene, replace(scene, style=style))

    if edit_type == "background":
        used = {s.color for s in shapes}
        options = [b for b in BACKGROUNDS if b != scene.background and b not in used]
        bg = rng.choice(options)
        plan = random_plan(rng)
        text = rng.choice(TEMPLATES["background"]).format(bg=background_word(bg, plan))
        return Edit(edit_type, text, scene, replace(scene, background=bg))

    if edit_type == "add":
        new = random_shape(rng, rng.choice(scene.free_positions()))
        phrase = shape_phrase(new, random_plan(rng))
        text = rng.choice(TEMPLATES["add"]).format(shape=phrase)
        return Edit(edit_type, text, scene, replace(scene, shapes=(*shapes, new)).validate())

    target = rng.choice(shapes)
    ref = referring_expression(scene, target, rng)
    rest = [s for s in shapes if s is not target]
    if edit_type == "remove":
        text = rng.choice(TEMPLATES["remove"]).format(ref=ref)
        return Edit(edit_type, text, scene, replace(scene, shapes=tuple(rest)).validate())
    if edit_type == "recolor":
        color = rng.choice([c for c in COLORS if c != target.color and c != scene.background])
        text = rng.choice(TEMPLATES["recolor"]).format(ref=ref, color=color)
        new = replace(target, color=color)
    else:  # change_kind
        kind = rng.choice([k for k in KINDS if k != target.kind])
        text = rng.choice(TEMPLATES["change_kind"]).format(ref=ref, kind=kind)
        new = replace(target, kind=kind)
    return Edit(edit_type, text, scene, replace(scene, shapes=(*rest, new)).validate())


# ---------------------------------------------------------------------------
# Interpreting instructions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedInstruction:
    """What an instruction asks for, before it is applied to a scene."""

    type: str
    # Reference to an existing shape (recolor, change_kind, remove).
    kind: str | None = None
    color: str | None = None
    size: str | None = None
    position: str | None = None
    # New value: colour, kind, background or style name; or the added shape.
    value: str | None = None
    shape: Shape | None = None


def parse_instruction(instruction: str) -> ParsedInstruction:
    """Understand any instruction phrasing :func:`random_edit` writes."""
    tokens = tokenize(instruction)
    if not tokens:
        raise ValueError("empty instruction")
    unknown = [t for t in tokens if t not in set(VOCABULARY)]
    if unknown:
        raise ValueError(f"unknown word(s) in instruction: {', '.join(map(repr, unknown))}")
    kinds = [i for i, t in enumerate(tokens) if t in KINDS]
    styles = {STYLE_WORDS[t] for t in tokens if t in STYLE_WORDS}
    bgs = [BACKGROUND_OF[t] for t in tokens if t in BACKGROUND_OF]

    if bgs:
        if len(bgs) > 1 or kinds or styles or any(t in COLORS for t in tokens):
            raise ValueError("a background instruction names one background colour and nothing else")
        return ParsedInstruction("background", value=bgs[0])

    if not kinds:
        if len(styles) != 1 or "shapes" not in tokens:
            raise ValueError("cannot tell what the instruction changes")
        return ParsedInstruction("style", value=styles.pop())
    if styles:
        raise ValueError("style words cannot be combined with a shape edit")

    if tokens[0] in _ADD_VERBS and len(tokens) > 1 and tokens[1] == "a":
        added = parse_shape_phrases(tokens[1:])
        if len(added) != 1:
            raise ValueError(f"an add instruction describes one shape, found {len(added)}")
        return ParsedInstruction("add", shape=added[0])

    # The rest refer to a shape: modifiers before its kind, position after.
    k = kinds[0]
    before, after = tokens[:k], tokens[k + 1 :]
    ref_colors = [t for t in before if t in COLORS]
    ref_sizes = [SIZE_OF[t] for t in before if t in SIZE_OF]
    if len(ref_colors) > 1 or len(ref_sizes) > 1:
        raise ValueError("a shape reference has at most one colour and one size")
    if any(t in SIZE_OF for t in after):
        raise ValueError("size words must come before the shape kind")
    where = [t for t in after if t in POSITION_WORDS]
    ref = dict(
        kind=tokens[k],
        color=ref_colors[0] if ref_colors else None,
        size=ref_sizes[0] if ref_sizes else None,
        position=resolve_position(where) if where else None,
    )
    new_colors = [t for t in after if t in COLORS]
    new_kinds = [tokens[i] for i in kinds[1:]]

    if any(tuple(tokens[: len(p)]) == p for p in _REMOVE_PREFIXES):
        if new_colors or new_kinds:
            raise ValueError("a remove instruction names only the shape to remove")
        return ParsedInstruction("remove", **ref)
    if len(new_kinds) == 1 and not new_colors:
        return ParsedInstruction("change_kind", value=new_kinds[0], **ref)
    if len(new_colors) == 1 and not new_kinds:
        return ParsedInstruction("recolor", value=new_colors[0], **ref)
    raise ValueError("expected exactly one new colour or one new kind after the shape")


def edit_type_of(instruction: str) -> str:
    """The edit type an instruction asks for (ValueError if not understood)."""
    return parse_instruction(instruction).type


def apply_instruction(scene: Scene, instruction: str) -> Scene:
    """Apply an instruction to a scene; ValueError if impossible or a no-op."""
    scene.validate()
    p = parse_instruction(instruction)
    if p.type == "background":
        assert p.value is not None
        if p.value == scene.background:
            raise ValueError(f"the background is already {p.value}")
        return replace(scene, background=p.value).validate()
    if p.type == "style":
        if p.value == scene.style:
            raise ValueError(f"the shapes are already {p.value}")
        return replace(scene, style=p.value).validate()
    if p.type == "add":
        assert p.shape is not None
        if len(scene.shapes) >= MAX_SHAPES:
            raise ValueError(f"cannot add a shape: the scene already has {MAX_SHAPES}")
        if scene.shape_at(p.shape.position) is not None:
            raise ValueError(f"cannot add a shape at {p.shape.position!r}: the cell is taken")
        return replace(scene, shapes=(*scene.shapes, p.shape)).validate()

    assert p.kind is not None
    target = resolve_shape(scene, p.kind, p.color, p.size, p.position)
    rest = tuple(s for s in scene.shapes if s is not target)
    if p.type == "remove":
        if not rest:
            raise ValueError("cannot remove the only shape")
        return replace(scene, shapes=rest).validate()
    if p.type == "recolor":
        if p.value == target.color:
            raise ValueError(f"the {target.kind} is already {p.value}")
        new = replace(target, color=p.value)
    else:
        if p.value == target.kind:
            raise ValueError(f"the shape is already a {p.value}")
        new = replace(target, kind=p.value)
    return replace(scene, shapes=(*rest, new)).validate()
