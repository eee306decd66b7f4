"""Stage 1's loop (paper section 3.1.1): captions in, filtered (input, instruction, edited caption) triplets out.

As the original ``generate_txt_dataset.py``: captions are visited in a seeded permutation (``np.random.seed(seed)``,
split into partitions), a caption seen before is skipped, each caption gets up to ``1 + num_retries`` tries until
its completion parses and is not a no-op, and the run stops once the output holds ``num_samples`` triplets.

Ours on top: batches (one backend call per batch), a sampling seed per caption and try derived from the run seed
and the caption text (so a caption's triplet does not depend on its batch), filters with counted reasons, captions
given up recorded as data in ``<output>.rejected.jsonl``, the resolved settings in ``<output>.config.json`` and the
counts in ``<output>.report.json``. Rerunning with the same output resumes: captions in either file are skipped
and the file ends as an uninterrupted run's would.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ip2p.fileio import write_json_atomic
from ip2p.text.backends import InstructionGenerator, ItemError
from ip2p.text.filters import BACKEND_ERROR, DUPLICATE_TRIPLET, FilterConfig, TripletFilter
from ip2p.text.format import Triplet, caption_seed
from ip2p.text.writer import JsonlLog


@dataclass
class GenerateConfig:
    """Settings of one generation run; defaults follow ``generate_txt_dataset.py`` where it has them."""

    output: str = "data/triplets.jsonl"
    seed: int = 0  # the caption order and every sampling seed derive from it
    num_samples: int | None = (
        None  # stop once the output holds this many triplets (original: 10000); None: all
    )
    num_retries: int = 3  # further tries of a caption whose completion is rejected (original: 3)
    shuffle: bool = True  # visit captions in a seeded permutation, as the original
    num_partitions: int = 1
    partition: int = 0
    batch_size: int = 16  # captions per backend call
    overwrite: bool = False  # start over instead of resuming
    filters: FilterConfig = field(default_factory=FilterConfig)

    def validate(self) -> None:
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {self.num_retries}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.num_partitions < 1 or not 0 <= self.partition < self.num_partitions:
            raise ValueError(
                f"partition {self.partition} of {self.num_partitions}: need 0 <= partition < num_partitions"
            )
        if Path(self.output).suffix != ".jsonl":
            raise ValueError(f"{self.output}: the output must be a .jsonl file")
        self.filters.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationReport:
    """What one run did, counted by filter reason."""

    captions: int = 0  # captions in this partition
    already_done: int = 0  # in the output or rejected file from an earlier run
    skipped: Counter[str] = field(default_factory=Counter)  # before generation: duplicate, length, blocklist
    rejected_attempts: Counter[str] = field(default_factory=Counter)  # every rejected try, by reason
    dropped: Counter[str] = field(default_factory=Counter)  # captions given up, by the last try's reason
    kept: int = 0  # triplets written by this run
    total: int = 0  # triplets in the output file
    backend_errors: int = 0  # captions left undone because the backend failed (a rerun tries again)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("skipped", "rejected_attempts", "dropped"):
            out[name] = dict(sorted(getattr(self, name).items()))
        return out

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in sorted((self.dropped + self.skipped).items())) or "none"
        return (
            f"kept {self.kept} (output holds {self.total}); already done {self.already_done}; "
            f"dropped: {drops}; backend errors {self.backend_errors}; {self.seconds:.1f}s"
        )


def sidecar(output: str | Path, kind: str) -> Path:
    """``triplets.jsonl`` -> ``triplets.{kind}.json[l]`` (kind: rejected, config, report)."""
    output = Path(output)
    suffix = ".jsonl" if kind == "rejected" else ".json"
    return output.with_name(f"{output.stem}.{kind}{suffix}")


def caption_order(
    n: int, seed: int, shuffle: bool = True, num_partitions: int = 1, partition: int = 0
) -> list[int]:
    """Indices of the captions this partition visits, in order: the original's
    ``np.array_split(np.random.permutation(n), num_partitions)[partition]`` after ``np.random.seed(seed)``."""
    import numpy as np  # here, not at the top: ``ip2p --help`` reads this package's settings without numpy

    order = np.random.RandomState(seed).permutation(n) if shuffle else np.arange(n)
    return [int(i) for i in np.array_split(order, num_partitions)[partition]]


def _identity(settings: dict[str, Any], config: GenerateConfig) -> dict[str, Any]:
    """The settings that decide the output's content; a resumed run must match them."""
    return {
        "backend": settings.get("backend"),
        "model": settings.get("model"),
        "sampling": settings.get("sampling"),
        "few_shot": settings.get("few_shot"),
        "seed": config.seed,
        "num_retries": config.num_retries,
        "shuffle": config.shuffle,
        "num_partitions": config.num_partitions,
        "partition": config.partition,
        "filters": config.filters.to_dict(),
    }


