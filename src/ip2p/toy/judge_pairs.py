"""How faithful an image-pair dataset is, judged by the toy world's oracle; and what the CLIP filter buys.

Synthesized pairs (paper 3.1.2) approximate what the triplet says: the input image should show the input caption,
the edited image should show the edit applied and everything else unchanged. In the toy world every pair can be
checked exactly: the caption is parsed to its scene, the instruction applied to it, and the oracle reads both images
(``oracle.judge_edit``). Exact rendered pairs score 100% by construction; synthesized ones show what the generator
and the CLIP filter let through, per edit type. A pair's edited caption is checked too (``triplet_valid``: it
says what the instruction does to the input caption), which separates stage 1's errors from stage 2's.

``filter_report`` answers the paper's question of what the CLIP filter is worth: over a dataset holding *every*
candidate with its four CLIP scores (``gen-pairs`` with thresholds of -1 and ``--top-k`` equal to
``--num-candidates``), it replays filter settings (thresholds, top k per triplet) exactly as ``gen-pairs`` applies
them and reports the faithfulness of what each keeps.

    >>> report = judge_pairs("runs/toy-pairs")          # doctest: +SKIP
    >>> report["overall"]["faithful"]                   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ip2p.datasets import open_edit_dataset
from ip2p.pairs.clip_score import ClipThresholds

CHECKS = ("input_correct", "edit_correct", "preserved_vs_input", "faithful", "triplet_valid")
SCORES = ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")


@dataclass(frozen=True)
class _Judged:
    kind: str  # edit type
    verdict: dict[str, bool]  # CHECKS
    triplet: tuple[str, str, str]  # (input caption, instruction, edited caption): the candidates' group
    extra: dict  # the row's other columns (seed, CLIP scores, ...)


def _judge_example(example) -> tuple[str, dict[str, bool | None] | None] | None:
    """``(edit type, verdict)`` of one pair; None where the toy grammar cannot read its caption or instruction,
    and a verdict of None where it has no edited image."""
    from .captions import parse_caption
    from .edits import Edit, apply_instruction, edit_type_of
    from .oracle import judge_edit

    try:
        before = parse_caption(str(example.original_prompt))
        after = apply_instruction(before, example.edit_prompt)
        kind = edit_type_of(example.edit_prompt)
    except (ValueError, KeyError, TypeError):
        return None
    if example.edited_image is None:
        return kind, None
    valid: bool | None = None  # unknown where the dataset has no edited caption
    if example.edited_prompt is not None:
        try:
            valid = parse_caption(str(example.edited_prompt)) == after
        except (ValueError, KeyError, TypeError):
            valid = False
    verdict = judge_edit(
        example.original_image, example.edited_image, Edit(kind, example.edit_prompt, before, after)
    )
    verdict["faithful"] = (
        verdict["input_correct"] and verdict["edit_correct"] and verdict["preserved_vs_input"]
    )
    verdict["triplet_valid"] = valid
    return kind, verdict


def _judged_rows(
    source, progress: bool, counts: dict[str, int], unreadable: list[_Judged] | None = None
) -> Iterator[_Judged]:
    """The judged rows; rows whose caption or instruction the toy grammar cannot read are counted, and collected
    (without a verdict) in ``unreadable`` when given."""
    from tqdm.auto import tqdm

    data = open_edit_dataset(source)
    for example in tqdm(data, desc="judging pairs", unit="pair", disable=not progress or None):
        triplet = (str(example.original_prompt), str(example.edit_prompt), str(example.edited_prompt))
        judged = _judge_example(example)
        if judged is None or judged[1] is None:
            counts["unjudged"] += 1
            if judged is None and unreadable is not None:
                unreadable.append(_Judged("", {}, triplet, example.extra))
            continue
        yield _Judged(judged[0], judged[1], triplet, example.extra)


def _rates(judged: Sequence[_Judged]) -> dict:
    """``{"overall": {n, check: share}, "by_type": {type: {...}}}``."""
    fields = ("n", *CHECKS, "valid_known", "valid_and_faithful")
    totals: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for j in judged:
        for key in (j.kind, "overall"):
            totals[key]["n"] += 1
            for check in CHECKS:
                totals[key][check] += bool(j.verdict[check])
            totals[key]["valid_known"] += j.verdict["triplet_valid"] is not None
            totals[key]["valid_and_faithful"] += bool(j.verdict["faithful"] and j.verdict["triplet_valid"])

    def rates(counts: dict[str, float]) -> dict[str, float]:
        n, valid, known = counts["n"], counts["triplet_valid"], counts["valid_known"]
        return {
            "n": int(n),
            **{c: counts[c] / n if n else 0.0 for c in CHECKS},
            # over the pairs with an edited caption (None where none has one)
            "triplet_valid": valid / known if known else None,
            # stage 2 alone: the faithful share among pairs whose triplet stage 1 got right
            "faithful_given_valid": counts["valid_and_faithful"] / valid if valid else 0.0,
        }

    overall = totals.pop("overall", dict.fromkeys(fields, 0))
    return {"overall": rates(overall), "by_type": {kind: rates(totals[kind]) for kind in sorted(totals)}}


def judge_pairs(source: str | os.PathLike | Sequence[str], progress: bool = True) -> dict:
    """Oracle verdicts over a pair dataset (our Parquet or the official schema, or the original folders).

    Returns ``{"overall": {...}, "by_type": {type: {...}}, "unjudged": n}`` where each entry holds ``n`` and the
    fraction of pairs passing each check: ``input_correct`` (the input image shows the input caption),
    ``edit_correct`` (the edited image shows what the instruction changes), ``preserved_vs_input`` (everything else
    reads the same in both images), ``faithful`` (all three) and ``triplet_valid`` (the edited caption is the
    instruction applied to the input caption: stage 1 got it right). Pairs whose caption or instruction the toy
    grammar cannot read are counted as ``unjudged``.
    """
    counts = {"unjudged": 0}
    judged = list(_judged_rows(source, progress, counts))
    if not judged:
        raise ValueError(f"{source}: no pair could be judged ({counts['unjudged']} unreadable)")
    return {**_rates(judged), "unjudged": counts["unjudged"]}


@dataclass(frozen=True)
class FilterSetting:
    """What a filter keeps: candidates at or above ``thresholds`` (None: all), then the best ``top_k`` of each
    triplet by directional similarity (None: every passing one), as ``gen-pairs`` does."""

    name: str
    thresholds: ClipThresholds | None = None
    top_k: int | None = None


def filter_settings(image_image: Sequence[float] = (0.75,)) -> list[FilterSetting]:
    """No filter; the paper's thresholds with and without the top-1 choice; top 1 alone; then the paper's
    thresholds with each image-image threshold of ``image_image`` (and top 1)."""
    paper = ClipThresholds()
    settings = [
        FilterSetting("every candidate (no filter)"),
        FilterSetting("top 1 by directional similarity, no thresholds", None, 1),
        FilterSetting("paper's thresholds (0.2/0.2/0.75), every passing candidate", paper),
    ]
    for t in image_image:
        settings.append(
            FilterSetting(
                f"thresholds 0.2/0.2/{t:g} + top 1"
                + (" (gen-pairs' default)" if t == paper.image_image else ""),
                ClipThresholds(paper.image_caption, paper.directional, t),
                1,
            )
        )
    return settings


def _check_every_candidate(source) -> None:
    """Refuse ``gen-pairs`` output that was already filtered, where its ``config.json`` (beside or above the data
    folder) says so: replaying filters on it would report a filter's output as "every candidate"."""
    if not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return
    for folder in (source, os.path.dirname(os.path.abspath(source))):
        path = os.path.join(folder, "config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
            if isinstance(config, dict):
                config = config.get("identity", config)  # gen-pairs writes {"identity": {...settings}}
            if not isinstance(config, dict) or "num_candidates" not in config:
                return
            thresholds = [
                config.get(k, 1.0) for k in ("clip_threshold", "clip_dir_threshold", "clip_img_threshold")
            ]
            if max(thresholds) > -1 or config.get("top_k", 1) < config["num_candidates"]:
                raise ValueError(
                    f"{source}: these pairs were filtered by gen-pairs ({path}: thresholds {thresholds}, top_k "
                    f"{config.get('top_k')} of {config['num_candidates']}); the filter report needs every candidate "
                    "(thresholds of -1 and --top-k equal to --num-candidates)"
                )
            return


def filter_report(
    source: str | os.PathLike | Sequence[str],
    settings: Sequence[FilterSetting] | None = None,
    progress: bool = True,
) -> dict:
    """The oracle's verdicts on what each filter setting keeps from a dataset of every candidate.

    Returns ``{"triplets": n, "settings": [{"name", "thresholds", "top_k", "pairs", "unreadable",
    "triplets_covered", "valid_of_all", "overall", "by_type"}], "unjudged": n}``. ``triplets_covered`` is the
    share of triplets left with at least one pair (the yield); ``unreadable`` the kept pairs whose instruction
    the toy grammar cannot read, which ``valid_of_all`` counts as invalid triplets; ``overall`` and ``by_type``
    are :func:`judge_pairs`' rates over the readable kept pairs, with ``faithful_given_valid``, the faithful
    share among pairs of valid triplets (stage 2 alone).
    """
    import torch

    from ip2p.pairs.clip_score import ClipScores, passes_clip_filter, select_top_k

    _check_every_candidate(source)
    counts = {"unjudged": 0}
    unreadable: list[_Judged] = []
    judged = list(_judged_rows(source, progress, counts, unreadable))
    if not judged:
        raise ValueError(f"{source}: no pair could be judged ({counts['unjudged']} unreadable)")
    groups: dict[tuple[str, str, str], list[_Judged]] = defaultdict(list)
    for j in [*judged, *unreadable]:
        missing = [k for k in (*SCORES, "seed") if j.extra.get(k) is None]
        if missing:
            raise ValueError(
                f"{source}: a row of {j.triplet[0]!r} lacks {', '.join(missing)}; the filter report needs "
                "gen-pairs output with every candidate's scores (thresholds of -1 and --top-k equal to "
                "--num-candidates)"
            )
        groups[j.triplet].append(j)
    # each triplet's scores as gen-pairs holds them (float32), so that its own filter decides what passes
    scores = {
        key: ClipScores(
            *(torch.tensor([c.extra[k] for c in candidates], dtype=torch.float32) for k in SCORES)
        )
        for key, candidates in groups.items()
    }
    rows = []
    for setting in settings or filter_settings():
        kept: list[_Judged] = []
        for key, candidates in groups.items():
            if setting.thresholds is None:
                passed = [True] * len(candidates)
            else:
                passed = passes_clip_filter(scores[key], setting.thresholds).tolist()
            if setting.top_k is None:
                kept += [c for c, ok in zip(candidates, passed, strict=True) if ok]
            else:
                best = select_top_k(
                    [c.extra["clip_sim_dir"] for c in candidates],
                    passed,
                    [c.extra["seed"] for c in candidates],
                    setting.top_k,
                )
                kept += [candidates[i] for i in best]
        readable = [j for j in kept if j.verdict]
        valid = sum(bool(j.verdict["triplet_valid"]) for j in readable)
        rows.append(
            {
                "name": setting.name,
                "thresholds": None if setting.thresholds is None else vars(setting.thresholds),
                "top_k": setting.top_k,
                "pairs": len(kept),
                "unreadable": len(kept) - len(readable),
                "triplets_covered": len({j.triplet for j in kept}) / len(groups),
                # stage 1's validity over every kept pair, an unreadable instruction counting as invalid
                "valid_of_all": valid / len(kept) if kept else 0.0,
                **_rates(readable),
            }
        )
    return {"triplets": len(groups), "settings": rows, "unjudged": counts["unjudged"]}


def format_report(report: dict) -> str:
    """A table: one line per edit type and one overall."""
    lines = [f"{'edit type':14} {'n':>5} " + " ".join(f"{c:>19}" for c in CHECKS)]
    for name, row in [*report["by_type"].items(), ("overall", report["overall"])]:
        cells = ("n/a".rjust(19) if row[c] is None else f"{100 * row[c]:18.1f}%" for c in CHECKS)
        lines.append(f"{name:14} {row['n']:5d} " + " ".join(cells))
    if report["unjudged"]:
        lines.append(f"({report['unjudged']} pairs the toy grammar cannot read were not judged)")
    return "\n".join(lines)


def format_filter_report(report: dict) -> str:
    """A Markdown table: one line per filter setting, faithfulness overall and per edit type."""
    types = sorted({t for row in report["settings"] for t in row["by_type"]})
    head = [
        "filter",
        "pairs",
        "triplets kept",
        "valid triplets (unreadable: invalid)",
        "faithful",
        "faithful, valid triplets",
        *types,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in report["settings"]:
        o = row["overall"]
        cells = [
            row["name"],
            str(row["pairs"]),
            f"{100 * row['triplets_covered']:.0f}%",
            f"{100 * row['valid_of_all']:.1f}%",
            f"{100 * o['faithful']:.1f}%",
            f"{100 * o['faithful_given_valid']:.1f}%",
            *(f"{100 * row['by_type'][t]['faithful']:.0f}%" if t in row["by_type"] else "-" for t in types),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"({report['triplets']} triplets; per edit type: the faithful share"
        + (
            f"; {report['unjudged']} pairs the toy grammar cannot read were not judged)"
            if report["unjudged"]
            else ")"
        )
    )
    return "\n".join(lines)


class _Subset:
    """The rows ``indices`` of an opened dataset, as :func:`ip2p.data.convert.records` reads one."""

    def __init__(self, data, indices: Sequence[int]):
        self.data, self.indices = data, list(indices)
        self.columns = data.columns
        self.base = getattr(data, "base", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.data[self.indices[i]]

    def row(self, i: int):
        return self.data.row(self.indices[i])

    def where(self, i: int) -> str:
        return self.data.where(self.indices[i])


def oracle_filter(
    source: str | os.PathLike | Sequence[str], output: str | os.PathLike, progress: bool = True
) -> dict:
    """The oracle as the filter: write the pairs of ``source`` that it judges faithful (the input image shows its
    caption, the edit is right, the rest unchanged) into ``output`` as Parquet shards, atomically, every column
    kept. What no CLIP filter can exceed: the upper bound of filtering. Returns ``{"pairs": n in, "kept": n out}``.
    """
    from tqdm.auto import tqdm

    from ip2p.data.convert import convert_dataset

    data = open_edit_dataset(source)
    keep = []
    for i in tqdm(range(len(data)), desc="oracle filter", unit="pair", disable=not progress or None):
        judged = _judge_example(data[i])
        if judged is not None and judged[1] is not None and judged[1]["faithful"]:
            keep.append(i)
    if not keep:
        raise ValueError(f"{source}: the oracle judges none of its {len(data)} pairs faithful")
    convert_dataset(_Subset(data, keep), output, "parquet")
    return {"pairs": len(data), "kept": len(keep)}
