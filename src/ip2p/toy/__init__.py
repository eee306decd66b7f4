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
"""

from .captions import VOCABULARY, caption, caption_with_plan, parse_caption, random_plan, tokenize
from .edits import EDIT_TYPES, Edit, apply_instruction, edit_type_of, parse_instruction, random_edit
from .oracle import Detection, Reading, all_correct, detect, judge, judge_edit, read_scene
from .render import render, render_array, render_batch
from .scene import (
    BACKGROUNDS,
    COLORS,
    KINDS,
    POSITIONS,
    SIZES,
    STYLES,
    Scene,
    Shape,
    random_scene,
)
from .seeds import read_jsonl, seed_triplets, write_jsonl

__all__ = [
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
