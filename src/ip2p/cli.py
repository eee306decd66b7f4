"""The `ip2p` command line. Thin: each subcommand builds its flags from its config dataclass (:mod:`ip2p.flags`),
parses them into that config and makes one library call.

Building the parsers imports no heavy library (torch, diffusers, transformers, gradio, peft): the config dataclasses
live in torch-free modules, so `ip2p --help` and every `ip2p COMMAND --help` answer at once; each command imports
what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

# Before torch loads OpenMP: with OpenMP's default spin-waiting, a 2-thread job beside any other busy process runs
# many times slower (measured here: 15 s instead of 1 s a training step next to one other job); waiting passively
# costs nothing on an idle machine. A value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ip2p import __version__  # noqa: E402
from ip2p.flags import add_config_flags, config_overrides  # noqa: E402


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], **kw: Any
) -> argparse.ArgumentParser:
    # no abbreviated flags: `ip2p evaluate --guidance auto` must not be read as --guidance-rescale
    p = sub.add_parser(name, allow_abbrev=False, **kw)
    p.set_defaults(func=func)
    return p


def _config(args: argparse.Namespace, cls: type) -> Any:
    """``cls`` from the flags the user set, the rest at the dataclass's defaults."""
    return cls(**config_overrides(args, cls))


def _json_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- edit ----------------------------------------------------------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser, default_model: str) -> None:
    """--model, --config, --device and --dtype (``ModelChoice``), with real defaults: ``args.model`` etc. are set."""
    from ip2p.edit_config import ModelChoice

    add_config_flags(p, ModelChoice, defaults={"model": default_model})
    p.set_defaults(model=default_model, device="auto", dtype="auto")


def _edit_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.batch import image_suffixes
    from ip2p.edit_config import EditConfig, EditJob
    from ip2p.edit_settings import SETTING_KEYS

    p = _command(
        sub,
        "edit",
        cmd_edit,
        help="edit an image (or a folder, or a JSONL list) by an instruction",
        description="Edit images by written instructions with an InstructPix2Pix model. INPUT is an image, a "
        "folder of images (all edited with INSTRUCTION), or a .jsonl file of "
        '{"image": ..., "instruction": ...[, "output": ...]} lines. Outputs are PNGs whose text chunks '
        "record the instruction, seed, scales, steps and model. Existing outputs are skipped in batch "
        "mode unless --overwrite, so an interrupted batch resumes; a file that fails is reported in one line "
        "and the batch goes on (exit status 1 if any failed). A folder's images are its files with an "
        f"extension that Pillow opens here ({' '.join(image_suffixes())}); its subfolders' only with "
        "--recursive. Settings left unset take the model's own (edit_settings.json in its folder), else the "
        "paper's.",
    )
    add_config_flags(p, EditJob)
    paper = {k: getattr(EditConfig(), k) for k in SETTING_KEYS}
    shown = {k: f"the model's setting, else the paper's {v}" for k, v in paper.items() if v is not None}
    shown.update(
        scheduler="the model's setting, else its own", negative_prompt="the model's setting, else none"
    )
    add_config_flags(p, EditConfig, defaults=shown)
    _json_flag(p, "a machine-readable summary")


