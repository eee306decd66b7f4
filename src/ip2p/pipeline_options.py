"""LoRA adapters, memory and speed options of an :class:`~ip2p.pipeline.EditPipeline`, all through diffusers.

The editor samples with its own loop (:mod:`ip2p.sampling`) over its components' modules. Each option here acts
on those modules, so that loop sees it without change: LoRA adapters are PEFT layers injected into the UNet (and
the text encoder, where the adapter has weights for it) by diffusers' ``load_lora_weights`` on a diffusers
pipeline built over the same modules; CPU offload is diffusers' ``enable_model_cpu_offload`` /
``enable_sequential_cpu_offload``, whose accelerate hooks move a module to the GPU when it is called; VAE
slicing and tiling are ``AutoencoderKL``'s own switches, attention slicing diffusers' sliced attention
processors; ``compile`` is ``compile_repeated_blocks`` (else ``torch.compile``) of the UNet.

Example::

    pipe = EditPipeline.from_pretrained("timbrooks/instruct-pix2pix")
    pipe.load_lora("my-lora.safetensors", scale=0.8)
    pipe.enable_memory_options(cpu_offload="model", vae_slicing=True, vae_tiling=True, attention_slicing="auto")
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

from ip2p.edit_config import CPU_OFFLOAD_MODES, RuntimeOptions, parse_attention_slicing
from ip2p.models import build_pipeline

# The functions take an ip2p.pipeline.EditPipeline (which calls them: no import of it here, that would be a cycle).
EditPipeline = Any

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
# Beside an adapter trained from a text-to-image model (ip2p.train_lora): its trained 8-channel input convolution
# ("conv_in.weight", "conv_in.bias"), and what the run recorded (base model, rank, alpha, targets).
CONV_IN_WEIGHT_NAME = "conv_in.safetensors"
LORA_INFO_NAME = "lora_info.json"
LORA_PREFIXES = (
    "unet.",
    "text_encoder.",
    "text_encoder_2.",
    "lora_unet_",
    "lora_te",
)  # diffusers/PEFT and kohya key prefixes


class OptionError(ValueError):
    """An adapter or option that cannot be applied to this editor; one line."""


class LoraError(OptionError):
    """A LoRA adapter that cannot be read: a missing path, a pickle, or a file with no LoRA weights."""


class AcceleratorError(OptionError):
    """An option that needs a GPU (CPU offload) on a machine or device without one."""


def diffusers_pipeline(pipe: EditPipeline):
    """The diffusers InstructPix2Pix pipeline (SDXL's for SDXL components) over ``pipe``'s components (the same
    modules), built once."""
    built = pipe.__dict__.get("_diffusers")
    if built is None:
        sdxl = pipe.components.is_sdxl
        cls = StableDiffusionXLInstructPix2PixPipeline if sdxl else StableDiffusionInstructPix2PixPipeline
        built = build_pipeline(cls, pipe.components)
        built.set_progress_bar_config(disable=True)
        pipe.__dict__["_diffusers"] = built
    return built


def lora_location(path: str | Path) -> tuple[Path, str]:
    """(folder, weight file name) of a LoRA adapter given as a ``.safetensors`` file or a folder holding one.

    Safetensors only: a pickle (``.bin``, ``.pt``, ``.ckpt``) can run code when read, so it is refused.
    """
    path = Path(path)
    if not path.exists():
        raise LoraError(f"LoRA {str(path)!r}: no such file or folder")
    if path.is_dir():
        if (path / LORA_WEIGHT_NAME).is_file():
            return path, LORA_WEIGHT_NAME
        found = sorted(p.name for p in path.glob("*.safetensors"))
        if len(found) != 1:
            what = "no .safetensors file" if not found else f"{len(found)} .safetensors files"
            raise LoraError(
                f"LoRA folder {str(path)!r} holds {what}; give the file itself (or name it {LORA_WEIGHT_NAME})"
            )
        return path, found[0]
    if path.suffix.lower() != ".safetensors":
        raise LoraError(
            f"LoRA {str(path)!r}: only .safetensors adapters are read (pickled weights can run code when loaded)"
        )
    return path.parent, path.name


def lora_conv_in(path: str | Path) -> Path | None:
    """The trained input convolution that travels with the adapter at ``path`` (``conv_in.safetensors`` beside its
    weights), or None."""
    folder, _ = lora_location(path)
    found = folder / CONV_IN_WEIGHT_NAME
    return found if found.is_file() else None


def load_conv_in(unet: torch.nn.Module, path: Path, source: str | Path) -> None:
    """Put the input convolution saved at ``path`` into ``unet`` (in its dtype and device)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        weight, bias = state["conv_in.weight"], state["conv_in.bias"]
    except Exception as exc:
        raise LoraError(
            f"LoRA {str(source)!r}: {path.name} cannot be read: {' '.join(str(exc).split())}"
        ) from exc
    conv = unet.conv_in
    if weight.shape != conv.weight.shape or bias.shape != conv.bias.shape:
        raise LoraError(
            f"LoRA {str(source)!r}: its input convolution is {tuple(weight.shape)}, this UNet's "
            f"{tuple(conv.weight.shape)}: it was trained on another base model"
        )
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)