def generate_triplets(
    captions: Sequence[str],
    backend: InstructionGenerator,
    config: GenerateConfig,
    progress: bool = True,
) -> GenerationReport:
    """Write triplets for ``captions`` to ``config.output`` (resuming it), and return the counts.

    Each output line is ``{"input", "edit", "output", "provenance": {backend, model, sampling, seed,
    sample_seed, attempt}}``.

    Example:
        >>> from ip2p.text.backends import FakeGenerator
        >>> report = generate_triplets(["a cat"], FakeGenerator(), GenerateConfig(output="t.jsonl"))  # doctest: +SKIP
        >>> report.kept
        1
    """
    from tqdm.auto import tqdm

    config.validate()
    started = time.time()
    output = Path(config.output)
    files = {kind: sidecar(output, kind) for kind in ("rejected", "config", "report")}
    if config.overwrite:
        for path in (output, *files.values()):
            path.unlink(missing_ok=True)
    settings = backend.settings()
    identity = _identity(settings, config)
    if files["config"].is_file() and output.exists():
        saved = json.loads(files["config"].read_text(encoding="utf-8")).get("identity")
        if saved != identity:
            changed = sorted(k for k in identity if (saved or {}).get(k) != identity[k])
            raise ValueError(
                f"{output} was made with other settings ({', '.join(changed)}); use a new output or --overwrite"
            )
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        files["config"],
        {"identity": identity, "backend": settings, "generate": config.to_dict()},
        ensure_ascii=False,
    )

    filters = TripletFilter(config.filters)
    report = GenerationReport()
    kept_log, rejected_log = JsonlLog(output), JsonlLog(files["rejected"])
    done: set[str] = set()
    for row in kept_log.open():
        triplet = Triplet.from_dict(row)
        filters.keep(triplet)
        done.add(triplet.input.strip())
    done |= {str(row["input"]).strip() for row in rejected_log.open()}
    report.total = len(filters.triplets)
    provenance = {
        "backend": settings.get("backend"),
        "model": settings.get("model"),
        "sampling": settings.get("sampling"),
        "seed": config.seed,
    }

    order = caption_order(len(captions), config.seed, config.shuffle, config.num_partitions, config.partition)
    report.captions = len(order)
    bar = tqdm(total=len(order), desc="writing triplets", unit="caption", disable=not progress or None)
    pending: list[str] = []

    def full() -> bool:
        return config.num_samples is not None and report.total >= config.num_samples

    def flush() -> None:
        _run_batch(pending, backend, config, filters, report, provenance, kept_log, rejected_log)
        bar.update(len(pending))
        bar.set_postfix(kept=report.kept, total=report.total)
        pending.clear()

    try:
        for index in order:
            if full():
                break
            caption = captions[index]
            if caption.strip() in done:
                report.already_done += 1
                bar.update(1)
                continue
            reason = filters.check_caption(caption)
            if reason is not None:
                report.skipped[reason] += 1
                bar.update(1)
                continue
            pending.append(caption.strip())
            if len(pending) == config.batch_size:
                flush()
        if pending and not full():
            flush()
    finally:
        bar.close()
        kept_log.close()
        rejected_log.close()
        report.seconds = round(time.time() - started, 2)
        write_json_atomic(files["report"], report.to_dict(), ensure_ascii=False)
    return report


def _run_batch(
    batch: list[str],
    backend: InstructionGenerator,
    config: GenerateConfig,
    filters: TripletFilter,
    report: GenerationReport,
    provenance: dict[str, Any],
    kept_log: JsonlLog,
    rejected_log: JsonlLog,
) -> None:
    """Up to ``1 + num_retries`` tries per caption, then write kept and given-up captions in caption order."""
    accepted: dict[int, tuple[Triplet, int, int]] = {}  # index -> (triplet, attempt, sample seed)
    last: dict[int, tuple[str, str]] = {}  # index -> (reason, completion) of the last rejected try
    errors: dict[int, str] = {}
    todo = list(range(len(batch)))
    for attempt in range(config.num_retries + 1):
        if not todo:
            break
        seeds = [caption_seed(config.seed, batch[i], attempt) for i in todo]
        completions = backend.generate([batch[i] for i in todo], seeds)
        if len(completions) != len(todo):
            raise RuntimeError(
                f"backend {backend.name} returned {len(completions)} completions for {len(todo)}"
            )
        retry = []
        for i, seed, completion in zip(todo, seeds, completions, strict=True):
            if isinstance(completion, ItemError):
                errors[i] = completion.reason  # the backend already retried; leave the caption undone
                continue
            result = filters.check_output(batch[i], completion)
            if isinstance(result, Triplet):
                accepted[i] = (result, attempt, seed)
            else:
                report.rejected_attempts[result] += 1
                last[i] = (result, completion)
                retry.append(i)
        todo = retry

    kept_rows, rejected_rows = [], []
    for i, caption in enumerate(batch):  # caption order, so duplicates resolve as in an uninterrupted run
        if config.num_samples is not None and report.total >= config.num_samples:
            break  # the rest stays undone: a later run with a larger num_samples makes exactly these
        if i in errors:
            report.backend_errors += 1
            report.rejected_attempts[BACKEND_ERROR] += 1
        elif i in accepted:
            triplet, attempt, seed = accepted[i]
            if filters.is_duplicate(triplet):
                report.dropped[DUPLICATE_TRIPLET] += 1
                report.rejected_attempts[DUPLICATE_TRIPLET] += 1
                rejected_rows.append({"input": caption, "reason": DUPLICATE_TRIPLET, "attempts": attempt + 1})
                continue
            filters.keep(triplet)
            report.kept += 1
            report.total += 1
            row = {**triplet.to_dict(), "provenance": {**provenance, "sample_seed": seed, "attempt": attempt}}
            kept_rows.append(row)
        else:
            reason, completion = last[i]
            report.dropped[reason] += 1
            rejected_rows.append(
                {
                    "input": caption,
                    "reason": reason,
                    "attempts": config.num_retries + 1,
                    "last": completion[:2000],
                }
            )
    kept_log.append(kept_rows)
    rejected_log.append(rejected_rows)
