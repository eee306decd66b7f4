"""A corpus of damaged, odd and valid image files, built in a folder, for tests of image intake.

Every case is ``Case(name, data, expect)``: ``name`` is a file name (its extension is the one a user would see),
``data`` the file's bytes, ``expect`` what a careful loader must do with it:

- ``"ok"``: a valid image (odd modes included: 16-bit, CMYK, palette, LA, P with transparency, broken EXIF on
  good pixels); it must load.
- ``"refused"``: not an image, a format no loader here reads, or too many pixels; it must be refused with a
  typed error, and ``kind`` names which (``"not-image"``, ``"unsupported"``, ``"too-large"``).
- ``"either"``: damaged data (truncated, corrupted headers, bit flips); it may load (decoders often pad a short
  file) or be refused, never anything else.

The cases cover every format Pillow can both write and read here (PNG, JPEG, GIF, BMP, TIFF, WebP, ICO, PPM, TGA,
...), each truncated at several offsets and with its header corrupted; EXIF blocks damaged (truncated EXIF, an
invalid EXIF header, a truncated DPI entry, bad orientation tags); headers claiming more pixels than
``MAX_PIXELS``; PNG text chunks that decompress too large; not-an-image files (text, empty, zeros); formats with
no loader (EPS without Ghostscript, WMF, HDF5, DDS pixel formats Pillow does not implement, FITS without data).

Example::

    from damaged_images import write_corpus
    for path, case in write_corpus(tmp_path, full=False):
        ...  # load path; check the outcome against case.expect / case.kind

``full=False`` is a small corpus for the default test suite (two truncations a format); ``full=True`` adds more
truncation offsets and bit flips for the slow sweep.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, features

# Headers in the corpus that claim too many pixels claim more than this; pass it as the loader's limit.
MAX_PIXELS = 2_000_000


@dataclass(frozen=True)
class Case:
    """One corpus file: its name, its bytes, the outcome a loader must give and (if refused) the error's kind."""

    name: str
    data: bytes
    expect: str  # "ok", "refused" or "either"
    kind: str | None = None  # for "refused": "not-image", "unsupported", "too-large", "corrupt"


