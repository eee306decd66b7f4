"""A tiny, randomly initialised SD-family model built from configs: for tests, benchmarks and trying the CLI.

Its outputs are noise-like: it exercises every code path of the real models at a fraction of their cost, and it
is what the demo runs on where no trained model is available (it says so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ip2p.edit_config import TINY_MODEL  # its name in ip2p.registry.MODELS (``--model tiny``)

if TYPE_CHECKING:  # imported where a component is built: registering the name "tiny" stays light
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

TINY_SDXL_MODEL = "tiny-sdxl"  # the tiny SDXL editor's name in ip2p.registry.MODELS (``--model tiny-sdxl``)
TINY_SDXL_NOTE = "tiny randomly initialised SDXL model: its edits are noise, it only exercises the code"

TINY_NOTE = "tiny randomly initialised model: its edits are noise, it only exercises the code"


def tiny_unet(in_channels: int = 8, cross_attention_dim: int = 32, seed: int = 0) -> UNet2DConditionModel:
    """A two-level UNet with cross-attention (the size of diffusers' own pipeline tests)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A VAE with 4 latent channels and a downsampling factor of 2."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def tiny_text_encoder(tokenizer, hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    """A CLIP text tower; its special-token ids are the tokenizer's (the pooled output reads the EOS position)."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(_tiny_text_config(tokenizer, hidden_size)).eval()


def tiny_text_encoder_2(
    tokenizer, hidden_size: int = 32, projection_dim: int = 32, seed: int = 0
) -> CLIPTextModelWithProjection:
    """SDXL's second text tower: a CLIP text model whose pooled output is projected to ``projection_dim``."""
    import torch
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = _tiny_text_config(tokenizer, hidden_size, projection_dim=projection_dim)
    return CLIPTextModelWithProjection(config).eval()


def _tiny_text_config(tokenizer, hidden_size: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_sdxl_unet(
    in_channels: int = 8, cross_attention_dim: int = 64, seed: int = 0
) -> UNet2DConditionModel:
    """A two-level SDXL UNet (diffusers' SDXL pipeline tests' size): cross-attention over both text encoders'
    32 + 32 features, and the "text_time" added embedding of the pooled text (32) and six size ids (6 x 8)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8
        + 32,  # (original size, crop, target size) ids + pooled text
        cross_attention_dim=cross_attention_dim,  # 32 + 32: both text encoders' penultimate hidden states
        norm_num_groups=16,
    )


def tiny_scheduler() -> EulerAncestralDiscreteScheduler:
    """SD's noise schedule with the paper's sampler."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",  # SD 1.5's scheduler config
    )


def tiny_components(edit: bool = True, seed: int = 0):
    """All components of a tiny editing (8-channel) or text-to-image (4-channel) model, deterministic in ``seed``."""
    from ip2p.models import EditComponents
    from ip2p.tokenization import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=77)
    return EditComponents(
        unet=tiny_unet(in_channels=8 if edit else 4, seed=seed).eval(),
        vae=tiny_vae(seed=seed).eval(),
        text_encoder=tiny_text_encoder(tokenizer, seed=seed),
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
        name=TINY_MODEL,
        info={"note": TINY_NOTE},
    )


def tiny_sdxl_components(edit: bool = True, seed: int = 0, hidden_sizes: tuple[int, int] = (32, 32)):
    """A tiny SDXL editing (8-channel) or text-to-image (4-channel) model: two CLIP text encoders sharing the
    offline tokenizer (of ``hidden_sizes`` features: unequal ones tell them apart in an original-format file, as
    SDXL's 768 and 1280 do), deterministic in ``seed``."""
    from ip2p.models import EditComponents
    from ip2p.tokenization import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=77)
    return EditComponents(
        unet=tiny_sdxl_unet(
            in_channels=8 if edit else 4, cross_attention_dim=sum(hidden_sizes), seed=seed
        ).eval(),
        vae=tiny_vae(seed=seed).eval(),
        text_encoder=tiny_text_encoder(tokenizer, hidden_size=hidden_sizes[0], seed=seed),
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
        name=TINY_SDXL_MODEL,
        info={"note": TINY_SDXL_NOTE, "force_zeros_for_empty_prompt": True, "is_cosxl_edit": False},
        text_encoder_2=tiny_text_encoder_2(tokenizer, hidden_size=hidden_sizes[1], seed=seed + 1),
        tokenizer_2=tokenizer,
    )


def register() -> None:
    """The ``ip2p.plugins`` entry point: ``--model tiny`` builds these components (editor and text-to-image),
    ``--model tiny-sdxl`` the SDXL ones."""
    from ip2p.registry import MODELS, NamedModel

    MODELS.provide(
        TINY_MODEL,
        NamedModel(
            editor=lambda: tiny_components(edit=True),
            base=lambda: tiny_components(edit=False),
            description=TINY_NOTE,
        ),
    )
    MODELS.provide(
        TINY_SDXL_MODEL,
        NamedModel(
            editor=lambda: tiny_sdxl_components(edit=True),
            base=lambda: tiny_sdxl_components(edit=False),
            description=TINY_SDXL_NOTE,
        ),
    )
