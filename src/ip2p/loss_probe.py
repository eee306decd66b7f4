"""Denoising loss by noise level: does an editor read its input image?

On pairs of a dataset, with the same noise for every model, the loss each model makes at fixed timesteps:

- an editor, conditioned on the input image and the instruction (as it is trained and used);
- a text-to-image model, conditioned on the output caption: a model told the edited image in words.

At high noise levels the noisy latent says almost nothing, and what a model predicts comes from its conditions. An
editor that copies what the instruction leaves alone should then do at least as well as the text-to-image model
(where captions are complete, as in the toy world) or much better (where they are not). An editor far worse than it
at high noise draws the image anew instead of copying it, which the oracle then sees as attributes not preserved.

    ip2p loss-probe --data PAIRS --base T2I_MODEL --editor EDITOR [--editor EDITOR2 ...]

Targets are posterior means (deterministic); the loss is the training loss (epsilon or v prediction).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ip2p.datasets import EditExample
from ip2p.imaging import pil_to_tensor
from ip2p.loss_probe_config import DEFAULT_TIMESTEPS, LossProbeConfig
from ip2p.models import EditComponents
from ip2p.train import diffusion_target


class ProbeError(ValueError):
    """A bad input to the probe, with a one-line reason."""


def _square(image: Image.Image, resolution: int) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (resolution, resolution) else image.resize((resolution,) * 2, Image.BICUBIC)


def _encoders(components: EditComponents):
    """The editing pipeline's own text and image encoders, in fp32 on the CPU (where the probe's tensors live)."""
    from ip2p.pipeline import EditPipeline

    return EditPipeline(components, device="cpu", dtype="fp32")


def encode_images(pipe, images: Sequence[Image.Image], resolution: int, batch_size: int = 16) -> torch.Tensor:
    """Posterior means (the mode), unscaled, (N, C, h, w), encoded ``batch_size`` images at a time."""
    return torch.cat(
        [
            pipe.encode_image(pil_to_tensor([_square(im, resolution) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
    ).float()


@torch.no_grad()
def loss_by_timestep(
    unet,
    scheduler,
    latents: torch.Tensor,
    text: torch.Tensor,
    image: torch.Tensor | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[int, float]:
    """Mean squared error of ``unet``'s prediction at each timestep, on scaled ``latents`` with text states
    ``text`` and, for an editor, the unscaled image latents ``image`` concatenated to its input."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    out: dict[int, float] = {}
    for step in timesteps:
        if not 0 <= step < scheduler.config.num_train_timesteps:
            raise ProbeError(f"timestep {step} is outside 0..{scheduler.config.num_train_timesteps - 1}")
        t = torch.full((len(latents),), int(step), dtype=torch.long)
        noisy = scheduler.add_noise(latents, noise, t)
        target = diffusion_target(scheduler, latents, noise, t)
        total = 0.0
        for i in range(0, len(latents), batch_size):
            x = noisy[i : i + batch_size]
            if image is not None:
                x = torch.cat([x, image[i : i + batch_size]], dim=1)
            pred = unet(x, t[i : i + batch_size], encoder_hidden_states=text[i : i + batch_size]).sample
            total += float(((pred.float() - target[i : i + batch_size]) ** 2).sum())
        out[int(step)] = total / target.numel()
    return out


def probe(
    examples: Sequence[EditExample],
    editors: dict[str, EditComponents],
    base: EditComponents | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    resolution: int = 64,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """Loss by timestep of each editor (image + instruction) and of ``base`` (output caption), on the same
    targets and noise. Targets are encoded by the first model's VAE (all must share one, as editors trained from a
    base do)."""
    if not examples:
        raise ProbeError("no examples to probe")
    if any(ex.edited_image is None for ex in examples):
        raise ProbeError("every example needs an edited image (the target)")
    models = list(editors.values()) + ([base] if base is not None else [])
    if not models:
        raise ProbeError("nothing to probe: give an editor or a base model")
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(models[0].scheduler.config)  # the training noise schedule
    sf = models[0].vae.config.scaling_factor
    latents = encode_images(_encoders(models[0]), [ex.edited_image for ex in examples], resolution) * sf
    results: dict[str, dict[int, float]] = {}
    if base is not None:
        captions = [ex.edited_prompt for ex in examples]
        if any(not c for c in captions):
            raise ProbeError("the base model needs output captions (edited_prompt) for every example")
        text = _encoders(base).encode_text(captions).float()
        results["base + output caption"] = loss_by_timestep(
            base.unet, scheduler, latents, text, None, timesteps, seed
        )
    for name, comp in editors.items():
        if comp.unet.config.in_channels != 2 * comp.vae.config.latent_channels:
            raise ProbeError(
                f"{name} is not an editing model (its UNet takes {comp.unet.config.in_channels} channels)"
            )
        pipe = _encoders(comp)
        image = encode_images(pipe, [ex.original_image for ex in examples], resolution)
        text = pipe.encode_text([ex.edit_prompt for ex in examples]).float()
        results[name] = loss_by_timestep(comp.unet, scheduler, latents, text, image, timesteps, seed)
    return results


def format_table(results: dict[str, dict[int, float]]) -> str:
    steps = sorted({t for r in results.values() for t in r})
    width = max(len(n) for n in results) + 2
    lines = ["model".ljust(width) + "".join(f"t={t:<8}" for t in steps)]
    for name, row in results.items():
        lines.append(name.ljust(width) + "".join(f"{row[t]:<10.4f}" for t in steps))
    return "\n".join(lines)


def loss_probe(config: LossProbeConfig) -> dict:
    """``ip2p loss-probe``: the loss table of ``config``'s models on its pairs, ``{"examples": n, "results": ...}``;
    also written to ``config.json`` where given. Raises ``ValueError`` (``ProbeError``, ``ModelLoadError``) on bad
    input."""
    from ip2p.datasets import open_edit_dataset
    from ip2p.models import load_pipeline_components

    config.validate()
    try:
        dataset = open_edit_dataset(config.data)
    except FileNotFoundError as exc:
        raise ProbeError(str(exc)) from exc
    examples = [dataset[i] for i in range(min(config.n, len(dataset)))]
    editors = {path: load_pipeline_components(path, edit=True) for path in config.editors}
    base = load_pipeline_components(config.base, edit=False) if config.base else None
    results = probe(examples, editors, base, config.timesteps, config.resolution, config.seed)
    if config.json:
        from ip2p.fileio import write_json_atomic

        write_json_atomic(config.json, results)
    return {"examples": len(examples), "results": results}
