"""The toy world: coloured shapes on a 3x3 grid with exact ground truth.

- :mod:`.scene`: vocabulary and the frozen ``Scene``/``Shape`` model;
- :mod:`.render`: deterministic anti-aliased rendering;
- :mod:`.captions`: captions in a closed vocabulary, and their parser;
- :mod:`.edits`: edits with ground truth, and an instruction interpreter;
- :mod:`.seeds`: seed (caption, instruction, edited caption) triplets;
- :mod:`.oracle`: reading scenes back from pixels, judging images and edits;
- :mod:`.plugin`: the toy world as a plug-in of the core (``ip2p.registry``): the model names ``toy``, its test
  sets, the oracle metric, stage-1 sources; :mod:`.testsets` and :mod:`.lm` hold what it registers.

The core never imports this package; it reaches the toy world by name through ``ip2p.registry``.

The names below load on first use (``from ip2p.toy import render`` imports :mod:`.render` then), so that importing
a light submodule (the command line's settings) costs no numpy or PIL.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# name -> the submodule that defines it
_EXPORTS = {
    "captions": ("VOCABULARY", "caption", "caption_with_plan", "parse_caption", "random_plan", "tokenize"),
    "edits": ("EDIT_TYPES", "Edit", "apply_instruction", "edit_type_of", "parse_instruction", "random_edit"),
    "oracle": ("Detection", "Reading", "all_correct", "detect", "judge", "judge_edit", "read_scene"),
    "render": ("render", "render_array", "render_batch"),
    "scene": (
        "BACKGROUNDS",
        "COLORS",
        "KINDS",
        "POSITIONS",
        "SIZES",
        "STYLES",
        "Scene",
        "Shape",
        "random_scene",
    ),
    "seeds": ("read_jsonl", "seed_triplets", "write_jsonl"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [  # the names of _EXPORTS (a test keeps them equal)
    "BACKGROUNDS",
    "COLORS",
    "EDIT_TYPES",
    "KINDS",
    "POSITIONS",
    "SIZES",
    "STYLES",
    "VOCABULARY",
    "Detection",
    "Edit",
    "Reading",
    "Scene",
    "Shape",
    "all_correct",
    "apply_instruction",
    "caption",
    "caption_with_plan",
    "detect",
    "edit_type_of",
    "judge",
    "judge_edit",
    "parse_caption",
    "parse_instruction",
    "random_edit",
    "random_plan",
    "random_scene",
    "read_jsonl",
    "read_scene",
    "render",
    "render_array",
    "render_batch",
    "seed_triplets",
    "tokenize",
    "write_jsonl",
]

if TYPE_CHECKING:
    from .captions import VOCABULARY, caption, caption_with_plan, parse_caption, random_plan, tokenize
    from .edits import EDIT_TYPES, Edit, apply_instruction, edit_type_of, parse_instruction, random_edit
    from .oracle import Detection, Reading, all_correct, detect, judge, judge_edit, read_scene
    from .render import render, render_array, render_batch
    from .scene import BACKGROUNDS, COLORS, KINDS, POSITIONS, SIZES, STYLES, Scene, Shape, random_scene
    from .seeds import read_jsonl, seed_triplets, write_jsonl


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))


class _Package(types.ModuleType):
    """This package's module type. Importing a submodule sets it as an attribute of its package: ``render`` the
    function must keep its name against the submodule :mod:`.render` (as it did when this file imported it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOME and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
