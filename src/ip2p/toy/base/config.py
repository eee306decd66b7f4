"""Settings of the toy base model's training (:func:`ip2p.toy.base.train_base`), and their checks.

Importable without torch: ``ip2p toy train-base --help`` is built from these dataclasses
(:func:`ip2p.flags.add_config_flags`). The architecture is not here: see :mod:`ip2p.toy.models` and its presets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ip2p.flags import option

PRECISIONS = ("fp32", "bf16")
ATTENTIONS = ("sdpa", "classic")
STAGES = ("vae", "vae_decoder", "clip", "clip_vision", "unet")
# The folders of a pipeline a fine-tune starts from (--unet-init).
INIT_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class TrainSettings:
    """Everything about training that is not the architecture (see :mod:`ip2p.toy.models` for that).

    Saved as ``train`` in every stage's ``settings.json``."""

    seed: int = option(
        "seed of the training scenes, the initial weights and every step's randomness", default=0
    )
    n_scenes: int = option("training scenes, rendered once and cached under work/data", default=20_000)
    ckpt_every: int = option("save a resumable checkpoint every N steps of each stage", default=200)
    keep_checkpoints: int = option("keep the newest N checkpoints of each stage (0: all)", default=2)
    threads: int = option("CPU threads of the training process", default=2)
    # The batches are the same either way (each is a function of its step alone). On a GPU the step is faster
    # than its batch's preparation: use several (Linux; forked processes).
    loader_workers: int = option(
        "processes that prepare the CLIP and UNet batches (render, caption, tokenize) ahead of the step; "
        "0: the training process",
        default=0,
    )
    # For a fixed time slot, e.g. a GPU lease; results then depend on the machine's speed.
    clip_minutes: float = option(
        "wall-clock budget of the CLIP stage in minutes (0: none); a stage that reaches it checkpoints and "
        "finishes with the weights it has, recording where it ended (settings.json's steps_done)",
        default=0.0,
    )
    unet_minutes: float = option(
        "wall-clock budget of the UNet stage in minutes (0: none), as --clip-minutes (it finishes with its EMA)",
        default=0.0,
    )
    # What a *_minutes limit did in a recorded run (its settings.json's steps_done), made repeatable.
    clip_stop_step: int = option(
        "end the CLIP stage at this step of a schedule planned for --clip-steps (0: at its end)", default=0
    )
    unet_stop_step: int = option(
        "end the UNet stage at this step of a schedule planned for --unet-steps (0: at its end)", default=0
    )
    # VAE
    vae_steps: int = option("VAE training steps", default=1200, aliases=("--steps-vae",))
    vae_batch: int = option("VAE batch size (renders)", default=16)
    # Crops are cheaper but GroupNorm's statistics then differ from whole images' (measured: 19 dB on whole renders
    # after training on 32 px crops).
    vae_crop: int = option(
        "train the VAE on random crops of this side (a multiple of 4); 0: whole renders", default=0
    )
    vae_lr: float = option("VAE learning rate (cosine decay to 10% after 100 warm-up steps)", default=1e-3)
    vae_kl_weight: float = option("weight of the VAE's KL term beside the MSE reconstruction", default=1e-6)
    # SD's ft-MSE recipe: the encoder, hence the UNet's latent space, stays fixed, so it can also run beside or
    # after the UNet stage (it then updates base/vae).
    vae_decoder_steps: int = option(
        "steps of the optional decoder-only fine-tuning after the VAE stage (stage vae_decoder; 0: none)",
        default=0,
    )
    # CLIP
    tokenizer_texts: int = option(
        "world texts (2/3 captions, 1/3 instructions) the tokenizer's merges are learnt on", default=9000
    )
    clip_steps: int = option("CLIP training steps", default=700, aliases=("--steps-clip",))
    clip_batch: int = option(
        "CLIP batch size in scenes, half of them one-attribute variants of the other half", default=64
    )
    clip_hard_captions: int = option("extra one-attribute-distractor captions per image", default=2)
    clip_lr: float = option("CLIP learning rate (cosine decay to 10% after 100 warm-up steps)", default=1e-3)
    clip_attribute_weight: float = option(
        "weight of the auxiliary attribute read-outs of both embeddings (AttributeHeads); 0 turns them off",
        default=1.0,
    )
    # Embeddings are normalised and the losses computed in float32, weights and optimizer stay float32. On a CPU,
    # with "classic" attention, a step takes half the time (benchmarks/bench_base_train.py).
    clip_precision: str = option(
        "bf16: CLIP's towers (stages clip and clip_vision) under bfloat16 autocast; fp32: none",
        default="fp32",
    )
    # The text tower, hence the UNet's text encoder, is left as it is, so this stage can also run after the UNet
    # stage; it rewrites clip/ when it ends.
    clip_vision_steps: int = option(
        "steps of the optional stage clip_vision: CLIP's image tower fine-tuned against its frozen text tower "
        "with the CLIP stage's batches and losses (0: none)",
        default=0,
    )
    clip_vision_lr: float = option("learning rate of the clip_vision stage", default=3e-4)
    clip_vision_warmup: int = option("warm-up steps of the clip_vision stage", default=50)
    # UNet
    unet_steps: int = option("UNet training steps", default=2800, aliases=("--steps-unet",))
    unet_batch: int = option("UNet batch size (latents)", default=64)
    unet_lr: float = option("UNet learning rate (cosine decay to 10% after the warm-up)", default=6e-4)
    unet_warmup: int = option("UNet warm-up steps", default=200)
    # On a CPU with AVX-512 BF16 or AMX it is faster (benchmarks/bench_base_train.py).
    unet_precision: str = option(
        "bf16: the UNet's forward (and the frozen text encoder's) under bfloat16 autocast, weights and "
        "optimizer in float32; fp32: none",
        default="fp32",
    )
    caption_dropout: float = option(
        "fraction of empty UNet captions (for classifier-free guidance)", default=0.1
    )
    # sdpa is the libraries' default; classic (transformers' eager attention, diffusers' AttnProcessor) is the same
    # math in plain matrix products, faster on a CPU for these small heads. The saved models are the same either way.
    attention: str = option(
        "attention kernels while training CLIP and the UNet: sdpa (torch's scaled_dot_product_attention) or "
        "classic",
        default="sdpa",
    )
    canonical_captions: float = option(
        "fraction of UNet captions in canonical phrasing (the rest varied)", default=0.3
    )
    # So that the model also draws captions that leave part of the scene to it, as real captions do.
    brief_captions: float = option(
        "fraction of the UNet's non-empty captions that are brief: every size and position left unsaid "
        "(ip2p.toy.captions); 0 keeps the recipe's random draws exactly as they were",
        default=0.0,
    )
    # Its VAE, text encoder and tokenizer are then the ones trained and saved with it (this run's VAE and CLIP
    # stages are not needed).
    unet_init: str = option(
        "start the UNet from this text-to-image pipeline folder ('toy': the bundled base) instead of from "
        "scratch: a fine-tune",
        default="",
        metavar="DIR",
    )
    ema_decay: float = option(
        "decay of the UNet's exponential moving average (the saved weights)", default=0.999
    )


