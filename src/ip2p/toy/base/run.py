"""The toy base model's training from end to end: the stages in order, each resumed or skipped when done, and the
optional export of the bundle. :func:`train_base` is the library entry behind ``ip2p toy train-base``."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from pathlib import Path

import torch

from ip2p.fileio import write_json_atomic

from ..models import BaseModelConfig
from .clip import train_clip, train_clip_vision
from .common import load_config
from .config import STAGES, TrainBaseConfig, TrainSettings, check_config, check_settings
from .export import export_bundle
from .unet import train_unet
from .vae import train_vae, train_vae_decoder


def train_base(config: TrainBaseConfig, model: BaseModelConfig | None = None) -> dict[str, Path]:
    """Train (or resume, or skip what is done) the stages of ``config``; returns the final folders.

    The architecture is ``model``, else the one the run folder recorded, else the preset ``config.preset``.
    Returns ``{"vae": ..., "clip": out/clip, "base": out/base}`` for the stages run, and ``export-base``/
    ``export-clip`` with ``config.export``. Raises :class:`.config.SettingsError` (one line) for settings no stage can use,
    and :class:`ip2p.harness.Interrupted` when SIGINT or SIGTERM ended a stage (after its checkpoint). Example::

        train_base(TrainBaseConfig(out="runs/toy", stages="vae,clip", settings=TrainSettings(clip_steps=500)))
    """
    check_config(config)
    out_dir = Path(config.out)
    cfg = model or load_config(out_dir, config.preset)
    result = train_stages(out_dir, config.device, cfg, config.settings, config.stage_list())
    if config.export:
        result.update({f"export-{k}": v for k, v in export_bundle(out_dir, Path(config.export)).items()})
    return result


def train_stages(
    out_dir: str | Path,
    device: str = "auto",
    cfg: BaseModelConfig | None = None,
    settings: TrainSettings | None = None,
    stages: Iterable[str] = STAGES,
) -> dict[str, Path]:
    """Run ``stages`` (in the order vae, vae_decoder, clip, clip_vision, unet) of the run folder ``out_dir`` with
    the architecture ``cfg`` (default: the recorded one, else the "toy" preset); returns the final folders."""
    from ip2p.devices import pick_device

    out_dir = Path(out_dir)
    settings = settings or TrainSettings()
    check_settings(settings)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(settings.threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    record = out_dir / "work" / "config.json"
    if cfg is None:
        cfg = load_config(out_dir, "toy")
    write_json_atomic(record, dataclasses.asdict(cfg), indent=1)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    out: dict[str, Path] = {}
    stages = tuple(stages)
    if "vae" in stages:
        out["vae"] = train_vae(out_dir, cfg, settings, dev)
    if "vae_decoder" in stages and settings.vae_decoder_steps > 0:
        out["vae"] = train_vae_decoder(out_dir, cfg, settings, dev)
    if "clip" in stages:
        out["clip"] = train_clip(out_dir, cfg, settings, dev)
    if "clip_vision" in stages and settings.clip_vision_steps > 0:
        out["clip"] = train_clip_vision(out_dir, cfg, settings, dev)
    if "unet" in stages:
        out["base"] = train_unet(out_dir, cfg, settings, dev)
    return out
