import io
import warnings

import numpy as np
import pytest
from damaged_images import MAX_PIXELS, write_corpus
from PIL import EpsImagePlugin, Image

from ip2p.imaging import (
    CorruptImageError,
    ImageError,
    ImageWarning,
    NotAnImageError,
    TooManyPixelsError,
    UnsupportedImageError,
    load_image,
    make_grid,
    original_edit_size,
    prepare_image,
    restore_image,
    save_png,
)


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_missing_empty_truncated_and_non_image_files(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated|corrupt|cannot be read"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_errors_are_one_line(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "text.png")
    assert "\n" not in str(info.value)


def test_pixel_limit_refuses_before_decoding(tmp_path):
    path = _save(Image.new("L", (3000, 3000)), tmp_path / "big.png")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path, max_pixels=10_000_000).size == (3000, 3000)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    array = np.full((8, 8), 32768, dtype=np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "16bit.png")
    image = load_image(path)
    assert image.mode == "RGB"
    assert abs(int(np.asarray(image)[0, 0, 0]) - 128) <= 1


def test_cmyk_palette_grayscale_become_rgb(tmp_path):
    cmyk = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    red = np.asarray(load_image(cmyk))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    palette = _save(Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"), tmp_path / "p.png")
    assert tuple(np.asarray(load_image(palette))[0, 0]) == (0, 0, 255)
    gray = _save(Image.new("L", (8, 8), 77), tmp_path / "l.png")
    assert tuple(np.asarray(load_image(gray))[0, 0]) == (77, 77, 77)


def test_alpha_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    loaded = np.asarray(load_image(_save(image, tmp_path / "a.png")))
    assert tuple(loaded[0, 0]) == (255, 0, 0)
    assert tuple(loaded[4, 4]) == (255, 255, 255)
    transparent_palette = Image.new("P", (4, 4), 0)
    transparent_palette.putpalette([10, 20, 30] * 256)
    transparent_palette.info["transparency"] = 0
    assert tuple(np.asarray(load_image(_save(transparent_palette, tmp_path / "tp.png")))[0, 0]) == (
        255,
        255,
        255,
    )


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_original_resize_policy_matches_edit_cli():
    assert original_edit_size(1000, 630) == (576, 384)  # the long side can exceed the resolution
    assert original_edit_size(512, 512) == (512, 512)
    assert original_edit_size(4000, 3000) == (512, 384)
    width, height = original_edit_size(333, 777, resolution=512)
    assert width % 64 == 0 and height % 64 == 0


def test_fit_pad_crop_and_restore():
    image = Image.new("RGB", (300, 200), "green")
    fit = prepare_image(image, 128, "fit", multiple=64)
    assert fit.image.size == (192, 128)
    pad = prepare_image(image, 100, "pad", exact_multiple=8)
    assert pad.image.size == (104, 72) and pad.content_box[2] - pad.content_box[0] == 100
    assert restore_image(pad.image, pad).size == (300, 200)
    assert restore_image(pad.image, pad, to_original_size=False).size == (100, 67)
    crop = prepare_image(image, 100, "crop", exact_multiple=8)
    assert crop.image.size == (96, 64)
    with pytest.raises(ImageError, match="unknown resize mode"):
        prepare_image(image, 100, "stretch")


def test_very_large_images_are_downscaled():
    prepared = prepare_image(Image.new("RGB", (6000, 4000)), 512, "fit")
    assert max(prepared.image.size) <= 576


def test_save_png_is_atomic_and_carries_metadata(tmp_path):
    path = save_png(Image.new("RGB", (4, 4)), tmp_path / "out" / "x.png", {"ip2p:seed": "3"})
    assert Image.open(path).text["ip2p:seed"] == "3"
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]


def test_save_png_refuses_a_folder_and_an_unwritable_place(tmp_path):
    with pytest.raises(ImageError, match="folder"):
        save_png(Image.new("RGB", (4, 4)), tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ImageError, match="cannot write"):
        save_png(Image.new("RGB", (4, 4)), blocker / "x.png")