def cmd_edit(args: argparse.Namespace) -> int:
    from ip2p.batch import FlagError, is_batch, run_edit_job
    from ip2p.edit_config import EditConfig, EditJob
    from ip2p.imaging import show_decoder_messages

    job = _config(args, EditJob)
    show_decoder_messages(job.verbose)
    try:
        report = run_edit_job(job, config_overrides(args, EditConfig))  # BatchError: a one-line user error
    except FlagError as exc:  # a bad value, checked before any work: a usage error, as argparse's
        print(f"ip2p edit: error: {exc}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch` the main process reports the whole job
        return 0  # (and its status: torchrun ends the others' when one process exits with a failure)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif len(report.items) == 1 and not is_batch(job.input):
        item = report.items[0]
        print(f"wrote {', '.join(item['outputs'])} (seed {item.get('seed')})")
    else:
        print(report.summary(job.output))
    return 1 if report.failed else 0


# -- demo ----------------------------------------------------------------------------------------------------
def _demo_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.app_config import DemoConfig

    p = _command(
        sub,
        "demo",
        cmd_demo,
        help="edit a toy-world scene with the bundled editor and write before/after PNGs",
        description="The main job of a fresh checkout: render a toy scene, edit it by an instruction at the "
        "model's own settings and write input, output and a side-by-side picture.",
    )
    add_config_flags(p, DemoConfig)


def cmd_demo(args: argparse.Namespace) -> int:
    from ip2p.app_config import DemoConfig
    from ip2p.demo import demo

    for line in demo(_config(args, DemoConfig)):
        print(line)
    return 0


# -- train ---------------------------------------------------------------------------------------------------
def _train_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.train_config import PRESETS, TrainConfig

    p = _command(
        sub,
        "train",
        cmd_train,
        help="fine-tune an editing model from a text-to-image model (paper 3.2)",
        description="Train an InstructPix2Pix editor. Defaults are the paper's; --preset toy sets the toy world's. "
        "Runs on several GPUs or nodes through `accelerate launch -m ip2p.cli train ...`. Running the "
        "same command again resumes from the newest checkpoint in --output-dir.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="a named set of defaults; flags override it (default: %(default)s)",
    )
    add_config_flags(p, TrainConfig)


def cmd_train(args: argparse.Namespace) -> int:
    from ip2p.datasets import DatasetError
    from ip2p.harness import Interrupted
    from ip2p.train import TrainConfig, apply_preset, train

    try:
        config = apply_preset(args.preset, config_overrides(args, TrainConfig))
        config.validate()
        folder = train(config)
    except (ValueError, DatasetError) as exc:
        raise CLIError(str(exc)) from exc
    except Interrupted as exc:  # SIGINT/SIGTERM after a checkpoint: the same command resumes
        print(f"ip2p train: {exc}", file=sys.stderr)
        return 130
    print(f"trained model written to {folder}")
    return 0


# -- data ----------------------------------------------------------------------------------------------------
def _data_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.data.config import ConvertConfig, InspectConfig

    p = sub.add_parser(
        "data",
        help="convert and inspect edit datasets in any layout",
        description="Edit datasets in every common layout, detected from the path: Parquet (ours, the "
        "official and diffusers' schemas), folders with metadata.jsonl, WebDataset .tar shards, save_to_disk "
        "folders, hub dataset ids and the original repository's folders (docs/reference.md).",
    )
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data.add_parser(
        "convert",
        allow_abbrev=False,
        help="write a dataset in another layout (image bytes copied, texts kept)",
        description="Write SOURCE into a new folder in the layout --to, in the official schema's column names.",
    )
    add_config_flags(q, ConvertConfig)
    q.set_defaults(func=cmd_data_convert)
    q = data.add_parser(
        "inspect",
        allow_abbrev=False,
        help="rows, columns, a grid of examples; --validate names every bad row",
        description="Print a dataset's layout, rows and columns (and which column each field is read from); "
        "--grid writes its first examples; --validate reads every row and names each bad one by file and row.",
    )
    add_config_flags(q, InspectConfig)
    q.set_defaults(func=cmd_data_inspect)


def cmd_data_convert(args: argparse.Namespace) -> int:
    from ip2p.data import convert_dataset, open_edit_dataset
    from ip2p.data.config import ConvertConfig

    c = _config(args, ConvertConfig)
    n = convert_dataset(open_edit_dataset(c.source, c.columns(), c.data_format), c.output, c.to, c.shard_size)
    print(f"wrote {n} examples to {c.output} ({c.to})")
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from ip2p.data import inspect_dataset
    from ip2p.data.config import InspectConfig

    c = _config(args, InspectConfig)
    report = inspect_dataset(c.source, c.columns(), c.data_format, c.grid, c.examples, c.validate)
    if c.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['source']}: {report['format']}, {report['rows']} rows")
        print(f"columns: {', '.join(report['columns'])}")
        print("read as: " + ", ".join(f"{k} <- {v}" for k, v in report["fields"].items() if v))
        if "grid" in report:
            print(f"grid: {report['grid']}")
        for line in report.get("problems", []):
            print(line)
        if c.validate:
            print(f"{len(report['problems'])} rows with problems")
    return 1 if report.get("problems") else 0


# -- serve ---------------------------------------------------------------------------------------------------
def _serve_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.app_config import ServeConfig

    p = _command(
        sub,
        "serve",
        cmd_serve,
        help="the web app: edit images by instruction in the browser, with an HTTP API",
        description="Serve the interactive editor (Gradio): upload an image, type an instruction, tune the "
        "guidance scales, chain edits. Programs can call the /edit endpoint (see the README). Listens on "
        "127.0.0.1 only unless --host says otherwise. --model auto (the default) serves the bundled toy "
        "editor, or a tiny random model, labelled as such, where it is missing. The controls start at the "
        "model's own settings (edit_settings.json in its folder), else the paper's.",
    )
    add_config_flags(p, ServeConfig)


