"""Training an instruction-following editor (paper section 3.2), on one process or many through accelerate.

The editing UNet starts from a text-to-image UNet with 4 extra, zero-initialised input channels for the latent of
the input image. VAE and text encoder stay frozen. Each example's randomness (augmentation, conditioning dropout,
timestep, noise, the VAE posterior sample) is drawn from a generator keyed by the run's seed and the example's
position in the data stream, never from a global RNG. Hence:

- resuming from a checkpoint reproduces an uninterrupted run exactly (weights, optimizer, EMA, LR schedule and
  step are saved; there is no RNG state to lose), and
- N processes with per-process batch b compute the same gradients as one process with batch N*b.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ip2p import train_checkpoint
from ip2p.data.formats import Columns, EditExample
from ip2p.data.streaming import load_stream_state, open_training_data, prune_stream_states, save_stream_states
from ip2p.fileio import atomic_path, write_json_atomic
from ip2p.harness import (
    Deadline,
    Interrupted,
    StopRequest,
    stop_requests,
)
from ip2p.imaging import make_grid, pil_to_tensor, save_png
from ip2p.train_conditioning import frozen_dtypes, text_conditioning
from ip2p.train_config import (  # noqa: F401 (the config lives torch-free; re-exported here)
    ATTENTIONS,
    LR_SCHEDULES,
    PRESETS,
    TIMESTEP_BIASES,
    TrainConfig,
    apply_preset,
    config_fields,
)
from ip2p.train_lora import add_lora, export_lora, trainable_parameters
from ip2p.train_optim import build_optimizer


def lr_factor(step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """The learning rate's multiplier after ``step`` optimizer steps: linear warm-up over ``warmup`` steps
    (reaching 1 on the last), then 1 (constant) or a linear or cosine decay that reaches 0 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step + 1 - warmup) / max(1, total - warmup)))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def timestep_weights(num_timesteps: int, bias: str = "none", multiplier: float = 2.0, portion: float = 0.25):
    """The probability of drawing each training timestep, (num_timesteps,): uniform (``none``), or ``multiplier``
    times more likely on the last (``later``: the noisiest) or first (``earlier``) ``portion`` of them.

    Example:
        >>> w = timestep_weights(1000, "later", 3.0, 0.3)  # 0.3 * 3 / (0.7 + 0.3 * 3) of the draws at t >= 700
        >>> round(float(w[700:].sum()), 4)
        0.5625
    """
    if bias not in TIMESTEP_BIASES:
        raise ValueError(f"unknown timestep bias {bias!r}; choose one of {', '.join(TIMESTEP_BIASES)}")
    weights = torch.ones(num_timesteps, dtype=torch.float64)
    n = max(1, round(num_timesteps * portion))
    if bias == "later":
        weights[num_timesteps - n :] = multiplier
    elif bias == "earlier":
        weights[:n] = multiplier
    return weights / weights.sum()


def draw_timesteps(
    generators: Sequence[torch.Generator],
    num_timesteps: int,
    bias: str = "none",
    multiplier: float = 2.0,
    portion: float = 0.25,
) -> torch.Tensor:
    """One training timestep per example, (B,), each from its own generator: uniform, or by
    :func:`timestep_weights` (inverse CDF of one uniform draw)."""
    if bias == "none":
        return torch.stack([torch.randint(0, num_timesteps, (), generator=g) for g in generators])
    cdf = torch.cumsum(timestep_weights(num_timesteps, bias, multiplier, portion), 0)
    uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    return torch.searchsorted(cdf, uniform, right=True).clamp_(max=num_timesteps - 1)


