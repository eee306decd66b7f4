"""``ip2p toy ...``: the toy world's subcommands, plugged into the ``ip2p`` command line by :func:`add_toy_parser`.

Each subcommand's flags come from its config dataclass (:mod:`ip2p.flags`); each command builds the config and
makes one library call. Nothing heavy is imported until a command runs, so ``ip2p toy --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ip2p.flags import add_config_flags, config_overrides, option
from ip2p.toy.quality_config import QualityConfig


class ToyCommandError(ValueError):
    """A toy command's bad input: printed by ``ip2p`` as one line, exit status 1."""


@dataclass
class SeedsConfig:
    output: str = option("JSONL file to write", default="", aliases=("-o",), required=True)
    n: int = option("number of triplets", default=700, flag="-n")
    seed: int = option("random seed", default=0)


@dataclass
class ExactPairsConfig:
    triplets: str = option("JSONL of {input, edit, output} lines", default="", positional=True, required=True)
    output: str = option("output folder (rerun to resume)", default="", aliases=("-o",), required=True)
    shard_size: int = option("pairs per shard", default=500)
    resolution: int = option("image side", default=64)


@dataclass
class JudgePairsConfig:
    data: list[str] = option(
        "Parquet files/folders (official schema) or an original-format folder",
        default_factory=list,
        positional=True,
        required=True,
    )
    filters: bool = option(
        "DATA holds every candidate with its CLIP scores (gen-pairs with thresholds of -1 and --top-k equal to "
        "--num-candidates): replay CLIP filter settings on it and judge what each keeps",
        default=False,
    )
    image_image: str = option("--filters: image-image thresholds to compare, comma-separated", default="0.75")
    json: bool = option("print the report as JSON", default=False)
    progress: bool = option("show a progress bar", default=True)


@dataclass
class TypeWeightsConfig:
    data: list[str] = option(
        "Parquet files/folders (official schema) or an original-format folder",
        default_factory=list,
        positional=True,
        required=True,
    )
    output: str = option("text file to write", default="", aliases=("-o",), required=True)
    power: float = option(
        "1: equal types; 0.5: half-way from the data's proportions; 0: unchanged", default=1.0
    )
    shares: str | None = option(
        "each type's share of the draws instead, as TYPE=SHARE for every type in the data, comma-separated "
        "(normalised; for example the test set's own mix)",
        default=None,
    )


@dataclass
class BundleConfig:
    base: str | None = option("trained base (text-to-image) pipeline folder to bundle", default=None)
    clip: str | None = option("trained CLIP folder to bundle", default=None)
    editor: str | None = option(
        "trained editor folder to bundle (with its edit_settings.json, else the toy preset's)", default=None
    )
    lm: str | None = option("trained language model folder to bundle", default=None)


@dataclass
class LmValidityConfig:
    model: str = option(
        "a folder saved by `ip2p finetune-text --preset toy`", default="", positional=True, required=True
    )
    n: int = option("held-out captions", default=300)
    seed: int = option("sampling seed", default=0)
    output: str | None = option("where to write the triplets (default: MODEL/eval.jsonl)", default=None)
    device: str = option("cpu, cuda or auto", default="auto")
    temperature: float = option("sampling temperature (the paper's)", default=0.7)
    caption_temperature: float | None = option(
        "the edited caption's temperature, after the instruction; 0: greedy (default: --temperature)",
        default=None,
    )


@dataclass
class ExperimentConfig:
    name: str = option(
        "the experiment's name: its folder under --root (rerun the same command to resume)",
        default="",
        positional=True,
        required=True,
    )
    root: str = option("folder of the experiments", default="runs/experiments")
    recipe: str | None = option(
        "JSON recipe {stage: {field: value}} over the default recipe (stages: text, pairs, judge, train, eval)",
        default=None,
    )
    set: list[str] = option(
        "one setting over the recipe, STAGE.FIELD=VALUE (repeatable), e.g. train.max_train_steps=1000 or "
        "pairs.num_candidates=4",
        default_factory=list,
        flag="--set",
        repeat=True,
        metavar="STAGE.FIELD=VALUE",
    )
    baseline: str | None = option(
        "another experiment's name (under --root) or folder: its results beside this one's, and which held-out "
        "edits flipped, with McNemar's test",
        default=None,
    )
    stages: str = option(
        "comma-separated stages to run, in order (text, pairs, judge, train, eval, sdedit: SDEdit on the base, "
        "shared by every experiment with the same evaluation settings)",
        default="text,pairs,judge,train,eval,sdedit",
    )
    show_recipe: bool = option("print the resolved recipe as JSON and exit", default=False)
    progress: bool = option("progress bars", default=True)


# -- the commands: a config in, one library call --------------------------------------------------------------
def seeds(config: SeedsConfig) -> int:
    from ip2p.toy.seeds import seed_triplets, write_jsonl

    path = write_jsonl(config.output, seed_triplets(config.n, seed=config.seed))
    print(f"wrote {config.n} triplets to {path}")
    return 0


