"""The toy world's data for training and evaluating its base models: held-out scenes, training scenes (rendered
once and cached on disk), one-attribute variants, the UNet's captions, and image/tensor conversions.

Held-out scenes come from their own seed and are never trained on; training scenes are drawn from ``seed`` with the
held-out ones skipped, so the same (n, seed) always gives the same scenes in the same order.

Example::

    sets = heldout_scenes()                        # {"mixed": 500, "one": 100, "two": 100 scenes}
    images, scenes = load_dataset(work, 20_000, 0)  # uint8 (N, H, W, 3), cached under work/data/20000-0
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tqdm.auto import tqdm

from ip2p.fileio import atomic_write, write_json_atomic

from .scene import BACKGROUNDS, COLORS, KINDS, SIZES, STYLES, Scene, Shape, random_scene

if TYPE_CHECKING:
    import torch

HELDOUT_SEED = 20_240_917


def scene_to_list(scene: Scene) -> list:
    return [scene.background, scene.style, [[s.kind, s.color, s.size, s.position] for s in scene.shapes]]


def scene_from_list(item: list) -> Scene:
    bg, style, shapes = item
    return Scene(shapes=tuple(Shape(*s) for s in shapes), background=bg, style=style)


def one_attribute_variants(scene: Scene) -> list[Scene]:
    """Every valid scene that differs from ``scene`` in exactly one attribute: one shape's kind, colour, size or
    position, the background or the style."""
    out: list[Scene] = []
    shapes = list(scene.shapes)
    used = {s.color for s in shapes}
    for i, s in enumerate(shapes):
        others = shapes[:i] + shapes[i + 1 :]
        options = [dataclasses.replace(s, kind=k) for k in KINDS if k != s.kind]
        options += [dataclasses.replace(s, color=c) for c in COLORS if c != s.color and c != scene.background]
        options += [dataclasses.replace(s, size=z) for z in SIZES if z != s.size]
        options += [dataclasses.replace(s, position=p) for p in scene.free_positions()]
        out += [dataclasses.replace(scene, shapes=(*others, o)) for o in options]
    out += [
        dataclasses.replace(scene, background=b)
        for b in BACKGROUNDS
        if b != scene.background and b not in used
    ]
    out += [dataclasses.replace(scene, style=st) for st in STYLES if st != scene.style]
    return [v.validate() for v in out]


def heldout_scenes(seed: int = HELDOUT_SEED) -> dict[str, list[Scene]]:
    """Evaluation scenes, never trained on: 500 mixed (VAE, CLIP), 100 one-shape and 100 two-shape (text-to-image)."""
    rng = random.Random(seed)
    mixed = [random_scene(rng) for _ in range(500)]
    sets = {"mixed": mixed, "one": [], "two": []}
    for name, n_shapes in (("one", 1), ("two", 2)):
        seen: set[Scene] = set()
        while len(sets[name]) < 100:
            s = random_scene(rng, n_shapes)
            if s not in seen:
                seen.add(s)
                sets[name].append(s)
    return sets


def training_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` random scenes (uniform 1-3 shapes), none of them a held-out evaluation scene."""
    held = {s for group in heldout_scenes().values() for s in group}
    rng = random.Random(seed)
    out: list[Scene] = []
    while len(out) < n:
        s = random_scene(rng)
        if s not in held:
            out.append(s)
    return out


def load_dataset(work: Path, n: int, seed: int) -> tuple[np.ndarray, list[Scene]]:
    """Pre-rendered training scenes, made once and cached under ``work/data/{n}-{seed}``.

    One folder per (n, seed): stages that run side by side with other scene counts (the CPU recipe's VAE and CLIP)
    never rewrite each other's cache, and two processes making the same one write the same bytes."""
    from .render import render_batch

    data = work / "data" / f"{n}-{seed}"
    images_path, scenes_path = data / "images.npy", data / "scenes.json"
    if scenes_path.is_file() and images_path.is_file():
        meta = json.loads(scenes_path.read_text())
        if meta["n"] == n and meta["seed"] == seed:
            return np.load(images_path, mmap_mode="r"), [scene_from_list(s) for s in meta["scenes"]]
    scenes = training_scenes(n, seed)
    images = np.concatenate(
        [
            render_batch(scenes[i : i + 1000])
            for i in tqdm(range(0, n, 1000), desc="render scenes", leave=False)
        ]
    )
    with atomic_write(images_path, "wb") as f:
        np.save(f, images)
    meta = {"n": n, "seed": seed, "scenes": [scene_to_list(s) for s in scenes]}
    write_json_atomic(scenes_path, meta, indent=None)
    return images, scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1] (the VAE's and our CLIP's input range)."""
    import torch

    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    import torch

    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class CaptionMix(Protocol):
    """The caption settings :func:`unet_captions` reads (the UNet stage's config has them)."""

    caption_dropout: float
    canonical_captions: float
    brief_captions: float


def unet_captions(scenes: list[Scene], rng: random.Random, settings: CaptionMix) -> list[str]:
    """The UNet's captions of a batch's scenes: empty (``caption_dropout``), canonical (``canonical_captions``) or
    varied phrasing, each brief with probability ``brief_captions``."""
    from .captions import caption

    texts = []
    for scene in scenes:
        u = rng.random()
        if u < settings.caption_dropout:
            texts.append("")
            continue
        brief = settings.brief_captions > 0 and rng.random() < settings.brief_captions
        phrasing = None if u < settings.caption_dropout + settings.canonical_captions else rng
        texts.append(caption(scene, phrasing, brief=brief))
    return texts
