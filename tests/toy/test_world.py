"""Scene model, rendering, captions, edits and seed triplets of the toy world."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from ip2p.toy import (
    BACKGROUNDS,
    COLORS,
    EDIT_TYPES,
    KINDS,
    POSITIONS,
    SIZES,
    STYLES,
    VOCABULARY,
    Scene,
    Shape,
    apply_instruction,
    caption,
    caption_with_plan,
    edit_type_of,
    parse_caption,
    random_edit,
    random_plan,
    random_scene,
    read_jsonl,
    render,
    render_array,
    render_batch,
    seed_triplets,
    tokenize,
    write_jsonl,
)
from ip2p.toy.edits import possible_edit_types
from ip2p.toy.render import cell_box


def scene_of(*shapes: tuple[str, str, str, str], background: str = "white", style: str = "filled") -> Scene:
    return Scene(tuple(Shape(*s) for s in shapes), background, style).validate()


def changes(before: Scene, after: Scene) -> list[str]:
    """Every elementary difference between two scenes, named like edit types."""
    out = []
    if before.background != after.background:
        out.append("background")
    if before.style != after.style:
        out.append("style")
    b = {s.position: s for s in before.shapes}
    a = {s.position: s for s in after.shapes}
    for p in POSITIONS:
        if p in b and p not in a:
            out.append("remove")
        elif p in a and p not in b:
            out.append("add")
        elif p in a:
            out += ["change_kind"] * (a[p].kind != b[p].kind) + ["recolor"] * (a[p].color != b[p].color)
            out += ["resize"] * (a[p].size != b[p].size)
    return out


# ---------------------------------------------------------------------------
# Vocabulary and scene model
# ---------------------------------------------------------------------------


def test_vocabulary_sizes_and_palettes_far_apart():
    assert KINDS == ("circle", "square", "triangle", "star", "heart")
    assert len(COLORS) >= 6 and len(BACKGROUNDS) >= 4 and len(POSITIONS) == 9
    assert SIZES == ("small", "large") and STYLES == ("filled", "outlined")
    assert not set(COLORS) & set(BACKGROUNDS)
    assert min(math.dist(COLORS[a], COLORS[b]) for a, b in itertools.combinations(COLORS, 2)) > 90
    assert min(math.dist(c, b) for c in COLORS.values() for b in BACKGROUNDS.values()) > 100
    assert (
        min(math.dist(BACKGROUNDS[a], BACKGROUNDS[b]) for a, b in itertools.combinations(BACKGROUNDS, 2)) > 80
    )


def test_scene_is_canonical_and_hashable():
    s1 = Shape("circle", "red", "small", "center")
    s2 = Shape("star", "blue", "large", "top left")
    a, b = Scene((s1, s2), "white", "filled"), Scene([s2, s1], "white", "filled")  # type: ignore[arg-type]
    assert a == b and hash(a) == hash(b) and a.shapes == (s2, s1)
    assert a.shape_at("center") == s1 and a.shape_at("top") is None
    assert len(a.free_positions()) == 7


@pytest.mark.parametrize(
    "scene, word",
    [
        (Scene((), "white", "filled"), "0"),
        (Scene(tuple(Shape("circle", "red", "small", p) for p in POSITIONS[:4]), "white", "filled"), "4"),
        (Scene((Shape("blob", "red", "small", "top"),), "white", "filled"), "blob"),
        (Scene((Shape("circle", "pink", "small", "top"),), "white", "filled"), "pink"),
        (Scene((Shape("circle", "red", "huge", "top"),), "white", "filled"), "huge"),
        (Scene((Shape("circle", "red", "small", "up"),), "white", "filled"), "up"),
        (Scene((Shape("circle", "red", "small", "top"),), "plaid", "filled"), "plaid"),
        (Scene((Shape("circle", "red", "small", "top"),), "white", "dotted"), "dotted"),
        (
            Scene((Shape("circle", "red", "small", "top"), Shape("star", "red", "large", "top")), "white"),
            "top",
        ),
    ],
)
def test_validate_names_the_bad_value(scene, word):
    with pytest.raises(ValueError, match=word):
        scene.validate()


def test_random_scene_is_valid_and_covers_the_vocabulary():
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(600)]
    assert {len(s.shapes) for s in scenes} == {1, 2, 3}
    assert {s.background for s in scenes} == set(BACKGROUNDS) and {s.style for s in scenes} == set(STYLES)
    shapes = [sh for s in scenes for sh in s.shapes]
    assert {sh.kind for sh in shapes} == set(KINDS) and {sh.color for sh in shapes} == set(COLORS)
    assert {sh.position for sh in shapes} == set(POSITIONS)
    assert all(len(random_scene(rng, n).shapes) == n for n in (1, 2, 3))
    with pytest.raises(ValueError):
        random_scene(rng, 4)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def test_render_is_deterministic_rgb_and_batched():
    rng = random.Random(1)
    scenes = [random_scene(rng) for _ in range(8)]
    img = render(scenes[0])
    assert img.mode == "RGB" and img.size == (64, 64)
    assert np.array_equal(np.asarray(img), np.asarray(render(scenes[0])))
    batch = render_batch(scenes)
    assert batch.shape == (8, 64, 64, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch[3], render_array(scenes[3]))
    assert render_batch(scenes[:2], size=32).shape == (2, 32, 32, 3)


def _mean_diff(a: Scene, b: Scene) -> float:
    return float(np.abs(render_array(a).astype(int) - render_array(b).astype(int)).mean())


def test_every_attribute_is_visibly_distinct():
    base = scene_of(("circle", "red", "small", "center"))
    variants = (
        [replace(base, shapes=(replace(base.shapes[0], kind=k),)) for k in KINDS[1:]]
        + [replace(base, shapes=(replace(base.shapes[0], color=c),)) for c in list(COLORS)[1:]]
        + [replace(base, shapes=(replace(base.shapes[0], size="large"),))]
        + [replace(base, shapes=(replace(base.shapes[0], position=p),)) for p in POSITIONS if p != "center"]
        + [replace(base, background=b) for b in list(BACKGROUNDS)[1:]]
        + [replace(base, style="outlined")]
    )
    for v in variants:
        assert _mean_diff(base, v) > 0.5, v
    # Kinds differ from each other at both sizes and in both styles.
    for size, style in itertools.product(SIZES, STYLES):
        imgs = [render_array(scene_of((k, "blue", size, "top right"), style=style)) for k in KINDS]
        for a, b in itertools.combinations(range(len(KINDS)), 2):
            assert np.abs(imgs[a].astype(int) - imgs[b].astype(int)).sum() > 1500, (
                KINDS[a],
                KINDS[b],
                size,
                style,
            )


def test_large_shapes_stay_inside_their_cell():
    for p, k in itertools.product(POSITIONS, KINDS):
        arr = render_array(scene_of((k, "red", "large", p), background="black"))
        y0, x0, y1, x1 = cell_box(p, 64)
        outside = arr.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() == 0, (p, k)


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------


def test_canonical_caption():
    s = scene_of(("circle", "red", "small", "top left"), ("star", "blue", "large", "center"))
    text = "a small red circle at the top left and a large blue star in the center on a white background"
    assert caption(s) == text
    assert caption(replace(s, style="outlined")) == "outlined shapes: " + text
    assert parse_caption(text) == s


def test_caption_round_trip_varied_phrasing():
    rng = random.Random(2)
    texts = set()
    for _ in range(2000):
        s = random_scene(rng)
        text = caption(s, rng)
        texts.add(text)
        tokens = tokenize(text)
        assert set(tokens) <= set(VOCABULARY), text
        assert len(tokens) <= 40, text
        if s.style == "outlined":
            assert {"outlined", "outlines"} & set(tokens), text
        assert parse_caption(text) == s, text
        assert parse_caption(caption(s)) == s
    assert len(texts) > 1900  # phrasing really varies


def test_same_plan_gives_parallel_captions():
    plan = random_plan(random.Random(5))
    a = scene_of(("heart", "green", "small", "top"), background="gray")
    b = replace(a, shapes=(replace(a.shapes[0], color="purple"),))
    ta, tb = caption_with_plan(a, plan).split(), caption_with_plan(b, plan).split()
    assert len(ta) == len(tb) and sum(x != y for x, y in zip(ta, tb, strict=True)) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("a small red circle in the center on a pink background", "pink"),
        ("a small red circle in the center", "background"),
        ("a small red circle in the center on a white background on black", "background"),
        ("a small red circle on a white background", "position"),
        ("a red circle in the center on a white background", "size"),
        ("two shapes on a white background: a small red circle in the center", "2"),
        ("a small red circle in the center and a big red star in the middle on white", "position"),
        ("a small red circle at the top bottom on white", "contradictory"),
        ("outlined shapes: a small red solid circle in the center on white", "both"),
        ("a small red green circle in the center on white", "two color"),
    ],
)
def test_parse_caption_rejects_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_caption(text)


def test_brief_captions_leave_the_layout_unsaid_and_round_trip():
    from ip2p.toy.captions import CAPTION_WORDS, POSITION_WORDS, SIZE_OF, Brief, parse_brief

    rng = random.Random(3)
    texts = set()
    for _ in range(2000):
        s = random_scene(rng)
        text = caption(s, rng, brief=True)
        texts.add(text)
        tokens = set(tokenize(text))
        assert tokens <= CAPTION_WORDS and not tokens & (POSITION_WORDS | set(SIZE_OF)), text
        assert parse_brief(text) == Brief.of(s), text
        assert parse_brief(caption(s, rng)) == Brief.of(s)  # complete captions say at least as much
        with pytest.raises(ValueError, match="size"):
            parse_caption(text)  # a brief caption is not a complete one
    assert len(texts) > 1000
    s = scene_of(
        ("circle", "red", "small", "top left"), ("star", "blue", "large", "center"), style="outlined"
    )
    assert caption(s, brief=True) == "outlined shapes: a blue star and a red circle on a white background"
    swapped = replace(
        s, shapes=(replace(s.shapes[0], position="center"), replace(s.shapes[1], position="top left"))
    )
    # unshuffled, the order of the shapes must not tell the layout either
    for plan in [replace(random_plan(random.Random(k)), order_keys=None) for k in range(20)]:
        assert caption_with_plan(s, plan, brief=True) == caption_with_plan(swapped, plan, brief=True)
    brief = Brief.of(s)
    assert brief.describes(
        replace(s, shapes=(replace(s.shapes[0], position="bottom", size="large"), s.shapes[1]))
    )
    assert not brief.describes(replace(s, shapes=(replace(s.shapes[0], color="green"), s.shapes[1])))
    assert not brief.describes(replace(s, style="filled"))
    assert not brief.describes(replace(s, shapes=s.shapes[:1]))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("on a white background", "1-3 shapes, found 0"),
        ("a red circle, a red star, a blue star and a green heart on white", "found 4"),
        ("two shapes on a white background: a red circle", "2"),
        ("a red circle on a pink background", "pink"),
        ("a red circle", "background"),
        ("a red green circle on white", "two color"),
    ],
)
def test_parse_brief_rejects_bad_text(text, message):
    from ip2p.toy.captions import parse_brief

    with pytest.raises(ValueError, match=message):
        parse_brief(text)


# ---------------------------------------------------------------------------
# Edits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_random_edit_changes_exactly_its_attribute(edit_type):
    rng = random.Random(EDIT_TYPES.index(edit_type))
    n = 0
    while n < 150:
        scene = random_scene(rng)
        if edit_type not in possible_edit_types(scene):
            with pytest.raises(ValueError):
                random_edit(scene, rng, edit_type)
            continue
        edit = random_edit(scene, rng, edit_type)
        assert edit.type == edit_type and edit.before == scene
        edit.after.validate()
        assert changes(edit.before, edit.after) == [edit_type], edit
        assert edit_type_of(edit.instruction) == edit_type, edit.instruction
        assert apply_instruction(scene, edit.instruction) == edit.after, edit.instruction
        n += 1


def test_apply_instruction_on_many_random_edits():
    rng = random.Random(3)
    seen = set()
    for _ in range(2000):
        scene = random_scene(rng)
        edit = random_edit(scene, rng)
        assert set(tokenize(edit.instruction)) <= set(VOCABULARY), edit.instruction
        assert apply_instruction(scene, edit.instruction) == edit.after, edit
        seen.add(edit.instruction.split()[0])
    assert len(seen) >= 15  # many different verbs


def test_handwritten_instructions():
    s = scene_of(
        ("circle", "red", "small", "top left"),
        ("square", "blue", "large", "center"),
        ("star", "red", "small", "bottom right"),
        background="white",
    )
    circle, square, star = s.shapes

    def shapes(*xs):
        return replace(s, shapes=xs)

    cases = {
        "make the circle green": shapes(replace(circle, color="green"), square, star),
        "color the star blue": shapes(circle, square, replace(star, color="blue")),
        "turn the square into a star": shapes(circle, replace(square, kind="star"), star),
        "paint the background black": replace(s, background="black"),
        "change the background to gray": replace(s, background="gray"),
        "make the shapes outlined": replace(s, style="outlined"),
        "remove the circle": shapes(square, star),
        "change the color of the small red star at the lower right to purple": shapes(
            circle, square, replace(star, color="purple")
        ),
        "make the big square a heart": shapes(circle, replace(square, kind="heart"), star),
        "get rid of the red star": shapes(circle, square),
    }
    for text, want in cases.items():
        assert apply_instruction(s, text) == want, text
    two = shapes(circle, square)
    assert apply_instruction(two, "add a small yellow heart at the bottom right") == shapes(
        circle, square, Shape("heart", "yellow", "small", "bottom right")
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("make the circle red", "already"),
        ("make the triangle red", "no "),
        ("add a small red heart in the center", "taken"),
        ("paint the background white", "already"),
        ("fill in the shapes", "already"),
        ("make the circle at the bottom green", "no "),
        ("make the circle green please", "unknown"),
        ("make the circle green and blue", "exactly one"),
        ("turn the circle into a hexagon", "unknown"),
        ("make the shapes", "cannot tell"),
    ],
)
def test_apply_instruction_rejects_impossible_edits(text, message):
    s = scene_of(("circle", "red", "small", "top left"), ("square", "blue", "large", "center"))
    with pytest.raises(ValueError, match=message):
        apply_instruction(s, text)


def test_ambiguous_references_are_rejected_and_avoided():
    s = scene_of(("circle", "red", "small", "top left"), ("circle", "red", "large", "center"))
    with pytest.raises(ValueError, match="ambiguous"):
        apply_instruction(s, "make the red circle green")
    rng = random.Random(4)
    for _ in range(50):
        edit = random_edit(s, rng, "recolor")
        assert any(w in tokenize(edit.instruction) for w in ("top", "upper", "left", "center", "middle"))
    full = random_scene(rng, 3)
    with pytest.raises(ValueError, match="already has"):
        apply_instruction(full, "add a big green star at the top")
    with pytest.raises(ValueError, match="only shape"):
        apply_instruction(scene_of(("circle", "red", "small", "top")), "remove the circle")


# ---------------------------------------------------------------------------
# Seed triplets
# ---------------------------------------------------------------------------


def test_seed_triplets_balanced_deterministic_and_exact(tmp_path):
    triplets = seed_triplets()
    assert len(triplets) == 700 and triplets == seed_triplets(700, 0)
    assert triplets != seed_triplets(700, 1)
    counts = Counter(edit_type_of(t["edit"]) for t in triplets)
    assert set(counts) == set(EDIT_TYPES) and max(counts.values()) - min(counts.values()) <= 1
    for t in triplets:
        assert set(t) == {"input", "edit", "output"}
        before, after = parse_caption(t["input"]), parse_caption(t["output"])
        assert apply_instruction(before, t["edit"]) == after, t
    assert len({t["input"] for t in triplets}) > 690

    path = write_jsonl(tmp_path / "sub" / "seeds.jsonl", triplets[:20])
    assert read_jsonl(path) == triplets[:20]
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 and set(json.loads(lines[0])) == {"input", "edit", "output"}
    assert [p.name for p in path.parent.iterdir()] == ["seeds.jsonl"]  # no temp file left


def test_the_package_names_load_on_first_use_and_render_stays_the_function():
    """In a fresh process: ``import ip2p.toy`` loads no submodule; a name loads its own; ``render`` is the
    function even after the submodule of that name was imported (as the eager package had it)."""
    import subprocess
    import sys

    code = """
import json, sys
import ip2p.toy as toy
fresh = sorted(m for m in sys.modules if m.startswith("ip2p.toy."))
import ip2p.toy.render
from ip2p.toy import Scene, render
print(json.dumps({
    "fresh": fresh,
    "render": callable(render) and render.__module__ == "ip2p.toy.render" and toy.render is render,
    "scene": Scene.__module__,
    "all": sorted(toy.__all__) == sorted(toy._HOME) and all(hasattr(toy, n) for n in toy.__all__),
}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"fresh": [], "render": True, "scene": "ip2p.toy.scene", "all": True}
