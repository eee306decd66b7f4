"""Memory and speed options of the editor: the same edits with them as without, refusals without a GPU, flags."""

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p.app_config import ServeConfig
from ip2p.cli import build_parser, main
from ip2p.edit_config import EditJob, RuntimeOptions
from ip2p.flags import config_overrides
from ip2p.pipeline import EditPipeline
from ip2p.pipeline_options import AcceleratorError

EDIT = dict(seed=3, num_inference_steps=3, text_guidance_scale=5.0, image_guidance_scale=1.5)


def _image(size=32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in result.images])


@pytest.mark.parametrize("attention_slicing", ["auto", "max", 1])
def test_slicing_gives_the_same_edit(make_components, attention_slicing):
    plain = EditPipeline(make_components(), device="cpu", dtype="fp32")
    sliced = EditPipeline(make_components(), device="cpu", dtype="fp32")
    sliced.enable_memory_options(vae_slicing=True, attention_slicing=attention_slicing)
    assert sliced.components.vae.use_slicing
    processors = {type(p).__name__ for p in sliced.components.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    a = plain(_image(), "make it blue", resolution=32, num_images=2, **EDIT)
    b = sliced(_image(), "make it blue", resolution=32, num_images=2, **EDIT)
    # sliced attention computes softmax(QK^T)V step by step instead of in one fused kernel: float rounding only
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-4, atol=1e-4)
    assert np.abs(_pixels(a) - _pixels(b)).max() <= 1.0  # at most one level of rounding
    assert sliced.options["vae_slicing"] and sliced.options["attention_slicing"] == attention_slicing


def test_vae_tiling_runs_above_the_tile_size(make_components):
    pipe = EditPipeline(make_components(), device="cpu", dtype="fp32")
    pipe.enable_memory_options(vae_tiling=True)
    vae = pipe.components.vae
    calls = {"encode": 0, "decode": 0}
    encode, decode = vae._tiled_encode, vae.tiled_decode

    def counting_encode(*args, **kw):
        calls["encode"] += 1
        return encode(*args, **kw)

    def counting_decode(*args, **kw):
        calls["decode"] += 1
        return decode(*args, **kw)

    vae._tiled_encode, vae.tiled_decode = counting_encode, counting_decode
    size = 2 * vae.tile_sample_min_size  # above the tile size: the image is encoded and decoded in tiles
    result = pipe(_image(size), "make it blue", resolution=size, **EDIT)
    assert result.images[0].size == (size, size)
    assert calls["encode"] >= 1 and calls["decode"] >= 1
    assert np.isfinite(_pixels(result)).all()


def test_channels_last_gives_the_same_edit_and_compile_is_recorded(make_components):
    plain = EditPipeline(make_components(), device="cpu", dtype="fp32")
    fast = EditPipeline(make_components(), device="cpu", dtype="fp32")
    fast.enable_speed_options(channels_last=True)
    a = plain(_image(), "add a hat", resolution=32, **EDIT)
    b = fast(_image(), "add a hat", resolution=32, **EDIT)
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-4, atol=1e-4)  # other convolution kernels
    assert fast.components.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast.enable_speed_options(compile=True)  # compiling happens at the first call, not here
    assert fast.options["channels_last"] and fast.options["compile"] in ("repeated_blocks", "unet")


def test_too_large_an_attention_slice_is_one_line(make_components):
    from ip2p.pipeline_options import OptionError

    pipe = EditPipeline(make_components(), device="cpu", dtype="fp32")
    with pytest.raises(OptionError, match="--attention-slicing 4096") as caught:
        pipe.enable_memory_options(attention_slicing=4096)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_compiled_unet_gives_the_same_edit(make_components):
    plain = EditPipeline(make_components(), device="cpu", dtype="fp32")
    compiled = EditPipeline(make_components(), device="cpu", dtype="fp32")
    compiled.enable_speed_options(compile=True)
    a = plain(_image(), "add a hat", resolution=32, **EDIT)
    b = compiled(_image(), "add a hat", resolution=32, **EDIT)
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_offload_without_a_gpu_is_refused(make_components):
    pipe = EditPipeline(make_components(), device="cpu", dtype="fp32")
    for mode in ("model", "sequential"):
        with pytest.raises(AcceleratorError, match="CPU"):
            pipe.enable_memory_options(cpu_offload=mode)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
@pytest.mark.parametrize("flags", [["--cpu-offload", "model"], ["--low-memory"]])
def test_cli_refuses_offload_without_a_gpu(tmp_path, capsys, flags):
    image = tmp_path / "in.png"
    _image().save(image)
    for command in (
        ["edit", str(image), "make it blue", "-o", str(tmp_path / "out.png"), "--model", "tiny"],
        ["serve", "--model", "tiny"],
        ["evaluate", "--model", "tiny", "-o", str(tmp_path / "eval"), "--test-set", "x.jsonl"],
    ):
        assert main([*command, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "needs a GPU" in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_flags_on_edit_serve_and_evaluate():
    parser = build_parser()
    extra = ["--lora", "a.safetensors:0.8", "--vae-tiling", "--attention-slicing", "4", "--compile"]
    args = parser.parse_args(["edit", "in.png", "x", "-o", "out.png", "--channels-last", *extra])
    job = EditJob(**config_overrides(args, EditJob))
    assert job.lora_specs() == [("a.safetensors", 0.8)] and job.channels_last and job.compile
    assert job.memory_options() == {
        "cpu_offload": None,
        "vae_slicing": False,
        "vae_tiling": True,
        "attention_slicing": "4",
    }
    serve = ServeConfig(**config_overrides(parser.parse_args(["serve", "--low-memory"]), ServeConfig))
    assert serve.memory_options() == {
        "cpu_offload": "model",
        "vae_slicing": True,
        "vae_tiling": True,
        "attention_slicing": "auto",
    }
    args = parser.parse_args(["evaluate", "-o", "runs/e", "--cpu-offload", "sequential", *extra])
    options = RuntimeOptions(**config_overrides(args, RuntimeOptions))
    assert options.memory_options()["cpu_offload"] == "sequential" and options.lora == ["a.safetensors:0.8"]
    with pytest.raises(SystemExit):
        parser.parse_args(["edit", "in.png", "x", "-o", "out.png", "--attention-slicing", "half"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload moves the models to a GPU")
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_gives_the_same_edit_and_frees_the_gpu(make_components, mode):
    plain = EditPipeline(make_components(), device="cuda", dtype="fp32")
    offloaded = EditPipeline(make_components(), device="cuda", dtype="fp32")
    offloaded.enable_memory_options(cpu_offload=mode)
    a = plain(_image(), "make it blue", resolution=32, **EDIT)
    b = offloaded(_image(), "make it blue", resolution=32, **EDIT)
    torch.testing.assert_close(b.latents, a.latents, rtol=1e-4, atol=1e-4)
    assert b.latents.device.type == "cuda"
    unet_device = next(offloaded.components.unet.parameters()).device.type
    assert unet_device in ("cpu", "meta")  # between calls the UNet's weights are off the GPU


def test_half_precision_default_is_bf16_where_the_gpu_supports_it(monkeypatch):
    from ip2p.devices import pick_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert pick_dtype(cpu, prefer_bf16=True) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype(cuda, prefer_bf16=True) == torch.bfloat16
    assert pick_dtype(cuda) == torch.float16  # other stages keep fp16 unless they ask
    assert pick_dtype(cuda, "fp16", prefer_bf16=True) == torch.float16  # an explicit choice wins
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype(cuda, prefer_bf16=True) == torch.float16
