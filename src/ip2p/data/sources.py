"""Where edit data comes from: the layout of a source, detected from its path or named, and opened through Hugging
Face ``datasets`` (the original repository's folders through our own reader).

Layouts (``--data-format``; ``auto`` detects them in this order):

- ``original``: a folder with ``seeds.json`` (the original repository's, PAPER.md 3.6);
- ``disk``: a ``datasets`` ``save_to_disk`` folder (``state.json`` or ``dataset_dict.json``);
- ``imagefolder``: a folder with ``metadata.jsonl`` (or ``metadata.csv``), images named by ``*_file_name``
  columns (``original_image_file_name``, ``edited_image_file_name``) or ``file_name`` (read as ``image``), as
  diffusers' training scripts and their users lay them out;
- ``parquet``: Parquet files, globs or folders of them (our shards, the official dataset's, diffusers');
- ``webdataset``: ``.tar`` shards, one sample a key: ``KEY.original_image.png``, ``KEY.edited_image.png`` and
  ``KEY.json`` holding the texts (``ip2p data convert`` writes them so);
- ``hub``: a Hugging Face hub dataset id (``timbrooks/instructpix2pix-clip-filtered``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ip2p.data.formats import (
    Columns,
    DatasetError,
    EditExample,
    HFEditDataset,
    OriginalFolderDataset,
)

FORMATS = ("auto", "hub", "disk", "parquet", "imagefolder", "webdataset", "original")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _files(sources: Sequence[str], suffix: str) -> list[str]:
    """Every file with ``suffix`` among paths, folders (searched recursively) and globs, sorted within each."""
    out: list[str] = []
    for item in sources:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob(f"*{suffix}"))
            if not found:
                raise DatasetError(f"{path}: no {suffix} files in this folder")
            out += found
        elif path.is_file():
            out.append(str(path))
        else:
            matched = sorted(glob.glob(str(path)))
            if not matched:
                raise DatasetError(f"{item}: no such file, folder or glob match")
            out += matched
    return out


def detect_format(sources: Sequence[str]) -> str:
    """The layout of these sources (one of :data:`FORMATS` but ``auto``), from their paths alone."""
    first = Path(sources[0]).expanduser()
    if first.is_dir():
        if (first / "seeds.json").is_file():
            return "original"
        if (first / "dataset_dict.json").is_file() or (
            (first / "state.json").is_file() and (first / "dataset_info.json").is_file()
        ):
            return "disk"
        if any((first / d / f"metadata.{e}").is_file() for d in ("", "train") for e in ("jsonl", "csv")):
            return "imagefolder"
        if next(first.rglob("*.parquet"), None) is not None:
            return "parquet"
        if next(first.rglob("*.tar"), None) is not None:
            return "webdataset"
        raise DatasetError(
            f"{first}: no seeds.json, save_to_disk files, metadata.jsonl, .parquet or .tar files in this folder"
        )
    if first.is_file() or glob.glob(str(first)):
        name = first.name if first.is_file() else str(first)
        if name.endswith(".tar") or name.endswith(".tar*"):
            return "webdataset"
        if name in ("metadata.jsonl", "metadata.csv"):
            return "imagefolder"
        return "parquet"
    looks_local = str(sources[0]).startswith((".", "~")) or first.suffix in (
        ".parquet",
        ".tar",
        ".jsonl",
        ".csv",
    )
    if _HUB_ID.match(str(sources[0])) and not looks_local:
        return "hub"
    raise DatasetError(f"{sources[0]}: no such file, folder or glob match")


def _quiet_datasets():
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "reading edit datasets needs Hugging Face datasets: pip install 'ip2p[data]'"
        ) from None

    datasets.utils.logging.set_verbosity_error()
    # huggingface_hub warns of each failed request on its own; a failure becomes one DatasetError line here
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    return datasets


def load_local(builder: str, files: Sequence[str], name: str, streaming: bool = False):
    """Files read by one of ``datasets``' packaged builders (``parquet``, ``webdataset``), the train split."""
    datasets = _quiet_datasets()
    try:
        return datasets.load_dataset(
            builder, data_files={"train": list(files)}, split="train", streaming=streaming
        )
    except Exception as exc:  # datasets raises many types; the message is what the user can act on
        raise DatasetError(f"{name}: cannot be read as {builder} ({type(exc).__name__}: {exc})") from exc


