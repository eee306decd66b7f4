"""The web app (`ip2p serve`): edit images by written instructions in the browser (the original ``edit_app.py``,
paper section 6), with multi-turn editing, a history with undo and downloads that carry their metadata.

The app holds no model logic: every edit is one ``EditPipeline`` call. What it adds is the interaction: controls
with the paper's defaults and a Reset that restores them (the original's reset set Steps to 0), "randomize
guidance" as the original draws it, a chain of edits, clear one-line errors (never a server path or a
traceback), a queue with a concurrency limit, and an HTTP API for programs. How a request is read and refused
(the upload, the settings, gradio's own input checks, a client that left) is ``ip2p.app_requests``.

Example:
    >>> from ip2p.app import ServeConfig, serve
    >>> serve(ServeConfig(model="toy", port=7860))  # then open http://127.0.0.1:7860
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ip2p.app_config import ServeConfig
from ip2p.app_requests import (
    MODEL_SCHEDULER,
    CheckedBlocks,
    ClientGone,
    brush_mask,
    check_edit_size,
    client_gone,
    edit_values,
    load_upload,
    parse_seed,
    shown,
    upload_path,
    web_message,
)
from ip2p.chain import chain_turn
from ip2p.demo import resolve_demo_model
from ip2p.edit_config import CHAIN_MODES, GUIDANCE_MODES, TINY_MODEL
from ip2p.imaging import DEFAULT_MAX_PIXELS, ImageError, save_png
from ip2p.masking import MaskError
from ip2p.pipeline import EditConfig, EditPipeline, EditResult
from ip2p.sampling import SCHEDULERS
from ip2p.toy.plugin import TOY_MODEL

log = logging.getLogger(__name__)

RANDOM_SEED, FIXED_SEED = "Random seed", "Fixed seed"
FIXED_GUIDANCE, RANDOM_GUIDANCE = "Fixed guidance", "Randomize guidance"
AUTO_GUIDANCE = "Automatic guidance"  # the model's auto_guidance.json chooses (ip2p.auto_guidance)
# what an edit keeps of its input (ip2p.chain): the modes of chained edits
CHAIN_CHOICES = [("Plain", "plain"), ("Keep unchanged pixels", "paste"), ("Automatic mask", "auto-mask")]
TINY_NOTE = (
    "NOTE: this is the tiny RANDOMLY INITIALISED test model: it exercises the whole editing path, "
    "but its output is noise, not an edit."
)
KEEP_OUTPUTS_S = 24 * 3600  # edited PNGs older than this are deleted from the server's scratch folder

HELP = """
**How to tune.** The two guidance scales trade following the instruction against staying close to the input
(paper section 3.2.1).
- The image changes **too little**: lower *image guidance* (e.g. 1.2) or raise *text guidance* (e.g. 9).
- The image changes **too much** (or loses its identity): raise *image guidance* (e.g. 1.8) or lower
  *text guidance* (e.g. 6).
- *Randomize guidance* draws text guidance from U(6, 9) and image guidance from U(1.2, 1.8) for every edit, as the
  original app; the values used are written back into the sliders. A *fixed seed* reproduces an edit exactly.

**Edit** edits the *Before* image. **Edit the result next** moves the result to *Before*, so the next instruction
applies to it; the history below shows the chain, and **Undo** steps back one link. Every image of the chain can
be downloaded as a PNG whose text chunks record the instruction, seed, scales, steps and model.
**Reset** restores every setting to its default and clears the result.

**Chains drift** a little with every edit (each turn goes through the autoencoder again). *Keep unchanged pixels*
takes only the pixels an edit changed beyond a threshold and keeps the rest of its input exactly (as Emu Edit);
*Automatic mask* edits each turn only where the editor finds the instruction acts. *Automatic guidance* (where the
model carries one) picks both scales from the instruction, as learned on its validation edits.

