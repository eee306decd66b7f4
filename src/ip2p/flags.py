"""Command-line flags from config dataclasses: one way for every subcommand.

A stage's config is a dataclass whose fields carry their help text (and, where needed, choices, a flag name or a
value parser) in ``field(metadata=...)``, written with :func:`option`. :func:`add_config_flags` turns it into
argparse flags; :func:`config_overrides` reads back the flags the user set. Every flag defaults to ``None`` on the
command line, so that a preset (or a model's own settings) can fill what the user left unset.

This module imports neither torch nor any other heavy library: ``ip2p --help`` builds its parsers from it.

Example::

    @dataclass
    class Config:
        steps: int = option("sampler steps", default=100)
        scheduler: str = option("sampler", default="euler", choices=("euler", "ddim"))

    add_config_flags(parser, Config)           # --steps N, --scheduler {euler,ddim}
    Config(**config_overrides(parser.parse_args(), Config))
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_SCALARS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str, "Path": str}


def option(
    help: str,
    *,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
    positional: bool = False,
    required: bool = False,
    group: str | None = None,
    repeat: bool = False,
    **field_kw: Any,
) -> Any:
    """A dataclass field with its command-line description.

    ``flag`` overrides the flag's name (default ``--field-name``); ``aliases`` are further names; ``parse`` turns the
    flag's text into the field's value (default: from the annotation: int, float, str, a list of them, bool);
    ``cli=False`` keeps the field off the command line. ``positional`` makes it a positional argument (optional
    unless ``required``); ``required`` makes a flag mandatory; ``group`` names the help section it is listed in. A ``list[...]``
    field takes several values after its flag, or with ``repeat`` one value each time the flag is given, or with a
    ``parse`` that returns the list, one text.
    Other keywords go to :func:`dataclasses.field`.
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "flag": flag,
        "aliases": tuple(aliases),
    }
    meta.update(parse=parse, metavar=metavar, cli=cli, positional=positional, required=required, group=group)
    meta["repeat"] = repeat
    return dataclasses.field(metadata=meta, **field_kw)


def _annotation(f: dataclasses.Field) -> str:
    if isinstance(f.type, str):  # postponed annotations
        text = f.type
    elif isinstance(f.type, type) and not hasattr(f.type, "__origin__"):  # int, float, str, bool, Path
        text = f.type.__name__
    else:  # list[str], int | None, typing.Optional[int], ...
        text = str(f.type).replace("builtins.", "")
    text = text.replace("typing.", "").strip()
    while text.startswith("Optional[") and text.endswith("]"):  # Optional[X]: X, whose flag may be left unset
        text = text[len("Optional[") : -1].strip()
    return text.replace(" | None", "").replace("None | ", "").strip()


def _flag_type(cls: type, f: dataclasses.Field, kind: str, many: bool) -> Callable[[str], Any]:
    """What turns a flag's text into the field's value: its ``parse``, else the scalar its annotation names."""
    if f.metadata.get("parse"):
        return f.metadata["parse"]
    inner = kind.split("[", 1)[1].split(",")[0].rstrip("]").strip() if many else kind
    if inner not in _SCALARS and f.metadata.get("choices"):
        return str  # e.g. a Literal alias: argparse checks the text against the choices
    if inner not in _SCALARS:
        raise TypeError(
            f"{cls.__name__}.{f.name}: no flag type for the annotation {kind!r} (known: int, float, str, Path, "
            "bool, lists of them, and texts with choices); give option(..., parse=...)"
        )
    return _SCALARS[inner]


def _default_text(f: dataclasses.Field) -> str | None:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return None
    if value is None or value == [] or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def flag_name(f: dataclasses.Field) -> str:
    """The flag of a config field: its ``flag`` metadata or ``--field-name``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type, exclude: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags (documented with :func:`option`, not excluded)."""
    skip = set(exclude)
    return [
        f
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and f.metadata.get("cli", True) and f.name not in skip
    ]


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add one flag per documented field of the dataclass ``cls`` to ``parser``.

    Each flag's default is ``None`` (unset); its help ends with the field's default, or with ``defaults[name]``
    where given (for example a preset's value). Booleans get ``--x/--no-x``; ``list[...]`` fields take several
    values; ``choices`` are checked by argparse.
    """
    shown = defaults or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in cli_fields(cls, exclude):
        meta = f.metadata
        target = parser
        if meta.get("group") and isinstance(parser, argparse.ArgumentParser):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        text = meta["help"].replace("%", "%%")  # argparse formats help with %
        default = str(shown[f.name]) if f.name in shown else _default_text(f)
        if default is not None and not meta.get("required"):
            text = f"{text} (default: {default.replace('%', '%%')})"
        kind = _annotation(f)
        many = kind.startswith(("list[", "tuple["))
        if many and meta.get("parse") and not meta.get("repeat"):
            many = False  # the parser turns one text into the whole list
        if meta.get("positional"):
            names = [f.name]
            kw: dict[str, Any] = {"default": None, "help": text}
            kw["nargs"] = (
                ("+" if meta.get("required") else "*") if many else (None if meta.get("required") else "?")
            )
        else:
            names = [flag_name(f), *meta.get("aliases", ())]
            kw = {"dest": f.name, "default": None, "help": text}
            if meta.get("required"):
                kw["required"] = True
            if kind == "bool" and meta.get("parse") is None:
                target.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
                continue
            if many and meta.get("repeat"):
                kw["action"] = "append"
            elif many:
                kw["nargs"] = "+"
        kw["type"] = _flag_type(cls, f, kind, many)
        if kw.get("nargs") is None:
            kw.pop("nargs", None)
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        elif meta.get("flag") and not meta.get("positional") and "choices" not in kw:
            kw["metavar"] = (
                meta["flag"].lstrip("-").replace("-", "_").upper()
            )  # --steps N: STEPS, not the field
        target.add_argument(*names, **kw)


def config_overrides(args: argparse.Namespace, cls: type, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``cls`` that the user set on the command line (flags left unset are ``None`` and omitted)."""
    return {
        f.name: getattr(args, f.name)
        for f in cli_fields(cls, exclude)
        if getattr(args, f.name, None) is not None
    }
