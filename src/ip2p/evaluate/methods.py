"""Methods of ``ip2p evaluate`` (paper section 4): the editor over guidance sweeps, the SDEdit baseline over
strengths, and reference points (no edit, the exact target, the target through the editor's autoencoder).

A method edits a batch of items at one setting; any callable can be one. torch and diffusers are imported where
a method is built, so the names and sweeps here are cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from ip2p.evaluate.items import EvalItem, EvaluationError

PAPER_TEXT_GUIDANCE = 7.5
PAPER_IMAGE_GUIDANCE = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)  # original compute_metrics.py
TEXT_SWEEP = (3.0, 5.0, 7.5, 10.0, 12.5)  # the text-guidance sweep, at image guidance 1.5
SDEDIT_STRENGTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # paper: SDEdit over strengths 0.3 to 0.9

# A method edits a batch: (input images, items, setting, seeds) -> edited images (same sizes as the inputs).
EditFn = Callable[[list[Image.Image], list[EvalItem], dict[str, float], list[int]], list[Image.Image]]


@dataclass
class Method:
    """A named way of editing, with the settings it is swept over (each a dict of floats)."""

    name: str
    settings: list[dict[str, float]]
    edit: EditFn
    describe: dict[str, Any] = field(default_factory=dict)  # recorded in run.json
    needs_targets: bool = False  # refused, before anything runs, on a test set without target images

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise EvaluationError(f"method names are letters, digits, - and _; got {self.name!r}")
        if not self.settings:
            raise EvaluationError(f"method {self.name!r} has no settings to evaluate")


def setting_key(setting: dict[str, float]) -> str:
    """A stable, readable name of a setting, e.g. ``image_guidance_scale=1.2,text_guidance_scale=7.5``."""
    return ",".join(f"{k}={setting[k]:g}" for k in sorted(setting))


def guidance_grid(
    sweep: str,
    text: Sequence[float] | None = None,
    image: Sequence[float] | None = None,
    rescale: Sequence[float] | None = None,
):
    """The editor's settings: ``paper`` (text 7.5, image 1.0-2.2 by 0.2), ``text`` (text 3-12.5 at image 1.5),
    or ``grid`` (every pair of the given text and image scales); each for every guidance rescale in ``rescale``
    (default: none, the paper's; a setting names its rescale only where it is not 0)."""
    if sweep == "paper":
        text, image = text or (PAPER_TEXT_GUIDANCE,), image or PAPER_IMAGE_GUIDANCE
    elif sweep == "text":
        text, image = text or TEXT_SWEEP, image or (1.5,)
    elif sweep == "grid":
        if not text or not image:
            raise EvaluationError("--sweep grid needs --text-guidance and --image-guidance lists")
    else:
        raise EvaluationError(f"unknown sweep {sweep!r}; expected paper, text or grid")
    for r in rescale or ():
        if not 0.0 <= r <= 1.0:
            raise EvaluationError(f"guidance rescale must lie in [0, 1], got {r}")
    settings = []
    for r in rescale or (0.0,):
        for t in text:
            for i in image:
                setting = {"text_guidance_scale": float(t), "image_guidance_scale": float(i)}
                if r:
                    setting["guidance_rescale"] = float(r)
                settings.append(setting)
    return settings


def editor_method(pipe, config, settings: list[dict[str, float]], name: str = "ip2p") -> Method:
    """The instruction editor (``EditPipeline``) under ``config``, swept over guidance ``settings``."""

    def edit(images, items, setting, seeds):
        return pipe.edit_batch(images, [it.instruction for it in items], seeds, config, **setting)

    return Method(name, settings, edit, {"model": pipe.components.name, **asdict(config)})


def auto_guidance_method(pipe, config, predictor, name: str = "ip2p-auto") -> Method:
    """The editor with ``--guidance auto``: each item at the scales ``predictor`` (an
    :class:`ip2p.auto_guidance.GuidancePredictor`) chooses for its instruction; one point, the cost of one edit."""

    def edit(images, items, setting, seeds):
        chosen = predictor.choose(pipe, [it.instruction for it in items])
        out: list[Image.Image | None] = [None] * len(items)
        for text, image in dict.fromkeys(chosen):  # one batch per chosen setting
            group = [i for i, scales in enumerate(chosen) if scales == (text, image)]
            edited = pipe.edit_batch(
                [images[i] for i in group],
                [items[i].instruction for i in group],
                [seeds[i] for i in group],
                config,
                text_guidance_scale=text,
                image_guidance_scale=image,
            )
            for i, im in zip(group, edited, strict=True):
                out[i] = im
        return out  # type: ignore[return-value]

    grid = [list(s) for s in predictor.settings]
    describe = {
        "model": pipe.components.name,
        **asdict(config),
        "auto_guidance": {"grid": grid, "k": predictor.neighbours},
    }
    return Method(name, [{}], edit, describe)


def sdedit_method(
    components,
    strengths: Sequence[float] = SDEDIT_STRENGTHS,
    guidance_scale: float = 7.5,
    steps: int = 50,
    scheduler: str | None = None,
    device=None,
    dtype=None,
    name: str = "sdedit",
) -> Method:
    """SDEdit (Meng et al. 2022): noise the input to ``strength`` and denoise it with the text-to-image model
    conditioned on the *output caption*, through diffusers' ``StableDiffusionImg2ImgPipeline``."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from ip2p.devices import pick_device, pick_dtype
    from ip2p.models import build_pipeline
    from ip2p.sampling import make_scheduler

    for strength in strengths:
        if not 0 < strength <= 1 or int(steps * strength) < 1:
            raise EvaluationError(
                f"SDEdit strength {strength} with {steps} steps runs no denoising step; strengths are in (0, 1] "
                "and steps * strength must be at least 1"
            )
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    pipe = build_pipeline(
        StableDiffusionImg2ImgPipeline,
        components,
        scheduler=make_scheduler(scheduler, components.scheduler) if scheduler else None,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def edit(images, items, setting, seeds):
        captions = [it.output_caption for it in items]
        if any(not c for c in captions):
            raise EvaluationError("SDEdit needs the output caption of every item; this test set lacks them")
        import torch

        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return pipe(
            prompt=captions,
            image=images,
            strength=float(setting["strength"]),
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=generators,
        ).images

    return Method(
        name,
        [{"strength": float(s)} for s in strengths],
        edit,
        {"model": components.name, "guidance_scale": guidance_scale, "steps": steps, "scheduler": scheduler},
    )


REFERENCES = {
    "input": "the input unchanged: no edit at all (in the CLIP plane direction 0, image similarity 1)",
    "target": "the test set's target image: every edit exactly right",
    "target-vae": "the target through the editor's autoencoder (encoded to its posterior mean, then decoded): the "
    "best that a latent-diffusion editor with that autoencoder can output",
}
"""Reference points that bound the planes: what no edit, the exact edit and the exact edit as far as a latent
editor can draw it score on the same items and metrics. Each is one point (one setting, named by no values)."""


def reference_method(name: str, vae=None) -> Method:
    """The reference ``name`` of ``REFERENCES`` as a method; ``target-vae`` needs the autoencoder ``vae`` (used on
    its own device and dtype, e.g. the editor's ``pipe.components.vae``)."""
    if name not in REFERENCES:
        raise EvaluationError(f"unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    if name == "input":
        return Method(
            name,
            [{}],
            lambda images, items, setting, seeds: [im.copy() for im in images],
            {"reference": REFERENCES[name]},
        )
    if name == "target":
        return Method(
            name,
            [{}],
            lambda images, items, setting, seeds: [it.target for it in items],
            {"reference": REFERENCES[name]},
            needs_targets=True,
        )
    if vae is None:
        raise EvaluationError("the target-vae reference needs the editor's autoencoder")
    import torch
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))

    @torch.no_grad()
    def edit(images, items, setting, seeds):
        targets = [
            it.target.convert("RGB").resize(im.size, Image.BICUBIC)
            for it, im in zip(items, images, strict=True)
        ]
        x = processor.preprocess(targets).to(vae.device, vae.dtype)
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
        return processor.postprocess(decoded.float(), output_type="pil")

    return Method(name, [{}], edit, {"reference": REFERENCES[name]}, needs_targets=True)
