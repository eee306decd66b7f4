"""Writer of the original repository's dataset folders (PAPER.md 3.6), read back by
``ip2p.datasets.OriginalFolderDataset`` and by the original ``edit_dataset.py``::

    out_dir/
      {i:07d}/                      # i = the triplet's line in the input (created even if nothing passed)
        prompt.json                 # the whole input record
        {seed}_0.jpg, {seed}_1.jpg  # JPEG quality 100
        metadata.jsonl              # {seed, p2p_threshold, cfg_scale, clip_sim_0, clip_sim_1, clip_sim_dir, clip_sim_image}
      seeds.json                    # [[dir, [seed, ...]], ...] as prepare_dataset.py lists it
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ip2p.fileio import atomic_dir, write_text_atomic

METADATA_KEYS = (
    "seed",
    "p2p_threshold",
    "cfg_scale",
    "clip_sim_0",
    "clip_sim_1",
    "clip_sim_dir",
    "clip_sim_image",
)


def item_dir_name(index: int) -> str:
    return f"{index:07d}"


def write_item_folder(
    root: str | os.PathLike,
    index: int,
    record: dict[str, Any],
    pairs: Sequence[tuple[dict[str, Any], Image.Image, Image.Image]],
) -> Path:
    """Write item ``index``'s folder atomically (a temporary folder renamed into place, replacing an old one).

    Args:
        root: the dataset folder.
        index: the triplet's line in the input.
        record: the input record, dumped as prompt.json.
        pairs: (metadata, image 0, image 1) of each kept candidate, best first; metadata holds ``METADATA_KEYS``.
    """
    final = Path(root) / item_dir_name(index)
    with atomic_dir(final) as tmp:  # a rerun of an interrupted shard: the new folder replaces the old
        (tmp / "prompt.json").write_text(json.dumps(record, ensure_ascii=False))
        lines = []
        for meta, image_0, image_1 in pairs:
            seed = int(meta["seed"])
            image_0.save(tmp / f"{seed}_0.jpg", quality=100)
            image_1.save(tmp / f"{seed}_1.jpg", quality=100)
            lines.append(json.dumps({k: meta[k] for k in METADATA_KEYS}))
        (tmp / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
    return final


def write_seeds_json(root: str | os.PathLike) -> Path:
    """List every item folder's kept seeds in ``seeds.json``, as the original ``prepare_dataset.py``.

    Folders without pairs are left out; seeds are the file names' prefixes in sorted order (strings).
    """
    root = Path(root)
    seeds = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            found = [p.name.split("_")[0] for p in sorted(folder.glob("*_0.jpg"))]
            if found:
                seeds.append((folder.name, found))
    seeds.sort()
    # As prepare_dataset.py's json.dump: no indent, no final newline. Several jobs may finish at once.
    return write_text_atomic(root / "seeds.json", json.dumps(seeds))
