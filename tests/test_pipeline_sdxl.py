"""SDXL InstructPix2Pix editors: parity with diffusers' StableDiffusionXLInstructPix2PixPipeline, loading, CLI."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInstructPix2PixPipeline
from PIL import Image

from ip2p.models import build_pipeline, load_pipeline_components, save_edit_model
from ip2p.pipeline import EditPipeline
from ip2p.sampling import make_scheduler
from ip2p.tiny import TINY_SDXL_MODEL, tiny_sdxl_components


def _input_image(size=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sdxl-edit"
    save_edit_model(tiny_sdxl_components(), folder)
    return folder


@pytest.mark.parametrize("scheduler_name", ["euler_ancestral", "ddim"])
@pytest.mark.parametrize("num_images", [1, 2])
def test_equals_diffusers_sdxl_pipeline(scheduler_name, num_images):
    """Same tiny SDXL components, scheduler, seed and settings: the same latents and pixels as diffusers."""
    components = tiny_sdxl_components()
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    image = _input_image()
    settings = dict(num_inference_steps=4, text_guidance_scale=7.5, image_guidance_scale=1.5)
    ours = pipe(
        image,
        "make it blue",
        seed=123,
        resolution=32,
        scheduler=scheduler_name,
        num_images=num_images,
        **settings,
    )

    reference = build_pipeline(
        StableDiffusionXLInstructPix2PixPipeline,
        components,
        make_scheduler(scheduler_name, components.scheduler),
    )
    reference.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt="make it blue",
        image=image,
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        num_images_per_prompt=num_images,
    )
    latents = reference(**kwargs, generator=torch.Generator().manual_seed(123), output_type="latent").images
    pixels = reference(**kwargs, generator=torch.Generator().manual_seed(123), output_type="np").images

    assert ours.latents.shape == (num_images, 4, 16, 16)
    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)
    ours_np = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in ours.images])
    assert np.abs(ours_np - pixels).max() <= 1 / 255 + 1e-6


def test_negative_prompt_replaces_the_zero_null_text_as_diffusers():
    """With a negative prompt the null branches condition on its encoding, not on zeros, in both pipelines."""
    components = tiny_sdxl_components()
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    image = _input_image()
    settings = dict(num_inference_steps=2, resolution=32, scheduler="ddim", seed=5)
    zeros = pipe(image, "make it blue", **settings)
    negative = pipe(image, "make it blue", negative_prompt="blurry", **settings)
    assert not torch.allclose(zeros.latents, negative.latents)

    reference = build_pipeline(
        StableDiffusionXLInstructPix2PixPipeline, components, make_scheduler("ddim", components.scheduler)
    )
    reference.set_progress_bar_config(disable=True)
    latents = reference(
        prompt="make it blue",
        negative_prompt="blurry",
        image=image,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images
    torch.testing.assert_close(negative.latents, latents, rtol=1e-5, atol=1e-5)


def test_folder_loads_as_sdxl_with_both_text_encoders(sdxl_dir):
    assert json.loads((sdxl_dir / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionXLInstructPix2PixPipeline"
    )
    comps = load_pipeline_components(sdxl_dir)
    assert comps.is_sdxl and comps.text_encoder_2 is not None and comps.tokenizer_2 is not None
    assert comps.info["force_zeros_for_empty_prompt"] is True
    original = tiny_sdxl_components()
    for name in ("unet", "text_encoder_2"):
        ours, theirs = getattr(comps, name).state_dict(), getattr(original, name).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_from_pretrained_folder_equals_in_memory_components(sdxl_dir):
    settings = dict(seed=3, num_inference_steps=2, resolution=32, scheduler="euler")
    loaded = EditPipeline.from_pretrained(str(sdxl_dir), device="cpu", dtype="fp32")
    fresh = EditPipeline(tiny_sdxl_components(), device="cpu", dtype="fp32")
    a, b = loaded(_input_image(), "add snow", **settings), fresh(_input_image(), "add snow", **settings)
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-5)


def test_named_tiny_sdxl_model_edits():
    pipe = EditPipeline.from_pretrained(TINY_SDXL_MODEL, device="cpu", dtype="fp32")
    assert pipe.components.is_sdxl
    result = pipe(_input_image(), "x", seed=0, num_inference_steps=1, resolution=32)
    assert result.images[0].size == (32, 32)


def test_unit_scales_use_one_branch_with_the_added_conditioning():
    components = tiny_sdxl_components()
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    calls = []
    handle = components.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    settings = dict(seed=0, num_inference_steps=2, resolution=32, scheduler="ddim")
    one = pipe(_input_image(), "x", text_guidance_scale=1.0, image_guidance_scale=1.0, **settings)
    handle.remove()
    assert calls == [1, 1]
    three = pipe(_input_image(), "x", text_guidance_scale=1.0, image_guidance_scale=1.0 + 1e-9, **settings)
    torch.testing.assert_close(one.latents, three.latents, rtol=1e-4, atol=1e-4)


def test_cli_edit_with_an_sdxl_folder(sdxl_dir, tmp_path):
    from ip2p.cli import main

    source = tmp_path / "in.png"
    _input_image().save(source)
    out = tmp_path / "out.png"
    main(
        [
            "edit",
            str(source),
            "make it blue",
            "--model",
            str(sdxl_dir),
            "--output",
            str(out),
            "--steps",
            "2",
            "--resolution",
            "32",
            "--seed",
            "0",
            "--device",
            "cpu",
        ]
    )
    assert Image.open(out).size == (32, 32)


def test_cli_evaluate_an_sdxl_folder(sdxl_dir, tiny_clip_dir, tmp_path, capsys):
    from ip2p.cli import main
    from ip2p.evaluate import read_records

    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    item = {
        "image": "a.png",
        "instruction": "make it blue",
        "input": "a red square",
        "output": "a blue square",
    }
    (tmp_path / "t.jsonl").write_text(json.dumps(item) + "\n")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(sdxl_dir), "--test-set", str(tmp_path / "t.jsonl"), "-o", str(out)]
    argv += ["--clip", str(tiny_clip_dir), "--steps", "2", "--resolution", "32", "--image-guidance", "1,2"]
    argv += ["--methods", "ip2p", "--references", "input", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert "ip2p" in capsys.readouterr().out
    assert len(read_records(out)) == 2 + 1  # two guidance settings and the unedited input


def test_single_sdxl_files_are_read_with_the_sdxl_pipeline(sdxl_dir, tmp_path):
    """An original-format SDXL checkpoint (its second text encoder under conditioner.embedders.1) or one whose
    --config folder is an SDXL editor goes to diffusers' SDXL single-file loader; an SD one does not."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from safetensors.torch import save_file

    from ip2p.models import _edit_pipeline_class

    sdxl, sd = tmp_path / "xl.safetensors", tmp_path / "sd.safetensors"
    save_file({"conditioner.embedders.1.model.text_projection": torch.zeros(2, 2)}, str(sdxl))
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.bias": torch.zeros(2)}, str(sd))
    assert _edit_pipeline_class(sdxl, None) is StableDiffusionXLInstructPix2PixPipeline
    assert _edit_pipeline_class(sd, None) is StableDiffusionInstructPix2PixPipeline
    assert _edit_pipeline_class(sd, str(sdxl_dir)) is StableDiffusionXLInstructPix2PixPipeline
