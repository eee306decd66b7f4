"""One sampling loop over diffusers schedulers, shared by editing and pair generation.

The loop knows nothing of conditions or guidance: it asks a ``model_fn(scaled_latents, t)`` for the (already
guided) noise prediction at each step. Editing wraps the UNet in a dual-guidance denoiser; pair generation wraps
it in a two-prompt one. Swapping the scheduler swaps the sampler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

# Names users type -> scheduler classes (with extra config where the name implies it).
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),  # the paper's sampler (k-diffusion's)
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": (DDIMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]
# post_step(latents, t_next) -> latents: called after every scheduler step with the timestep the latents are now at
# (None after the last step, when they are clean), e.g. to blend in the input's latents noised to that level.
PostStep = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A scheduler of kind ``name`` with the model's noise schedule (betas, prediction type) taken from ``base``."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, extra = SCHEDULERS[name]
    return cls.from_config(base.config, **extra)


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None, eta: float = 0.0) -> dict:
    """The optional arguments this scheduler's ``step`` accepts (as diffusers' pipelines pass them)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def denoise(
    model_fn: ModelFn,
    noise: torch.Tensor,
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    *,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
    post_step: PostStep | None = None,
) -> torch.Tensor:
    """Run the reverse process from unit Gaussian ``noise``.

    The noise is scaled by ``scheduler.init_noise_sigma`` *after* ``set_timesteps``: for several schedulers (Euler
    with "leading" spacing, for one) the initial sigma depends on the chosen timesteps, and diffusers' pipelines
    scale in this order too.

    Args:
        model_fn: ``(scaled_latents (B, C, h, w), t) -> noise prediction (B, C, h, w)``, guidance included.
        noise: (B, C, h, w) unit Gaussian noise: the initial latents before scaling.
        scheduler: a diffusers scheduler; ``set_timesteps`` is called here.
        num_inference_steps: number of sampler steps.
        generator: the source of the per-step noise of stochastic samplers.
        eta: DDIM's eta (ignored by other schedulers).
        callback: ``callback(step_index, num_steps, latents)`` after every step, e.g. for a progress bar.
        post_step: ``post_step(latents, t_next) -> latents`` after every step, before ``callback``: ``t_next`` is
            the timestep whose noise level the latents now carry (the next step's; ``None`` after the last step),
            so that ``scheduler.add_noise(x0, noise, t_next)`` is a sample at the same level, in the scheduler's
            own convention (``x0 + sigma * noise`` for Euler's, ``sqrt(a) x0 + sqrt(1 - a) noise`` for DDIM's).
    """
    if num_inference_steps < 1:
        raise ValueError(f"the number of steps must be at least 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    extra = step_kwargs(scheduler, generator, eta)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        scaled = scheduler.scale_model_input(latents, t)
        noise_pred = model_fn(scaled, t)
        latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
        if post_step is not None:
            latents = post_step(latents, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        if callback is not None:
            callback(i, len(timesteps), latents)
    return latents
