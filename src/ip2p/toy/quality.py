"""Quality bars of the toy base model, measured on held-out scenes (never trained on).

1. VAE: reconstruction PSNR on 500 held-out renders (bar: >= 30 dB).
2. CLIP: retrieval top-1, where each image's 10 candidates are its true caption and 9 captions of scenes that
   differ from it in one attribute (bar: >= 90%). Canonical phrasing is the bar; "varied" repeats it with a random
   phrasing shared by the 10 candidates.
3. Text-to-image: 100 one-shape and 100 two-shape held-out captions, 50 sampling steps with classifier-free
   guidance; the oracle (:mod:`ip2p.toy.oracle`) judges every attribute (bars: >= 80% one-shape, >= 50% two-shape
   entirely right). A PNG grid shows samples with their captions (green frame: all right).

Not a bar, measured with ``--only t2i_brief``: the same scenes' *brief* captions (no sizes, no positions), where
a sample is right when the oracle reads exactly the captioned shapes (colour and kind), background and style,
whatever their layout.

Usage::

    ip2p toy quality --model runs/toy            # a train-base output folder (base/ and clip/)
    ip2p toy quality --model toy                 # the bundled weights
    ip2p toy quality --model runs/toy --checkpoint latest --only t2i   # a UNet stage checkpoint

    measure_quality(QualityConfig(model="runs/toy", only="t2i", limit=20))   # the same from Python

This module imports no torch until it measures; :class:`QualityConfig` lives in :mod:`.quality_config` (no numpy,
no PIL), which ``ip2p toy quality --help`` reads.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ip2p.fileio import write_json_atomic

from .data import heldout_scenes, one_attribute_variants, to_tensor, to_uint8
from .quality_config import (  # noqa: F401 (the settings live in a light module; re-exported here)
    DEFAULT_GUIDANCE,
    DEFAULT_GUIDANCE_RESCALE,
    MEASUREMENTS,
    QualityConfig,
    unknown_measurements,
)

if TYPE_CHECKING:
    import torch

BARS = {"vae_psnr_db": 30.0, "clip_top1": 0.90, "t2i_one_shape": 0.80, "t2i_two_shape": 0.50}


def resolve_model(model: str) -> tuple[Path, Path]:
    """(base pipeline folder, CLIP folder) from a train-base output folder, a pipeline folder, or "toy"."""
    if model == "toy":
        from ip2p.toy.plugin import toy_model_path

        return toy_model_path("base"), toy_model_path("clip")
    path = Path(model)
    if (path / "model_index.json").is_file():
        return path, path.parent / "clip"
    return path / "base", path / "clip"


# ---------------------------------------------------------------------------
# The three measurements
# ---------------------------------------------------------------------------


def vae_psnr(vae, images: np.ndarray, batch: int = 100) -> dict[str, float]:
    """PSNR (dB) of reconstructions through the posterior mean: mean over images, and over all pixels."""
    import torch

    per_image = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_tensor(images[i : i + batch]).to(vae.device)
            rec = to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample).astype(np.float64)
            mse = ((rec - images[i : i + batch].astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
            per_image.append(mse)
    mse = np.concatenate(per_image)
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))
    return {
        "vae_psnr_db": float(psnr.mean()),
        "vae_psnr_db_pooled": float(10 * np.log10(255.0**2 / max(mse.mean(), 1e-10))),
        "vae_psnr_db_worst": float(psnr.min()),
    }


def retrieval_candidates(scenes, rng: random.Random, n_distractors: int = 9, varied: bool = False):
    """Per scene: 10 captions, the true one first, then 9 of one-attribute variants (same phrasing plan)."""
    from .captions import CANONICAL_PLAN, caption_with_plan, random_plan

    out = []
    for s in scenes:
        variants = rng.sample(one_attribute_variants(s), n_distractors)
        plan = random_plan(rng) if varied else CANONICAL_PLAN
        out.append([caption_with_plan(x, plan) for x in [s, *variants]])
    return out


def clip_retrieval(clip, tokenizer, scenes, seed: int = 0, varied: bool = False) -> dict[str, float]:
    """Top-1 accuracy of choosing an image's true caption among it and 9 one-attribute distractors."""
    import torch

    from .base.clip import image_embeddings, text_embeddings
    from .render import render_batch

    rng = random.Random(seed)
    candidates = retrieval_candidates(scenes, rng, varied=varied)
    device = next(clip.parameters()).device
    correct = []
    with torch.no_grad():
        for i in range(0, len(scenes), 50):
            chunk = scenes[i : i + 50]
            img = image_embeddings(clip, to_tensor(render_batch(chunk)).to(device))
            for j, cands in enumerate(candidates[i : i + 50]):
                txt = text_embeddings(clip, tokenizer, cands, device)
                correct.append(int((txt @ img[j]).argmax()) == 0)
    correct = np.array(correct)
    counts = np.array([len(s.shapes) for s in scenes])
    key = "clip_top1_varied" if varied else "clip_top1"
    out = {key: float(correct.mean())}
    for k in (1, 2, 3):
        if (counts == k).any():
            out[f"{key}_{k}shape"] = float(correct[counts == k].mean())
    return out


