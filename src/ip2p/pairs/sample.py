"""Paired sampling: two images, one per caption, that share their noise and (early on) their attention
(paper section 3.1.2; PAPER.md 3.2-3.4).

Each candidate is a seed. As the original ``generate_img_dataset.py``, the seed decides the guidance scale, the
Prompt-to-Prompt fraction p and the initial noise, which both images of the pair start from. The Euler-ancestral
sampler also adds fresh noise at every step; the original makes it "the same across all samples in batch"
(``randn_like(x[:1])``). We get the same through diffusers' own per-sample generators: after the candidate's
draws, its generator's state is cloned once per image, so image 0 and image 1 draw identical per-step noise
(``CandidateDraw.step_generators``). Both guidance branches of an image are one latent, so they share it too.

Several candidates (of one triplet, or in mode "self" of several) go through the UNet together: the batch is (branch, candidate, image), see
``ip2p.pairs.p2p``. The loop is ``ip2p.sampling.denoise``; the two-branch guidance lives in ``model_fn`` here.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ip2p.models import EditComponents
from ip2p.pairs.align import refinement_mapper, replacement_mapper
from ip2p.pairs.p2p import (
    AttentionRefine,
    AttentionReplace,
    PairAttentionState,
    PromptToPromptProcessor,
    Recorder,
    SelfAttentionCopyProcessor,
    attention_processors,
)
from ip2p.sampling import StepCallback, denoise, make_scheduler
from ip2p.text_encoding import encode_prompts

MODES = ("self", "replace", "refine")  # the paper's variant; Prompt-to-Prompt's word swap and refinement


def candidate_seed(seed: int, item: int, candidate: int) -> int:
    """A 63-bit seed for candidate ``candidate`` of item ``item`` (its line in the input) of a run seeded ``seed``.

    Independent of how the work is split, so sharded, resumed and multi-process runs draw the same candidates.
    """
    digest = hashlib.blake2b(f"ip2p-pairs:{seed}:{item}:{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def classifier_free_guidance(
    eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Two-branch guidance of the generation step (PAPER.md 3.3): ``uncond + (cond - uncond) * scale``.

    ``scale`` broadcasts over the batch, e.g. (2K, 1, 1, 1): one scale per candidate, the same for both images.
    """
    return eps_uncond + (eps_cond - eps_uncond) * scale


@dataclass
class CandidateDraw:
    """Everything random about one candidate pair, drawn from its seed.

    Attributes:
        seed: the candidate's seed.
        p: Prompt-to-Prompt fraction, U(p_range).
        guidance_scale: classifier-free guidance scale, U(guidance_range).
        noise: (1, C, h, w) standard normal initial noise, shared by both images.
        step_generators: two CPU generators in one state: image 0's and image 1's per-step noise, which are
            therefore identical.
    """

    seed: int
    p: float
    guidance_scale: float
    noise: torch.Tensor
    step_generators: tuple[torch.Generator, torch.Generator]


