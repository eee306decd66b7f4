"""The triplet text format of the paper's language model (section 3.1.1), and its parser.

A fine-tuning example is a prompt and a completion (original ``dataset_creation/prepare_for_gpt.py``)::

    prompt     = caption + "\\n##\\n"
    completion = instruction + "\\n%%\\n" + edited caption + "\\nEND"

At generation time the model is given the prompt and sampling stops at ``"\\nEND"``; the completion is accepted only
if it splits on ``"\\n%%\\n"`` into exactly two parts, and only if the edited caption differs from the caption after
normalisation (original ``dataset_creation/generate_txt_dataset.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

DELIMITER_0 = "\n##\n"  # ends the prompt (after the input caption)
DELIMITER_1 = "\n%%\n"  # separates the instruction from the edited caption
STOP = "\nEND"  # ends the completion; the sampler stops here


@dataclass(frozen=True)
class Triplet:
    """An (input caption, edit instruction, edited caption) triplet; JSONL keys ``input``, ``edit``, ``output``.

    Example:
        >>> Triplet("a cat", "make it a dog", "a dog").completion()
        'make it a dog\\n%%\\na dog\\nEND'
    """

    input: str
    edit: str
    output: str

    def prompt(self) -> str:
        return make_prompt(self.input)

    def completion(self) -> str:
        return make_completion(self.edit, self.output)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> Triplet:
        missing = [k for k in ("input", "edit", "output") if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(
                f"a triplet needs string fields input, edit, output; missing or not text: {missing}"
            )
        return cls(row["input"], row["edit"], row["output"])


def make_prompt(caption: str) -> str:
    """The language model's prompt for a caption: ``caption + "\\n##\\n"``."""
    return caption + DELIMITER_0


def make_completion(edit: str, output: str) -> str:
    """The training completion: ``edit + "\\n%%\\n" + output + "\\nEND"``."""
    return edit + DELIMITER_1 + output + STOP


def parse_completion(text: str) -> tuple[str, str] | None:
    """(instruction, edited caption) from a generated completion, or None if it is unparsable.

    As the original: cut at the stop sequence (a sampler may or may not return it), then accept only exactly two
    parts around ``"\\n%%\\n"``. Surrounding whitespace is stripped; an empty part is unparsable.

    Example:
        >>> parse_completion("make it red\\n%%\\na red car\\nEND")
        ('make it red', 'a red car')
        >>> parse_completion("make it red") is None
        True
    """
    if STOP in text:
        text = text[: text.index(STOP)]
    parts = text.split(DELIMITER_1)
    if len(parts) != 2:
        return None
    edit, output = parts[0].strip(), parts[1].strip()
    if not edit or not output:
        return None
    return edit, output


def normalize_caption(text: str) -> str:
    """The original's comparison key: ``text.strip().strip(".!?").lower()``."""
    return text.strip().strip(".!?").lower()


def is_noop(caption: str, edited: str) -> bool:
    """True when the edited caption equals the caption after :func:`normalize_caption` (rejected as a no-op)."""
    return normalize_caption(caption) == normalize_caption(edited)


def caption_seed(seed: int, caption: str, attempt: int = 0) -> int:
    """A 63-bit sampling seed for one caption and attempt, independent of batching and order.

    Deriving it from the caption text (not its position) makes a resumed or re-partitioned run draw the same
    samples for the same captions.
    """
    digest = hashlib.sha256(f"{seed}\0{attempt}\0{caption}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
