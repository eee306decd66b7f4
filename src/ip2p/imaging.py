"""Images in and out: loading with validation, the original resize policy, grids and PNGs with metadata.

Every failure is an ``ImageError`` whose message is one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ip2p.fileio import atomic_write

# Refuse images above this many pixels before decoding them (a "decompression bomb" guard). 40 MP covers
# any photograph; the edit itself runs at `resolution` (512 px) anyway.
DEFAULT_MAX_PIXELS = 40_000_000

ResizeMode = Literal["fit", "pad", "crop"]


class ImageError(ValueError):
    """An input or output image problem; the message names the file and the reason."""


def load_image(source: str | os.PathLike | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and normalise an image to 8-bit RGB.

    EXIF orientation is applied; 16-bit, CMYK, palette and grayscale images are converted; transparency is
    composited on white; animated images give their first frame.

    Raises:
        ImageError: the file is missing, empty, truncated, not an image, or larger than ``max_pixels``.
    """
    if isinstance(source, Image.Image):
        image, name = source, "image"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if path.is_dir():
            raise ImageError(f"{name}: is a folder, not an image")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: the file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
        except UnidentifiedImageError as exc:
            raise ImageError(f"{name}: not an image file that PIL can read") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{name}: too many pixels to be a safe image ({exc})") from exc
        except OSError as exc:
            raise ImageError(f"{name}: cannot be read ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(raise it with --max-pixels if this image is trusted)"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{name}: has a zero-sized side ({width}x{height})")
    try:
        image.load()
        image = _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: truncated or corrupt image data ({exc})") from exc
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, with alpha composited on white (what a viewer shows)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: PIL's convert("L") clips instead of scaling.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.clip(np.asarray(image) * (255.0 if np.asarray(image).max() <= 1.0 else 1.0), 0, 255)
        return Image.fromarray(array.astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return image


def original_edit_size(width: int, height: int, resolution: int = 512, multiple: int = 64) -> tuple[int, int]:
    """The original ``edit_cli.py`` size: long side scaled to ``resolution``, the short side rounded *up* to a
    multiple, the long side rounded down (so the long side can exceed ``resolution``: 1000x630 -> 576x384)."""
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / multiple) * multiple / min(width, height)
    new_width = int((width * factor) // multiple) * multiple
    new_height = int((height * factor) // multiple) * multiple
    return max(new_width, multiple), max(new_height, multiple)


@dataclass(frozen=True)
class Prepared:
    """An image ready for the model, and how to map a result back to the input's frame."""

    image: Image.Image
    original_size: tuple[int, int]
    content_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the real content in `image`


def prepare_image(
    image: Image.Image,
    resolution: int = 512,
    mode: ResizeMode = "fit",
    multiple: int = 64,
    exact_multiple: int = 8,
) -> Prepared:
    """Resize for editing.

    Args:
        image: an RGB image.
        resolution: target length of the long side.
        mode: ``"fit"`` is the original's policy (``original_edit_size`` then a centre fit with LANCZOS);
            ``"pad"`` keeps the exact aspect ratio, scales the long side to ``resolution`` and pads (edge pixels)
            to multiples of ``exact_multiple``; ``"crop"`` does the same but centre-crops to those multiples.
        multiple: side multiple of the ``"fit"`` policy (64 for SD: VAE factor 8 times UNet downsampling 8).
        exact_multiple: side multiple of ``"pad"`` and ``"crop"`` (the VAE's factor: 8 for SD).
    """
    if resolution < multiple:
        raise ImageError(f"resolution {resolution} is below the model's size multiple {multiple}")
    width, height = image.size
    if mode == "fit":
        size = original_edit_size(width, height, resolution, multiple)
        fitted = ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)
        return Prepared(fitted, (width, height), (0, 0, *size))
    if mode not in ("pad", "crop"):
        raise ImageError(f"unknown resize mode {mode!r}; choose fit, pad or crop")
    scale = resolution / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    scaled = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    if mode == "crop":
        crop_w = max(exact_multiple, new_w // exact_multiple * exact_multiple)
        crop_h = max(exact_multiple, new_h // exact_multiple * exact_multiple)
        cropped = ImageOps.fit(scaled, (crop_w, crop_h), method=Image.Resampling.LANCZOS)
        return Prepared(cropped, (width, height), (0, 0, crop_w, crop_h))
    pad_w = math.ceil(new_w / exact_multiple) * exact_multiple
    pad_h = math.ceil(new_h / exact_multiple) * exact_multiple
    array = np.asarray(scaled)
    left, top = (pad_w - new_w) // 2, (pad_h - new_h) // 2
    padded = np.pad(array, ((top, pad_h - new_h - top), (left, pad_w - new_w - left), (0, 0)), mode="edge")
    return Prepared(Image.fromarray(padded), (width, height), (left, top, left + new_w, top + new_h))


def restore_image(result: Image.Image, prepared: Prepared, to_original_size: bool = True) -> Image.Image:
    """Remove padding from an edited image and (optionally) resize it to the input's original size."""
    out = result.crop(prepared.content_box) if prepared.content_box != (0, 0, *result.size) else result
    if to_original_size and out.size != prepared.original_size:
        out = out.resize(prepared.original_size, Image.Resampling.LANCZOS)
    return out


def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> (B, 3, H, W) float tensor in [-1, 1]."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # (B, H, W, 3)
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) tensor in [-1, 1] -> RGB images, rounded as diffusers' image processor does."""
    array = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (B, H, W, 3)
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Write a matplotlib figure as a PNG through a temporary file of its own and a rename: never half-written,
    and safe when several processes write the same figure at once (job-array workers each write the report)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", **savefig_kwargs)
    return path


def save_png(image: Image.Image, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a PNG with ``metadata`` as text chunks, through a temporary file and a rename (never half-written)."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise ImageError(f"{path}: is a folder; give a file name for the output")
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, str(value))
    with contextlib.ExitStack() as stack:
        try:  # a folder that cannot be made or written to is the user's to fix; later errors are the disk's
            handle = stack.enter_context(atomic_write(path, "wb"))
        except OSError as exc:
            raise ImageError(f"{path}: cannot write the output ({exc.strerror or exc})") from exc
        image.save(handle, format="PNG", pnginfo=info)
    return path


def make_grid(images: list[Image.Image], columns: int, labels: list[str] | None = None) -> Image.Image:
    """Tile equally sized images row by row (for validation and evaluation figures)."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    label_h = 12 if labels else 0
    grid = Image.new("RGB", (columns * width, rows * (height + label_h)), "white")
    if labels:
        from PIL import ImageDraw

        draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % columns) * width, (i // columns) * (height + label_h)
        grid.paste(image.resize((width, height)), (x, y + label_h))
        if labels:
            draw.text((x + 2, y), labels[i][: max(1, width // 6)], fill="black")
    return grid