def _picture(mode: str = "RGB", size: tuple[int, int] = (24, 16), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb if mode == "RGB" else rgb.convert(mode)


def _encode(image: Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


# (extension, Pillow format, mode, save keywords) of every format written and read here.
_FORMATS = [
    ("png", "PNG", "RGB", {}),
    ("jpg", "JPEG", "RGB", {"quality": 90}),
    ("gif", "GIF", "P", {}),
    ("bmp", "BMP", "RGB", {}),
    ("tif", "TIFF", "RGB", {}),
    ("tiff", "TIFF", "RGB", {"compression": "tiff_deflate"}),
    ("ico", "ICO", "RGBA", {}),
    ("ppm", "PPM", "RGB", {}),
    ("pgm", "PPM", "L", {}),
    ("tga", "TGA", "RGB", {}),
    ("tga", "TGA", "RGB", {"compression": "tga_rle"}),
    ("pcx", "PCX", "RGB", {}),
    ("sgi", "SGI", "RGB", {}),
    ("im", "IM", "RGB", {}),
    ("qoi", "QOI", "RGB", {}),
    ("dds", "DDS", "RGB", {}),
    ("blp", "BLP", "P", {}),
    ("xbm", "XBM", "1", {}),
    ("msp", "MSP", "1", {}),
    ("spi", "SPIDER", "F", {}),
    ("icns", "ICNS", "RGBA", {}),
]
if features.check("webp"):
    _FORMATS.append(("webp", "WEBP", "RGB", {"quality": 90}))
if features.check("jpg_2000"):
    _FORMATS.append(("jp2", "JPEG2000", "RGB", {}))
if features.check("avif"):
    _FORMATS.append(("avif", "AVIF", "RGB", {}))


def _valid_formats(full: bool) -> list[tuple[str, bytes]]:
    out = []
    for i, (ext, format, mode, kwargs) in enumerate(_FORMATS):
        if format == "ICNS" and not full:  # its writer encodes ten sizes up to 1024 px: a second of PNGs
            continue
        size = (32, 32) if format == "ICNS" else (24, 16)
        try:
            data = _encode(_picture(mode, size, seed=i), format, **kwargs)
        except (OSError, ValueError, KeyError):  # a writer this installation lacks
            continue
        out.append((f"{format.lower()}_{i}.{ext}", data))
    return out


def _odd_modes() -> list[Case]:
    cases = []
    gray16 = Image.fromarray(np.linspace(0, 65535, 24 * 16, dtype=np.uint16).reshape(16, 24))
    cases.append(Case("mode_i16.png", _encode(gray16, "PNG"), "ok"))
    cases.append(Case("mode_i16.tif", _encode(gray16, "TIFF"), "ok"))
    cases.append(Case("mode_cmyk.jpg", _encode(_picture("CMYK"), "JPEG"), "ok"))
    cases.append(Case("mode_cmyk.tif", _encode(_picture("CMYK"), "TIFF"), "ok"))
    cases.append(Case("mode_palette.png", _encode(_picture("P"), "PNG"), "ok"))
    cases.append(Case("mode_la.png", _encode(_picture("LA"), "PNG"), "ok"))
    cases.append(Case("mode_1.png", _encode(_picture("1"), "PNG"), "ok"))
    cases.append(Case("mode_f.tif", _encode(_picture("F"), "TIFF"), "ok"))
    cases.append(Case("mode_i32.tif", _encode(_picture("I"), "TIFF"), "ok"))
    transparent = _picture("P")
    cases.append(Case("mode_p_transparency.png", _encode(transparent, "PNG", transparency=0), "ok"))
    cases.append(Case("mode_p_transparency.gif", _encode(transparent, "GIF", transparency=0), "ok"))
    frames = [_picture("RGB", seed=s).convert("P") for s in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    cases.append(Case("animated.gif", animated.getvalue(), "ok"))
    return cases


# -- EXIF ------------------------------------------------------------------------------------------------------
def _exif_jpeg(exif_payload: bytes) -> bytes:
    """A valid JPEG whose APP1 segment holds ``exif_payload`` (after the ``Exif\\0\\0`` marker)."""
    jpeg = _encode(_picture(), "JPEG")
    segment = b"Exif\x00\x00" + exif_payload
    app1 = b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment
    return jpeg[:2] + app1 + jpeg[2:]


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A little-endian TIFF header and one IFD of (tag, type, count, 4-byte value) entries."""
    body = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
    return body + struct.pack("<I", 0) + extra


def _exif_cases() -> list[Case]:
    good = Image.Exif()
    good[0x0112] = 6  # orientation: rotate 90
    good[0x011A] = 72.0  # x resolution
    full = good.tobytes()[6:] if good.tobytes().startswith(b"Exif") else good.tobytes()
    cases = [
        Case("exif_ok_rotated.jpg", _exif_jpeg(full), "ok"),
        Case("exif_truncated.jpg", _exif_jpeg(full[: len(full) // 2]), "ok"),
        Case("exif_truncated_header.jpg", _exif_jpeg(b"II*\x00\x08\x00"), "ok"),
        Case("exif_invalid_header.jpg", _exif_jpeg(b"XXXX not a tiff header at all"), "ok"),
        Case("exif_empty.jpg", _exif_jpeg(b""), "ok"),
        # a DPI (x resolution, RATIONAL) entry pointing past the block's end
        Case(
            "exif_truncated_dpi.jpg", _exif_jpeg(_tiff_ifd([(0x011A, 5, 1, struct.pack("<I", 4000))])), "ok"
        ),
        Case(
            "exif_dpi_zero.jpg",
            _exif_jpeg(_tiff_ifd([(0x011A, 5, 1, struct.pack("<I", 26))], b"\0" * 8)),
            "ok",
        ),
        Case("exif_orientation_9.jpg", _exif_jpeg(_tiff_ifd([(0x0112, 3, 1, struct.pack("<H", 9))])), "ok"),
        Case("exif_orientation_0.jpg", _exif_jpeg(_tiff_ifd([(0x0112, 3, 1, struct.pack("<H", 0))])), "ok"),
        Case(
            "exif_orientation_ascii.jpg", _exif_jpeg(_tiff_ifd([(0x0112, 2, 4, b"abc\x00")])), "ok"
        ),  # orientation as text
        Case(
            "exif_orientation_count_huge.jpg",
            _exif_jpeg(_tiff_ifd([(0x0112, 3, 0x7FFFFFFF, struct.pack("<I", 100))])),
            "ok",
        ),
        Case(
            "exif_ifd_loop.jpg",
            _exif_jpeg(b"II*\x00" + struct.pack("<I", 8) + b"\x00\x00" + struct.pack("<I", 8)),
            "ok",
        ),
    ]
    webp_exif = None
    if features.check("webp"):
        webp_exif = _encode(_picture(), "WEBP", exif=b"Exif\x00\x00" + b"garbage!")
        cases.append(Case("exif_invalid.webp", webp_exif, "ok"))
    png = _encode(_picture(), "PNG", exif=b"Exif\x00\x00" + full[:10])
    cases.append(Case("exif_truncated.png", png, "ok"))
    return cases


# -- headers that lie ------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_with_size(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _oversized() -> list[Case]:
    side = int(MAX_PIXELS**0.5) + 100
    bmp = bytearray(_encode(_picture(), "BMP"))
    struct.pack_into("<ii", bmp, 18, side, side)
    gif = bytearray(_encode(_picture("P"), "GIF"))
    struct.pack_into("<HH", gif, 6, 60000, 60000)
    return [
        Case("oversized.png", _png_with_size(side, side), "refused", "too-large"),
        Case("oversized_bomb.png", _png_with_size(100_000, 100_000), "refused", "too-large"),
        Case("oversized.bmp", bytes(bmp), "refused", "too-large"),
        Case("oversized.gif", bytes(gif), "refused", "too-large"),
        Case("zero_width.png", _png_with_size(0, 16), "refused"),
    ]


def _text_bombs() -> list[Case]:
    """PNG text chunks that decompress past Pillow's limit, before and after the image data."""
    png = _encode(_picture(), "PNG")
    bomb = zlib.compress(b"a" * (2 * 1024 * 1024), 1)  # Pillow's MAX_TEXT_CHUNK is 1 MiB
    ztxt = _png_chunk(b"zTXt", b"comment\x00\x00" + bomb)
    itxt = _png_chunk(b"iTXt", b"comment\x00\x01\x00\x00\x00" + bomb)
    head = png[:33]  # signature + IHDR
    return [
        Case("text_bomb_before.png", head + ztxt + png[33:], "ok"),  # metadata: the pixels are good
        Case("text_bomb_after.png", png[:-12] + ztxt + png[-12:], "ok"),
        Case("itxt_bomb.png", head + itxt + png[33:], "ok"),
    ]


# -- not images, unreadable formats ----------------------------------------------------------------------------
def _not_images() -> list[Case]:
    return [
        Case("empty.png", b"", "refused", "not-image"),
        Case("text.jpg", b"hello, this is a text file and not a picture\n" * 3, "refused", "not-image"),
        Case("zeros.png", b"\x00" * 4096, "refused", "not-image"),
        Case("html.gif", b"<!DOCTYPE html><html><body>404 not found</body></html>", "refused", "not-image"),
        Case("random.webp", np.random.default_rng(0).bytes(2048), "refused", "not-image"),
        Case("png_signature_only.png", b"\x89PNG\r\n\x1a\n", "refused"),
    ]


def _dds(fourcc: bytes) -> bytes:
    header = bytearray(128)
    header[0:4] = b"DDS "
    struct.pack_into("<IIII", header, 4, 124, 0x1007, 16, 16)  # size, flags, height, width
    struct.pack_into("<II", header, 76, 32, 0x4)  # pixel format: size, DDPF_FOURCC
    header[84:88] = fourcc
    return bytes(header) + b"\x00" * 1024


def _fits(naxis: int) -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", f"NAXIS   = {naxis:>20}"]
    if naxis:
        cards += ["NAXIS1  =                   16", "NAXIS2  =                   16"]
    cards.append("END")
    header = "".join(c.ljust(80) for c in cards).ljust(2880)
    return header.encode("ascii") + b"\x00" * (2880 if naxis else 0)


def _unsupported() -> list[Case]:
    eps = (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
        b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"
    )
    wmf = b"\xd7\xcd\xc6\x9a\x00\x00" + struct.pack("<hhhh", 0, 0, 160, 160) + struct.pack("<H", 1440)
    wmf = wmf + b"\x00" * 4 + b"\x00\x00" + b"\x01\x00\x09\x00\x00\x03" + b"\x00" * 64
    return [
        Case("vector.eps", eps, "refused", "unsupported"),
        Case("clipart.wmf", wmf, "refused", "unsupported"),
        Case("data.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 512, "refused", "unsupported"),
        Case("unknown_fourcc.dds", _dds(b"ZZZZ"), "refused"),
        Case("atc.dds", _dds(b"ATC "), "refused"),
        Case("no_data.fits", _fits(0), "refused"),
    ]


# -- damage to valid files -------------------------------------------------------------------------------------
def _truncations(name: str, data: bytes, full: bool) -> list[Case]:
    stem, ext = name.rsplit(".", 1)
    fractions = (0.05, 0.3, 0.6, 0.9, 0.98) if full else (0.3, 0.9)
    offsets = sorted({max(1, int(len(data) * f)) for f in fractions} | ({8, 20, 64} if full else set()))
    return [Case(f"{stem}_cut{n}.{ext}", data[:n], "either") for n in offsets if n < len(data)]


def _corruptions(name: str, data: bytes, full: bool) -> list[Case]:
    stem, ext = name.rsplit(".", 1)
    cases = []
    header = bytearray(data)
    for i in range(4, min(len(header), 40)):  # keep the magic, scramble what follows
        header[i] ^= 0xA5
    cases.append(Case(f"{stem}_badheader.{ext}", bytes(header), "either"))
    if full:
        rng = np.random.default_rng(len(data))
        for k in range(3):
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), size=8):
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            cases.append(Case(f"{stem}_flip{k}.{ext}", bytes(flipped), "either"))
        middle = data[: len(data) // 3] + b"\xff" * 64 + data[len(data) // 3 + 64 :]
        cases.append(Case(f"{stem}_smeared.{ext}", middle, "either"))
    return cases


def _tiff_cases() -> list[Case]:
    """TIFFs whose second frame's offset points nowhere, and whose strips point past the end."""
    frames = io.BytesIO()
    _picture().save(frames, format="TIFF", save_all=True, append_images=[_picture(seed=1)])
    data = bytearray(frames.getvalue())
    first_ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first_ifd)[0]
    next_pointer = first_ifd + 2 + 12 * count
    bad_next = bytearray(data)
    struct.pack_into("<I", bad_next, next_pointer, len(data) + 10_000)
    return [
        Case("two_frames.tif", bytes(data), "ok"),
        Case("bad_next_frame.tif", bytes(bad_next), "either"),
        Case("ifd_past_end.tif", b"II*\x00" + struct.pack("<I", 1 << 30), "either"),
    ]


def corpus(full: bool = False) -> list[Case]:
    """Every case (small for the default suite, larger with ``full``); names are unique."""
    cases: list[Case] = []
    for name, data in _valid_formats(full):
        cases.append(Case(name, data, "ok"))
        cases += _truncations(name, data, full)
        cases += _corruptions(name, data, full)
    cases += _odd_modes() + _exif_cases() + _oversized() + _text_bombs()
    cases += _not_images() + _unsupported() + _tiff_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "corpus names must be unique"
    return cases


def write_corpus(folder: str | Path, full: bool = False) -> list[tuple[Path, Case]]:
    """Write the corpus into ``folder`` (made if missing); returns (path, case) pairs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for case in corpus(full):
        path = folder / case.name
        path.write_bytes(case.data)
        out.append((path, case))
    return out
