"""Images in and out: loading with validation, the original resize policy, grids and PNGs with metadata.

:func:`load_image` is the one way an image enters ip2p (the command line, batch editing, the pipeline, datasets,
evaluation, the web app). Every failure to decode is an :class:`ImageError` whose message is one line naming the
file and saying which failure it is, by its subclass (and ``kind``): :class:`NotAnImageError`,
:class:`UnsupportedImageError` (a format this installation cannot read, and what would read it),
:class:`CorruptImageError` (truncated or corrupt data) and :class:`TooManyPixelsError`. Metadata never costs the
pixels: EXIF that cannot be read or applied is ignored with an :class:`ImageWarning`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from PIL import EpsImagePlugin, Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from ip2p.edit_config import DEFAULT_MAX_PIXELS  # refused before decoding: a decompression-bomb guard
from ip2p.fileio import atomic_write

ResizeMode = Literal["fit", "pad", "crop"]


class ImageError(ValueError):
    """An input or output image problem; the message names the file and the reason.

    ``kind`` says which: ``"not-image"``, ``"unsupported"``, ``"corrupt"``, ``"too-large"`` (the subclasses
    below), ``"missing"`` (no such file), ``"unreadable"`` (e.g. no permission to read it) or ``"invalid"``
    (anything else, e.g. an output that cannot be written).
    """

    kind = "invalid"

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class NotAnImageError(ImageError):
    """The file is empty, a folder, or data that no image format recognises."""

    kind = "not-image"


class UnsupportedImageError(ImageError):
    """An image format (or a variant of one) that this installation cannot decode; the message says what would."""

    kind = "unsupported"


class CorruptImageError(ImageError):
    """A recognised format whose data is truncated or corrupt."""

    kind = "corrupt"


class TooManyPixelsError(ImageError):
    """More pixels than the limit (a decompression-bomb guard)."""

    kind = "too-large"


class ImageWarning(UserWarning):
    """Something about an image was ignored (e.g. unreadable EXIF) and the pixels were used as stored."""


# What reads a format that Pillow recognises but cannot decode here, by Pillow's format name.
_READERS = {
    "EPS": "Ghostscript (the `gs` program)",
    "WMF": "Pillow on Windows; elsewhere convert it to PNG first (e.g. with LibreOffice or Inkscape)",
    "EMF": "Pillow on Windows; elsewhere convert it to PNG first (e.g. with LibreOffice or Inkscape)",
    "HDF5": "h5py (HDF5 is a data container, not a picture: export the image as PNG first)",
    "BUFR": "a BUFR decoder such as eccodes (export the image as PNG first)",
    "GRIB": "a GRIB decoder such as eccodes or cfgrib (export the image as PNG first)",
}
# Formats Pillow does not recognise, by their leading bytes: (test, name, what would read it).
_SIGNATURES = [
    (
        lambda head: head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"),
        "a HEIF/HEIC photo",
        "the pillow-heif plugin",
    ),
    (
        lambda head: head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"),
        "an AVIF image",
        "Pillow built with AVIF support",
    ),
    (
        lambda head: head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")),
        "a JPEG XL image",
        "the pillow-jxl-plugin package",
    ),
    (
        lambda head: head.startswith(b"%PDF"),
        "a PDF document",
        "a PDF renderer (export the page as PNG first)",
    ),
    (lambda head: head.startswith(b"%!PS"), "a PostScript file", "Ghostscript (the `gs` program)"),
    (
        lambda head: b"<svg" in head[:1024].lower(),
        "an SVG vector image",
        "a rasteriser such as cairosvg or Inkscape (export it as PNG first)",
    ),
]

_show_decoder_messages = False
_stderr_lock = threading.Lock()


def show_decoder_messages(show: bool) -> None:
    """Let decoders' own messages (libtiff's, written straight to the terminal) through, or keep them off it
    (the default: a failure's message then carries them)."""
    global _show_decoder_messages
    _show_decoder_messages = show


@contextlib.contextmanager
def _captured_stderr(sink: list[str]) -> Iterator[None]:
    """Hold what C libraries write to file descriptor 2 (libtiff prints its errors there) and append it to
    ``sink``, unless :func:`show_decoder_messages` let them through."""
    if _show_decoder_messages:
        yield
        return
    with _stderr_lock, tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        try:
            os.dup2(held.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            sink.extend(line for line in held.read().decode("utf-8", "replace").splitlines() if line.strip())


def load_image(
    source: str | os.PathLike | bytes | IO[bytes] | Image.Image,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
) -> Image.Image:
    """Open and normalise an image to 8-bit RGB: the one way an image enters ip2p.

    EXIF orientation is applied (EXIF that cannot be read or applied is ignored with an :class:`ImageWarning`);
    16-bit, CMYK, palette and grayscale images are converted; transparency is composited on white; animated
    images give their first frame. A PIL image that is already decoded is not decoded again: it is only
    converted to RGB (and checked against ``max_pixels``).

    Args:
        source: a path, the file's bytes, a binary file object, or a PIL image.
        max_pixels: refuse images with more pixels (checked on the header, before decoding).
        name: how messages name the image (default: its path, or "the image").

    Raises:
        ImageError: one line naming the file; its subclass says which failure: :class:`NotAnImageError`,
            :class:`UnsupportedImageError`, :class:`CorruptImageError`, :class:`TooManyPixelsError` (or the base
            class with ``kind="missing"`` for a path that does not exist).

    Example::

        try:
            image = load_image("photo.jpg")
        except ImageError as exc:
            print(exc.kind, exc)   # e.g. corrupt photo.jpg: truncated or corrupt JPEG data (...)
    """
    if isinstance(source, Image.Image):
        return _decoded(source, max_pixels, name or getattr(source, "filename", "") or "the image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "the image"
        if len(source) == 0:
            raise NotAnImageError(f"{label}: the file is empty")
        return _decode(io.BytesIO(bytes(source)), max_pixels, label)
    if hasattr(source, "read"):
        return _decode(source, max_pixels, name or str(getattr(source, "name", "") or "the image"))
    path = Path(source)
    label = name or str(path)
    try:
        if path.is_dir():
            raise NotAnImageError(f"{label}: is a folder, not an image")
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file", kind="missing") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})", kind="unreadable") from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise NotAnImageError(f"{label}: the file is empty")
        return _decode(handle, max_pixels, label)


def _decoded(image: Image.Image, max_pixels: int, name: str) -> Image.Image:
    """A PIL image from the caller: opened lazily (``Image.open``) it is decoded here; decoded, only converted."""
    if isinstance(image, ImageFile.ImageFile) and image.tile:  # tiles left to decode: not loaded yet
        return _finish(image, max_pixels, name)
    _check_size(image.size, max_pixels, name)
    return _to_rgb_checked(image, name)


def _decode(handle: IO[bytes], max_pixels: int, name: str) -> Image.Image:
    suffix = Path(str(getattr(handle, "name", ""))).suffix
    head = handle.read(1024)
    handle.seek(0)
    try:
        try:
            with warnings.catch_warnings():
                # our own limit is checked on the header (in _finish); Pillow's (about 89 MP) would refuse more
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                warnings.simplefilter("ignore", UserWarning)  # broken metadata: _apply_exif reports its loss
                image = Image.open(handle)
        except UnidentifiedImageError:
            raise _unidentified(head, name, suffix) from None
        except Exception as exc:
            raise _failure(exc, name, _sniff_format(head, suffix)) from None
        return _finish(image, max_pixels, name)
    except CorruptImageError as exc:
        if "MAX_TEXT_CHUNK" not in str(exc):
            raise
    # A PNG text chunk that decompresses past Pillow's limit (a metadata bomb): the pixels without the text.
    handle.seek(0)
    stripped = _without_png_text(handle.read())
    warnings.warn(
        f"{name}: PNG text metadata ignored (it decompresses too large)", ImageWarning, stacklevel=3
    )
    try:
        image = Image.open(io.BytesIO(stripped))
    except Exception as exc:
        raise _failure(exc, name, "PNG") from None
    return _finish(image, max_pixels, name)


def _without_png_text(data: bytes) -> bytes:
    """A PNG's bytes without its text chunks (tEXt, zTXt, iTXt); the rest as it was."""
    out, pos = [data[:8]], 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


def _sniff_format(head: bytes, suffix: str = "") -> str | None:
    """The format whose signature ``head`` carries (Pillow's own tests), or None. The extension's format is
    asked first; one without a signature (TGA) is not guessed from others' (a TGA header passes CUR's test)."""
    Image.init()
    own = Image.registered_extensions().get(suffix.lower())
    if own in Image.OPEN:
        accept = Image.OPEN[own][1]
        with contextlib.suppress(Exception):
            if accept is None or accept(head) is True:
                return own if accept is not None else None
    for fmt, (_, accept) in Image.OPEN.items():
        with contextlib.suppress(Exception):
            if accept is not None and accept(head) is True:
                return fmt
    return None


def _finish(image: Image.Image, max_pixels: int, name: str) -> Image.Image:
    """Check, decode, orient and convert an opened image."""
    fmt = image.format or "image"
    _check_size(image.size, max_pixels, name)
    _check_readable(image, name)
    chatter: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            with _captured_stderr(chatter) if fmt == "TIFF" else contextlib.nullcontext():
                image.load()
    except Exception as exc:
        raise _failure(exc, name, fmt, chatter) from None
    _check_size(image.size, max_pixels, name)  # some formats pick their frame's size when loading (ICO, ICNS)
    return _to_rgb_checked(_apply_exif(image, name), name)


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
            "(raise it with --max-pixels if this image is trusted)"
        )
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"{name}: has a zero-sized side ({width}x{height})")


