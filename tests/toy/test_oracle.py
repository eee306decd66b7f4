"""The toy oracle: reading scenes back from pixels, judging images and edits."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ip2p.toy import (
    COLORS,
    EDIT_TYPES,
    KINDS,
    POSITIONS,
    Scene,
    Shape,
    all_correct,
    judge,
    judge_edit,
    random_edit,
    random_scene,
    read_scene,
    render,
)

# Seeds distinct from every other toy test: these scenes are held out.
HELD_OUT_SEED = 20240


def degrade(img: Image.Image, rng: np.random.Generator, sigma: float = 8.0, blur: float = 0.6) -> np.ndarray:
    """Slight Gaussian blur, then Gaussian noise of ``sigma`` (in 0..255 units)."""
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    arr = arr + rng.normal(0.0, sigma, arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def test_read_scene_is_exact_on_clean_renders():
    rng = random.Random(HELD_OUT_SEED)
    scenes = [random_scene(rng) for _ in range(500)]
    accuracy = np.mean([read_scene(render(s)) == s for s in scenes])
    assert accuracy >= 0.99, accuracy


def test_read_scene_is_robust_to_noise_and_blur():
    rng = random.Random(HELD_OUT_SEED + 1)
    noise = np.random.default_rng(HELD_OUT_SEED + 1)
    scenes = [random_scene(rng) for _ in range(300)]
    accuracy = np.mean([read_scene(degrade(render(s), noise)) == s for s in scenes])
    assert accuracy >= 0.95, accuracy


def test_read_scene_accepts_images_and_arrays_of_any_size():
    s = Scene(
        (Shape("heart", "orange", "small", "top right"), Shape("star", "purple", "large", "bottom left")),
        "beige",
        "outlined",
    )
    img = render(s)
    arr = np.asarray(img)
    for x in (img, arr, arr / 255.0, arr.transpose(2, 0, 1) / 255.0):
        assert read_scene(x) == s
    assert read_scene(render(s, size=96)) == s
    with pytest.raises(ValueError):
        read_scene(np.zeros((64, 64)))


def test_empty_image_has_no_shapes():
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    scene = read_scene(blank)
    assert scene.shapes == () and scene.background == "gray"
    expected = Scene((Shape("circle", "red", "small", "center"),), "gray", "filled")
    verdict = judge(blank, expected)
    assert not verdict["shape0.presence"] and verdict["background"] and verdict["extra_shapes"]
    assert not all_correct(blank, expected)


def _wrong_versions(scene: Scene, rng: random.Random):
    """(scene with one attribute wrong, key that judge must flag) pairs."""
    i = rng.randrange(len(scene.shapes))
    shape = scene.shapes[i]
    others = [s for s in scene.shapes if s is not shape]

    def with_shape(new: Shape) -> tuple[Scene, int]:
        wrong = replace(scene, shapes=(*others, new))
        return wrong, wrong.shapes.index(new)

    kind = rng.choice([k for k in KINDS if k != shape.kind])
    color = rng.choice([c for c in COLORS if c != shape.color])
    size = "large" if shape.size == "small" else "small"
    position = rng.choice(scene.free_positions())
    for attr, new in (
        ("kind", replace(shape, kind=kind)),
        ("color", replace(shape, color=color)),
        ("size", replace(shape, size=size)),
        ("position", replace(shape, position=position)),
    ):
        wrong, j = with_shape(new)
        yield wrong, f"shape{j}.{attr}"
    bg = rng.choice([b for b in ("white", "black", "gray", "beige", "navy") if b != scene.background])
    yield replace(scene, background=bg), "background"
    yield replace(scene, style="filled" if scene.style == "outlined" else "outlined"), "style"
    if others:
        yield replace(scene, shapes=tuple(others)), "extra_shapes"


def test_judge_flags_exactly_the_wrong_attribute():
    rng = random.Random(HELD_OUT_SEED + 2)
    for _ in range(40):
        scene = random_scene(rng)
        img = render(scene)
        assert all_correct(img, scene)
        for wrong, key in _wrong_versions(scene, rng):
            verdict = judge(img, wrong)
            assert [k for k, ok in verdict.items() if not ok] == [key], (scene, wrong)


def test_judge_reports_a_missing_shape_on_every_shape_key():
    scene = Scene((Shape("circle", "red", "small", "top"),), "white", "filled")
    more = replace(scene, shapes=(*scene.shapes, Shape("star", "blue", "large", "bottom")))
    verdict = judge(render(scene), more)
    assert sorted(k for k, ok in verdict.items() if not ok) == [
        f"shape1.{a}" for a in ("color", "kind", "position", "presence", "size")
    ]


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_judge_edit(edit_type):
    rng = random.Random(HELD_OUT_SEED + 3 + EDIT_TYPES.index(edit_type))
    for _ in range(15):
        scene = random_scene(rng, 2)
        edit = random_edit(scene, rng, edit_type)
        before, after = render(edit.before), render(edit.after)
        assert all(judge_edit(before, after, edit).values())
        # An editor that changes nothing preserves everything but edits nothing.
        unchanged = judge_edit(before, before, edit)
        assert not unchanged["edit_correct"] and unchanged["preserved"] and unchanged["preserved_vs_input"]
        # The right edit plus an unrelated change is not preserving.
        other = random_edit(edit.after, rng, "background" if edit_type != "background" else "style")
        spoiled = judge_edit(before, render(other.after), edit)
        assert spoiled["edit_correct"] and not spoiled["preserved"] and spoiled["input_correct"]


def test_judge_edit_position_keys_cover_the_grid():
    # Removing a shape is judged on the emptied cell: a leftover shape there fails.
    scene = Scene((Shape("circle", "red", "small", p) for p in POSITIONS[:2]), "white", "filled")  # type: ignore[arg-type]
    edit = random_edit(scene, random.Random(0), "remove")
    verdict = judge_edit(render(scene), render(scene), edit)
    assert not verdict["edit_correct"] and verdict["preserved"]


def test_brief_samples_are_judged_whatever_their_layout():
    from ip2p.toy.quality import judge_brief_samples

    scene = Scene(
        (Shape("circle", "red", "small", "top left"), Shape("star", "blue", "large", "center")),
        "beige",
        "filled",
    ).validate()
    moved = replace(
        scene, shapes=(replace(scene.shapes[0], position="bottom right", size="large"), scene.shapes[1])
    )
    recoloured = replace(scene, shapes=(replace(scene.shapes[0], color="green"), scene.shapes[1]))
    extra = replace(scene, shapes=(*scene.shapes, Shape("heart", "red", "small", "top")))
    images = [
        np.asarray(render(x)) for x in (scene, moved, recoloured, extra, replace(scene, style="outlined"))
    ]
    assert judge_brief_samples(images, [scene] * 5) == [True, True, False, False, False]
