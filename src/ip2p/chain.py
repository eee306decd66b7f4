"""Chained edits (multi-turn editing): each instruction edits the previous turn's result, in one of three modes.

Every turn encodes its input with the VAE and re-noises it, so a chain of plain edits slowly loses what no
instruction touched (drift: the autoencoder's round trip and the sampler's noise, once per turn). The modes:

- ``plain``: turn k's result is turn k+1's input, as calling the pipeline again on the result does;
- ``paste``: only the pixels the edit changed beyond ``threshold`` are taken from it, the rest are the previous
  turn's pixels exactly, as Emu Edit (Sheynin et al. 2024) does between the turns of a multi-turn edit: per
  pixel |edited - input| in [0, 1], max over the channels, above ``threshold``, the changed region dilated by
  ``dilate`` pixels (a square) so that anti-aliased edges come along;
- ``auto-mask``: each turn edits inside the automatic mask the editor estimates for its instruction (the edit
  setting ``auto_mask``, :mod:`ip2p.masking`); outside it the input is kept.

Turn k draws its noise from ``seed + k``, so a plain chain equals calling the pipeline on each result with those
seeds.

Example:
    >>> pipe = EditPipeline.from_pretrained("toy")
    >>> turns = edit_chain(pipe, image, ["make the circle green", "remove the square"], mode="paste", seed=0)
    >>> turns[-1].images[0].save("final.png")
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from ip2p.edit_config import EditConfig
    from ip2p.pipeline import EditPipeline, EditResult

from ip2p.edit_config import CHAIN_MODES, PASTE_THRESHOLD

PASTE_DILATE = 1  # pixels: the changed region grows by one pixel, taking anti-aliased edges with it


def check_chain_options(mode: str, threshold: float = PASTE_THRESHOLD, dilate: int = PASTE_DILATE) -> None:
    """One-line ValueErrors for an unknown mode, a threshold outside [0, 1] or a negative dilation."""
    if mode not in CHAIN_MODES:
        raise ValueError(f"unknown chain mode {mode!r}; choose one of {', '.join(CHAIN_MODES)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the paste threshold must lie in [0, 1], got {threshold}")
    if dilate < 0:
        raise ValueError(f"the paste dilation must be 0 or more pixels, got {dilate}")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool mask grown by ``radius`` pixels (a (2r+1) x (2r+1) square max filter)."""
    if radius <= 0:
        return mask
    h, w = mask.shape
    padded = np.pad(mask, radius)  # (H + 2r, W + 2r)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def changed_mask(
    before: Image.Image, after: Image.Image, threshold: float = PASTE_THRESHOLD, dilate: int = PASTE_DILATE
) -> np.ndarray:
    """(H, W) bool: where ``after`` differs from ``before`` by more than ``threshold`` (in [0, 1], the largest of
    the three channels' differences), dilated by ``dilate`` pixels. The images must have one size."""
    if before.size != after.size:
        raise ValueError(f"cannot compare images of sizes {before.size} and {after.size}")
    diff = np.abs(_pixels(after).astype(np.int16) - _pixels(before).astype(np.int16)).max(axis=-1)  # (H, W)
    return dilate_mask(diff > threshold * 255.0, dilate)


def paste_changed(
    before: Image.Image, after: Image.Image, threshold: float = PASTE_THRESHOLD, dilate: int = PASTE_DILATE
) -> tuple[Image.Image, np.ndarray]:
    """``after`` where it changed beyond ``threshold`` (see :func:`changed_mask`), ``before`` exactly elsewhere;
    returns the pasted image and the (H, W) bool mask of the pixels taken from ``after``.

    Example:
        >>> out, mask = paste_changed(previous, edited, threshold=0.15)
        >>> mask.mean()  # the share of pixels the edit changed
    """
    mask = changed_mask(before, after, threshold, dilate)
    pasted = np.where(mask[..., None], _pixels(after), _pixels(before))  # (H, W, 3)
    return Image.fromarray(pasted), mask


def supports_auto_mask() -> bool:
    """Whether edits take the automatic mask of :mod:`ip2p.masking` (the ``auto_mask`` edit setting)."""
    from ip2p.edit_config import EditConfig

    return "auto_mask" in {f.name for f in fields(EditConfig)}


