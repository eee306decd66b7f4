"""The method's guidance math as small pure tensor functions (paper section 3.2.1).

InstructPix2Pix conditions on an input image c_I and an instruction c_T. Trained with conditioning dropout, one
network provides the three predictions a sampler needs to steer towards both conditions with separate strengths.
"""

from __future__ import annotations

import torch


def dual_guidance(
    eps_text_image: torch.Tensor,
    eps_image: torch.Tensor,
    eps_uncond: torch.Tensor,
    text_scale: float,
    image_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance over two conditions (paper eq. 3).

    e~ = e(0, 0) + s_I * (e(c_I, 0) - e(0, 0)) + s_T * (e(c_I, c_T) - e(c_I, 0))

    Args:
        eps_text_image: prediction with both the image and the text condition, e(c_I, c_T).
        eps_image: prediction with the image condition and the null text, e(c_I, 0).
        eps_uncond: prediction with neither condition, e(0, 0).
        text_scale: s_T, how strongly to follow the instruction (paper default 7.5).
        image_scale: s_I, how strongly to stay close to the input image (paper default 1.5).

    Example:
        >>> e = dual_guidance(torch.ones(1), torch.zeros(1), torch.zeros(1), 7.5, 1.5)
        >>> float(e)
        7.5
    """
    if not (eps_text_image.shape == eps_image.shape == eps_uncond.shape):
        raise ValueError(
            f"the three predictions must have one shape, got {tuple(eps_text_image.shape)}, "
            f"{tuple(eps_image.shape)}, {tuple(eps_uncond.shape)}"
        )
    # The same expression, term for term, as diffusers' StableDiffusionInstructPix2PixPipeline, so that both
    # round identically in low precision and the parity test can demand equality.
    return eps_uncond + text_scale * (eps_text_image - eps_image) + image_scale * (eps_image - eps_uncond)


def conditioning_dropout_masks(
    uniform: torch.Tensor, prob: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples lose which condition during training (paper section 3.2.1, original ``ddpm_edit.py``).

    One uniform draw r per sample decides everything, so the three cases are disjoint:
    r < p drops the text only, p <= r < 2p drops both, 2p <= r < 3p drops the image only.

    Args:
        uniform: (B,) draws from U(0, 1).
        prob: p, the probability of each of the three cases (paper: 0.05).

    Returns:
        (drop_text, drop_image): two (B,) boolean tensors.
    """
    if not 0.0 <= prob <= 1.0 / 3.0:
        raise ValueError(f"conditioning dropout probability must lie in [0, 1/3], got {prob}")
    drop_text = uniform < 2 * prob
    drop_image = (uniform >= prob) & (uniform < 3 * prob)
    return drop_text, drop_image


def apply_conditioning_dropout(
    text_embeds: torch.Tensor,
    image_latents: torch.Tensor,
    null_text_embeds: torch.Tensor,
    uniform: torch.Tensor,
    prob: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace dropped text by the encoding of "" and dropped images by zeros (the original's null conditions).

    Args:
        text_embeds: (B, T, D) instruction encodings.
        image_latents: (B, C, h, w) input-image latents.
        null_text_embeds: (1, T, D) or (T, D) encoding of the empty prompt.
        uniform: (B,) draws from U(0, 1), one per sample.
        prob: probability of each of the three dropout cases.
    """
    drop_text, drop_image = conditioning_dropout_masks(uniform, prob)
    null = null_text_embeds.reshape(1, *text_embeds.shape[1:]).to(text_embeds)
    text = torch.where(drop_text[:, None, None], null, text_embeds)  # (B, T, D)
    image = image_latents * (~drop_image).to(image_latents.dtype)[:, None, None, None]  # (B, C, h, w)
    return text, image
