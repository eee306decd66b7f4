"""SDXL InstructPix2Pix editors: parity with diffusers' StableDiffusionXLInstructPix2PixPipeline, loading, CLI."""

import json
import re

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


def _open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict -> OpenCLIP's keys (SDXL's ``conditioner.embedders.1.model.``):
    the inverse of diffusers' ``convert_open_clip_checkpoint`` (q, k, v stacked into ``in_proj``)."""
    top = {
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # (hidden, projection)
            continue
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        if key in top:
            out[top[key]] = value
            continue
        m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key)
        assert m is not None, f"no OpenCLIP name for {key!r}"
        block, tail = f"transformer.resblocks.{m[1]}", m[2]
        if qm := re.fullmatch(r"self_attn\.(q|k|v)_proj\.(weight|bias)", tail):
            qkv.setdefault(f"{block}.attn.in_proj_{qm[2]}", {})[qm[1]] = value
            continue
        for old, new in renames.items():
            tail = tail.replace(old, new)
        out[f"{block}.{tail.replace('self_attn.out_proj', 'attn.out_proj')}"] = value
    out.update({key: torch.cat([parts["q"], parts["k"], parts["v"]]) for key, parts in qkv.items()})
    return out


def _sdxl_to_ldm(components) -> dict[str, torch.Tensor]:
    """Tiny SDXL components as one original-format (Stability generative-models) state dict."""
    from ldm_convert import clip_to_ldm, unet_to_ldm, vae_to_ldm

    unet = components.unet.state_dict()
    levels = len(components.unet.config.block_out_channels)
    plain = {k: v for k, v in unet.items() if not k.startswith("add_embedding.")}
    ckpt = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(plain, 2, levels).items()}
    for index, layer in ((0, "linear_1"), (2, "linear_2")):  # the "text_time" embedding is label_emb.0
        for param in ("weight", "bias"):
            ckpt[f"model.diffusion_model.label_emb.0.{index}.{param}"] = unet[
                f"add_embedding.{layer}.{param}"
            ]
    vae = vae_to_ldm(components.vae.state_dict(), len(components.vae.config.block_out_channels))
    ckpt.update({f"first_stage_model.{k}": v for k, v in vae.items()})
    clip = clip_to_ldm(components.text_encoder.state_dict())
    ckpt.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in clip.items()})
    open_clip = _open_clip_to_ldm(components.text_encoder_2.state_dict())
    ckpt.update({f"conditioner.embedders.1.model.{k}": v for k, v in open_clip.items()})
    return {k: v.detach().contiguous().clone() for k, v in ckpt.items()}


def test_single_sdxl_file_with_config_loads_the_same_weights_and_edits_alike(tmp_path):
    """An original-format SDXL InstructPix2Pix file goes through diffusers' single-file loader with --config: the
    weights of all four networks come back exactly, and the edit equals the folder's. (The text encoders differ
    in width, 32 and 48, as SDXL's do: the loader tells them apart by it.)"""
    from safetensors.torch import save_file

    components = tiny_sdxl_components(hidden_sizes=(32, 48))
    folder = save_edit_model(components, tmp_path / "xl")
    path = tmp_path / "xl.safetensors"
    save_file(_sdxl_to_ldm(components), str(path))
    loaded = load_pipeline_components(path, config=str(folder))
    assert loaded.is_sdxl and loaded.tokenizer_2 is not None
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(components, name).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    settings = dict(seed=1, num_inference_steps=2, resolution=32, scheduler="ddim")
    from_file = EditPipeline.from_pretrained(str(path), device="cpu", dtype="fp32", config=str(folder))
    from_folder = EditPipeline.from_pretrained(str(folder), device="cpu", dtype="fp32")
    a, b = (
        from_file(_input_image(), "add snow", **settings),
        from_folder(_input_image(), "add snow", **settings),
    )
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["v_prediction", "edm"])
def test_the_model_schedulers_prediction_type_is_respected(kind):
    """A v-prediction or EDM model (CosXL Edit's scheduler config) samples as diffusers' SDXL pipeline does."""
    from diffusers import DDIMScheduler, EDMEulerScheduler

    components = tiny_sdxl_components()
    if kind == "v_prediction":
        components.scheduler = DDIMScheduler.from_config(
            components.scheduler.config, prediction_type="v_prediction"
        )
    else:
        components.scheduler = EDMEulerScheduler(
            sigma_min=0.002, sigma_max=120.0, prediction_type="v_prediction"
        )
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    ours = pipe(_input_image(), "make it blue", seed=9, num_inference_steps=3, resolution=32)
    assert ours.info["scheduler"] == type(components.scheduler).__name__

    reference = build_pipeline(StableDiffusionXLInstructPix2PixPipeline, components)
    reference.set_progress_bar_config(disable=True)
    latents = reference(
        prompt="make it blue",
        image=_input_image(),
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(9),
        output_type="latent",
    ).images
    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)


def test_an_sdxl_hub_id_is_read_with_the_sdxl_pipeline(sdxl_dir, monkeypatch):
    """A hub id whose model_index.json (from the hub or its cache) names the SDXL editor loads as one."""
    import huggingface_hub

    from ip2p.models import _edit_pipeline_class

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name: str(sdxl_dir / name))
    assert _edit_pipeline_class(None, None, ("owner/sdxl-edit",)) is StableDiffusionXLInstructPix2PixPipeline


def test_an_sdxl_editor_on_an_edm_schedule_is_cosxl_edit_with_scaled_image_latents(tmp_path):
    """CosXL Edit: diffusers keeps is_cosxl_edit out of model_index.json; the EDM scheduler names it, and the edit
    equals diffusers' pipeline with is_cosxl_edit=True (image latents times the VAE's scaling factor)."""
    from diffusers import EDMEulerScheduler

    components = tiny_sdxl_components()
    components.scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=120.0, prediction_type="v_prediction")
    folder = save_edit_model(components, tmp_path / "cosxl")
    pipe = EditPipeline.from_pretrained(str(folder), device="cpu", dtype="fp32")
    assert pipe.components.info["is_cosxl_edit"] is True
    ours = pipe(_input_image(), "make it blue", seed=4, num_inference_steps=3, resolution=32)

    reference = build_pipeline(StableDiffusionXLInstructPix2PixPipeline, pipe.components)
    assert reference.is_cosxl_edit
    reference.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="make it blue", image=_input_image(), height=32, width=32, num_inference_steps=3)
    kwargs.update(guidance_scale=7.5, image_guidance_scale=1.5, output_type="latent")
    latents = reference(**kwargs, generator=torch.Generator().manual_seed(4)).images
    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)
    pipe.components.info["is_cosxl_edit"] = False
    unscaled = pipe(_input_image(), "make it blue", seed=4, num_inference_steps=3, resolution=32)
    assert not torch.allclose(unscaled.latents, ours.latents, atol=1e-3)
