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
# The largest edit resolution accepted: SD's latents at 4096 px are 512x512, already hours an edit on most GPUs.
MAX_RESOLUTION = 4096
# Sampler steps at most: the training schedule's 1000 timesteps (diffusers refuses more).
MAX_STEPS = 1000
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64
# The names of ip2p.sampling.SCHEDULERS (kept equal by a test): the samplers a user can pick by name.
SCHEDULER_NAMES = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_ancestral", "heun", "unipc")
RESIZE_MODES = ("fit", "pad", "crop")
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")
# Chained edits (ip2p.chain): how a turn's result becomes the next turn's input.
CHAIN_MODES = ("plain", "paste", "auto-mask")
# paste: |edited - input| above this (in [0, 1], max over RGB) counts as changed: above the editor's round-trip error
# on what it keeps (the toy VAE's 32 dB PSNR is an RMS error of 0.025), below a toy edit's change (each shape colour
# lies at least 115/255 from each background in RGB distance: at least 0.26 in one channel)
PASTE_THRESHOLD = 0.15
GUIDANCE_MODES = ("fixed", "auto")  # auto: ip2p.auto_guidance chooses the scales per instruction
ResizeMode = Literal["fit", "pad", "crop"]


@dataclass
class EditConfig:
    """Settings of one edit. Defaults are the paper's (original ``edit_cli.py``)."""

    num_inference_steps: int = option(f"sampler steps, 1 to {MAX_STEPS}", default=100, flag="--steps")
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
    resolution: int = option(
        f"long side of the image the model edits: a multiple of 8, at most {MAX_RESOLUTION}", default=512
    )
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
    # Region-constrained editing (ip2p.masking): a user's mask is a per-call argument (--mask FILE), these are
    # the settings of the automatic one (DiffEdit, Couairon et al. 2023) and of the paste-back (Avrahami et al.).
    auto_mask: bool = option(
        "estimate where the instruction acts from the editor itself (DiffEdit: where its predictions with and "
        "without the instruction differ) and edit only there; costs 8 UNet evaluations an input",
        default=False,
    )
    mask_threshold: float = option(
        "the automatic mask's threshold on the normalised difference, 0-1: higher, a smaller mask",
        default=0.5,
    )
    mask_feather: int | None = option(
        "pixels over which the edit fades into the input inside the mask's edge (0: a hard edge; default: the "
        "image's long side / 64)",
        default=None,
    )

    def validate(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.num_inference_steps}")
        if self.num_inference_steps > MAX_STEPS:
            raise ValueError(
                f"steps must be at most {MAX_STEPS} (the training schedule's timesteps), "
                f"got {self.num_inference_steps}"
            )
        if self.num_images < 1:
            raise ValueError(f"the number of images must be at least 1, got {self.num_images}")
        if not 8 <= self.resolution <= MAX_RESOLUTION or self.resolution % 8:
            raise ValueError(
                f"resolution must be a multiple of 8 between 8 and {MAX_RESOLUTION}, got {self.resolution}"
            )
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
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise ValueError(f"the mask threshold must lie in [0, 1], got {self.mask_threshold}")
        if self.mask_feather is not None and not 0 <= self.mask_feather <= 256:
            raise ValueError(f"the mask feather must be 0 to 256 pixels, got {self.mask_feather}")


CPU_OFFLOAD_MODES = ("model", "sequential")


def parse_lora_spec(text: str) -> tuple[str, float]:
    """``PATH[:SCALE]`` -> (path, scale): split on the last ``:`` only where a number follows it, so that
    ``C:\\loras\\a.safetensors`` and ``a:b.safetensors`` stay whole paths.

    Example:
        >>> parse_lora_spec("my-lora.safetensors:0.8"), parse_lora_spec("C:\\l.safetensors")
        (('my-lora.safetensors', 0.8), ('C:\\l.safetensors', 1.0))
    """
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            if scale != scale or abs(scale) == float("inf"):
                raise ValueError(f"--lora {text!r}: the scale must be a finite number")
            return path, scale
    if not text:
        raise ValueError("--lora needs a path (PATH or PATH:SCALE)")
    return text, 1.0


