"""The web app's requests, checked: what a client sends (an upload, an instruction, the settings) is read or refused
with one line that names the problem (never a server path or a traceback), gradio's own refusals of malformed
inputs get such a line too, and an edit learns when its client has left.

``ip2p.app`` re-exports what its tests and callers import from here (``web_message``, ``MODEL_SCHEDULER``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pydantic
from gradio.exceptions import InvalidPathError
from PIL import Image

from ip2p.edit_config import EditConfig
from ip2p.imaging import ImageError, load_image, original_edit_size
from ip2p.sampling import SCHEDULERS

MODEL_SCHEDULER = "model default"  # the model's own scheduler (Euler ancestral for the released model)
# An edit may have at most this many times the pixels of a square at its resolution (or 16 squares of the size
# multiple, where that is more, so that a small resolution keeps moderately long images). The original's "fit"
# policy keeps the short side at least one size multiple (64 px for SD), so a 1x40000 image would become a
# 64x2560000 edit: minutes and gigabytes for an input far below the pixel limit.
MAX_EDIT_AREA = 2


def web_message(exc: Exception, path: str | None) -> str:
    """An error message fit for a browser: the server's file path replaced, the command-line hint dropped."""
    text = str(exc)
    if path:
        text = text.replace(path, "the uploaded image").replace(str(Path(path).parent), "the upload folder")
    text = re.sub(r"\s*\(raise it with --max-pixels[^)]*\)", "", text)
    return text[:1].upper() + text[1:]


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that echo what a client sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CheckedBlocks(gr.Blocks):
    """``gr.Blocks`` whose refusals of malformed inputs carry a message.

    Gradio checks an event's inputs before our handler runs: a file path the server did not receive as an upload,
    or a value that is not a file at all where an image belongs. Its own exceptions for these reach the client
    as an error event with no message (``show_error=False`` hides every message that is not a ``gr.Error``, so
    that no server path or traceback leaks); here they become one line that says what to send instead."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except InvalidPathError:
            raise gr.Error(
                "The image must be a file uploaded to this server (POST it to /gradio_api/upload first and "
                "pass the path that returns); other server paths are not read."
            ) from None
        except pydantic.ValidationError as exc:
            raise gr.Error(
                f"The {exc.title.removesuffix('Data').lower() or 'input'} must be a file reference "
                '{"path": ..., "meta": {"_type": "gradio.FileData"}} of an uploaded file (see the README).'
            ) from None


def upload_path(value: Any) -> str | None:
    """The server-side path of an image input (a FileData dict as gradio sends it unprocessed, or a path)."""
    if isinstance(value, dict):
        return value.get("path")
    return str(value) if value else None


def parse_seed(value: Any) -> int | None:
    """A seed from a number box: None (draw one) when empty or negative; a clear error when not a whole number."""
    if value is None or value == "":
        return None
    try:
        seed = int(float(value))
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"The seed must be a whole number, got {shown(value)}.") from None
    if seed >= 2**32:
        raise gr.Error(f"The seed must be below 2**32, got {shown(seed)}.")
    return None if seed < 0 else seed


def load_upload(path: str, max_pixels: int) -> Image.Image:
    """The uploaded image at ``path`` (with the pixel limit); a bad upload (not an image, a format this
    installation cannot read, truncated or corrupt, too many pixels) is a ``gr.Error`` naming the problem."""
    try:  # the upload keeps the user's file name in gradio's cache: messages name it, never the folder
        return load_image(path, max_pixels=max_pixels, name=f"the uploaded image {Path(path).name!r}")
    except ImageError as exc:
        raise gr.Error(web_message(exc, path)) from None


def edit_values(
    *, steps: Any, text_guidance: Any, image_guidance: Any, scheduler: str | None, resolution: Any
) -> dict[str, Any]:
    """The controls' values as ``EditPipeline.config_for`` keywords; an unknown scheduler or a value that is not
    a number is a ``gr.Error`` (the ranges are ``EditConfig.validate``'s to check)."""
    if scheduler not in (None, "", MODEL_SCHEDULER) and scheduler not in SCHEDULERS:
        raise gr.Error(
            f"Unknown scheduler {shown(scheduler)}; choose one of {', '.join(sorted(SCHEDULERS))}."
        )
    try:
        return dict(
            num_inference_steps=int(steps),
            text_guidance_scale=float(text_guidance),
            image_guidance_scale=float(image_guidance),
            resolution=int(resolution),
            scheduler=None if scheduler in (None, "", MODEL_SCHEDULER) else scheduler,
        )
    except (TypeError, ValueError, OverflowError):
        raise gr.Error("Steps, guidance scales and resolution must be numbers.") from None


def check_edit_size(image: Image.Image, config: EditConfig, multiple: int) -> None:
    """Refuse an input whose aspect ratio would make the edit itself huge (see ``MAX_EDIT_AREA``); ``multiple``
    is the model's size multiple."""
    if config.resize_mode != "fit":  # pad and crop keep the long side at the resolution: always bounded
        return
    width, height = original_edit_size(*image.size, config.resolution, multiple)
    limit = max(MAX_EDIT_AREA * config.resolution**2, 16 * multiple**2)
    if width * height > limit:
        raise gr.Error(
            f"The uploaded image is {image.width}x{image.height}: too narrow to edit (at resolution "
            f"{config.resolution} it would be edited at {width}x{height}, above {limit} pixels); crop it "
            "closer to a square."
        )


class ClientGone(Exception):
    """Raised from an edit's step callback when the client that asked for the edit has disconnected."""


def client_gone() -> bool:
    """Whether the client of the gradio event this thread serves has disconnected.

    Gradio marks a running job not alive when its client's event stream closes, but cannot stop the thread
    that runs it: without this check an abandoned edit holds its concurrency slot to its last step. Outside
    a gradio event (a direct call, a test) it is False."""
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return False
    for job in list(queue.active_jobs):
        for event in job or ():
            if event._id == event_id:
                return not event.alive
    return False


def brush_mask(value: Any) -> np.ndarray | None:
    """The mask painted with the brush (an ``ImageMask``'s unprocessed value): 1 where any layer is painted, as a
    (H, W) array; None where nothing is painted (then the edit is not confined, or the automatic mask is)."""
    layers = [upload_path(layer) for layer in (value.get("layers") or [])] if isinstance(value, dict) else []
    painted: np.ndarray | None = None
    for path in filter(None, layers):
        try:
            with Image.open(path) as layer:
                alpha = np.asarray(layer.convert("RGBA").getchannel("A"))
        except (OSError, ValueError):
            raise gr.Error("The painted mask could not be read; paint it again.") from None
        if painted is not None and alpha.shape != painted.shape:
            alpha = np.asarray(Image.fromarray(alpha).resize(painted.shape[::-1], Image.Resampling.NEAREST))
        painted = alpha if painted is None else np.maximum(painted, alpha)
    if painted is None or painted.max() < 128:
        return None
    return (painted >= 128).astype(np.float32)