@dataclass
class TrainBaseConfig:
    """A run of ``ip2p toy train-base``: where, on what, which stages, and the training settings."""

    out: str | None = option(
        "output folder (base/ and clip/ are the final models)", default=None, metavar="DIR", required=True
    )
    device: str = option("auto (CUDA when present), cpu, cuda, cuda:1, mps", default="auto")
    preset: str = option(
        "architecture preset: toy or test (tiny); a run folder keeps the one it started with", default="toy"
    )
    stages: str = option(
        "comma-separated stages to run, in this order (vae_decoder only runs with --vae-decoder-steps N, "
        "clip_vision with --clip-vision-steps N)",
        default=",".join(STAGES),
    )
    export: str | None = option(
        "after training, write DIR/base and DIR/clip for bundling (UNet and VAE weights in fp16)",
        default=None,
        metavar="DIR",
    )
    settings: TrainSettings = option("the training settings", cli=False, default_factory=TrainSettings)

    def stage_list(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages.split(",") if s)


class SettingsError(ValueError):
    """Settings (or a run folder) no stage can use; the message is one line that says why."""


def unet_init_path(source: str) -> Path:
    """The pipeline folder a fine-tune starts from: "toy" is the bundled base."""
    from ip2p.toy.plugin import toy_model_path

    return toy_model_path("base") if source == "toy" else Path(source)


def check_settings(settings: TrainSettings) -> None:
    """One-line errors (:class:`SettingsError`) for settings no stage can use."""
    for name in ("unet_precision", "clip_precision"):
        if getattr(settings, name) not in PRECISIONS:
            raise SettingsError(
                f"{name.replace('_', ' ')} must be fp32 or bf16, not {getattr(settings, name)!r}"
            )
    if settings.attention not in ATTENTIONS:
        raise SettingsError(f"attention must be sdpa or classic, not {settings.attention!r}")
    for name in ("brief_captions", "canonical_captions", "caption_dropout"):
        if not 0.0 <= getattr(settings, name) <= 1.0:
            raise SettingsError(
                f"{name.replace('_', ' ')} is a fraction in [0, 1], not {getattr(settings, name)}"
            )
    if settings.unet_init:
        init = unet_init_path(settings.unet_init)
        scheduler = init / "scheduler" / "scheduler_config.json"
        if not all((init / part).is_dir() for part in INIT_PARTS) or not scheduler.is_file():
            raise SettingsError(
                f"unet init {settings.unet_init!r} is not a text-to-image pipeline folder (it needs "
                f"{', '.join(INIT_PARTS)})"
            )
        prediction = json.loads(scheduler.read_text()).get("prediction_type")
        if prediction != "v_prediction":
            raise SettingsError(
                f"unet init {settings.unet_init!r} predicts {prediction!r}; the UNet stage trains v-prediction"
            )


def check_config(config: TrainBaseConfig) -> None:
    """One-line errors (:class:`SettingsError`) for a run no stage can do."""
    if not config.out:
        raise SettingsError("an output folder is required (--out DIR)")
    unknown = [s for s in config.stage_list() if s not in STAGES]
    if unknown:
        raise SettingsError(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    check_settings(config.settings)
