"""Train the toy world's miniature Stable Diffusion from scratch: VAE, then CLIP, then the UNet.

As in Stable Diffusion, the three models are trained separately: the VAE on renders (reconstruction + a small KL
term), CLIP contrastively on (render, caption) pairs, and the UNet on the VAE's latents of pre-rendered scenes,
conditioned on the frozen CLIP text tower's hidden states, with 10% empty captions for classifier-free guidance.
Only the CLIP batch differs from the usual recipe: half its scenes are one-attribute variants of the other half and
every image also meets captions of its one-attribute variants, so that the model binds each colour, kind, size and
position to its shape (the bar it must pass is retrieval against such distractors).

Layout of ``out_dir``::

    base/            the text-to-image model: a StableDiffusionPipeline folder (the final output)
    clip/            CLIPModel + tokenizer + image processor, for scoring (the final output)
    work/data/N-SEED/  pre-rendered training scenes (images.npy, scenes.json), one folder per scene count and seed
    work/vae/        checkpoints of the VAE stage, and final/ (AutoencoderKL)
    work/clip/       checkpoints of the CLIP stage
    work/clip_vision/  checkpoints of the optional image-tower fine-tuning (settings.json once it has ended)
    work/unet/       latent cache and checkpoints of the UNet stage

Every stage is reproducible (all randomness of step ``i`` is drawn from generators seeded by (seed, stage, i)),
checkpoints every ``ckpt_every`` steps (weights as safetensors, optimizer state and RNG states through
``torch.save``, loaded with ``weights_only=True``; each file written to a temporary name and renamed), resumes from
its latest checkpoint when run again, and is skipped when its final output exists (clip_vision: its settings.json).

Usage::

    python -m ip2p.toy.train_base --out runs/toy [--device cuda] [--steps-vae N --steps-clip N --steps-unet N]
    # on a GPU: batches prepared by 10 processes, a time slot per stage (scripts/build_toy.sh BASE=gpu: the bundled
    # weights' recipe, with the steps that such a run reached)
    python -m ip2p.toy.train_base --out runs/toy --device cuda --loader-workers 10 --clip-minutes 2 --unet-minutes 4.5
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a busy machine, OpenMP's default spin-waiting makes every 2-thread step many times
# slower (measured: 40 s instead of 2.5 s per UNet step while other jobs ran); passive waiting costs nothing idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import (  # noqa: F401  (names importers still take from here)
    HELDOUT_SEED,
    heldout_scenes,
    load_dataset,
    one_attribute_variants,
    scene_from_list,
    scene_to_list,
    to_tensor,
    to_uint8,
    training_scenes,
    unet_captions,
)
from .data import atomic_write as _atomic_write
from .models import (
    BaseModelConfig,
    build_clip,
    build_scheduler,
    build_tokenizer,
    build_unet,
    build_vae,
    count_parameters,
    preset,
    tokenizer_corpus,
)
from .scene import BACKGROUNDS, COLORS, KINDS, SIZES, STYLES, Scene

PIPELINE_KWARGS = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@dataclass
class TrainSettings:
    """Everything about training that is not the architecture (see :mod:`ip2p.toy.models` for that)."""

    seed: int = 0
    n_scenes: int = 20_000
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    threads: int = 2
    # Processes that prepare the CLIP and UNet batches (render, caption, tokenize) ahead of the training step; 0:
    # the training process does it. The batches are the same either way (each is a function of its step alone).
    # On a GPU the step is faster than its batch's preparation: use several (Linux; forked processes).
    loader_workers: int = 0
    # Wall-clock budget per stage in minutes (0: none). A stage that reaches it saves a checkpoint and finishes with
    # the weights it has (the UNet with its EMA), as if its last step were the one reached; its settings.json
    # records where it stopped. For a fixed time slot, e.g. a GPU lease; results then depend on the machine's speed.
    clip_minutes: float = 0.0
    unet_minutes: float = 0.0
    # End a stage at this step of a schedule planned for ``*_steps`` (0: at its end): what a ``*_minutes`` limit
    # did in a recorded run (its settings.json's ``steps_done``), made repeatable.
    clip_stop_step: int = 0
    unet_stop_step: int = 0
    # VAE
    vae_steps: int = 1200
    vae_batch: int = 16
    # Train on random crops of this side (a multiple of 4); 0: whole renders. Crops are cheaper but GroupNorm's
    # statistics then differ from whole images' (measured: 19 dB on whole renders after training on 32 px crops).
    vae_crop: int = 0
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # Optional decoder-only fine-tuning after the VAE stage (SD's ft-MSE recipe): the encoder, hence the UNet's
    # latent space, stays fixed, so it can also run beside or after the UNet stage (it then updates base/vae).
    vae_decoder_steps: int = 0
    # CLIP
    # World texts (2/3 captions, 1/3 instructions) the tokenizer's merges are learnt on.
    tokenizer_texts: int = 9000
    clip_steps: int = 700
    clip_batch: int = 64  # scenes per batch, half of them one-attribute variants of the other half
    clip_hard_captions: int = 2  # extra one-attribute-distractor captions per image
    clip_lr: float = 1e-3
    clip_attribute_weight: float = 1.0  # auxiliary attribute read-outs (see AttributeHeads); 0 turns them off
    # "bf16": CLIP's towers (stages clip and clip_vision) under bfloat16 autocast; embeddings are normalised and the
    # losses computed in float32, weights and optimizer stay float32. On this CPU, with "classic" attention, a step
    # takes half the time (benchmarks/bench_base_train.py). "fp32": none.
    clip_precision: str = "fp32"
    # Stage "clip_vision" (optional, after "clip"): the image tower fine-tuned against the frozen text tower, with
    # the CLIP stage's batches and losses. The text tower, hence the UNet's text encoder, is left as it is, so this
    # stage can also run after the UNet stage; it rewrites clip/ when it ends.
    clip_vision_steps: int = 0
    clip_vision_lr: float = 3e-4
    clip_vision_warmup: int = 50
    # UNet
    unet_steps: int = 2800
    unet_batch: int = 64
    unet_lr: float = 6e-4
    unet_warmup: int = 200
    # "bf16": the UNet's forward (and the frozen text encoder's) under bfloat16 autocast, weights and optimizer in
    # float32; on a CPU with AVX-512 BF16 or AMX it is faster (benchmarks/bench_base_train.py). "fp32": none.
    unet_precision: str = "fp32"
    caption_dropout: float = 0.1
    # Attention kernels while training CLIP and the UNet: "sdpa" (torch's scaled_dot_product_attention, the
    # libraries' default) or "classic" (transformers' eager attention, diffusers' AttnProcessor: the same math in
    # plain matrix products, faster on a CPU for these small heads). The saved models are the same either way.
    attention: str = "sdpa"
    canonical_captions: float = 0.3  # fraction of UNet captions in canonical phrasing (the rest varied)
    # Fraction of the UNet's (non-empty) captions that are brief: every size and position left unsaid
    # (ip2p.toy.captions), so that the model also draws captions that leave part of the scene to it, as real
    # captions do. 0 keeps the recipe's random draws exactly as they were.
    brief_captions: float = 0.0
    # Start the UNet from this text-to-image pipeline folder ("toy": the bundled base) instead of from scratch: a
    # fine-tune. Its VAE, text encoder and tokenizer are then the ones trained and saved with it (this run's VAE
    # and CLIP stages are not needed).
    unet_init: str = ""
    ema_decay: float = 0.999


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


PRECISIONS = ("fp32", "bf16")
ATTENTIONS = ("sdpa", "classic")


class SettingsError(ValueError):
    """Settings (or a run folder) no stage can use; the message is one line that says why."""


# The folders of a pipeline a fine-tune starts from (--unet-init).
INIT_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_settings(settings: TrainSettings) -> None:
    """One-line errors (:class:`SettingsError`) for settings no stage can use."""
    for name in ("unet_precision", "clip_precision"):
        if getattr(settings, name) not in PRECISIONS:
            raise SettingsError(
                f"{name.replace('_', ' ')} must be fp32 or bf16, not {getattr(settings, name)!r}"
            )
    if settings.attention not in ATTENTIONS:
        raise SettingsError(f"attention must be sdpa or classic, not {settings.attention!r}")
    for name in ("brief_captions", "canonical_captions", "caption_dropout"):
        if not 0.0 <= getattr(settings, name) <= 1.0:
            raise SettingsError(
                f"{name.replace('_', ' ')} is a fraction in [0, 1], not {getattr(settings, name)}"
            )
    if settings.unet_init:
        init = unet_init_path(settings.unet_init)
        scheduler = init / "scheduler" / "scheduler_config.json"
        if not all((init / part).is_dir() for part in INIT_PARTS) or not scheduler.is_file():
            raise SettingsError(
                f"unet init {settings.unet_init!r} is not a text-to-image pipeline folder (it needs "
                f"{', '.join(INIT_PARTS)})"
            )
        prediction = json.loads(scheduler.read_text()).get("prediction_type")
        if prediction != "v_prediction":
            raise SettingsError(
                f"unet init {settings.unet_init!r} predicts {prediction!r}; the UNet stage trains v-prediction"
            )


def unet_init_path(source: str) -> Path:
    """The pipeline folder a fine-tune starts from: "toy" is the bundled base."""
    from ip2p.toy.plugin import toy_model_path

    return toy_model_path("base") if source == "toy" else Path(source)


def _init_record(source: str) -> str:
    """How a run records where its UNet started: "" (from scratch), "toy", or an absolute folder."""
    return source if source in ("", "toy") else str(Path(source).resolve())


def _started(source: str) -> str:
    return f"from {source}" if source else "from scratch"


def _check_unet_start(work: Path, settings: TrainSettings) -> Path | None:
    """Record where the UNet stage starts (``work/init.json``) and refuse to resume a run started otherwise; return
    the init pipeline folder, or None from scratch."""
    wanted = _init_record(settings.unet_init)
    record = work / "init.json"
    if record.is_file():
        recorded: str | None = json.loads(record.read_text())["unet_init"]
    elif Checkpointer(work / "checkpoints").latest() is not None or (work / "latents.safetensors").is_file():
        recorded = ""  # a run from before the record: from scratch
    else:
        recorded = None
    if recorded is not None and recorded != wanted:
        raise SettingsError(
            f"{work} holds a UNet stage started {_started(recorded)}, not {_started(wanted)}: pass the same "
            f"--unet-init, or delete {work} to start again"
        )
    _atomic_write(record, lambda tmp: Path(tmp).write_text(json.dumps({"unet_init": wanted})))
    return unet_init_path(wanted) if wanted else None


def use_attention(model, attention: str):
    """Switch a CLIPModel or a UNet2DConditionModel to ``attention`` kernels (see TrainSettings.attention)."""
    if hasattr(model, "set_attn_processor"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        model.set_attn_processor(AttnProcessor() if attention == "classic" else AttnProcessor2_0())
    else:
        model.set_attn_implementation("eager" if attention == "classic" else "sdpa")
    return model


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def step_seed(seed: int, stage: str, step: int) -> int:
    """The seed of one step's generators: a step's randomness does not depend on how the run got there."""
    return (seed * 1_000_003 + sum(map(ord, stage)) * 7_919 + step) % (2**63)


class Checkpointer:
    """Numbered checkpoints in a folder: ``step-N.safetensors`` (weights) and ``step-N.pt`` (optimizer, step,
    RNG states), then ``latest.json`` naming them; each file is written under a temporary name and renamed."""

    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def latest(self) -> int | None:
        pointer = self.folder / "latest.json"
        if not pointer.is_file():
            return None
        return int(json.loads(pointer.read_text())["step"])

    def save(self, step: int, weights: dict[str, torch.Tensor], state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        _atomic_write(self.folder / f"step-{step}.safetensors", lambda tmp: save_file(tensors, tmp))
        full = dict(state, step=step, torch_rng=torch.get_rng_state(), python_rng=random.getstate())
        _atomic_write(self.folder / f"step-{step}.pt", lambda tmp: torch.save(full, tmp))
        _atomic_write(
            self.folder / "latest.json", lambda tmp: Path(tmp).write_text(json.dumps({"step": step}))
        )
        steps = sorted(
            int(p.stem.split("-")[1])
            for p in self.folder.glob("step-*.safetensors")
            if p.stem.split("-")[1].isdigit()
        )
        for old in steps[: -self.keep]:
            for suffix in (".safetensors", ".pt"):
                (self.folder / f"step-{old}{suffix}").unlink(missing_ok=True)

    def load(self, step: int | None = None) -> tuple[dict[str, torch.Tensor], dict] | None:
        step = self.latest() if step is None else step
        if step is None:
            return None
        weights = load_file(self.folder / f"step-{step}.safetensors")
        state = torch.load(self.folder / f"step-{step}.pt", weights_only=True, map_location="cpu")
        torch.set_rng_state(state["torch_rng"])
        random.setstate(_as_python_rng_state(state["python_rng"]))
        return weights, state


def _as_python_rng_state(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(device)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _Timer:
    """Wall and process CPU time per step, for the log (CPU time / threads estimates an idle machine's wall time)."""

    def __init__(self):
        self.wall, self.cpu, self.n = 0.0, 0.0, 0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        self.n += 1

    def summary(self, threads: int) -> str:
        n = max(1, self.n)
        return f"{self.wall / n:.2f} s/step wall, {self.cpu / n / max(1, threads):.2f} s/step CPU/thread"


class Interrupted(Exception):
    """A stage stopped by SIGINT or SIGTERM, after saving a checkpoint of the step it had reached."""


@contextlib.contextmanager
def _stop_requests():
    """SIGINT and SIGTERM set a flag that the loop checks between steps (main thread only; handlers restored)."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _loop(
    name: str,
    total: int,
    start: int,
    step_fn: Callable[[int], float],
    save_fn: Callable[[int], None],
    ckpt_every: int,
    threads: int,
    minutes: float = 0.0,
    stop: int = 0,
) -> int:
    """Run steps ``start .. total - 1`` (of a schedule of ``total``), checkpointing every ``ckpt_every``; end early,
    with a checkpoint, after step ``stop`` or once ``minutes`` of wall time have passed, if set. Returns the number
    of steps done. SIGINT or SIGTERM ends the step under way, saves a checkpoint and raises :class:`Interrupted`, so
    that a run stopped on purpose (for example to resume it with more threads) loses nothing."""
    timer = _Timer()
    smooth = None
    deadline = time.monotonic() + 60 * minutes if minutes > 0 else None
    end = _stage_end(total, stop)
    bar = tqdm(range(start, end), initial=start, total=total, desc=name, dynamic_ncols=True, mininterval=5)
    done = start
    with _stop_requests() as stop:
        for step in bar:
            with timer:
                loss = step_fn(step)
            done = step + 1
            smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
            bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
            out_of_time = deadline is not None and time.monotonic() > deadline
            if done % ckpt_every == 0 or done == end or out_of_time or stop["signal"] is not None:
                save_fn(done)
                tqdm.write(f"[{name}] step {done}/{total} loss {smooth:.4f} ({timer.summary(threads)})")
            if stop["signal"] is not None and done < end:
                bar.close()
                raise Interrupted(
                    f"{name} stage stopped at step {done} of {total} ({signal.Signals(stop['signal']).name}), "
                    "checkpoint saved: run the same command again to resume"
                )
            if out_of_time and done < total:
                tqdm.write(f"[{name}] stopping at step {done} of {total}: its {minutes:g} minutes are spent")
                break
    bar.close()
    if done == end < total:
        tqdm.write(f"[{name}] ending at step {done} of {total}, as asked")
    return done


def _stage_end(total: int, stop: int) -> int:
    """The step a stage ends at: ``stop`` if it cuts the schedule of ``total`` short, else ``total``."""
    return stop if 0 < stop < total else total


class _StepBatches(torch.utils.data.Dataset):
    def __init__(self, make: Callable[[int], dict], start: int, total: int):
        self.make, self.start, self.total = make, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, i: int) -> dict:
        return self.make(self.start + i)


def step_batches(make: Callable[[int], dict], start: int, total: int, workers: int):
    """``make(step)`` for ``step = start .. total - 1``, in order, prepared by ``workers`` forked processes ahead of
    use (``workers=0``: here, when asked for)."""
    if workers <= 0 or total <= start:
        return (make(step) for step in range(start, total))
    loader = torch.utils.data.DataLoader(
        _StepBatches(make, start, total),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4,
        multiprocessing_context="fork",
    )
    return iter(loader)


def _settings_record(cfg: BaseModelConfig, settings: TrainSettings, steps_done: int | None = None) -> dict:
    record = {"model": dataclasses.asdict(cfg), "train": dataclasses.asdict(settings)}
    if steps_done is not None:
        record["steps_done"] = steps_done
    return record


# ---------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------


def vae_final_path(out_dir: Path) -> Path:
    return Path(out_dir) / "work" / "vae" / "final"


def train_vae(out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device) -> Path:
    """Train the autoencoder (MSE reconstruction + ``vae_kl_weight`` x KL) and set its latent scaling factor."""
    from diffusers import AutoencoderKL

    out_dir = Path(out_dir)
    final = vae_final_path(out_dir)
    if (final / "config.json").is_file():
        return final
    work = out_dir / "work"
    images, _ = load_dataset(work, settings.n_scenes, settings.seed)
    n = len(images)
    vae = build_vae(cfg.vae, seed=settings.seed).to(device).train()
    with torch.no_grad():
        # Start the posterior's log-variance at -8 (std 0.02) instead of 0: sampled latents are then not drowned
        # in unit noise while the encoder learns, and the tiny KL weight keeps them small (as SD's VAE's are).
        vae.quant_conv.bias[cfg.vae.latent_channels :] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    ckpt = Checkpointer(work / "vae" / "checkpoints", settings.keep_checkpoints)
    start = 0
    loaded = ckpt.load()
    if loaded is not None:
        weights, state = loaded
        vae.load_state_dict(unprefixed("vae", weights))
        opt.load_state_dict(state["optimizer"])
        _optimizer_to(opt, device)
        start = int(state["step"])
    crop = settings.vae_crop or cfg.image_size
    print(
        f"VAE: {count_parameters(vae) / 1e6:.2f}M parameters, {n} scenes, resuming at step {start}",
        flush=True,
    )

    def step_fn(step: int) -> float:
        g = torch.Generator().manual_seed(step_seed(settings.seed, "vae", step))
        idx = torch.randint(0, n, (settings.vae_batch,), generator=g).sort().values.numpy()
        x = to_tensor(images[idx])
        if crop < cfg.image_size:
            cells = (cfg.image_size - crop) // 4 + 1
            oy, ox = (torch.randint(0, cells, (2,), generator=g) * 4).tolist()
            x = x[:, :, oy : oy + crop, ox : ox + crop]
        x = x.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.vae_steps, settings.vae_lr, 100)
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=g).to(device)
        z = posterior.mean + posterior.std * noise
        rec = vae.decode(z).sample
        # MSE (what PSNR measures): its gradient is led by the large errors on shapes, where L1's is led by the
        # many background pixels.
        loss = F.mse_loss(rec, x) + settings.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def save_fn(step: int) -> None:
        ckpt.save(step, prefixed("vae", vae.state_dict()), {"optimizer": opt.state_dict()})

    _loop("vae", settings.vae_steps, start, step_fn, save_fn, settings.ckpt_every, settings.threads)

    # SD's latent scaling: 1 / std of the latents, so that the UNet sees unit-variance data.
    vae.eval()
    with torch.no_grad():
        sample = to_tensor(images[: min(n, 2048)])
        lat = torch.cat(
            [
                vae.encode(sample[i : i + 256].to(device)).latent_dist.mean.cpu()
                for i in range(0, len(sample), 256)
            ]
        )
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    _save_pretrained_atomic(vae.to("cpu"), final)
    (work / "vae" / "settings.json").write_text(json.dumps(_settings_record(cfg, settings), indent=1))
    assert AutoencoderKL  # the saved folder loads with AutoencoderKL.from_pretrained
    return final


def vae_decoder_path(out_dir: Path) -> Path:
    return Path(out_dir) / "work" / "vae" / "decoder-final"


def current_vae_path(out_dir: Path) -> Path:
    """The VAE to ship: decoder-fine-tuned when that stage has run, else the VAE stage's."""
    tuned = vae_decoder_path(out_dir)
    return tuned if (tuned / "config.json").is_file() else vae_final_path(out_dir)


def train_vae_decoder(
    out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device
) -> Path:
    """Fine-tune the VAE's decoder alone (MSE) for ``vae_decoder_steps``; the encoder is frozen, so latents (and
    a UNet trained on them) stay valid. Writes work/vae/decoder-final and, when base/ exists, base/vae."""
    from diffusers import AutoencoderKL

    out_dir = Path(out_dir)
    final = vae_decoder_path(out_dir)
    if settings.vae_decoder_steps <= 0:
        return current_vae_path(out_dir)
    if not (final / "config.json").is_file():
        work = out_dir / "work"
        images, _ = load_dataset(work, settings.n_scenes, settings.seed)
        n = len(images)
        vae = AutoencoderKL.from_pretrained(vae_final_path(out_dir)).to(device)
        vae.requires_grad_(False).eval()
        trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        for p in trainable:
            p.requires_grad_(True)
        vae.decoder.train()
        opt = torch.optim.AdamW(trainable, lr=settings.vae_lr * 0.5, weight_decay=0.0)
        ckpt = Checkpointer(work / "vae" / "decoder-checkpoints", settings.keep_checkpoints)
        start = 0
        loaded = ckpt.load()
        if loaded is not None:
            weights, state = loaded
            vae.load_state_dict(unprefixed("vae", weights))
            opt.load_state_dict(state["optimizer"])
            _optimizer_to(opt, device)
            start = int(state["step"])
        total = settings.vae_decoder_steps
        print(f"VAE decoder fine-tuning: {total} steps, resuming at step {start}", flush=True)

        def step_fn(step: int) -> float:
            g = torch.Generator().manual_seed(step_seed(settings.seed, "vae_decoder", step))
            idx = torch.randint(0, n, (settings.vae_batch,), generator=g).sort().values.numpy()
            x = to_tensor(images[idx]).to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, settings.vae_lr * 0.5, 50)
            with torch.no_grad():
                posterior = vae.encode(x).latent_dist
                noise = torch.randn(posterior.mean.shape, generator=g).to(device)
                z = posterior.mean + posterior.std * noise
            loss = F.mse_loss(vae.decode(z).sample, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            return float(loss.detach())

        def save_fn(step: int) -> None:
            ckpt.save(step, prefixed("vae", vae.state_dict()), {"optimizer": opt.state_dict()})

        _loop("vae-decoder", total, start, step_fn, save_fn, settings.ckpt_every, settings.threads)
        _save_pretrained_atomic(vae.to("cpu").eval(), final)
    base = base_final_path(out_dir)
    if (base / "model_index.json").is_file():
        vae = AutoencoderKL.from_pretrained(final)
        _save_pretrained_atomic(vae, base / "vae")
    return final


def _save_pretrained_atomic(obj, folder: Path) -> None:
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        obj.save_pretrained(tmp, **({"safe_serialization": True} if _accepts_safe(obj) else {}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _accepts_safe(obj) -> bool:
    import inspect

    try:
        return "safe_serialization" in inspect.signature(obj.save_pretrained).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------


def clip_final_path(out_dir: Path) -> Path:
    return Path(out_dir) / "clip"


def clip_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """CLIP's input: uint8 (N, H, W, 3) renders -> (N, 3, H, W) in [-1, 1] (mean 0.5, std 0.5 normalisation)."""
    return images if isinstance(images, torch.Tensor) else to_tensor(images)


def _tokenize(tokenizer, texts: list[str], device: torch.device, pad_to_max: bool) -> torch.Tensor:
    if pad_to_max:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    else:
        ids = tokenizer(texts, padding="longest", max_length=tokenizer.model_max_length, truncation=True)
    return torch.tensor(ids.input_ids, device=device)


def text_embeddings(clip, tokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
    """Normalised CLIP text embeddings. CLIP's text tower is causal and pools at the EOS token, so padding to the
    batch's longest text gives the same embeddings as padding to ``model_max_length``."""
    return text_embeddings_of_ids(clip, _tokenize(tokenizer, texts, device, pad_to_max=False))


def text_embeddings_of_ids(clip, ids: torch.Tensor) -> torch.Tensor:
    emb = clip.get_text_features(input_ids=ids)
    emb = getattr(emb, "pooler_output", emb)
    return F.normalize(emb.float(), dim=-1)


def image_embeddings(clip, pixels: torch.Tensor) -> torch.Tensor:
    emb = clip.get_image_features(pixel_values=pixels)
    emb = getattr(emb, "pooler_output", emb)
    return F.normalize(emb.float(), dim=-1)


def clip_batch(
    scenes: list[Scene], rng: random.Random, batch: int, hard: int
) -> tuple[list[Scene], list[str], list[Scene], list[str]]:
    """A CLIP batch: ``batch // 2`` scenes and one one-attribute variant of each, with a varied caption each; and
    ``hard`` captions of further one-attribute variants per scene (extra negatives for image -> text).

    Returns (scenes, their captions, the negatives' scenes, the negatives' captions).
    """
    from .captions import caption

    base = [scenes[rng.randrange(len(scenes))] for _ in range(batch // 2)]
    picked: list[Scene] = []
    for s in base:
        picked += [s, rng.choice(one_attribute_variants(s))]
    captions = [caption(s, rng) for s in picked]
    negative_scenes: list[Scene] = []
    for s in picked:
        variants = one_attribute_variants(s)
        negative_scenes += rng.sample(variants, min(hard, len(variants)))
    negatives = [caption(v, rng) for v in negative_scenes]
    return picked, captions, negative_scenes, negatives


def clip_loss(
    clip, image_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor, same: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE; image -> text also against the hard negatives. ``same[i, j]`` is True where candidate
    caption j (positives, then negatives) describes image i's scene: those are not negatives of image i (a
    variant's variant can be the scene itself), so they are left out of its softmax."""
    scale = clip.logit_scale.exp().clamp(max=100)
    b = image_emb.shape[0]
    target = torch.arange(b, device=image_emb.device)
    eye = torch.zeros_like(same)
    eye[target, target] = True
    mask = same & ~eye
    i2t = (scale * image_emb @ torch.cat([text_emb, negative_emb]).T).masked_fill(mask, float("-inf"))
    t2i = (scale * text_emb @ image_emb.T).masked_fill(mask[:, :b], float("-inf"))
    return 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target))


def clip_batch_maker(
    scenes: list[Scene], tokenizer, settings: TrainSettings, stage: str, text_targets: bool
) -> Callable[[int], dict]:
    """``make(step)``: a CLIP stage's batch of step ``step`` (drawn from ``(seed, stage, step)``), ready for the
    loss; with ``text_targets``, also the attribute targets of every caption (the text heads' labels)."""
    from .render import render_batch

    def make(step: int) -> dict:
        rng = random.Random(step_seed(settings.seed, stage, step))
        picked, captions, negative_scenes, negatives = clip_batch(
            scenes, rng, settings.clip_batch, settings.clip_hard_captions
        )
        batch = {
            "step": step,
            "pixels": clip_pixels(render_batch(picked)),
            "ids": _tokenize(tokenizer, captions + negatives, torch.device("cpu"), pad_to_max=False),
            "n_captions": len(captions),
            "same": same_scene_mask(picked, picked + negative_scenes, torch.device("cpu")),
            "image_targets": torch.tensor([scene_targets(x) for x in picked]),
        }
        if text_targets:
            batch["text_targets"] = torch.tensor([scene_targets(x) for x in picked + negative_scenes])
        return batch

    return make


def same_scene_mask(picked: list[Scene], candidates: list[Scene], device: torch.device) -> torch.Tensor:
    ids: dict[Scene, int] = {}
    a = torch.tensor([ids.setdefault(s, len(ids)) for s in picked])
    c = torch.tensor([ids.setdefault(s, len(ids)) for s in candidates])
    return (a[:, None] == c[None, :]).to(device)


# Attribute targets of a scene, for CLIP's auxiliary heads: background, style, then per grid cell its shape's
# kind, colour and size (class 0: the cell is empty).
_ATTRIBUTE_CLASSES = (
    (len(BACKGROUNDS), len(STYLES)) + (len(KINDS) + 1,) * 9 + (len(COLORS) + 1,) * 9 + (len(SIZES) + 1,) * 9
)


def scene_targets(scene: Scene) -> list[int]:
    from .scene import POSITIONS

    cells = [scene.shape_at(p) for p in POSITIONS]
    return (
        [list(BACKGROUNDS).index(scene.background), STYLES.index(scene.style)]
        + [0 if c is None else 1 + KINDS.index(c.kind) for c in cells]
        + [0 if c is None else 1 + list(COLORS).index(c.color) for c in cells]
        + [0 if c is None else 1 + SIZES.index(c.size) for c in cells]
    )


class AttributeHeads(torch.nn.Module):
    """Linear read-outs of every scene attribute from CLIP's (normalised) image and text embeddings.

    Training only (they are not part of the saved CLIPModel): with contrastive learning alone, a CLIP this small
    learns colours in a few hundred steps but not kinds, sizes, positions or the style (measured: 5% top-1 against
    one-attribute distractors after 400 steps); asking both embeddings to carry every attribute gives each tower a
    dense signal, and the contrastive loss then aligns embeddings that already hold the same facts.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.image = torch.nn.Linear(dim, sum(_ATTRIBUTE_CLASSES))
        self.text = torch.nn.Linear(dim, sum(_ATTRIBUTE_CLASSES))
        # Unit-norm inputs have coordinates ~1/sqrt(dim): rescale them so that confident logits are within reach
        # of the first hundred steps (unscaled, the heads had learnt nothing but the background after 200).
        self.input_scale = dim**0.5

    def read_image(self, emb: torch.Tensor) -> torch.Tensor:
        return self.image(emb * self.input_scale)

    def read_text(self, emb: torch.Tensor) -> torch.Tensor:
        return self.text(emb * self.input_scale)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, start = [], 0
        for i, n in enumerate(_ATTRIBUTE_CLASSES):
            losses.append(F.cross_entropy(logits[:, start : start + n], targets[:, i]))
            start += n
        return torch.stack(losses).mean()


def train_clip(out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device) -> Path:
    """Train CLIP contrastively with one-attribute hard negatives; save it with its tokenizer and processor."""
    from transformers import CLIPImageProcessor, CLIPTokenizer

    out_dir = Path(out_dir)
    final = clip_final_path(out_dir)
    if (final / "config.json").is_file():
        return final
    work = out_dir / "work" / "clip"
    _, scenes = load_dataset(out_dir / "work", settings.n_scenes, settings.seed)
    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    else:
        n_texts = settings.tokenizer_texts
        tokenizer = build_tokenizer(cfg.clip, tokenizer_corpus(n_texts - n_texts // 3, n_texts // 3))
        _save_pretrained_atomic(tokenizer, tok_dir)
    clip = build_clip(cfg.clip, tokenizer, seed=settings.seed).to(device).train()
    use_attention(clip, settings.attention)
    heads = AttributeHeads(cfg.clip.projection_dim).to(device)
    params = [*clip.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.clip_lr, weight_decay=0.05)
    ckpt = Checkpointer(work / "checkpoints", settings.keep_checkpoints)
    start = 0
    loaded = ckpt.load()
    if loaded is not None:
        weights, state = loaded
        clip.load_state_dict(unprefixed("clip", weights))
        heads.load_state_dict(unprefixed("heads", weights))
        opt.load_state_dict(state["optimizer"])
        _optimizer_to(opt, device)
        start = int(state["step"])
    print(
        f"CLIP: {count_parameters(clip) / 1e6:.2f}M parameters (text {count_parameters(clip.text_model) / 1e6:.2f}M), "
        f"vocabulary {len(tokenizer)}, max length {tokenizer.model_max_length}, resuming at step {start}",
        flush=True,
    )

    make_batch = clip_batch_maker(scenes, tokenizer, settings, "clip", text_targets=True)

    end = _stage_end(settings.clip_steps, settings.clip_stop_step)
    batches = step_batches(make_batch, start, end, settings.loader_workers)

    def step_fn(step: int) -> float:
        batch = next(batches)
        assert batch["step"] == step
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        n_captions = batch["n_captions"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.clip_steps, settings.clip_lr, 100)
        with _autocast(device, settings.clip_precision):
            image_emb = image_embeddings(clip, batch["pixels"])
            all_text = text_embeddings_of_ids(clip, batch["ids"])
        loss = clip_loss(clip, image_emb, all_text[:n_captions], all_text[n_captions:], batch["same"])
        if settings.clip_attribute_weight > 0:
            aux = heads.loss(heads.read_image(image_emb), batch["image_targets"])
            aux = aux + heads.loss(heads.read_text(all_text), batch["text_targets"])
            loss = loss + settings.clip_attribute_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    def save_fn(step: int) -> None:
        weights = {**prefixed("clip", clip.state_dict()), **prefixed("heads", heads.state_dict())}
        ckpt.save(step, weights, {"optimizer": opt.state_dict()})

    done = _loop(
        "clip",
        settings.clip_steps,
        start,
        step_fn,
        save_fn,
        settings.ckpt_every,
        settings.threads,
        settings.clip_minutes,
        settings.clip_stop_step,
    )

    clip = use_attention(clip.to("cpu").eval(), "sdpa")
    processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": cfg.image_size},
        do_center_crop=True,
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clip.", dir=final.parent))
    try:
        clip.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    (work / "settings.json").write_text(json.dumps(_settings_record(cfg, settings, done), indent=1))
    return final


def _atomic_copytree(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clip_vision_done_path(out_dir: Path) -> Path:
    return Path(out_dir) / "work" / "clip_vision" / "settings.json"


def _is_vision_weight(name: str) -> bool:
    return name.startswith(("vision_model.", "visual_projection."))


def train_clip_vision(
    out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device
) -> Path:
    """Fine-tune CLIP's image tower and projection against its frozen text tower; rewrite ``out_dir/clip``.

    A CLIP trained jointly under a time limit can end with a text tower that tells one-attribute variants apart
    better than its image tower does (the bundled one: 75.8% top-1 against one-attribute distractors). Training the
    image side alone, with the CLIP stage's batches of hard negatives and fresh image attribute heads, raises that
    without touching the text embeddings the UNet was trained on: the text tower, its projection and the logit
    scale are frozen, and the stage's test checks that they come out bit for bit the same.

    The stage starts from a copy of ``clip/`` taken when it first runs (``work/clip_vision/start``), so rerunning it
    never tunes an already tuned tower; it refuses to go on if ``clip/``'s text tower has changed since.
    """
    from transformers import CLIPModel, CLIPTokenizer

    out_dir = Path(out_dir)
    final = clip_final_path(out_dir)
    done_path = clip_vision_done_path(out_dir)
    work = done_path.parent
    source, backup = work / "start", final.parent / ".clip.replaced"
    if backup.is_dir() and not final.exists():  # a swap below was cut between its two renames
        os.replace(backup, final)
    if done_path.is_file():
        return final
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"the clip_vision stage fine-tunes {final}: run the clip stage first")
    if not (source / "config.json").is_file():
        _atomic_copytree(final, source)
    tokenizer = CLIPTokenizer.from_pretrained(source)
    clip = use_attention(
        CLIPModel.from_pretrained(source, dtype=torch.float32).to(device), settings.attention
    )
    current = load_file(final / "model.safetensors")
    text = {k: v for k, v in clip.state_dict().items() if not _is_vision_weight(k)}
    if any(not torch.equal(v.cpu(), current[k].to(v.dtype)) for k, v in text.items() if k in current):
        raise ValueError(
            f"{final}'s text tower differs from the one this stage started from ({source}): the CLIP stage ran "
            f"again; delete {work} to tune the new CLIP"
        )
    for name, param in clip.named_parameters():
        param.requires_grad_(_is_vision_weight(name))
    clip.eval()
    clip.vision_model.train()
    heads = AttributeHeads(cfg.clip.projection_dim).to(device)
    params = [p for p in clip.parameters() if p.requires_grad] + list(heads.image.parameters())
    opt = torch.optim.AdamW(params, lr=settings.clip_vision_lr, weight_decay=0.05)
    ckpt = Checkpointer(work / "checkpoints", settings.keep_checkpoints)
    start = 0
    loaded = ckpt.load()
    if loaded is not None:
        weights, state = loaded
        missing, unexpected = clip.load_state_dict(unprefixed("vision", weights), strict=False)
        if unexpected or any(_is_vision_weight(k) for k in missing):
            raise ValueError(f"{ckpt.folder}: not a clip_vision checkpoint of this CLIP")
        heads.image.load_state_dict(unprefixed("heads", weights))
        opt.load_state_dict(state["optimizer"])
        _optimizer_to(opt, device)
        start = int(state["step"])
    scenes = training_scenes(settings.n_scenes, settings.seed)
    print(
        f"CLIP image tower: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters, text tower frozen, "
        f"resuming at step {start}",
        flush=True,
    )

    make_batch = clip_batch_maker(scenes, tokenizer, settings, "clip_vision", text_targets=False)

    total = settings.clip_vision_steps
    batches = step_batches(make_batch, start, total, settings.loader_workers)

    def step_fn(step: int) -> float:
        batch = next(batches)
        assert batch["step"] == step
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        n_captions = batch["n_captions"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, settings.clip_vision_lr, settings.clip_vision_warmup)
        with _autocast(device, settings.clip_precision):
            with torch.no_grad():
                all_text = text_embeddings_of_ids(clip, batch["ids"])
            image_emb = image_embeddings(clip, batch["pixels"])
        loss = clip_loss(clip, image_emb, all_text[:n_captions], all_text[n_captions:], batch["same"])
        if settings.clip_attribute_weight > 0:
            aux = heads.loss(heads.read_image(image_emb), batch["image_targets"])
            loss = loss + settings.clip_attribute_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    def save_fn(step: int) -> None:
        vision = {k: v for k, v in clip.state_dict().items() if _is_vision_weight(k)}
        weights = {**prefixed("vision", vision), **prefixed("heads", heads.image.state_dict())}
        ckpt.save(step, weights, {"optimizer": opt.state_dict()})

    done = _loop("clip_vision", total, start, step_fn, save_fn, settings.ckpt_every, settings.threads)
    clip = use_attention(clip.to("cpu").eval(), "sdpa")
    tmp = Path(tempfile.mkdtemp(prefix=".clip.", dir=final.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)  # tokenizer and image processor
        clip.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(final, backup)  # two renames: a crash between them is repaired when the stage runs again
        os.replace(tmp, final)
        shutil.rmtree(backup)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _atomic_write(
        done_path, lambda p: Path(p).write_text(json.dumps(_settings_record(cfg, settings, done), indent=1))
    )
    return final


# ---------------------------------------------------------------------------
# UNet
# ---------------------------------------------------------------------------


def base_final_path(out_dir: Path) -> Path:
    return Path(out_dir) / "base"


def encode_latents(
    vae, images: np.ndarray, device: torch.device, batch: int = 256, desc: str = "encode"
) -> torch.Tensor:
    """Scaled VAE latents (posterior means) of uint8 renders."""
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch), desc=desc, leave=False, mininterval=5):
            x = to_tensor(images[i : i + batch]).to(device)
            out.append(vae.encode(x).latent_dist.mean.cpu() * vae.config.scaling_factor)
    return torch.cat(out)


def _cached_latents(work: Path, vae, images: np.ndarray, device: torch.device) -> torch.Tensor:
    path = work / "latents.safetensors"
    if path.is_file():
        lat = load_file(path)["latents"]
        if len(lat) == len(images):
            return lat
    lat = encode_latents(vae, images, device, desc="cache latents")
    _atomic_write(path, lambda tmp: save_file({"latents": lat.contiguous()}, tmp))
    return lat


def load_text_encoder(clip_dir: Path, device: torch.device, tokenizer_dir: Path | None = None):
    """CLIP's text tower (from a CLIPModel or a CLIPTextModel folder), in float32, and its tokenizer."""
    from transformers import CLIPTextModel, CLIPTokenizer

    text_encoder = CLIPTextModel.from_pretrained(clip_dir, dtype=torch.float32).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir or clip_dir)
    return text_encoder.requires_grad_(False), tokenizer


def _unet_companions(out_dir: Path, init: Path | None, device: torch.device):
    """(VAE folder, text encoder, tokenizer) of the UNet stage: the fine-tuned pipeline's, or this run's (the VAE
    decoder-fine-tuned if that stage ran)."""
    if init is not None:
        return init / "vae", *load_text_encoder(init / "text_encoder", device, init / "tokenizer")
    return current_vae_path(out_dir), *load_text_encoder(clip_final_path(out_dir), device)


def _recorded_unet_init(out_dir: Path) -> Path | None:
    record = Path(out_dir) / "work" / "unet" / "init.json"
    source = json.loads(record.read_text())["unet_init"] if record.is_file() else ""
    return unet_init_path(source) if source else None


def train_unet(out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device) -> Path:
    """Train the UNet on cached latents with v-prediction over a zero-terminal-SNR schedule; save the pipeline."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    out_dir = Path(out_dir)
    final = base_final_path(out_dir)
    if (final / "model_index.json").is_file():
        return final
    work = out_dir / "work" / "unet"
    init = _check_unet_start(work, settings)
    images, scenes = load_dataset(out_dir / "work", settings.n_scenes, settings.seed)
    vae_dir, text_encoder, tokenizer = _unet_companions(out_dir, init, device)
    vae = (
        AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
        .to(device)
        .eval()
        .requires_grad_(False)
    )
    latents = _cached_latents(work, vae, images, device)
    n = len(latents)
    if init is not None:
        unet = (
            UNet2DConditionModel.from_pretrained(init / "unet", torch_dtype=torch.float32).to(device).train()
        )
    else:
        unet = build_unet(cfg.unet, text_encoder.config.hidden_size, seed=settings.seed).to(device).train()
    use_attention(unet, settings.attention)
    use_attention(text_encoder, settings.attention)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=0.01)
    noise_scheduler = DDPMScheduler.from_config(_base_scheduler(cfg, init).config)
    ckpt = Checkpointer(work / "checkpoints", settings.keep_checkpoints)
    start = 0
    loaded = ckpt.load()
    if loaded is not None:
        weights, state = loaded
        unet.load_state_dict(unprefixed("unet", weights))
        # clone: fresh, aligned memory (safetensors tensors can sit at odd offsets, where SIMD kernels round
        # differently in the last bit)
        ema = {k: v.to(device).clone() for k, v in unprefixed("ema", weights).items()}
        opt.load_state_dict(state["optimizer"])
        _optimizer_to(opt, device)
        start = int(state["step"])
    print(
        f"UNet: {count_parameters(unet) / 1e6:.2f}M parameters, {n} latents, resuming at step {start}",
        flush=True,
    )
    float_keys = [k for k, v in ema.items() if v.is_floating_point()]

    latent_shape = tuple(latents.shape[1:])

    def make_batch(step: int) -> dict:
        g = torch.Generator().manual_seed(step_seed(settings.seed, "unet", step))
        rng = random.Random(step_seed(settings.seed, "unet", step))
        b = settings.unet_batch
        idx = torch.randint(0, n, (b,), generator=g)
        texts = unet_captions([scenes[i] for i in idx.tolist()], rng, settings)
        return {
            "step": step,
            "idx": idx,
            # the UNet's conditioning as StableDiffusionPipeline computes it: padded to model_max_length
            "ids": _tokenize(tokenizer, texts, torch.device("cpu"), pad_to_max=True),
            "noise": torch.randn((b, *latent_shape), generator=g),
            "t": torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=g),
        }

    end = _stage_end(settings.unet_steps, settings.unet_stop_step)
    batches = step_batches(make_batch, start, end, settings.loader_workers)

    def step_fn(step: int) -> float:
        batch = next(batches)
        assert batch["step"] == step
        x0 = latents[batch["idx"]].to(device)
        noise = batch["noise"].to(device)
        t = batch["t"].to(device)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        target = noise_scheduler.get_velocity(x0, noise, t)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.unet_steps, settings.unet_lr, settings.unet_warmup)
        with _autocast(device, settings.unet_precision):
            with torch.no_grad():
                cond = text_encoder(batch["ids"].to(device))[0]
            pred = unet(noisy, t, cond).sample
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            current = unet.state_dict()
            torch._foreach_lerp_([ema[k] for k in float_keys], [current[k] for k in float_keys], 1 - decay)
        return float(loss.detach())

    def save_fn(step: int) -> None:
        ckpt.save(
            step,
            {**prefixed("unet", unet.state_dict()), **prefixed("ema", ema)},
            {"optimizer": opt.state_dict()},
        )

    done = _loop(
        "unet",
        settings.unet_steps,
        start,
        step_fn,
        save_fn,
        settings.ckpt_every,
        settings.threads,
        settings.unet_minutes,
        settings.unet_stop_step,
    )

    unet.load_state_dict(ema)
    use_attention(unet, "sdpa")
    use_attention(text_encoder, "sdpa")
    vae_dir = (
        init / "vae" if init is not None else current_vae_path(out_dir)
    )  # the decoder may be tuned by now
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    save_base_pipeline(
        final, vae, text_encoder, tokenizer, unet.to("cpu").eval(), cfg, _base_scheduler(cfg, init)
    )
    (work / "settings.json").write_text(json.dumps(_settings_record(cfg, settings, done), indent=1))
    return final


def _base_scheduler(cfg: BaseModelConfig, init: Path | None):
    """The sampling scheduler saved with the base: the fine-tuned pipeline's, or the preset's."""
    if init is None:
        return build_scheduler(cfg.scheduler)
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_pretrained(init / "scheduler")


def save_base_pipeline(
    folder: Path, vae, text_encoder, tokenizer, unet, cfg: BaseModelConfig, scheduler=None
) -> Path:
    """Save a StableDiffusionPipeline folder (safetensors, no safety checker) atomically; the tokenizer without
    the padding and truncation that training's calls left in it."""
    from diffusers import StableDiffusionPipeline

    from ip2p.tokenization import without_call_state

    pipe = StableDiffusionPipeline(
        vae=vae.to("cpu"),
        text_encoder=text_encoder.to("cpu"),
        tokenizer=without_call_state(tokenizer),
        unet=unet.to("cpu"),
        scheduler=build_scheduler(cfg.scheduler) if scheduler is None else scheduler,
        **PIPELINE_KWARGS,
    )
    _save_pretrained_atomic(pipe, Path(folder))
    return Path(folder)


def export_checkpoint(
    out_dir: Path, folder: Path, step: int | None = None, ema: bool = True, preset_name: str = "toy"
) -> Path:
    """A pipeline folder from a UNet checkpoint (its EMA weights by default), to evaluate a run before it ends."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    out_dir = Path(out_dir)
    cfg = _load_config(out_dir, preset_name)
    ckpt = Checkpointer(out_dir / "work" / "unet" / "checkpoints")
    step = ckpt.latest() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no UNet checkpoint under {ckpt.folder}")
    weights = load_file(ckpt.folder / f"step-{step}.safetensors")
    init = _recorded_unet_init(out_dir)
    vae_dir, text_encoder, tokenizer = _unet_companions(out_dir, init, torch.device("cpu"))
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
    if init is not None:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(init / "unet"))
    else:
        unet = build_unet(cfg.unet, text_encoder.config.hidden_size)
    unet.load_state_dict(unprefixed("ema" if ema else "unet", weights))
    return save_base_pipeline(
        Path(folder), vae, text_encoder, tokenizer, unet.eval(), cfg, _base_scheduler(cfg, init)
    )


def export_bundle(out_dir: Path, dest: Path) -> dict[str, Path]:
    """Copy the final models into ``dest/base`` and ``dest/clip`` (where the run has one) for bundling, with the UNet and VAE weights
    stored in fp16 (diffusers casts them back to fp32 when loading without ``torch_dtype``). The transformers
    models (text encoder, CLIP) stay fp32: transformers would keep fp16 weights in fp16.
    """
    from diffusers import StableDiffusionPipeline

    out_dir, dest = Path(out_dir), Path(dest)
    pipe = StableDiffusionPipeline.from_pretrained(base_final_path(out_dir), **PIPELINE_KWARGS)
    pipe.unet.to(torch.float16)
    pipe.vae.to(torch.float16)
    _save_pretrained_atomic(pipe, dest / "base")
    if not (clip_final_path(out_dir) / "config.json").is_file():  # a fine-tune (--unet-init) trains no CLIP
        return {"base": dest / "base"}
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".clip.", dir=dest))
    try:
        shutil.copytree(clip_final_path(out_dir), tmp, dirs_exist_ok=True)
        if (dest / "clip").exists():
            shutil.rmtree(dest / "clip")
        os.replace(tmp, dest / "clip")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {"base": dest / "base", "clip": dest / "clip"}


def _load_config(out_dir: Path, preset_name: str) -> BaseModelConfig:
    record = Path(out_dir) / "work" / "config.json"
    if record.is_file():
        return config_from_dict(json.loads(record.read_text()))
    return preset(preset_name)


def config_from_dict(d: dict) -> BaseModelConfig:
    from .models import CLIPSettings, SchedulerConfig, UNetConfig, VAEConfig

    def build(cls, values):
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return BaseModelConfig(
        vae=build(VAEConfig, d["vae"]),
        clip=build(CLIPSettings, d["clip"]),
        unet=build(UNetConfig, d["unet"]),
        scheduler=build(SchedulerConfig, d["scheduler"]),
        image_size=d["image_size"],
    )


# ---------------------------------------------------------------------------
# All three
# ---------------------------------------------------------------------------


def train_base(
    out_dir: str | os.PathLike,
    device: str = "auto",
    cfg: BaseModelConfig | None = None,
    settings: TrainSettings | None = None,
    stages: Iterable[str] = ("vae", "vae_decoder", "clip", "clip_vision", "unet"),
) -> dict[str, Path]:
    """Train (or resume, or skip what is done) the VAE, CLIP and the UNet; returns the final folders.

    Returns ``{"vae": ..., "clip": out_dir/clip, "base": out_dir/base}`` for the stages run.
    """
    from ip2p.devices import pick_device

    out_dir = Path(out_dir)
    settings = settings or TrainSettings()
    check_settings(settings)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(settings.threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    record = out_dir / "work" / "config.json"
    if cfg is None:
        cfg = _load_config(out_dir, "toy")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    out: dict[str, Path] = {}
    stages = tuple(stages)
    if "vae" in stages:
        out["vae"] = train_vae(out_dir, cfg, settings, dev)
    if "vae_decoder" in stages and settings.vae_decoder_steps > 0:
        out["vae"] = train_vae_decoder(out_dir, cfg, settings, dev)
    if "clip" in stages:
        out["clip"] = train_clip(out_dir, cfg, settings, dev)
    if "clip_vision" in stages and settings.clip_vision_steps > 0:
        out["clip"] = train_clip_vision(out_dir, cfg, settings, dev)
    if "unet" in stages:
        out["base"] = train_unet(out_dir, cfg, settings, dev)
    return out


def main(argv: list[str] | None = None) -> int:
    defaults = TrainSettings()
    p = argparse.ArgumentParser(prog="python -m ip2p.toy.train_base", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (base/ and clip/ are the final models)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, mps")
    p.add_argument("--preset", default="toy", help="architecture preset: toy (default) or test (tiny)")
    p.add_argument(
        "--stages",
        default="vae,vae_decoder,clip,clip_vision,unet",
        help="comma-separated stages to run, in this order (vae_decoder only runs with --vae-decoder-steps N, "
        "clip_vision with --clip-vision-steps N)",
    )
    for f in dataclasses.fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    # Short aliases named in the docs.
    for stage in ("vae", "clip", "unet"):
        p.add_argument(f"--steps-{stage}", type=int, default=None, help=f"alias of --{stage}-steps")
    p.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="after training, write DIR/base and DIR/clip for bundling (UNet and VAE weights in fp16)",
    )
    args = p.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    for stage in ("vae", "clip", "unet"):
        alias = getattr(args, f"steps_{stage}")
        if alias is not None:
            values[f"{stage}_steps"] = alias
    settings = TrainSettings(**values)
    try:
        check_settings(settings)
    except SettingsError as exc:
        print(f"ip2p toy train-base: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    cfg = (
        _load_config(out_dir, args.preset)
        if (out_dir / "work" / "config.json").is_file()
        else preset(args.preset)
    )
    try:
        result = train_base(out_dir, args.device, cfg, settings, stages=args.stages.split(","))
    except Interrupted as exc:
        print(f"ip2p toy train-base: {exc}", file=sys.stderr)
        return 130
    except SettingsError as exc:
        print(f"ip2p toy train-base: error: {exc}", file=sys.stderr)
        return 2
    if args.export:
        result.update({f"export-{k}": v for k, v in export_bundle(out_dir, Path(args.export)).items()})
    for name, path in result.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
