"""Filters of generated triplets (paper section 3.1.1), each a named reason so that a report can count them.

Before generation a caption is skipped if it was seen before (the original's ``caption_set``), is out of the length
bounds, or contains a blocklisted word (the original asked OpenAI's moderation endpoint instead). After generation
a completion is rejected (and retried, as the original retried) if it is unparsable, a no-op (the edited caption
equals the caption after ``strip().strip(".!?").lower()``), out of the length bounds or blocklisted. A triplet
equal (after that normalisation) to one already kept is dropped as a duplicate.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ip2p.text.format import Triplet, is_noop, normalize_caption, parse_completion

# Reasons a caption is skipped before any generation.
DUPLICATE_CAPTION = "duplicate_caption"
CAPTION_LENGTH = "caption_length"
CAPTION_BLOCKED = "caption_blocked"
# Reasons a completion is rejected (each retried, up to SamplingConfig.num_retries times).
UNPARSABLE = "unparsable"
NOOP = "noop"
LENGTH = "length"
BLOCKED = "blocked"
DUPLICATE_TRIPLET = "duplicate_triplet"
# The backend gave no completion (network errors after its own retries); the caption stays undone.
BACKEND_ERROR = "backend_error"

CAPTION_REASONS = (DUPLICATE_CAPTION, CAPTION_LENGTH, CAPTION_BLOCKED)
OUTPUT_REASONS = (UNPARSABLE, NOOP, LENGTH, BLOCKED, DUPLICATE_TRIPLET)


@dataclass
class FilterConfig:
    """Filter settings. Length bounds are characters (after stripping) of the caption, instruction and edited
    caption each; the original had none beyond max_tokens=256, so the defaults only drop degenerate text."""

    min_chars: int = 2
    max_chars: int = 1000
    blocklist: str | None = None  # a file: one word or phrase a line, '#' comments; matched as whole words

    def validate(self) -> None:
        if not 0 <= self.min_chars <= self.max_chars:
            raise ValueError(
                f"length bounds must satisfy 0 <= min <= max, got {self.min_chars}, {self.max_chars}"
            )
        if self.blocklist is not None and not Path(self.blocklist).is_file():
            raise ValueError(f"{self.blocklist}: no such blocklist file")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_blocklist(path: str | Path) -> list[str]:
    """Phrases from a blocklist file: one a line, blank lines and '#' comments ignored, lower-cased."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip().lower() for s in lines if s.strip() and not s.strip().startswith("#")]


def blocklist_pattern(phrases: list[str]) -> re.Pattern[str] | None:
    """A case-insensitive regex matching any phrase as whole words (``cat`` does not match ``category``)."""
    if not phrases:
        return None
    alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def triplet_key(triplet: Triplet) -> tuple[str, str, str]:
    """Duplicate-triplet key: the three texts normalised as the original compares captions."""
    return (
        normalize_caption(triplet.input),
        normalize_caption(triplet.edit),
        normalize_caption(triplet.output),
    )


class TripletFilter:
    """Stateful filters of one generation run: remembers captions and triplets seen so far.

    Example:
        >>> f = TripletFilter()
        >>> f.check_caption("a cat"), f.check_caption("a cat")
        (None, 'duplicate_caption')
        >>> f.check_output("a cat", "make it a dog\\n%%\\nA cat.")
        'noop'
    """

    def __init__(self, config: FilterConfig | None = None) -> None:
        self.config = config or FilterConfig()
        self.config.validate()
        phrases = read_blocklist(self.config.blocklist) if self.config.blocklist else []
        self.pattern = blocklist_pattern(phrases)
        self.captions: set[str] = set()
        self.triplets: set[tuple[str, str, str]] = set()

    def _length_ok(self, text: str) -> bool:
        return self.config.min_chars <= len(text.strip()) <= self.config.max_chars

    def _blocked(self, text: str) -> bool:
        return self.pattern is not None and self.pattern.search(text) is not None

    def check_caption(self, caption: str) -> str | None:
        """None if the caption should be edited (and remember it), else the reason to skip it."""
        key = caption.strip()
        if key in self.captions:
            return DUPLICATE_CAPTION
        self.captions.add(key)
        if not self._length_ok(caption):
            return CAPTION_LENGTH
        if self._blocked(caption):
            return CAPTION_BLOCKED
        return None

    def check_output(self, caption: str, completion: str) -> Triplet | str:
        """The triplet if the completion passes every per-item filter, else the reason it is rejected.
        Duplicates are checked separately (:meth:`is_duplicate`)."""
        parsed = parse_completion(completion)
        if parsed is None:
            return UNPARSABLE
        edit, output = parsed
        if is_noop(caption, output):
            return NOOP
        if not (self._length_ok(edit) and self._length_ok(output)):
            return LENGTH
        if self._blocked(edit) or self._blocked(output):
            return BLOCKED
        return Triplet(caption.strip(), edit, output)

    def is_duplicate(self, triplet: Triplet) -> bool:
        """True if an equal triplet (after normalisation) was kept before. Checked when writing, in caption order,
        so that which of two near-identical captions wins does not depend on batching."""
        return triplet_key(triplet) in self.triplets

    def keep(self, triplet: Triplet) -> None:
        """Remember a kept triplet (later equal ones are duplicates)."""
        self.captions.add(triplet.input.strip())
        self.triplets.add(triplet_key(triplet))
