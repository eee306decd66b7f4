"""The toy multi-turn test set: sequences of three edits on held-out scenes, with the exact composed target after
each turn (for ``ip2p evaluate --chain-mode``; toy).

Sequence i starts from held-out scene i (the scenes of ``toy:300``, never trained on, with instructions of their
own; the validation split ``toy-multiturn-val`` starts from the scenes of ``toy-val``). Each turn draws an edit of
the scene the turns before it composed, of an edit type the sequence has not used yet (the six types in turn,
starting at type i), so that no turn undoes another and every instruction refers to the scene as it then is
("the green circle" after a recolouring). Turn k's item carries:

- ``image``: the exact render of the scene after turns 1..k-1 (what an editor that never drifts would be given);
- ``instruction``: turn k's; ``target``: the exact render after turns 1..k; ``edit``: the toy ``Edit`` from the
  scene after k-1 turns to the scene after k, so the oracle judges an image after k chained turns against the
  composed target (``oracle_success``: the k-th edit right and every other attribute of the composed scene);
- ``chain``: the sequence's id, the turns of a sequence consecutive and in order.

Evaluated without ``--chain-mode``, every turn starts from its exact input: the editor's single-turn success on
these edits, the bound a chain that never drifts could reach.

Example:
    >>> items = multiturn_test_set(2)
    >>> [it.id for it in items[:4]], items[0].chain
    (['toy-multiturn-0000-t1', 'toy-multiturn-0000-t2', 'toy-multiturn-0000-t3', 'toy-multiturn-0001-t1'],
     'toy-multiturn-0000')
"""

from __future__ import annotations

import random

from ip2p.evaluate.items import EvalItem, EvaluationError

MULTITURN_SEED = 27_182
MULTITURN_VAL_SEED = 31_415
MULTITURN_SIZE = 100  # sequences in toy-multiturn without :N
TURNS = 3


def edit_sequence(scene, rng: random.Random, first_type: int = 0, turns: int = TURNS) -> list:
    """``turns`` toy ``Edit``s, each of the scene the ones before composed, of edit types not used before in the
    sequence (tried from ``EDIT_TYPES[first_type]`` on, the first possible one)."""
    from ip2p.toy.edits import EDIT_TYPES, possible_edit_types, random_edit

    edits, used, current = [], set(), scene
    for _ in range(turns):
        order = [EDIT_TYPES[(first_type + j) % len(EDIT_TYPES)] for j in range(len(EDIT_TYPES))]
        possible = possible_edit_types(current)
        wanted = next((t for t in order if t not in used and t in possible), None)
        if wanted is None:
            raise ValueError(f"no unused edit type is possible for {current}")
        edit = random_edit(current, rng, wanted)
        edits.append(edit)
        used.add(wanted)
        first_type += 1
        current = edit.after
    return edits


def multiturn_test_set(n: int = MULTITURN_SIZE, validation: bool = False) -> list[EvalItem]:
    """``n`` sequences of ``TURNS`` edits, flattened: sequence i's turns 1, 2, 3, then sequence i+1's."""
    from ip2p.toy.captions import caption
    from ip2p.toy.data import heldout_scenes
    from ip2p.toy.render import render
    from ip2p.toy.testsets import TOY_TEST_SIZE

    scenes = heldout_scenes()["mixed"]
    if validation:
        scenes, seed, prefix = scenes[TOY_TEST_SIZE:], MULTITURN_VAL_SEED, "toy-multiturn-val"
    else:
        scenes, seed, prefix = scenes[:TOY_TEST_SIZE], MULTITURN_SEED, "toy-multiturn"
    if not 1 <= n <= len(scenes):
        raise EvaluationError(f"the {prefix} test set has 1 to {len(scenes)} sequences, asked for {n}")
    rng = random.Random(seed)
    items = []
    for i, scene in enumerate(scenes[:n]):
        chain = f"{prefix}-{i:04d}"
        for k, edit in enumerate(edit_sequence(scene, rng, first_type=i)):
            items.append(
                EvalItem(
                    id=f"{chain}-t{k + 1}",
                    image=render(edit.before),
                    instruction=edit.instruction,
                    input_caption=caption(edit.before),
                    output_caption=caption(edit.after),
                    target=render(edit.after),
                    edit=edit,
                    edit_type=edit.type,
                    chain=chain,
                )
            )
    return items


def multiturn_loader(validation: bool):
    """The registry's loader of a multi-turn test set: ``load(N or None, limit or None)``, N in sequences and
    ``limit`` in items (turns), as every test set's."""

    def load(count: int | None, limit: int | None) -> list[EvalItem]:
        items = multiturn_test_set(count or MULTITURN_SIZE, validation=validation)
        return items if limit is None else items[:limit]

    return load


TEST_SETS = {
    "toy-multiturn": multiturn_loader(validation=False),
    "toy-multiturn-val": multiturn_loader(validation=True),
}
