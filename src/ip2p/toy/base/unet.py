"""Stage "unet": the UNet trained on the VAE's latents of pre-rendered scenes with v-prediction over a
zero-terminal-SNR schedule, conditioned on the frozen CLIP text tower's hidden states, with empty captions for
classifier-free guidance; from scratch, or fine-tuned from a text-to-image pipeline (``unet_init``, e.g. with
brief captions). Ends by saving the text-to-image pipeline ``base/`` with the UNet's EMA weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ip2p.fileio import atomic_path, write_json_atomic
from ip2p.harness import (
    Checkpointer,
    prefixed,
    run_steps,
    schedule_end,
    step_batches,
    unprefixed,
)

from ..data import load_dataset, to_tensor, unet_captions
from ..models import BaseModelConfig, build_scheduler, build_unet, count_parameters
from .common import (
    autocast,
    base_final_path,
    clip_final_path,
    current_vae_path,
    lr_at,
    save_pretrained_atomic,
    settings_record,
    step_seed,
    tokenize,
    use_attention,
)
from .config import SettingsError, TrainSettings, unet_init_path


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
    with atomic_path(path) as tmp:
        save_file({"latents": lat.contiguous()}, tmp)
    return lat


def load_text_encoder(clip_dir: Path, device: torch.device, tokenizer_dir: Path | None = None):
    """CLIP's text tower (from a CLIPModel or a CLIPTextModel folder), in float32, and its tokenizer."""
    from transformers import CLIPTextModel, CLIPTokenizer

    text_encoder = CLIPTextModel.from_pretrained(clip_dir, dtype=torch.float32).to(device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir or clip_dir)
    return text_encoder.requires_grad_(False), tokenizer


def _init_record(source: str) -> str:
    """How a run records where its UNet started: "" (from scratch), "toy", or an absolute folder."""
    return source if source in ("", "toy") else str(Path(source).resolve())


def _started(source: str) -> str:
    return f"from {source}" if source else "from scratch"


def check_unet_start(work: Path, settings: TrainSettings) -> Path | None:
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
    write_json_atomic(record, {"unet_init": wanted}, indent=None)
    return unet_init_path(wanted) if wanted else None


def unet_companions(out_dir: Path, init: Path | None, device: torch.device):
    """(VAE folder, text encoder, tokenizer) of the UNet stage: the fine-tuned pipeline's, or this run's (the VAE
    decoder-fine-tuned if that stage ran)."""
    if init is not None:
        return init / "vae", *load_text_encoder(init / "text_encoder", device, init / "tokenizer")
    return current_vae_path(out_dir), *load_text_encoder(clip_final_path(out_dir), device)


def recorded_unet_init(out_dir: Path) -> Path | None:
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
    init = check_unet_start(work, settings)
    images, scenes = load_dataset(out_dir / "work", settings.n_scenes, settings.seed)
    vae_dir, text_encoder, tokenizer = unet_companions(out_dir, init, device)
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
    noise_scheduler = DDPMScheduler.from_config(base_scheduler(cfg, init).config)
    ckpt = Checkpointer(work / "checkpoints", settings.keep_checkpoints)

    def load_weights(weights: dict[str, torch.Tensor]) -> None:
        nonlocal ema
        unet.load_state_dict(unprefixed("unet", weights))
        # clone: fresh, aligned memory (safetensors tensors can sit at odd offsets, where SIMD kernels round
        # differently in the last bit)
        ema = {k: v.to(device).clone() for k, v in unprefixed("ema", weights).items()}

    start = ckpt.resume(opt, device, load_weights)
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
            "ids": tokenize(tokenizer, texts, torch.device("cpu"), pad_to_max=True),
            "noise": torch.randn((b, *latent_shape), generator=g),
            "t": torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=g),
        }

    end = schedule_end(settings.unet_steps, settings.unet_stop_step)
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
        with autocast(device, settings.unet_precision):
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

    done = run_steps(
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
        final, vae, text_encoder, tokenizer, unet.to("cpu").eval(), cfg, base_scheduler(cfg, init)
    )
    write_json_atomic(work / "settings.json", settings_record(cfg, settings, done), indent=1)
    return final


def base_scheduler(cfg: BaseModelConfig, init: Path | None):
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

    from ip2p.models import EditComponents, build_pipeline
    from ip2p.tokenization import without_call_state

    components = EditComponents(
        unet=unet.to("cpu"),
        vae=vae.to("cpu"),
        text_encoder=text_encoder.to("cpu"),
        tokenizer=without_call_state(tokenizer),
        scheduler=build_scheduler(cfg.scheduler) if scheduler is None else scheduler,
    )
    pipe = build_pipeline(StableDiffusionPipeline, components)
    save_pretrained_atomic(pipe, Path(folder))
    return Path(folder)