def exact_pairs(config: ExactPairsConfig) -> int:
    from ip2p.toy.exact_pairs import exact_pairs as render_pairs

    try:
        manifest = render_pairs(config.triplets, config.output, config.shard_size, config.resolution)
    except (ValueError, OSError) as exc:
        raise ToyCommandError(str(exc)) from exc
    print(
        f"{manifest['kept']} of {manifest['total']} triplets rendered ({manifest.get('skipped', 0)} skipped); "
        f"output in {config.output}"
    )
    return 0


def judge_pairs(config: JudgePairsConfig) -> int:
    import ip2p.toy.judge_pairs as judge
    from ip2p.datasets import DatasetError

    try:
        thresholds = [float(t) for t in config.image_image.split(",") if t.strip()]
    except ValueError:
        raise ToyCommandError(
            f"--image-image: expected numbers separated by commas, got {config.image_image!r}"
        ) from None
    data = config.data if len(config.data) > 1 else config.data[0]
    try:
        if config.filters:
            report = judge.filter_report(data, judge.filter_settings(thresholds), progress=config.progress)
            text = judge.format_filter_report(report)
        else:
            report = judge.judge_pairs(data, progress=config.progress)
            text = judge.format_report(report)
    except (DatasetError, ValueError, OSError) as exc:
        raise ToyCommandError(str(exc)) from exc
    print(json.dumps(report, indent=2) if config.json else text)
    return 0


def type_weights(config: TypeWeightsConfig) -> int:
    from ip2p.datasets import DatasetError
    from ip2p.toy.balance import parse_shares, write_type_weights

    data = config.data if len(config.data) > 1 else config.data[0]
    try:
        shares = parse_shares(config.shares) if config.shares is not None else None
        summary = write_type_weights(data, config.output, config.power, shares)
    except (DatasetError, ValueError, OSError) as exc:
        raise ToyCommandError(str(exc)) from exc
    for name, row in summary.items():
        print(
            f"{name:12} {row['pairs']:7d} pairs  {row['share']:6.1%} of the data  {row['share_drawn']:6.1%} drawn"
        )
    print(f"weights written to {config.output}")
    return 0


def bundle(config: BundleConfig) -> int:
    from ip2p.toy.bundle import KINDS
    from ip2p.toy.bundle import bundle as copy_models

    sources = {kind: getattr(config, kind) for kind in KINDS if getattr(config, kind)}
    if not sources:
        raise ToyCommandError("name at least one of --base, --clip, --editor, --lm")
    for kind, path in copy_models(sources).items():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{kind}: {path} ({size / 2**20:.1f} MiB)")
    return 0


def lm_validity(config: LmValidityConfig) -> int:
    from ip2p.toy.lm import lm_validity as measure

    try:
        result = measure(
            config.model,
            n=config.n,
            seed=config.seed,
            output=config.output,
            device=config.device,
            temperature=config.temperature,
            caption_temperature=config.caption_temperature,
        )
    except ValueError as exc:
        raise ToyCommandError(str(exc)) from exc
    print(json.dumps(result, indent=2))
    return 0


def experiment(config: ExperimentConfig) -> int:
    """``toy experiment``: every stage of one recipe, then its report (printed and written)."""
    from pathlib import Path

    from ip2p.harness import Interrupted
    from ip2p.toy.experiment import Experiment, ExperimentError, resolve_recipe

    try:
        recipe = resolve_recipe(config.recipe, config.set)
        if config.show_recipe:
            print(json.dumps(recipe, indent=2))
            return 0
        baseline = None
        if config.baseline:
            baseline = Path(config.baseline)
            if not baseline.is_dir():
                baseline = Path(config.root) / config.baseline
        stages = [s.strip() for s in config.stages.split(",") if s.strip()]
        run = Experiment(config.root, config.name, recipe)
        report = run.run(stages, baseline=baseline, progress=config.progress)
    except ExperimentError as exc:
        raise ToyCommandError(str(exc)) from exc
    except Interrupted as exc:  # SIGINT/SIGTERM in training, after a checkpoint: the same command resumes
        print(f"ip2p toy experiment {config.name}: {exc}", file=sys.stderr)
        return 130
    print((run.dir / "report.md").read_text(encoding="utf-8"))
    print(f"report in {run.dir / 'report.md'} ({report['name']})")
    return 0


