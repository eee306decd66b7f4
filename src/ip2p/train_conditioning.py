"""What training conditions the editing UNet on besides the images (paper section 3.2), for SD and SDXL editors.

One interface for both families: instructions -> named per-example tensors (what a batch carries and the latent
cache stores), the null text that conditioning dropout puts in their place, and the keyword arguments of the UNet
call. Stable Diffusion conditions on the text encoder's last hidden states; SDXL on both text encoders'
penultimate states, the second one's pooled output and six size ids, as diffusers'
``train_instruct_pix2pix_sdxl.py`` does.

Training conditions on exactly what ``EditPipeline`` feeds at editing time, which differs from diffusers' SDXL
script in one place: the null text. The script drops the hidden states to the encoded "" and keeps the pooled text,
while its own pipeline's null branches (and ours) feed zeros for both where the model sets
``force_zeros_for_empty_prompt``. Here dropout puts in what editing's null branches take: zeros (hidden states and
pooled) under ``force_zeros_for_empty_prompt``, else the encoded "" (both). The size ids are those of editing at the
training resolution: (original size, crop top-left, target size) = ((r, r), (0, 0), (r, r)).
"""

from __future__ import annotations

from typing import Any

import torch

from ip2p.guidance import conditioning_dropout_masks
from ip2p.text_encoding import encode_prompts, encode_prompts_sdxl


def frozen_dtypes(components: Any, weight_dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The frozen modules of training by component name (the VAE, the text encoder or two) and the dtype each runs
    in: the mixed-precision dtype, except an SDXL VAE that asks for ``force_upcast`` under fp16, which overflows
    there and stays in fp32 (as diffusers' SDXL pipelines and training script keep it).

    Example:
        >>> frozen_dtypes(tiny_sdxl_components(edit=False), torch.float16)
        {'vae': torch.float32, 'text_encoder': torch.float16, 'text_encoder_2': torch.float16}
    """
    upcast = (
        components.is_sdxl
        and weight_dtype == torch.float16
        and getattr(components.vae.config, "force_upcast", False)
    )
    dtypes = {"vae": torch.float32 if upcast else weight_dtype, "text_encoder": weight_dtype}
    if components.text_encoder_2 is not None:
        dtypes["text_encoder_2"] = weight_dtype
    return dtypes


class TextConditioning:
    """Stable Diffusion's: instructions -> ``{"text": (B, T, D)}`` last hidden states; the null text is the
    encoding of "" (the original's, not zeros).

    Example:
        >>> cond = text_conditioning(components, "cpu", resolution=256)
        >>> batch = cond.encode(["make it red"])  # {"text": (1, 77, 768)}
        >>> pred = unet(x, t, **cond.unet_inputs(batch, x.dtype)).sample
    """

    keys: tuple[str, ...] = ("text",)

    def __init__(self, components: Any, device: torch.device | str, resolution: int):
        self.components = components
        self.device = torch.device(device)
        self.resolution = resolution
        self.null = self._null()  # name -> (1, ...)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """(B,) instructions -> name -> (B, ...) float32 tensors on the device."""
        c = self.components
        return {"text": encode_prompts(c.tokenizer, c.text_encoder, texts, self.device, torch.float32)}

    def _null(self) -> dict[str, torch.Tensor]:
        return self.encode([""])

    def drop(self, cond: dict[str, torch.Tensor], drop_text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each tensor of ``cond`` replaced by the null text's where ``drop_text`` (B,) is True."""
        out = {}
        for name, value in cond.items():
            mask = drop_text.reshape(-1, *[1] * (value.ndim - 1))  # (B, 1, ...)
            out[name] = torch.where(mask, self.null[name].to(value), value)
        return out

    def dropout(
        self, cond: dict[str, torch.Tensor], image: torch.Tensor, uniform: torch.Tensor, prob: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Conditioning dropout (paper section 3.2.1): the null text where the text is dropped, zeros for the
        (B, 4, h, w) image latents where the image is, both decided by one uniform draw (B,) per example."""
        drop_text, drop_image = conditioning_dropout_masks(uniform, prob)
        image = image * (~drop_image).to(image.dtype)[:, None, None, None]  # (B, 4, h, w)
        return self.drop(cond, drop_text), image

    def unet_inputs(self, cond: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        """The UNet call's keyword arguments for a batch's conditioning."""
        return {"encoder_hidden_states": cond["text"].to(dtype)}


class SDXLTextConditioning(TextConditioning):
    """SDXL's: instructions -> ``{"text": (B, T, D1 + D2), "text_pooled": (B, P)}``, with the size ids of a
    ``resolution`` square beside them in the UNet call (``added_cond_kwargs``)."""

    keys = ("text", "text_pooled")

    def __init__(self, components: Any, device: torch.device | str, resolution: int):
        unet, encoder = components.unet, components.text_encoder_2
        if encoder is None:
            raise ValueError(
                "an SDXL UNet needs SDXL's second text encoder (text_encoder_2); the model has none"
            )
        pooled = encoder.config.projection_dim
        expected = unet.add_embedding.linear_1.in_features
        if unet.config.addition_time_embed_dim * 6 + pooled != expected:
            raise ValueError(
                f"the UNet's added embedding takes {expected} features, but 6 size ids x "
                f"{unet.config.addition_time_embed_dim} + pooled text {pooled} were given: the UNet and the second "
                "text encoder do not belong together"
            )
        super().__init__(components, device, resolution)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        c = self.components
        text, pooled = encode_prompts_sdxl(
            [c.tokenizer, c.tokenizer_2],
            [c.text_encoder, c.text_encoder_2],
            texts,
            self.device,
            torch.float32,
        )
        return {"text": text, "text_pooled": pooled}  # (B, T, D1 + D2), (B, P)

    def _null(self) -> dict[str, torch.Tensor]:
        encoded = self.encode([""])
        if self.components.info.get("force_zeros_for_empty_prompt", True):
            return {name: torch.zeros_like(value) for name, value in encoded.items()}
        return encoded

    def time_ids(self, batch_size: int) -> torch.Tensor:
        """(B, 6): original size, crop top-left, target size, as editing feeds them for a square of the side."""
        r = self.resolution
        return torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=self.device).expand(
            batch_size, -1
        )

    def unet_inputs(self, cond: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, Any]:
        pooled = cond["text_pooled"]
        added = {"text_embeds": pooled.to(dtype), "time_ids": self.time_ids(len(pooled)).to(dtype)}
        return {"encoder_hidden_states": cond["text"].to(dtype), "added_cond_kwargs": added}


def text_conditioning(components: Any, device: torch.device | str, resolution: int) -> TextConditioning:
    """The conditioning of the model's family: SDXL's for SDXL components, else Stable Diffusion's."""
    cls = SDXLTextConditioning if components.is_sdxl else TextConditioning
    return cls(components, device, resolution)
