"""Stage 1 of dataset synthesis (paper section 3.1.1): a language model writes (caption, instruction, edited
caption) triplets.

- :mod:`.format`: the prompt/completion format (``\\n##\\n``, ``\\n%%\\n``, ``\\nEND``) and its parser;
- :mod:`.backends`: the :class:`InstructionGenerator` protocol, sampling settings, a deterministic fake;
- :mod:`.hf`: transformers causal LMs (frequency penalty, per-caption seeds, stop at END);
- :mod:`.openai_backend`: OpenAI-compatible chat endpoints, few-shot;
- :mod:`.finetune`: fine-tuning on seed triplets (full or LoRA, accelerate, resumable);
- :mod:`.sources`: captions and seed triplets in; :mod:`.filters`: counted filters;
- :mod:`.writer`: the resumable JSONL file; :mod:`.generate`: the loop.

Example::

    from ip2p.text import FakeGenerator, GenerateConfig, generate_triplets
    report = generate_triplets(["a cat on a sofa"], FakeGenerator(), GenerateConfig(output="triplets.jsonl"))
"""

from ip2p.text.backends import FakeGenerator, InstructionGenerator, ItemError, SamplingConfig
from ip2p.text.filters import FilterConfig, TripletFilter
from ip2p.text.format import (
    DELIMITER_0,
    DELIMITER_1,
    STOP,
    Triplet,
    is_noop,
    normalize_caption,
    parse_completion,
)
from ip2p.text.generate import GenerateConfig, GenerationReport, generate_triplets
from ip2p.text.sources import read_captions, read_seed_triplets

__all__ = [
    "DELIMITER_0",
    "DELIMITER_1",
    "STOP",
    "FakeGenerator",
    "FilterConfig",
    "GenerateConfig",
    "GenerationReport",
    "InstructionGenerator",
    "ItemError",
    "SamplingConfig",
    "Triplet",
    "TripletFilter",
    "generate_triplets",
    "is_noop",
    "normalize_caption",
    "parse_completion",
    "read_captions",
    "read_seed_triplets",
]