def example_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the example at ``position`` of the data stream (splitmix64 of both)."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def epoch_order(seed: int, epoch: int, size: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The data order of an epoch, drawn from the run's seed and the epoch: a permutation, or with ``weights``
    ``size`` draws with replacement in proportion to them."""
    generator = torch.Generator().manual_seed(example_seed(seed, -1 - epoch))
    if weights is None:
        return torch.randperm(size, generator=generator)
    return torch.multinomial(weights.double(), size, replacement=True, generator=generator)


MAX_WEIGHTED_EXAMPLES = 2**24


def read_sample_weights(path: str | os.PathLike, size: int) -> torch.Tensor:
    """One weight per example from a text file: one number a line, blank lines and '#' comments skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"sample weights {path}: cannot read ({exc})") from None
    values = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}:{number}: weights must be finite and at least 0, got {text}")
        values.append(value)
    if len(values) != size:
        raise ValueError(f"{path}: {len(values)} weights for {size} training examples")
    if size > MAX_WEIGHTED_EXAMPLES:
        raise ValueError(
            f"{path}: sample weights take at most {MAX_WEIGHTED_EXAMPLES:,} examples (torch.multinomial's limit), "
            f"the data has {size:,}"
        )
    if not any(values):
        raise ValueError(f"{path}: every weight is 0")
    if not math.isfinite(sum(values)):
        raise ValueError(f"{path}: the weights' sum overflows; scale them down")
    return torch.tensor(values, dtype=torch.float64)


def augment_params(rng: random.Random, resize: tuple[int, int], crop: int, flip_prob: float):
    """(size, left, top, flip) of the paper's augmentation: random resize in ``resize``, random crop, flip."""
    size = rng.randint(*resize)
    left, top = rng.randint(0, size - crop), rng.randint(0, size - crop)
    return size, left, top, rng.random() < flip_prob


def joint_augment(
    original: Image.Image,
    edited: Image.Image,
    rng: random.Random,
    resize: tuple[int, int],
    crop: int,
    flip_prob: float,
) -> tuple[Image.Image, Image.Image]:
    """The same augmentation for both images (paper section 3.2: resize 256-288, crop 256, flip 0.5)."""
    size, left, top, flip = augment_params(rng, resize, crop, flip_prob)
    out = []
    for image in (original, edited):
        image = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        image = image.crop((left, top, left + crop, top + crop))
        out.append(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image)
    return out[0], out[1]


def diffusion_target(noise_scheduler, latents, noise, timesteps) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or the velocity (v), per the scheduler's prediction type."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r}")