def parse_attention_slicing(text: str) -> str:
    """``auto``, ``max`` or a positive whole number (the attention heads computed at once)."""
    if text in ("auto", "max") or (text.isdigit() and text.isascii() and int(text) > 0):
        return text
    raise ValueError(f"--attention-slicing {text!r}: give auto, max or a positive whole number")


@dataclass
class RuntimeOptions:
    """LoRA adapters, memory and speed options of a loaded editor (``ip2p edit``, ``serve`` and ``evaluate``).

    The edits are the same with and without the memory options (up to float rounding); they trade speed for
    GPU memory. ``low_memory`` turns on model offload, VAE slicing and tiling and attention slicing together.
    """

    lora: list[str] = option(
        "a LoRA adapter in the diffusers/PEFT format (a .safetensors file, or a folder holding one), with its "
        "scale after the last ':' (default 1); repeat the flag for several",
        default_factory=list,
        repeat=True,
        metavar="PATH[:SCALE]",
        group="adapters, memory and speed",
    )
    cpu_offload: str | None = option(
        "keep the models in CPU memory and move each to the GPU while it runs: model (whole models, little "
        "slower) or sequential (layer by layer: least memory, much slower); needs a GPU",
        default=None,
        choices=CPU_OFFLOAD_MODES,
        group="adapters, memory and speed",
    )
    vae_slicing: bool = option(
        "decode and encode a batch one image at a time", default=False, group="adapters, memory and speed"
    )
    vae_tiling: bool = option(
        "decode and encode large images in overlapping tiles",
        default=False,
        group="adapters, memory and speed",
    )
    attention_slicing: str | None = option(
        "compute attention in slices: auto (half the heads at once), max (one at a time) or N heads at once",
        default=None,
        parse=parse_attention_slicing,
        metavar="auto|max|N",
        group="adapters, memory and speed",
    )
    low_memory: bool = option(
        "for GPUs with about 8 GB: model offload, VAE slicing and tiling, attention slicing",
        default=False,
        group="adapters, memory and speed",
    )
    compile: bool = option(
        "torch.compile the UNet (its repeated blocks): slower first edit, faster after",
        default=False,
        group="adapters, memory and speed",
    )
    channels_last: bool = option(
        "channels-last memory layout for the UNet and VAE (faster convolutions on many GPUs)",
        default=False,
        group="adapters, memory and speed",
    )

    def lora_specs(self) -> list[tuple[str, float]]:
        """The ``lora`` entries as (path, scale); a one-line ValueError for a bad one."""
        return [parse_lora_spec(text) for text in self.lora]

    def memory_options(self) -> dict:
        """The keyword arguments of ``EditPipeline.enable_memory_options``, ``low_memory`` expanded."""
        low = self.low_memory
        slicing = self.attention_slicing
        if slicing is not None:
            parse_attention_slicing(slicing)
        return {
            "cpu_offload": self.cpu_offload or ("model" if low else None),
            "vae_slicing": self.vae_slicing or low,
            "vae_tiling": self.vae_tiling or low,
            "attention_slicing": slicing or ("auto" if low else None),
        }

    def validate_options(self) -> None:
        """Check the adapters' specs and the options' values (not whether the files or a GPU exist)."""
        self.lora_specs()
        self.memory_options()
        if self.cpu_offload is not None and self.cpu_offload not in CPU_OFFLOAD_MODES:
            raise ValueError(f"--cpu-offload {self.cpu_offload!r}: choose model or sequential")

    def needs_accelerator(self) -> bool:
        """Whether an option of these needs a GPU (CPU offload does)."""
        return self.memory_options()["cpu_offload"] is not None


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
        "weights and compute precision; auto = bf16 on GPUs that support it, else fp16; fp32 on CPU",
        default="auto",
        choices=DTYPE_NAMES,
    )


