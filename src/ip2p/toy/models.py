"""The toy world's miniature Stable Diffusion: configs and builders of its VAE, CLIP and UNet.

The three models have Stable Diffusion's architecture and classes (diffusers ``AutoencoderKL`` and
``UNet2DConditionModel``, transformers ``CLIPModel``), at a size that trains from scratch on two CPU cores:

- the VAE maps 64x64 RGB renders to 16x16x4 latents (downsampling factor 4, where SD's is 8);
- CLIP is a small text tower (the UNet's frozen text encoder, as in SD) and a small ViT on 64 px images, trained
  contrastively first; its text tower's vocabulary is a byte-level BPE learnt from the world's captions and
  instructions, so every word is one token;
- the UNet denoises 16x16x4 latents with cross-attention to the text tower's hidden states at the 8x8 and 4x4
  levels, trained with zero terminal SNR and v-prediction (the schedule that can reach pure noise at the last step,
  so that flat, saturated backgrounds come out right).

``PRESETS["toy"]`` is the bundled model; ``PRESETS["test"]`` is a tiny version for the test suite.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from ip2p.tokenization import build_clip_tokenizer

IMAGE_SIZE = 64


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # 3 levels: factor 4
    layers_per_block: int = 1
    latent_channels: int = 4
    # 8 groups (4-8 channels each): with 32 groups of one channel, GroupNorm is an instance norm that wipes each
    # channel's image-wide level (the background colour); measured: 22.1 dB after 150 steps with 8 groups (and an
    # MSE loss) against 18.0 dB after 200 with 32 groups (and L1).
    norm_num_groups: int = 8
    # No attention: the VAE is then fully convolutional, so training on crops is exact (and cheaper); flat shapes
    # need no global context.
    mid_block_add_attention: bool = False


@dataclass(frozen=True)
class CLIPSettings:
    vocab_size: int = 1024  # upper bound; the learnt merges make every world word one token well below it
    max_length: int | None = None  # None: measured on the corpus (longest text + margin, rounded up to 8)
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 512
    patch_size: int = 8
    projection_dim: int = 128
    # CLIP starts at 1/0.07 (ln 14.3 = 2.66) and learns its way up over a long run; a short run separating
    # one-attribute negatives (cosines within a few hundredths) needs sharper logits from the start.
    logit_scale_init: float = 3.4  # ln 30


@dataclass(frozen=True)
class UNetConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    attention: tuple[bool, ...] = (False, True, True)  # cross-attention per level (16x16, 8x8, 4x4)
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 32


@dataclass(frozen=True)
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: str = "trailing"


@dataclass(frozen=True)
class BaseModelConfig:
    """Everything that defines the architecture of the toy base model."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPSettings = field(default_factory=CLIPSettings)
    unet: UNetConfig = field(default_factory=UNetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    image_size: int = IMAGE_SIZE


PRESETS: dict[str, BaseModelConfig] = {
    "toy": BaseModelConfig(),
    "test": BaseModelConfig(
        vae=VAEConfig(block_out_channels=(8, 16, 16), norm_num_groups=8),
        clip=CLIPSettings(
            vocab_size=700,
            text_hidden=32,
            text_layers=1,
            text_heads=2,
            text_intermediate=64,
            vision_hidden=32,
            vision_layers=1,
            vision_heads=2,
            vision_intermediate=64,
            projection_dim=16,
        ),
        unet=UNetConfig(block_out_channels=(16, 32, 32), attention_heads=2, norm_num_groups=8),
    ),
}


def preset(name: str = "toy", **overrides) -> BaseModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def tokenizer_corpus(n_captions: int = 6000, n_instructions: int = 3000, seed: int = 1234) -> list[str]:
    """Texts the world produces: every vocabulary word, varied captions and edit instructions."""
    from .captions import VOCABULARY, caption
    from .edits import random_edit
    from .scene import random_scene

    rng = random.Random(seed)
    texts = [" ".join(VOCABULARY)]
    for _ in range(n_captions):
        texts.append(caption(random_scene(rng), rng))
    for _ in range(n_instructions):
        texts.append(random_edit(random_scene(rng), rng).instruction)
    return texts


def build_tokenizer(settings: CLIPSettings, corpus: list[str] | None = None) -> CLIPTokenizer:
    """The toy CLIP tokenizer: BPE learnt on the world's texts; max length just above its longest text."""
    corpus = tokenizer_corpus() if corpus is None else corpus
    tok = build_clip_tokenizer(corpus, vocab_size=settings.vocab_size, model_max_length=77)
    max_length = settings.max_length
    if max_length is None:
        # The vocabulary line (first) only teaches merges; the length is that of real captions and instructions.
        longest = max(len(tok(t).input_ids) for t in corpus[1:])  # includes BOS and EOS
        max_length = -(-(longest + 4) // 8) * 8
    tok.model_max_length = max_length
    tok.init_kwargs["model_max_length"] = max_length
    return tok


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def build_vae(cfg: VAEConfig, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=cfg.mid_block_add_attention,
    )


def clip_config(settings: CLIPSettings, tokenizer: CLIPTokenizer, image_size: int = IMAGE_SIZE) -> CLIPConfig:
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=settings.text_hidden,
        intermediate_size=settings.text_intermediate,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=settings.text_heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=settings.projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=settings.vision_hidden,
        intermediate_size=settings.vision_intermediate,
        num_hidden_layers=settings.vision_layers,
        num_attention_heads=settings.vision_heads,
        image_size=image_size,
        patch_size=settings.patch_size,
        projection_dim=settings.projection_dim,
    )
    return CLIPConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=settings.projection_dim,
        logit_scale_init_value=settings.logit_scale_init,
    )


def build_clip(settings: CLIPSettings, tokenizer: CLIPTokenizer, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(clip_config(settings, tokenizer))


def build_unet(
    cfg: UNetConfig, cross_attention_dim: int, seed: int = 0, sample_size: int = 16
) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=cfg.attention_heads,  # diffusers' legacy name: the number of heads
        norm_num_groups=cfg.norm_num_groups,
    )


def build_scheduler(cfg: SchedulerConfig) -> DDIMScheduler:
    """DDIM over SD's betas rescaled to zero terminal SNR, v-prediction, trailing timesteps."""
    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        rescale_betas_zero_snr=cfg.rescale_betas_zero_snr,
        timestep_spacing=cfg.timestep_spacing,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # unused by trailing spacing; 1 keeps diffusers' pipelines from warning
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
