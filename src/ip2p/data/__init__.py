"""Edit data in every common layout, through Hugging Face ``datasets``: detection and readers
(:mod:`ip2p.data.sources`, :mod:`ip2p.data.formats`), streaming over processes with exact resume
(:mod:`ip2p.data.streaming`), conversion between layouts (:mod:`ip2p.data.convert`), inspection and checks
(:mod:`ip2p.data.inspect`). Names load on first use, so that ``ip2p data --help`` (:mod:`ip2p.data.config`) imports
neither PIL nor ``datasets``.

Example::

    from ip2p.data import open_edit_dataset

    data = open_edit_dataset("my-pairs/")  # metadata.jsonl folder, Parquet, .tar shards, save_to_disk, hub id
    example = data[0]  # EditExample: original_image, edit_prompt, edited_image, captions
"""

from __future__ import annotations

import importlib

_NAMES = {
    "convert": ("WRITABLE", "convert_dataset", "image_to_cell", "write_parquet_shard"),
    "formats": (
        "DEFAULT_COLUMNS",
        "OFFICIAL_COLUMNS",
        "Columns",
        "DatasetError",
        "EditExample",
        "HFEditDataset",
        "OriginalFolderDataset",
    ),
    "inspect": ("check_dataset", "find_problems", "inspect_dataset"),
    "sources": ("FORMATS", "ParquetEditDataset", "detect_format", "open_edit_dataset"),
    "streaming": ("EditStream", "gather_stream_states", "open_edit_stream", "open_training_data"),
}
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'ip2p.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ip2p.data.{_MODULE_OF[name]}"), name)