def parquet_row_counts(files: Sequence[str | os.PathLike]) -> list[tuple[int, str]]:
    """(first row, file) of each Parquet file, from the files' footers; unreadable files are named errors."""
    import pyarrow.parquet as pq

    out, start = [], 0
    for path in files:
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:
            raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
        out.append((start, str(path)))
        start += rows
    return out


class ParquetEditDataset(HFEditDataset):
    """Parquet files in our, the official or diffusers' schema, read through ``datasets`` (an Arrow cache,
    memory-mapped: random access at any index without reading its row group again)."""

    def __init__(self, files: Sequence[str | os.PathLike], columns: Columns | None = None):
        self.paths = [Path(f) for f in files]
        if not self.paths:
            raise DatasetError("no Parquet files given")
        counts = parquet_row_counts(self.paths)
        name = str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent} (Parquet)"
        data = load_local("parquet", [str(p) for p in self.paths], name)
        super().__init__(data, columns, name, counts, base=self.paths[0].parent)


def open_hf(source: str | Sequence[str], format: str = "auto", split: str = "train", streaming: bool = False):
    """The ``datasets`` view of ``source`` (a ``Dataset``, or an ``IterableDataset`` when ``streaming``) and
    where its rows come from: (dataset, (first row, file) list, the folder relative image paths start from)."""
    sources = [str(source)] if isinstance(source, (str, os.PathLike)) else [str(s) for s in source]
    if not sources:
        raise DatasetError("no data given")
    format = detect_format(sources) if format == "auto" else format
    if format not in FORMATS:
        raise DatasetError(f"unknown data format {format!r}; choose one of {', '.join(FORMATS)}")
    datasets = _quiet_datasets()
    name = sources[0]
    if format == "original":
        raise DatasetError(f"{name}: the original repository's folders are read by OriginalFolderDataset")
    if format == "hub":
        try:
            return datasets.load_dataset(name, split=split, streaming=streaming), [], None
        except Exception as exc:
            raise DatasetError(f"{name}: cannot load this hub dataset ({type(exc).__name__}: {exc})") from exc
    if format == "disk":
        try:
            data = datasets.load_from_disk(name)
        except Exception as exc:
            raise DatasetError(f"{name}: not a save_to_disk folder ({type(exc).__name__}: {exc})") from exc
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise DatasetError(f"{name}: no split {split!r}; it has {', '.join(data)}")
            data = data[split]
        return (
            (data.to_iterable_dataset(num_shards=max(1, len(data.cache_files))) if streaming else data),
            [],
            None,
        )
    if format == "imagefolder":
        folder = Path(name).expanduser()
        folder = folder.parent if folder.is_file() else folder
        try:
            data = datasets.load_dataset(
                "imagefolder", data_dir=str(folder), split=split, streaming=streaming
            )
        except Exception as exc:
            raise DatasetError(
                f"{folder}: cannot be read as an imagefolder ({type(exc).__name__}: {exc})"
            ) from exc
        meta = next(
            (folder / f"metadata.{e}" for e in ("jsonl", "csv") if (folder / f"metadata.{e}").is_file()),
            folder,
        )
        return data, [(0, str(meta))], folder
    if format == "parquet":
        files = _files(sources, ".parquet")
        counts = parquet_row_counts(files)
        return load_local("parquet", files, name, streaming), counts, Path(files[0]).parent
    files = _files(sources, ".tar")
    return load_local("webdataset", files, name, streaming), [], Path(files[0]).parent


def open_edit_dataset(
    source: str | os.PathLike | Sequence[str],
    columns: Columns | None = None,
    format: str = "auto",
    split: str = "train",
) -> Sequence[EditExample]:
    """Random access to any layout of :data:`FORMATS` as :class:`EditExample`s. Example::

    data = open_edit_dataset("pairs/*.parquet")  # or a metadata.jsonl folder, .tar shards, a hub id, ...
    example = data[0]  # EditExample(original_image, edit_prompt, edited_image, ...)
    """
    sources = [str(source)] if isinstance(source, (str, os.PathLike)) else [str(s) for s in source]
    if not sources:
        raise DatasetError("no data given")
    format = detect_format(sources) if format == "auto" else format
    if format == "original":
        if len(sources) > 1:
            raise DatasetError("an original-format folder cannot be mixed with other sources")
        return OriginalFolderDataset(sources[0])
    if format == "parquet":
        return ParquetEditDataset(_files(sources, ".parquet"), columns)
    data, files, base = open_hf(sources, format, split)
    return HFEditDataset(data, columns, sources[0], files, base)
