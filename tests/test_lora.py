"""LoRA adapters on the editor: diffusers' format and loader, parity with diffusers' pipeline, scales, refusals."""

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from ip2p.edit_config import EditJob, RuntimeOptions, parse_lora_spec
from ip2p.models import build_pipeline
from ip2p.pipeline import EditPipeline
from ip2p.pipeline_options import LoraError

EDIT = dict(seed=5, num_inference_steps=3, resolution=32, text_guidance_scale=5.0, image_guidance_scale=1.5)


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _save_lora(components, folder, seed=1, r=4) -> None:
    """A random non-zero UNet LoRA made with peft, written by diffusers' ``save_lora_weights``."""
    from diffusers.utils import convert_state_dict_to_diffusers

    unet = copy.deepcopy(components.unet)
    torch.manual_seed(seed)
    unet.add_adapter(
        LoraConfig(
            r=r, lora_alpha=r, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionInstructPix2PixPipeline.save_lora_weights(
        str(folder), unet_lora_layers=layers, safe_serialization=True
    )


@pytest.fixture
def lora_dir(tmp_path, make_components):
    folder = tmp_path / "lora"
    _save_lora(make_components(), folder)
    return folder


def test_equals_diffusers_with_the_same_adapter(make_components, lora_dir):
    components = make_components()
    reference_components = copy.deepcopy(components)
    plain = EditPipeline(copy.deepcopy(components), device="cpu", dtype="fp32")(
        _image(), "make it blue", **EDIT
    )

    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    assert pipe.load_lora(str(lora_dir / "pytorch_lora_weights.safetensors"), scale=0.7) == "lora0"
    ours = pipe(_image(), "make it blue", **EDIT)

    reference = build_pipeline(StableDiffusionInstructPix2PixPipeline, reference_components)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(lora_dir), adapter_name="x")
    reference.set_adapters(["x"], adapter_weights=[0.7])
    latents = reference(
        prompt="make it blue",
        image=_image(),
        num_inference_steps=3,
        guidance_scale=5.0,
        image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images
    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)
    assert (ours.latents - plain.latents).abs().max() > 1e-3  # the adapter changes the edit
    assert pipe.options["lora"] == {"lora0": 0.7}


def test_scale_zero_is_no_adapter_and_adapters_combine(make_components, lora_dir, tmp_path):
    plain = EditPipeline(make_components(), device="cpu", dtype="fp32")(_image(), "add a hat", **EDIT)
    pipe = EditPipeline(make_components(), device="cpu", dtype="fp32")
    pipe.load_lora(str(lora_dir), scale=0.0)  # a folder holding pytorch_lora_weights.safetensors
    zero = pipe(_image(), "add a hat", **EDIT)
    torch.testing.assert_close(zero.latents, plain.latents, rtol=0, atol=1e-6)

    _save_lora(make_components(), tmp_path / "second", seed=2)
    assert pipe.load_lora(str(tmp_path / "second"), scale=1.0, name="second") == "second"
    two = pipe(_image(), "add a hat", **EDIT)
    assert (two.latents - plain.latents).abs().max() > 1e-3
    assert pipe.options["lora"] == {"lora0": 0.0, "second": 1.0}


def test_from_pretrained_takes_lora_options(tiny_model_dir, lora_dir):
    options = RuntimeOptions(lora=[f"{lora_dir / 'pytorch_lora_weights.safetensors'}:0.5"])
    pipe = EditPipeline.from_pretrained(str(tiny_model_dir), device="cpu", options=options)
    assert pipe.options["lora"] == {"lora0": 0.5}


def test_bad_paths_and_formats_are_one_line_errors(make_components, tmp_path):
    pipe = EditPipeline(make_components(), device="cpu", dtype="fp32")
    pickled = tmp_path / "lora.bin"
    torch.save({"unet.x.lora_A.weight": torch.zeros(1)}, pickled)
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"some.other.weight": torch.zeros(2, 2)}, str(foreign))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file at all")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (tmp_path / "missing.safetensors", "no such file"),
        (pickled, "only .safetensors"),
        (foreign, "no LoRA weights"),
        (broken, "cannot be read"),
        (empty, "no .safetensors file"),
    ]
    for path, words in cases:
        with pytest.raises(LoraError, match=words) as caught:
            pipe.load_lora(str(path))
        assert "\n" not in str(caught.value)
    assert pipe.options.get("lora", {}) == {}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("my-lora.safetensors", ("my-lora.safetensors", 1.0)),
        ("my-lora.safetensors:0.8", ("my-lora.safetensors", 0.8)),
        ("C:\\loras\\style.safetensors", ("C:\\loras\\style.safetensors", 1.0)),
        ("C:\\loras\\style.safetensors:1.5", ("C:\\loras\\style.safetensors", 1.5)),
        ("runs/a:b/lora.safetensors", ("runs/a:b/lora.safetensors", 1.0)),
        ("lora.safetensors:-0.5", ("lora.safetensors", -0.5)),
    ],
)
def test_lora_spec_splits_on_the_last_colon_before_a_number(text, expected):
    assert parse_lora_spec(text) == expected


