"""ip2p.flags: command-line flags from config dataclasses, and back."""

import argparse
from dataclasses import dataclass

import pytest

from ip2p.flags import add_config_flags, config_overrides, option


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


@dataclass
class Job:
    source: str = option("what to read", default="", positional=True, required=True)
    output: str = option("where to write", default="", aliases=("-o",), required=True)
    steps: int = option("sampler steps", default=100, flag="--n-steps")
    scale: float = option("guidance, 100% strong", default=7.5, group="guidance")
    mode: str = option("how", default="fit", choices=("fit", "pad"))
    fast: bool = option("go fast", default=False)
    data: list[str] = option("files", default_factory=list)
    models: list[str] = option("a model (repeatable)", default_factory=list, flag="--model", repeat=True)
    times: list[int] = option("comma-separated", default_factory=lambda: [1, 2], parse=_ints)
    hidden: int = option("not a flag", default=3, cli=False)
    notes: str = "no help: no flag"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="job")
    add_config_flags(p, Job)
    return p


def test_unset_flags_keep_the_dataclass_defaults_and_set_ones_override_them():
    args = _parser().parse_args(["in.txt", "-o", "out"])
    assert Job(**config_overrides(args, Job)) == Job(source="in.txt", output="out")
    args = _parser().parse_args(
        ["in.txt", "--output", "out", "--n-steps", "5", "--scale", "2", "--mode", "pad", "--no-fast"]
        + ["--data", "a", "b", "--model", "m1", "--model", "m2", "--times", "3,4"]
    )
    job = Job(**config_overrides(args, Job))
    assert (job.steps, job.scale, job.mode, job.fast) == (5, 2.0, "pad", False)
    assert (job.data, job.models, job.times) == (["a", "b"], ["m1", "m2"], [3, 4])


def test_required_choices_and_types_are_checked_by_argparse(capsys):
    for argv in (
        ["in.txt"],
        ["-o", "x"],
        ["in.txt", "-o", "x", "--mode", "crop"],
        ["in.txt", "-o", "x", "--n-steps", "x"],
    ):
        with pytest.raises(SystemExit):
            _parser().parse_args(argv)


def test_help_lists_every_documented_field_with_its_default_and_group():
    text = _parser().format_help()
    assert "--n-steps N_STEPS" in text and "sampler steps (default: 100)" in text
    assert (
        "guidance, 100% strong (default: 7.5)" in text and "guidance:" in text
    )  # % survives; the group's title
    assert "--fast, --no-fast" in text and "(default: off)" in text
    assert "--hidden" not in text and "--notes" not in text
    shown = argparse.ArgumentParser()
    add_config_flags(shown, Job, defaults={"steps": "the preset's 20"})
    assert "(default: the preset's 20)" in shown.format_help()


def test_optional_annotations_take_their_inner_type_and_unknown_ones_fail_at_build_time():
    import typing

    @dataclass
    class Limits:
        limit: typing.Optional[int] = option("at most N", default=None)  # noqa: UP045 (the spelling under test)
        scales: typing.Optional[list[float]] = option("scales", default=None)  # noqa: UP045
        written: "Optional[int]" = option("a postponed annotation", default=None)  # noqa: F821, UP037
        ratio: int | float = option("a number read by its own parser", default=1, parse=float)
        mode: "Mode" = option("an alias of a Literal, with choices", default="fit", choices=("fit", "pad"))  # noqa: F821

    p = argparse.ArgumentParser()
    add_config_flags(p, Limits)
    args = p.parse_args(
        ["--limit", "3", "--scales", "1", "2.5", "--written", "4", "--ratio", "0.5", "--mode", "pad"]
    )
    assert config_overrides(args, Limits) == {
        "limit": 3,
        "scales": [1.0, 2.5],
        "written": 4,
        "ratio": 0.5,
        "mode": "pad",
    }
    with pytest.raises(SystemExit):
        p.parse_args(["--limit", "x"])

    @dataclass
    class Either:
        size: int | float = option("a number", default=1)

    with pytest.raises(TypeError, match=r"^Either.size: no flag type for the annotation 'int \| float'"):
        add_config_flags(argparse.ArgumentParser(), Either)
