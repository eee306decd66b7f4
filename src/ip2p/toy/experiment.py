"""``ip2p toy experiment``: one experiment about the method, every stage run for real, judged by the oracle.

An experiment is a named recipe: the settings of stage 1 (the bundled language model writes triplets for held-out
toy captions), stage 2 (Prompt-to-Prompt pairs from the bundled base, CLIP-filtered), training (an editor from the
bundled base) and evaluation (the oracle on held-out edits, and the CLIP plane against SDEdit). Each stage is the
same library call as its command (``gen-text``, ``gen-pairs``, ``train``, ``evaluate``), run one after the other in
this process, each resumable, so that rerunning the command after a kill continues where it stopped. A change to
the recipe is a new experiment (a new name); the command refuses to resume a name with another recipe.

Layout of ``ROOT``::

    NAME/experiment.json   the resolved recipe (refused on resume when it differs)
    NAME/stages.json       per stage: seconds, cost (UNet evaluations or training examples), its folder
    NAME/report.md/.json   data quality and editor success per edit type with 95% intervals, cost per stage, and
                           the paired comparison with a baseline experiment
    stages/STAGE-DIGEST/   each stage's outputs (triplets.jsonl; pairs' shards and manifest; judge.json and, with
                           judge.oracle_filter, the faithful pairs; the editor's checkpoints and model; the
                           evaluations' records), named by a digest of the recipe of that stage and every stage
                           before it: an experiment that changes only the training shares the triplets and pairs of
                           one that ran before; SDEdit's stage, by the evaluation's settings alone, is shared by
                           every experiment (stage.json marks a finished stage)

Two experiments that run at the same time must not share an unfinished stage (run the baseline first).

Example::

    ip2p toy experiment no-filter --set pairs.clip_threshold=-1 --set pairs.clip_dir_threshold=-1 \\
        --set pairs.clip_img_threshold=-1 --set pairs.top_k=2 --baseline default
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from ip2p.fileio import write_json_atomic, write_text_atomic

STAGES = ("text", "pairs", "judge", "train", "eval", "sdedit")
# the recipe stages each stage's outputs depend on (judge reads the pairs). SDEdit runs on the base, not on the
# editor: its stage depends on the evaluation's settings alone, so every experiment with the same test set and
# strengths shares one run of it (the most UNet evaluations of an evaluation) instead of repeating it.
UPSTREAM = {
    "text": ("text",),
    "pairs": ("text", "pairs"),
    "judge": ("text", "pairs", "judge"),
    "train": ("text", "pairs", "judge", "train"),
    "eval": ("text", "pairs", "judge", "train", "eval"),
    "sdedit": ("eval",),
}
# evaluation settings that concern the editor alone, not SDEdit's shared stage
EDITOR_ONLY = ("model", "methods", "text_guidance", "image_guidance", "steps", "sweep")

# The default recipe: each stage's settings over its command's defaults (the keys are the fields of GenTextConfig,
# PairsConfig (+ "preset"), TrainConfig (+ "preset") and EvalRunConfig). The training settings are those of
# scripts/toy_editor.sh with a shorter schedule.
DEFAULT_RECIPE: dict[str, dict[str, Any]] = {
    "text": {"captions": "toy:600", "backend": "hf", "model": "toy", "batch_size": 64},
    "pairs": {"preset": "toy-fast", "model": "toy", "clip": "toy", "batch_size": 16, "shard_size": 32},
    "train": {
        "preset": "toy",
        "base_model": "toy",
        "cache_latents": True,
        "latent_target": "mean",
        "attention": "classic",
        "learning_rate": 1e-3,
        "lr_schedule": "cosine",
        "lr_warmup_steps": 100,
        "timestep_bias": "later",
        "timestep_bias_multiplier": 3.0,
        "timestep_bias_portion": 0.3,
        "max_train_steps": 850,
        "checkpointing_steps": 100,
        "validation_steps": 0,
        "num_validation_examples": 0,
    },
    # the editor at the bundled editor's settings (ip2p.toy.bundle.EDITOR_SETTINGS: 4 steps, text 3, image 2);
    # SDEdit from the base at three strengths, 20 steps
    "eval": {
        "test_set": "toy-brief:300",  # the held-out edits; SDEdit told brief captions, as the paper's comparison
        "methods": "ip2p,sdedit",
        "clip": "toy",
        "base": "toy",
        "sweep": "grid",
        "text_guidance": [3.0],
        "image_guidance": [2.0],
        "strengths": [0.4, 0.6, 0.8],
        "sdedit_steps": 20,
    },
}


class ExperimentError(ValueError):
    """A bad recipe, name or baseline: one line, exit status 1."""


@dataclass
class JudgeRecipe:
    """The judge stage's settings: the oracle reads every pair; with ``oracle_filter`` the editor trains only on
    the pairs it judges faithful (the upper bound of any filter)."""

    oracle_filter: bool = False


# -- the recipe ------------------------------------------------------------------------------------------------
def _stage_config_class(stage: str):
    if stage == "text":
        from ip2p.text.config import GenTextConfig

        return GenTextConfig
    if stage == "pairs":
        from ip2p.pairs.config import PairsConfig

        return PairsConfig
    if stage == "train":
        from ip2p.train_config import TrainConfig

        return TrainConfig
    if stage == "judge":
        return JudgeRecipe
    if stage == "eval":
        from ip2p.evaluate.config import EvalRunConfig

        return EvalRunConfig
    raise ExperimentError(f"unknown stage {stage!r}; the recipe's stages are text, pairs, judge, train, eval")


def _parse_value(text: str, annotation: Any) -> Any:
    """``text`` as the type of a config field: bool, int, float, str, a list of those, or None."""
    if text.lower() in ("none", "null") and (type(None) in get_args(annotation) or annotation is Any):
        return None
    kinds = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    kind = kinds[0]
    if get_origin(kind) is list:
        (inner,) = get_args(kind) or (str,)
        return [_parse_value(part, inner) for part in text.split(",") if part]
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
    return text


def parse_settings(settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["pairs.num_candidates=4", ...]`` -> ``{"pairs": {"num_candidates": 4}}``, each value typed by its
    config field; an unknown stage or field, or a value of the wrong type, is an :class:`ExperimentError`."""
    out: dict[str, dict[str, Any]] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ExperimentError(
                f"--set {setting!r}: write STAGE.FIELD=VALUE, e.g. train.max_train_steps=1000"
            )
        cls = _stage_config_class(stage)
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls)} | ({"preset"} if stage in ("pairs", "train") else set())
        name = name.strip().replace("-", "_")
        if name not in names:
            raise ExperimentError(f"--set {setting!r}: {stage} has no setting {name!r}")
        try:
            out.setdefault(stage, {})[name] = _parse_value(value.strip(), hints.get(name, str))
        except ValueError as exc:
            raise ExperimentError(f"--set {setting!r}: {exc}") from None
    return out


