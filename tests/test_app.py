"""The web app: its handlers on a tiny model, and a real browser (Debian's Chromium through Playwright) driving it.

The browser test uploads an image, edits it, edits the result, undoes, and checks that Reset restores every
default; screenshots go to artifacts/app/. It skips, saying why, only where Chromium is not installed.
"""

from __future__ import annotations

import io
import random
import shutil
import socket
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from ip2p.app import (
    FIXED_GUIDANCE,
    FIXED_SEED,
    MODEL_SCHEDULER,
    RANDOM_GUIDANCE,
    RANDOM_SEED,
    AppDefaults,
    EditorApp,
    ServeConfig,
    build_app,
    launch,
    randomized_guidance,
    web_message,
)
from ip2p.imaging import ImageError

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "app"
FAST = AppDefaults(steps=2, resolution=32)  # the tiny model at 32 px: an edit takes a fraction of a second
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def pipe():
    from ip2p.pipeline import EditPipeline

    return EditPipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture
def picture(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


# -- settings and helpers ------------------------------------------------------------------------------------
def test_randomized_guidance_draws_from_the_original_ranges():
    rng = random.Random(0)
    draws = [randomized_guidance(rng) for _ in range(500)]
    assert all(6.0 <= t <= 9.0 and 1.2 <= i <= 1.8 for t, i in draws)
    assert all(round(t, 2) == t and round(i, 2) == i for t, i in draws)
    assert min(t for t, _ in draws) < 6.2 and max(t for t, _ in draws) > 8.8


def test_defaults_are_the_models_own_settings(pipe):
    from ip2p.edit_config import EditConfig

    paper = AppDefaults.from_config(EditConfig())
    assert (paper.steps, paper.resolution, paper.text_guidance, paper.image_guidance, paper.seed) == (
        100,
        512,
        7.5,
        1.5,
        1371,
    )
    assert paper.scheduler == MODEL_SCHEDULER
    toy = AppDefaults.from_config(
        EditConfig(
            num_inference_steps=20,
            resolution=64,
            text_guidance_scale=3.0,
            image_guidance_scale=2.0,
            scheduler="euler_ancestral",
        )
    )
    assert (toy.steps, toy.resolution, toy.text_guidance, toy.image_guidance, toy.scheduler) == (
        20,
        64,
        3.0,
        2.0,
        "euler_ancestral",
    )
    # The app starts at what the pipeline's model recommends: the tiny model's 20 steps at 64 px.
    assert (EditorApp(pipe).defaults.steps, EditorApp(pipe).defaults.resolution) == (20, 64)
    pipe.settings = {"num_inference_steps": 7, "text_guidance_scale": 4.5}
    try:
        d = EditorApp(pipe).defaults
        assert (d.steps, d.text_guidance, d.image_guidance, d.resolution) == (7, 4.5, 1.5, 512)
    finally:
        pipe.settings = {"num_inference_steps": 20, "resolution": 64}


def test_error_messages_for_the_browser_hide_server_paths():
    path = "/tmp/gradio/abc/secret.png"
    exc = ImageError(
        f"{path}: 2000x2000 = 4000000 pixels exceeds the limit of 1000 (raise it with --max-pixels if x)"
    )
    text = web_message(exc, path)
    assert "/tmp" not in text and "--max-pixels" not in text
    assert text.startswith("The uploaded image: 2000x2000")


def test_serve_config_checks_its_limits():
    ServeConfig().validate()
    assert ServeConfig().host == "127.0.0.1"
    for bad in (dict(concurrency=0), dict(max_queue=0), dict(max_upload_mb=0), dict(port=70000)):
        with pytest.raises(ValueError):
            ServeConfig(**bad).validate()


def test_cli_serve_flags():
    from ip2p.cli import build_parser
    from ip2p.flags import config_overrides

    def config(argv):  # what `ip2p serve` runs with: the flags set, over ServeConfig's defaults
        return ServeConfig(**config_overrides(build_parser().parse_args(["serve", *argv]), ServeConfig))

    c = config([])
    assert (c.model, c.host, c.port, c.share, c.concurrency, c.device) == (
        "auto",
        "127.0.0.1",
        7860,
        False,
        1,
        "auto",
    )
    c = config(
        ["--model", "tiny", "--host", "0.0.0.0", "--port", "8000", "--share", "--concurrency", "2"]
        + ["--max-queue", "3", "--max-upload-mb", "1.5", "--max-pixels", "100", "--device", "cpu"]
    )
    assert (c.model, c.host, c.port, c.share, c.concurrency, c.max_queue) == (
        "tiny",
        "0.0.0.0",
        8000,
        True,
        2,
        3,
    )
    assert (c.max_upload_mb, c.max_pixels, c.device) == (1.5, 100, "cpu")


def test_cli_serve_refuses_bad_limits_and_models_in_one_line(tmp_path, capsys):
    from ip2p.cli import main

    assert main(["serve", "--concurrency", "0"]) == 1
    assert capsys.readouterr().err.strip() == "ip2p: error: concurrency must be at least 1, got 0"
    assert main(["serve", "--model", str(tmp_path / "nope"), "--port", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


# -- handlers, without a browser -----------------------------------------------------------------------------
def _edit(app: EditorApp, before, instruction, session, progress=lambda *a, **k: None, **over):
    values = dict(
        steps=2,
        seed_mode=FIXED_SEED,
        seed=5,
        guidance_mode=FIXED_GUIDANCE,
        text_guidance=7.5,
        image_guidance=1.5,
        scheduler=MODEL_SCHEDULER,
        resolution=32,
    )
    values.update(over)
    return app.edit(before, instruction, *values.values(), session, progress=progress)


def test_chain_of_edits_undo_and_reset(pipe, picture):
    app = EditorApp(pipe, FAST)
    calls = []
    out, details, seed, text, image, session, gallery, files = _edit(
        app, {"path": str(picture)}, "make it red", None, progress=lambda *a, **k: calls.append(a)
    )
    assert seed == 5 and "seed 5" in details and calls[-1] == ((2, 2),)  # progress reached the last step
    assert [s["caption"] for s in session["chain"]] == ["input"] and len(gallery) == len(files) == 2
    meta = Image.open(out).text
    assert meta["ip2p:instruction"] == "make it red" and meta["ip2p:chain_step"] == "1"

    # Edit the result next: it becomes the input of the next instruction.
    before, after, shown, session, gallery, files = app.continue_from_result(session)
    assert before == out and after is None and shown == "" and len(session["chain"]) == 2
    out2, *_, session, gallery, files = _edit(app, before, "add a hat", session)
    assert Image.open(out2).text["ip2p:chain_step"] == "2" and len(files) == 3
    # A retry with other settings replaces the result; the chain stays.
    out3, *_, session, gallery, files = _edit(app, before, "add a hat", session, seed_mode=RANDOM_SEED)
    assert len(session["chain"]) == 2 and session["result"]["path"] == out3

    before, after, shown, session, gallery, files = app.undo(session)
    assert before == session["chain"][0]["path"] and after == out and len(files) == 2
    assert shown == details  # the details of the result shown again, not of the edit undone
    values = app.reset(session)
    assert values[:8] == (2, RANDOM_SEED, 1371, FIXED_GUIDANCE, 7.5, 1.5, MODEL_SCHEDULER, 32)
    assert values[8] is None and values[10]["result"] is None  # the result is cleared, the chain kept


def test_a_new_upload_starts_a_new_chain(pipe, picture, tmp_path):
    app = EditorApp(pipe, FAST)
    *_, session, _, _ = _edit(app, str(picture), "x", None)
    session = app.continue_from_result(session)[3]
    assert len(session["chain"]) == 2
    other = tmp_path / "other.png"
    Image.new("RGB", (32, 32), "blue").save(other)
    *_, session, gallery, _ = _edit(app, str(other), "y", session)
    assert len(session["chain"]) == 1 and len(gallery) == 2


def test_undo_shows_the_details_of_the_step_now_shown(pipe, picture):
    app = EditorApp(pipe, FAST)
    _, first, *_, session, _, _ = _edit(app, str(picture), "make it red", None, seed=11, text_guidance=6.5)
    session = app.continue_from_result(session)[3]
    before = session["chain"][-1]["path"]
    _, second, *_, session, _, _ = _edit(app, before, "add a hat", session, seed=22, image_guidance=1.25)
    assert "seed 22" in second and "add a hat" in second and "image guidance 1.25" in second
    _, after, shown, session, _, _ = app.undo(session)
    assert shown == first and after == session["result"]["path"]
    assert (
        "seed 11" in shown and "make it red" in shown and "text guidance 6.5" in shown and "22" not in shown
    )
    _, after, shown, session, _, _ = app.undo(session)  # the first edit undone: no result, no details
    assert after is None and shown == "" and session["result"] is None


def test_randomize_guidance_writes_the_drawn_values_back(pipe, picture):
    app = EditorApp(pipe, FAST)
    _, _, _, text, image, *_ = _edit(app, str(picture), "x", None, guidance_mode=RANDOM_GUIDANCE)
    assert 6 <= text <= 9 and 1.2 <= image <= 1.8


@pytest.mark.parametrize(
    "content, expected",
    [(b"hello, not a picture", "not an image"), (None, "exceeds the limit"), (b"", "empty")],
)
def test_bad_uploads_get_one_clear_line_without_server_paths(pipe, tmp_path, content, expected):
    app = EditorApp(pipe, FAST, max_pixels=1000)
    path = tmp_path / "upload.png"
    if content is None:
        Image.new("RGB", (100, 100)).save(path)
    else:
        path.write_bytes(content)
    with pytest.raises(gr.Error) as info:
        _edit(app, {"path": str(path)}, "x", None)
    assert expected in info.value.message and str(tmp_path) not in info.value.message
    with pytest.raises(gr.Error, match="Upload an image"):
        _edit(app, None, "x", None)


def test_every_damaged_file_is_refused_by_name_or_edited(pipe, tmp_path):
    """The damaged-file corpus through the app: a valid file is edited; every refusal is one clear line that
    names the upload and the kind of failure, never "failed on the server", a server path or an empty message."""
    from damaged_images import MAX_PIXELS, write_corpus

    app = EditorApp(pipe, FAST, max_pixels=MAX_PIXELS)
    words = {
        "not-image": ("not an image", "empty"),
        "unsupported": ("cannot read", "needs"),
        "too-large": ("pixels",),
    }
    for path, case in write_corpus(tmp_path / "corpus"):
        try:
            app.run_edit(
                str(path),
                "x",
                steps=1,
                text_guidance=7.5,
                image_guidance=1.5,
                seed=1,
                scheduler=None,
                resolution=32,
            )
        except gr.Error as exc:
            message = exc.message
            assert case.expect != "ok", f"{case.name}: {message}"
            assert message.startswith(f"The uploaded image {path.name!r}: "), message
            assert (
                "\n" not in message and str(tmp_path) not in message and "failed on the server" not in message
            )
            if case.expect == "refused":
                assert any(word in message for word in words.get(case.kind, ("",))), message
        else:
            assert case.expect != "refused", f"{case.name} was edited, expected a refusal ({case.kind})"


def test_an_extreme_aspect_ratio_is_refused_before_a_huge_edit(pipe, tmp_path):
    app = EditorApp(pipe, FAST)
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 20000), "red").save(thin)  # 20000 pixels, but a 4x80000 edit under the fit policy
    with pytest.raises(gr.Error, match=r"1x20000: too narrow to edit .* 4x80000, above 2048 pixels"):
        _edit(app, str(thin), "x", None)
    tall = tmp_path / "tall.png"
    Image.new("RGB", (16, 160), "red").save(tall)  # 1:10 stays editable: 4x40 at 32 px
    _edit(app, str(tall), "x", None, steps=1)


def test_bad_settings_are_named(pipe, picture):
    app = EditorApp(pipe, FAST)
    with pytest.raises(gr.Error, match="seed must be a whole number"):
        app.api_edit(str(picture), "x", 2, 7.5, 1.5, "abc", MODEL_SCHEDULER, 32)
    with pytest.raises(gr.Error, match="Unknown scheduler 'nope'"):
        app.api_edit(str(picture), "x", 2, 7.5, 1.5, 1, "nope", 32)
    with pytest.raises(gr.Error, match="Steps must be at least 1"):
        _edit(app, str(picture), "x", None, steps=0)
    with pytest.raises(gr.Error, match="must be numbers"):
        _edit(app, str(picture), "x", None, steps=None)
    with pytest.raises(gr.Error, match="instruction must be text, got 5"):
        app.api_edit(str(picture), 5, 2, 7.5, 1.5, 1, MODEL_SCHEDULER, 32)
    with pytest.raises(gr.Error) as info:  # a huge value is cut in the message, not echoed whole
        app.api_edit(str(picture), "x", 2, 7.5, 1.5, 1e300, MODEL_SCHEDULER, 32)
    assert "below 2**32" in info.value.message and len(info.value.message) < 100


def test_api_handler_returns_png_with_metadata(pipe, picture):
    app = EditorApp(pipe, FAST)
    path, meta = app.api_edit({"path": str(picture)}, "make it red", 2, 7.5, 1.5, -1, MODEL_SCHEDULER, 32)
    assert Image.open(path).text == meta and meta["ip2p:seed"].isdigit()
    _, meta = app.api_edit(str(picture), "make it red", 2, 7.5, 1.5, 7, "ddim", 32)
    assert meta["ip2p:seed"] == "7" and meta["ip2p:scheduler"] == "DDIMScheduler"


def test_api_masked_edit_keeps_the_rest_exactly(pipe, tmp_path):
    app = EditorApp(pipe, FAST)
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(source)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 4:20] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    path, meta = app.api_edit(
        {"path": str(source)},
        "make it red",
        2,
        7.5,
        1.5,
        1,
        MODEL_SCHEDULER,
        32,
        {"path": str(tmp_path / "mask.png")},
    )
    out, before = np.asarray(Image.open(path).convert("RGB")), np.asarray(Image.open(source))
    assert meta["ip2p:mask"] == "given"
    assert np.array_equal(out[mask == 0], before[mask == 0]) and not np.array_equal(out, before)
    _, meta = app.api_edit(str(source), "make it red", 2, 7.5, 1.5, 1, MODEL_SCHEDULER, 32, None, True)
    assert meta["ip2p:mask"].startswith("auto")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="not a readable mask image") as info:
        app.api_edit(str(source), "x", 2, 7.5, 1.5, 1, MODEL_SCHEDULER, 32, str(tmp_path / "bad.png"))
    assert str(tmp_path) not in info.value.message


