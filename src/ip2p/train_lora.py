"""LoRA training of an editor (paper section 3.2 with low-rank adapters): which of the UNet's weights train, and
the adapter's export.

``ip2p train --lora-rank R`` trains PEFT LoRA adapters (Hu et al., 2021) on the UNet's attention projections (or the
layers ``--lora-targets`` names) and freezes every other UNet weight, with one exception: a run that starts from a
text-to-image model trains the 8-channel input convolution in full, since its 4 new, zero-initialised image
channels must learn to read the input image and a low-rank update of a frozen zero cannot do that well (diffusers'
LoRA example for InstructPix2Pix starts from an editor and cannot train them). A run that starts from an editor
freezes it: the editor already reads images.

The export (``RUN/lora``) is diffusers' LoRA format, written by ``save_lora_weights`` with the adapter's PEFT
config in the file's metadata (so that an alpha other than the rank loads back), beside:

- ``conv_in.safetensors``: the trained input convolution (``conv_in.weight`` (C, 8, 3, 3), ``conv_in.bias``)
  where it trained; :func:`ip2p.pipeline_options.load_lora` puts it into the UNet, and ``EditPipeline.
  from_pretrained`` surgers a text-to-image model to 8 channels for it;
- ``lora_info.json``: the base model, rank, alpha, targets and whether the input convolution trained.

Example::

    unet = components.unet  # 8 input channels, after to_edit_unet
    add_lora(unet, rank=64, alpha=64, targets=DEFAULT_TARGETS, train_conv_in=True, seed=0)
    params = trainable_parameters(unet)  # the adapters' A and B matrices and conv_in's weight and bias
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ip2p.fileio import atomic_dir
from ip2p.pipeline_options import CONV_IN_WEIGHT_NAME, LORA_INFO_NAME, LORA_WEIGHT_NAME
from ip2p.train_config import DEFAULT_LORA_TARGETS as DEFAULT_TARGETS  # noqa: F401 (re-exported)


class LoraTrainingError(ValueError):
    """LoRA settings that cannot apply to this UNet; one line."""


def add_lora(
    unet: torch.nn.Module,
    rank: int,
    alpha: float | None,
    targets: list[str] | tuple[str, ...],
    train_conv_in: bool,
    seed: int,
) -> dict[str, Any]:
    """Freeze ``unet`` and inject trainable LoRA adapters of ``rank`` into the layers named ``targets`` (module
    name suffixes, as PEFT matches them: ``to_q``, ``to_out.0``, ``conv1``, ...); with ``train_conv_in`` the input
    convolution trains in full beside them. The adapters start as diffusers' LoRA examples start them ("gaussian":
    B = 0, so the UNet's output is unchanged), drawn from ``seed`` alone, so that every run with these settings
    starts from the same weights. Returns the settings, as ``lora_info.json`` records them."""
    try:
        from peft import LoraConfig
    except ImportError as exc:
        raise LoraTrainingError("--lora-rank needs peft: pip install 'ip2p[text]' (or peft)") from exc
    targets = list(targets)
    if rank < 1:
        raise LoraTrainingError(f"lora rank must be at least 1, got {rank}")
    if not targets:
        raise LoraTrainingError(
            "--lora-targets is empty: name the layers to adapt (e.g. to_q to_k to_v to_out.0)"
        )
    if train_conv_in and "conv_in" in targets:
        raise LoraTrainingError(
            "--lora-targets names conv_in, which trains in full in a run from a text-to-image model; drop it"
        )
    alpha = float(rank if alpha is None else alpha)
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            unet.add_adapter(config)
        except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model"
            message = " ".join(str(exc).split())
            raise LoraTrainingError(f"--lora-targets {' '.join(targets)}: {message}") from exc
    if train_conv_in:
        unet.conv_in.requires_grad_(True)
    return {"rank": rank, "alpha": alpha, "targets": targets, "conv_in_trained": train_conv_in}


def trainable_named_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every weight that trains, in the module's order: all of them in a full fine-tune."""
    return [(name, p) for name, p in unet.named_parameters() if p.requires_grad]


def trainable_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for _, p in trainable_named_parameters(unet)]


def trainable_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of the UNet: the weights that train, nothing frozen."""
    return {name: p.detach().contiguous() for name, p in trainable_named_parameters(unet)}


def load_trainable_state(unet: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Put a checkpoint's trained weights back into ``unet`` (set up as the run that wrote it); a checkpoint of
    other weights (a full run resumed as LoRA, another rank or other targets) is a one-line error."""
    names = {name for name, _ in trainable_named_parameters(unet)}
    missing, foreign = sorted(names - state.keys()), sorted(state.keys() - dict(unet.state_dict()).keys())
    if missing or foreign:
        detail = (
            f"{len(missing)} missing, e.g. {missing[0]!r}"
            if missing
            else f"{len(foreign)} unknown, e.g. {foreign[0]!r}"
        )
        raise LoraTrainingError(
            f"{source}: its UNet weights are not those this run trains ({detail}): it was made with other "
            "--lora-rank/--lora-targets/--start-from settings; use another --output-dir"
        )
    try:
        unet.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch: another rank
        raise LoraTrainingError(
            f"{source}: its weights do not fit this run's adapters ({' '.join(str(exc).split())[:200]}); "
            "use another --output-dir"
        ) from exc


def lora_layers(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's adapter weights in diffusers' key format (``...to_q.lora_A.weight``), as ``save_lora_weights``
    takes them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def export_lora(unet: torch.nn.Module, folder: str | Path, info: dict[str, Any]) -> Path:
    """Write ``unet``'s adapter (and its input convolution where ``info["conv_in_trained"]``) to ``folder`` as
    described in the module docstring, atomically; returns ``folder``."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from safetensors.torch import save_file

    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        StableDiffusionInstructPix2PixPipeline.save_lora_weights(
            str(tmp),
            unet_lora_layers={k: v.detach().float().contiguous() for k, v in lora_layers(unet).items()},
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            weight_name=LORA_WEIGHT_NAME,
            safe_serialization=True,
        )
        if info.get("conv_in_trained"):
            conv = unet.conv_in
            save_file(
                {
                    "conv_in.weight": conv.weight.detach().float().contiguous(),
                    "conv_in.bias": conv.bias.detach().float().contiguous(),
                },
                str(tmp / CONV_IN_WEIGHT_NAME),
            )
        (tmp / LORA_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return folder