def draw_candidate(
    seed: int,
    latent_shape: Sequence[int],
    p_range: tuple[float, float] = (0.1, 0.9),
    guidance_range: tuple[float, float] = (7.5, 15.0),
) -> CandidateDraw:
    """The candidate's draws, in the original's order for p and the scale.

    The original calls ``torch.manual_seed(seed)``, draws the noise on the GPU and then p and the scale from the
    CPU generator's first two numbers; we draw p and the scale first from a CPU generator seeded ``seed`` (the
    same two numbers), then the noise (on the CPU, so that it does not depend on the device).

    Example:
        >>> d = draw_candidate(7, (4, 8, 8), p_range=(1.0, 1.0))
        >>> d.p, d.noise.shape
        (1.0, torch.Size([1, 4, 8, 8]))
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    p = p_range[0] + float(torch.rand((), generator=generator)) * (p_range[1] - p_range[0])
    scale = guidance_range[0] + float(torch.rand((), generator=generator)) * (
        guidance_range[1] - guidance_range[0]
    )
    noise = torch.randn((1, *latent_shape), generator=generator)  # (1, C, h, w)
    state = generator.get_state()
    step_generators = (torch.Generator("cpu"), torch.Generator("cpu"))
    for g in step_generators:
        g.set_state(state)
    return CandidateDraw(seed, p, scale, noise, step_generators)


@dataclass
class PairBatch:
    """K candidate pairs: images in [0, 1] on the CPU, and what made them."""

    images_0: torch.Tensor  # (K, 3, H, W) for the input caption
    images_1: torch.Tensor  # (K, 3, H, W) for the edited caption
    seeds: list[int]
    p: list[float]
    guidance_scales: list[float]
    unet_calls: int  # UNet forward calls (each on 4K rows)


class PairSampler:
    """Generates candidate pairs for (caption, edited caption) with any SD-family text-to-image model.

    Example:
        >>> sampler = PairSampler(load_pipeline_components("toy", edit=False), device="cpu")
        >>> draws = [draw_candidate(s, sampler.latent_shape(64)) for s in (1, 2)]
        >>> batch = sampler("a red circle", "a blue circle", draws, steps=20, resolution=64)
    """

    def __init__(
        self,
        components: EditComponents,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        scheduler: str = "euler_ancestral",
        timestep_spacing: str = "linspace",
    ):
        self.components = components
        self.device, self.dtype = torch.device(device), dtype
        for module in (components.unet, components.vae, components.text_encoder):
            if module.device != self.device or module.dtype != self.dtype:
                module.to(self.device, self.dtype)
            module.eval().requires_grad_(False)
        base = make_scheduler(scheduler, components.scheduler)
        # The original samples at t = linspace(999, 0, N) (k-diffusion's CompVisDenoiser.get_sigmas).
        self.scheduler = type(base).from_config(base.config, timestep_spacing=timestep_spacing)
        self._null: torch.Tensor | None = None

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents of a ``resolution`` x ``resolution`` image."""
        multiple = self.components.size_multiple
        if resolution < multiple or resolution % multiple:
            raise ValueError(
                f"resolution {resolution} must be a positive multiple of {multiple} for this model"
            )
        side = resolution // self.components.vae_scale_factor
        return (self.components.unet.config.in_channels, side, side)

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B,) texts -> (B, T, D) text-encoder hidden states (truncated to the tokenizer's length, as the original)."""
        c = self.components
        return encode_prompts(c.tokenizer, c.text_encoder, texts, self.device, self.dtype)

    def _processor_factory(
        self,
        mode: str,
        caption_0: str,
        caption_1: str,
        state: PairAttentionState,
        recorder: Recorder | None,
        max_self_tokens: int,
    ):
        if mode == "self":
            return lambda name, old: SelfAttentionCopyProcessor(state, old, name, recorder)
        length = self.components.tokenizer.model_max_length
        if mode == "replace":
            edit = AttentionReplace(
                replacement_mapper(caption_0, caption_1, self.components.tokenizer, length)
            )
        elif mode == "refine":
            edit = AttentionRefine(
                *refinement_mapper(caption_0, caption_1, self.components.tokenizer, length)
            )
        else:
            raise ValueError(f"unknown attention control {mode!r}; choose one of {', '.join(MODES)}")
        return lambda name, old: PromptToPromptProcessor(state, edit, old, name, recorder, max_self_tokens)

    @torch.inference_mode()
    def __call__(
        self,
        caption_0: str | Sequence[str],
        caption_1: str | Sequence[str],
        draws: Sequence[CandidateDraw],
        *,
        steps: int = 100,
        resolution: int = 512,
        mode: str = "self",
        cross_replace_steps: float = 0.8,
        max_self_tokens: int = 256,
        recorder: Recorder | None = None,
        callback: StepCallback | None = None,
    ) -> PairBatch:
        """Generate one pair per draw, all in one batch.

        Args:
            caption_0, caption_1: the input caption and the edited caption, or one of each per draw: in mode
                "self" the candidates of several triplets can share the batch (the attention copy is per pair).
            draws: the candidates (``draw_candidate``); their noise must have ``latent_shape(resolution)``.
            steps: sampler steps (paper: 100).
            resolution: image side in pixels (paper: 512).
            mode: "self" (the paper's self-attention copy), "replace" or "refine" (Prompt-to-Prompt).
            cross_replace_steps: Prompt-to-Prompt modes: fraction of the steps with the cross-attention edit.
            max_self_tokens: Prompt-to-Prompt modes: largest self-attention layer (in queries) injected.
            recorder: collects every controlled layer's attention probabilities (slow; for inspection).
            callback: ``callback(step, num_steps, latents)`` after every step.
        """
        if not draws:
            raise ValueError("no candidates to sample")
        shape = self.latent_shape(resolution)
        if tuple(draws[0].noise.shape[1:]) != shape:
            raise ValueError(
                f"the draws' noise has shape {tuple(draws[0].noise.shape[1:])}, "
                f"resolution {resolution} needs {shape}"
            )
        k = len(draws)
        captions_0 = [caption_0] * k if isinstance(caption_0, str) else list(caption_0)
        captions_1 = [caption_1] * k if isinstance(caption_1, str) else list(caption_1)
        if len(captions_0) != k or len(captions_1) != k:
            raise ValueError(
                f"{k} draws need {k} captions of each kind, got {len(captions_0)} and {len(captions_1)}"
            )
        if mode != "self" and (len(set(captions_0)) > 1 or len(set(captions_1)) > 1):
            raise ValueError(f"mode {mode!r} edits one caption pair's attention: batch one triplet at a time")
        scheduler = copy.deepcopy(self.scheduler)  # set_timesteps mutates it
        state = PairAttentionState(
            torch.tensor([d.p for d in draws]), num_steps=steps, cross_replace_steps=cross_replace_steps
        )
        # (2K,) texts in (candidate, image) order
        pairs = [c for pair in zip(captions_0, captions_1, strict=True) for c in pair]
        position = {c: i for i, c in enumerate(dict.fromkeys(pairs))}  # each distinct text encoded once
        texts = self.encode_text(list(position))[[position[c] for c in pairs]]  # (2K, T, D)
        null = self.encode_text([""])  # (1, T, D)
        embeds = torch.cat([null.expand(2 * k, -1, -1), texts])  # (4K, T, D): uncond, cond
        scale = torch.tensor([d.guidance_scale for d in draws], device=self.device, dtype=self.dtype)
        scale = scale.repeat_interleave(2).view(2 * k, 1, 1, 1)  # (2K, 1, 1, 1): both images, one scale
        noise = torch.cat([d.noise for d in draws]).repeat_interleave(
            2, dim=0
        )  # (2K, C, h, w): shared per pair
        noise = noise.to(self.device, self.dtype)  # `denoise` scales it by the scheduler's initial sigma
        generators = [g for d in draws for g in d.step_generators]  # (2K,): pairs share their per-step noise
        calls = 0

        def model_fn(scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            state.step = calls  # one UNet evaluation per step for Euler ancestral, the paper's sampler
            state.num_steps = len(scheduler.timesteps)
            calls += 1
            x = torch.cat([scaled, scaled])  # (4K, C, h, w): the unconditional half, the conditional half
            eps = self.components.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
            eps_uncond, eps_cond = eps.chunk(2)  # 2 x (2K, C, h, w)
            return classifier_free_guidance(eps_uncond, eps_cond, scale)

        make = self._processor_factory(mode, captions_0[0], captions_1[0], state, recorder, max_self_tokens)
        with attention_processors(self.components.unet, make):
            latents = denoise(model_fn, noise, scheduler, steps, generator=generators, callback=callback)
        images = self.decode(latents)  # (2K, 3, H, W)
        return PairBatch(
            images_0=images[0::2],
            images_1=images[1::2],
            seeds=[d.seed for d in draws],
            p=[d.p for d in draws],
            guidance_scales=[d.guidance_scale for d in draws],
            unet_calls=calls,
        )

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) float images in [0, 1] on the CPU (original: clamp((x + 1) / 2))."""
        vae = self.components.vae
        pixels = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        return ((pixels.float() + 1) / 2).clamp(0, 1).cpu()