# -- the trainer ------------------------------------------------------------------------------------------------
class Trainer:
    """Runs ``TrainConfig`` end to end: data, model surgery, loop, checkpoints, validation, export."""

    def __init__(self, config: TrainConfig, dataset: Sequence[EditExample] | None = None):
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        from ip2p.models import load_pipeline_components, to_edit_unet

        config.validate()
        self.config = config
        self.out = Path(config.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            cpu=config.device == "cpu",
        )
        # random access, or with --streaming this process's part of a stream (ip2p.data.streaming)
        self.stream = None
        if dataset is None:
            dataset, self.stream = open_training_data(
                config.data,
                Columns(
                    config.original_image_column,
                    config.edit_prompt_column,
                    config.edited_image_column,
                    config.original_prompt_column,
                    config.edited_prompt_column,
                ),
                config.data_format,
                streaming=config.streaming,
                validate=config.validate_data,
                seed=config.seed,
                buffer=config.shuffle_buffer,
                rank=self.accelerator.process_index,
                world=self.accelerator.num_processes,
                head=config.num_validation_examples,
            )
        self.dataset = dataset
        if len(self.dataset) == 0:
            raise ValueError("the training data is empty")
        self.sample_weights = (
            read_sample_weights(config.sample_weights, len(self.dataset)) if config.sample_weights else None
        )

        components = load_pipeline_components_for_training(
            config.base_model, load_pipeline_components, config.start_from
        )
        surgered = components.unet.config.in_channels == components.vae.config.latent_channels
        if surgered:  # a text-to-image start; an editor is trained on as it is
            to_edit_unet(
                components.unet,
                init=config.conv_in_init,
                image_scale=components.vae.config.scaling_factor,
            )
        self.components = components
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            config.mixed_precision, torch.float32
        )
        device = self.accelerator.device
        # the frozen modules run in the mixed-precision dtype but are exported as loaded, not rounded through it
        frozen = frozen_dtypes(components, self.weight_dtype)  # the VAE and text encoder(s): name -> dtype
        self._frozen_originals = (
            None
            if self.weight_dtype == torch.float32
            else {
                name: {
                    k: v.detach().to("cpu", copy=True)
                    for k, v in getattr(components, name).state_dict().items()
                }
                for name in frozen
            }
        )
        for name, dtype in frozen.items():
            getattr(components, name).requires_grad_(False).eval().to(device, dtype)
        unet = components.unet.train()
        if config.attention == "classic":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        # LoRA: adapters train, the rest of the UNet is frozen (but a new input convolution: ip2p.train_lora)
        self.lora = (
            add_lora(unet, config.lora_rank, config.lora_alpha, config.lora_targets, surgered, config.seed)
            if config.lora_rank
            else None
        )
        self.optimizer = build_optimizer(trainable_parameters(unet), config, device)
        self.lr_lambda = lambda step: lr_factor(
            step, config.lr_warmup_steps, config.max_train_steps, config.lr_schedule
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
        self.ema = (
            EMAModel(
                trainable_parameters(unet),
                decay=config.ema_decay,
                model_cls=type(unet),
                model_config=unet.config,
                foreach=True,  # one multi-tensor update, not a loop over the parameters
            )
            if config.use_ema
            else None
        )
        self.step = 0
        train_checkpoint.resume(self)  # before prepare(): plain modules and optimizer
        if self.stream is not None and self.step:
            load_stream_state(self.stream, self.out / "stream", self.step)
        self.unet, self.optimizer = self.accelerator.prepare(unet, self.optimizer)
        if self.ema is not None:
            self.ema.to(device)
        # instructions -> the UNet's text conditioning and its null text (SD or SDXL: ip2p.train_conditioning)
        self.conditioning = text_conditioning(components, device, config.resolution)
        self.cache: dict[str, torch.Tensor] | None = None

    # -- encoders ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> posterior mean and std, (B, 4, h, w) each, unscaled."""
        vae = self.components.vae
        dist = vae.encode(pixels.to(self.accelerator.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    # -- data ----------------------------------------------------------------------------------------------
    def _positions(self, step: int, micro: int) -> list[int]:
        """Stream positions of this process's examples in micro-batch ``micro`` of optimizer step ``step``."""
        c, world, rank = self.config, self.accelerator.num_processes, self.accelerator.process_index
        per_step = c.train_batch_size * world * c.gradient_accumulation_steps
        start = step * per_step + micro * c.train_batch_size * world + rank * c.train_batch_size
        return list(range(start, start + c.train_batch_size))

    def _example_index(self, position: int) -> int:
        n = len(self.dataset)
        epoch, i = divmod(position, n)
        if getattr(self, "_order_epoch", None) != epoch:
            self._order = epoch_order(self.config.seed, epoch, n, self.sample_weights)
            self._order_epoch = epoch
        return int(self._order[i])

    def _batch(self, positions: list[int]) -> dict[str, torch.Tensor]:
        """Everything the loss needs for these examples, each from its own keyed generator."""
        c = self.config
        gens = [torch.Generator().manual_seed(example_seed(c.seed, p)) for p in positions]
        rngs = [random.Random(example_seed(c.seed, p)) for p in positions]
        indices = [self._example_index(p) for p in positions] if self.stream is None else []
        if self.cache is not None:
            # The same draws as the uncached path with min_resize = max_resize = resolution.
            flips = torch.tensor(
                [augment_params(r, (c.resolution,) * 2, c.resolution, c.flip_prob)[3] for r in rngs]
            )
            cached = {k: v[indices] for k, v in self.cache.items()}
            pick = lambda a, b: torch.where(flips[:, None, None, None], b, a)  # noqa: E731
            mean, std = pick(cached["mean"], cached["mean_flip"]), pick(cached["std"], cached["std_flip"])
            image = pick(cached["image"], cached["image_flip"])
            text = {k: cached[k] for k in self.conditioning.keys}
        else:
            originals, editeds, prompts = [], [], []
            examples = (
                [self.dataset[i] for i in indices] if self.stream is None else self.stream.take(len(rngs))
            )
            for ex, rng in zip(examples, rngs, strict=True):
                o, e = joint_augment(
                    ex.original_image,
                    ex.edited_image,
                    rng,
                    (c.min_resize, c.max_resize),
                    c.resolution,
                    c.flip_prob,
                )
                originals.append(o)
                editeds.append(e)
                prompts.append(ex.edit_prompt)
            mean, std = self._encode_images(pil_to_tensor(editeds))
            image, _ = self._encode_images(pil_to_tensor(originals))  # posterior mode = mean for a Gaussian
            text = self.conditioning.encode(prompts)  # name -> (B, ...)
        device = self.accelerator.device
        # Fixed order of draws per example: dropout, timestep, noise, posterior sample.
        uniform = torch.stack([torch.rand((), generator=g) for g in gens])
        timesteps = draw_timesteps(
            gens,
            self.noise_scheduler.config.num_train_timesteps,
            c.timestep_bias,
            c.timestep_bias_multiplier,
            c.timestep_bias_portion,
        )
        noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
        if c.latent_target == "mean":
            std = torch.zeros_like(std)  # eps is still drawn: the other draws stay those of a sampled run
        latents = (
            mean + std * eps.to(mean.device)
        ) * self.components.vae.config.scaling_factor  # target latents
        text = {k: v.to(device) for k, v in text.items()}
        text, image = self.conditioning.dropout(
            text, image.to(device), uniform.to(device), c.conditioning_dropout_prob
        )
        return {
            "latents": latents.to(device),
            "image": image,
            "text": text,
            "noise": noise.to(device),
            "timesteps": timesteps.to(device),
        }

    @torch.no_grad()
    def build_cache(self) -> None:
        """Encode every example once (resized to the training resolution, both flips): ``cache_latents``."""
        from tqdm.auto import tqdm

        c = self.config
        path = self.out / "cache" / f"latents-{c.resolution}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            self.cache = load_file(path)
            return
        parts: dict[str, list[torch.Tensor]] = {
            k: []
            for k in ("mean", "std", "image", "mean_flip", "std_flip", "image_flip", *self.conditioning.keys)
        }
        todo = range(len(self.dataset))
        for start in tqdm(
            range(0, len(todo), 32), desc="caching latents", disable=not self.accelerator.is_main_process
        ):
            exs = [self.dataset[i] for i in todo[start : start + 32]]
            for flip in (False, True):
                suffix = "_flip" if flip else ""
                o, e = [], []
                for ex in exs:
                    a, b = joint_augment(
                        ex.original_image,
                        ex.edited_image,
                        random.Random(0),
                        (c.resolution, c.resolution),
                        c.resolution,
                        1.0 if flip else 0.0,
                    )
                    o.append(a)
                    e.append(b)
                mean, std = self._encode_images(pil_to_tensor(e))
                parts["mean" + suffix].append(mean.cpu())
                parts["std" + suffix].append(std.cpu())
                parts["image" + suffix].append(self._encode_images(pil_to_tensor(o))[0].cpu())
            for k, v in self.conditioning.encode([ex.edit_prompt for ex in exs]).items():
                parts[k].append(v.cpu())
        self.cache = {k: torch.cat(v) for k, v in parts.items()}
        if self.accelerator.is_main_process:
            from safetensors.torch import save_file

            with atomic_path(path) as tmp:
                save_file({k: v.contiguous() for k, v in self.cache.items()}, tmp)

    # -- loop ----------------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train to ``max_train_steps`` (resuming where a previous run stopped) and export the model."""
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "train_config.json", asdict(c))
        if c.cache_latents:
            self.build_cache()
        writer = self._tensorboard() if c.tensorboard and acc.is_main_process else None
        bar = tqdm(
            total=c.max_train_steps, initial=self.step, desc="training", disable=not acc.is_main_process
        )
        timer, seen = time.perf_counter(), 0
        deadline = Deadline(c.max_minutes)
        # SIGINT/SIGTERM end the step under way with a checkpoint (then Interrupted): the same command resumes.
        with stop_requests() as request:
            while self.step < c.max_train_steps:
                mean_loss = self.train_step()
                seen += c.train_batch_size * acc.num_processes * c.gradient_accumulation_steps
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if self.step % c.log_every == 0 or self.step == c.max_train_steps:
                    elapsed = time.perf_counter() - timer
                    self._log(
                        {
                            "step": self.step,
                            "loss": mean_loss,
                            "lr": self.lr_scheduler.get_last_lr()[0],
                            "samples_per_second": seen / max(elapsed, 1e-9),
                        },
                        writer,
                    )
                    timer, seen = time.perf_counter(), 0
                if self.step % c.checkpointing_steps == 0 or self.step == c.max_train_steps:
                    self.save_checkpoint()
                if c.validation_steps and self.step % c.validation_steps == 0:
                    self.validate()
                reason = self._stop_reason(deadline, request)
                if reason is None:
                    continue
                if self.step % c.checkpointing_steps:
                    self.save_checkpoint()
                if reason == "signal" and self.step < c.max_train_steps:
                    bar.close()
                    raise Interrupted(
                        f"training stopped at step {self.step} of {c.max_train_steps} ({request.name or 'signal'}), "
                        "checkpoint saved: run the same command again to resume"
                    )
                if reason == "time" and acc.is_main_process:
                    bar.write(f"stopping at step {self.step}: max_minutes ({c.max_minutes}) reached")
                break
        bar.close()
        if not c.validation_steps or self.step % c.validation_steps:
            self.validate()
        return self.export()

    def _stop_reason(self, deadline: Deadline, request: StopRequest) -> str | None:
        """Why training stops after this step: "signal" (SIGINT/SIGTERM), "time" (max_minutes) or None, as the
        main process sees it (every process stops at the same step)."""
        flags = [request.requested, deadline.passed()]
        if self.accelerator.num_processes > 1:  # one process: no device tensor, no synchronisation every step
            from accelerate.utils import broadcast

            shared = broadcast(torch.tensor(flags, dtype=torch.float32, device=self.accelerator.device))
            flags = [bool(f) for f in shared.tolist()]
        return "signal" if flags[0] else "time" if flags[1] else None

    def train_step(self) -> float:
        """One optimizer step (all micro-batches of it, on every process); returns the mean loss."""
        c, acc = self.config, self.accelerator
        losses = []
        for micro in range(c.gradient_accumulation_steps):
            batch = self._batch(self._positions(self.step, micro))
            with acc.accumulate(self.unet):
                loss = self._loss(batch)
                acc.backward(loss)
                if acc.sync_gradients and c.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.unet.parameters(), c.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(trainable_parameters(acc.unwrap_model(self.unet)))
        self.step += 1
        return acc.reduce(torch.stack(losses).mean(), reduction="mean").item()

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        noisy = self.noise_scheduler.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
        target = diffusion_target(self.noise_scheduler, batch["latents"], batch["noise"], batch["timesteps"])
        x = torch.cat(
            [noisy, batch["image"]], dim=1
        )  # (B, 8, h, w): noisy target latent + input-image latent
        with self.accelerator.autocast():
            text = self.conditioning.unet_inputs(batch["text"], x.dtype)  # hidden states (and SDXL's extras)
            pred = self.unet(x, batch["timesteps"], **text).sample
        return F.mse_loss(pred.float(), target.float())

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        return train_checkpoint.checkpoints(self.out)

    def save_checkpoint(self) -> Path | None:
        """What trains (weights, EMA, optimizer), LR schedule and step, atomically (ip2p.train_checkpoint)."""
        if self.stream is not None:  # every process's stream position, before the checkpoint that needs it
            save_stream_states(self.stream, self.accelerator, self.out / "stream", self.step)
        path = train_checkpoint.save_checkpoint(self)
        if self.stream is not None and self.accelerator.is_main_process:
            prune_stream_states(self.out / "stream", [int(p.name.split("-")[1]) for p in self._checkpoints()])
        return path

    def _sample_weights_sha256(self) -> str | None:
        """A digest of the weights the data order is drawn from, so that a resume continues the same run."""
        if self.sample_weights is None:
            return None
        import hashlib

        return hashlib.sha256(self.sample_weights.numpy().tobytes()).hexdigest()

    # -- outputs -------------------------------------------------------------------------------------------
    def _final_unet(self):
        unet = copy.deepcopy(self.accelerator.unwrap_model(self.unet)).float().eval()
        if self.ema is not None:
            self.ema.copy_to(trainable_parameters(unet))
        return unet

    def export(self) -> Path:
        """The final model (EMA weights where used) in diffusers format, with the paper's sampler."""
        from diffusers import EulerAncestralDiscreteScheduler

        from ip2p.models import save_edit_model

        self.accelerator.wait_for_everyone()
        if self.lora is not None:  # the adapter alone (and the input convolution where it trained)
            target = self.out / "lora"
            if self.accelerator.is_main_process:
                export_lora(self._final_unet(), target, {"base_model": self.config.base_model, **self.lora})
            return target
        target = self.out / "model"
        if self.accelerator.is_main_process:
            c = self.components
            frozen = {name: getattr(c, name).float() for name in frozen_dtypes(c, self.weight_dtype)}
            for name, state in (self._frozen_originals or {}).items():
                frozen[name].load_state_dict(state)
            scheduler = EulerAncestralDiscreteScheduler.from_config(c.scheduler.config)
            # the second text encoder and tokenizer, and SDXL's settings (info), travel with the components
            save_edit_model(
                replace(c, unet=self._final_unet(), scheduler=scheduler, name=str(target), **frozen), target
            )
        return target

    @torch.no_grad()
    def validate(self) -> Path | None:
        """Edit the first examples with the current (EMA) weights; grid rows: input, target, edit."""
        if not self.accelerator.is_main_process or self.config.num_validation_examples < 1:
            return None
        from ip2p.pipeline import EditPipeline

        c = self.config
        pipe = EditPipeline(
            replace(self.components, unet=self._final_unet(), name="validation"),
            device=self.accelerator.device,
            dtype=self.weight_dtype
            if self.weight_dtype != torch.float16 or self.accelerator.device.type != "cpu"
            else torch.float32,
        )
        tiles, labels = [], []
        size = c.validation_resolution or c.resolution
        for i in range(min(c.num_validation_examples, len(self.dataset))):
            ex = self.dataset[i]
            result = pipe(
                ex.original_image,
                ex.edit_prompt,
                seed=i,
                num_inference_steps=c.validation_inference_steps,
                resolution=size,
            )
            target = ex.edited_image or ex.original_image
            tiles += [result.input_image, target.resize(result.input_image.size), result.images[0]]
            labels += [ex.edit_prompt, "target", "edit"]
        path = self.out / "validation" / f"step-{self.step:07d}.png"
        save_png(make_grid(tiles, columns=3, labels=labels), path)
        return path

    def _log(self, row: dict[str, Any], writer) -> None:
        if not self.accelerator.is_main_process:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        if writer is not None:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(f"train/{key}", value, row["step"])

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
        return SummaryWriter(str(self.out / "tensorboard"))


def load_pipeline_components_for_training(source: str, loader, start_from: str = "auto") -> Any:
    """The model a run starts from: a text-to-image model (surgered by the trainer), or an editor to fine-tune
    (``start_from="editor"``; a named model's editor). ``auto``: the text-to-image model where ``source`` has one
    (a named model's base), else the editor."""
    from ip2p.models import ModelLoadError

    if start_from == "editor":
        return loader(source, edit=True)
    try:
        return loader(source, edit=False)
    except ModelLoadError as exc:
        if start_from == "text-to-image" or "input channels" not in str(exc):
            raise
        return loader(source, edit=True)


def train(config: TrainConfig, dataset: Sequence[EditExample] | None = None) -> Path:
    """Train an editor per ``config``; returns the exported model folder. Example::

    train(TrainConfig(base_model="path/to/sd", data=["pairs/*.parquet"], output_dir="runs/editor"))
    """
    return Trainer(config, dataset).train()
