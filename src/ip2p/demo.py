"""The demo: render a toy-world scene, edit it by an instruction, write before/after pictures.

The edit runs at the model's own settings (the bundled toy editor's ``edit_settings.json``: 64 px, 4 steps, text
guidance 3, image guidance 2), so the demo holds no preset of its own. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import random
from pathlib import Path

from ip2p.app_config import AUTO_MODEL, DemoConfig
from ip2p.edit_config import TINY_MODEL
from ip2p.edit_settings import model_folder
from ip2p.toy.plugin import TOY_MODEL

SCENE_SIZE = 64  # toy scenes are drawn at the toy world's resolution


def resolve_demo_model(model: str) -> tuple[str, str | None]:
    """'auto' -> the bundled toy editor when installed, else the tiny random model with a plain note."""
    if model != AUTO_MODEL:
        return model, None
    folder = model_folder(TOY_MODEL)
    if folder is not None and (folder / "model_index.json").is_file():
        return TOY_MODEL, None
    return TINY_MODEL, (
        "NOTE: the toy world's trained editor is not bundled yet, so this demo runs a tiny RANDOMLY INITIALISED "
        "model: it exercises the whole editing path, but its output is noise, not an edit."
    )


def run_demo(
    out_dir: Path,
    model: str = AUTO_MODEL,
    instruction: str | None = None,
    seed: int = 0,
    steps: int | None = None,
) -> list[str]:
    """Edit one toy scene and write ``input.png``, ``edited.png`` and ``before_after.png`` to ``out_dir``.

    Returns the lines to print: what was edited, with which model, and where the pictures are.
    """
    from PIL import Image

    from ip2p.imaging import make_grid, save_png
    from ip2p.pipeline import EditPipeline
    from ip2p.toy import random_edit, random_scene, render
    from ip2p.toy.captions import caption

    name, note = resolve_demo_model(model)
    rng = random.Random(seed)
    scene = random_scene(rng)
    edit = random_edit(scene, rng)
    instruction = instruction or edit.instruction
    before = render(scene, size=SCENE_SIZE)

    pipe = EditPipeline.from_pretrained(name)
    result = pipe(before, instruction, seed=seed, num_inference_steps=steps)  # the model's settings otherwise
    after = result.images[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(before, out_dir / "input.png", {"ip2p:caption": caption(scene)})
    save_png(after, out_dir / "edited.png", result.metadata(0))
    side = make_grid(
        [
            before.resize((256, 256), Image.Resampling.NEAREST),
            after.resize((256, 256), Image.Resampling.NEAREST),
        ],
        columns=2,
    )
    save_png(side, out_dir / "before_after.png", result.metadata(0))

    lines = [note] if note else []
    lines += [
        f"model:       {pipe.components.name}",
        f"scene:       {caption(scene)}",
        f"instruction: {instruction}",
        f"settings:    {result.config.num_inference_steps} steps, text guidance {result.config.text_guidance_scale}, "
        f"image guidance {result.config.image_guidance_scale}, seed {result.seed}",
    ]
    if name == TOY_MODEL and instruction == edit.instruction:
        from ip2p.toy.oracle import judge_edit

        verdict = judge_edit(before, after, edit)
        lines.append(
            f"oracle:      edit correct={verdict['edit_correct']}, rest preserved={verdict['preserved']}"
        )
    lines.append(
        f"wrote:       {out_dir / 'input.png'}, {out_dir / 'edited.png'}, {out_dir / 'before_after.png'}"
    )
    return lines


def demo(config: DemoConfig) -> list[str]:
    """``ip2p demo``: :func:`run_demo` with a :class:`DemoConfig`."""
    return run_demo(
        Path(config.output),
        model=config.model,
        instruction=config.instruction,
        seed=config.seed,
        steps=config.steps,
    )
