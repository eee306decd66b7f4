import io

import numpy as np
import pytest
from PIL import Image

from ip2p.imaging import (
    ImageError,
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