def train_base(args: argparse.Namespace) -> int:
    """``toy train-base``: flags of two configs (the run's and its training settings)."""
    from ip2p.harness import Interrupted
    from ip2p.toy.base.config import SettingsError, TrainBaseConfig, TrainSettings
    from ip2p.toy.base.run import train_base as run

    config = TrainBaseConfig(
        **config_overrides(args, TrainBaseConfig),
        settings=TrainSettings(**config_overrides(args, TrainSettings)),
    )
    try:
        result = run(config)
    except SettingsError as exc:  # a usage error, as argparse reports one
        print(f"ip2p toy train-base: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"ip2p toy train-base: {exc}", file=sys.stderr)
        return 130
    for name, path in result.items():
        print(f"{name}: {path}")
    return 0


def quality(config: QualityConfig) -> int:
    """``toy quality``: the model measured; the results printed as JSON."""
    from ip2p.toy.quality import measure_quality

    try:
        config.check()
    except ValueError as exc:
        raise ToyCommandError(str(exc)) from exc
    print(json.dumps(measure_quality(config), indent=1))
    return 0


# name -> (config class, command, help, description)
COMMANDS: dict[str, tuple[type, Callable[[Any], int], str, str | None]] = {
    "quality": (
        QualityConfig,
        quality,
        "measure the toy models' quality bars",
        "Measure a toy base model (a train-base output folder, a base pipeline folder or 'toy', the bundled one): "
        "the VAE's PSNR, CLIP's one-attribute retrieval, and text-to-image accuracy by the oracle; writes "
        "quality.json and a sample grid.",
    ),
    "seeds": (SeedsConfig, seeds, "write the toy seed triplets in the paper's JSONL format", None),
    "exact-pairs": (
        ExactPairsConfig,
        exact_pairs,
        "render the exact image pairs of toy triplets (the ablation of synthesized pairs)",
        "Parse each triplet's caption to its scene, apply the instruction exactly and render both: Parquet shards "
        "in the official schema, trainable with `ip2p train`. Unreadable or impossible triplets are skipped and "
        "counted.",
    ),
    "judge-pairs": (
        JudgePairsConfig,
        judge_pairs,
        "judge a pair dataset with the oracle: how faithful each edit type's pairs are",
        "For each pair, parse its input caption, apply its instruction and let the oracle read both images: the "
        "share of pairs whose input shows the caption, whose edit is right and whose other attributes are "
        "unchanged, per edit type.",
    ),
    "type-weights": (
        TypeWeightsConfig,
        type_weights,
        "sample weights that balance a toy pair dataset's edit types (for `ip2p train --sample-weights`)",
        "Read each pair's edit type from its instruction with the toy grammar and write one weight a line, in the "
        "dataset's order: with --power 1 every type is drawn equally often in training. Pairs with an instruction "
        "the grammar cannot read keep weight 1.",
    ),
    "bundle": (
        BundleConfig,
        bundle,
        "copy trained toy models into the package as float16 safetensors",
        "Write each named folder into ip2p/toy/weights (atomically per kind): the demo, the web app and the tests "
        "use these. An editor is bundled with its edit settings.",
    ),
    "experiment": (
        ExperimentConfig,
        experiment,
        "one experiment about the method: stage 1, stage 2, training and evaluation of a recipe, in one process",
        "Run a recipe (the default one, a --recipe file, --set STAGE.FIELD=VALUE changes) through every stage "
        "with the bundled toy models: the language model writes triplets, the base renders CLIP-filtered pairs "
        "(judged by the oracle), an editor trains from the base, and the oracle judges it on held-out edits beside "
        "SDEdit. Resumable: rerun the same command. Writes report.md: data quality and editor success per edit "
        "type with 95% intervals, the cost of each stage, and with --baseline the paired comparison.",
    ),
    "lm-validity": (
        LmValidityConfig,
        lm_validity,
        "measure a toy language model's validity on held-out toy captions",
        "Generate triplets for held-out toy captions with the model and read them with the toy grammar: the share "
        "of valid triplets before and after stage 1's filters, per edit type. Prints JSON.",
    ),
}


def add_toy_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``toy`` and its subcommands to the ``ip2p`` subparsers ``sub``."""
    from ip2p.toy.base.config import TrainBaseConfig, TrainSettings

    p = sub.add_parser(
        "toy",
        help="the toy world: train its miniature Stable Diffusion, measure it, write its seed triplets",
        description="Commands of the toy world. `ip2p toy train-base --out DIR` trains the VAE, CLIP and UNet from "
        "scratch with fixed seeds (resumable: run it again to continue); `ip2p toy quality --model DIR` measures "
        "the quality bars; `ip2p toy seeds -o FILE` writes the 700 seed triplets.",
    )
    toy = p.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    q = toy.add_parser(
        "train-base",
        allow_abbrev=False,
        help="train the toy VAE, CLIP and UNet from scratch (resumable)",
        description="Train the toy world's miniature Stable Diffusion: the VAE, then CLIP, then the UNet, with "
        "fixed seeds; run the same command again to resume. --export DIR writes the models for `ip2p toy bundle`.",
    )
    add_config_flags(q, TrainBaseConfig)
    add_config_flags(q.add_argument_group("training settings"), TrainSettings)
    q.set_defaults(func=train_base)
    for name, (cls, command, text, description) in COMMANDS.items():
        q = toy.add_parser(name, help=text, description=description or text, allow_abbrev=False)
        add_config_flags(q, cls)
        q.set_defaults(
            func=lambda args, cls=cls, command=command: command(cls(**config_overrides(args, cls)))
        )