def _check_readable(image: Image.Image, name: str) -> None:
    """Refuse, before decoding, formats that Pillow recognises but has no decoder for here."""
    fmt = image.format or ""
    if fmt == "EPS" and not EpsImagePlugin.has_ghostscript():
        raise UnsupportedImageError(
            f"{name}: an EPS (PostScript) image; reading it needs {_READERS['EPS']}, which is not installed"
        )
    if isinstance(image, ImageFile.StubImageFile) and image._load() is None:
        reader = _READERS.get(fmt, "a reader of this format (convert it to PNG first)")
        raise UnsupportedImageError(
            f"{name}: a file in the {fmt} format, which this installation cannot read; it needs {reader}"
        )


def _unidentified(head: bytes, name: str, suffix: str = "") -> ImageError:
    for test, what, reader in _SIGNATURES:
        if test(head):
            return UnsupportedImageError(
                f"{name}: {what}, which this installation cannot read; it needs {reader}"
            )
    fmt = _sniff_format(head, suffix)
    if fmt is not None:  # its signature, but Pillow's reader gave up on the header
        return CorruptImageError(f"{name}: truncated or corrupt {fmt} data (its header cannot be read)")
    if not head.strip(b"\x00"):
        return NotAnImageError(f"{name}: not an image (the file holds only zero bytes)")
    return NotAnImageError(f"{name}: not an image file (no image format recognises its contents)")


