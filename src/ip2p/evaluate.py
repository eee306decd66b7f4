"""Evaluation (paper section 4): CLIP direction vs image similarity over guidance sweeps, against SDEdit.

For every method (the editor; the SDEdit baseline; any callable) and every setting of its sweep, each test item is
edited from the item's own seed (the same seed for every method and setting) and measured:

- ``clip_image``: CLIP image similarity of the input and the edited image (how much of the input is kept);
- ``clip_direction``: CLIP directional similarity, cos(E_I(edited) - E_I(input), E_T(output) - E_T(input)) (does
  the image change as the caption does; needs input and output captions);
- ``clip_text``: CLIP similarity of the edited image to the output caption;
- with a target image: ``l1``, ``l2`` (mean squared error), ``psnr`` (dB) in [0, 1] pixels, and ``clip_target``;
- in the toy world: the oracle's ``oracle_edit`` (the edited attributes read as the instruction says),
  ``oracle_preserved`` (every other attribute kept) and ``oracle_success`` (both), per edit type in the summary
  (with the CLIP axes: ``TYPE_METRICS``).

Reference points (``REFERENCES``: the input unchanged, the exact target, the target through the editor's
autoencoder) are measured as methods of one point each, so every plane shows what no edit and a perfect edit score.

Images enter CLIP in [0, 1], resized (bicubic, no crop) to its input size and normalised with the model's mean and
std (``ClipScorer``). The original ``metrics/compute_metrics.py`` fed images in [-1, 1] to a CLIP expecting [0, 1],
so its absolute numbers are not comparable to ours; rankings of methods are.

Layout of ``output``::

    run.json            settings, models, CLIP model and preprocessing, seeds; a resumed run must match them
    records.jsonl       one line per (method, setting, item); append-only, so a rerun continues where it stopped
                        (records.rank{r}.jsonl per process under accelerate)
    summary.jsonl/.csv  one line per (method, setting): means, and the oracle's rates per edit type
    plot.png            directional (x) vs image similarity (y), one curve per method, as the paper's figures
    examples.png        the first items edited by every method at every setting
    images/             the edited images of those items
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ip2p.imaging import load_image, make_grid, prepare_image, save_figure, save_png
from ip2p.text.writer import JsonlLog

PAPER_TEXT_GUIDANCE = 7.5
PAPER_IMAGE_GUIDANCE = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)  # original compute_metrics.py
TEXT_SWEEP = (3.0, 5.0, 7.5, 10.0, 12.5)  # the text-guidance sweep, at image guidance 1.5
SDEDIT_STRENGTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # paper: SDEdit over strengths 0.3 to 0.9
TOY_TEST_SEED = 31_337
TOY_TEST_SIZE = 300  # toy:N takes the first N held-out scenes; toy-val:N the scenes after the first 300
TOY_VAL_SEED = 4_242
CLIP_PREPROCESSING = (
    "images in [0, 1], bicubic resize (no crop) to the CLIP input size, normalised with the CLIP model's mean/std; "
    "the original compute_metrics.py fed [-1, 1]"
)


class EvaluationError(ValueError):
    """A test set, method or setting cannot be used; the message says why."""


# ---------------------------------------------------------------------------
# Test sets
# ---------------------------------------------------------------------------


@dataclass
class EvalItem:
    """One test case: an input image, an instruction, the captions around it, and what is known of the result."""

    id: str
    image: Image.Image
    instruction: str
    input_caption: str | None = None
    output_caption: str | None = None
    target: Image.Image | None = (
        None  # the exact (toy) or synthesized edited image, where the test set has one
    )
    edit: Any = None  # the toy world's Edit, for the oracle
    edit_type: str | None = None


def toy_test_set(
    n: int = TOY_TEST_SIZE, seed: int | None = None, validation: bool = False, brief: bool = False
) -> list[EvalItem]:
    """``n`` held-out rendered toy scenes, one instruction each, the six edit types in turn (where possible).

    The scenes are the held-out evaluation scenes of the toy base model (never trained on), so the inputs are
    renders, playing the role of real photographs; the target is the render of the edited scene.

    ``validation=True`` gives the validation split instead: the held-out scenes after the first
    ``TOY_TEST_SIZE`` (disjoint from the reported test set ``toy:300``), with their own instructions, for choosing
    settings such as guidance scales without looking at the test set. ``seed`` (default: the split's own) draws
    the instructions.

    ``brief=True`` gives the same items with brief captions (``toy-brief``, ``toy-val-brief``): every size and
    position left unsaid, as real captions leave most of a photograph unsaid. They change what SDEdit is told
    (the output caption) and the caption side of the CLIP metrics (directional and output-caption similarity),
    nothing else.
    """
    import random

    from ip2p.toy.captions import caption
    from ip2p.toy.edits import EDIT_TYPES, possible_edit_types, random_edit
    from ip2p.toy.render import render
    from ip2p.toy.train_base import heldout_scenes

    scenes = heldout_scenes()["mixed"]
    if validation:
        scenes, default_seed, prefix = scenes[TOY_TEST_SIZE:], TOY_VAL_SEED, "toy-val"
    else:
        scenes, default_seed, prefix = scenes[:TOY_TEST_SIZE], TOY_TEST_SEED, "toy"
    prefix += "-brief" if brief else ""
    seed = default_seed if seed is None else seed
    if not 1 <= n <= len(scenes):
        raise EvaluationError(f"the {prefix} test set has 1 to {len(scenes)} items, asked for {n}")
    rng = random.Random(seed)
    items = []
    for i, scene in enumerate(scenes[:n]):
        wanted = EDIT_TYPES[i % len(EDIT_TYPES)]
        edit = random_edit(scene, rng, wanted if wanted in possible_edit_types(scene) else None)
        items.append(
            EvalItem(
                id=f"{prefix}-{i:04d}",
                image=render(edit.before),
                instruction=edit.instruction,
                input_caption=caption(edit.before, brief=brief),
                output_caption=caption(edit.after, brief=brief),
                target=render(edit.after),
                edit=edit,
                edit_type=edit.type,
            )
        )
    return items


def _jsonl_test_set(path: Path) -> list[EvalItem]:
    from ip2p.jsonl import iter_jsonl_objects

    items = []
    for n, (line, row) in enumerate(iter_jsonl_objects(path, EvaluationError)):
        where = f"{path}:{line}"

        def get(*keys: str, row: dict = row) -> Any:
            return next((row[k] for k in keys if row.get(k) not in (None, "")), None)

        image, instruction = get("image", "input_image"), get("instruction", "edit")
        if image is None or instruction is None:
            raise EvaluationError(f"{where}: needs 'image' and 'instruction' (or 'edit')")
        target = get("target", "target_image", "edited_image")
        items.append(
            EvalItem(
                id=str(row.get("id", n)),
                image=load_image(path.parent / image),
                instruction=str(instruction),
                input_caption=get("input_caption", "input"),
                output_caption=get("output_caption", "output"),
                target=None if target is None else load_image(path.parent / target),
                edit_type=row.get("edit_type"),
            )
        )
    return items


def load_test_set(source: str, limit: int | None = None, columns=None) -> list[EvalItem]:
    """Items from ``toy`` / ``toy:N`` (the toy world's held-out test set; ``toy-val`` / ``toy-val:N`` its
    validation split, up to 200 items; ``toy-brief`` and ``toy-val-brief`` the same with brief captions), a JSONL
    file of {image, instruction,
    input_caption, output_caption[, target]} (paths relative to the file), or any edit dataset
    :func:`ip2p.datasets.open_edit_dataset` reads (our Parquet shards, the official schema, original folders)."""
    from ip2p.datasets import Columns, DatasetError, open_edit_dataset

    name, _, count = source.partition(":")
    if name in ("toy", "toy-val", "toy-brief", "toy-val-brief"):
        validation = name.startswith("toy-val")
        try:
            n = int(count) if count else (200 if validation else TOY_TEST_SIZE)
        except ValueError:
            raise EvaluationError(
                f"toy test set {source!r}: write {name} or {name}:N with N a number"
            ) from None
        return toy_test_set(
            n if limit is None else min(n, limit), validation=validation, brief=name.endswith("-brief")
        )
    path = Path(source).expanduser()
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise EvaluationError(f"{path}: no such file")
        items = _jsonl_test_set(path)
    else:
        try:
            data = open_edit_dataset(source, columns or Columns())
        except DatasetError as exc:
            raise EvaluationError(str(exc)) from exc
        items = []
        for i in range(len(data) if limit is None else min(limit, len(data))):
            ex = data[i]
            items.append(
                EvalItem(
                    id=str(ex.extra.get("id", i)),
                    image=ex.original_image,
                    instruction=ex.edit_prompt,
                    input_caption=ex.original_prompt,
                    output_caption=ex.edited_prompt,
                    target=ex.edited_image,
                )
            )
    if not items:
        raise EvaluationError(f"{source}: the test set is empty")
    return items if limit is None else items[:limit]


def item_seed(seed: int, index: int) -> int:
    """The seed of test item ``index``: the same for every method and setting, independent of batching."""
    digest = hashlib.sha256(f"ip2p-eval:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------

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
    from ip2p.sampling import make_scheduler

    for strength in strengths:
        if not 0 < strength <= 1 or int(steps * strength) < 1:
            raise EvaluationError(
                f"SDEdit strength {strength} with {steps} steps runs no denoising step; strengths are in (0, 1] "
                "and steps * strength must be at least 1"
            )
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=make_scheduler(scheduler, components.scheduler) if scheduler else components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def edit(images, items, setting, seeds):
        captions = [it.output_caption for it in items]
        if any(not c for c in captions):
            raise EvaluationError("SDEdit needs the output caption of every item; this test set lacks them")
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


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def to_unit_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (B, 3, H, W) float in [0, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def pixel_metrics(edited: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1, L2 (mean squared error) and PSNR (dB) per image of (B, 3, H, W) tensors in [0, 1].

    Example:
        >>> a = torch.zeros(1, 3, 2, 2); b = torch.full((1, 3, 2, 2), 0.1)
        >>> {k: round(float(v[0]), 4) for k, v in pixel_metrics(a, b).items()}
        {'l1': 0.1, 'l2': 0.01, 'psnr': 20.0}
    """
    diff = edited.float() - target.float()
    l1 = diff.abs().flatten(1).mean(1)
    l2 = diff.pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / l2.clamp_min(1e-10))
    return {"l1": l1, "l2": l2, "psnr": psnr}


