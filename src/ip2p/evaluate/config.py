"""``ip2p evaluate``'s settings (torch-free, its flags built from them) and the one call that runs them.

:class:`EvalRunConfig` holds what the command line sets: the models, the test set, the methods and their sweeps,
the reference points. :func:`run_evaluation` fills what is unset: the editor's sampling from the settings its model carries
(``edit_settings.json``), the rest from a named model's evaluation defaults (``ip2p.registry``: the toy world's
are its CLIP, base model, ``toy:300`` and 20 SDEdit steps), then the paper's; it chooses the device (one GPU per process
under ``accelerate launch``), builds the methods and runs :func:`ip2p.evaluate.run.evaluate`.

Example::

    from ip2p.evaluate.config import EvalRunConfig, run_evaluation
    result = run_evaluation(EvalRunConfig(model="toy", output="runs/eval", methods="ip2p", sweep="text"))
    print(result["report"])
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ip2p.edit_config import RuntimeOptions
from ip2p.flags import option

Floats = list[float]  # one flag value: ``a,b,c`` or ``start:stop:step``
SWEEPS = ("paper", "text", "grid")
FALLBACK_STEPS = 100  # the paper's sampler steps, where the model names none
FALLBACK_RESOLUTION = 512
FALLBACK_CLIP = "openai/clip-vit-large-patch14"  # the original's ViT-L/14 (pairs.clip_score.DEFAULT_CLIP)
DEFAULT_METHODS = "ip2p,sdedit"
BENCHMARK_NAMES = ("magicbrush", "magicbrush-multi", "emu-edit")  # ip2p.evaluate.bench_run.BENCHMARKS
BENCH_CLIP = "openai/clip-vit-base-patch32"  # MagicBrush's clip.load("ViT-B/32"), as bench_metrics
BENCH_DINO = "facebook/dino-vits16"  # MagicBrush's torch.hub dino_vits16, as bench_metrics


def parse_floats(text: str) -> list[float]:
    """``1,1.5,2`` or ``start:stop:step`` (inclusive) -> floats.

    Example:
        >>> parse_floats("1:2:0.5"), parse_floats("7.5,10")
        ([1.0, 1.5, 2.0], [7.5, 10.0])
    """
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(round((stop - start) / step))
            return [round(start + i * step, 6) for i in range(n + 1)]
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers as a,b,c or start:stop:step") from None


@dataclass
class EvalRunConfig:
    """Settings of ``ip2p evaluate``. Fields left None take the named model's evaluation defaults (see
    ``ip2p.registry.NamedModel.eval_defaults``), then the paper's."""

    output: str = option("output folder (rerun the same command to resume)", flag="--output", aliases=("-o",))
    model: str = option(
        "editing model: a diffusers folder, a .safetensors/.ckpt file, a hub id or a named model",
        default="toy",
    )
    model_config: str | None = option(
        "for a single-file checkpoint: a diffusers folder (or hub id) holding the component configs",
        flag="--config",
        default=None,
    )
    device: str = option("cpu, cuda, cuda:1, mps or auto", default="auto")
    dtype: str = option(
        "weights and compute precision; auto = bf16 on GPUs that support it, else fp16; fp32 on CPU",
        default="auto",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    test_set: str | None = option(
        "toy or toy:N (the toy world's held-out renders, N <= 300; default with --model toy: toy:300), "
        "toy-val or toy-val:N (its validation split, N <= 200, for choosing settings), toy-brief[:N] and "
        "toy-val-brief[:N] (the same items with brief captions: no sizes or positions), a JSONL of "
        "{image, instruction, input_caption, output_caption[, target]}, Parquet shards (ours or the official "
        "schema) or an original-format folder",
        default=None,
    )
    limit: int | None = option("evaluate only the first N items", default=None)
    base: str | None = option(
        "text-to-image model for the SDEdit baseline (default with --model toy: the toy base model)",
        default=None,
    )
    methods: str = option(
        "comma-separated: ip2p, sdedit, or none for --references alone", default=DEFAULT_METHODS
    )
    references: str | None = option(
        "comma-separated reference points measured beside the methods: input (no edit), target (the exact "
        "target image), target-vae (the target through the editor's autoencoder: the best a latent editor can "
        "output); target and target-vae need a test set with targets (default: none)",
        default=None,
    )
    metrics: str | None = option(
        "comma-separated metric plug-ins measured beside CLIP and pixel metrics (the toy world's: oracle); "
        "none for none (default: every registered metric)",
        default=None,
    )
    sweep: str = option(
        "paper: text 7.5 (or the editor's edit_settings.json), image 1.0-2.2 by 0.2; text: text 3-12.5 at "
        "image 1.5 (or the editor's); grid: every pair of --text-guidance and --image-guidance",
        default="paper",
        choices=SWEEPS,
    )
    text_guidance: Floats | None = option(
        "text scales: a,b,c or start:stop:step", default=None, parse=parse_floats
    )
    image_guidance: Floats | None = option(
        "image scales: a,b,c or start:stop:step", default=None, parse=parse_floats
    )
    strengths: Floats | None = option(
        "SDEdit strengths (default: 0.3:0.9:0.1, the paper's)", default=None, parse=parse_floats
    )
    sdedit_guidance: float = option("SDEdit's text guidance", default=7.5)
    steps: int | None = option(
        "sampler steps of both methods (default: the editor's edit_settings.json, else the named model's "
        "evaluation default, else 100; SDEdit: --sdedit-steps)",
        default=None,
    )
    sdedit_steps: int | None = option(
        "SDEdit's sampler steps (default: --steps where given, else the named model's evaluation default: 20 "
        "for toy, else 100)",
        default=None,
    )
    scheduler: str | None = option(
        "sampler for both methods (default: the editor's edit_settings.json, else each model's own)",
        default=None,
    )
    guidance_rescale: Floats | None = option(
        "the editor's guidance rescale(s), 0-1, each crossed with the guidance scales (default: 0, off)",
        default=None,
        parse=parse_floats,
    )
    chain_mode: str | None = option(
        "chained edits on a multi-turn test set (toy-multiturn[:N]), comma-separated modes: plain (each result "
        "edited next), paste (only the pixels an edit changed beyond --paste-threshold kept), auto-mask (each "
        "turn inside its automatic mask); every turn judged against the composed target, at one setting (the "
        "editor's, or one --text-guidance and --image-guidance)",
        default=None,
    )
    paste_threshold: float | None = option(
        "the paste chain mode's threshold on |edited - input|, 0-1 (default: 0.15)", default=None
    )
    fit_auto_guidance: str | None = option(
        "after the editor's sweep (--sweep grid on a validation split, e.g. toy-val), fit the predictor of "
        "--guidance auto on its oracle success and write it to this path (auto_guidance.json beside the model)",
        default=None,
        metavar="PATH",
    )
    resolution: int | None = option(
        "long side of the inputs (default: the editor's edit_settings.json, else 512)", default=None
    )
    auto_mask: bool = option(
        "the editor edits only inside its automatic mask (DiffEdit, as `ip2p edit --auto-mask`)",
        default=False,
    )
    mask_threshold: float | None = option(
        "the automatic mask's threshold, 0-1 (default: 0.5, as `ip2p edit`)", default=None
    )
    clip: str | None = option(
        "CLIP for the metrics: a folder, hub id or 'toy' (default: openai/clip-vit-large-patch14; 'toy' for "
        "the toy model); 'none' skips CLIP metrics",
        default=None,
    )
    benchmark: str | None = option(
        "a standard benchmark instead of the sweeps: magicbrush (single-turn), magicbrush-multi (turns "
        "chained from the first source) or emu-edit; the editor runs at one setting (its "
        "edit_settings.json, else text 7.5, image 1.5; --text-guidance/--image-guidance lists make a grid)",
        default=None,
        choices=BENCHMARK_NAMES,
        group="benchmarks",
    )
    data: str | None = option(
        "the benchmark's data: a hub id (default: osunlp/MagicBrush, facebook/emu_edit_test_set), a "
        "save_to_disk folder, Parquet files, MagicBrush's released test folder (edit_sessions.json), or a "
        "registered test set with targets (toy:300) for MagicBrush-style metrics",
        default=None,
        group="benchmarks",
    )
    split: str | None = option(
        "the benchmark's split (MagicBrush: test where the data has it, dev and train on the hub; Emu Edit: "
        "test, 3,589 rows, or validation, 2,022, chosen by each row's own split column)",
        default=None,
        group="benchmarks",
    )
    captions: str | None = option(
        "MagicBrush's local_captions.json for CLIP-T (default: the one beside a test folder; without it "
        "no CLIP-T)",
        default=None,
        group="benchmarks",
    )
    clip_model: str | None = option(
        "CLIP of the benchmark metrics: a folder, hub id or 'toy'; 'none' skips them (default: "
        f"{BENCH_CLIP}, the benchmarks' ViT-B/32)",
        default=None,
        group="benchmarks",
    )
    dino_model: str | None = option(
        f"DINO ViT of the benchmark metrics: a folder or hub id; 'none' skips DINO (default: {BENCH_DINO})",
        default=None,
        group="benchmarks",
    )
    compare: list[str] | None = option(
        "print the summaries of these benchmark runs (output folders) side by side, and nothing else",
        default=None,
        metavar="RUN",
        group="benchmarks",
    )
    batch_size: int = option("items edited at once", default=8)
    seed: int = option("seed of the per-item seeds", default=0)
    examples: int = option("items shown in examples.png", default=4)
    progress: bool = option("a progress bar", default=True)
    # the editor's LoRA adapters, memory and speed options (their flags come from RuntimeOptions itself)
    editor_options: RuntimeOptions | None = option(
        "the editor's adapters and options", default=None, cli=False
    )

    def method_names(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip() and m.strip() != "none"]

    def reference_names(self) -> list[str]:
        return list(dict.fromkeys(r.strip() for r in (self.references or "").split(",") if r.strip()))

    def metric_names(self) -> list[str] | None:
        if self.metrics is None:
            return None
        return [m.strip() for m in self.metrics.split(",") if m.strip() and m.strip() != "none"]

    def resolved(self) -> EvalRunConfig:
        """A copy with every unset field filled: for the editor's sampling, the settings its model carries
        (``edit_settings.json``), then the named model's evaluation defaults, then the paper's; for the rest,
        the named model's evaluation defaults, then the paper's."""
        from ip2p.edit_settings import read_edit_settings
        from ip2p.registry import MODELS

        named = MODELS.find(self.model)
        defaults = named.eval_defaults if named is not None else {}
        editor = {"ip2p", "ip2p-auto"} & set(self.method_names()) or self.chain_mode
        model = read_edit_settings(self.model) if editor else {}
        carried = {
            "steps": model.get("num_inference_steps"),
            "resolution": model.get("resolution"),
            "scheduler": model.get("scheduler"),
        }
        # what the editor's model carries over the named model's defaults; without an editor (SDEdit alone) the
        # defaults stand
        given = {k: v for k, v in defaults.items() if v is not None}
        given |= {k: v for k, v in carried.items() if v is not None}
        given |= {
            k: v
            for k in ("steps", "resolution", "clip", "base", "test_set", "scheduler")
            if (v := getattr(self, k)) is not None
        }
        # The sweeps' fixed scale is the editor's own where its model names one (the paper's 7.5 and 1.5 else).
        text, image = self.text_guidance, self.image_guidance
        if self.sweep == "paper" and text is None and "text_guidance_scale" in model:
            text = [model["text_guidance_scale"]]
        if self.sweep == "text" and image is None and "image_guidance_scale" in model:
            image = [model["image_guidance_scale"]]
        sweep = self.sweep
        if self.benchmark and sweep == "paper":  # one setting: the editor's own, else the paper's 7.5 and 1.5
            text = self.text_guidance or [model.get("text_guidance_scale", 7.5)]
            image = self.image_guidance or [model.get("image_guidance_scale", 1.5)]
            sweep = "grid"
        return replace(
            self,
            sweep=sweep,
            clip_model=self.clip_model or BENCH_CLIP,
            dino_model=self.dino_model or BENCH_DINO,
            steps=given.get("steps", FALLBACK_STEPS),
            sdedit_steps=self.sdedit_steps or self.steps or defaults.get("steps", FALLBACK_STEPS),
            scheduler=given.get("scheduler"),
            resolution=given.get("resolution", FALLBACK_RESOLUTION),
            clip=given.get("clip", FALLBACK_CLIP),
            base=given.get("base"),
            test_set=given.get("test_set"),
            text_guidance=text,
            image_guidance=image,
        )

    def validate(self) -> None:
        """One-line errors for what would fail later (``EvaluationError``)."""
        from ip2p.evaluate.items import EvaluationError
        from ip2p.evaluate.methods import REFERENCES
        from ip2p.sampling import SCHEDULERS

        methods, references = self.method_names(), self.reference_names()
        unknown = set(methods) - {"ip2p", "ip2p-auto", "sdedit"}
        if unknown or not (methods or references):
            raise EvaluationError(
                f"--methods: unknown {sorted(unknown)}; choose from ip2p, ip2p-auto (--guidance auto), sdedit "
                "(none: only --references)"
            )
        if self.fit_auto_guidance and "ip2p" not in methods:
            raise EvaluationError(
                "--fit-auto-guidance fits on the sweep of the ip2p method; add it to --methods"
            )
        unknown = set(references) - set(REFERENCES)
        if unknown:
            raise EvaluationError(
                f"--references: unknown {sorted(unknown)}; choose from {', '.join(REFERENCES)}"
            )
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise EvaluationError(
                f"--scheduler: unknown {self.scheduler!r}; choose from {', '.join(sorted(SCHEDULERS))}"
            )
        for name in ("batch_size", "steps", "sdedit_steps", "resolution"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EvaluationError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.output:
            raise EvaluationError("--output is required")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def run_evaluation(config: EvalRunConfig, note: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Run (or resume) ``ip2p evaluate`` with ``config``; ``note`` gets remarks made before the run (default:
    printed on stderr).

    Returns ``{"summary", "output", "methods", "references", "report"}``: the summary rows (empty on a
    non-main process under ``accelerate launch``), the output folder, the names of the methods and reference
    points measured, and the printed report (the summary table and, for two methods, how their curves compare
    in every plane).

    Raises:
        EvaluationError: a setting, test set or method cannot be used (``ModelLoadError`` for models).
    """
    from ip2p.devices import pick_device, process_device
    from ip2p.evaluate.items import EvaluationError
    from ip2p.evaluate.methods import (
        REFERENCES,
        SDEDIT_STRENGTHS,
        editor_method,
        guidance_grid,
        reference_method,
        sdedit_method,
    )
    from ip2p.evaluate.report import comparison_lines, summary_table
    from ip2p.evaluate.run import EvalConfig, evaluate
    from ip2p.models import load_pipeline_components
    from ip2p.pipeline import EditConfig, EditPipeline

    config.validate()
    cfg = config.resolved()
    methods, references = cfg.method_names(), cfg.reference_names()
    if "sdedit" in methods and cfg.base is None:
        if cfg.methods != DEFAULT_METHODS:
            raise EvaluationError(
                "--methods sdedit needs --base MODEL (the text-to-image model SDEdit runs on)"
            )
        methods.remove("sdedit")
        note("note: no --base given, so the SDEdit baseline is skipped")
    if not cfg.test_set and not cfg.benchmark:
        raise EvaluationError(f"--test-set is required: the model {cfg.model!r} names no test set of its own")
    device = process_device(cfg.device)  # under `accelerate launch`, each process's own GPU
    run = EvalConfig(
        output=cfg.output,
        test_set=cfg.test_set,
        limit=cfg.limit,
        resolution=cfg.resolution,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        clip=None if cfg.clip == "none" else cfg.clip,
        examples=cfg.examples,
        progress=cfg.progress,
        device=str(pick_device(device)),
        metrics=cfg.metric_names(),
    )
    chosen = []
    multiple = 8
    pipe = None
    if {"ip2p", "ip2p-auto"} & set(methods) or cfg.chain_mode:
        pipe = EditPipeline.from_pretrained(
            cfg.model, device=device, dtype=cfg.dtype, config=cfg.model_config, options=cfg.editor_options
        )
        multiple = pipe.size_multiple
        edit_config = EditConfig(
            num_inference_steps=cfg.steps, scheduler=cfg.scheduler, resolution=cfg.resolution
        )
        if cfg.auto_mask:
            edit_config.auto_mask = True
            if cfg.mask_threshold is not None:
                edit_config.mask_threshold = cfg.mask_threshold
            edit_config.validate()
    if cfg.chain_mode:  # chained edits turn by turn, in each mode (multiturn.py)
        run.size_multiple = multiple
        return _run_chains(config, cfg, run, pipe)
    if "ip2p" in methods:
        settings = guidance_grid(cfg.sweep, cfg.text_guidance, cfg.image_guidance, cfg.guidance_rescale)
        chosen.append(editor_method(pipe, edit_config, settings))
    if "ip2p-auto" in methods:
        from ip2p.auto_guidance import GuidancePredictor
        from ip2p.evaluate.methods import auto_guidance_method

        chosen.append(auto_guidance_method(pipe, edit_config, GuidancePredictor.from_pretrained(cfg.model)))
    if "sdedit" in methods:
        components = load_pipeline_components(cfg.base, edit=False)
        multiple = max(multiple, components.size_multiple)
        chosen.append(
            sdedit_method(
                components,
                cfg.strengths or SDEDIT_STRENGTHS,
                guidance_scale=cfg.sdedit_guidance,
                steps=cfg.sdedit_steps,
                scheduler=config.scheduler,
                device=device,
                dtype=cfg.dtype,
            )
        )
    vae = None  # the editor's autoencoder, for the target-vae reference
    if "target-vae" in references:
        vae = (
            pipe.components.vae
            if pipe is not None
            else load_pipeline_components(cfg.model, edit=True, config=cfg.model_config).vae
        )
    chosen += [reference_method(name, vae) for name in references]
    if cfg.benchmark:  # the standard benchmarks' items and metrics (bench_run.py)
        from ip2p.evaluate.bench_run import run_from_settings

        return run_from_settings(cfg, chosen, multiple, device)
    run.size_multiple = multiple
    result = evaluate(run, chosen)
    summary = result["summary"]
    if cfg.fit_auto_guidance and summary:
        note(_fit_auto_guidance(cfg.fit_auto_guidance, run, pipe))
    names = [m.name for m in chosen if m.name not in REFERENCES]
    lines = [summary_table(summary)] if summary else []
    if summary and len(names) == 2:
        lines += comparison_lines(summary, names[0], names[1], references)
    return {
        "summary": summary,
        "output": result["output"],
        "methods": names,
        "references": references,
        "report": "\n".join(lines),
    }


def _run_chains(config: EvalRunConfig, cfg: EvalRunConfig, run, pipe) -> dict[str, Any]:
    """``--chain-mode``: the sequences of a multi-turn test set chained in each mode (``ip2p.evaluate.multiturn``)
    at one setting: the editor's own, under a single --text-guidance and --image-guidance where given."""
    from ip2p.evaluate.items import EvaluationError
    from ip2p.evaluate.multiturn import chain_table, evaluate_chains

    scales = {}
    for key, values in (
        ("text_guidance_scale", config.text_guidance),
        ("image_guidance_scale", config.image_guidance),
    ):
        if values is not None and len(values) != 1:
            raise EvaluationError(
                "--chain-mode runs at one setting: one --text-guidance and one --image-guidance"
            )
        if values:
            scales[key] = values[0]
    edit_config = pipe.config_for(
        num_inference_steps=cfg.steps, scheduler=cfg.scheduler, resolution=cfg.resolution, **scales
    )
    modes = [m.strip() for m in (cfg.chain_mode or "").split(",") if m.strip()]
    try:
        result = evaluate_chains(run, pipe, edit_config, modes, threshold=cfg.paste_threshold)
    except ValueError as exc:  # an unknown mode or threshold: one line
        raise EvaluationError(str(exc)) from None
    summary = result["summary"]
    return {
        "summary": summary,
        "output": result["output"],
        "methods": modes,
        "references": [],
        "report": chain_table(summary) if summary else "",
    }


def _fit_auto_guidance(path: str, run, pipe) -> str:
    """Fit ``--guidance auto``'s predictor on the editor's sweep just measured; write it to ``path``."""
    from ip2p.auto_guidance import fit_from_records
    from ip2p.evaluate.items import load_test_set
    from ip2p.evaluate.run import read_records

    predictor = fit_from_records(pipe, read_records(run.output), load_test_set(run.test_set, run.limit))
    written = predictor.save(path)
    report = predictor.report
    return (
        f"auto guidance: k = {predictor.neighbours} neighbours, leave-one-out success "
        f"{report['leave_one_out_success'][predictor.neighbours]:.1%} against "
        f"{report['best_fixed_success']:.1%} for the best fixed setting {tuple(report['best_fixed'])}; "
        f"written to {written}"
    )