**Mask.** Paint over the part the edit may change (in *Mask*): the rest of the image is kept exactly. Or tick
*Automatic mask*: the editor estimates where the instruction acts (DiffEdit) and edits only there; the mask used
is shown beside the brush.
"""

# Small results (the toy world's are 64 px) are scaled up to the frame instead of sitting in its middle.
CSS = "#before img, #after img, #mask-used img { width: 100%; height: 100%; object-fit: contain; }"
CSS_PIXELATED = "#before img, #after img, #history img, #mask-used img { image-rendering: pixelated; }"


# -- settings ------------------------------------------------------------------------------------------------
@dataclass
class AppDefaults:
    """The controls' starting values; Reset restores them. Defaults are the original ``edit_app.py``'s."""

    steps: int = 100
    text_guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int = 1371  # the original's seed box; the seed mode starts at "random" as there
    random_seed: bool = True
    random_guidance: bool = False
    scheduler: str = MODEL_SCHEDULER
    resolution: int = 512

    @classmethod
    def from_config(cls, config: EditConfig) -> AppDefaults:
        """The controls at ``config``'s values: a pipeline's ``config_for()``, i.e. its model's own settings (the
        toy editor's 64 px, 4 steps, text 3, image 2) or the paper's."""
        return cls(
            steps=config.num_inference_steps,
            text_guidance=config.text_guidance_scale,
            image_guidance=config.image_guidance_scale,
            scheduler=config.scheduler if config.scheduler in SCHEDULERS else MODEL_SCHEDULER,
            resolution=config.resolution,
        )


def randomized_guidance(rng: random.Random) -> tuple[float, float]:
    """(text, image) guidance as the original app's "Randomize CFG": U(6, 9) and U(1.2, 1.8), two decimals."""
    return round(rng.uniform(6.0, 9.0), 2), round(rng.uniform(1.2, 1.8), 2)


def draw_seed(rng: random.Random) -> int:
    """A fresh seed as the original app draws it (``random.randint(0, 100000)``): short enough to type back."""
    return rng.randint(0, 100000)


# -- the app -------------------------------------------------------------------------------------------------
PipelineSource = EditPipeline | Callable[[], EditPipeline]