def _check_auto_mask(mode: str) -> None:
    if mode == "auto-mask" and not supports_auto_mask():
        raise ValueError("the auto-mask chain mode needs the automatic masks of ip2p.masking (auto_mask)")


def chain_turn(
    pipe: EditPipeline,
    image: Image.Image | str,
    instruction: str,
    config: EditConfig | None = None,
    *,
    mode: str = "plain",
    seed: int | None = None,
    threshold: float = PASTE_THRESHOLD,
    dilate: int = PASTE_DILATE,
    callback: Callable | None = None,
    mask: Any = None,
    **overrides: Any,
) -> EditResult:
    """One turn of a chain: edit ``image`` by ``instruction`` in ``mode``; ``result.images`` are the turn's
    outputs (the next turn's input), ``result.info["chain_mode"]`` the mode and, for ``paste``,
    ``result.info["changed_fraction"]`` the share of pixels taken from the edit."""
    check_chain_options(mode, threshold, dilate)
    _check_auto_mask(mode)
    extra = {"auto_mask": True} if mode == "auto-mask" else {}
    if mask is not None:  # a user's mask (ip2p.masking): the edit acts inside it only
        extra["mask"] = mask
    result = pipe(image, instruction, config, seed=seed, callback=callback, **extra, **overrides)
    info = {**result.info, "chain_mode": mode}
    if mode != "paste" or not instruction.strip():
        return replace(result, info=info)
    images, fractions = [], []
    for edited in result.images:
        # the previous pixels at the result's size: the input as the model saw it, or as given (restore_size)
        before = result.input_image
        if before.size != edited.size:
            from ip2p.imaging import load_image

            before = load_image(image).resize(edited.size, Image.Resampling.LANCZOS)
        pasted, mask = paste_changed(before, edited, threshold, dilate)
        images.append(pasted)
        fractions.append(float(mask.mean()))
    info["changed_fraction"] = fractions[0] if len(fractions) == 1 else fractions
    return replace(result, images=images, info=info)


def edit_chain(
    pipe: EditPipeline,
    image: Image.Image | str,
    instructions: Sequence[str],
    config: EditConfig | None = None,
    *,
    mode: str = "plain",
    seed: int | None = None,
    threshold: float = PASTE_THRESHOLD,
    dilate: int = PASTE_DILATE,
    guidance: Any = None,
    callback: Callable | None = None,
    mask: Any = None,
    **overrides: Any,
) -> list[EditResult]:
    """Apply ``instructions`` in turn, each to the previous turn's result, in ``mode`` (``CHAIN_MODES``).

    Args:
        pipe: the editor.
        image: the first input (a PIL image or a path).
        instructions: one per turn.
        config, overrides: the edit's settings, as for ``pipe(...)``; ``num_images`` must be 1.
        mode: ``plain``, ``paste`` or ``auto-mask`` (see the module docstring).
        seed: turn k draws its noise from ``seed + k`` (a seed is drawn at random when None, and recorded).
        threshold, dilate: the ``paste`` mode's threshold (in [0, 1]) and dilation (pixels).
        guidance: a :class:`ip2p.auto_guidance.GuidancePredictor` choosing each turn's guidance scales
            (``--guidance auto``); None keeps those of ``config``.
        callback: ``callback(step, num_steps, latents)`` after every sampler step of every turn.
        mask: a user's mask (:mod:`ip2p.masking`), the same region for every turn.

    Returns:
        One ``EditResult`` per turn; ``[-1].images[0]`` is the final image.
    """
    if isinstance(instructions, str) or not instructions:
        raise ValueError("a chain needs a list of one or more instructions")
    check_chain_options(mode, threshold, dilate)
    _check_auto_mask(mode)
    if config is None:
        config = pipe.config_for(**overrides)
    elif overrides:
        from ip2p.edit_config import EditConfig

        config = EditConfig(**{**asdict(config), **overrides})
    if config.num_images != 1:
        raise ValueError(f"a chain edits one image a turn; num_images must be 1, got {config.num_images}")
    seed = random.randrange(2**32) if seed is None else int(seed)
    results: list[EditResult] = []
    current: Image.Image | str = image
    for k, instruction in enumerate(instructions):
        turn_config = config
        if guidance is not None and instruction.strip():
            turn_config = guidance.config_for(pipe, instruction, config)
        result = chain_turn(
            pipe,
            current,
            instruction,
            turn_config,
            mode=mode,
            seed=seed + k,
            threshold=threshold,
            dilate=dilate,
            callback=callback,
            mask=mask,
        )
        result.info["chain_turn"] = k + 1
        if turn_config is not config:  # the scales --guidance auto chose, and what they cost
            from ip2p.auto_guidance import guidance_info

            result.info["auto_guidance"] = guidance_info(turn_config, guidance)
        results.append(result)
        current = result.images[0]
    return results


