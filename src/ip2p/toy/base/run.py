"""The toy base model's training from end to end: the stages in order, each resumed or skipped when done, and the
optional export of the bundle. :func:`train_base` is the library entry behind ``ip2p toy train-base``."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from ip2p.harness import Interrupted

from ..models import BaseModelConfig
from .clip import train_clip, train_clip_vision
from .common import load_config
from .config import STAGES, SettingsError, TrainBaseConfig, TrainSettings, check_config, check_settings
from .export import export_bundle
from .unet import train_unet
from .vae import train_vae, train_vae_decoder


def train_base(config: TrainBaseConfig, model: BaseModelConfig | None = None) -> dict[str, Path]:
    """Train (or resume, or skip what is done) the stages of ``config``; returns the final folders.

    The architecture is ``model``, else the one the run folder recorded, else the preset ``config.preset``.
    Returns ``{"vae": ..., "clip": out/clip, "base": out/base}`` for the stages run, and ``export-base``/
    ``export-clip`` with ``config.export``. Raises :class:`SettingsError` (one line) for settings no stage can use,
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
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
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


def main(argv: list[str] | None = None) -> int:
    """``ip2p toy train-base``: flags from :class:`TrainBaseConfig` and :class:`TrainSettings`."""
    import argparse

    from ip2p.flags import add_config_flags, config_overrides

    from . import __doc__ as about

    p = argparse.ArgumentParser(prog="ip2p toy train-base", description=about.split("\n\n")[0])
    add_config_flags(p, TrainBaseConfig)
    add_config_flags(p.add_argument_group("training settings"), TrainSettings)
    args = p.parse_args(argv)
    if args.out is None:
        p.error("the following arguments are required: --out")
    config = TrainBaseConfig(
        **config_overrides(args, TrainBaseConfig),
        settings=TrainSettings(**config_overrides(args, TrainSettings)),
    )
    try:
        result = train_base(config)
    except Interrupted as exc:
        print(f"ip2p toy train-base: {exc}", file=sys.stderr)
        return 130
    except SettingsError as exc:
        print(f"ip2p toy train-base: error: {exc}", file=sys.stderr)
        return 2
    for name, path in result.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
