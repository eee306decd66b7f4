"""LoRA training, fine-tuning an editor and the optimizers of `ip2p train`, on tiny components: what trains, what a
checkpoint holds, exact resume, the adapter's export loaded by ip2p and by diffusers, one-line errors."""

import random
import sys
import types

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from ip2p.datasets import write_parquet_shard
from ip2p.edit_config import RuntimeOptions
from ip2p.models import build_pipeline
from ip2p.pipeline import EditPipeline
from ip2p.train import TrainConfig, Trainer, train
from ip2p.train_lora import LoraTrainingError
from ip2p.train_optim import OptimizerError

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
    ema_decay=0.9,
    learning_rate=1e-2,
)
EDIT = dict(seed=3, num_inference_steps=3, resolution=32, text_guidance_scale=5.0, image_guidance_scale=1.5)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from ip2p.tiny import tiny_components

    c = tiny_components(edit=False)
    folder = tmp_path_factory.mktemp("base") / "t2i"
    StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
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
    path = tmp_path_factory.mktemp("data") / "shard-00000.parquet"
    write_parquet_shard(rows, path)
    return str(path)


def _config(base_model, pairs, out, **kw):
    settings = {**FAST, "lora_rank": 4, "lora_alpha": 8.0, **kw}
    return TrainConfig(base_model=base_model, data=[pairs], output_dir=str(out), device="cpu", **settings)


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _unet(trainer):
    return trainer.accelerator.unwrap_model(trainer.unet)


def test_a_lora_step_from_a_text_to_image_model_changes_only_the_adapters_and_conv_in(
    base_model, pairs, tmp_path
):
    trainer = Trainer(_config(base_model, pairs, tmp_path))
    unet = _unet(trainer)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("conv_in.") for n in trainable)
    assert {"conv_in.weight", "conv_in.bias"} <= trainable  # the new image channels must learn
    assert any(".to_q.lora_A." in n for n in trainable) and any(".to_out.0.lora_B." in n for n in trainable)
    trainer.train_step()
    changed = {k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable
    assert "conv_in.weight" in changed and any("lora_B" in k for k in changed)
    # the adapters start at B = 0: before training the UNet computes what the surgered base model computes
    assert all(before[k].abs().sum() == 0 for k in before if "lora_B" in k)


def test_lora_on_an_editor_freezes_conv_in_and_fine_tuning_an_editor_needs_no_surgery(
    tiny_model_dir, pairs, tmp_path
):
    editor = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_model_dir).unet
    auto = Trainer(
        _config(str(tiny_model_dir), pairs, tmp_path / "auto", lora_rank=0)
    )  # an editor: no surgery
    full = _unet(auto)
    assert full.config.in_channels == 8
    torch.testing.assert_close(full.conv_in.weight, editor.conv_in.weight, rtol=0, atol=0)
    lora = Trainer(_config(str(tiny_model_dir), pairs, tmp_path / "lora", start_from="editor"))
    unet = _unet(lora)
    assert not unet.conv_in.weight.requires_grad
    assert all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    conv = unet.conv_in.weight.clone()
    lora.train_step()
    torch.testing.assert_close(unet.conv_in.weight, conv, rtol=0, atol=0)
    with pytest.raises(Exception, match="input channels"):  # an editor is not a text-to-image model
        Trainer(_config(str(tiny_model_dir), pairs, tmp_path / "t2i", start_from="text-to-image"))


def test_fine_tuning_the_bundled_toy_editor_starts_from_it(pairs, tmp_path):
    from ip2p.models import load_pipeline_components

    bundled = load_pipeline_components("toy", edit=True).unet
    trainer = Trainer(
        _config(
            "toy",
            pairs,
            tmp_path,
            start_from="editor",
            lora_rank=0,
            resolution=64,
            min_resize=64,
            max_resize=64,
        )
    )
    unet = _unet(trainer)
    assert unet.config.in_channels == 8
    for (name, a), (_, b) in zip(unet.state_dict().items(), bundled.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b.float(), rtol=0, atol=0, msg=name)  # the editor itself, unchanged
    trainer.train_step()
    assert not torch.equal(unet.conv_in.weight, bundled.conv_in.weight.float())  # and it trains


