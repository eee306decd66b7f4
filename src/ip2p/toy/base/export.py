"""Outputs of a toy base run besides its final folders: a pipeline from a UNet checkpoint (to evaluate a run before
it ends) and the bundle of fp16 weights shipped with the package."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ip2p.harness import Checkpointer, unprefixed

from ..models import build_unet
from .common import (
    atomic_copytree,
    base_final_path,
    clip_final_path,
    load_config,
    save_pretrained_atomic,
)
from .unet import base_scheduler, recorded_unet_init, save_base_pipeline, unet_companions


def export_checkpoint(
    out_dir: Path, folder: Path, step: int | None = None, ema: bool = True, preset_name: str = "toy"
) -> Path:
    """A pipeline folder from a UNet checkpoint (its EMA weights by default), to evaluate a run before it ends."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out_dir = Path(out_dir)
    cfg = load_config(out_dir, preset_name)
    ckpt = Checkpointer(out_dir / "work" / "unet" / "checkpoints")
    step = ckpt.latest() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no UNet checkpoint under {ckpt.folder}")
    weights = load_file(ckpt.weights_path(step))
    init = recorded_unet_init(out_dir)
    vae_dir, text_encoder, tokenizer = unet_companions(out_dir, init, torch.device("cpu"))
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    if init is not None:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(init / "unet"))
    else:
        unet = build_unet(cfg.unet, text_encoder.config.hidden_size)
    unet.load_state_dict(unprefixed("ema" if ema else "unet", weights))
    return save_base_pipeline(
        Path(folder), vae, text_encoder, tokenizer, unet.eval(), cfg, base_scheduler(cfg, init)
    )


def export_bundle(out_dir: Path, dest: Path) -> dict[str, Path]:
    """Copy the final models into ``dest/base`` and ``dest/clip`` (where the run has one) for bundling, with the
    UNet and VAE weights stored in fp16 (diffusers casts them back to fp32 when loading without ``torch_dtype``).
    The transformers models (text encoder, CLIP) stay fp32: transformers would keep fp16 weights in fp16.
    """
    from diffusers import StableDiffusionPipeline

    from ip2p.models import pipeline_kwargs

    out_dir, dest = Path(out_dir), Path(dest)
    pipe = StableDiffusionPipeline.from_pretrained(
        base_final_path(out_dir), **pipeline_kwargs(StableDiffusionPipeline)
    )
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    save_pretrained_atomic(pipe, dest / "base")
    if not (clip_final_path(out_dir) / "config.json").is_file():  # a fine-tune (--unet-init) trains no CLIP
        return {"base": dest / "base"}
    atomic_copytree(clip_final_path(out_dir), dest / "clip")
    return {"base": dest / "base", "clip": dest / "clip"}
