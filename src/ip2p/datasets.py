"""The names of :mod:`ip2p.data` under their first home (``ip2p.datasets``), for code that imports them from here."""

from ip2p.data.convert import image_to_cell, write_parquet_shard
from ip2p.data.formats import OFFICIAL_COLUMNS, Columns, DatasetError, EditExample, OriginalFolderDataset
from ip2p.data.sources import ParquetEditDataset, open_edit_dataset

__all__ = [
    "OFFICIAL_COLUMNS",
    "Columns",
    "DatasetError",
    "EditExample",
    "OriginalFolderDataset",
    "ParquetEditDataset",
    "image_to_cell",
    "open_edit_dataset",
    "write_parquet_shard",
]
