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
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ip2p.datasets import Columns, EditExample, open_edit_dataset
from ip2p.guidance import apply_conditioning_dropout
from ip2p.imaging import make_grid, pil_to_tensor, save_png


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class TrainConfig:
    """Settings of ``ip2p train``. Defaults are the paper's (and the original ``configs/train.yaml``)."""

    base_model: str = _help(
        "text-to-image model to start from (diffusers folder, hub id, 'tiny'), or an editing "
        "model to continue",
        default="runwayml/stable-diffusion-v1-5",
    )
    data: list[str] = _help(
        "Parquet files/globs/folders (official schema) or an original-format folder", default_factory=list
    )
    output_dir: str = _help(
        "where checkpoints, logs, validation grids and the final model go", default="runs/train"
    )
    original_image_column: str = _help("column of the input image", default="original_image")
    edit_prompt_column: str = _help("column of the instruction", default="edit_prompt")
    edited_image_column: str = _help("column of the edited image", default="edited_image")
    resolution: int = _help("training crop size (paper: 256)", default=256)
    min_resize: int = _help("random resize lower bound before cropping (paper: 256)", default=256)
    max_resize: int = _help("random resize upper bound before cropping (paper: 288)", default=288)
    flip_prob: float = _help("probability of a horizontal flip of both images (paper: 0.5)", default=0.5)
    train_batch_size: int = _help(
        "examples per process per micro-batch (paper: 32 x 8 GPUs x 4 accumulation)", default=32
    )
    gradient_accumulation_steps: int = _help("micro-batches per optimizer step (paper: 4)", default=1)
    max_train_steps: int = _help("optimizer steps (paper: 10,000)", default=10_000)
    learning_rate: float = _help("AdamW learning rate, peak (paper: 1e-4)", default=1e-4)
    lr_warmup_steps: int = _help("linear warm-up steps (paper: 0)", default=0)
    lr_schedule: str = _help(
        "after the warm-up: constant (the paper's), or linear or cosine decay to 0 at max_train_steps",
        default="constant",
    )
    adam_beta1: float = _help("AdamW beta1", default=0.9)
    adam_beta2: float = _help("AdamW beta2", default=0.999)
    adam_weight_decay: float = _help("AdamW weight decay (torch's default, as the original)", default=1e-2)
    adam_epsilon: float = _help("AdamW epsilon", default=1e-8)
    max_grad_norm: float = _help("gradient clipping norm (0 disables)", default=1.0)
    conditioning_dropout_prob: float = _help(
        "probability of each dropout case: text only, both, image only (paper: 0.05)", default=0.05
    )
    timestep_bias: str = _help(
        "which timesteps are drawn more often: none (uniform, the paper's), later (the noisiest, where an edit's "
        "layout and colours are decided) or earlier (the least noisy), as diffusers' SDXL training script",
        default="none",
    )
    timestep_bias_multiplier: float = _help(
        "how many times more often the biased timesteps are drawn", default=2.0
    )
    timestep_bias_portion: float = _help("the share of the timesteps that is biased", default=0.25)
    sample_weights: str | None = _help(
        "a text file of one non-negative weight per training example, in the data's order (one number a line; "
        "'#' comments): each epoch draws its examples in proportion to them, with replacement, for example to "
        "balance edit types (`ip2p toy type-weights`); unset: every example once an epoch, as the paper",
        default=None,
    )
    use_ema: bool = _help("keep an EMA of the UNet and export it (paper: yes)", default=True)
    ema_decay: float = _help("EMA decay, with the (1+n)/(10+n) warm-up (paper: 0.9999)", default=0.9999)
    mixed_precision: str = _help("no, fp16 or bf16", default="no")
    gradient_checkpointing: bool = _help("trade compute for memory in the UNet", default=False)
    attention: str = _help(
        "the UNet's attention kernels in training: sdpa (torch's scaled_dot_product_attention, diffusers' "
        "default) or classic (diffusers' AttnProcessor: the same math as explicit matmuls and a softmax; faster "
        "on a CPU when the heads are small, as the toy UNet's 4-dim heads: benchmarks/bench_attention.py)",
        default="sdpa",
    )
    max_minutes: float | None = _help(
        "stop after this many minutes of training, with a checkpoint, and export (for time-limited jobs; the "
        "same command with more time resumes towards max_train_steps)",
        default=None,
    )
    checkpointing_steps: int = _help("save a resumable checkpoint every N steps", default=500)
    checkpoints_total_limit: int = _help("keep only the newest N checkpoints", default=2)
    validation_steps: int = _help("write a validation grid every N steps (0: only at the end)", default=500)
    num_validation_examples: int = _help("examples in the validation grid (the first of the data)", default=4)
    validation_inference_steps: int = _help("sampler steps of validation edits", default=20)
    validation_resolution: int = _help(
        "resolution of validation edits (0: the training resolution)", default=0
    )
    log_every: int = _help("log metrics every N steps", default=10)
    tensorboard: bool = _help("also log to TensorBoard (needs the tensorboard package)", default=False)
    cache_latents: bool = _help(
        "encode images and instructions once and train from the cache (no random "
        "resize/crop then; flips kept)",
        default=False,
    )
    latent_target: str = _help(
        "the edited image's latent the UNet learns: sample (a draw from the VAE posterior, as the paper and "
        "diffusers) or mean (the posterior mean; for a VAE whose posterior noise is not small, as the toy one's)",
        default="sample",
    )
    conv_in_init: str = _help(
        "how the input convolution's image channels start: zeros (the paper's: the model starts as the "
        "text-to-image one) or copy (Marigold's: the latent channels' weights, halved on both)",
        default="zeros",
    )
    seed: int = _help("seed of every random choice in the run", default=42)
    device: str = _help("cpu to force the CPU; otherwise accelerate's choice", default="auto")

    def validate(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.timestep_bias not in TIMESTEP_BIASES:
            raise ValueError(
                f"timestep_bias must be {', '.join(TIMESTEP_BIASES)}, got {self.timestep_bias!r}"
            )
        if self.timestep_bias_multiplier <= 0 or not 0 < self.timestep_bias_portion <= 1:
            raise ValueError(
                "timestep_bias_multiplier must be above 0 and timestep_bias_portion in (0, 1], got "
                f"{self.timestep_bias_multiplier} and {self.timestep_bias_portion}"
            )
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be {' or '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.latent_target not in ("sample", "mean"):
            raise ValueError(f"latent_target must be sample or mean, got {self.latent_target!r}")
        from ip2p.models import CONV_IN_INITS

        if self.conv_in_init not in CONV_IN_INITS:
            raise ValueError(f"conv_in_init must be {' or '.join(CONV_IN_INITS)}, got {self.conv_in_init!r}")
        if not self.data:
            raise ValueError("no training data: pass --data PATH")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError(f"max_minutes must be at least 0, got {self.max_minutes}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if not (self.min_resize <= self.max_resize and self.resolution <= self.min_resize):
            raise ValueError(
                f"need resolution <= min_resize <= max_resize, got {self.resolution}, "
                f"{self.min_resize}, {self.max_resize}"
            )
        for name in (
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "checkpointing_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # the defaults: 256 px, lr 1e-4 constant, EMA 0.9999, dropout 0.05
    # The toy world at 64 px: random resize 64-72 then crop 64, as the paper's 256-288 -> 256.
    # No flips: toy instructions name positions ("the star on the left"), which a flip would contradict.
    # Posterior samples as targets, as the paper (the bundled editor's recipe), although the toy VAE's posterior
    # noise is 0.68 of its scaled latents' spread and the toy base UNet learnt posterior means: --latent-target mean
    # lowers the training loss from 0.62 to 0.08 and sharpens the validation edits, but measured on 300 held-out
    # edits it did not raise success (8.3% after 1,500 steps; sampled: 8.0% after 1,200, 9.0% after 3,000).
    "toy": dict(
        resolution=64,
        min_resize=64,
        max_resize=72,
        flip_prob=0.0,
        train_batch_size=32,
        learning_rate=2e-4,
        max_train_steps=3000,
        checkpointing_steps=250,
        validation_steps=500,
        ema_decay=0.999,
        num_validation_examples=8,
        validation_inference_steps=20,
    ),
}


# -- pure pieces ------------------------------------------------------------------------------------------------
LR_SCHEDULES = ("constant", "linear", "cosine")
ATTENTIONS = ("sdpa", "classic")
TIMESTEP_BIASES = ("none", "later", "earlier")


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
        self.dataset = (
            dataset
            if dataset is not None
            else open_edit_dataset(
                config.data,
                Columns(config.original_image_column, config.edit_prompt_column, config.edited_image_column),
            )
        )
        if len(self.dataset) == 0:
            raise ValueError("the training data is empty")
        self.sample_weights = (
            read_sample_weights(config.sample_weights, len(self.dataset)) if config.sample_weights else None
        )

        components = load_pipeline_components_for_training(config.base_model, load_pipeline_components)
        if components.unet.config.in_channels == components.vae.config.latent_channels:
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
        self._frozen_originals = (
            None
            if self.weight_dtype == torch.float32
            else {
                name: {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
                for name, module in (("vae", components.vae), ("text_encoder", components.text_encoder))
            }
        )
        for frozen in (components.vae, components.text_encoder):
            frozen.requires_grad_(False).eval().to(device, self.weight_dtype)
        unet = components.unet.train()
        if config.attention == "classic":
            from diffusers.models.attention_processor import AttnProcessor

            unet.set_attn_processor(AttnProcessor())
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        # torch's fused AdamW (one kernel for every parameter) where the device has it; on CPU its default is a
        # Python loop over the parameters
        fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in unet.parameters())
        self.optimizer = torch.optim.AdamW(
            unet.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
            fused=fused or None,
        )
        self.lr_lambda = lambda step: lr_factor(
            step, config.lr_warmup_steps, config.max_train_steps, config.lr_schedule
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_lambda)
        self.ema = (
            EMAModel(
                unet.parameters(),
                decay=config.ema_decay,
                model_cls=type(unet),
                model_config=unet.config,
                foreach=True,  # one multi-tensor update, not a loop over the parameters
            )
            if config.use_ema
            else None
        )
        self.step = 0
        self._resume()  # before prepare(): plain modules and optimizer
        self.unet, self.optimizer = self.accelerator.prepare(unet, self.optimizer)
        if self.ema is not None:
            self.ema.to(device)
        self.null_text = self._encode_text([""])  # (1, T, D): the null text is the encoding of "", not zeros
        self.cache: dict[str, torch.Tensor] | None = None

    # -- encoders ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.components.tokenizer
        ids = tok(
            texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.components.text_encoder(ids.to(self.accelerator.device))[0].float()  # (B, T, D)

    @torch.no_grad()
    def _encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> posterior mean and std, (B, 4, h, w) each, unscaled."""
        dist = self.components.vae.encode(pixels.to(self.accelerator.device, self.weight_dtype)).latent_dist
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
        indices = [self._example_index(p) for p in positions]
        if self.cache is not None:
            # The same draws as the uncached path with min_resize = max_resize = resolution.
            flips = torch.tensor(
                [augment_params(r, (c.resolution,) * 2, c.resolution, c.flip_prob)[3] for r in rngs]
            )
            cached = {k: v[indices] for k, v in self.cache.items()}
            pick = lambda a, b: torch.where(flips[:, None, None, None], b, a)  # noqa: E731
            mean, std = pick(cached["mean"], cached["mean_flip"]), pick(cached["std"], cached["std_flip"])
            image = pick(cached["image"], cached["image_flip"])
            text = cached["text"]
        else:
            originals, editeds, prompts = [], [], []
            for idx, rng in zip(indices, rngs, strict=True):
                ex = self.dataset[idx]
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
            text = self._encode_text(prompts)
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
        text, image = apply_conditioning_dropout(
            text.to(device), image.to(device), self.null_text, uniform.to(device), c.conditioning_dropout_prob
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
            k: [] for k in ("mean", "std", "image", "mean_flip", "std_flip", "image_flip", "text")
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
            parts["text"].append(self._encode_text([ex.edit_prompt for ex in exs]).cpu())
        self.cache = {k: torch.cat(v) for k, v in parts.items()}
        if self.accelerator.is_main_process:
            _atomic_save_safetensors(self.cache, path)

    # -- loop ----------------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Train to ``max_train_steps`` (resuming where a previous run stopped) and export the model."""
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(asdict(c), indent=2))
        if c.cache_latents:
            self.build_cache()
        writer = self._tensorboard() if c.tensorboard and acc.is_main_process else None
        bar = tqdm(
            total=c.max_train_steps, initial=self.step, desc="training", disable=not acc.is_main_process
        )
        timer, seen = time.perf_counter(), 0
        deadline = None if c.max_minutes is None else timer + 60 * c.max_minutes
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
            if deadline is not None and self._past(deadline):
                if self.step % c.checkpointing_steps:
                    self.save_checkpoint()
                if acc.is_main_process:
                    bar.write(f"stopping at step {self.step}: max_minutes ({c.max_minutes}) reached")
                break
        bar.close()
        if not c.validation_steps or self.step % c.validation_steps:
            self.validate()
        return self.export()

    def _past(self, deadline: float) -> bool:
        """Whether the main process's clock has passed ``deadline`` (every process stops at the same step)."""
        over = time.perf_counter() > deadline
        if self.accelerator.num_processes == 1:
            return over  # no device tensor, so no synchronisation on every step
        from accelerate.utils import broadcast

        return bool(broadcast(torch.tensor([float(over)], device=self.accelerator.device)).item())

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
            self.ema.step(acc.unwrap_model(self.unet).parameters())
        self.step += 1
        return acc.reduce(torch.stack(losses).mean(), reduction="mean").item()

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        noisy = self.noise_scheduler.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
        target = diffusion_target(self.noise_scheduler, batch["latents"], batch["noise"], batch["timesteps"])
        x = torch.cat(
            [noisy, batch["image"]], dim=1
        )  # (B, 8, h, w): noisy target latent + input-image latent
        with self.accelerator.autocast():
            pred = self.unet(x, batch["timesteps"], encoder_hidden_states=batch["text"].to(x.dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        found = [
            p for p in (self.out / "checkpoints").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def save_checkpoint(self) -> Path | None:
        """Weights, optimizer, EMA, LR schedule and step, written to a temporary folder and renamed."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return None
        from safetensors.torch import save_file

        root = self.out / "checkpoints"
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"checkpoint-{self.step}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            unet = acc.unwrap_model(self.unet)
            save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp / "unet.safetensors")
            if self.ema is not None:
                names = [n for n, _ in unet.named_parameters()]
                save_file(
                    {n: p.contiguous() for n, p in zip(names, self.ema.shadow_params, strict=True)},
                    tmp / "ema.safetensors",
                )
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            state = {
                "step": self.step,
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "ema_optimization_step": self.ema.optimization_step if self.ema else None,
                "config": asdict(self.config),
                "sample_weights_sha256": self._sample_weights_sha256(),
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in self._checkpoints()[: -self.config.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _resume(self) -> None:
        checkpoints = self._checkpoints()
        if not checkpoints:
            return
        from safetensors.torch import load_file

        ckpt = checkpoints[-1]
        unet = self.components.unet
        unet.load_state_dict(load_file(ckpt / "unet.safetensors"))
        # Our own checkpoint, holding tensors and numbers only: weights_only refuses anything else.
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        state = json.loads((ckpt / "state.json").read_text())
        recorded, current = state.get("sample_weights_sha256"), self._sample_weights_sha256()
        if recorded != current:
            raise ValueError(
                f"{ckpt}: its run drew examples by other sample weights ({recorded or 'none'}, now "
                f"{current or 'none'}); resuming would not continue the same run (use another --output-dir)"
            )
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None and (ckpt / "ema.safetensors").is_file():
            shadows = load_file(ckpt / "ema.safetensors")
            self.ema.shadow_params = [shadows[n].clone() for n, _ in unet.named_parameters()]
            self.ema.optimization_step = state["ema_optimization_step"]
        self.step = state["step"]
        if self.accelerator.is_main_process:
            print(f"resumed from {ckpt} at step {self.step}")

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
            self.ema.copy_to(unet.parameters())
        return unet

    def export(self) -> Path:
        """The final model (EMA weights where used) in diffusers format, with the paper's sampler."""
        from diffusers import EulerAncestralDiscreteScheduler

        from ip2p.models import EditComponents, save_edit_model

        self.accelerator.wait_for_everyone()
        target = self.out / "model"
        if self.accelerator.is_main_process:
            c = self.components
            vae, text_encoder = c.vae.float(), c.text_encoder.float()
            if self._frozen_originals is not None:
                vae.load_state_dict(self._frozen_originals["vae"])
                text_encoder.load_state_dict(self._frozen_originals["text_encoder"])
            save_edit_model(
                EditComponents(
                    unet=self._final_unet(),
                    vae=vae,
                    text_encoder=text_encoder,
                    tokenizer=c.tokenizer,
                    scheduler=EulerAncestralDiscreteScheduler.from_config(c.scheduler.config),
                    name=str(target),
                ),
                target,
            )
        return target

    @torch.no_grad()
    def validate(self) -> Path | None:
        """Edit the first examples with the current (EMA) weights; grid rows: input, target, edit."""
        if not self.accelerator.is_main_process or self.config.num_validation_examples < 1:
            return None
        from ip2p.models import EditComponents
        from ip2p.pipeline import EditPipeline

        c, comps = self.config, self.components
        pipe = EditPipeline(
            EditComponents(
                self._final_unet(),
                comps.vae,
                comps.text_encoder,
                comps.tokenizer,
                comps.scheduler,
                name="validation",
            ),
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


def load_pipeline_components_for_training(source: str, loader) -> Any:
    """A text-to-image model, or an editing model to continue training from."""
    from ip2p.models import ModelLoadError

    try:
        return loader(source, edit=False)
    except ModelLoadError as exc:
        if "input channels" not in str(exc):
            raise
        return loader(source, edit=True)


def _atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def train(config: TrainConfig, dataset: Sequence[EditExample] | None = None) -> Path:
    """Train an editor per ``config``; returns the exported model folder. Example::

    train(TrainConfig(base_model="path/to/sd", data=["pairs/*.parquet"], output_dir="runs/editor"))
    """
    return Trainer(config, dataset).train()


def config_fields() -> list:
    """The dataclass fields of ``TrainConfig`` (the CLI builds one flag per field)."""
    return list(fields(TrainConfig))


def apply_preset(name: str, overrides: dict[str, Any]) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