def generate(
    pipe,
    prompts: list[str],
    guidance: float,
    steps: int = 50,
    seed: int = 0,
    batch: int = 50,
    guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE,
) -> np.ndarray:
    """uint8 (N, 64, 64, 3) samples, one seeded generator per prompt (independent of the batch size)."""
    import torch

    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        res = pipe(
            chunk,
            height=64,
            width=64,
            num_inference_steps=steps,
            guidance_scale=guidance,
            guidance_rescale=guidance_rescale,
            generator=gens,
            output_type="np",
        ).images
        out.append((np.clip(res, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def judge_samples(images: np.ndarray, scenes) -> tuple[list[bool], dict[str, float]]:
    """All-correct flags per sample, and the rate of each attribute (shape attributes pooled over shapes)."""
    from .oracle import judge

    flags, per_attr = [], {}
    for img, scene in zip(images, scenes, strict=True):
        verdict = judge(img, scene)
        flags.append(all(verdict.values()))
        for k, v in verdict.items():
            per_attr.setdefault(k.split(".")[-1], []).append(v)
    return flags, {k: float(np.mean(v)) for k, v in per_attr.items()}


def judge_brief_samples(images: list[np.ndarray], scenes: list) -> list[bool]:
    """Per image: the oracle reads exactly the shapes (colour and kind), background and style of its scene."""
    from .captions import Brief
    from .oracle import read_scene

    return [Brief.of(read_scene(img)) == Brief.of(scene) for img, scene in zip(images, scenes, strict=True)]


def text_to_image(
    pipe,
    sets: dict[str, list],
    guidance: float,
    steps: int = 50,
    seed: int = 0,
    limit: int | None = None,
    guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE,
    brief: bool = False,
):
    """Oracle-judged text-to-image accuracy on the one- and two-shape held-out captions (``brief``: on their brief
    captions, judged by :func:`judge_brief_samples`; keys ``t2i_brief_*``)."""
    from .captions import caption

    result: dict[str, float] = {}
    samples = {}
    for name, key in (("one", "t2i_one_shape"), ("two", "t2i_two_shape")):
        scenes = sets[name][:limit] if limit else sets[name]
        prompts = [caption(s, brief=brief) for s in scenes]
        images = generate(pipe, prompts, guidance, steps, seed, guidance_rescale=guidance_rescale)
        if brief:
            flags = judge_brief_samples(images, scenes)
            result[key.replace("t2i", "t2i_brief")] = float(np.mean(flags))
            samples[name] = (images, prompts, flags)
            continue
        flags, attrs = judge_samples(images, scenes)
        result[key] = float(np.mean(flags))
        result.update({f"{key}.{k}": v for k, v in attrs.items()})
        samples[name] = (images, prompts, flags)
    return result, samples


def sample_grid(samples: dict, path: Path, per_set: int = 16, columns: int = 8, scale: int = 2) -> Path:
    """A PNG of samples with their captions; green frame: the oracle finds every attribute right, red: not."""
    from PIL import Image, ImageDraw, ImageFont

    items = []
    for name in ("one", "two"):
        images, prompts, flags = samples[name]
        items += list(zip(images[:per_set], prompts[:per_set], flags[:per_set], strict=True))
    tile, text_h, pad = 64 * scale, 62, 4
    rows = -(-len(items) // columns)
    sheet = Image.new("RGB", (columns * (tile + 2 * pad), rows * (tile + text_h + 2 * pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (img, prompt, ok) in enumerate(items):
        x, y = (i % columns) * (tile + 2 * pad), (i // columns) * (tile + text_h + 2 * pad)
        draw.rectangle(
            [x, y, x + tile + 2 * pad - 1, y + tile + 2 * pad - 1],
            fill=(40, 170, 60) if ok else (210, 40, 40),
        )
        sheet.paste(Image.fromarray(img).resize((tile, tile), Image.NEAREST), (x + pad, y + pad))
        words, lines, line = prompt.split(), [], ""
        for w in words:
            if len(line) + len(w) + 1 > 24:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}".strip()
        lines.append(line)
        for k, text in enumerate(lines[:6]):
            draw.text((x + pad, y + tile + 2 * pad + k * 10), text, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def load_pipeline(base: Path, device: torch.device):
    from diffusers import StableDiffusionPipeline

    from ip2p.models import pipeline_kwargs

    kwargs = pipeline_kwargs(StableDiffusionPipeline)
    pipe = StableDiffusionPipeline.from_pretrained(base, **kwargs).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(
    model: str,
    out: Path | None = None,
    device: str = "auto",
    only: tuple[str, ...] = ("vae", "clip", "t2i"),  # and "t2i_brief"
    guidance: tuple[float, ...] = (DEFAULT_GUIDANCE,),
    guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE,
    steps: int = 50,
    limit: int | None = None,
    checkpoint: str | None = None,
    seed: int = 0,
) -> dict:
    """Measure the bars; write ``quality.json`` and ``samples.png`` under ``out``; return the results.

    ``checkpoint`` ("latest" or a step) evaluates a UNet-stage checkpoint's EMA weights of the train-base output
    folder ``model`` instead of its final model. Several ``guidance`` scales: the text-to-image rows are measured
    for each and the best (by the mean of the two rates) is reported.
    """
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from ip2p.devices import pick_device

    problem = unknown_measurements(only)
    if problem:
        raise ValueError(problem)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(2)
    base, clip_dir = resolve_model(model)
    tmp = None
    if checkpoint is not None:
        from .base.export import export_checkpoint

        tmp = tempfile.TemporaryDirectory(prefix="toy-ckpt-")
        step = None if checkpoint == "latest" else int(checkpoint)
        base = export_checkpoint(Path(model), Path(tmp.name) / "base", step=step)
    sets = heldout_scenes()
    result: dict = {"model": str(model), "checkpoint": checkpoint}
    t0 = time.time()
    if "vae" in only:
        from diffusers import AutoencoderKL

        from .render import render_batch

        vae_dir = base / "vae"
        if not (vae_dir / "config.json").is_file():  # a train-base run whose UNet stage has not finished
            from .base.common import current_vae_path

            vae_dir = current_vae_path(Path(model))
        vae = AutoencoderKL.from_pretrained(vae_dir).to(dev).eval()
        result.update(vae_psnr(vae, render_batch(sets["mixed"])))
    if "clip" in only:
        clip = CLIPModel.from_pretrained(clip_dir).to(dev).eval()
        tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
        result.update(clip_retrieval(clip, tokenizer, sets["mixed"]))
        result.update(clip_retrieval(clip, tokenizer, sets["mixed"], varied=True))
    best_samples = None
    pipe = load_pipeline(base, dev) if {"t2i", "t2i_brief"} & set(only) else None
    if "t2i" in only:
        sweep = {}
        best = None
        for g in guidance:
            r, samples = text_to_image(pipe, sets, g, steps, seed, limit, guidance_rescale)
            sweep[str(g)] = {k: v for k, v in r.items() if "." not in k}
            score = (r["t2i_one_shape"] + r["t2i_two_shape"]) / 2
            if best is None or score > best[0]:
                best = (score, g, r, samples)
        _, g, r, best_samples = best
        result.update(r)
        result["guidance_scale"] = g
        result["guidance_rescale"] = guidance_rescale
        result["sampling_steps"] = steps
        if len(guidance) > 1:
            result["guidance_sweep"] = sweep
    if "t2i_brief" in only:
        g = result.get("guidance_scale", guidance[0])
        r, brief_samples = text_to_image(pipe, sets, g, steps, seed, limit, guidance_rescale, brief=True)
        result.update(r)
        result.update(guidance_scale=g, guidance_rescale=guidance_rescale, sampling_steps=steps)
        if best_samples is None:
            best_samples = brief_samples
    result["passed"] = {k: result[k] >= bar for k, bar in BARS.items() if k in result}
    result["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "quality.json", result, indent=1)
        if best_samples is not None:
            result["grid"] = str(sample_grid(best_samples, out / "samples.png"))
    if tmp is not None:
        tmp.cleanup()
    return result


# ---------------------------------------------------------------------------
# The library entry and its settings
# ---------------------------------------------------------------------------


def measure_quality(config: QualityConfig) -> dict:
    """Measure the quality bars of ``config.model``; write ``quality.json`` and ``samples.png`` under
    ``config.out_dir()``; return the results (see :func:`measure`). Example::

        measure_quality(QualityConfig(model="toy", only="vae,clip"))["passed"]
    """
    config.check()
    return measure(
        config.model,
        config.out_dir(),
        config.device,
        config.measurements(),
        config.guidance_scales(),
        config.guidance_rescale,
        config.steps,
        config.limit,
        config.checkpoint,
        config.seed,
    )
