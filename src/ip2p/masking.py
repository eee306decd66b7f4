"""Masks for region-constrained editing: the edit acts inside the mask and leaves the rest of the input exactly.

A mask is 1 (white) where the edit may act and 0 (black) where the input must be kept. Two mechanisms, as in blended
latent diffusion (Avrahami et al. 2023, Algorithm 1):

- during sampling, after every step the latents outside the (latent-size) mask are replaced by the input's latents
  noised to the level the sampler has reached (:func:`blend_latents`, driven by ``ip2p.sampling.denoise``'s
  ``post_step``);
- after decoding, the pixels outside a mask feathered inwards are pasted back from the input
  (:func:`paste_back`), so that they equal the input's exactly.

Automatic masks follow DiffEdit (Couairon et al. 2023, section 3.1): the editor's noise predictions with and without
the instruction (both with the image), on the input noised to a middle level over a few noise draws, differ where
the instruction acts; their absolute difference averaged over channels and draws, normalised to [0, 1] and
thresholded is the mask (:func:`difference_map`, :func:`threshold_map`). ``EditPipeline`` makes the UNet calls.

Example::

    mask = load_mask("mask.png", size=image.size)            # (H, W) float 0/1, resized to the image
    result = pipe(image, "make the circle green", mask=mask)  # pixels where mask == 0 equal the input's
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from ip2p.imaging import Prepared

MASK_THRESHOLD = 0.5  # DiffEdit's threshold on the normalised difference map
MASK_DRAWS = 4  # noise draws averaged by the automatic mask (DiffEdit uses 10; the map is stable with fewer)
MASK_STRENGTH = 0.5  # the noise level of those draws, a fraction of the training schedule (DiffEdit's 50%)
FEATHER_FRACTION = 64  # default feather radius: the image's long side / 64 (8 px at 512 px, 1 px at 64 px)

MaskLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


class MaskError(ValueError):
    """A mask that cannot be used (not an image, the wrong shape); one line naming it."""


# -- reading ---------------------------------------------------------------------------------------------------
def load_mask(source: MaskLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask as a (H, W) float32 array of 0 and 1 (1: the edit may act), resized to ``size`` = (W, H) if given.

    ``source`` is a file, a PIL image, or a (H, W) array or tensor (bool, or numbers in [0, 1]). An image's alpha
    channel is the mask where it has transparent pixels (a brush layer painted on a transparent canvas), else its
    brightness; values from half up are 1. A mask of another size than the image is resized (nearest), not refused.

    Raises:
        MaskError: a missing file, a file that is not an image, or an array that is not 2-D.
    """
    if isinstance(source, torch.Tensor):
        source = source.detach().float().cpu().numpy()
    if isinstance(source, np.ndarray):
        array = np.squeeze(source)
        if array.ndim != 2:
            raise MaskError(f"a mask array must be 2-D (H, W), got shape {tuple(source.shape)}")
        mask = (array.astype(np.float32) >= 0.5).astype(np.float32)
    else:
        mask = _image_mask(source if isinstance(source, Image.Image) else _open(Path(source)))
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = resize_mask(mask, size)
    return mask


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise MaskError(f"{path}: no such mask file") from None
    except IsADirectoryError:
        raise MaskError(f"{path}: is a folder, not a mask image") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise MaskError(f"{path}: not a readable mask image ({detail})") from None


def _image_mask(image: Image.Image) -> np.ndarray:
    """(H, W) 0/1 from an image: its alpha where some pixels are transparent, else its brightness, at 128."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            return (alpha >= 128).astype(np.float32)
    return (np.asarray(image.convert("L")) >= 128).astype(np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) 0/1 -> the same mask at ``size`` = (W, H), nearest neighbour (stays 0/1)."""
    image = Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    return (np.asarray(image) >= 128).astype(np.float32)


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) 0/1 -> an "L" image, white where the edit may act (what ``--save-mask`` writes)."""
    return Image.fromarray((np.asarray(mask) * 255).round().astype(np.uint8), mode="L")


# -- latents -------------------------------------------------------------------------------------------------------
def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, H, W) pixel mask -> (B, 1, H/f, W/f) latent mask: a latent cell may change if any of its pixels may.

    Max-pooling rather than BLD's nearest downsampling keeps thin strokes (BLD dilates such masks by hand)."""
    return F.max_pool2d(mask[:, None].float(), kernel_size=factor, stride=factor)


