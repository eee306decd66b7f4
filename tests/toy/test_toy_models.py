"""The toy base model's code paths on tiny configs: build, train a step of each stage, resume exactly, load the
saved folders offline and generate."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ip2p.harness import Checkpointer
from ip2p.toy import quality
from ip2p.toy.base import TrainBaseConfig, TrainSettings, train_base, train_stages
from ip2p.toy.captions import parse_caption
from ip2p.toy.data import heldout_scenes, one_attribute_variants, training_scenes
from ip2p.toy.models import (
    build_clip,
    build_tokenizer,
    build_unet,
    build_vae,
    count_parameters,
    preset,
    tokenizer_corpus,
)
from ip2p.toy.scene import random_scene

PIPE_KWARGS = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_settings(**overrides) -> TrainSettings:
    values = dict(
        n_scenes=48,
        ckpt_every=1,
        threads=1,
        tokenizer_texts=300,
        vae_steps=2,
        vae_batch=4,
        clip_steps=2,
        clip_batch=8,
        unet_steps=2,
        unet_batch=4,
    )
    values.update(overrides)
    return TrainSettings(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-base")
    result = train_base(TrainBaseConfig(out=str(out), device="cpu", preset="test", settings=tiny_settings()))
    return out, result


def test_bundled_preset_fits_the_size_budget():
    cfg = preset("toy")
    tok = build_tokenizer(cfg.clip, tokenizer_corpus(300, 100))
    vae, clip, unet = (
        build_vae(cfg.vae),
        build_clip(cfg.clip, tok),
        build_unet(cfg.unet, cfg.clip.text_hidden),
    )
    n_vae, n_clip, n_unet = count_parameters(vae), count_parameters(clip), count_parameters(unet)
    assert n_unet <= 7_000_000
    # Bundled: base (VAE, text tower, UNet) + clip (both towers), stored in fp16: well under 40 MB.
    total = n_vae + count_parameters(clip.text_model) + n_unet + n_clip
    assert total * 2 < 40e6
    assert vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean.shape == (1, 4, 16, 16)


def test_tokenizer_makes_world_words_single_tokens():
    tok = build_tokenizer(preset("test").clip, tokenizer_corpus(300, 100))
    text = "a small purple heart in the bottom left corner on a navy background, drawn as outlines"
    assert len(tok(text).input_ids) == len(text.replace(",", " ,").split()) + 2
    assert tok.model_max_length % 8 == 0 and tok.model_max_length >= 44


def test_saved_tokenizer_keeps_no_padding_from_its_calls(tmp_path):
    from ip2p.tokenization import without_call_state

    tok = build_tokenizer(preset("test").clip, tokenizer_corpus(300, 100))
    tok(["a red circle"], padding="max_length", max_length=tok.model_max_length, truncation=True)
    tok.save_pretrained(tmp_path / "as-called")
    without_call_state(tok).save_pretrained(tmp_path / "clean")
    called, clean = (
        json.loads((tmp_path / d / "tokenizer.json").read_text()) for d in ("as-called", "clean")
    )
    assert called["padding"] is not None  # what transformers persists, and this helper removes
    assert clean["padding"] is None and clean["truncation"] is None
    assert tok.backend_tokenizer.padding is not None  # the original is left as it was
    reloaded = type(tok).from_pretrained(tmp_path / "clean")
    assert reloaded("a red circle").input_ids == tok("a red circle").input_ids


def test_one_attribute_variants_differ_in_exactly_one_attribute():
    rng = random.Random(0)
    for _ in range(20):
        scene = random_scene(rng)
        variants = one_attribute_variants(scene)
        assert variants and scene not in variants and len(set(variants)) == len(variants)
        for v in variants:
            v.validate()
            changes = (v.background != scene.background) + (v.style != scene.style)
            changes += len(set(v.shapes) - set(scene.shapes))
            assert changes == 1


def test_training_scenes_exclude_heldout():
    held = {s for group in heldout_scenes().values() for s in group}
    assert len(heldout_scenes()["one"]) == 100 and len(heldout_scenes()["two"]) == 100
    assert not held & set(training_scenes(500, seed=3))


def test_train_base_writes_loadable_models(trained, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out, result = trained
    assert result["base"] == out / "base" and result["clip"] == out / "clip"
    pipe = StableDiffusionPipeline.from_pretrained(out / "base", local_files_only=True, **PIPE_KWARGS)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr
    image = pipe(
        "a small red circle at the top left on a navy background",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
    clip = CLIPModel.from_pretrained(out / "clip", local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(out / "clip", local_files_only=True)
    assert clip.config.text_config.eos_token_id == tok.eos_token_id
    assert clip.config.text_config.max_position_embeddings == tok.model_max_length
    # The pipeline's text encoder is CLIP's text tower.
    for name, value in pipe.text_encoder.state_dict().items():
        torch.testing.assert_close(value, clip.text_model.state_dict()[name.removeprefix("text_model.")])


def test_stages_are_skipped_when_done(trained):
    out, _ = trained
    before = (out / "base" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    train_stages(out, "cpu", preset("test"), tiny_settings(unet_steps=5))
    assert (out / "base" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == before


FINAL = {"vae": "work/vae/final", "clip": "clip", "unet": "base"}


def _restart_stage(src, dst, stage):
    """A copy of a finished run with one stage undone (its checkpoints and final output removed)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / FINAL[stage])
    shutil.rmtree(dst / "work" / stage / "checkpoints")
    return dst / "work" / stage / "checkpoints"