class EditorApp:
    """The event handlers of the web app and the ``gr.Blocks`` that wires them; see ``build_app``."""

    def __init__(
        self,
        pipeline: PipelineSource,
        defaults: AppDefaults | None = None,
        *,
        note: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        examples: int = 4,
        guidance: Any = None,
    ):
        self._source = pipeline
        self.guidance = guidance  # a GuidancePredictor: "Automatic guidance" is offered with one
        self._pipeline = pipeline if isinstance(pipeline, EditPipeline) else None
        self._load_lock = threading.Lock()
        name = self._pipeline.components.name if self._pipeline else None
        if defaults is None:
            defaults = (
                AppDefaults.from_config(self._pipeline.config_for()) if self._pipeline else AppDefaults()
            )
        self.defaults = defaults
        self.note = note or (TINY_NOTE if name == TINY_MODEL else None)
        self.max_pixels = max_pixels
        self.size_multiple = self._pipeline.size_multiple if self._pipeline else 64
        self._scratch = tempfile.TemporaryDirectory(prefix="ip2p-app-")  # removed with this object
        self.outputs = Path(self._scratch.name) / "edits"
        self.outputs.mkdir()
        self.example_items = self._write_examples(examples)
        self._rng = random.Random()

    @property
    def pipeline(self) -> EditPipeline:
        """The editing pipeline, built by the factory on first use."""
        if self._pipeline is None:
            with self._load_lock:
                if self._pipeline is None:
                    self._pipeline = self._source()
        return self._pipeline

    def _write_examples(self, count: int) -> list[list[str]]:
        """Toy scenes with an instruction each (rendered at the toy model's resolution, 64 px)."""
        from ip2p.toy import random_edit, random_scene, render

        folder = Path(self._scratch.name) / "examples"
        folder.mkdir()
        items = []
        for i in range(count):
            rng = random.Random(i)
            scene = random_scene(rng)
            path = folder / f"toy-scene-{i}.png"
            render(scene, size=64).save(path)
            items.append([str(path), random_edit(scene, rng).instruction])
        return items

    # -- one edit, shared by the UI and the API --------------------------------------------------------------
    def run_edit(
        self,
        path: str | None,
        instruction: str | None,
        *,
        steps: Any,
        text_guidance: Any,
        image_guidance: Any,
        seed: int | None,
        scheduler: str | None,
        resolution: Any,
        progress: Callable[[int, int], None] | None = None,
        mask: Any = None,
        auto_mask: bool = False,
        chain_mode: str = "plain",
    ) -> tuple[Image.Image, EditResult]:
        """Load the upload (with the pixel limit), edit it; every failure is a ``gr.Error`` with a clean message.

        A bad upload (not an image, a format this installation cannot read, truncated or corrupt, too many pixels
        or too extreme an aspect ratio) and a bad setting are refused with one line that names the problem; only
        a fault of the server itself is "The edit failed on the server". ``mask`` (a mask file's path or a 0/1
        array) confines the edit, as ``auto_mask`` does with the editor's own estimate (``ip2p.masking``)."""
        if not path:
            raise gr.Error("Upload an image (or pick an example) first.")
        if chain_mode not in CHAIN_MODES:
            raise gr.Error(f"Unknown chaining mode {shown(chain_mode)}; choose {', '.join(CHAIN_MODES)}.")
        if instruction is not None and not isinstance(instruction, str):
            raise gr.Error(f"The instruction must be text, got {shown(instruction)}.")
        image = load_upload(path, self.max_pixels)
        values = edit_values(
            steps=steps,
            text_guidance=text_guidance,
            image_guidance=image_guidance,
            scheduler=scheduler,
            resolution=resolution,
        )
        try:
            # the model's own settings under the controls' values
            config = self.pipeline.config_for(**values, auto_mask=bool(auto_mask))
            config.validate()
        except ValueError as exc:  # the message names the setting and its bad value
            raise gr.Error(web_message(exc, None)) from None
        check_edit_size(image, config, self.pipeline.size_multiple)

        def step(i: int, n: int, _latents) -> None:
            if client_gone():  # nobody waits for this edit: stop it and free the slot for the next request
                raise ClientGone
            if progress is not None:
                progress(i + 1, n)

        try:
            result = chain_turn(  # with chain_mode "plain": exactly the pipeline's edit
                self.pipeline,
                image,
                instruction or "",
                config,
                mode=chain_mode,
                seed=seed,
                callback=step,
                mask=mask,
            )
        except MaskError as exc:  # a mask upload that is not an image
            raise gr.Error(web_message(exc, mask if isinstance(mask, str) else None)) from None
        except ClientGone:
            log.info("edit stopped: its client disconnected")
            raise gr.Error("The edit was stopped: its client disconnected.") from None
        except ImageError as exc:  # e.g. a resolution below the model's size multiple
            raise gr.Error(web_message(exc, path)) from None
        except Exception:
            log.exception("edit failed")
            raise gr.Error("The edit failed on the server (the details are in the server's log).") from None
        return image, result

    def auto_scales(self, instruction: Any, text_guidance: Any, image_guidance: Any) -> tuple[Any, Any]:
        """The (text, image) scales the model's ``auto_guidance.json`` chooses for ``instruction`` (the given ones
        for an empty instruction, which edits nothing)."""
        if self.guidance is None:
            raise gr.Error("This model carries no auto_guidance.json: automatic guidance is not available.")
        if not isinstance(instruction, str) or not instruction.strip():
            return text_guidance, image_guidance
        return self.guidance.choose(self.pipeline, [instruction])[0]

    def _save(self, image: Image.Image, metadata: dict[str, str], stem: str) -> str:
        self._prune()
        handle = tempfile.NamedTemporaryFile(dir=self.outputs, prefix=f"{stem}-", suffix=".png", delete=False)
        handle.close()
        return str(save_png(image, handle.name, metadata))

    def _prune(self) -> None:
        cutoff = time.time() - KEEP_OUTPUTS_S
        for old in self.outputs.glob("*.png"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass

    # -- UI handlers ---------------------------------------------------------------------------------------
    # The session is a dict {"chain": [step, ...], "result": step | None}; a step is {"path", "caption",
    # "details"} (details: the line under the images, the seed and settings that made the step).
    # chain[0] is the uploaded image, chain[k] an edit of chain[k-1]; "result" is the latest edit of chain[-1].
    def edit(
        self,
        before: Any,
        instruction: str,
        steps: float,
        seed_mode: str,
        seed: float | None,
        guidance_mode: str,
        text_guidance: float,
        image_guidance: float,
        scheduler: str,
        resolution: float,
        session: dict | None,
        brush: Any = None,
        auto_mask: bool = False,
        chain_mode: str = "plain",
        progress=gr.Progress(),  # noqa: B008 (gradio's way of asking for a progress bar)
    ):
        path = upload_path(before)
        instruction = instruction or ""
        seed = parse_seed(seed) if seed_mode == FIXED_SEED else None
        seed = draw_seed(self._rng) if seed is None else seed
        if guidance_mode == RANDOM_GUIDANCE:
            text_guidance, image_guidance = randomized_guidance(self._rng)
        if guidance_mode == AUTO_GUIDANCE:
            text_guidance, image_guidance = self.auto_scales(instruction, text_guidance, image_guidance)
        progress(0, desc="editing")
        image, result = self.run_edit(
            path,
            instruction,
            steps=steps,
            text_guidance=text_guidance,
            image_guidance=image_guidance,
            seed=seed,
            scheduler=scheduler,
            resolution=resolution,
            progress=lambda i, n: progress((i, n), desc="editing", unit="steps"),
            mask=brush_mask(brush),  # the painted strokes, or None (then the automatic mask, if asked for)
            auto_mask=auto_mask,
            chain_mode=chain_mode,
        )
        chain = list((session or {}).get("chain") or [])
        if not chain or not _same_pixels(image, chain[-1]["path"]):  # a new upload starts a new chain
            chain = [{"path": self._save(image, {"ip2p:role": "input"}, "step00-input"), "caption": "input"}]
        k = len(chain)
        metadata = {**result.metadata(0), "ip2p:chain_step": str(k)}
        out = self._save(result.images[0], metadata, f"step{k:02d}")
        details = _details(result)
        step = {"path": out, "caption": f"{k}. {instruction} (seed {result.seed})", "details": details}
        if result.mask is not None:  # shown beside the result (mask_preview)
            step["mask"] = self._save(result.mask, {"ip2p:role": "mask"}, f"step{k:02d}-mask")
        session = {"chain": chain, "result": step}
        config = result.config
        return (
            out,
            details,
            result.seed,
            config.text_guidance_scale,
            config.image_guidance_scale,
            session,
            *self._history(session),
        )

    @staticmethod
    def mask_preview(session: dict | None) -> str | None:
        """The mask the shown result was edited with (white: edited), or nothing for an edit without one."""
        return ((session or {}).get("result") or {}).get("mask")

    @staticmethod
    def mask_canvas(before: str | None) -> dict | None:
        """The mask brush's canvas: the image to edit, no strokes (a new upload clears the old strokes)."""
        return {"background": before, "layers": [], "composite": before} if before else None

    def continue_from_result(self, session: dict | None):
        """The result becomes the next link of the chain and the input of the next edit."""
        session = session or {}
        if not session.get("result"):
            gr.Info("Make an edit first; then its result can be edited further.")
            return gr.update(), gr.update(), gr.update(), session, *self._history(session)
        chain = [*session["chain"], session["result"]]
        session = {"chain": chain, "result": None}
        return chain[-1]["path"], None, "", session, *self._history(session)

    def undo(self, session: dict | None):
        """One step back: the last link leaves the chain and is shown as the result again, with its details (the
        seed, scales and instruction that made it), not those of the edit undone."""
        session = session or {}
        chain = list(session.get("chain") or [])
        if len(chain) > 1:
            result = chain.pop()
            session = {"chain": chain, "result": result}
            details = result.get("details", "")
            return chain[-1]["path"], result["path"], details, session, *self._history(session)
        if session.get("result"):
            session = {"chain": chain, "result": None}
            return gr.update(), None, "", session, *self._history(session)
        gr.Info("Nothing to undo.")
        return gr.update(), gr.update(), gr.update(), session, *self._history(session)

    def reset(self, session: dict | None):
        """Every setting back to its default (steps included), and the result cleared, as the original's reset."""
        d = self.defaults
        session = {"chain": list((session or {}).get("chain") or []), "result": None}
        return (
            d.steps,
            RANDOM_SEED if d.random_seed else FIXED_SEED,
            d.seed,
            RANDOM_GUIDANCE if d.random_guidance else FIXED_GUIDANCE,
            d.text_guidance,
            d.image_guidance,
            d.scheduler,
            d.resolution,
            None,
            "",
            session,
            *self._history(session),
        )

    @staticmethod
    def _history(session: dict) -> tuple[list[tuple[str, str]], list[str]]:
        steps = list(session.get("chain") or [])
        if session.get("result"):
            steps.append({**session["result"], "caption": session["result"]["caption"] + " - current result"})
        gallery = [(s["path"], s["caption"]) for s in steps]
        return gallery, [s["path"] for s in steps]

    # -- API handler ---------------------------------------------------------------------------------------
    def api_edit(
        self,
        image: Any,
        instruction: str,
        steps: float,
        text_guidance: float,
        image_guidance: float,
        seed: float | None,
        scheduler: str,
        resolution: float,
        mask: Any = None,
        auto_mask: bool = False,
        chain_mode: str = "plain",
        guidance: str = "fixed",
    ) -> tuple[str, dict[str, str]]:
        """Edit ``image`` by ``instruction``; returns the edited PNG (with metadata) and the metadata as JSON.

        A negative or empty ``seed`` draws one at random; the one used is in the metadata (``ip2p:seed``). A
        ``mask`` image (white: the edit may act) keeps the rest of the input exactly; ``auto_mask`` estimates
        one; the metadata's ``ip2p:mask`` says which was used. ``chain_mode`` ``paste`` keeps every pixel the
        edit did not change beyond the threshold (``ip2p.chain``); ``guidance`` ``auto`` lets the model's
        ``auto_guidance.json`` choose both scales (the metadata records them)."""
        if guidance not in GUIDANCE_MODES:
            raise gr.Error(f"guidance must be one of {', '.join(GUIDANCE_MODES)}, got {shown(guidance)}.")
        if guidance == "auto":
            text_guidance, image_guidance = self.auto_scales(instruction, text_guidance, image_guidance)
        seed = parse_seed(seed)
        _, result = self.run_edit(
            upload_path(image),
            instruction,
            steps=steps,
            text_guidance=text_guidance,
            image_guidance=image_guidance,
            seed=draw_seed(self._rng) if seed is None else seed,
            scheduler=scheduler,
            resolution=resolution,
            mask=upload_path(mask),
            auto_mask=bool(auto_mask),
            chain_mode=chain_mode,
        )
        metadata = result.metadata(0)
        return self._save(result.images[0], metadata, "api"), metadata

    # -- layout --------------------------------------------------------------------------------------------
    def blocks(self) -> gr.Blocks:
        """The ``gr.Blocks`` of the app (call ``.queue(...)`` and ``.launch(...)`` on it, or use ``serve``)."""
        d = self.defaults
        schedulers = [MODEL_SCHEDULER, *sorted(SCHEDULERS)]
        with CheckedBlocks(
            title="InstructPix2Pix", analytics_enabled=False, delete_cache=(3600, 86400)
        ) as demo:
            gr.Markdown("# InstructPix2Pix\nEdit an image by a written instruction.")
            if self.note:
                gr.Markdown(f"**{self.note}**", elem_id="note")
            with gr.Row(equal_height=True):
                before = gr.Image(
                    label="Before",
                    type="filepath",
                    image_mode=None,
                    format="png",
                    sources=["upload", "clipboard"],
                    height=320,
                    elem_id="before",
                )
                after = gr.Image(
                    label="After",
                    type="filepath",
                    format="png",
                    interactive=False,
                    height=320,
                    buttons=["download", "fullscreen"],
                    elem_id="after",
                )
            details = gr.Markdown("", elem_id="details")
            with gr.Accordion("Mask: edit only part of the image", open=False, elem_id="mask-panel"):
                with gr.Row(equal_height=True):
                    brush = gr.ImageMask(
                        label="Paint over what the edit may change (the rest is kept exactly)",
                        type="filepath",
                        format="png",
                        sources=[],
                        height=320,
                        elem_id="mask-brush",
                    )
                    mask_used = gr.Image(
                        label="Mask used (white: edited)",
                        type="filepath",
                        format="png",
                        interactive=False,
                        height=320,
                        elem_id="mask-used",
                    )
                auto_mask = gr.Checkbox(
                    False,
                    label="Automatic mask where nothing is painted: the editor finds where the instruction acts",
                    elem_id="auto-mask",
                )
            with gr.Row():
                instruction = gr.Textbox(
                    label="Instruction",
                    placeholder="e.g. make the circle green",
                    lines=1,
                    max_lines=3,
                    scale=5,
                    elem_id="instruction",
                )
                edit_btn = gr.Button("Edit", variant="primary", scale=1, elem_id="edit-btn")
            with gr.Row():
                continue_btn = gr.Button("Edit the result next", elem_id="continue-btn")
                undo_btn = gr.Button("Undo", elem_id="undo-btn")
                reset_btn = gr.Button("Reset", elem_id="reset-btn")
            chain_mode = gr.Radio(
                CHAIN_CHOICES, value="plain", label="What an edit keeps of its input", elem_id="chain-mode"
            )
            with gr.Accordion("Settings", open=True):
                with gr.Row():
                    steps = gr.Slider(
                        1, max(200, d.steps), value=d.steps, step=1, label="Steps", elem_id="steps"
                    )
                    resolution = gr.Slider(
                        self.size_multiple,
                        max(1024, d.resolution),
                        value=d.resolution,
                        step=self.size_multiple,
                        label="Resolution (long side)",
                        elem_id="resolution",
                    )
                    scheduler = gr.Dropdown(
                        schedulers, value=d.scheduler, label="Scheduler", elem_id="scheduler"
                    )
                with gr.Row():
                    seed_mode = gr.Radio(
                        [RANDOM_SEED, FIXED_SEED],
                        value=RANDOM_SEED if d.random_seed else FIXED_SEED,
                        show_label=False,
                        elem_id="seed-mode",
                    )
                    seed = gr.Number(value=d.seed, precision=0, label="Seed", elem_id="seed")
                with gr.Row():
                    guidance_mode = gr.Radio(
                        [FIXED_GUIDANCE, RANDOM_GUIDANCE, *([AUTO_GUIDANCE] if self.guidance else [])],
                        value=RANDOM_GUIDANCE if d.random_guidance else FIXED_GUIDANCE,
                        show_label=False,
                        elem_id="guidance-mode",
                    )
                    text_guidance = gr.Slider(
                        1.0,
                        15.0,
                        value=d.text_guidance,
                        step=0.05,
                        label="Text guidance",
                        elem_id="text-guidance",
                    )
                    image_guidance = gr.Slider(
                        0.5,
                        5.0,
                        value=d.image_guidance,
                        step=0.05,
                        label="Image guidance",
                        elem_id="image-guidance",
                    )
            gr.Markdown(HELP, elem_id="help")
            gr.Examples(
                self.example_items,
                inputs=[before, instruction],
                label="Examples (toy-world scenes)",
                elem_id="examples",
                api_visibility="private",
            )
            with gr.Accordion("History", open=True):
                history = gr.Gallery(
                    label="The chain of edits",
                    columns=8,
                    fit_columns=False,
                    height=180,
                    format="png",
                    object_fit="contain",
                    elem_id="history",
                )
                downloads = gr.File(
                    label="Downloads: every step as a PNG with its metadata",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
            session = gr.State({"chain": [], "result": None})

            # The HTTP API: its own inputs so that its parameters are named and documented (see README).
            with gr.Column(visible=False):
                api_image = gr.Image(label="image", type="filepath", image_mode=None)
                api_instruction = gr.Textbox(label="instruction")
                api_steps = gr.Number(value=d.steps, precision=0, label="steps")
                api_text = gr.Number(value=d.text_guidance, label="text_guidance")
                api_image_guidance = gr.Number(value=d.image_guidance, label="image_guidance")
                api_seed = gr.Number(value=-1, precision=0, label="seed (negative: random)")
                api_scheduler = gr.Dropdown(schedulers, value=d.scheduler, label="scheduler")
                api_resolution = gr.Number(value=d.resolution, precision=0, label="resolution")
                api_mask = gr.Image(label="mask (optional; white: edited)", type="filepath", image_mode=None)
                api_auto_mask = gr.Checkbox(False, label="auto_mask")
                api_chain_mode = gr.Dropdown(list(CHAIN_MODES), value="plain", label="chain_mode")
                api_guidance = gr.Dropdown(list(GUIDANCE_MODES), value="fixed", label="guidance")
                api_result = gr.Image(label="edited", type="filepath", format="png")
                api_metadata = gr.JSON(label="metadata")
                api_trigger = gr.Button(visible=False)

            # preprocess=False: the upload reaches ip2p.imaging.load_image as it is, so that a bad file gets
            # our one-line message instead of a generic "Error" from the component's own decoding.
            edit_event = dict(
                fn=self.edit,
                inputs=[
                    before,
                    instruction,
                    steps,
                    seed_mode,
                    seed,
                    guidance_mode,
                    text_guidance,
                    image_guidance,
                    scheduler,
                    resolution,
                    session,
                    brush,
                    auto_mask,
                    chain_mode,
                ],
                outputs=[after, details, seed, text_guidance, image_guidance, session, history, downloads],
                preprocess=False,
                show_progress_on=[after],
                concurrency_id="edit",
                api_visibility="private",
            )
            preview = dict(fn=self.mask_preview, inputs=[session], outputs=[mask_used], queue=False)
            edit_btn.click(**edit_event, api_name="ui_edit").then(**preview, api_visibility="private")
            submitted = instruction.submit(**edit_event, api_name="ui_edit_submit")
            submitted.then(**preview, api_visibility="private")
            before.change(
                self.mask_canvas,
                inputs=[before],
                outputs=[brush],
                queue=False,
                api_name="ui_mask_canvas",
                api_visibility="private",
            )
            continue_btn.click(
                self.continue_from_result,
                inputs=[session],
                outputs=[before, after, details, session, history, downloads],
                queue=False,
                api_name="ui_continue",
                api_visibility="private",
            )
            undo_btn.click(
                self.undo,
                inputs=[session],
                outputs=[before, after, details, session, history, downloads],
                queue=False,
                api_name="ui_undo",
                api_visibility="private",
            )
            reset_btn.click(
                self.reset,
                inputs=[session],
                outputs=[
                    steps,
                    seed_mode,
                    seed,
                    guidance_mode,
                    text_guidance,
                    image_guidance,
                    scheduler,
                    resolution,
                    after,
                    details,
                    session,
                    history,
                    downloads,
                ],
                queue=False,
                api_name="ui_reset",
                api_visibility="private",
            )
            api_trigger.click(
                self.api_edit,
                inputs=[
                    api_image,
                    api_instruction,
                    api_steps,
                    api_text,
                    api_image_guidance,
                    api_seed,
                    api_scheduler,
                    api_resolution,
                    api_mask,
                    api_auto_mask,
                    api_chain_mode,
                    api_guidance,
                ],
                outputs=[api_result, api_metadata],
                preprocess=False,
                concurrency_id="edit",
                api_name="edit",
                api_description="Edit an image by a written instruction; returns the edited PNG and its metadata.",
            )
        demo.ip2p_app = self  # keeps the scratch folder (and the pipeline) alive as long as the Blocks
        return demo

    @property
    def css(self) -> str:
        """Images fill their frames; crisp pixels for the toy world's 64 px images (not blurred when scaled up)."""
        name = self._pipeline.components.name if self._pipeline else None
        return CSS + ("\n" + CSS_PIXELATED if name in (TOY_MODEL, TINY_MODEL) else "")


def _details(result: EditResult) -> str:
    """The line under the images: what made the result shown (instruction, seed, scales, steps, sampler, size)."""
    config = result.config
    image = result.images[0]
    details = (
        f"“{result.instruction}” · seed {result.seed} · text guidance {config.text_guidance_scale} · image "
        f"guidance {config.image_guidance_scale} · {config.num_inference_steps} steps · "
        f"{result.info.get('scheduler', '')} · {image.width}x{image.height}"
    )
    return details + (f" · {result.info['note']}" if "note" in result.info else "")


def _same_pixels(image: Image.Image, path: str) -> bool:
    try:
        with Image.open(path) as other:
            return other.size == image.size and np.array_equal(
                np.asarray(other.convert("RGB")), np.asarray(image)
            )
    except OSError:
        return False


# -- building and serving ------------------------------------------------------------------------------------
def build_app(
    pipeline: PipelineSource,
    defaults: AppDefaults | None = None,
    *,
    note: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    guidance: Any = None,
) -> gr.Blocks:
    """The web app's ``gr.Blocks`` for ``pipeline`` (an ``EditPipeline``, or a factory called on first edit);
    ``guidance``: a :class:`ip2p.auto_guidance.GuidancePredictor` offered as "Automatic guidance".

    Example:
        >>> demo = build_app(EditPipeline.from_pretrained("toy"))
        >>> demo.queue(default_concurrency_limit=1, max_size=16).launch(server_name="127.0.0.1")
    """
    return EditorApp(pipeline, defaults, note=note, max_pixels=max_pixels, guidance=guidance).blocks()


def launch(demo: gr.Blocks, config: ServeConfig, *, block: bool = True, quiet: bool = False) -> str:
    """Queue and launch ``demo`` with ``config``'s address and limits; returns the local URL.

    ``block=False`` returns once the server is up (for tests); stop it with ``demo.close()``."""
    config.validate()
    demo.queue(max_size=config.max_queue, default_concurrency_limit=config.concurrency)
    app: EditorApp | None = getattr(demo, "ip2p_app", None)
    _, url, share_url = demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=config.share,
        max_file_size=int(config.max_upload_mb * 1024 * 1024),
        show_error=False,  # unexpected errors reach the user as "Error", never as a traceback
        prevent_thread_lock=True,
        quiet=True,
        footer_links=["api", "settings"],
        theme=gr.themes.Default(
            # System fonts: the default theme fetches web fonts, which an offline machine cannot.
            font=["ui-sans-serif", "system-ui", "sans-serif"],
            font_mono=["ui-monospace", "monospace"],
        ),
        css=app.css if app else CSS,
    )
    if not quiet:
        if app and app.note:
            print(app.note)
        print(f"ip2p: serving the editor at {url}" + (f" and {share_url}" if share_url else ""))
        print(
            f"ip2p: HTTP API: POST {url.rstrip('/')}/gradio_api/call/v2/edit (see the README); Ctrl+C stops"
        )
    if block:
        demo.block_thread()
    return url


def serve(config: ServeConfig, *, block: bool = True) -> gr.Blocks:
    """Load the model, build the app and serve it (what ``ip2p serve`` runs)."""
    config.validate()
    name, note = resolve_demo_model(config.model)
    pipe = EditPipeline.from_pretrained(
        name, device=config.device, dtype=config.dtype, config=config.config, options=config
    )
    from ip2p.auto_guidance import GuidanceError, GuidancePredictor

    try:  # automatic guidance is offered where the model carries its predictor
        guidance = GuidancePredictor.from_pretrained(name)
    except GuidanceError:
        guidance = None
    demo = build_app(pipe, note=note, max_pixels=config.max_pixels, guidance=guidance)
    launch(demo, config, block=block)
    return demo