def blend_latents(latents: torch.Tensor, mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """BLD's blend (Avrahami et al. 2023, Algorithm 1): the sampler's latents inside ``mask`` (B, 1, h, w), the
    input's noised latents ``background`` outside. Exact where the mask is 1 (1 * x + 0 * y = x)."""
    mask = mask.to(latents.dtype)
    return latents * mask + background.to(latents.dtype) * (1 - mask)


# -- automatic masks (DiffEdit) ------------------------------------------------------------------------------------
def difference_map(pred_text: torch.Tensor, pred_null: torch.Tensor) -> torch.Tensor:
    """DiffEdit's map (Couairon et al. 2023, sec. 3.1): (B, K, C, h, w) predictions with and without the instruction
    over K noise draws -> (B, h, w) mean absolute difference over channels and draws, min-max normalised to [0, 1].

    For epsilon- and v-prediction alike the difference is proportional to that of the predicted clean latents (the
    noisy input is shared), so the map reads where the instruction would change the image."""
    diff = (pred_text.float() - pred_null.float()).abs().mean(dim=(1, 2))  # (B, h, w)
    low = diff.amin(dim=(1, 2), keepdim=True)
    high = diff.amax(dim=(1, 2), keepdim=True)
    return (diff - low) / (high - low).clamp_min(1e-12)


def threshold_map(diff: torch.Tensor, threshold: float = MASK_THRESHOLD, dilate: int = 1) -> torch.Tensor:
    """(B, h, w) map in [0, 1] -> (B, h, w) 0/1 mask: at least ``threshold``, then grown by ``dilate`` cells."""
    mask = (diff >= threshold).float()
    if dilate > 0:
        size = 2 * dilate + 1
        mask = F.max_pool2d(mask[:, None], kernel_size=size, stride=1, padding=dilate)[:, 0]
    return mask


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, h, w) latent-size 0/1 -> (B, h*f, w*f) pixel mask (each cell covers its f x f pixels)."""
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


# -- pixels --------------------------------------------------------------------------------------------------------
def default_feather(size: tuple[int, int]) -> int:
    """The feather radius in pixels when none is given: the long side / 64, at least 1."""
    return max(1, round(max(size) / FEATHER_FRACTION))


def feather_inward(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) 0/1 -> (H, W) alpha in [0, 1] rising from the mask's edge inwards over ``radius`` pixels.

    alpha = min(d, radius) / radius, with d the (chessboard) distance in pixels to the nearest pixel outside the
    mask: exactly 0 outside, 1 from ``radius`` pixels in; the image's border does not count as outside."""
    if radius <= 0:
        return np.asarray(mask, dtype=np.float32)
    x = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]  # (1, 1, H, W)
    total = torch.zeros_like(x)
    for _ in range(radius):  # erosion k times: 1 where d > k
        total += x
        x = -F.max_pool2d(
            -x, kernel_size=3, stride=1, padding=1
        )  # max_pool pads with -inf: the border is inside
    return (total / radius)[0, 0].numpy()


def paste_back(edited: Image.Image, original: Image.Image, mask: np.ndarray, feather: int) -> Image.Image:
    """BLD's last step: ``edited`` inside the mask, feathered inwards over ``feather`` pixels; ``original``'s exact
    pixels outside it. The three are of one size."""
    if edited.size != original.size or (mask.shape[1], mask.shape[0]) != edited.size:
        raise MaskError(
            f"paste-back needs one size: edited {edited.size}, input {original.size}, mask {mask.shape[::-1]}"
        )
    alpha = np.round(feather_inward(mask, feather) * 255).astype(np.uint8)
    # composite: alpha 255 takes `edited`, 0 takes `original` exactly
    return Image.composite(edited.convert("RGB"), original.convert("RGB"), Image.fromarray(alpha, mode="L"))


