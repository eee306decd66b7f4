"""`ip2p train` on tiny components: surgery, loss, checkpoints, exact resume, cache, export, 2 processes."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from ip2p.datasets import write_parquet_shard
from ip2p.train import (
    TrainConfig,
    Trainer,
    augment_params,
    draw_timesteps,
    epoch_order,
    example_seed,
    lr_factor,
    read_sample_weights,
    timestep_weights,
    train,
)

FAST = dict(
    resolution=32,
    min_resize=32,
    max_resize=36,
    train_batch_size=2,
    max_train_steps=4,
    checkpointing_steps=2,
    validation_steps=0,
    num_validation_examples=1,
    validation_inference_steps=2,
    log_every=1,
    use_ema=True,
    ema_decay=0.99,
    learning_rate=1e-3,
)


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
    """Twelve toy pairs in the official schema."""
    from ip2p.toy import random_edit, random_scene, render
    from ip2p.toy.captions import caption

    rng = random.Random(0)
    rows = []
    for _ in range(12):
        scene = random_scene(rng)
        edit = random_edit(scene, rng)
        rows.append(
            {
                "original_prompt": caption(scene),
                "original_image": render(scene, size=32),
                "edit_prompt": edit.instruction,
                "edited_prompt": caption(edit.after),
                "edited_image": render(edit.after, size=32),
            }
        )
    path = tmp_path_factory.mktemp("data") / "shard-00000.parquet"
    write_parquet_shard(rows, path)
    return str(path)


def _config(base_model, pairs, out, **kw):
    return TrainConfig(
        base_model=base_model, data=[pairs], output_dir=str(out), device="cpu", **{**FAST, **kw}
    )


def test_keyed_randomness_is_a_pure_function_of_seed_and_position():
    assert example_seed(42, 7) == example_seed(42, 7)
    assert len({example_seed(42, p) for p in range(1000)}) == 1000
    assert example_seed(1, 0) != example_seed(2, 0)
    size, left, top, _ = augment_params(random.Random(3), (256, 288), 256, 0.5)
    assert 256 <= size <= 288 and 0 <= left <= size - 256 and 0 <= top <= size - 256


def test_lr_schedules_warm_up_then_hold_or_decay_to_zero():
    constant = [lr_factor(s, 4, 10) for s in range(6)]  # the paper's schedule
    assert constant == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    for schedule in ("linear", "cosine"):
        factors = [lr_factor(s, 4, 10, schedule) for s in range(10)]
        assert factors[:3] == [0.25, 0.5, 0.75]  # the same warm-up
        assert all(a > b for a, b in zip(factors[3:], factors[4:], strict=False))  # then strictly down
        assert factors[-1] == pytest.approx(0.0, abs=1e-12)  # reaching 0 on the last step
    assert lr_factor(6, 4, 10, "linear") == pytest.approx(1 - 3 / 6)
    assert lr_factor(6, 4, 10, "cosine") == pytest.approx(0.5)  # half-way: (1 + cos(pi/2)) / 2
    assert lr_factor(0, 0, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # no warm-up


def test_timestep_bias_draws_the_chosen_timesteps_more_often():
    uniform = timestep_weights(1000)
    assert torch.allclose(uniform, torch.full((1000,), 1e-3, dtype=torch.float64))
    later = timestep_weights(1000, "later", 3.0, 0.3)
    assert float(later[700:].sum()) == pytest.approx(0.9 / 1.6) and float(later[699] * 3) == pytest.approx(
        float(later[700])
    )
    earlier = timestep_weights(1000, "earlier", 2.0, 0.25)
    assert float(earlier[:250].sum()) == pytest.approx(0.5 / 1.25)
    with pytest.raises(ValueError, match="unknown timestep bias 'middle'"):
        timestep_weights(1000, "middle")
    gens = [torch.Generator().manual_seed(i) for i in range(20_000)]
    drawn = draw_timesteps(gens, 1000, "later", 3.0, 0.3)
    assert drawn.min() >= 0 and drawn.max() <= 999
    assert float((drawn >= 700).float().mean()) == pytest.approx(0.5625, abs=0.015)  # 4 sigma at n = 20,000
    plain = draw_timesteps([torch.Generator().manual_seed(i) for i in range(20_000)], 1000)
    assert float((plain >= 700).float().mean()) == pytest.approx(0.3, abs=0.015)
    again = draw_timesteps([torch.Generator().manual_seed(i) for i in range(5)], 1000, "later", 3.0, 0.3)
    assert torch.equal(again, drawn[:5])  # each example's draw depends on its own generator only


def test_timestep_bias_settings_are_checked(base_model, pairs, tmp_path):
    with pytest.raises(ValueError, match="timestep_bias must be none, later, earlier"):
        _config(base_model, pairs, tmp_path, timestep_bias="late").validate()
    with pytest.raises(ValueError, match="timestep_bias_portion in"):
        _config(base_model, pairs, tmp_path, timestep_bias="later", timestep_bias_portion=0).validate()
    trainer = Trainer(_config(base_model, pairs, tmp_path, timestep_bias="later", timestep_bias_multiplier=9))
    batch = trainer._batch(list(range(8)))
    gens = [torch.Generator().manual_seed(example_seed(trainer.config.seed, p)) for p in range(8)]
    for g in gens:
        torch.rand((), generator=g)  # the dropout draw comes first
    expected = draw_timesteps(gens, 1000, "later", 9.0, 0.25)
    assert torch.equal(batch["timesteps"].cpu(), expected)


def test_classic_attention_trains_the_same_model_as_sdpa(base_model, pairs, tmp_path):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    with pytest.raises(ValueError, match="attention must be sdpa or classic"):
        _config(base_model, pairs, tmp_path, attention="flash").validate()
    kw = dict(max_train_steps=3, num_validation_examples=0)
    sdpa = Trainer(_config(base_model, pairs, tmp_path / "sdpa", **kw))
    classic = Trainer(_config(base_model, pairs, tmp_path / "classic", attention="classic", **kw))
    processors = {
        name: {type(p) for p in t.accelerator.unwrap_model(t.unet).attn_processors.values()}
        for name, t in (("sdpa", sdpa), ("classic", classic))
    }
    assert processors == {"sdpa": {AttnProcessor2_0}, "classic": {AttnProcessor}}
    sdpa.train()
    classic.train()
    for p, q in zip(
        sdpa.accelerator.unwrap_model(sdpa.unet).parameters(),
        classic.accelerator.unwrap_model(classic.unet).parameters(),
        strict=True,
    ):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)  # AdamW's steps are about 1e-3 each
    moved = max(
        float((p - q).abs().max())
        for p, q in zip(
            classic.accelerator.unwrap_model(classic.unet).parameters(),
            Trainer(_config(base_model, pairs, tmp_path / "fresh", **kw)).unet.parameters(),
            strict=True,
        )
    )
    assert moved > 1e-3  # the runs compared did train, by more than the tolerance


def test_sample_weights_draw_examples_in_proportion_and_unweighted_epochs_are_permutations():
    plain = epoch_order(42, 3, 50)
    assert sorted(plain.tolist()) == list(range(50))  # every example once an epoch
    assert torch.equal(plain, epoch_order(42, 3, 50)) and not torch.equal(plain, epoch_order(42, 4, 50))
    weights = torch.tensor([0.0, 1.0, 3.0, 0.0], dtype=torch.float64)
    drawn = torch.cat([epoch_order(42, e, 4, weights) for e in range(5000)])  # 20,000 draws
    assert set(drawn.tolist()) == {1, 2}  # a weight of 0 is never drawn
    assert float((drawn == 2).float().mean()) == pytest.approx(0.75, abs=0.013)  # 4 sigma
    assert torch.equal(epoch_order(42, 7, 4, weights), epoch_order(42, 7, 4, weights))  # keyed: resumable
    many = torch.ones(64, dtype=torch.float64)
    assert not torch.equal(
        epoch_order(42, 0, 64, many), epoch_order(42, 1, 64, many)
    )  # a new draw each epoch


def test_sample_weights_file_is_read_and_checked(tmp_path, monkeypatch):
    path = tmp_path / "w.txt"
    path.write_text("\ufeff# header\n1\n\n0.5  # a comment\r\n2e-1\n", encoding="utf-8")  # a BOM, CRLF
    assert read_sample_weights(path, 3).tolist() == [1.0, 0.5, 0.2]
    with pytest.raises(ValueError, match="3 weights for 4 training examples"):
        read_sample_weights(path, 4)
    for text, message in (
        ("1\nx\n", r"w.txt:2: expected a number, got 'x'"),
        ("1\n-1\n", "w.txt:2: weights must be finite and at least 0"),
        ("1\nnan\n", "w.txt:2: weights must be finite"),
        ("0\n0\n", "every weight is 0"),
        ("1e308\n1e308\n", "sum overflows"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_sample_weights(path, 2)
    path.write_text("1\n" * 3)
    monkeypatch.setattr("ip2p.train.MAX_WEIGHTED_EXAMPLES", 2)
    with pytest.raises(ValueError, match="sample weights take at most 2 examples"):
        read_sample_weights(path, 3)
    with pytest.raises(ValueError, match="cannot read"):
        read_sample_weights(tmp_path / "missing.txt", 2)


def test_trainer_draws_its_examples_by_the_sample_weights(base_model, pairs, tmp_path):
    weights = tmp_path / "weights.txt"
    weights.write_text("\n".join("1" if i == 3 else "0" for i in range(12)) + "\n")
    trainer = Trainer(_config(base_model, pairs, tmp_path / "out", sample_weights=str(weights)))
    assert {trainer._example_index(p) for p in range(36)} == {3}  # three epochs of draws, all of example 3
    trainer.save_checkpoint()
    weights.write_text("1\n" * 12)  # other weights: the saved run cannot be continued with them
    with pytest.raises(ValueError, match="drew examples by other sample weights"):
        Trainer(_config(base_model, pairs, tmp_path / "out", sample_weights=str(weights)))
    with pytest.raises(ValueError, match="drew examples by other sample weights"):
        Trainer(_config(base_model, pairs, tmp_path / "out"))  # nor without them
    weights.write_text("1\n" * 11)
    with pytest.raises(ValueError, match="11 weights for 12 training examples"):
        Trainer(_config(base_model, pairs, tmp_path / "out2", sample_weights=str(weights)))


def test_training_starts_from_the_text_to_image_unet_with_zero_extra_channels(base_model, pairs, tmp_path):
    trainer = Trainer(_config(base_model, pairs, tmp_path))
    conv = trainer.accelerator.unwrap_model(trainer.unet).conv_in
    base = StableDiffusionPipeline.from_pretrained(base_model).unet.conv_in
    assert conv.in_channels == 8
    assert conv.weight[:, 4:].abs().sum() == 0
    torch.testing.assert_close(conv.weight[:, :4], base.weight)
    torch.testing.assert_close(conv.bias, base.bias)
    assert not any(p.requires_grad for p in trainer.components.vae.parameters())
    assert not any(p.requires_grad for p in trainer.components.text_encoder.parameters())


def test_copy_init_starts_the_image_channels_from_the_latent_channels(base_model, pairs, tmp_path):
    trainer = Trainer(_config(base_model, pairs, tmp_path, conv_in_init="copy"))
    conv = trainer.accelerator.unwrap_model(trainer.unet).conv_in
    base = StableDiffusionPipeline.from_pretrained(base_model).unet.conv_in
    scale = trainer.components.vae.config.scaling_factor
    torch.testing.assert_close(conv.weight[:, :4], base.weight / 2)
    torch.testing.assert_close(conv.weight[:, 4:], base.weight * scale / 2)
    with pytest.raises(ValueError, match="conv_in_init"):
        _config(base_model, pairs, tmp_path / "x", conv_in_init="random").validate()


def test_latent_target_is_a_posterior_sample_or_its_mean(base_model, pairs, tmp_path):
    """The paper's target is a posterior draw; ``latent_target="mean"`` (the toy preset) takes the mean, with every
    other draw of the batch unchanged."""
    kw = dict(min_resize=32, max_resize=32, flip_prob=0.0, num_validation_examples=0)
    sampled = Trainer(_config(base_model, pairs, tmp_path / "s", **kw))
    meaned = Trainer(_config(base_model, pairs, tmp_path / "m", latent_target="mean", **kw))
    positions = sampled._positions(0, 0)
    a, b = sampled._batch(positions), meaned._batch(positions)
    for key in ("noise", "timesteps", "text", "image"):
        torch.testing.assert_close(a[key], b[key])
    dataset = sampled.dataset
    from PIL import Image

    from ip2p.imaging import pil_to_tensor

    lanczos = Image.Resampling.LANCZOS  # joint_augment's resize, here to the crop size itself
    edited = [
        dataset[sampled._example_index(p)].edited_image.convert("RGB").resize((32, 32), lanczos)
        for p in positions
    ]
    mean, std = meaned._encode_images(pil_to_tensor(edited))
    scale = meaned.components.vae.config.scaling_factor
    torch.testing.assert_close(b["latents"], mean * scale, rtol=1e-4, atol=1e-5)
    assert (a["latents"] - b["latents"]).abs().max() > 1e-3  # the sampled target carries posterior noise
    with pytest.raises(ValueError, match="latent_target"):
        _config(base_model, pairs, tmp_path / "x", latent_target="mode").validate()


def test_train_writes_checkpoints_metrics_validation_and_a_loadable_model(base_model, pairs, tmp_path):
    folder = train(_config(base_model, pairs, tmp_path, lr_schedule="cosine"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["loss"] > 0 for r in rows)
    # the rate logged after each step is the next step's: cosine from 1e-3 down to 0 at step 4
    assert [r["lr"] for r in rows] == pytest.approx(
        [1e-3 * lr_factor(s, 0, 4, "cosine") for s in range(1, 5)]
    )
    assert list((tmp_path / "validation").glob("step-*.png"))
    reference = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    assert reference.unet.config.in_channels == 8
    ema = load_file(tmp_path / "checkpoints" / "checkpoint-4" / "ema.safetensors")
    torch.testing.assert_close(reference.unet.conv_in.weight, ema["conv_in.weight"])  # EMA weights exported
    from ip2p.pipeline import EditPipeline

    result = EditPipeline.from_pretrained(str(folder), device="cpu")(
        reference.image_processor.postprocess(torch.zeros(1, 3, 32, 32))[0],
        "x",
        seed=0,
        num_inference_steps=2,
        resolution=32,
    )
    assert result.images[0].size == (32, 32)


def test_max_minutes_stops_with_a_checkpoint_and_the_same_command_resumes(base_model, pairs, tmp_path):
    train(_config(base_model, pairs, tmp_path / "straight"))
    out = tmp_path / "timed"
    folder = train(_config(base_model, pairs, out, max_minutes=0.0))  # out of time after the first step
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-1"]
    assert (folder / "unet" / "config.json").exists()  # exported at the stop
    train(_config(base_model, pairs, out))
    assert "checkpoint-4" in [p.name for p in (out / "checkpoints").iterdir()]
    a, b = _weights(tmp_path / "straight"), _weights(out)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_signal_ends_the_step_with_a_checkpoint_and_the_same_command_resumes(
    base_model, pairs, tmp_path, monkeypatch, capsys
):
    from ip2p.cli import main
    from ip2p.harness import Interrupted

    train(_config(base_model, pairs, tmp_path / "straight"))
    out = tmp_path / "stopped"
    step = Trainer.train_step

    def step_then_signal(self):
        loss = step(self)
        if self.step in (1, 2):  # SIGTERM during steps 1 and 2: the step ends, is saved, and training stops
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=r"stopped at step 1 of 4 \(SIGTERM\).*run the same command again"):
        train(_config(base_model, pairs, out))
    assert signal.getsignal(signal.SIGTERM) is before
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-1"]
    # `ip2p train` resumes, is stopped again at step 2 and says so in one line, exit status 130 (no traceback).
    monkeypatch.setattr("ip2p.train.apply_preset", lambda name, overrides: _config(base_model, pairs, out))
    capsys.readouterr()
    assert main(["train", "--data", pairs, "--output-dir", str(out)]) == 130
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("ip2p train: ")] == [
        "ip2p train: training stopped at step 2 of 4 (SIGTERM), checkpoint saved: run the same command again "
        "to resume"
    ]
    assert not any("Traceback" in line for line in err)
    assert signal.getsignal(signal.SIGTERM) is before
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    monkeypatch.undo()
    train(_config(base_model, pairs, out))
    a, b = _weights(tmp_path / "straight"), _weights(out)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_bf16_mixed_precision_trains_validates_and_exports(base_model, pairs, tmp_path):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    try:
        folder = train(_config(base_model, pairs, tmp_path, mixed_precision="bf16", max_train_steps=2))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert list((tmp_path / "validation").glob("step-*.png"))  # the edit decodes (fp32 latents, bf16 VAE)
    assert (
        load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"].dtype
        == torch.float32
    )
    # the frozen VAE and text encoder ran in bf16 but are exported as the base model had them, bit for bit
    for name, weights in (("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        ours = load_file(folder / name / f"{weights}.safetensors")
        base = load_file(Path(base_model) / name / f"{weights}.safetensors")
        assert ours.keys() == base.keys() and all(torch.equal(ours[k], base[k].float()) for k in base), name


def _weights(folder):
    return load_file(
        folder
        / "checkpoints"
        / sorted((p.name for p in (folder / "checkpoints").iterdir()), key=lambda n: int(n.split("-")[1]))[-1]
        / "unet.safetensors"
    )


def _cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ip2p.cli", "train", *args], env=env, **kw)


def _flags(base_model, pairs, out, steps=6):
    return [
        "--base-model",
        base_model,
        "--data",
        pairs,
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--resolution",
        "32",
        "--min-resize",
        "32",
        "--max-resize",
        "36",
        "--train-batch-size",
        "2",
        "--max-train-steps",
        str(steps),
        "--checkpointing-steps",
        "1",
        "--validation-steps",
        "0",
        "--num-validation-examples",
        "0",
        "--learning-rate",
        "1e-3",
        "--ema-decay",
        "0.99",
        "--checkpoints-total-limit",
        "10",
    ]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(base_model, pairs, tmp_path):
    straight = tmp_path / "straight"
    assert _cli(_flags(base_model, pairs, straight)).wait(timeout=240) == 0

    resumed = tmp_path / "resumed"
    proc = _cli(_flags(base_model, pairs, resumed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (resumed / "checkpoints" / "checkpoint-2").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [p.name for p in (resumed / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert "checkpoint-6" not in done, "the run finished before it could be killed"
    assert _cli(_flags(base_model, pairs, resumed)).wait(timeout=240) == 0

    a, b = _weights(straight), _weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    ema_a = load_file(straight / "checkpoints" / "checkpoint-6" / "ema.safetensors")
    ema_b = load_file(resumed / "checkpoints" / "checkpoint-6" / "ema.safetensors")
    for key in ema_a:
        torch.testing.assert_close(ema_a[key], ema_b[key], rtol=0, atol=0)


def test_cached_latents_train_like_the_uncached_path(base_model, pairs, tmp_path):
    kw = dict(min_resize=32, max_resize=32, max_train_steps=3, num_validation_examples=0)
    plain = Trainer(_config(base_model, pairs, tmp_path / "plain", **kw))
    plain.train()
    cached = Trainer(_config(base_model, pairs, tmp_path / "cached", cache_latents=True, **kw))
    cached.train()
    assert (tmp_path / "cached" / "cache" / "latents-32.safetensors").is_file()
    for p, q in zip(
        plain.accelerator.unwrap_model(plain.unet).parameters(),
        cached.accelerator.unwrap_model(cached.unet).parameters(),
        strict=True,
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(base_model, pairs, tmp_path):
    common = [
        "--base-model",
        base_model,
        "--data",
        pairs,
        "--device",
        "cpu",
        "--resolution",
        "32",
        "--min-resize",
        "32",
        "--max-resize",
        "36",
        "--max-train-steps",
        "2",
        "--checkpointing-steps",
        "2",
        "--validation-steps",
        "0",
        "--num-validation-examples",
        "0",
        "--learning-rate",
        "1e-3",
        # Adam divides by sqrt(v): on the first steps it turns float noise in near-zero gradients into
        # full +-lr updates. A large epsilon makes the update proportional to the gradient, so
        # equal gradients (what DDP must give) show as equal weights.
        "--adam-epsilon",
        "1.0",
        "--max-grad-norm",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "ip2p.cli",
            "train",
            *common,
            "--train-batch-size",
            "4",
            "--output-dir",
            str(tmp_path / "one"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    # accelerate 1.x starts several CPU processes with --cpu only through mpirun; --multi_gpu starts them through
    # torchrun, and --device cpu makes each a gloo (MULTI_CPU) process.
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "ip2p.cli",
            "train",
            *common,
            "--train-batch-size",
            "2",
            "--output-dir",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    init = Trainer(
        TrainConfig(
            base_model=base_model,
            data=[pairs],
            output_dir=str(tmp_path / "init"),
            device="cpu",
            resolution=32,
            min_resize=32,
            max_resize=36,
        )
    )
    start = init.accelerator.unwrap_model(init.unet).state_dict()
    # The updates themselves must agree (weights alone hide small updates under the weights' size).
    delta_a = torch.cat([(a[k] - start[k]).flatten() for k in a])
    delta_b = torch.cat([(b[k] - start[k]).flatten() for k in a])
    assert delta_a.norm() > 0
    assert (delta_a - delta_b).norm() <= 1e-3 * delta_a.norm()
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bad_data_and_flags_are_one_line_errors(base_model, tmp_path, capsys):
    from ip2p.cli import main

    assert (
        main(
            [
                "train",
                "--base-model",
                base_model,
                "--data",
                str(tmp_path / "none.parquet"),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert (
        main(
            [
                "train",
                "--base-model",
                base_model,
                "--data",
                str(tmp_path / "bad.parquet"),
                "--output-dir",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "not a readable Parquet file" in capsys.readouterr().err
    assert main(["train", "--base-model", base_model, "--data", "x", "--mixed-precision", "fp8"]) == 1
    assert "mixed_precision" in capsys.readouterr().err
    assert main(["train", "--base-model", base_model, "--data", "x", "--lr-schedule", "step"]) == 1
    assert "lr_schedule must be constant, linear, cosine" in capsys.readouterr().err
    assert main(["train", "--base-model", base_model, "--data", "x", "--attention", "xformers"]) == 1
    assert "attention must be sdpa or classic" in capsys.readouterr().err
