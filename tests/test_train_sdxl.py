"""`ip2p train` from a tiny SDXL text-to-image model: surgery, one step, exact resume, the latent cache, the
export in diffusers' SDXL InstructPix2Pix pipeline, and training's conditioning equal to editing's."""

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLInstructPix2PixPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from ip2p.datasets import write_parquet_shard
from ip2p.edit_config import EditConfig
from ip2p.models import build_pipeline, load_pipeline_components
from ip2p.pipeline import EditPipeline
from ip2p.tiny import tiny_components, tiny_sdxl_components, tiny_text_encoder_2
from ip2p.train import TrainConfig, Trainer, train
from ip2p.train_conditioning import SDXLTextConditioning, frozen_dtypes

FAST = dict(
    resolution=32,
    min_resize=32,
    max_resize=36,
    train_batch_size=2,
    max_train_steps=4,
    checkpointing_steps=2,
    validation_steps=0,
    num_validation_examples=0,
    log_every=1,
    use_ema=True,
    ema_decay=0.99,
    learning_rate=1e-3,
    conditioning_dropout_prob=0.3,  # every batch of two likely drops something: the null text is exercised
)


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    """A tiny SDXL text-to-image model (4-channel UNet) in diffusers' StableDiffusionXLPipeline format."""
    folder = tmp_path_factory.mktemp("base") / "sdxl-t2i"
    build_pipeline(StableDiffusionXLPipeline, tiny_sdxl_components(edit=False)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Eight toy pairs in the official schema."""
    from ip2p.toy import random_edit, random_scene, render

    rng = random.Random(0)
    rows = []
    for _ in range(8):
        scene = random_scene(rng)
        edit = random_edit(scene, rng)
        rows.append(
            {
                "original_image": render(scene, size=32),
                "edit_prompt": edit.instruction,
                "edited_image": render(edit.after, size=32),
            }
        )
    return str(write_parquet_shard(rows, tmp_path_factory.mktemp("data") / "shard-00000.parquet"))


def _config(base, pairs, out, **kw):
    return TrainConfig(base_model=base, data=[pairs], output_dir=str(out), device="cpu", **{**FAST, **kw})


def _unet(trainer):
    return trainer.accelerator.unwrap_model(trainer.unet)


def test_one_step_from_an_sdxl_text_to_image_model_trains_the_8_channel_unet(sdxl_base, pairs, tmp_path):
    base = load_pipeline_components(sdxl_base, edit=False)
    assert base.is_sdxl and base.text_encoder_2 is not None and base.unet.config.in_channels == 4
    trainer = Trainer(_config(sdxl_base, pairs, tmp_path))
    unet = _unet(trainer)
    assert unet.conv_in.in_channels == 8 and unet.conv_in.weight[:, 4:].abs().sum() == 0
    torch.testing.assert_close(unet.conv_in.weight[:, :4], base.unet.conv_in.weight)
    for frozen in (
        trainer.components.vae,
        trainer.components.text_encoder,
        trainer.components.text_encoder_2,
    ):
        assert not any(p.requires_grad for p in frozen.parameters())
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    loss = trainer.train_step()
    assert loss > 0 and torch.isfinite(torch.tensor(loss))
    changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("add_embedding.") for k in changed)  # the pooled text and size ids reach the UNet
    assert any("attn2" in k for k in changed)  # and so do the text states
    assert "conv_in.weight" in changed


def test_training_conditions_the_unet_on_what_editing_feeds(sdxl_base, pairs, tmp_path):
    """The same prompt: training's hidden states, pooled text, size ids and null text equal EditPipeline's."""
    trainer = Trainer(_config(sdxl_base, pairs, tmp_path))
    cond = trainer.conditioning
    components = replace(trainer.components, unet=_unet(trainer))
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    prompts = ["turn the circle red", "remove the square"]
    text, null, added = pipe._sdxl_conditioning(prompts, EditConfig(), (32, 32))
    ours = cond.encode(prompts)
    torch.testing.assert_close(ours["text"], text, rtol=0, atol=0)
    torch.testing.assert_close(ours["text_pooled"], added["text_embeds"][0], rtol=0, atol=0)
    inputs = cond.unet_inputs(ours, torch.float32)
    torch.testing.assert_close(inputs["added_cond_kwargs"]["time_ids"], added["time_ids"][0], rtol=0, atol=0)
    torch.testing.assert_close(inputs["added_cond_kwargs"]["text_embeds"], added["text_embeds"][0])
    # the dropped text is editing's null text: zeros (force_zeros_for_empty_prompt), hidden states and pooled
    dropped = cond.drop(ours, torch.tensor([True, False]))
    torch.testing.assert_close(dropped["text"][:1], null[:1], rtol=0, atol=0)
    torch.testing.assert_close(dropped["text_pooled"][:1], added["text_embeds"][1][:1], rtol=0, atol=0)
    assert dropped["text"][0].abs().sum() == 0
    torch.testing.assert_close(dropped["text"][1], ours["text"][1], rtol=0, atol=0)
    # a model without force_zeros_for_empty_prompt: "" encoded in both
    components = replace(components, info={**components.info, "force_zeros_for_empty_prompt": False})
    encoded = SDXLTextConditioning(components, "cpu", 32)
    _, null, added = EditPipeline(components, "cpu", "fp32")._sdxl_conditioning(
        prompts, EditConfig(), (32, 32)
    )
    torch.testing.assert_close(encoded.null["text"].expand_as(null), null, rtol=0, atol=0)
    torch.testing.assert_close(
        encoded.null["text_pooled"].expand(2, -1), added["text_embeds"][1], rtol=0, atol=0
    )
    assert encoded.null["text"].abs().sum() > 0


def test_cached_latents_give_the_loss_of_the_uncached_path(sdxl_base, pairs, tmp_path):
    kw = dict(min_resize=32, max_resize=32)
    plain = Trainer(_config(sdxl_base, pairs, tmp_path / "plain", **kw))
    cached = Trainer(_config(sdxl_base, pairs, tmp_path / "cached", cache_latents=True, **kw))
    cached.build_cache()
    assert {"text", "text_pooled"} <= set(load_file(tmp_path / "cached" / "cache" / "latents-32.safetensors"))
    for step in range(3):
        positions = plain._positions(step, 0)
        a, b = plain._batch(positions), cached._batch(positions)
        for key in ("text", "image", "latents", "timesteps"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain._loss(a), cached._loss(b), rtol=1e-4, atol=1e-6)


def test_a_stopped_and_resumed_run_equals_an_uninterrupted_one(sdxl_base, pairs, tmp_path):
    steps = dict(max_train_steps=3, checkpointing_steps=3)
    train(_config(sdxl_base, pairs, tmp_path / "straight", **steps))
    out = tmp_path / "stopped"
    train(_config(sdxl_base, pairs, out, max_minutes=0.0, **steps))  # out of time after the first step
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-1"]
    train(_config(sdxl_base, pairs, out, **steps))
    for name in ("unet", "ema"):
        a = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-3" / f"{name}.safetensors")
        b = load_file(out / "checkpoints" / "checkpoint-3" / f"{name}.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["no", pytest.param("bf16", marks=pytest.mark.slow)])
def test_the_export_loads_in_diffusers_sdxl_pipeline_and_edits_as_ours(sdxl_base, pairs, tmp_path, precision):
    """The frozen modules (both text encoders, the VAE) are exported as loaded, also after bf16 training; the folder
    is an SDXL InstructPix2Pix model that diffusers' pipeline and ours load and edit alike."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        folder = train(
            _config(
                sdxl_base,
                pairs,
                tmp_path,
                max_train_steps=1,
                mixed_precision=precision,
                num_validation_examples=1,
            )
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert list((tmp_path / "validation").glob("step-*.png"))  # validation edits with the SDXL components
    reference = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder, add_watermarker=False)
    assert reference.unet.config.in_channels == 8 and reference.config.force_zeros_for_empty_prompt
    base = StableDiffusionXLPipeline.from_pretrained(sdxl_base, add_watermarker=False)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        exported, loaded = getattr(reference, name).state_dict(), getattr(base, name).state_dict()
        for key in loaded:
            torch.testing.assert_close(exported[key], loaded[key], rtol=0, atol=0)
    image = Image.new("RGB", (32, 32), (200, 40, 40))
    ours = EditPipeline.from_pretrained(str(folder), device="cpu", dtype="fp32")
    result = ours(image, "make it blue", seed=3, num_inference_steps=2, resolution=32)
    reference.set_progress_bar_config(disable=True)
    latents = reference(
        prompt="make it blue",
        image=image,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=result.config.text_guidance_scale,
        image_guidance_scale=result.config.image_guidance_scale,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    torch.testing.assert_close(result.latents, latents, rtol=1e-5, atol=1e-5)


def test_an_sdxl_vae_runs_in_fp32_under_fp16_and_mismatched_encoders_are_refused():
    sdxl, sd = tiny_sdxl_components(edit=False), tiny_components(edit=False)
    assert frozen_dtypes(sdxl, torch.float16) == {
        "vae": torch.float32,
        "text_encoder": torch.float16,
        "text_encoder_2": torch.float16,
    }
    assert frozen_dtypes(sdxl, torch.bfloat16)["vae"] == torch.bfloat16  # bf16 has fp32's range
    assert frozen_dtypes(sd, torch.float16) == {"vae": torch.float16, "text_encoder": torch.float16}
    sdxl.text_encoder_2 = tiny_text_encoder_2(sdxl.tokenizer, projection_dim=16)
    with pytest.raises(ValueError, match="do not belong together"):
        SDXLTextConditioning(sdxl, "cpu", 32)


@pytest.mark.slow
def test_the_sdxl_training_benchmark_runs_and_writes_its_table(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_train_sdxl  # benchmarks/bench_train_sdxl.py

    out = tmp_path / "bench.json"
    argv = ["bench_train_sdxl.py", "--steps", "1", "--batch", "2", "--size", "32", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--threads", "1", "--out", str(out)])
    bench_train_sdxl.main()
    results = json.loads(out.read_text())["results"]
    assert set(results) == {bench_train_sdxl.REFERENCE, "ip2p train", "ip2p train --cache-latents"}
    assert results[bench_train_sdxl.REFERENCE]["ratio"] == 1.0
    assert all(r["samples_per_second"] > 0 and r["samples_per_cpu_second"] > 0 for r in results.values())
    assert "| ip2p train --cache-latents |" in capsys.readouterr().out


def test_sdxl_text_to_image_models_are_read_with_the_sdxl_pipeline(sdxl_base, tmp_path):
    """A folder whose model_index.json names an SDXL pipeline, or an original-format SDXL checkpoint (its second
    text encoder under conditioner.embedders.1), is read as SDXL; an SD checkpoint is not."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from ip2p.models import _text_to_image_pipeline_class

    sdxl, sd = tmp_path / "xl.safetensors", tmp_path / "sd.safetensors"
    save_file({"conditioner.embedders.1.model.text_projection": torch.zeros(2, 2)}, str(sdxl))
    save_file({"cond_stage_model.transformer.text_model.final_layer_norm.bias": torch.zeros(2)}, str(sd))
    assert _text_to_image_pipeline_class(Path(sdxl_base), None) is StableDiffusionXLPipeline
    assert _text_to_image_pipeline_class(sdxl, None) is StableDiffusionXLPipeline
    assert _text_to_image_pipeline_class(sd, None) is StableDiffusionPipeline
    assert _text_to_image_pipeline_class(sd, sdxl_base) is StableDiffusionXLPipeline  # its --config folder
