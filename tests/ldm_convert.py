"""Test helper: diffusers state dicts -> the original CompVis/LDM checkpoint layout.

This is the inverse of diffusers' single-file conversion (``diffusers/loaders/single_file_utils.py``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``), written out
by hand so that tests can produce a checkpoint laid out exactly as timothybrooks/instruct-pix2pix released it
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``) without a download.

It assumes SD's block structure (what the original layout itself assumes): every UNet level has
``layers_per_block`` resnets (+ one attention each where the level has cross-attention) and a down/upsampler except
the last; the VAE's mid blocks have two resnets and one attention. Every diffusers key must be mapped: an unmapped
key raises, so a model outside that structure cannot silently produce an incomplete checkpoint.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# diffusers resnet names -> LDM ResBlock names (UNet)
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers VAE attention names -> LDM AttnBlock names
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {"conv_norm_out": "norm_out"}


def _unet_resnet_tail(tail: str) -> str:
    name, _, param = tail.rpartition(".")  # e.g. "norm1", "weight"
    return f"{_UNET_RESNET[name]}.{param}"


def unet_to_ldm(
    state_dict: dict[str, torch.Tensor], layers_per_block: int, num_levels: int
) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict -> LDM ``openaimodel.UNetModel`` keys (without prefix)."""
    per_level = layers_per_block + 1  # resnets (+ attentions) and the down/upsampler slot
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = None
        for old, ldm in _UNET_TOP.items():
            if key.startswith(old + "."):
                new = ldm + key[len(old) :]
        if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, tail = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * per_level + j}.0.{_unet_resnet_tail(tail)}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, j, tail = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * per_level + j}.1.{tail}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            b, tail = int(m[1]), m[2]
            new = f"input_blocks.{(b + 1) * per_level}.0.op.{tail}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            j, tail = int(m[1]), m[2]
            new = f"middle_block.{2 * j}.{_unet_resnet_tail(tail)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            b, j, tail = int(m[1]), int(m[2]), m[3]
            new = f"output_blocks.{b * per_level + j}.0.{_unet_resnet_tail(tail)}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            b, j, tail = int(m[1]), int(m[2]), m[3]
            new = f"output_blocks.{b * per_level + j}.1.{tail}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b, tail = int(m[1]), m[2]
            # The upsampler follows the last resnet of the level, after its attention when the level has one.
            has_attention = any(k.startswith(f"up_blocks.{b}.attentions.") for k in state_dict)
            new = f"output_blocks.{b * per_level + layers_per_block}.{2 if has_attention else 1}.conv.{tail}"
        if new is None:
            raise KeyError(f"no LDM name for the UNet key {key!r}")
        out[new] = value
    # The LDM layout has no other place for levels: check the block count the loader will infer.
    assert (
        len({k.split(".")[1] for k in out if k.startswith("input_blocks.")}) == 1 + num_levels * per_level - 1
    )
    return out


def _vae_resnet(prefix_ldm: str, tail: str) -> str:
    return f"{prefix_ldm}.{tail.replace('conv_shortcut', 'nin_shortcut')}"


def vae_to_ldm(state_dict: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict -> LDM ``AutoencoderKL`` keys (without prefix).

    The original attention of the VAE mid blocks uses 1x1 convolutions (``q``, ``k``, ``v``, ``proj_out`` weights of
    shape (C, C, 1, 1)); diffusers uses linear layers of shape (C, C). The decoder's levels are numbered in reverse.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = None
        if m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(.+)", key):
            new = key
        elif m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)", key):
            new = f"{m[1]}.{_VAE_TOP.get(m[2], m[2])}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = _vae_resnet(f"encoder.down.{m[1]}.block.{m[2]}", m[3])
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = _vae_resnet(f"decoder.up.{num_levels - 1 - int(m[1])}.block.{m[2]}", m[3])
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = _vae_resnet(f"{m[1]}.mid.block_{int(m[2]) + 1}", m[3])
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[2] != "group_norm" and m[3] == "weight":
                value = value[:, :, None, None]  # linear (C, C) -> 1x1 conv (C, C, 1, 1)
        if new is None:
            raise KeyError(f"no LDM name for the VAE key {key!r}")
        out[new] = value
    return out


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict -> the keys under ``cond_stage_model.transformer.``.

    The original wraps a ``CLIPTextModel`` whose keys start with ``text_model.``; transformers >= 5.6 flattened the
    class (no ``text_model.`` level), so the prefix is added where missing.
    """
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in state_dict.items()}


def to_ldm_checkpoint(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The three models' weights as one original-format state dict (contiguous CPU copies, safe to serialise).

    Also adds the non-weight tensors the released checkpoint carries (the noise schedule, CLIP's ``position_ids``):
    loaders must tolerate them.
    """
    ckpt: dict[str, torch.Tensor] = {}
    unet_sd = unet_to_ldm(
        unet.state_dict(), unet.config.layers_per_block, len(unet.config.block_out_channels)
    )
    ckpt.update({UNET_PREFIX + k: v for k, v in unet_sd.items()})
    ckpt.update(
        {
            VAE_PREFIX + k: v
            for k, v in vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels)).items()
        }
    )
    ckpt.update({CLIP_PREFIX + k: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()})
    ckpt[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(
        text_encoder.config.max_position_embeddings
    )[None]
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ckpt["betas"] = betas.float()
    ckpt["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt.items()}
