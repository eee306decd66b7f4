"""Masked editing (blended latent diffusion) and automatic masks (DiffEdit): ip2p.masking and its use by
EditPipeline, `ip2p edit` and the batch jobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ip2p import masking
from ip2p.imaging import pil_to_tensor
from ip2p.pipeline import EditPipeline
from ip2p.sampling import denoise, make_scheduler

FAST = dict(num_inference_steps=3, resolution=32, text_guidance_scale=7.5, image_guidance_scale=1.5)


def _image(size=(32, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _square_mask(size=(32, 32), box=(8, 8, 24, 24)) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=np.float32)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 1
    return mask


@pytest.fixture(scope="module")
def pipe():
    from ip2p.tiny import tiny_components

    return EditPipeline(tiny_components(edit=True, seed=0), device="cpu", dtype="fp32")


# -- the pure functions ----------------------------------------------------------------------------------------
def test_feather_is_zero_outside_one_inside_and_ramps_inwards():
    mask = _square_mask((20, 20), (4, 4, 16, 16))
    alpha = masking.feather_inward(mask, 3)
    assert alpha[mask == 0].max() == 0
    assert alpha[7:13, 7:13].min() == 1  # 3 px or more inside
    assert alpha[4, 10] == pytest.approx(1 / 3) and alpha[5, 10] == pytest.approx(2 / 3)
    assert np.array_equal(masking.feather_inward(mask, 0), mask)
    full = np.ones((8, 8), dtype=np.float32)  # the image's border is not outside
    assert masking.feather_inward(full, 4).min() == 1


def test_paste_back_keeps_the_input_exactly_outside():
    edited, original = _image(seed=1), _image(seed=2)
    mask = _square_mask()
    out = np.asarray(masking.paste_back(edited, original, mask, feather=2))
    assert np.array_equal(out[mask == 0], np.asarray(original)[mask == 0])
    assert np.array_equal(out[12:20, 12:20], np.asarray(edited)[12:20, 12:20])


def test_latent_mask_keeps_any_cell_with_an_editable_pixel():
    mask = torch.zeros(1, 16, 16)
    mask[0, 5, 9] = 1  # one pixel
    latent = masking.latent_mask(mask, 4)
    assert latent.shape == (1, 1, 4, 4)
    assert latent.sum() == 1 and latent[0, 0, 1, 2] == 1


def test_difference_map_and_threshold():
    text = torch.zeros(1, 3, 4, 6, 6)
    text[:, :, :, 2:4, 2:4] = 1.0  # the instruction changes the middle
    diff = masking.difference_map(text, torch.zeros_like(text))
    assert diff.max() == 1 and diff.min() == 0
    mask = masking.threshold_map(diff, 0.5, dilate=0)
    assert mask[0, 2:4, 2:4].all() and mask.sum() == 4
    assert masking.threshold_map(diff, 0.5, dilate=1).sum() == 16


# -- masks as files ------------------------------------------------------------------------------------------------
def test_mask_files_alpha_brightness_and_resizing(tmp_path):
    gray = Image.fromarray((_square_mask() * 255).astype(np.uint8))
    gray.save(tmp_path / "m.png")
    assert np.array_equal(masking.load_mask(tmp_path / "m.png"), _square_mask())
    strokes = Image.new(
        "RGBA", (32, 32), (0, 0, 0, 0)
    )  # a brush layer: painted strokes on a transparent canvas
    strokes.paste((255, 0, 0, 255), (8, 8, 24, 24))
    assert np.array_equal(masking.load_mask(strokes), _square_mask())
    small = masking.load_mask(gray.resize((16, 16), Image.NEAREST), size=(32, 32))  # resized, not refused
    assert small.shape == (32, 32) and np.array_equal(small, _square_mask())


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"not an image at all", "not a readable mask image"), (None, "no such mask file")],
)
def test_bad_mask_files_fail_in_one_line(tmp_path, content, expected):
    path = tmp_path / "mask.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(masking.MaskError, match=expected) as info:
        masking.load_mask(path)
    assert "\n" not in str(info.value)
    with pytest.raises(masking.MaskError, match="2-D"):
        masking.load_mask(np.zeros((2, 3, 4, 5)))


# -- the sampling hook ---------------------------------------------------------------------------------------------
def test_post_step_sees_each_next_timestep_then_none(make_components):
    scheduler = make_scheduler("ddim", make_components().scheduler)
    seen = []

    def post_step(latents, t_next):
        seen.append(None if t_next is None else int(t_next))
        return latents

    denoise(lambda x, t: torch.zeros_like(x), torch.zeros(1, 4, 4, 4), scheduler, 4, post_step=post_step)
    assert seen == [*[int(t) for t in scheduler.timesteps[1:]], None]


# -- masked edits --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim"])
def test_pixels_outside_a_user_mask_equal_the_input(pipe, scheduler):
    image, mask = _image(), _square_mask()
    result = pipe(image, "make it blue", seed=3, scheduler=scheduler, mask=mask, **FAST)
    out, before = np.asarray(result.images[0]), np.asarray(image)
    assert np.array_equal(out[mask == 0], before[mask == 0])
    assert not np.array_equal(out[mask == 1], before[mask == 1])  # the inside was edited
    assert np.array_equal(np.asarray(result.mask) // 255, mask)
    assert result.metadata()["ip2p:mask"] == "given"


def test_outside_the_mask_equals_the_original_after_resizing_back(pipe, tmp_path):
    image = _image((45, 30), seed=4)  # not a multiple of the model's size: prepared to 32 px, then restored
    mask = _square_mask((45, 30), (10, 5, 30, 25))
    Image.fromarray((mask * 255).astype(np.uint8)).resize((90, 60), Image.NEAREST).save(tmp_path / "m.png")
    for resize_mode in ("fit", "pad"):
        result = pipe(
            image,
            "make it red",
            seed=1,
            mask=tmp_path / "m.png",
            restore_size=True,
            resize_mode=resize_mode,
            **FAST,
        )
        out = np.asarray(result.images[0])
        assert out.shape == (30, 45, 3)
        assert np.array_equal(out[mask == 0], np.asarray(image)[mask == 0])


@pytest.mark.parametrize("name", ["euler_ancestral", "ddim"])
def test_latents_outside_the_mask_follow_the_noised_input(pipe, name):
    """After every step the latents outside the (latent) mask are the input's latents noised to the next step's
    level, in the scheduler's own convention; after the last step, the input's latents."""
    image, mask = _image(), _square_mask(box=(0, 0, 16, 32))  # the left half, whole latent cells
    seen = []
    pipe(
        image,
        "make it blue",
        seed=5,
        scheduler=name,
        mask=mask,
        callback=lambda i, n, x: seen.append(x.clone()),
        **FAST,
    )
    x0 = pipe._sampler_latents(pipe.encode_image(pil_to_tensor([image])))
    noise = randn_tensor(x0.shape, generator=torch.Generator().manual_seed(5), dtype=x0.dtype)
    scheduler = make_scheduler(name, pipe.components.scheduler)
    scheduler.set_timesteps(FAST["num_inference_steps"])
    f = pipe.components.vae_scale_factor
    outside = ~masking.latent_mask(torch.from_numpy(mask)[None], f).bool().expand_as(x0)
    timesteps = list(scheduler.timesteps[1:]) + [None]
    for latents, t_next in zip(seen, timesteps, strict=True):
        expected = x0 if t_next is None else scheduler.add_noise(x0, noise, t_next.reshape(1))
        torch.testing.assert_close(latents[outside], expected[outside], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(seen[-1][~outside], x0[~outside])


def test_a_full_mask_equals_the_edit_without_one(pipe):
    image = _image()
    plain = pipe(image, "make it blue", seed=9, **FAST)
    full = pipe(image, "make it blue", seed=9, mask=np.ones((32, 32)), **FAST)
    assert torch.equal(plain.latents, full.latents)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(full.images[0]))
    empty = pipe(image, "make it blue", seed=9, mask=np.zeros((32, 32)), **FAST)
    assert np.array_equal(np.asarray(empty.images[0]), np.asarray(image))


def test_edit_batch_with_masks_equals_single_edits(pipe):
    images, masks = [_image(seed=1), _image(seed=2)], [_square_mask(), None]
    batch = pipe.edit_batch(images, ["make it blue", "make it red"], [1, 2], masks=masks, **FAST)
    one = pipe(images[0], "make it blue", seed=1, mask=masks[0], **FAST).images[0]
    two = pipe(images[1], "make it red", seed=2, **FAST).images[0]
    assert np.abs(np.asarray(batch[0], dtype=int) - np.asarray(one, dtype=int)).max() <= 1
    assert np.abs(np.asarray(batch[1], dtype=int) - np.asarray(two, dtype=int)).max() <= 1


def test_auto_mask_on_the_tiny_model_runs_and_is_recorded(pipe):
    result = pipe(_image(), "make it blue", seed=2, auto_mask=True, **FAST)
    assert result.mask is not None and result.mask.size == (32, 32)
    assert result.metadata()["ip2p:mask"].startswith("auto")
    mask = np.asarray(result.mask) // 255
    assert np.array_equal(np.asarray(result.images[0])[mask == 0], np.asarray(_image())[mask == 0])
    again = pipe(_image(), "make it blue", seed=2, auto_mask=True, **FAST)  # the estimate is seeded
    assert np.array_equal(np.asarray(again.mask), np.asarray(result.mask))


# -- the automatic mask on a toy edit ------------------------------------------------------------------------------
TOY_COVERAGE_BAR = 0.9  # the share of the recoloured shape's pixels inside the automatic mask
TOY_AREA_BAR = 0.5  # and the mask covers at most this share of the image


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_mask_on_a_toy_recolour_covers_the_shape(seed):
    from ip2p.toy import Scene, Shape, apply_instruction, render

    scene = Scene(
        (Shape("circle", "red", "large", "top left"), Shape("square", "blue", "large", "bottom right")),
        background="white",
    ).validate()
    instruction = "make the circle green"
    before = np.asarray(render(scene), dtype=int)
    after = np.asarray(render(apply_instruction(scene, instruction)), dtype=int)
    shape = np.abs(after - before).sum(-1) > 30  # the pixels the exact edit changes
    pipe = EditPipeline.from_pretrained("toy", device="cpu", dtype="fp32")
    result = pipe(render(scene), instruction, seed=seed, auto_mask=True)
    mask = np.asarray(result.mask) > 127
    assert mask[shape].mean() >= TOY_COVERAGE_BAR
    assert mask.mean() <= TOY_AREA_BAR
    out = np.asarray(result.images[0], dtype=int)
    assert np.array_equal(out[~mask], before[~mask])  # the square and the background kept exactly


# -- the command line ----------------------------------------------------------------------------------------------
def test_cli_edit_with_a_mask_and_save_mask(tmp_path):
    from ip2p.cli import main

    _image().save(tmp_path / "in.png")
    Image.fromarray((_square_mask() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    argv = ["edit", str(tmp_path / "in.png"), "make it blue", "-o", str(out), "--model", "tiny"]
    assert (
        main(
            [*argv, "--steps", "2", "--resolution", "32", "--mask", str(tmp_path / "mask.png"), "--save-mask"]
        )
        == 0
    )
    outside = _square_mask() == 0
    assert np.array_equal(np.asarray(Image.open(out))[outside], np.asarray(_image())[outside])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out_mask.png")) // 255, _square_mask())
    assert Image.open(out).text["ip2p:mask"] == "given"


def test_cli_bad_mask_is_one_line_before_the_model_loads(tmp_path, capsys):
    from ip2p.cli import main

    _image().save(tmp_path / "in.png")
    (tmp_path / "mask.txt").write_text("not an image")
    argv = [
        "edit",
        str(tmp_path / "in.png"),
        "x",
        "-o",
        str(tmp_path / "o.png"),
        "--model",
        str(tmp_path / "none"),
    ]
    assert main([*argv, "--mask", str(tmp_path / "mask.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a readable mask image" in err and len(err.splitlines()) == 1
    assert main([*argv[:-2], "--model", "tiny", "--mask-threshold", "2"]) == 2


def test_jsonl_items_name_their_own_masks(tmp_path):
    import json

    from ip2p.batch import plan_items

    _image().save(tmp_path / "a.png")
    listing = tmp_path / "edits.jsonl"
    rows = [{"image": "a.png", "instruction": "x", "mask": "m.png"}, {"image": "a.png", "instruction": "y"}]
    listing.write_text("\n".join(json.dumps(r) for r in rows))
    items = plan_items(listing, None, tmp_path / "out")
    assert items[0].mask == tmp_path / "m.png" and items[1].mask is None
    items = plan_items(listing, None, tmp_path / "out", mask=tmp_path / "all.png")
    assert items[0].mask == tmp_path / "m.png" and items[1].mask == tmp_path / "all.png"


def test_masks_on_an_sdxl_editor():
    """SDXL editors (pooled text and size ids in the UNet call): a given mask and the automatic one."""
    from ip2p.tiny import tiny_sdxl_components

    pipe = EditPipeline(tiny_sdxl_components(), device="cpu", dtype="fp32")
    image, mask = _image(), _square_mask()
    result = pipe(image, "make it blue", seed=1, mask=mask, **FAST)
    outside = mask == 0
    assert np.array_equal(np.asarray(result.images[0])[outside], np.asarray(image)[outside])
    auto = pipe(image, "make it blue", seed=1, auto_mask=True, **FAST)
    kept = np.asarray(auto.mask) == 0
    assert np.array_equal(np.asarray(auto.images[0])[kept], np.asarray(image)[kept])


def test_cli_evaluate_with_the_automatic_mask(tmp_path):
    import json

    from ip2p.cli import main

    _image().save(tmp_path / "a.png")
    row = {"image": "a.png", "instruction": "make it blue", "input": "noise", "output": "blue noise"}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--model",
        "tiny",
        "--methods",
        "ip2p",
        "--test-set",
        str(tmp_path / "t.jsonl"),
        "-o",
        str(out),
    ]
    argv += [
        "--clip",
        "none",
        "--steps",
        "2",
        "--resolution",
        "32",
        "--sweep",
        "grid",
        "--text-guidance",
        "7.5",
    ]
    argv += [
        "--image-guidance",
        "1.5",
        "--device",
        "cpu",
        "--no-progress",
        "--auto-mask",
        "--mask-threshold",
        "0.3",
    ]
    assert main(argv) == 0
    described = json.dumps(json.loads((out / "run.json").read_text()))
    assert '"auto_mask": true' in described and '"mask_threshold": 0.3' in described


def test_every_image_of_several_keeps_the_outside(pipe):
    image, mask = _image(), _square_mask()
    result = pipe(image, "make it blue", seed=4, mask=mask, num_images=2, **FAST)
    first, second = (np.asarray(im) for im in result.images)
    assert np.array_equal(first[mask == 0], np.asarray(image)[mask == 0])
    assert np.array_equal(second[mask == 0], np.asarray(image)[mask == 0])
    assert not np.array_equal(first, second)  # two noise draws, one mask