@pytest.mark.parametrize("stage", ["vae", "clip", "unet"])
def test_resume_reaches_the_same_state(trained, tmp_path, stage):
    """Stop after one step and run again: the second step's checkpoint equals an uninterrupted run's, bit for bit."""
    out, _ = trained
    straight = _restart_stage(out, tmp_path / "straight", stage)
    train_stages(tmp_path / "straight", "cpu", preset("test"), tiny_settings(), stages=(stage,))
    resumed = _restart_stage(out, tmp_path / "resumed", stage)
    train_stages(
        tmp_path / "resumed", "cpu", preset("test"), tiny_settings(**{f"{stage}_steps": 1}), stages=(stage,)
    )
    assert Checkpointer(resumed).latest() == 1
    shutil.rmtree(tmp_path / "resumed" / FINAL[stage])
    train_stages(tmp_path / "resumed", "cpu", preset("test"), tiny_settings(), stages=(stage,))
    assert Checkpointer(resumed).latest() == 2
    a = load_file(straight / "step-2.safetensors")
    b = load_file(resumed / "step-2.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    sa = torch.load(straight / "step-2.pt", weights_only=True)
    sb = torch.load(resumed / "step-2.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 2
    for pid, st in sa["optimizer"]["state"].items():
        torch.testing.assert_close(
            st["exp_avg_sq"], sb["optimizer"]["state"][pid]["exp_avg_sq"], rtol=0, atol=0
        )


def test_quality_measures_run(trained):
    from diffusers import AutoencoderKL
    from transformers import CLIPModel, CLIPTokenizer

    from ip2p.toy.render import render_batch

    out, _ = trained
    scenes = heldout_scenes()["mixed"][:4]
    vae = AutoencoderKL.from_pretrained(out / "base" / "vae")
    psnr = quality.vae_psnr(vae, render_batch(scenes))
    assert np.isfinite(psnr["vae_psnr_db"])
    clip = CLIPModel.from_pretrained(out / "clip")
    tok = CLIPTokenizer.from_pretrained(out / "clip")
    r = quality.clip_retrieval(clip, tok, scenes)
    assert 0.0 <= r["clip_top1"] <= 1.0
    pipe = quality.load_pipeline(out / "base", torch.device("cpu"))
    sets = {"one": heldout_scenes()["one"][:2], "two": heldout_scenes()["two"][:2]}
    res, samples = quality.text_to_image(pipe, sets, guidance=2.0, steps=2)
    assert 0.0 <= res["t2i_one_shape"] <= 1.0 and samples["one"][0].shape == (2, 64, 64, 3)
    res, samples = quality.text_to_image(pipe, sets, guidance=2.0, steps=2, brief=True)
    assert set(res) == {"t2i_brief_one_shape", "t2i_brief_two_shape"}
    assert "left" not in samples["two"][1][0] and len(samples["two"][2]) == 2


def test_export_bundle_loads_in_fp32(trained, tmp_path):
    from diffusers import StableDiffusionPipeline

    from ip2p.toy.base.export import export_bundle

    out, _ = trained
    paths = export_bundle(out, tmp_path / "weights")
    pipe = StableDiffusionPipeline.from_pretrained(paths["base"], **PIPE_KWARGS)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.float32
    assert (paths["clip"] / "model.safetensors").is_file()
    ref = load_file(out / "base" / "unet" / "diffusion_pytorch_model.safetensors")
    for k, v in pipe.unet.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-4)


def test_decoder_fine_tuning_keeps_the_encoder(trained, tmp_path):
    from diffusers import AutoencoderKL

    out, _ = trained
    other = tmp_path / "run"
    shutil.copytree(out, other)
    train_stages(other, "cpu", preset("test"), tiny_settings(vae_decoder_steps=1), stages=("vae_decoder",))
    before = AutoencoderKL.from_pretrained(out / "work" / "vae" / "final").state_dict()
    after = AutoencoderKL.from_pretrained(other / "base" / "vae").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def _assert_same_checkpoints(a_dir, b_dir, step):
    a = load_file(a_dir / f"step-{step}.safetensors")
    b = load_file(b_dir / f"step-{step}.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("stage", ["clip", "unet"])
def test_batches_from_worker_processes_are_the_same(trained, tmp_path, stage):
    """Batches prepared by forked loader workers train exactly as batches made in the training process."""
    out, _ = trained
    here = _restart_stage(out, tmp_path / "here", stage)
    train_stages(tmp_path / "here", "cpu", preset("test"), tiny_settings(), stages=(stage,))
    workers = _restart_stage(out, tmp_path / "workers", stage)
    train_stages(
        tmp_path / "workers", "cpu", preset("test"), tiny_settings(loader_workers=2), stages=(stage,)
    )
    _assert_same_checkpoints(here, workers, 2)


@pytest.mark.parametrize("stage", ["clip", "unet"])
def test_a_stage_out_of_minutes_finishes_with_what_it_has_and_stop_step_repeats_it(trained, tmp_path, stage):
    import json

    out, _ = trained
    ckpts = _restart_stage(out, tmp_path / "timed", stage)
    timed = tiny_settings(ckpt_every=100, **{f"{stage}_steps": 50, f"{stage}_minutes": 1e-9})
    train_stages(tmp_path / "timed", "cpu", preset("test"), timed, stages=(stage,))
    assert Checkpointer(ckpts).latest() == 1  # one step, then a checkpoint although ckpt_every is 100
    assert (tmp_path / "timed" / FINAL[stage]).is_dir()
    record = json.loads((tmp_path / "timed" / "work" / stage / "settings.json").read_text())
    assert record["steps_done"] == 1 and record["train"][f"{stage}_steps"] == 50

    repeat = _restart_stage(out, tmp_path / "repeat", stage)
    again = tiny_settings(ckpt_every=100, **{f"{stage}_steps": 50, f"{stage}_stop_step": 1})
    train_stages(tmp_path / "repeat", "cpu", preset("test"), again, stages=(stage,))
    assert Checkpointer(repeat).latest() == 1
    _assert_same_checkpoints(ckpts, repeat, 1)


def test_clip_vision_tunes_the_image_tower_alone_and_resumes_exactly(trained, tmp_path):
    from transformers import CLIPModel

    out, _ = trained

    def run(name, schedule):
        folder = tmp_path / name
        shutil.copytree(out, folder)
        for steps in schedule:  # each run ends the stage; removing its record makes the next one resume
            (folder / "work" / "clip_vision" / "settings.json").unlink(missing_ok=True)
            train_stages(
                folder, "cpu", preset("test"), tiny_settings(clip_vision_steps=steps), stages=("clip_vision",)
            )
        return folder

    straight, resumed = run("straight", [2]), run("resumed", [1, 2])
    ckpts = ("work", "clip_vision", "checkpoints")
    _assert_same_checkpoints(straight.joinpath(*ckpts), resumed.joinpath(*ckpts), 2)
    before = CLIPModel.from_pretrained(out / "clip").state_dict()
    after = CLIPModel.from_pretrained(straight / "clip").state_dict()
    vision = [k for k in before if k.startswith(("vision_model.", "visual_projection."))]
    assert vision and all(
        torch.equal(before[k], after[k]) for k in before if k not in vision
    )  # text side as is
    assert sum(not torch.equal(before[k], after[k]) for k in vision) > len(vision) // 2
    assert (straight / "clip" / "tokenizer_config.json").is_file()
    resumed_clip = CLIPModel.from_pretrained(resumed / "clip").state_dict()
    assert all(
        torch.equal(after[k], resumed_clip[k]) for k in after
    )  # the resumed run ends where the straight one does
    # cut between the two renames of the final swap (ip2p.fileio.atomic_dir): the next run puts clip/ back
    (resumed / "clip").rename(resumed / ".clip.x1y2.old")
    train_stages(resumed, "cpu", preset("test"), tiny_settings(clip_vision_steps=2), stages=("clip_vision",))
    assert (resumed / "clip" / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="run the clip stage first"):
        train_stages(
            tmp_path / "empty",
            "cpu",
            preset("test"),
            tiny_settings(clip_vision_steps=1),
            stages=("clip_vision",),
        )


def test_unet_stage_under_bf16_autocast(trained, tmp_path):
    """--unet-precision bf16 trains the same float32 weights under bfloat16 autocast: a different, finite result."""
    out, _ = trained
    _restart_stage(out, tmp_path / "bf16", "unet")
    train_stages(
        tmp_path / "bf16", "cpu", preset("test"), tiny_settings(unet_precision="bf16"), stages=("unet",)
    )
    unet_file = "base/unet/diffusion_pytorch_model.safetensors"
    fp32, bf16 = load_file(out / unet_file), load_file(tmp_path / "bf16" / unet_file)
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in bf16.values())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)
    record = json.loads((tmp_path / "bf16" / "work" / "unet" / "settings.json").read_text())
    assert record["train"]["unet_precision"] == "bf16"
    with pytest.raises(ValueError, match="unet precision must be fp32 or bf16"):
        train_stages(
            tmp_path / "x", "cpu", preset("test"), tiny_settings(unet_precision="fp8"), stages=("unet",)
        )


