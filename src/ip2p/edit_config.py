"""The settings of an edit (``EditConfig``) and of an ``ip2p edit`` job (``EditJob``), without torch.

Defaults are the paper's (the original ``edit_cli.py``). The command line builds its flags from these dataclasses
(:mod:`ip2p.flags`), so ``ip2p edit --help`` needs no heavy import; ``ip2p.pipeline`` re-exports ``EditConfig``.

Example::

    config = EditConfig(num_inference_steps=50, text_guidance_scale=7.5, image_guidance_scale=1.2)
    config.validate()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ip2p.flags import option

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
TINY_MODEL = "tiny"  # the tiny random model of ip2p.tiny (its name in ip2p.registry.MODELS)
# Decompression-bomb guard: inputs with more pixels are refused before decoding.
DEFAULT_MAX_PIXELS = 40_000_000
# The names of ip2p.sampling.SCHEDULERS (kept equal by a test): the samplers a user can pick by name.
SCHEDULER_NAMES = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_ancestral", "heun", "unipc")
RESIZE_MODES = ("fit", "pad", "crop")
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")
ResizeMode = Literal["fit", "pad", "crop"]


@dataclass
class EditConfig:
    """Settings of one edit. Defaults are the paper's (original ``edit_cli.py``)."""

    num_inference_steps: int = option("sampler steps", default=100, flag="--steps")
    text_guidance_scale: float = option(  # s_T: follow the instruction
        "text guidance scale s_T: higher follows the instruction more",
        default=7.5,
        flag="--text-guidance",
        aliases=("--cfg-text",),
    )
    image_guidance_scale: float = option(  # s_I: stay close to the input image
        "image guidance scale s_I: higher stays closer to the input",
        default=1.5,
        flag="--image-guidance",
        aliases=("--cfg-image",),
    )
    scheduler: str | None = option(  # None keeps the model's own (Euler ancestral for the released model)
        "sampler (the released model's own is euler_ancestral)",
        default=None,
        choices=SCHEDULER_NAMES,
    )
    num_images: int = option("edits per input, from consecutive noise draws", default=1)
    negative_prompt: str | None = option(  # replaces "" as the null text
        "text to steer away from (replaces the empty null text)", default=None
    )
    resolution: int = option("long side of the image the model edits", default=512)
    resize_mode: ResizeMode = option(
        "fit: the original's policy (sides to multiples of 64, centre fit); pad/crop: keep the exact aspect "
        "ratio, padding or cropping to multiples of 8",
        default="fit",
        choices=RESIZE_MODES,
    )
    restore_size: bool = option("resize the result back to the input's size", default=False)
    eta: float = option("DDIM's eta (0: deterministic)", default=0.0, cli=False)
    # phi of Lin et al. 2024 (sec. 3.4): rescale the guided prediction towards the std of the fully conditioned
    # one, which curbs the over-saturation of strong guidance on zero-terminal-SNR models; 0 = off (the paper's)
    guidance_rescale: float = option(
        "rescale the guided prediction towards the conditional one's std, 0-1 (Lin et al. 2024; for "
        "zero-terminal-SNR models such as the toy one; 0: off)",
        default=0.0,
    )

    def validate(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.num_inference_steps}")
        if self.num_images < 1:
            raise ValueError(f"the number of images must be at least 1, got {self.num_images}")
        if self.resolution < 8:
            raise ValueError(f"resolution must be at least 8, got {self.resolution}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance rescale must lie in [0, 1], got {self.guidance_rescale}")
        for name in ("text_guidance_scale", "image_guidance_scale"):
            if not (-100.0 <= getattr(self, name) <= 100.0):
                raise ValueError(f"{name} = {getattr(self, name)} is outside [-100, 100]")
        if self.scheduler is not None and self.scheduler not in SCHEDULER_NAMES:
            raise ValueError(
                f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"unknown resize mode {self.resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}"
            )


@dataclass
class ModelChoice:
    """Which model to load and where to run it (shared by ``ip2p edit``, ``serve`` and ``demo``)."""

    model: str = option(
        "editing model: a diffusers folder, a .safetensors/.ckpt file in the original format, a hub id, 'toy' "
        "(the bundled toy-world editor) or 'tiny' (a tiny random model)",
        default=DEFAULT_MODEL,
    )
    config: str | None = option(
        "for a single-file checkpoint: a diffusers folder (or hub id) holding the component configs",
        default=None,
    )
    device: str = option("cpu, cuda, cuda:1, mps or auto", default="auto")
    dtype: str = option(
        "weights and compute precision; auto = fp16 on GPU, fp32 on CPU", default="auto", choices=DTYPE_NAMES
    )


@dataclass
class EditJob(ModelChoice):
    """One ``ip2p edit`` run: what to edit, where the results go, and the run's own settings.

    ``input`` is an image, a folder of images (all edited by ``instruction``) or a ``.jsonl`` file of
    ``{"image", "instruction"[, "output"]}`` lines (see :mod:`ip2p.batch`).
    """

    input: str = option(
        "an image file, a folder of images, or a .jsonl file", default="", positional=True, required=True
    )
    instruction: str | None = option(
        "the edit, e.g. 'make the circle green' (not needed for .jsonl input)", default=None, positional=True
    )
    output: str = option(
        "output PNG for one image; an output folder for a folder or .jsonl input",
        default="",
        aliases=("-o",),
        required=True,
    )
    seed: int | None = option("random seed (default: drawn at random and recorded)", default=None)
    max_pixels: int = option(
        "refuse inputs with more pixels than this (decompression-bomb guard)", default=DEFAULT_MAX_PIXELS
    )
    overwrite: bool = option("batch mode: redo items whose output already exists", default=False)
