"""What the toy base model's stages share: the run folder's layout, the settings record, kernels and precision,
per-step seeds, the learning-rate schedule, atomic saving of model folders, and the architecture record."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import shutil
from pathlib import Path

import torch

from ip2p.fileio import atomic_dir
from ip2p.text_encoding import tokenize_prompts

from ..models import BaseModelConfig, preset
from .config import TrainSettings

# ---------------------------------------------------------------------------
# The run folder (see ip2p.toy.base for its layout)
# ---------------------------------------------------------------------------


def vae_final_path(out_dir: Path) -> Path:
    return Path(out_dir) / "work" / "vae" / "final"


def vae_decoder_path(out_dir: Path) -> Path:
    return Path(out_dir) / "work" / "vae" / "decoder-final"


def current_vae_path(out_dir: Path) -> Path:
    """The VAE to ship: decoder-fine-tuned when that stage has run, else the VAE stage's."""
    tuned = vae_decoder_path(out_dir)
    return tuned if (tuned / "config.json").is_file() else vae_final_path(out_dir)


def clip_final_path(out_dir: Path) -> Path:
    return Path(out_dir) / "clip"


def clip_vision_done_path(out_dir: Path) -> Path:
    return Path(out_dir) / "work" / "clip_vision" / "settings.json"


def base_final_path(out_dir: Path) -> Path:
    return Path(out_dir) / "base"


def settings_record(cfg: BaseModelConfig, settings: TrainSettings, steps_done: int | None = None) -> dict:
    """What a stage's ``settings.json`` holds: the architecture, the settings and, for a stage that can end early,
    the steps it did."""
    record = {"model": dataclasses.asdict(cfg), "train": dataclasses.asdict(settings)}
    if steps_done is not None:
        record["steps_done"] = steps_done
    return record


def load_config(out_dir: Path, preset_name: str) -> BaseModelConfig:
    """The architecture a run folder recorded (``work/config.json``), else the preset ``preset_name``."""
    record = Path(out_dir) / "work" / "config.json"
    if record.is_file():
        return config_from_dict(json.loads(record.read_text()))
    return preset(preset_name)


def config_from_dict(d: dict) -> BaseModelConfig:
    from ..models import CLIPSettings, SchedulerConfig, UNetConfig, VAEConfig

    def build(cls, values):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return BaseModelConfig(
        vae=build(VAEConfig, d["vae"]),
        clip=build(CLIPSettings, d["clip"]),
        unet=build(UNetConfig, d["unet"]),
        scheduler=build(SchedulerConfig, d["scheduler"]),
        image_size=d["image_size"],
    )


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


def use_attention(model, attention: str):
    """Switch a CLIPModel or a UNet2DConditionModel to ``attention`` kernels (see TrainSettings.attention)."""
    if hasattr(model, "set_attn_processor"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        model.set_attn_processor(AttnProcessor() if attention == "classic" else AttnProcessor2_0())
    else:
        model.set_attn_implementation("eager" if attention == "classic" else "sdpa")
    return model


def autocast(device: torch.device, precision: str):
    """bfloat16 autocast on ``device`` for precision "bf16"; a no-op for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def step_seed(seed: int, stage: str, step: int) -> int:
    """The seed of one step's generators: a step's randomness does not depend on how the run got there."""
    return (seed * 1_000_003 + sum(map(ord, stage)) * 7_919 + step) % (2**63)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def tokenize(tokenizer, texts: list[str], device: torch.device, pad_to_max: bool) -> torch.Tensor:
    """Token ids (N, L): padded to ``model_max_length`` (the UNet's conditioning, as StableDiffusionPipeline
    computes it: :func:`ip2p.text_encoding.tokenize_prompts`), or to the batch's longest text.

    The CLIP stage pads to the longest text on purpose: its text tower is causal and pools at the EOS token, so
    the embeddings are the same and the shorter batches cost less."""
    if pad_to_max:
        return tokenize_prompts(tokenizer, texts).to(device)
    ids = tokenizer(texts, padding="longest", max_length=tokenizer.model_max_length, truncation=True)
    return torch.tensor(ids.input_ids, device=device)


# ---------------------------------------------------------------------------
# Saving model folders
# ---------------------------------------------------------------------------


def save_pretrained_atomic(obj, folder: Path) -> None:
    """``obj.save_pretrained`` (safetensors where it can) into a temporary folder renamed to ``folder``."""
    with atomic_dir(folder) as tmp:
        obj.save_pretrained(tmp, **({"safe_serialization": True} if _accepts_safe(obj) else {}))


def _accepts_safe(obj) -> bool:
    try:
        return "safe_serialization" in inspect.signature(obj.save_pretrained).parameters
    except (TypeError, ValueError):
        return False


def atomic_copytree(src: Path, dest: Path) -> None:
    """A copy of the folder ``src`` at ``dest``, which appears whole or not at all."""
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