@pytest.mark.parametrize("stage", ["clip", "unet"])
def test_classic_attention_trains_the_same_models_as_sdpa(trained, tmp_path, stage):
    """--attention classic (transformers' eager attention, diffusers' AttnProcessor) is the same math as SDPA: the
    stage ends with the same weights within rounding, and saves models that load with the libraries' default."""
    out, _ = trained
    _restart_stage(out, tmp_path / "classic", stage)
    train_stages(
        tmp_path / "classic", "cpu", preset("test"), tiny_settings(attention="classic"), stages=(stage,)
    )
    weights = {"clip": "clip/model.safetensors", "unet": "base/unet/diffusion_pytorch_model.safetensors"}[
        stage
    ]
    sdpa, classic = load_file(out / weights), load_file(tmp_path / "classic" / weights)
    assert sdpa.keys() == classic.keys()
    for k in sdpa:
        torch.testing.assert_close(classic[k], sdpa[k], rtol=1e-3, atol=1e-4)  # AdamW's steps are 1e-3 each
    if stage == "clip":
        config = json.loads((tmp_path / "classic" / "clip" / "config.json").read_text())
        assert "eager" not in json.dumps(config)
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(tmp_path / "classic" / "clip")
        assert model.config._attn_implementation != "eager"


def test_clip_stage_under_bf16_autocast(trained, tmp_path):
    """--clip-precision bf16 trains the same float32 CLIP under bfloat16 autocast: a different, finite result."""
    out, _ = trained
    _restart_stage(out, tmp_path / "bf16", "clip")
    train_stages(
        tmp_path / "bf16", "cpu", preset("test"), tiny_settings(clip_precision="bf16"), stages=("clip",)
    )
    fp32, bf16 = (
        load_file(out / "clip/model.safetensors"),
        load_file(tmp_path / "bf16/clip/model.safetensors"),
    )
    assert all(v.dtype == torch.float32 and v.isfinite().all() for v in bf16.values())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)
    record = json.loads((tmp_path / "bf16" / "work" / "clip" / "settings.json").read_text())
    assert record["train"]["clip_precision"] == "bf16"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--attention", "flash"], "attention must be sdpa or classic, not 'flash'"),
        (["--clip-precision", "fp16"], "clip precision must be fp32 or bf16, not 'fp16'"),
        (["--unet-precision", "fp8"], "unet precision must be fp32 or bf16, not 'fp8'"),
        (["--brief-captions", "1.5"], "brief captions is a fraction in [0, 1], not 1.5"),
        (
            ["--unet-init", "no/such/dir"],
            "unet init 'no/such/dir' is not a text-to-image pipeline folder (it needs unet, vae, text_encoder, "
            "tokenizer, scheduler)",
        ),
    ],
)
def test_train_base_cli_rejects_bad_settings_in_one_line(tmp_path, capsys, flags, message):
    from ip2p.cli import main

    assert main(["toy", "train-base", "--out", str(tmp_path / "run"), *flags]) == 2  # a usage error
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ip2p toy train-base: error: {message}"]
    assert not (tmp_path / "run").exists()