def measure_batch(
    scorer, items: list[EvalItem], inputs: list[Image.Image], edited: list[Image.Image]
) -> list[dict]:
    """The metrics of one batch of edits (see the module docstring), one dict per item."""
    from ip2p.pairs.clip_score import directional_similarity

    x0, x1 = (
        to_unit_tensor(inputs),
        to_unit_tensor([e.resize(i.size) for e, i in zip(edited, inputs, strict=True)]),
    )
    rows: list[dict] = [{} for _ in items]
    if scorer is not None:
        e0, e1 = scorer.encode_images(x0), scorer.encode_images(x1)
        sim_image = torch.nn.functional.cosine_similarity(e0, e1)
        with_captions = [i for i, it in enumerate(items) if it.input_caption and it.output_caption]
        if with_captions:
            t0 = scorer.encode_texts([items[i].input_caption for i in with_captions])
            t1 = scorer.encode_texts([items[i].output_caption for i in with_captions])
            direction = directional_similarity(e0[with_captions], e1[with_captions], t0, t1)
            text_sim = torch.nn.functional.cosine_similarity(e1[with_captions], t1)
            for j, i in enumerate(with_captions):
                rows[i]["clip_direction"] = float(direction[j])
                rows[i]["clip_text"] = float(text_sim[j])
        for i in range(len(items)):
            rows[i]["clip_image"] = float(sim_image[i])
    with_target = [i for i, it in enumerate(items) if it.target is not None]
    if with_target:
        targets = to_unit_tensor([items[i].target.resize(inputs[i].size) for i in with_target])
        px = pixel_metrics(x1[with_target], targets)
        e_t = scorer.encode_images(targets) if scorer is not None else None
        for j, i in enumerate(with_target):
            rows[i].update({k: float(v[j]) for k, v in px.items()})
            if e_t is not None:
                rows[i]["clip_target"] = float(
                    torch.nn.functional.cosine_similarity(e1[i : i + 1], e_t[j : j + 1])
                )
    for i, it in enumerate(items):
        if it.edit is not None:
            from ip2p.toy.oracle import judge_edit

            verdict = judge_edit(inputs[i], edited[i].resize(inputs[i].size), it.edit)
            rows[i]["oracle_edit"] = float(verdict["edit_correct"])
            rows[i]["oracle_preserved"] = float(verdict["preserved"])
            rows[i]["oracle_success"] = float(verdict["edit_correct"] and verdict["preserved"])
    return rows


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Settings of an evaluation run (those that change results are checked on resume)."""

    output: str
    test_set: str = "toy"
    limit: int | None = None
    resolution: int = 512  # long side the inputs are resized to (the original: 512; the toy world: 64)
    size_multiple: int = 8
    batch_size: int = 8
    seed: int = 0
    clip: str | None = None  # None: no CLIP metrics
    examples: int = 4  # items shown in examples.png
    progress: bool = True
    device: str = "cpu"  # where CLIP runs

    def identity(self, methods: list[Method]) -> dict[str, Any]:
        return {
            "test_set": self.test_set,
            "limit": self.limit,
            "resolution": self.resolution,
            "seed": self.seed,
            "clip": self.clip,
            "methods": {m.name: _jsonable(m.describe) for m in methods},
        }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _prepare_inputs(items: list[EvalItem], resolution: int, multiple: int) -> list[Image.Image]:
    """Every input resized as the editor would (the original's fit policy), so all methods see the same pixels."""
    return [
        prepare_image(it.image, resolution=resolution, mode="fit", multiple=multiple).image for it in items
    ]


def _batches(indices: list[int], inputs: list[Image.Image], size: int) -> list[list[int]]:
    """Consecutive runs of same-sized inputs, at most ``size`` long (methods batch inputs of one size)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        by_size.setdefault(inputs[i].size, []).append(i)
    out = []
    for group in by_size.values():
        out += [group[j : j + size] for j in range(0, len(group), size)]
    return out


def _record_files(out: Path) -> list[Path]:
    return sorted(out.glob("records*.jsonl"))


def read_records(out: str | os.PathLike) -> list[dict]:
    """Every record of a run (all processes' files), complete lines only."""
    rows = []
    for path in _record_files(Path(out)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a partial last line of a killed run; it is redone on resume
    return rows


def evaluate(
    config: EvalConfig, methods: list[Method], *, scorer=None, items: list[EvalItem] | None = None
) -> dict:
    """Run (or resume) an evaluation; write records, summary, plot and examples; return the summary rows.

    Args:
        config: the run's settings.
        methods: the methods to compare (``editor_method``, ``sdedit_method`` or your own ``Method``).
        scorer: a ``ClipScorer`` (default: loaded from ``config.clip``; none when that is None).
        items: the test items (default: loaded from ``config.test_set``).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    out = Path(config.output)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise EvaluationError(f"method names must differ, got {names}")
    if items is None:
        items = load_test_set(config.test_set, config.limit)
    elif config.limit is not None:
        items = items[: config.limit]
    for m in methods:
        lacking = next((it.id for it in items if it.target is None), None) if m.needs_targets else None
        if lacking is not None:
            raise EvaluationError(f"method {m.name!r} needs target images; test item {lacking} has none")
    state = PartialState(cpu=config.device == "cpu")
    identity = config.identity(methods)
    run_file = out / "run.json"
    if run_file.is_file():
        previous = json.loads(run_file.read_text()).get("identity", {})
        changed = [k for k in identity if previous.get(k) != identity[k]]
        if changed:
            raise EvaluationError(
                f"{out} holds an evaluation with other settings ({changed[0]} differs); "
                "pass another --output or remove that folder"
            )
    if scorer is None and config.clip:
        from ip2p.pairs.clip_score import ClipScorer

        scorer = ClipScorer.from_pretrained(config.clip, device=config.device)
    if state.is_main_process:
        _write_json(
            run_file,
            {
                "identity": identity,
                "items": len(items),
                "clip_preprocessing": CLIP_PREPROCESSING if scorer is not None else None,
                "item_seeds": f"item_seed(seed={config.seed}, index) = sha256('ip2p-eval:seed:index')[:4]",
                "settings": {m.name: m.settings for m in methods},
            },
        )
    state.wait_for_everyone()

    inputs = _prepare_inputs(items, config.resolution, config.size_multiple)
    seeds = [item_seed(config.seed, i) for i in range(len(items))]
    mine = list(range(state.process_index, len(items), state.num_processes))
    log = JsonlLog(
        out / ("records.jsonl" if state.num_processes == 1 else f"records.rank{state.process_index}.jsonl")
    )
    log.open()  # cuts a partial last line a kill left
    done = {(r["method"], r["setting"], r["item"]) for r in read_records(out)}  # every process's records
    jobs = [
        (m, s, batch)
        for m in methods
        for s in m.settings
        for batch in _batches(
            [i for i in mine if (m.name, setting_key(s), items[i].id) not in done], inputs, config.batch_size
        )
    ]
    bar = tqdm(
        total=sum(len(b) for _, _, b in jobs),
        desc="evaluate",
        unit="edit",
        disable=not (config.progress and state.is_main_process) or None,
    )
    try:
        for method, setting, batch in jobs:
            key = setting_key(setting)
            edited = method.edit(
                [inputs[i] for i in batch], [items[i] for i in batch], setting, [seeds[i] for i in batch]
            )
            if len(edited) != len(batch):
                raise EvaluationError(
                    f"method {method.name!r} returned {len(edited)} images for {len(batch)} inputs"
                )
            metrics = measure_batch(scorer, [items[i] for i in batch], [inputs[i] for i in batch], edited)
            for i, image in zip(batch, edited, strict=True):
                if i < config.examples:
                    save_png(image, _example_path(out, method.name, key, items[i].id))
            log.append(
                {
                    "method": method.name,
                    "setting": key,
                    **{k: float(v) for k, v in setting.items()},
                    "item": items[i].id,
                    "edit_type": items[i].edit_type,
                    "seed": seeds[i],
                    **row,
                }
                for i, row in zip(batch, metrics, strict=True)
            )
            bar.update(len(batch))
            bar.set_postfix_str(f"{method.name} {key}")
    finally:
        bar.close()
        log.close()
    state.wait_for_everyone()
    summary: list[dict] = []
    if state.is_main_process:
        summary = summarize(read_records(out), methods)
        write_summary(out, summary)
        if any("clip_direction" in r and "clip_image" in r for r in summary):
            plot_curves(summary, out / "plot.png")
        examples_grid(out, methods, items[: config.examples], inputs[: config.examples])
    return {"summary": summary, "output": str(out)}


def _example_path(out: Path, method: str, key: str, item: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in f"{key}")
    return out / "images" / method / safe / f"{item}.png"


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, default=str))


METRICS = (
    "clip_direction",
    "clip_image",
    "clip_text",
    "clip_target",
    "l1",
    "l2",
    "psnr",
    "oracle_edit",
    "oracle_preserved",
    "oracle_success",
)


# the metrics also averaged per edit type (``<metric>/<type>``), for the planes within one type of edit
TYPE_METRICS = ("clip_direction", "clip_image", "oracle_edit", "oracle_preserved", "oracle_success")


def summarize(records: list[dict], methods: list[Method]) -> list[dict]:
    """One row per (method, setting) in sweep order: the number of items, the mean of every metric, and where the
    items have edit types the means of ``TYPE_METRICS`` per type (``oracle_success/<type>`` and so on)."""
    rows = []
    for method in methods:
        for setting in method.settings:
            key = setting_key(setting)
            mine = [r for r in records if r["method"] == method.name and r["setting"] == key]
            if not mine:
                continue
            row: dict[str, Any] = {"method": method.name, "setting": key, **setting, "n": len(mine)}
            for metric in METRICS:
                values = [r[metric] for r in mine if metric in r and r[metric] is not None]
                if values:
                    row[metric] = float(np.mean(values))
            for kind in sorted({r["edit_type"] for r in mine if r.get("edit_type")}):
                for metric in TYPE_METRICS:
                    values = [r[metric] for r in mine if r.get("edit_type") == kind and metric in r]
                    if values:
                        row[f"{metric}/{kind}"] = float(np.mean(values))
            rows.append(row)
    return rows


def write_summary(out: Path, summary: list[dict]) -> None:
    _write_text(out / "summary.jsonl", "".join(json.dumps(r) + "\n" for r in summary))
    columns = list(dict.fromkeys(k for r in summary for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(summary)
    _write_text(out / "summary.csv", buf.getvalue())


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


PLANES = {
    "clip": ("clip_direction", "clip_image", "CLIP text-image direction similarity", "CLIP image similarity"),
    "oracle": ("oracle_edit", "oracle_preserved", "oracle: edit right", "oracle: rest preserved"),
}
"""The planes a method's curve is drawn in: the paper's CLIP plane, and where the test set knows each edit (the
toy world) its ground-truth counterpart, the share of edits right (x) against the share that keeps the rest (y)."""


def plot_curves(summary: list[dict], path: Path, title: str | None = None) -> Path:
    """Directional similarity (x) vs image similarity (y), one curve per method, its points labelled with the
    swept value (the paper's figures 8 and 10; higher and further right is better). Where the rows carry the
    toy oracle's verdicts, a second panel draws the same curves in the oracle's plane (``PLANES``). Reference
    points (``REFERENCES``) are stars, joined to the input's by a dotted line: the exact edits, each made or left
    undone at random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = [
        plane
        for plane, (x, y, _, _) in PLANES.items()
        if any(x in r and y in r for r in summary) or plane == "clip"
    ]
    fig, axes = plt.subplots(1, len(planes), figsize=(5.5 * len(planes), 4.2), dpi=120, squeeze=False)
    for ax, plane in zip(axes[0], planes, strict=True):
        x_key, y_key, x_label, y_label = PLANES[plane]
        references = {
            r["method"]: (r[x_key], r[y_key])
            for r in summary
            if r["method"] in REFERENCES and not r["setting"] and x_key in r and y_key in r
        }
        for i, (name, (x, y)) in enumerate(references.items()):
            ax.plot([x], [y], marker="*", markersize=11, linestyle="none", color="0.35")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -10), fontsize=7)
            # the dotted line: the exact edits, each made or left undone at random
            if name != "input" and "input" in references:
                ax.plot(
                    *zip(references["input"], (x, y), strict=True), linestyle=":", color="0.6", linewidth=1
                )
        for method in dict.fromkeys(r["method"] for r in summary if r["method"] not in references):
            rows = [r for r in summary if r["method"] == method and x_key in r and y_key in r]
            if not rows:
                continue
            xs, ys = [r[x_key] for r in rows], [r[y_key] for r in rows]
            ax.plot(xs, ys, marker="o", label=method)
            for r, x, y in zip(rows, xs, ys, strict=True):
                swept = _swept_value(r, rows)
                if swept:
                    ax.annotate(swept, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _swept_value(row: dict, rows: list[dict]) -> str:
    """The label of a point: the setting values that vary along its curve."""
    keys = [k for k in ("strength", "image_guidance_scale", "text_guidance_scale") if k in row]
    varying = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    return ",".join(f"{row[k]:g}" for k in varying)


def examples_grid(
    out: Path, methods: list[Method], items: list[EvalItem], inputs: list[Image.Image]
) -> Path | None:
    """examples.png: per item and method a row (the input, then the edit at each setting), labelled."""
    images, labels, columns = [], [], 1 + max(len(m.settings) for m in methods)
    for item, image in zip(items, inputs, strict=True):
        for method in methods:
            row = [image]
            names = [f"{method.name}: {item.instruction}"]
            for setting in method.settings:
                path = _example_path(out, method.name, setting_key(setting), item.id)
                row.append(
                    Image.open(path).convert("RGB")
                    if path.is_file()
                    else Image.new("RGB", image.size, "white")
                )
                names.append(_swept_value(setting, method.settings) or setting_key(setting) or method.name)
            pad = columns - len(row)
            images += row + [Image.new("RGB", image.size, "white")] * pad
            labels += names + [""] * pad
    if not images:
        return None
    size = max(images[0].size)
    scale = max(1, math.ceil(128 / size))  # toy-sized images are enlarged so the labels fit
    images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    path = out / "examples.png"
    save_png(make_grid(images, columns, labels), path)
    return path


# ---------------------------------------------------------------------------
# Comparing curves
# ---------------------------------------------------------------------------


def curve_margin(
    summary: list[dict], better: str, worse: str, plane: str = "clip", edit_type: str | None = None
) -> dict[str, Any]:
    """How far ``better``'s curve lies above ``worse``'s in a plane of ``PLANES`` (default the paper's: CLIP
    directional similarity x, image similarity y); with ``edit_type``, in that plane drawn from the items of that
    type of edit alone (the summary's ``<metric>/<type>`` means).

    ``margins``: at each of ``worse``'s points whose x falls within ``better``'s range, ``better``'s y
    (interpolated linearly along x) minus ``worse``'s. ``dominated``: how many of ``worse``'s points some point of
    ``better`` beats on both axes at once (no interpolation, so it also counts points outside the overlap).
    Also the best oracle success of each, where measured."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
    x_key, y_key = PLANES[plane][:2]
    if edit_type is not None:
        x_key, y_key = f"{x_key}/{edit_type}", f"{y_key}/{edit_type}"
    a = sorted((r[x_key], r[y_key]) for r in summary if r["method"] == better and x_key in r and y_key in r)
    b = [(r[x_key], r[y_key]) for r in summary if r["method"] == worse and x_key in r and y_key in r]
    margins = []
    if len(a) >= 1:
        xs, ys = [p[0] for p in a], [p[1] for p in a]
        for x, y in b:
            if xs[0] <= x <= xs[-1]:
                margins.append(float(np.interp(x, xs, ys)) - y)
    result: dict[str, Any] = {
        "plane": plane,
        "edit_type": edit_type,
        "compared_points": len(margins),
        "margins": margins,
        "above_everywhere": bool(margins) and min(margins) > 0,
        "dominated": sum(any(ax > bx and ay > by for ax, ay in a) for bx, by in b),
        "points": len(b),
    }
    for name in (better, worse):
        values = [r["oracle_success"] for r in summary if r["method"] == name and "oracle_success" in r]
        if values:
            result[f"best_oracle_success/{name}"] = max(values)
    return result