def _failure(exc: BaseException, name: str, fmt: str | None, chatter: list[str] = ()) -> ImageError:
    """The typed error of a decoding failure (any exception a decoder raises)."""
    if isinstance(exc, ImageError):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return TooManyPixelsError(f"{name}: too many pixels to be a safe image ({exc})")
    if isinstance(exc, MemoryError):
        return TooManyPixelsError(f"{name}: too large to decode in the memory available")
    what = f"{fmt} " if fmt and fmt != "image" else ""
    if isinstance(exc, NotImplementedError):
        return UnsupportedImageError(
            f"{name}: a {what}variant that Pillow cannot decode ({exc}); convert it to PNG with another tool"
        )
    if isinstance(exc, OSError) and "Ghostscript" in str(exc):
        return UnsupportedImageError(f"{name}: an EPS (PostScript) image; reading it needs {_READERS['EPS']}")
    detail = "; ".join([str(exc) or type(exc).__name__, *chatter[:2]]).replace("\n", " ")
    return CorruptImageError(f"{name}: truncated or corrupt {what}data ({detail})")


def _apply_exif(image: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation; EXIF that cannot be read or applied is ignored with one warning (the pixels
    are good: a broken metadata block must not cost them)."""
    problem = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = ImageOps.exif_transpose(image) or image
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
    problem = problem or next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), None)
    if problem is not None:
        problem = " ".join(problem.split())
        warnings.warn(f"{name}: EXIF metadata ignored ({problem})", ImageWarning, stacklevel=5)
    return image


def _to_rgb_checked(image: Image.Image, name: str) -> Image.Image:
    try:
        return _to_rgb(image)
    except Exception as exc:
        raise UnsupportedImageError(
            f"{name}: pixels of mode {image.mode} cannot be converted to RGB ({exc})"
        ) from None


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
