"""Sample weights that balance a toy pair dataset's edit types, for ``ip2p train --sample-weights``.

A synthesized dataset has the edit types its language model wrote, in its proportions (the toy one: a quarter
style changes, 9.5% removals); the toy test set asks for the six types in turn (additions and removals come out at
about 12% each, where a scene cannot take them). Each pair's type is read from its
instruction by the toy grammar (the images are not looked at). With ``power`` 1 every readable type gets the same
share of the draws; 0.5 moves half-way (in log terms) from the data's proportions, as multilingual models temper
language sampling; 0 keeps them. ``shares`` sets each type's share outright (for example a test set's own mix).
Pairs whose instruction the grammar cannot read keep weight 1, so they keep their
share of the draws.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from ip2p.datasets import open_edit_dataset
from ip2p.fileio import write_text_atomic

from .edits import edit_type_of

UNREADABLE = "unreadable"


def edit_types(instructions: Iterable[str]) -> list[str]:
    """Each instruction's edit type, or ``UNREADABLE``."""
    types = []
    for text in instructions:
        try:
            types.append(edit_type_of(str(text)))
        except (ValueError, KeyError, TypeError):
            types.append(UNREADABLE)
    return types


def parse_shares(text: str) -> dict[str, float]:
    """``"recolor=0.2,remove=0.11,..."`` -> {type: share}; ValueError on anything else."""
    shares: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            share = float(value) if sep else float("nan")
        except ValueError:
            share = float("nan")
        if not (math.isfinite(share) and share > 0) or not name.strip():
            raise ValueError(f"shares: expected TYPE=NUMBER above 0, got {part!r}")
        shares[name.strip()] = share
    if not shares:
        raise ValueError("shares: none given")
    return shares


def type_weights(
    types: Sequence[str], power: float = 1.0, shares: Mapping[str, float] | None = None
) -> list[float]:
    """One weight per example such that type t's share of the readable draws is proportional to n_t^(1-power), or
    to ``shares[t]`` when given (for every type in the data, and no other), and the readable examples keep their
    share of all draws (each unreadable one weighs 1)."""
    if not (math.isfinite(power) and power >= 0):
        raise ValueError(f"power must be a number of at least 0, got {power}")
    counts = Counter(t for t in types if t != UNREADABLE)
    readable = sum(counts.values())
    if not readable:
        raise ValueError("no instruction the toy grammar can read")
    if shares is not None:
        missing, unknown = sorted(set(counts) - set(shares)), sorted(set(shares) - set(counts))
        if missing or unknown:
            raise ValueError(
                f"shares must name every edit type of the data ({', '.join(sorted(counts))}); "
                f"missing: {', '.join(missing) or 'none'}; not in the data: {', '.join(unknown) or 'none'}"
            )
        mass = dict(shares)
    else:
        logs = {t: (1 - power) * math.log(n) for t, n in counts.items()}
        top = max(logs.values())
        mass = {t: math.exp(v - top) for t, v in logs.items()}  # in log space: no overflow for any power
    total = sum(mass.values())
    per_example = {t: readable * mass[t] / total / counts[t] for t in counts}
    return [1.0 if t == UNREADABLE else per_example[t] for t in types]


def write_type_weights(
    source: str | os.PathLike | Sequence[str],
    output: str | os.PathLike,
    power: float = 1.0,
    shares: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Write ``output`` (one weight a line, in the dataset's order, as ``ip2p train`` reads it) and return each
    type's pairs and share of the draws before and after."""
    data = open_edit_dataset(source)
    types = edit_types(data[i].edit_prompt for i in range(len(data)))
    weights = type_weights(types, power, shares)
    counts = Counter(types)
    drawn: Counter[str] = Counter()
    for t, w in zip(types, weights, strict=True):
        drawn[t] += w
    total = sum(weights)
    summary = {
        t: {"pairs": counts[t], "share": counts[t] / len(types), "share_drawn": drawn[t] / total}
        for t in sorted(counts)
    }
    how = f"shares {','.join(f'{t}={v:g}' for t, v in shares.items())}" if shares else f"power {power}"
    header = [f"# ip2p toy type-weights, {how}: {len(types)} pairs"]
    header += [
        f"# {t}: {s['pairs']} pairs, {s['share']:.1%} of the data, {s['share_drawn']:.1%} of the draws"
        for t, s in summary.items()
    ]
    write_text_atomic(output, "\n".join(header + [f"{w:.8g}" for w in weights]) + "\n")
    return summary