def cmd_serve(args: argparse.Namespace) -> int:
    from ip2p.app import serve
    from ip2p.app_config import ServeConfig

    config = _config(args, ServeConfig)
    try:
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if _needs_missing_accelerator("serve", config, config.device):
        return 2
    serve(config)
    return 0


def _needs_missing_accelerator(command: str, options: Any, device: str) -> bool:
    """Whether ``options`` (``RuntimeOptions``) ask for a GPU this run lacks; if so, says so in one line."""
    if not options.needs_accelerator():
        return False
    from ip2p.pipeline_options import AcceleratorError, check_accelerator

    try:
        check_accelerator(options, device)
    except AcceleratorError as exc:
        print(f"ip2p {command}: error: {exc}", file=sys.stderr)
        return True
    return False


# -- gen-text / finetune-text (stage 1) ----------------------------------------------------------------------
def _gen_text_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.text.config import GenTextConfig

    p = _command(
        sub,
        "gen-text",
        cmd_gen_text,
        help="write (caption, instruction, edited caption) triplets with a language model",
        description="Stage 1 of dataset synthesis (paper 3.1.1): for each caption, a language model writes an "
        "edit instruction and the edited caption. Completions that do not parse or change nothing are retried; "
        "duplicates, out-of-bounds lengths and blocklisted words are filtered, each counted in "
        "OUTPUT.report.json. Rerunning with the same OUTPUT resumes.",
    )
    add_config_flags(p, GenTextConfig)
    _progress_flag(p)
    _json_flag(p, "the report")


def _text_backend(config):
    """The language model of a ``GenTextConfig``: fake, an OpenAI-compatible endpoint or a transformers LM."""
    from ip2p.text.backends import FakeGenerator

    sampling = config.sampling()
    sampling.validate()
    if config.backend == "fake":
        return FakeGenerator()
    if not config.model:
        raise CLIError(f"the {config.backend} backend needs --model")
    if config.backend == "openai":
        from ip2p.text.openai_backend import OpenAIGenerator
        from ip2p.text.sources import read_seed_triplets

        return OpenAIGenerator(config.openai(), read_seed_triplets(config.seeds) if config.num_shots else [])
    from ip2p.text.hf import HFGenerator

    return HFGenerator.from_pretrained(
        config.model,
        sampling=sampling,
        batch_size=config.batch_size,
        device=config.device,
        dtype=config.dtype,
    )


def cmd_gen_text(args: argparse.Namespace) -> int:
    from ip2p.text.backends import BackendError
    from ip2p.text.config import GenTextConfig
    from ip2p.text.generate import generate_triplets
    from ip2p.text.sources import read_captions

    config = _config(args, GenTextConfig)
    if config.backend not in ("hf", "openai", "fake"):
        raise CLIError(f"unknown backend {config.backend!r}; choose hf, openai or fake")
    try:
        generate = config.generate()
        generate.validate()
        captions = read_captions(
            config.captions, column=config.column, split=config.split
        )  # before any model
        if not captions:
            raise CLIError(f"{config.captions}: no captions")
        report = generate_triplets(captions, _text_backend(config), generate, progress=not args.no_progress)
    except (
        ValueError,
        BackendError,
    ) as exc:  # TextSourceError, TextModelError and config errors are ValueErrors
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.summary()}; triplets in {config.output}")
    if report.backend_errors:
        print(
            f"ip2p: {report.backend_errors} caption(s) failed at the backend; rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _finetune_text_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.text.config import PRESETS, FinetuneConfig

    p = _command(
        sub,
        "finetune-text",
        cmd_finetune_text,
        help="fine-tune a causal language model on seed triplets (or train the toy LM)",
        description="Fine-tune a transformers causal LM to write triplets (paper 3.1.1: GPT-3 on 700 "
        "human-written triplets, 1 epoch): prompt = caption + '\\n##\\n', completion = instruction + "
        "'\\n%%\\n' + edited caption + '\\nEND', loss on the completion. Full or LoRA; CPU, GPU, or several "
        "GPUs with `accelerate launch --multi_gpu -m ip2p.cli finetune-text ...`. Checkpoints every "
        "--checkpoint-every steps; rerunning with the same --output resumes. `--preset toy` trains the toy "
        "world's LM from scratch. Defaults shown are the paper preset's.",
    )
    p.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="starting settings (default: %(default)s)"
    )
    add_config_flags(p, FinetuneConfig)
    _progress_flag(p)