def test_lora_flag_is_repeatable_on_the_command_line():
    from ip2p.cli import build_parser
    from ip2p.flags import config_overrides

    args = build_parser().parse_args(
        ["edit", "in.png", "x", "-o", "out.png", "--lora", "a.safetensors:0.8", "--lora", "C:\\b.safetensors"]
    )
    job = EditJob(**config_overrides(args, EditJob))
    assert job.lora_specs() == [("a.safetensors", 0.8), ("C:\\b.safetensors", 1.0)]
    with pytest.raises(ValueError, match="finite"):
        EditJob(input="a.png", output="b.png", lora=["a.safetensors:inf"]).validate()


def test_sdxl_editor_equals_diffusers_sdxl_with_the_same_adapter(tmp_path):
    from diffusers import StableDiffusionXLInstructPix2PixPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    from ip2p.tiny import tiny_sdxl_components

    components = tiny_sdxl_components()
    unet = copy.deepcopy(components.unet)
    torch.manual_seed(3)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    StableDiffusionXLInstructPix2PixPipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    )
    reference_components = copy.deepcopy(components)
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    pipe.load_lora(str(tmp_path), scale=0.9)
    ours = pipe(_image(), "make it blue", **EDIT)

    reference = build_pipeline(StableDiffusionXLInstructPix2PixPipeline, reference_components)
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(str(tmp_path), adapter_name="x")
    reference.set_adapters(["x"], adapter_weights=[0.9])
    latents = reference(
        prompt="make it blue",
        image=_image(),
        height=32,
        width=32,
        num_inference_steps=3,
        guidance_scale=5.0,
        image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).images
    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)


def test_cli_refuses_a_bad_adapter_before_loading_the_model(tmp_path, capsys):
    from ip2p.cli import main

    image = tmp_path / "in.png"
    _image().save(image)
    pickled = tmp_path / "style.pt"
    pickled.write_bytes(b"\x80\x04")
    for spec, words in [(f"{tmp_path / 'missing.safetensors'}:0.5", "no such file"), (str(pickled), "only")]:
        argv = ["edit", str(image), "add a hat", "-o", str(tmp_path / "out.png"), "--model", "tiny"]
        assert main([*argv, "--device", "cpu", "--lora", spec]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out.png").exists()


def test_cli_edits_with_an_adapter(tmp_path, lora_dir, capsys):
    from ip2p.cli import main

    image = tmp_path / "in.png"
    _image().save(image)
    argv = [
        "edit",
        str(image),
        "add a hat",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--seed",
        "1",
    ]
    argv += ["--resolution", "32"]
    assert main([*argv, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*argv, "-o", str(tmp_path / "lora.png"), "--lora", f"{lora_dir}:1.0", "--vae-slicing"]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain.png"), dtype=np.int16)
    adapted = np.asarray(Image.open(tmp_path / "lora.png"), dtype=np.int16)
    assert plain.shape == adapted.shape and np.abs(plain - adapted).max() > 0
