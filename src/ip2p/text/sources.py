"""Where stage 1's text comes from: captions to edit, and seed triplets to fine-tune on (paper section 3.1.1).

Captions come from a text file (one a line), a JSONL, CSV or Parquet file (one column), a ``datasets`` name where
the hub is reachable (the paper used ``ChristophSchuhmann/improved_aesthetics_6.5plus``, column ``TEXT``), or
a caption source of ``ip2p.registry.CAPTION_SOURCES`` written ``NAME[:N]`` (the toy world's plug-in: ``toy[:N]``,
toy captions held out from the toy seed triplets). Seed triplets come from a JSONL file of ``{input, edit,
output}`` lines (the paper's 700 human-written ones live in ``shared/data``, never in the package), or a source of
``ip2p.registry.SEED_SOURCES`` (``toy[:N]``: the toy world's seed triplets, 700 by default).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ip2p.jsonl import iter_jsonl_objects
from ip2p.registry import CAPTION_SOURCES, SEED_SOURCES, RegistryError, find_counted
from ip2p.text.format import Triplet

# Columns tried, in order, when no column is named (the original read LAION's "TEXT").
CAPTION_COLUMNS = ("caption", "text", "TEXT", "input", "prompt")
CAPTION_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
# The paper's seed triplets, beside the repository (shared/data/PROVENANCE.md); read from there, never copied.
HUMAN_SEEDS = Path(__file__).resolve().parents[4] / "shared" / "data" / "human-written-prompts.jsonl"


class TextSourceError(ValueError):
    """Captions or seed triplets could not be read; the message names the source and the fix."""


# -- captions -----------------------------------------------------------------------------------------------
def read_captions(
    source: str | os.PathLike[str], column: str | None = None, split: str = "train"
) -> list[str]:
    """Captions from a file, a ``datasets`` name or a registered caption source, in file order, stripped, empty
    ones dropped.

    Args:
        source: ``.txt`` (one caption a line), ``.jsonl``, ``.csv`` or ``.parquet`` path; a datasets name; or
            ``NAME`` / ``NAME:N`` of ``ip2p.registry.CAPTION_SOURCES`` (``toy:N``: N held-out toy captions,
            default 1000).
        column: the caption column of a table; None tries ``caption``, ``text``, ``TEXT``, ``input``, ``prompt``.
        split: the split of a datasets name.

    Example:
        >>> read_captions("toy:2")
        ['...', '...']  # doctest: +SKIP
    """
    text = str(source)
    named = _find_source(CAPTION_SOURCES, text)
    if named is not None:
        _, captions, count = named
        return _clean(captions(count))
    path = Path(source)
    if path.exists():
        if path.is_dir():
            raise TextSourceError(f"{path}: is a folder; give a {', '.join(CAPTION_SUFFIXES)} file")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return _clean(path.read_text(encoding="utf-8").splitlines())
        if suffix == ".jsonl":
            return _column(_read_jsonl_rows(path), column, path)
        if suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as f:
                return _column(list(csv.DictReader(f)), column, path)
        if suffix == ".parquet":
            return _read_parquet(path, column)
        raise TextSourceError(
            f"{path}: unknown caption file type {suffix!r}; use {', '.join(CAPTION_SUFFIXES)}"
        )
    if path.suffix.lower() in CAPTION_SUFFIXES or text.startswith((".", "/", "~")):
        raise TextSourceError(f"{source}: no such file")
    return _read_dataset(text, column, split)


def _clean(captions) -> list[str]:
    return [c.strip() for c in captions if isinstance(c, str) and c.strip()]


def _pick_column(columns: list[str], column: str | None, where: object) -> str:
    if column is not None:
        if column not in columns:
            raise TextSourceError(
                f"{where}: no column {column!r}; columns are {', '.join(map(repr, columns))}"
            )
        return column
    for name in CAPTION_COLUMNS:
        if name in columns:
            return name
    raise TextSourceError(
        f"{where}: none of the caption columns {', '.join(CAPTION_COLUMNS)} found among "
        f"{', '.join(map(repr, columns))}; name one with --column"
    )


def _column(rows: list[dict], column: str | None, where: object) -> list[str]:
    if not rows:
        return []
    name = _pick_column(list(rows[0]), column, where)
    return _clean(row.get(name) for row in rows)


def _read_jsonl_rows(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl_objects(path, TextSourceError)]


def _read_parquet(path: Path, column: str | None) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise TextSourceError("reading Parquet needs pyarrow (pip install 'ip2p[data]')") from exc
    try:
        names = pq.read_schema(path).names
        name = _pick_column(names, column, path)
        return _clean(pq.read_table(path, columns=[name]).column(name).to_pylist())
    except TextSourceError:
        raise
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise TextSourceError(f"{path}: not a readable Parquet file ({exc})") from exc


def _read_dataset(name: str, column: str | None, split: str) -> list[str]:
    try:
        import datasets
    except ImportError as exc:
        raise TextSourceError(
            f"{name}: no such file (and `datasets` is not installed to load it by name)"
        ) from exc
    try:
        datasets.logging.set_verbosity_error()
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, no access: one line, not a traceback
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextSourceError(
            f"{name}: not a file, and the datasets hub could not load it ({reason[:200]}); give a local "
            ".txt/.jsonl/.csv/.parquet file"
        ) from exc
    return _clean(ds[_pick_column(list(ds.column_names), column, name)])


def _find_source(registry, text: str):
    try:
        return find_counted(registry, text)
    except RegistryError as exc:
        raise TextSourceError(str(exc)) from None


# -- seed triplets ------------------------------------------------------------------------------------------
def default_seeds() -> str:
    """The paper's human-written triplets where present beside the repository, else ``"toy"`` (the toy world's
    seed source)."""
    return str(HUMAN_SEEDS) if HUMAN_SEEDS.is_file() else "toy"


def read_seed_triplets(source: str | os.PathLike[str] | None = None) -> list[Triplet]:
    """Seed triplets for fine-tuning and few-shot prompts.

    Args:
        source: a JSONL file of ``{input, edit, output}`` lines, ``NAME`` or ``NAME:N`` of
            ``ip2p.registry.SEED_SOURCES`` (``"toy"``: the 700 toy seed triplets, ``seed_triplets(700, seed=0)``;
            ``"toy:N"``: ``seed_triplets(N, seed=0)``), or None for :func:`default_seeds`.
    """
    source = default_seeds() if source is None else str(source)
    named = _find_source(SEED_SOURCES, source)
    if named is not None:
        _, seeds, count = named
        return [Triplet.from_dict(t) for t in seeds(count)]
    path = Path(source)
    if not path.is_file():
        raise TextSourceError(
            f"{path}: no such seed file (a JSONL of input/edit/output lines, or a seed source: "
            f"{', '.join(SEED_SOURCES.names())})"
        )
    triplets = []
    for n, row in enumerate(_read_jsonl_rows(path), 1):
        try:
            triplets.append(Triplet.from_dict(row))
        except ValueError as exc:
            raise TextSourceError(f"{path}: triplet {n}: {exc}") from exc
    if not triplets:
        raise TextSourceError(f"{path}: no seed triplets")
    return triplets
