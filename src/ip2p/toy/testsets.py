"""The toy world's test sets for ``ip2p evaluate`` and its oracle as an evaluation metric (paper section 4, toy).

Test sets (registered by :mod:`ip2p.toy.plugin`): ``toy[:N]`` (the held-out test set, N <= 300), ``toy-val[:N]``
(its validation split, N <= 200), and ``toy-brief[:N]``, ``toy-val-brief[:N]``: the same items with brief captions.

The oracle metric reads the edited image back to a scene and judges it against the item's exact edit:
``oracle_edit`` (the edited attributes read as the instruction says), ``oracle_preserved`` (every other attribute
kept) and ``oracle_success`` (both), averaged per edit type too, and drawn as a plane (edits right x, rest
preserved y) beside the paper's CLIP plane.
"""

from __future__ import annotations

import random

from PIL import Image

from ip2p.evaluate.items import EvalItem, EvaluationError
from ip2p.registry import Metric

TOY_TEST_SEED = 31_337
TOY_TEST_SIZE = 300  # toy:N takes the first N held-out scenes; toy-val:N the scenes after the first 300
TOY_VAL_SEED = 4_242
TOY_VAL_SIZE = 200  # the default size of toy-val


def toy_test_set(
    n: int = TOY_TEST_SIZE, seed: int | None = None, validation: bool = False, brief: bool = False
) -> list[EvalItem]:
    """``n`` held-out rendered toy scenes, one instruction each, the six edit types in turn (where possible).

    The scenes are the held-out evaluation scenes of the toy base model (never trained on), so the inputs are
    renders, playing the role of real photographs; the target is the render of the edited scene.

    ``validation=True`` gives the validation split instead: the held-out scenes after the first
    ``TOY_TEST_SIZE`` (disjoint from the reported test set ``toy:300``), with their own instructions, for choosing
    settings such as guidance scales without looking at the test set. ``seed`` (default: the split's own) draws
    the instructions.

    ``brief=True`` gives the same items with brief captions (``toy-brief``, ``toy-val-brief``): every size and
    position left unsaid, as real captions leave most of a photograph unsaid. They change what SDEdit is told
    (the output caption) and the caption side of the CLIP metrics (directional and output-caption similarity),
    nothing else.

    Example:
        >>> [it.edit_type for it in toy_test_set(3)]
        ['recolor', 'change_kind', 'background']
    """
    from ip2p.toy.captions import caption
    from ip2p.toy.data import heldout_scenes
    from ip2p.toy.edits import EDIT_TYPES, possible_edit_types, random_edit
    from ip2p.toy.render import render

    scenes = heldout_scenes()["mixed"]
    if validation:
        scenes, default_seed, prefix = scenes[TOY_TEST_SIZE:], TOY_VAL_SEED, "toy-val"
    else:
        scenes, default_seed, prefix = scenes[:TOY_TEST_SIZE], TOY_TEST_SEED, "toy"
    prefix += "-brief" if brief else ""
    seed = default_seed if seed is None else seed
    if not 1 <= n <= len(scenes):
        raise EvaluationError(f"the {prefix} test set has 1 to {len(scenes)} items, asked for {n}")
    rng = random.Random(seed)
    items = []
    for i, scene in enumerate(scenes[:n]):
        wanted = EDIT_TYPES[i % len(EDIT_TYPES)]
        edit = random_edit(scene, rng, wanted if wanted in possible_edit_types(scene) else None)
        items.append(
            EvalItem(
                id=f"{prefix}-{i:04d}",
                image=render(edit.before),
                instruction=edit.instruction,
                input_caption=caption(edit.before, brief=brief),
                output_caption=caption(edit.after, brief=brief),
                target=render(edit.after),
                edit=edit,
                edit_type=edit.type,
            )
        )
    return items


def test_set_loader(validation: bool, brief: bool):
    """The registry's loader of one toy test set: ``load(N or None, limit or None)``."""

    def load(count: int | None, limit: int | None) -> list[EvalItem]:
        n = count or (TOY_VAL_SIZE if validation else TOY_TEST_SIZE)
        return toy_test_set(n if limit is None else min(n, limit), validation=validation, brief=brief)

    return load


TEST_SETS = {
    "toy": test_set_loader(validation=False, brief=False),
    "toy-val": test_set_loader(validation=True, brief=False),
    "toy-brief": test_set_loader(validation=False, brief=True),
    "toy-val-brief": test_set_loader(validation=True, brief=True),
}


def oracle_verdicts(
    items: list[EvalItem], inputs: list[Image.Image], edited: list[Image.Image]
) -> list[dict[str, float]]:
    """The oracle's verdict on each edited image of a batch whose item carries its toy ``Edit`` ({} otherwise)."""
    from ip2p.toy.oracle import judge_edit

    rows: list[dict[str, float]] = []
    for item, image, out in zip(items, inputs, edited, strict=True):
        if item.edit is None:
            rows.append({})
            continue
        verdict = judge_edit(image, out.resize(image.size), item.edit)
        rows.append(
            {
                "oracle_edit": float(verdict["edit_correct"]),
                "oracle_preserved": float(verdict["preserved"]),
                "oracle_success": float(verdict["edit_correct"] and verdict["preserved"]),
            }
        )
    return rows


ORACLE = Metric(
    oracle_verdicts,
    columns=("oracle_edit", "oracle_preserved", "oracle_success"),
    by_type=("oracle_edit", "oracle_preserved", "oracle_success"),
    plane=("oracle_edit", "oracle_preserved", "oracle: edit right", "oracle: rest preserved"),
    headline="oracle_success",
)
"""The oracle as an ``ip2p evaluate`` metric, registered as ``oracle``."""
