"""The language-model interface of stage 1 (paper section 3.1.1), its sampling settings, and a deterministic fake.

A backend turns captions into raw completions (``instruction + "\\n%%\\n" + edited caption``). Parsing,
retries on unparsable or no-op output, filtering and writing live in :mod:`ip2p.text.generate`, so every backend
(a local transformers model, an OpenAI-compatible endpoint, the fake) shares them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ip2p.text.format import DELIMITER_1


@dataclass
class SamplingConfig:
    """Sampling settings; defaults are the original ``generate_txt_dataset.py`` call to GPT-3."""

    temperature: float = 0.7
    top_p: float = 1.0
    frequency_penalty: float = (
        0.1  # OpenAI's definition: logit -= 0.1 x times the token was already generated
    )
    presence_penalty: float = 0.0
    max_new_tokens: int = 256  # the original's max_tokens
    # The edited caption's temperature, after "\n%%\n" (None: ``temperature`` throughout, as the paper). The
    # instruction carries the diversity; the edited caption should follow from it, so 0 (greedy) copies it best.
    caption_temperature: float | None = None

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.caption_temperature is not None and self.caption_temperature < 0:
            raise ValueError(f"caption temperature must be >= 0, got {self.caption_temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ItemError:
    """A completion that could not be obtained (e.g. the endpoint kept failing). Not fatal: the caption is counted
    and left undone, so a rerun tries it again."""

    reason: str


class BackendError(RuntimeError):
    """A failure that no retry will fix (bad key, unknown model, bad request): stops the run."""


Completion = str | ItemError


@runtime_checkable
class InstructionGenerator(Protocol):
    """Anything that writes completions for captions.

    ``generate(captions, seeds)`` returns one completion per caption, in order: the text after the prompt
    ``caption + "\\n##\\n"`` up to (and optionally including) ``"\\nEND"``. ``seeds[i]`` is the sampling seed of
    caption ``i``; a backend should make its draw for a caption depend on that seed only, not on the batch.
    ``name`` and ``model`` are recorded in every output line; ``settings()`` is saved beside the output.
    """

    name: str
    model: str

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> list[Completion]: ...

    def settings(self) -> dict[str, Any]: ...


FAKE_EDITS = ("make it red", "add a hat", "turn it into a painting", "make it night", "add snow")


def _fake_respond(caption: str, seed: int) -> str:
    rng = random.Random(seed)
    edit = rng.choice(FAKE_EDITS)
    return f"{edit}{DELIMITER_1}{caption}, {edit.split(' ', 1)[1]}"


class FakeGenerator:
    """A deterministic backend for tests: ``respond(caption, seed) -> completion``.

    The default response appends the chosen edit to the caption, e.g. ``"make it red\\n%%\\na cat, it red"``.

    Example:
        >>> fake = FakeGenerator(lambda caption, seed: "oops")
        >>> fake.generate(["a cat"], [0])
        ['oops']
    """

    name = "fake"

    def __init__(self, respond: Callable[[str, int], Completion] | None = None, model: str = "fake") -> None:
        self.respond = respond or _fake_respond
        self.model = model
        self.calls: list[list[str]] = []  # the batches it was asked for, for tests

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> list[Completion]:
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        self.calls.append(list(captions))
        return [self.respond(c, s) for c, s in zip(captions, seeds, strict=True)]

    def settings(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}