def cmd_finetune_text(args: argparse.Namespace) -> int:
    from ip2p.text.finetune import FinetuneConfig, finetune, preset
    from ip2p.text.sources import read_seed_triplets

    try:
        config = preset(args.preset, **config_overrides(args, FinetuneConfig))
        config.validate()
        read_seed_triplets(config.seeds)  # a missing seed file fails before any model loads
        output = finetune(config, progress=not args.no_progress)
    except ValueError as exc:  # TextSourceError, TextModelError and config errors are ValueErrors
        raise CLIError(str(exc)) from exc
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    summary = json.loads((output / "train_summary.json").read_text())
    print(
        f"trained {summary['steps']} steps in {summary['seconds']}s (final loss {summary['final_loss']:.3f}); "
        f"model in {output}"
    )
    return 0


# -- gen-pairs -----------------------------------------------------------------------------------------------
def _gen_pairs_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.pairs.config import PRESETS, PairsConfig

    p = _command(
        sub,
        "gen-pairs",
        cmd_gen_pairs,
        help="generate CLIP-filtered image pairs for caption triplets (paper 3.1.2)",
        description="Stage 2 of dataset synthesis: for each (caption, instruction, edited caption) triplet, "
        "generate candidate image pairs with a text-to-image model and the paper's Prompt-to-Prompt variant, "
        "score them with CLIP and keep the best. Defaults are the paper's; --preset toy sets the toy world's. "
        "Output: Parquet shards in the official schema (or --format original), a manifest and a report. "
        "Running the same command again resumes; --shard/--num-shards split the work over a job array and "
        "`accelerate launch -m ip2p.cli gen-pairs ...` over processes.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="a named set of defaults; flags override it (default: %(default)s)",
    )
    add_config_flags(p, PairsConfig)
    _progress_flag(p)
    _json_flag(p, "the manifest")


def cmd_gen_pairs(args: argparse.Namespace) -> int:
    from ip2p.pairs.generate import PairsConfig, apply_preset, generate_pairs

    try:
        config = apply_preset(args.preset, config_overrides(args, PairsConfig))
        config.validate()
        manifest = generate_pairs(config, progress=not args.no_progress)
    except ValueError as exc:  # config, input and model-loading errors
        raise CLIError(str(exc)) from exc
    if manifest and args.json:
        print(json.dumps(manifest, indent=2))
    elif manifest:
        print(f"{manifest['summary']}; output in {config.output}")
    return 0


# -- loss-probe ----------------------------------------------------------------------------------------------
def _loss_probe_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.loss_probe_config import LossProbeConfig

    p = _command(
        sub,
        "loss-probe",
        cmd_loss_probe,
        help="denoising loss by timestep of editors against a text-to-image model (does an editor read its input?)",
        description="On pairs of a dataset, with the same noise for every model, the loss each model makes at "
        "fixed timesteps: editors conditioned on the input image and the instruction, a text-to-image model on "
        "the output caption. At high noise an editor that copies what the instruction leaves alone should do at "
        "least as well as the text-to-image model.",
    )
    add_config_flags(p, LossProbeConfig)


def cmd_loss_probe(args: argparse.Namespace) -> int:
    from ip2p.loss_probe import format_table, loss_probe
    from ip2p.loss_probe_config import LossProbeConfig

    config = _config(args, LossProbeConfig)
    try:
        out = loss_probe(config)
    except ValueError as exc:  # ProbeError, ModelLoadError, config errors
        raise CLIError(str(exc)) from exc
    print(
        f"{out['examples']} pairs of {config.data}, noise seed {config.seed}, loss per the scheduler's "
        "prediction type"
    )
    print(format_table(out["results"]))
    return 0


