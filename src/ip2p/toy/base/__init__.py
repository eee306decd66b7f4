"""Train the toy world's miniature Stable Diffusion from scratch: VAE, then CLIP, then the UNet.

As in Stable Diffusion, the three models are trained separately: the VAE on renders (reconstruction + a small KL
term, :mod:`.vae`), CLIP contrastively on (render, caption) pairs (:mod:`.clip`), and the UNet on the VAE's
latents of pre-rendered scenes, conditioned on the frozen CLIP text tower's hidden states, with 10% empty captions
for classifier-free guidance (:mod:`.unet`). Settings: :mod:`.config`; the stages in order: :mod:`.run`; the
bundle and checkpoint pipelines: :mod:`.export`.

Layout of the output folder::

    base/            the text-to-image model: a StableDiffusionPipeline folder (the final output)
    clip/            CLIPModel + tokenizer + image processor, for scoring (the final output)
    work/data/N-SEED/  pre-rendered training scenes (images.npy, scenes.json), one folder per scene count and seed
    work/vae/        checkpoints of the VAE stage, and final/ (AutoencoderKL)
    work/clip/       checkpoints of the CLIP stage
    work/clip_vision/  checkpoints of the optional image-tower fine-tuning (settings.json once it has ended)
    work/unet/       latent cache and checkpoints of the UNet stage

Every stage is reproducible (all randomness of step ``i`` is drawn from generators seeded by (seed, stage, i)),
checkpoints every ``ckpt_every`` steps through :class:`ip2p.harness.Checkpointer`, resumes from its latest
checkpoint when run again, ends a step and checkpoints on SIGINT/SIGTERM, and is skipped when its final output
exists (clip_vision: its settings.json).

Usage::

    ip2p toy train-base --out runs/toy [--device cuda] [--steps-vae N --steps-clip N --steps-unet N]
    # on a GPU: batches prepared by 10 processes, a time slot per stage (scripts/build_toy.sh BASE=gpu: the bundled
    # weights' recipe, with the steps that such a run reached)
    ip2p toy train-base --out runs/toy --device cuda --loader-workers 10 --clip-minutes 2 --unet-minutes 4.5

    from ip2p.toy.base import TrainBaseConfig, TrainSettings, train_base
    train_base(TrainBaseConfig(out="runs/toy", settings=TrainSettings(unet_steps=1000)))

This package's own import is light (no torch): ``ip2p toy train-base --help`` reads :mod:`.config`.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a busy machine, OpenMP's default spin-waiting makes every 2-thread step many times
# slower (measured: 40 s instead of 2.5 s per UNet step while other jobs ran); passive waiting costs nothing idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import SettingsError, TrainBaseConfig, TrainSettings, check_settings  # noqa: E402

__all__ = [
    "SettingsError",
    "TrainBaseConfig",
    "TrainSettings",
    "check_settings",
    "train_base",
    "train_stages",
]


def __getattr__(name: str):
    # The training functions import torch: loaded when first asked for.
    if name in ("train_base", "train_stages"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