def test_brush_strokes_become_the_mask_and_an_empty_canvas_none(tmp_path):
    from ip2p.app_requests import brush_mask

    layer = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    layer.save(tmp_path / "empty.png")
    assert brush_mask({"background": None, "layers": [{"path": str(tmp_path / "empty.png")}]}) is None
    layer.paste((255, 255, 255, 255), (2, 2, 6, 6))
    layer.save(tmp_path / "stroke.png")
    mask = brush_mask(
        {"layers": [{"path": str(tmp_path / "empty.png")}, {"path": str(tmp_path / "stroke.png")}]}
    )
    assert mask.sum() == 16 and mask[2:6, 2:6].all()
    assert brush_mask(None) is None


def test_concurrent_edits_equal_sequential_ones(pipe, picture):
    """`serve --concurrency N` runs edits on one pipeline from several threads: they must not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    app = EditorApp(pipe, FAST)

    def run(seed: int) -> np.ndarray:
        path, _ = app.api_edit(str(picture), "make it red", 4, 7.5, 1.5, seed, "euler_ancestral", 32)
        return np.asarray(Image.open(path))

    seeds = [1, 2, 3] * 2
    sequential = [run(seed) for seed in seeds]
    with ThreadPoolExecutor(max_workers=3) as pool:
        concurrent = list(pool.map(run, seeds))
    assert all(np.array_equal(a, b) for a, b in zip(sequential, concurrent, strict=True))


# -- the browser -------------------------------------------------------------------------------------------
def chromium_executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    if executable is None:
        pytest.skip(
            "Chromium is not installed (`apt-get install chromium`; .ci/run installs it where apt works)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(pipe):
    demo = build_app(pipe, FAST)
    url = launch(demo, ServeConfig(port=free_port(), max_queue=8), block=False, quiet=True)
    yield url
    demo.close()


@pytest.mark.slow
def test_browser_edit_chain_undo_reset(server, browser, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(source)
    page = browser.new_page(viewport={"width": 1280, "height": 1300})
    page.set_default_timeout(30_000)
    try:
        page.goto(server)
        page.locator("#edit-btn").wait_for()
        assert "RANDOMLY INITIALISED" in page.locator("#note").inner_text()  # the tiny model says what it is

        # Upload, instruct, edit: the result appears beside the input.
        page.locator("#before input[type=file]").set_input_files(str(source))
        page.locator("#before img").wait_for()
        page.locator("#instruction textarea").fill("make it blue")
        page.locator("#edit-btn").click()
        after = page.locator("#after img[src*='step01']")
        after.wait_for()
        page.wait_for_function("() => document.querySelector('#after img').naturalWidth > 0")
        first_details = page.locator("#details").inner_text()
        assert "seed" in first_details and "make it blue" in first_details
        page.screenshot(path=str(ARTIFACTS / "1-first-edit.png"), full_page=True)
        first = _download(server, after.get_attribute("src"))
        assert first.text["ip2p:instruction"] == "make it blue"

        # A second instruction edits the result.
        page.locator("#continue-btn").click()
        page.locator("#before img[src*='step01']").wait_for()
        page.locator("#instruction textarea").fill("add a hat")
        page.locator("#edit-btn").click()
        second = page.locator("#after img[src*='step02']")
        second.wait_for()
        metadata = _download(server, second.get_attribute("src")).text
        assert metadata["ip2p:instruction"] == "add a hat" and metadata["ip2p:chain_step"] == "2"
        page.locator("#downloads").get_by_text("step02").wait_for()
        assert page.locator("#history img").count() == 3  # input, first edit, second edit
        page.screenshot(path=str(ARTIFACTS / "2-second-edit.png"), full_page=True)

        assert "add a hat" in page.locator("#details").inner_text()

        # Undo steps back one link, and the details line is the first edit's again.
        page.locator("#undo-btn").click()
        page.locator("#before img[src*='step00']").wait_for()
        page.locator("#after img[src*='step01']").wait_for()
        page.wait_for_function("() => !document.querySelector('#details').innerText.includes('add a hat')")
        assert page.locator("#details").inner_text() == first_details

        # Change every setting, then Reset restores every default (the original's set steps to 0).
        _set_number(page, "#steps", "7")
        _set_number(page, "#resolution", "64")
        _set_number(page, "#text-guidance", "9")
        _set_number(page, "#image-guidance", "1.2")
        page.locator("#seed-mode").get_by_text(FIXED_SEED).click()
        page.locator("#guidance-mode").get_by_text(RANDOM_GUIDANCE).click()
        page.locator("#seed input").fill("42")
        page.locator("#scheduler input").click()
        page.get_by_role("option", name="ddim", exact=True).click()
        assert page.locator("#steps input[type=number]").input_value() == "7"
        page.locator("#reset-btn").click()
        page.wait_for_function(
            "() => document.querySelector('#steps input[type=number]').value === '2' "
            "&& !document.querySelector('#after img')"
        )
        assert page.locator("#resolution input[type=number]").input_value() == "32"
        assert page.locator("#text-guidance input[type=number]").input_value() == "7.5"
        assert page.locator("#image-guidance input[type=number]").input_value() == "1.5"
        assert page.locator("#seed input").input_value() == "1371"
        assert page.locator(f"#seed-mode input[value='{RANDOM_SEED}']").is_checked()
        assert page.locator(f"#guidance-mode input[value='{FIXED_GUIDANCE}']").is_checked()
        assert page.locator("#scheduler input").input_value() == MODEL_SCHEDULER
        page.screenshot(path=str(ARTIFACTS / "3-after-reset.png"), full_page=True)

        # A file that is not an image: one clear line, no server path, no traceback.
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"this is not a png")
        page.locator("#before button[aria-label='Remove Image']").first.click()
        page.locator("#before input[type=file]").set_input_files(str(bad))
        page.locator("#edit-btn").click()
        toast = page.get_by_text("not an image file")
        toast.wait_for()
        message = toast.inner_text()
        assert "/tmp" not in message and "Traceback" not in page.content()
        page.screenshot(path=str(ARTIFACTS / "4-bad-file.png"), full_page=True)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise
    finally:
        page.close()


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_browser_masked_edit(server, browser, pipe, tmp_path):
    """Paint a mask with the brush, edit: the mask used is shown, and the result keeps the input outside it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    source = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.set_default_timeout(30_000)
    try:
        page.goto(server)
        page.locator("#before input[type=file]").set_input_files(str(source))
        page.locator("#before img").wait_for()
        page.locator("#mask-panel").get_by_text("Mask: edit only part of the image").click()
        canvas = page.locator("#mask-brush canvas").first
        canvas.wait_for()
        # the canvas has taken the uploaded image as its background once it can be panned
        page.wait_for_function("() => !document.querySelector('#mask-brush button[aria-label=Pan]').disabled")
        box = canvas.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.3, y)
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), y)
        page.mouse.up()
        page.screenshot(path=str(ARTIFACTS / "5-mask-painted.png"), full_page=True)
        page.locator("#instruction textarea").fill("make it blue")
        page.locator("#edit-btn").click()
        page.locator("#after img[src*='step01']").wait_for()
        shown = page.locator("#mask-used img[src*='mask']")
        shown.wait_for()
        page.screenshot(path=str(ARTIFACTS / "6-masked-edit.png"), full_page=True)
        result = _download(server, page.locator("#after img").get_attribute("src"))
        mask = np.asarray(_download(server, shown.get_attribute("src")).convert("L")) > 127
        assert result.text["ip2p:mask"] == "given"
        assert 0.05 < mask.mean() < 0.95  # the stroke (the default brush is wide on a 64 px image), not all
        prepared = pipe.prepare(Image.open(source), pipe.config_for(resolution=32)).image
        out, before = np.asarray(result.convert("RGB")), np.asarray(prepared)
        assert np.array_equal(out[~mask], before[~mask])
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure-mask.png"), full_page=True)
        raise
    finally:
        page.close()


def _set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"{elem_id} input[type=number]")
    box.fill(value)
    box.blur()


def _download(server: str, src: str) -> Image.Image:
    assert src.startswith(server.rstrip("/"))
    with urllib.request.urlopen(src, timeout=30) as response:
        return Image.open(io.BytesIO(response.read()))