def test_unet_captions_are_brief_in_the_asked_share():
    from ip2p.toy.captions import Brief, parse_brief
    from ip2p.toy.data import unet_captions

    scenes = training_scenes(400)
    complete = unet_captions(scenes, random.Random(1), TrainSettings())
    assert all(parse_caption(t) == s for t, s in zip(complete, scenes, strict=True) if t)
    assert 0.05 < complete.count("") / len(scenes) < 0.15
    mixed = unet_captions(scenes, random.Random(1), TrainSettings(brief_captions=0.4))
    brief = [t for t in mixed if t and not _parses(t)]
    assert all(parse_brief(t) == Brief.of(s) for t, s in zip(mixed, scenes, strict=True) if t)
    assert 0.32 < len(brief) / sum(1 for t in mixed if t) < 0.48


def test_train_base_and_quality_need_their_folder(capsys):
    from ip2p.cli import main

    for argv, flag in ((["toy", "train-base"], "--out"), (["toy", "quality"], "--model")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert (
            info.value.code == 2
            and f"the following arguments are required: {flag}" in capsys.readouterr().err
        )


def _parses(text: str) -> bool:
    try:
        parse_caption(text)
    except ValueError:
        return False
    return True


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_unet_fine_tune_starts_from_a_pipeline_and_keeps_its_companions(trained, tmp_path):
    """--unet-init: the UNet stage starts from a pipeline's UNet (lr 0 leaves it as it was) and saves the
    pipeline with that pipeline's VAE, text encoder, tokenizer and scheduler; no VAE or CLIP stage needed."""
    from diffusers import StableDiffusionPipeline

    from ip2p.toy.base.export import export_checkpoint

    out, _ = trained
    init = out / "base"
    settings = tiny_settings(unet_init=str(init), brief_captions=0.5, unet_lr=0.0)
    train_stages(tmp_path / "still", "cpu", preset("test"), settings, stages=("unet",))
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"):
        a, b = load_file(init / f"{part}.safetensors"), load_file(tmp_path / f"still/base/{part}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert json.loads((tmp_path / "still/base/scheduler/scheduler_config.json").read_text()) == json.loads(
        (init / "scheduler/scheduler_config.json").read_text()
    )
    record = json.loads((tmp_path / "still/work/unet/settings.json").read_text())
    assert record["train"]["unet_init"] == str(init) and record["train"]["brief_captions"] == 0.5
    moved = tiny_settings(unet_init=str(init), brief_captions=0.5, unet_lr=1e-2)
    train_stages(tmp_path / "moved", "cpu", preset("test"), moved, stages=("unet",))
    a, b = (
        load_file(d / "base/unet/diffusion_pytorch_model.safetensors")
        for d in (init.parent, tmp_path / "moved")
    )
    assert any(not torch.equal(a[k], b[k]) for k in a)
    exported = export_checkpoint(tmp_path / "moved", tmp_path / "ckpt", step=1)
    pipe = StableDiffusionPipeline.from_pretrained(exported, **PIPE_KWARGS)
    assert (
        pipe.tokenizer("a red circle").input_ids
        == StableDiffusionPipeline.from_pretrained(init, **PIPE_KWARGS).tokenizer("a red circle").input_ids
    )
    image = pipe("a red circle on a white background", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_a_fine_tune_resumes_exactly_and_refuses_another_start(trained, tmp_path):
    from ip2p.toy.base import SettingsError

    out, _ = trained
    init = out / "base"
    settings = tiny_settings(unet_init=str(init), brief_captions=0.5)
    one_step = tiny_settings(unet_init=str(init), brief_captions=0.5, unet_steps=1)
    # Both runs read their latents from the same cache, as an interrupted run does after its first start (a process
    # that has just encoded them rounds the next steps' last bits differently).
    train_stages(tmp_path / "cache", "cpu", preset("test"), one_step, stages=("unet",))
    for run in ("straight", "resumed"):
        (tmp_path / run / "work").mkdir(parents=True)
        shutil.copytree(tmp_path / "cache" / "work" / "unet", tmp_path / run / "work" / "unet")
        shutil.rmtree(tmp_path / run / "work" / "unet" / "checkpoints")
    train_stages(tmp_path / "straight", "cpu", preset("test"), settings, stages=("unet",))
    train_stages(tmp_path / "resumed", "cpu", preset("test"), one_step, stages=("unet",))
    shutil.rmtree(tmp_path / "resumed" / "base")
    train_stages(tmp_path / "resumed", "cpu", preset("test"), settings, stages=("unet",))
    a, b = (
        load_file(tmp_path / d / "work/unet/checkpoints/step-2.safetensors") for d in ("straight", "resumed")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(tmp_path / "resumed" / "base")
    with pytest.raises(SettingsError, match="started from .*, not from scratch: pass the same --unet-init"):
        train_stages(tmp_path / "resumed", "cpu", preset("test"), tiny_settings(), stages=("unet",))
    epsilon = tmp_path / "epsilon"
    shutil.copytree(init, epsilon)
    config = epsilon / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "epsilon"}))
    with pytest.raises(SettingsError, match="predicts 'epsilon'; the UNet stage trains v-prediction"):
        train_stages(
            tmp_path / "x", "cpu", preset("test"), tiny_settings(unet_init=str(epsilon)), stages=("unet",)
        )


def test_use_attention_switches_both_libraries_kernels():
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from ip2p.toy.base.common import use_attention

    cfg = preset("test")
    tokenizer = build_tokenizer(cfg.clip, tokenizer_corpus(200, 100))
    clip = build_clip(cfg.clip, tokenizer)
    unet = build_unet(cfg.unet, cfg.clip.text_hidden)
    use_attention(clip, "classic")
    use_attention(unet, "classic")
    assert clip.config._attn_implementation == "eager"
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor}
    use_attention(clip, "sdpa")
    use_attention(unet, "sdpa")
    assert clip.config._attn_implementation == "sdpa"
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