def test_checkpoints_hold_only_what_trains_and_a_stopped_run_resumes_exactly(base_model, pairs, tmp_path):
    straight = train(_config(base_model, pairs, tmp_path / "straight"))
    assert straight == tmp_path / "straight" / "lora"
    ckpt = tmp_path / "straight" / "checkpoints" / "checkpoint-4"
    saved, ema = load_file(ckpt / "unet.safetensors"), load_file(ckpt / "ema.safetensors")
    assert saved.keys() == ema.keys()
    assert all("lora_" in k or k.startswith("conv_in.") for k in saved) and "conv_in.weight" in saved
    trainer = Trainer(_config(base_model, pairs, tmp_path / "other"))
    assert saved.keys() == {n for n, p in _unet(trainer).named_parameters() if p.requires_grad}

    out = tmp_path / "stopped"
    train(_config(base_model, pairs, out, max_minutes=0.0))  # out of time after the first step
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-1"]
    train(_config(base_model, pairs, out))  # the same command resumes
    for name in ("pytorch_lora_weights.safetensors", "conv_in.safetensors"):
        a, b = load_file(straight / name), load_file(out / "lora" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_checkpoint_of_other_trained_weights_is_refused_in_one_line(base_model, pairs, tmp_path):
    Trainer(_config(base_model, pairs, tmp_path, lora_rank=0)).save_checkpoint()  # a full fine-tune's
    with pytest.raises(LoraTrainingError, match="not those this run trains") as caught:
        Trainer(_config(base_model, pairs, tmp_path))
    assert "\n" not in str(caught.value)
    Trainer(_config(base_model, pairs, tmp_path / "r4")).save_checkpoint()
    with pytest.raises(LoraTrainingError, match="do not fit|not those"):
        Trainer(_config(base_model, pairs, tmp_path / "r4", lora_rank=8))


@pytest.mark.slow
def test_the_export_loads_in_ip2p_and_diffusers_and_edits_as_the_trained_unet(base_model, pairs, tmp_path):
    trainer = Trainer(_config(base_model, pairs, tmp_path, max_train_steps=2))
    trainer.train()
    folder = tmp_path / "lora"
    assert {p.name for p in folder.iterdir()} >= {
        "pytorch_lora_weights.safetensors",
        "conv_in.safetensors",
        "lora_info.json",
    }
    trained = trainer._final_unet()  # the EMA weights, as exported
    components = trainer.components
    from dataclasses import replace

    reference = EditPipeline(replace(components, unet=trained), device="cpu", dtype="fp32")(
        _image(), "make it blue", **EDIT
    )
    # ip2p: the text-to-image base surgered at load, the adapter and its input convolution on it
    loaded = EditPipeline.from_pretrained(
        base_model, device="cpu", dtype="fp32", options=RuntimeOptions(lora=[str(folder)])
    )
    assert loaded.components.unet.config.in_channels == 8
    ours = loaded(_image(), "make it blue", **EDIT)
    torch.testing.assert_close(ours.latents, reference.latents, rtol=1e-5, atol=1e-5)
    # diffusers alone: the base UNet at 8 channels, conv_in.safetensors into it, load_lora_weights (alpha 8 from
    # the file's metadata: with the rank's 4 the edit would differ)
    unet = UNet2DConditionModel.from_pretrained(
        base_model, subfolder="unet", in_channels=8, ignore_mismatched_sizes=True, low_cpu_mem_usage=False
    )
    unet.load_state_dict(load_file(folder / "conv_in.safetensors"), strict=False)
    base = StableDiffusionPipeline.from_pretrained(
        base_model, safety_checker=None, requires_safety_checker=False
    )
    pipe = build_pipeline(StableDiffusionInstructPix2PixPipeline, replace(components, unet=unet))
    pipe.scheduler = base.scheduler
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(folder))
    latents = pipe(
        prompt="make it blue",
        image=_image(),
        num_inference_steps=3,
        guidance_scale=5.0,
        image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
    ).images
    torch.testing.assert_close(latents, ours.latents, rtol=1e-5, atol=1e-5)
    # and `ip2p edit --model BASE --lora RUN/lora` on the command line
    from ip2p.cli import main

    _image().save(tmp_path / "in.png")
    argv = [
        "edit",
        str(tmp_path / "in.png"),
        "make it blue",
        "-o",
        str(tmp_path / "out.png"),
        "--model",
        base_model,
    ]
    assert main([*argv, "--lora", str(folder), "--device", "cpu", "--steps", "2", "--resolution", "32"]) == 0
    assert Image.open(tmp_path / "out.png").size == (32, 32)