def editor_components(source: str, config: str | None, options: RuntimeOptions | None):
    """The components ``EditPipeline.from_pretrained`` edits with: the editor at ``source``, or, where an adapter
    of ``options`` carries its trained input convolution (a LoRA trained from a text-to-image model), the text-to-
    image model at ``source`` (a named model's base) turned into an 8-channel editor for that convolution to load
    into (an editor at ``source`` is taken as it is)."""
    from ip2p.models import ModelLoadError, load_pipeline_components, to_edit_unet

    carries_conv_in = options is not None and any(lora_conv_in(path) for path, _ in options.lora_specs())
    if not carries_conv_in:
        return load_pipeline_components(source, edit=True, config=config)
    try:
        components = load_pipeline_components(source, edit=False, config=config)
    except ModelLoadError as exc:
        if "input channels" not in str(exc):
            raise
        return load_pipeline_components(source, edit=True, config=config)
    to_edit_unet(components.unet)  # zeros: the adapter's conv_in replaces the whole convolution
    return components


def load_lora(pipe: EditPipeline, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
    """Add the LoRA adapter at ``path`` to ``pipe`` at ``scale``; the adapters loaded before stay active with
    their own scales. Returns the adapter's name (``name``, else ``lora0``, ``lora1``, ...).

    An adapter trained from a text-to-image model carries its input convolution (``conv_in.safetensors``): it
    replaces the UNet's whole, at every scale (the adapter's scale applies to its low-rank layers)."""
    if pipe.options.get("cpu_offload") is not None:
        raise LoraError("load LoRA adapters before turning CPU offload on")
    folder, weight_name = lora_location(path)
    adapters: dict[str, float] = pipe.options.setdefault("lora", {})
    name = name or f"lora{len(adapters)}"
    if name in adapters:
        raise LoraError(f"LoRA {str(path)!r}: an adapter named {name!r} is already loaded")
    loader = diffusers_pipeline(pipe)
    try:
        state_dict, _ = loader.lora_state_dict(str(folder), weight_name=weight_name, use_safetensors=True)
    except Exception as exc:  # a corrupt file or foreign layout: diffusers' own message, on one line
        message = " ".join(str(exc).split())
        raise LoraError(f"LoRA {str(path)!r} cannot be read: {message}") from exc
    if not any(key.startswith(LORA_PREFIXES) for key in state_dict):
        raise LoraError(
            f"LoRA {str(path)!r} holds no LoRA weights for the UNet or the text encoder (diffusers/PEFT format)"
        )
    try:
        with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            # from the file, not the state dict read above: the file's metadata holds the adapter's alpha
            loader.load_lora_weights(
                str(folder), weight_name=weight_name, use_safetensors=True, adapter_name=name
            )
    except Exception as exc:
        message = " ".join(str(exc).split())
        raise LoraError(f"LoRA {str(path)!r} does not fit this model: {message}") from exc
    conv_in = lora_conv_in(path)
    if conv_in is not None:
        load_conv_in(pipe.components.unet, conv_in, path)
    adapters[name] = float(scale)
    loader.set_adapters(list(adapters), adapter_weights=list(adapters.values()))
    return name


def enable_memory_options(
    pipe: EditPipeline,
    cpu_offload: str | None = None,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    attention_slicing: str | int | None = None,
) -> None:
    """Trade speed for memory; the edits stay the same up to float rounding. See :class:`RuntimeOptions`."""
    if cpu_offload is not None and cpu_offload not in CPU_OFFLOAD_MODES:
        raise ValueError(f"cpu_offload {cpu_offload!r}: choose model or sequential")
    if cpu_offload is not None and pipe.device.type == "cpu":
        raise AcceleratorError(
            f"--cpu-offload {cpu_offload} moves the models to a GPU as they run; this editor runs on the CPU "
            "(no GPU here, or --device cpu), where it has nothing to save"
        )
    vae = pipe.components.vae
    if vae_slicing:
        vae.enable_slicing()
    if vae_tiling:
        vae.enable_tiling()
    if attention_slicing is not None:
        size = parse_attention_slicing(str(attention_slicing))
        try:
            diffusers_pipeline(pipe).enable_attention_slicing(int(size) if size.isdigit() else size)
        except ValueError as exc:  # N larger than a layer's heads
            raise OptionError(f"--attention-slicing {size}: {' '.join(str(exc).split())}") from exc
    if cpu_offload == "model":
        diffusers_pipeline(pipe).enable_model_cpu_offload(device=pipe.device)
    elif cpu_offload == "sequential":
        diffusers_pipeline(pipe).enable_sequential_cpu_offload(device=pipe.device)
    pipe.options.update(
        {
            "cpu_offload": cpu_offload or pipe.options.get("cpu_offload"),
            "vae_slicing": vae_slicing or pipe.options.get("vae_slicing", False),
            "vae_tiling": vae_tiling or pipe.options.get("vae_tiling", False),
            "attention_slicing": attention_slicing or pipe.options.get("attention_slicing"),
        }
    )


def enable_speed_options(pipe: EditPipeline, compile: bool = False, channels_last: bool = False) -> None:
    """``channels_last``: the UNet's and VAE's convolutions in channels-last layout; ``compile``: torch.compile
    the UNet's repeated blocks where diffusers names them (``compile_repeated_blocks``), else the whole UNet.
    Compilation happens at the first edit."""
    unet = pipe.components.unet
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        pipe.components.vae.to(memory_format=torch.channels_last)
        pipe.options["channels_last"] = True
    if compile and not pipe.options.get("compile"):
        if getattr(unet, "_repeated_blocks", None):
            unet.compile_repeated_blocks(fullgraph=False)
            pipe.options["compile"] = "repeated_blocks"
        else:
            unet.compile()
            pipe.options["compile"] = "unet"


def apply_options(pipe: EditPipeline, options: RuntimeOptions) -> None:
    """Everything ``options`` asks for, in the order that works: adapters, then speed, then memory (offload
    hooks go on last)."""
    options.validate_options()
    for path, scale in options.lora_specs():
        load_lora(pipe, path, scale)
    enable_speed_options(pipe, compile=options.compile, channels_last=options.channels_last)
    enable_memory_options(pipe, **options.memory_options())


def check_accelerator(options: RuntimeOptions, device: str | None) -> None:
    """Before loading a model: an :class:`AcceleratorError` where ``options`` need a GPU that ``device`` lacks."""
    if not options.needs_accelerator():
        return
    from ip2p.devices import pick_device

    if pick_device(device).type == "cpu":
        mode = options.memory_options()["cpu_offload"]
        flag = "--low-memory" if options.low_memory and not options.cpu_offload else f"--cpu-offload {mode}"
        raise AcceleratorError(
            f"{flag} needs a GPU (it moves each model to the GPU while it runs) and this run is on the CPU; "
            "drop it, or use --vae-slicing/--vae-tiling/--attention-slicing"
        )