def mask_coverage(mask: np.ndarray) -> float:
    """The share of pixels the edit may change."""
    return float(np.asarray(mask).mean())


def diffedit_mask(
    predict,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generators: list[torch.Generator],
    *,
    draws: int = MASK_DRAWS,
    strength: float = MASK_STRENGTH,
    threshold: float = MASK_THRESHOLD,
    dilate: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffEdit's mask estimate (Couairon et al. 2023, sec. 3.1) for B inputs: returns the (B, h, w) 0/1 mask and
    the (B, h, w) normalised difference map. Costs ``2 * draws`` UNet evaluations per input (one batched call).

    Args:
        predict: ``(x_t (N, C, h, w), t) -> (with the instruction, without it)``, two (N, C, h, w) predictions of
            the editor, both conditioned on the input image.
        x0: (B, C, h, w) the inputs' latents in the sampler's space (scaled as the sampler's clean latents).
        alphas_cumprod: the training schedule's cumulative alphas (T,): x_t = sqrt(a) x0 + sqrt(1 - a) noise.
        generators: one per input, the source of its ``draws`` noise draws.
        strength: the noise level, a fraction of the schedule (t = strength * (T - 1)).
    """
    if not 0.0 < strength < 1.0:
        raise ValueError(f"the automatic mask's noise level must lie in (0, 1), got {strength}")
    if draws < 1:
        raise ValueError(f"the automatic mask needs at least one noise draw, got {draws}")
    b, c, h, w = x0.shape
    t = int(round(strength * (len(alphas_cumprod) - 1)))
    a = alphas_cumprod[t].to(torch.float32)
    noise = torch.stack(
        [torch.randn((draws, c, h, w), generator=g, dtype=torch.float32) for g in generators]
    ).to(x0.device)  # (B, D, C, h, w)
    xt = a.sqrt() * x0.float()[:, None] + (1 - a).sqrt() * noise  # (B, D, C, h, w)
    pred_text, pred_null = predict(xt.reshape(b * draws, c, h, w).to(x0.dtype), t)  # 2 x (B*D, C, h, w)
    diff = difference_map(pred_text.reshape(b, draws, c, h, w), pred_null.reshape(b, draws, c, h, w))
    return threshold_map(diff, threshold, dilate), diff


# -- an edit's masks in its frames ---------------------------------------------------------------------------------
def fit_mask(mask: MaskLike, prepared: Prepared, prepare: Callable[[Image.Image], Prepared]) -> np.ndarray:
    """A user's mask at the input's size, then through ``prepare`` (the input's own resize: fit, pad or crop):
    (H, W) 0/1 at the prepared image's size."""
    array = load_mask(mask, size=prepared.original_size)
    fitted = prepare(mask_image(array).convert("RGB")).image
    return (np.asarray(fitted)[..., 0] >= 128).astype(np.float32)


def paste_back_results(
    images: list[Image.Image],
    prepared: Prepared,
    original: Image.Image,
    mask: np.ndarray,
    given: MaskLike | None,
    config,
) -> tuple[list[Image.Image], Image.Image]:
    """BLD's paste-back in the results' own frame (``config.restore_size``: the input's size; else the prepared
    size without padding), so that the pixels outside the mask equal the input's there exactly.

    ``mask`` is the (H, W) mask at the prepared size; ``given`` the user's mask, if any (at the input's size it is
    used as given, not its round trip through the resize). Returns the images and the mask used, as an image."""
    left, top, right, bottom = prepared.content_box
    frame = mask[top:bottom, left:right]  # (H, W) without the padding
    if config.restore_size:
        reference = original
        frame = (
            load_mask(given, size=original.size) if given is not None else resize_mask(frame, original.size)
        )
    else:
        whole = prepared.content_box == (0, 0, *prepared.image.size)
        reference = prepared.image if whole else prepared.image.crop(prepared.content_box)
    feather = default_feather(reference.size) if config.mask_feather is None else config.mask_feather
    return [paste_back(im, reference, frame, feather) for im in images], mask_image(frame)