def test_lora_settings_are_checked_in_one_line(base_model, pairs, tmp_path):
    cases = [
        (dict(lora_targets=["no_such_layer"]), "no_such_layer"),
        (dict(lora_targets=["to_q", "conv_in"]), "conv_in"),
    ]
    for settings, words in cases:
        with pytest.raises(LoraTrainingError, match=words) as caught:
            Trainer(_config(base_model, pairs, tmp_path / words, **settings))
        assert "\n" not in str(caught.value)
    for settings, words in [
        (dict(lora_rank=-1), "lora_rank"),
        (dict(lora_alpha=0.0), "lora_alpha"),
        (dict(lora_targets=[]), "lora_targets"),
        (dict(optimizer="sgd"), "optimizer"),
        (dict(start_from="somewhere"), "start_from"),
    ]:
        with pytest.raises(ValueError, match=words):
            _config(base_model, pairs, tmp_path, **settings).validate()


def test_adamw8bit_without_bitsandbytes_is_a_one_line_error(base_model, pairs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(OptimizerError, match=r"needs bitsandbytes.*pip install") as caught:
        Trainer(_config(base_model, pairs, tmp_path, optimizer="adamw8bit"))
    assert "\n" not in str(caught.value)


def test_adamw8bit_that_cannot_run_on_the_device_is_a_one_line_error(
    base_model, pairs, tmp_path, monkeypatch
):
    class Broken:
        def __init__(self, params, **settings):
            self.params = params

        def step(self):
            raise RuntimeError("no kernel for this device\nsecond line of a traceback")

    fake = types.ModuleType("bitsandbytes")
    fake.__version__ = "0.0-fake"
    fake.optim = types.SimpleNamespace(AdamW8bit=Broken)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    with pytest.raises(OptimizerError, match="cannot run its 8-bit AdamW on cpu") as caught:
        Trainer(_config(base_model, pairs, tmp_path, optimizer="adamw8bit"))
    assert "\n" not in str(caught.value) and "no kernel for this device" in str(caught.value)


@pytest.mark.slow
def test_adamw8bit_trains_and_a_stopped_run_resumes_exactly(base_model, pairs, tmp_path):
    pytest.importorskip("bitsandbytes")
    from ip2p.train_optim import bitsandbytes_adamw8bit

    try:
        bitsandbytes_adamw8bit(torch.device("cpu"))
    except OptimizerError as exc:
        pytest.skip(str(exc))
    settings = dict(optimizer="adamw8bit", lora_rank=0, max_train_steps=3, checkpointing_steps=1)
    trainer = Trainer(_config(base_model, pairs, tmp_path / "probe", **settings))
    assert type(trainer.optimizer.optimizer).__name__ == "AdamW8bit"  # inside accelerate's wrapper
    unet = _unet(trainer)
    before = unet.conv_in.weight.clone()
    trainer.train_step()
    assert not torch.equal(unet.conv_in.weight, before)
    straight = train(_config(base_model, pairs, tmp_path / "straight", **settings))
    stopped = tmp_path / "stopped"
    train(_config(base_model, pairs, stopped, max_minutes=0.0, **settings))
    resumed = train(_config(base_model, pairs, stopped, **settings))
    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("start_from", ["auto", "editor"])
def test_lora_trains_under_gradient_checkpointing_and_bf16(
    base_model, tiny_model_dir, pairs, tmp_path, start_from
):
    source = base_model if start_from == "auto" else str(tiny_model_dir)
    from accelerate.state import AcceleratorState

    settings = dict(gradient_checkpointing=True, mixed_precision="bf16", start_from=start_from)
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        trainer = Trainer(_config(source, pairs, tmp_path, **settings))
        unet = _unet(trainer)
        before = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_B" in n}
        trainer.train_step()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    # the adapters learn even where the checkpointed blocks' inputs need no gradient (conv_in frozen on an editor)
    assert all(not torch.equal(p, before[n]) for n, p in unet.named_parameters() if n in before)
