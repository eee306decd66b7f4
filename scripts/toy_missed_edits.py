"""How a toy editor misses the edits it gets wrong: left undone, or done wrongly.

For the recolourings, changes of kind and removals of the toy test set, edit each input (text guidance 3, image
guidance 2, 20 steps, the evaluation's per-item seeds), read the result with the oracle, and sort every edit whose
changed attributes do not all read as the target: *unchanged* if one of them still reads as in the input, else
*other*.

    python scripts/toy_missed_edits.py --model runs/toy-editor-cpu/model   # about a minute here
"""

from __future__ import annotations

import argparse
import collections

from ip2p.evaluate import item_seed
from ip2p.pipeline import EditConfig, EditPipeline
from ip2p.toy.oracle import read_scene, scene_attributes
from ip2p.toy.testsets import toy_test_set

TYPES = ("recolor", "change_kind", "remove")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=300, help="items of toy:N to look at")
    parser.add_argument("--scheduler", default=None)
    args = parser.parse_args()
    items = [(i, it) for i, it in enumerate(toy_test_set(args.n)) if it.edit_type in TYPES]
    pipe = EditPipeline.from_pretrained(args.model)
    config = EditConfig(
        num_inference_steps=20,
        text_guidance_scale=3,
        image_guidance_scale=2,
        resolution=64,
        scheduler=args.scheduler,
    )
    counts = collections.Counter()
    for start in range(0, len(items), 50):
        chunk = items[start : start + 50]
        outputs = pipe.edit_batch(
            [it.image for _, it in chunk],
            [it.instruction for _, it in chunk],
            [item_seed(0, i) for i, _ in chunk],
            config,
        )
        for (_, it), image in zip(chunk, outputs, strict=True):
            want_before, want_after = scene_attributes(it.edit.before), scene_attributes(it.edit.after)
            got = scene_attributes(read_scene(image))
            changed = [
                k for k in set(want_before) | set(want_after) if want_before.get(k) != want_after.get(k)
            ]
            if all(got.get(k) == want_after.get(k) for k in changed):
                verdict = "right"
            elif any(got.get(k) == want_before.get(k) for k in changed):
                verdict = "unchanged"
            else:
                verdict = "other"
            counts[(it.edit_type, verdict)] += 1
    print("| edit type | edit right | missed: left unchanged | missed: done wrongly |")
    print("| --- | --- | --- | --- |")
    for t in TYPES:
        print(f"| {t} | {counts[(t, 'right')]} | {counts[(t, 'unchanged')]} | {counts[(t, 'other')]} |")
    missed = sum(v for (_, verdict), v in counts.items() if verdict != "right")
    unchanged = sum(v for (_, verdict), v in counts.items() if verdict == "unchanged")
    print(f"missed {missed}, of which left unchanged {unchanged}")


if __name__ == "__main__":
    main()