def test_grid_tiles_images():
    grid = make_grid([Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")], columns=2)
    assert grid.size == (16, 16)


# -- the damaged corpus (tests/damaged_images.py) ------------------------------------------------------------------
KINDS = {
    "not-image": NotAnImageError,
    "unsupported": UnsupportedImageError,
    "corrupt": CorruptImageError,
    "too-large": TooManyPixelsError,
}


def _sweep(folder, full):
    """Every corpus file through load_image: it loads to RGB or raises the typed error, nothing else."""
    outcomes = {}
    for path, case in write_corpus(folder, full=full):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ImageWarning)
            try:
                image = load_image(path, max_pixels=MAX_PIXELS)
            except ImageError as exc:  # anything else fails the test with its traceback
                message = str(exc)
                assert type(exc) is KINDS[exc.kind], (case.name, exc.kind, type(exc))
                assert message.startswith(f"{path}: ") and "\n" not in message, message
                assert case.expect != "ok", f"{case.name} is a valid image, refused: {message}"
                assert case.kind is None or exc.kind == case.kind, (case.name, exc.kind, message)
                outcomes[case.name] = exc.kind
                continue
        assert case.expect != "refused", f"{case.name} should have been refused"
        assert image.mode == "RGB" and min(image.size) > 0
        outcomes[case.name] = "ok"
    return outcomes


def test_every_corpus_file_loads_or_raises_a_typed_error(tmp_path):
    outcomes = _sweep(tmp_path, full=False)
    assert set(outcomes.values()) == {"ok", "not-image", "unsupported", "corrupt", "too-large"}


@pytest.mark.slow
def test_the_full_corpus_loads_or_raises_a_typed_error(tmp_path):
    outcomes = _sweep(tmp_path, full=True)
    assert len(outcomes) > 300


def _corpus_file(tmp_path, name):
    return dict((case.name, path) for path, case in write_corpus(tmp_path))[name]


@pytest.mark.parametrize(
    "name",
    [
        "exif_truncated.jpg",
        "exif_invalid.webp",
        "exif_truncated.png",
        "exif_invalid_header.jpg",
        "exif_truncated_dpi.jpg",
    ],
)
def test_broken_exif_costs_a_warning_never_the_pixels(tmp_path, name):
    path = _corpus_file(tmp_path, name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(path)
    with warnings.catch_warnings():  # Pillow's own about the EXIF, when it reads it for .convert
        warnings.simplefilter("ignore")
        stored = Image.open(path).convert("RGB")  # as stored, or turned by an orientation that could be read
    turned = stored.transpose(Image.Transpose.ROTATE_270)
    assert any(np.array_equal(np.asarray(image), np.asarray(ok)) for ok in (stored, turned))
    for w in caught:  # one warning at most, naming the file, of our own category
        assert w.category is ImageWarning and str(path) in str(w.message) and "EXIF" in str(w.message)
    assert len(caught) <= 1


def test_exif_orientation_of_the_corpus_is_applied(tmp_path):
    assert load_image(_corpus_file(tmp_path, "exif_ok_rotated.jpg")).size == (16, 24)


@pytest.mark.parametrize(
    "name, reader",
    [("vector.eps", "Ghostscript"), ("clipart.wmf", "WMF"), ("data.h5", "h5py"), ("atc.dds", "DDS")],
)
def test_formats_without_a_loader_say_so_and_what_would_read_them(tmp_path, name, reader):
    if name.endswith(".eps") and EpsImagePlugin.has_ghostscript():
        pytest.skip("Ghostscript is installed here")
    with pytest.raises(UnsupportedImageError, match=reader) as info:
        load_image(_corpus_file(tmp_path, name))
    assert "truncated" not in str(info.value) and info.value.kind == "unsupported"


def test_libtiff_messages_stay_off_the_terminal_and_go_into_the_error(tmp_path, capfd):
    buffer = io.BytesIO()
    picture = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(picture).save(buffer, format="TIFF", compression="tiff_deflate")
    data = bytearray(buffer.getvalue())
    for i in range(20, 60):  # the deflate stream of the first strip
        data[i] ^= 0xFF
    path = tmp_path / "bad.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match="TIFF") as info:
        load_image(path)
    assert capfd.readouterr().err == ""
    assert "ZIPDecode" in str(info.value)


def test_bytes_file_objects_and_pil_images_share_the_one_opener(tmp_path):
    path = _save(Image.new("RGB", (40, 20), "blue"), tmp_path / "b.png")
    assert load_image(path.read_bytes()).size == (40, 20)
    with open(path, "rb") as handle:
        assert load_image(handle).size == (40, 20)
    with pytest.raises(NotAnImageError, match="^row 3: "):
        load_image(b"hello", name="row 3")
    lazy = Image.open(_save(Image.new("RGB", (8, 8)), tmp_path / "cut.png"))
    lazy.fp = io.BytesIO(path.read_bytes()[:60])  # decoding it now finds truncated data
    with pytest.raises(CorruptImageError, match="cut.png"):  # named by its file, not "image"
        load_image(lazy)


def test_a_decoded_image_is_converted_not_decoded_again(monkeypatch):
    decoded = load_image(Image.new("RGB", (8, 8), "red"))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded twice"))
    assert load_image(decoded) is decoded
    with pytest.raises(TooManyPixelsError):
        load_image(decoded, max_pixels=10)


@pytest.mark.parametrize("name", ["text_bomb_before.png", "text_bomb_after.png", "itxt_bomb.png"])
def test_a_png_text_bomb_costs_its_text_not_the_pixels(tmp_path, name):
    with pytest.warns(ImageWarning, match="PNG text metadata ignored"):
        image = load_image(_corpus_file(tmp_path, name))
    assert image.size == (24, 16)