@dataclass
class EditJob(ModelChoice, RuntimeOptions):
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
        "for one image: the output PNG, or an existing folder to write <folder>/<stem>.png inside it; for a "
        "folder or .jsonl input: the output folder. A folder's photo.jpg becomes photo.png there, unless "
        "another input in its folder has the stem photo too: then each keeps its extension (photo_jpg.png, "
        "photo_png.png). Outputs that would still coincide are refused before any work",
        default="",
        aliases=("-o",),
        required=True,
    )
    seed: int | None = option(
        "random seed, 0 to 2**64-1 (default: drawn at random and recorded)", default=None
    )
    max_pixels: int = option(
        "refuse inputs with more pixels than this (decompression-bomb guard), at least 1",
        default=DEFAULT_MAX_PIXELS,
    )
    overwrite: bool = option("batch mode: redo items whose output already exists", default=False)
    chain: list[str] = option(
        "another instruction, applied to the result of the ones before (multi-turn editing); repeat for more "
        "turns. The last turn's image goes to the output, turn K's before it to <output>_turnK.png. JSONL items "
        'chain by giving "instruction" as a list',
        default_factory=list,
        repeat=True,
        metavar="INSTRUCTION",
    )
    chain_mode: str = option(
        "what each edit keeps of its input: plain (the edit as it is), paste (only the pixels the edit changed "
        "beyond --paste-threshold, the rest of the input exactly, as Emu Edit between turns), auto-mask (each "
        "turn inside its automatic mask)",
        default="plain",
        choices=CHAIN_MODES,
    )
    paste_threshold: float = option(
        "the paste mode's threshold on |edited - input| per pixel (max over RGB), 0-1",
        default=PASTE_THRESHOLD,
    )
    guidance: str = option(
        "fixed: the scales of --text-guidance and --image-guidance (else the model's); auto: chosen per edit "
        "from its instruction by the model's auto_guidance.json (learned on a validation split; no extra UNet "
        "evaluations)",
        default="fixed",
        choices=GUIDANCE_MODES,
    )
    recursive: bool = option(
        "folder input: also edit the images in its subfolders, the outputs mirroring them (default: the "
        "folder's own images only)",
        default=False,
    )
    mask: str | None = option(
        "a mask image: white where the edit may act, black where the input is kept exactly (or painted strokes "
        "on a transparent canvas); resized to the input if its size differs. JSONL items may name their own "
        'with a "mask" key',
        default=None,
        metavar="FILE",
    )
    save_mask: bool = option(
        "write the mask each edit used (given or automatic) beside its output, as <output>_mask.png",
        default=False,
    )
    verbose: bool = option(
        "show libraries' messages (decoders, model loading, deprecations) instead of keeping them off the "
        "terminal",
        default=False,
    )

    def validate(self) -> None:
        """Check the run's own values (the edit's are :meth:`EditConfig.validate`'s); one-line ValueErrors."""
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"--seed must lie between 0 and 2**64-1, got {self.seed}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be at least 1, got {self.max_pixels}")
        if not 0.0 <= self.paste_threshold <= 1.0:
            raise ValueError(f"--paste-threshold must lie in [0, 1], got {self.paste_threshold}")
        if self.chain_mode not in CHAIN_MODES:
            raise ValueError(f"--chain-mode {self.chain_mode!r}: choose one of {', '.join(CHAIN_MODES)}")
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"--guidance {self.guidance!r}: choose one of {', '.join(GUIDANCE_MODES)}")
        if any(not isinstance(text, str) or not text.strip() for text in self.chain):
            raise ValueError("--chain needs a non-empty instruction")
        if not _device_name(self.device):
            raise ValueError(
                f"--device {self.device!r} is not a device; use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps"
            )
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"--dtype {self.dtype!r} is unknown; choose one of {', '.join(DTYPE_NAMES)}")
        self.validate_options()


def _device_name(name: str) -> bool:
    """A device name ip2p can run on, by its syntax (whether it exists is checked where torch is loaded)."""
    kind, _, index = name.partition(":")
    if kind in ("auto", "cpu", "mps"):
        return not index
    return kind == "cuda" and (not _ or (index.isdigit() and index.isascii()))