def resolve_recipe(
    recipe_file: str | None = None, settings: Sequence[str] = (), base: dict | None = None
) -> dict[str, dict[str, Any]]:
    """The default recipe, then a recipe file's stages (JSON ``{stage: {field: value}}``), then ``--set``."""
    recipe = copy.deepcopy(DEFAULT_RECIPE if base is None else base)
    layers: list[dict[str, dict[str, Any]]] = []
    if recipe_file:
        try:
            loaded = json.loads(Path(recipe_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ExperimentError(f"{recipe_file}: not a readable JSON recipe ({exc})") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, dict) for v in loaded.values()):
            raise ExperimentError(f"{recipe_file}: a recipe is a JSON object {{stage: {{field: value}}}}")
        for stage, values in loaded.items():
            cls = _stage_config_class(stage)
            known = {f.name for f in fields(cls)} | {"preset"}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ExperimentError(f"{recipe_file}: {stage} has no setting {unknown[0]!r}")
        layers.append(loaded)
    layers.append(parse_settings(settings))
    for layer in layers:
        for stage, values in layer.items():
            recipe.setdefault(stage, {}).update(values)
    return recipe


# -- the run ---------------------------------------------------------------------------------------------------
def cpu_precision() -> str:
    """bf16 where the CPU computes it natively (AVX-512 BF16 or AMX), else fp32 (bf16 is emulated and slow)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


class Experiment:
    """One experiment's folder: its recipe, its stages' records, its report."""

    def __init__(self, root: str | Path, name: str, recipe: dict[str, dict[str, Any]]):
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ExperimentError(f"experiment names are letters, digits, '-', '_' and '.'; got {name!r}")
        self.name, self.recipe = name, recipe
        self.root = Path(root)
        self.dir = self.root / name
        self.records_path = self.dir / "stages.json"

    def stage_dir(self, stage: str) -> Path:
        """Where ``stage``'s outputs live: ``ROOT/stages/STAGE-DIGEST``, the digest of the recipe of the stage
        and of every stage before it, so that experiments that differ only downstream share it."""
        import hashlib

        # a stage without settings stays out of the digest, so that adding a stage to the recipe's keys keeps the
        # folders of the experiments that ran before it
        upstream = {s: self.recipe[s] for s in UPSTREAM[stage] if self.recipe.get(s)}
        if stage == "sdedit":
            upstream = {"eval": {k: v for k, v in upstream.get("eval", {}).items() if k not in EDITOR_ONLY}}
        digest = hashlib.sha256(json.dumps(upstream, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return self.root / "stages" / f"{stage}-{digest}"

    def check_recipe(self) -> None:
        """Write the recipe of a new experiment; refuse to resume one that ran with another recipe."""
        path = self.dir / "experiment.json"
        if path.is_file():
            recorded = json.loads(path.read_text())["recipe"]
            if recorded != json.loads(json.dumps(self.recipe)):
                changed = sorted(
                    f"{stage}.{key}"
                    for stage in set(recorded) | set(self.recipe)
                    for key in set(recorded.get(stage, {})) | set(self.recipe.get(stage, {}))
                    if recorded.get(stage, {}).get(key) != self.recipe.get(stage, {}).get(key)
                )
                raise ExperimentError(
                    f"{self.dir} ran with another recipe (differs in {', '.join(changed)}); give this one a new name"
                )
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"name": self.name, "recipe": self.recipe})

    def records(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.records_path.read_text()) if self.records_path.is_file() else {}

    def record(self, stage: str, entry: dict[str, Any]) -> None:
        records = self.records()
        records[stage] = entry
        write_json_atomic(self.records_path, records)

    # the stages: each returns (cost, outputs) ---------------------------------------------------------------
    def run_text(self, progress: bool) -> dict[str, Any]:
        from ip2p.text.config import GenTextConfig
        from ip2p.text.generate import generate_triplets
        from ip2p.text.hf import HFGenerator
        from ip2p.text.sources import read_captions

        values = {k: v for k, v in self.recipe["text"].items()}
        config = GenTextConfig(**{**values, "output": str(self.stage_dir("text") / "triplets.jsonl")})
        generate = config.generate()
        generate.validate()
        sampling = config.sampling()
        sampling.validate()
        backend = HFGenerator.from_pretrained(
            config.model,
            sampling=sampling,
            batch_size=config.batch_size,
            device=config.device,
            dtype=config.dtype,
        )
        report = generate_triplets(read_captions(config.captions), backend, generate, progress=progress)
        return {"triplets": report.kept, "summary": report.summary()}

    def run_pairs(self, progress: bool) -> dict[str, Any]:
        from ip2p.pairs.config import apply_preset
        from ip2p.pairs.generate import generate_pairs

        values = dict(self.recipe["pairs"])
        preset = values.pop("preset", "toy-fast")
        values.setdefault("dtype", cpu_precision())
        config = apply_preset(
            preset,
            {
                **values,
                "triplets": str(self.stage_dir("text") / "triplets.jsonl"),
                "output": str(self.stage_dir("pairs")),
            },
        )
        config.validate()
        manifest = generate_pairs(config, progress=progress)
        totals = manifest["totals"]
        return {
            "pairs": totals.get("pairs"),
            "unet_evaluations": totals.get("unet_evaluations"),
            "summary": manifest["summary"],
        }

    def run_judge(self, progress: bool) -> dict[str, Any]:
        from ip2p.toy.judge_pairs import judge_pairs

        source = str(self.stage_dir("pairs") / "data")
        report = judge_pairs(source, progress=progress)
        write_json_atomic(self.stage_dir("judge") / "judge.json", report)
        out = {"faithful": report["overall"]["faithful"], "pairs": report["overall"]["n"]}
        if self.recipe.get("judge", {}).get("oracle_filter"):
            from ip2p.datasets import open_edit_dataset
            from ip2p.toy.judge_pairs import oracle_filter

            kept = self.stage_dir("judge") / "data"
            if kept.is_dir():  # written atomically: a folder that exists is whole (a resumed stage)
                out["kept"] = len(open_edit_dataset(str(kept)))
            else:
                out["kept"] = oracle_filter(source, kept, progress=progress)["kept"]
        return out

    def training_data(self) -> Path:
        """The pairs the editor trains on: the oracle's faithful ones with ``judge.oracle_filter``, else all."""
        if self.recipe.get("judge", {}).get("oracle_filter"):
            return self.stage_dir("judge") / "data"
        return self.stage_dir("pairs") / "data"

    def run_train(self, progress: bool) -> dict[str, Any]:
        from ip2p.edit_settings import write_edit_settings
        from ip2p.toy.bundle import EDITOR_SETTINGS
        from ip2p.train import train
        from ip2p.train_config import apply_preset

        values = dict(self.recipe["train"])
        preset = values.pop("preset", "toy")
        values.setdefault("mixed_precision", "bf16" if cpu_precision() == "bf16" else "no")
        config = apply_preset(
            preset,
            {
                **values,
                "data": [str(self.training_data())],
                "output_dir": str(self.stage_dir("train")),
            },
        )
        config.validate()
        folder = train(config)
        if not (Path(folder) / "edit_settings.json").is_file():  # edit at the bundled editor's settings
            write_edit_settings(folder, EDITOR_SETTINGS)
        examples = config.max_train_steps * config.train_batch_size * config.gradient_accumulation_steps
        return {"model": str(folder), "steps": config.max_train_steps, "training_examples": examples}

    def _evaluate(self, stage: str, model: str, methods: str, progress: bool) -> dict[str, Any]:
        from ip2p.evaluate.config import EvalRunConfig, run_evaluation

        values = {k: v for k, v in self.recipe["eval"].items() if k not in ("model", "methods")}
        if methods == "sdedit":
            values = {k: v for k, v in values.items() if k not in EDITOR_ONLY}
        config = EvalRunConfig(
            **{
                **values,
                "output": str(self.stage_dir(stage)),
                "model": model,
                "methods": methods,
                "progress": progress,
            }
        )
        result = run_evaluation(config, note=lambda text: print(text))
        identity = json.loads((self.stage_dir(stage) / "run.json").read_text())["identity"]
        return {"unet_evaluations": _evaluation_cost(result["summary"], identity), "report": result["report"]}

    def run_eval(self, progress: bool) -> dict[str, Any]:
        # eval.model names an editor made elsewhere (``toy``: the bundled one), judged on the same edits as a
        # reference; by default the one this experiment trained
        model = self.recipe["eval"].get("model") or str(self.stage_dir("train") / "model")
        return self._evaluate("eval", model, "ip2p", progress)

    def run_sdedit(self, progress: bool) -> dict[str, Any]:
        methods = [m.strip() for m in str(self.recipe["eval"].get("methods", "ip2p,sdedit")).split(",")]
        if "sdedit" not in methods:
            return {"skipped": "eval.methods has no sdedit"}
        return self._evaluate("sdedit", "toy", "sdedit", progress)

    def run(
        self,
        stages: Sequence[str] = STAGES,
        baseline: str | Path | None = None,
        progress: bool = True,
        say: Callable[[str], None] = print,
    ) -> dict[str, Any]:
        """Run (or resume) the chosen stages in order, then write the report (against ``baseline``, another
        experiment's folder, where given); returns it."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ExperimentError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGES)}")
        if baseline is not None and not (Path(baseline) / "stages.json").is_file():
            raise ExperimentError(f"baseline {baseline}: not an experiment that has run (no stages.json)")
        self.check_recipe()
        runners = {
            "text": self.run_text,
            "pairs": self.run_pairs,
            "judge": self.run_judge,
            "train": self.run_train,
            "eval": self.run_eval,
            "sdedit": self.run_sdedit,
        }
        for k, stage in enumerate(stages, 1):
            folder = self.stage_dir(stage)
            finished = folder / "stage.json"  # written when the stage completes: others may then share it
            shared = False
            if finished.is_file():
                entry = json.loads(finished.read_text())
                previous = self.records().get(stage, {})
                mine = previous.get("folder") == str(folder)
                shared = previous.get("shared", False) if mine else True
                how = "done" if mine else "shared with an earlier experiment, done"
                say(f"== {self.name} stage {k}/{len(stages)} {stage}: {how} in {entry['seconds']:.0f} s")
            else:
                say(f"== {self.name} stage {k}/{len(stages)} {stage} ({time.strftime('%H:%M:%S')})")
                folder.mkdir(parents=True, exist_ok=True)
                start = time.perf_counter()
                outputs = runners[stage](progress)
                entry = {"seconds": round(time.perf_counter() - start, 1), **outputs}
                write_json_atomic(finished, entry)
            # a stage another experiment ran costs this one nothing: the report counts it apart
            self.record(stage, {**entry, "folder": str(folder), "shared": shared})
        report = build_report(self.dir, baseline)
        write_json_atomic(self.dir / "report.json", report)
        other = build_report(baseline) if baseline is not None else None
        write_text_atomic(self.dir / "report.md", format_report(report, other))
        return report


def _evaluation_cost(summary: list[dict], identity: dict[str, Any]) -> int:
    """UNet evaluations of an evaluation run (``run.json``'s identity gives each method's steps): the editor's
    three branches at every step, SDEdit's two branches over the strength's share of its steps."""
    methods = identity["methods"]
    total = 0
    for row in summary:
        n = int(row.get("n") or 0)
        if row["method"] == "ip2p":
            total += n * int(methods["ip2p"]["num_inference_steps"]) * 3
        elif row["method"] == "sdedit":
            steps = int(methods["sdedit"]["steps"])
            total += n * max(1, round(steps * float(row.get("strength", 1.0)))) * 2
    return total


# -- the report ------------------------------------------------------------------------------------------------
def _records_of(stages: dict[str, Any], method: str) -> tuple[list[dict], str | None]:
    """The evaluation records of ``method`` at its first setting (the editor's own), from an experiment's
    ``stages.json``."""
    from ip2p.evaluate.run import read_records

    if "eval" not in stages:
        return [], None
    records = [r for r in read_records(stages["eval"]["folder"]) if r["method"] == method]
    if not records:
        return [], None
    setting = records[0]["setting"]
    return [r for r in records if r["setting"] == setting], setting


def build_report(folder: str | Path, baseline: str | Path | None = None) -> dict[str, Any]:
    """An experiment's report from its folder: data quality and editor success per edit type (with 95%
    intervals), the cost of each stage, and against ``baseline`` (another experiment's folder) the paired
    comparison of editor success on the shared items."""
    from ip2p.evaluate.stats import paired_comparison, wilson_interval

    folder = Path(folder)
    stages = json.loads((folder / "stages.json").read_text()) if (folder / "stages.json").is_file() else {}
    report: dict[str, Any] = {"name": folder.name, "stages": stages}
    judge_path = Path(stages["judge"]["folder"]) / "judge.json" if "judge" in stages else folder / "none"
    if judge_path.is_file():
        judged = json.loads(judge_path.read_text())
        report["data"] = {
            kind: {"n": row["n"], "faithful": row["faithful"], "edit_correct": row["edit_correct"]}
            for kind, row in [*judged["by_type"].items(), ("overall", judged["overall"])]
        }
    records, setting = _records_of(stages, "ip2p")
    if records:
        editor: dict[str, Any] = {"setting": setting}
        kinds = sorted({r.get("edit_type") for r in records if r.get("edit_type")})
        for kind in [*kinds, "overall"]:
            mine = [r for r in records if kind == "overall" or r.get("edit_type") == kind]
            hits = [r["oracle_success"] for r in mine if r.get("oracle_success") is not None]
            if hits:
                low, high = wilson_interval(sum(hits), len(hits))
                editor[kind] = {"n": len(hits), "success": sum(hits) / len(hits), "ci95": [low, high]}
        report["editor"] = editor
    if baseline is not None:
        base_stages = json.loads((Path(baseline) / "stages.json").read_text())
        base_records, _ = _records_of(base_stages, "ip2p")
        if records and base_records:
            comparison = paired_comparison(base_records, records, "oracle_success")
            report["baseline"] = {
                "name": Path(baseline).name,
                "n": comparison.n,
                "baseline_success": comparison.a_rate,
                "success": comparison.b_rate,
                "difference": comparison.difference,
                "difference_ci95": list(comparison.difference_interval()),
                "p_value": comparison.p_value,
                "significant": comparison.significant,
                "flipped_to_right": list(comparison.b_only_items),
                "flipped_to_wrong": list(comparison.a_only_items),
                "text": comparison.describe(Path(baseline).name, folder.name),
            }
    return report


def format_report(report: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The report as Markdown: cost per stage, data quality and editor success per edit type (beside the
    baseline's where given), and the paired comparison."""
    lines = [
        f"# Experiment {report['name']}",
        "",
        "## Cost",
        "",
        "| stage | seconds | cost |",
        "| --- | --- | --- |",
    ]
    for stage, entry in report["stages"].items():
        cost = (
            f"{entry['unet_evaluations']:,} UNet evaluations"
            if entry.get("unet_evaluations")
            else f"{entry['training_examples']:,} training examples"
            if entry.get("training_examples")
            else ""
        )
        if entry.get("shared"):
            cost += " (shared: run by an earlier experiment)"
        lines.append(f"| {stage} | {entry['seconds']:.0f} | {cost.strip()} |")
    total = sum(e["seconds"] for e in report["stages"].values() if not e.get("shared"))
    lines += [f"| this experiment's own | {total:.0f} ({total / 60:.1f} min) | |", ""]
    other = baseline or {}
    if "data" in report:
        lines += ["## Data quality (the oracle on the pairs)", ""]
        head = "| edit type | pairs | faithful |" + (
            f" {other['name']}: faithful |" if "data" in other else ""
        )
        lines += [head, "|" + " --- |" * (head.count("|") - 1)]
        for kind, row in report["data"].items():
            cell = f" {other['data'][kind]['faithful']:.1%} |" if kind in other.get("data", {}) else ""
            lines.append(f"| {kind} | {row['n']} | {row['faithful']:.1%} |{cell}")
        lines.append("")
    if "editor" in report:
        lines += [f"## Editor success (the oracle on held-out edits; {report['editor']['setting']})", ""]
        head = "| edit type | n | success [95% interval] |" + (
            f" {other['name']} |" if "editor" in other else ""
        )
        lines += [head, "|" + " --- |" * (head.count("|") - 1)]
        for kind, row in report["editor"].items():
            if kind == "setting":
                continue
            low, high = row["ci95"]
            cell = ""
            if kind in other.get("editor", {}):
                b = other["editor"][kind]
                cell = f" {b['success']:.1%} [{b['ci95'][0]:.1%}, {b['ci95'][1]:.1%}] |"
            lines.append(f"| {kind} | {row['n']} | {row['success']:.1%} [{low:.1%}, {high:.1%}] |{cell}")
        lines.append("")
    if "baseline" in report:
        lines += ["## Against the baseline", "", report["baseline"]["text"], ""]
    evaluations = [report["stages"].get(s, {}).get("report") for s in ("eval", "sdedit")]
    if any(evaluations):
        lines += [
            "## The evaluation (the CLIP plane: the editor, then SDEdit; `ip2p evaluate`'s summaries)",
            "",
        ]
        for evaluation in filter(None, evaluations):
            lines += ["```", evaluation, "```", ""]
    return "\n".join(lines)