# -- evaluate ------------------------------------------------------------------------------------------------
# EvalRunConfig's fields whose flags come from add_model_flags and -o/--output, not from its own metadata
_EVAL_SHARED_FLAGS = ("output", "model", "model_config", "device", "dtype")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.edit_config import RuntimeOptions
    from ip2p.evaluate.config import EvalRunConfig

    p = _command(
        sub,
        "evaluate",
        cmd_evaluate,
        help="measure an editor: CLIP direction vs image similarity over guidance sweeps, against SDEdit (paper 4)",
        description="Edit every test item with the editor at every setting of a guidance sweep, and with the "
        "SDEdit baseline (img2img with the text-to-image model and the output caption) over strengths; measure "
        "CLIP image, directional and output-caption similarity, pixel metrics against targets where the test "
        "set has them, and every metric plug-in (the toy oracle's accuracy per edit type). Writes records, a "
        "summary (JSONL, CSV), a plot like the paper's and a grid of examples. Rerun the same command to resume; "
        "`accelerate launch -m ip2p.cli evaluate ...` splits the items over processes.",
    )
    add_model_flags(p, default_model="toy")
    # required, except with --compare (EvalRunConfig.validate says so in one line)
    p.add_argument("-o", "--output", help="output folder (rerun the same command to resume)")
    add_config_flags(p, EvalRunConfig, exclude=_EVAL_SHARED_FLAGS)
    add_config_flags(p, RuntimeOptions)
    _json_flag(p, "the summary")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ip2p.edit_config import RuntimeOptions
    from ip2p.evaluate.config import EvalRunConfig, run_evaluation

    config = EvalRunConfig(
        output=args.output,
        model=args.model,
        model_config=args.config,
        device=args.device,
        dtype=args.dtype,
        editor_options=_config(args, RuntimeOptions),
        **config_overrides(args, EvalRunConfig, exclude=_EVAL_SHARED_FLAGS),
    )
    if config.compare:  # benchmark runs side by side; nothing is edited
        from ip2p.evaluate.bench_run import compare_runs

        try:
            print(compare_runs(config.compare), end="")
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
        return 0
    try:
        config.editor_options.validate_options()
    except ValueError as exc:
        print(f"ip2p evaluate: error: {exc}", file=sys.stderr)
        return 2
    if _needs_missing_accelerator("evaluate", config.editor_options, config.device):
        return 2
    try:
        result = run_evaluation(config)
    except ValueError as exc:  # settings, test sets and methods (EvaluationError), models (ModelLoadError)
        raise CLIError(str(exc)) from exc
    summary = result["summary"]
    if not summary:  # a non-main accelerate process
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(result["report"])
    made = "summary.csv, plot.png, examples.png"
    if config.benchmark:
        made = "summary.md, summary.csv, records.jsonl"
    print(f"output in {args.output} ({made})")
    return 0


# -- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ip2p.toy.cli import add_toy_parser

    parser = argparse.ArgumentParser(
        prog="ip2p",
        description="InstructPix2Pix: edit images by written instructions, build instruction-edit datasets, "
        "train editors and measure them.",
    )
    parser.add_argument("--version", action="version", version=f"ip2p {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _edit_parser(sub)
    _demo_parser(sub)
    _gen_text_parser(sub)
    _finetune_text_parser(sub)
    _train_parser(sub)
    _data_parser(sub)
    add_toy_parser(sub)
    _gen_pairs_parser(sub)
    _evaluate_parser(sub)
    _serve_parser(sub)
    _loss_probe_parser(sub)
    return parser


# Errors whose message is for the user (one line, exit status 1), by the module that defines them; a module that
# was never imported cannot have raised its error, so none is imported here.
_USER_ERRORS = (
    ("ip2p.imaging", "ImageError"),
    ("ip2p.data.formats", "DatasetError"),
    ("ip2p.models", "ModelLoadError"),
    ("ip2p.batch", "BatchError"),
    ("ip2p.pipeline_options", "OptionError"),
    ("ip2p.edit_settings", "SettingsError"),
    ("ip2p.registry", "RegistryError"),
    ("ip2p.toy.cli", "ToyCommandError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    found = [getattr(sys.modules[m], name, None) for m, name in _USER_ERRORS if m in sys.modules]
    return (CLIError, *(t for t in found if t is not None))


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # The toy world's training and measuring show the libraries' own progress and warnings.
    loud = args.command == "toy" and args.toy_command in ("train-base", "quality")
    if not loud and not getattr(args, "verbose", False):
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"ip2p: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ip2p: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library chatter (deprecations, fallbacks, loading bars) is not for the user of a command line tool."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


if __name__ == "__main__":
    sys.exit(main())