@dataclass(frozen=True)
class ChainOptions:
    """How ``ip2p edit`` and the web app chain: the mode, the paste settings, and ``guidance`` (a
    :class:`ip2p.auto_guidance.GuidancePredictor` for ``--guidance auto``, or None for the given scales)."""

    mode: str = "plain"
    threshold: float = PASTE_THRESHOLD
    dilate: int = PASTE_DILATE
    guidance: Any = None

    def __post_init__(self) -> None:
        check_chain_options(self.mode, self.threshold, self.dilate)


def edit_turns(
    pipe: EditPipeline,
    image: Image.Image | str,
    instructions: Sequence[str],
    config: EditConfig,
    options: ChainOptions | None = None,
    *,
    seed: int | None = None,
    callback: Callable | None = None,
    mask: Any = None,
) -> list[EditResult]:
    """``instructions`` applied in turn under ``options``: one plain edit with the given scales is exactly
    ``pipe(image, instruction, config, seed=seed)`` (any ``num_images``); anything else is :func:`edit_chain`."""
    options = options or ChainOptions()
    if len(instructions) == 1 and options.mode == "plain" and options.guidance is None:
        extra = {} if mask is None else {"mask": mask}
        return [pipe(image, instructions[0], config, seed=seed, callback=callback, **extra)]
    return edit_chain(
        pipe,
        image,
        instructions,
        config,
        mode=options.mode,
        seed=seed,
        threshold=options.threshold,
        dilate=options.dilate,
        guidance=options.guidance,
        callback=callback,
        mask=mask,
    )


def turn_path(target, turn: int):
    """Where a chain's turn ``turn`` (before the last) is written: ``out.png`` -> ``out_turn1.png``."""
    from pathlib import Path

    target = Path(target)
    target = target if target.suffix else target.with_suffix(".png")
    return target.with_name(f"{target.stem}_turn{turn}{target.suffix}")


def chain_metadata(result: EditResult, turn: int, index: int = 0) -> dict[str, str]:
    """The PNG text chunks of turn ``turn``'s image ``index``: the edit's own, its chain mode and turn."""
    return {
        **result.metadata(index),
        "ip2p:chain_mode": str(result.info.get("chain_mode", "plain")),
        "ip2p:chain_turn": str(turn),
    }


def chain_batch_turn(
    pipe: EditPipeline,
    images: list[Image.Image],
    instructions: list[str],
    seeds: list[int],
    config: EditConfig,
    *,
    mode: str = "plain",
    threshold: float = PASTE_THRESHOLD,
    dilate: int = PASTE_DILATE,
    **overrides: Any,
) -> list[Image.Image]:
    """One turn of several chains at once (``EditPipeline.edit_batch``): image i by instruction i from seed i,
    in ``mode``; one output each, at the inputs' size (they must prepare to one size)."""
    check_chain_options(mode, threshold, dilate)
    _check_auto_mask(mode)
    if mode == "auto-mask":
        overrides = {**overrides, "auto_mask": True}
    edited = pipe.edit_batch(images, instructions, seeds, config, **overrides)
    if mode != "paste":
        return edited
    out = []
    for before, after in zip(images, edited, strict=True):
        out.append(paste_changed(before.convert("RGB").resize(after.size), after, threshold, dilate)[0])
    return out
