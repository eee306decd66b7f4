"""``ip2p data convert``: an edit dataset from any layout into any other, image bytes copied as they are (no
re-encoding, so pixels are kept), texts and extra columns kept. The output is written in the official schema's
column names (original_image, edit_prompt, edited_image, original_prompt, edited_prompt) and is read back by
:func:`ip2p.data.open_edit_dataset` with no flags.

Layouts written:

- ``parquet``: ``shard-00000.parquet``, ... of ``shard_size`` rows, images as ``datasets`` Image cells;
- ``imagefolder``: ``metadata.jsonl`` (``original_image_file_name``, ``edited_image_file_name``, the texts) and
  ``images/00000000.original_image.png``, ...;
- ``webdataset``: ``shard-00000.tar``, ... holding ``KEY.original_image.EXT``, ``KEY.edited_image.EXT`` and
  ``KEY.json`` (the texts and extra columns) per sample, KEY the example's index (``00000000``);
- ``disk``: a ``datasets`` ``save_to_disk`` folder;
- ``original``: the original repository's folders (``seeds.json``, ``{i:07d}/prompt.json``, ``{seed}_0.jpg``,
  ``{seed}_1.jpg``); JPEG images are copied, others encoded as JPEG at quality 100 as the original writes them.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ip2p.data.formats import DatasetError
from ip2p.fileio import atomic_dir, atomic_path

WRITABLE = ("parquet", "imagefolder", "webdataset", "disk", "original")
TEXTS = ("edit_prompt", "original_prompt", "edited_prompt")
IMAGES = ("original_image", "edited_image")


def image_to_cell(image: Image.Image, format: str = "PNG") -> dict[str, Any]:
    """An image as the official schema stores it: {"bytes": encoded, "path": None}."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return {"bytes": buffer.getvalue(), "path": None}


def image_bytes(cell: Any, where: str, base: Path | None = None) -> bytes:
    """The encoded bytes of an image cell ({bytes, path}, bytes, a path or a PIL image) as stored, not decoded
    (:func:`records` has read the example first, so the cell is known to decode)."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        cell = path if data is None and path else data
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, str):
        path = Path(cell) if Path(cell).is_absolute() or base is None else base / cell
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DatasetError(
                f"{where}: the image {path} cannot be read ({exc.strerror})", kind="missing"
            ) from None
    if isinstance(cell, Image.Image):
        return image_to_cell(cell)["bytes"]
    raise DatasetError(f"{where}: unsupported image cell of type {type(cell).__name__}")


def _extension(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return {"JPEG": "jpg", "TIFF": "tif"}.get(image.format or "PNG", (image.format or "png").lower())


def records(data) -> Iterator[dict[str, Any]]:
    """Each example of an opened dataset as {original_image: bytes, edited_image: bytes | None, edit_prompt, ...,
    extra columns}: the official schema's names, images encoded as in the source."""
    c = data.columns
    base = getattr(data, "base", None)
    for i in range(len(data)):
        row, where = data.row(i), data.where(i)
        data[i]  # every check of a read (images decode, the instruction is not empty), named as in training
        out: dict[str, Any] = {}
        for name in IMAGES:
            column = getattr(c, name)
            out[name] = None if column is None else image_bytes(row.get(column), where, base)
        for name in TEXTS:
            column = getattr(c, name)
            out[name] = None if column is None or row.get(column) is None else str(row[column])
        for key, value in row.items():
            if key not in c.used() and not key.startswith("__") and _plain(value):
                out.setdefault(key, value)
        yield out


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def write_parquet_shard(
    rows: list[dict[str, Any]],
    path: str | os.PathLike,
    image_columns: Sequence[str] = IMAGES,
) -> Path:
    """Write rows as a Parquet shard that ``datasets.load_dataset("parquet", ...)`` decodes, atomically.

    Image columns hold PIL images, encoded bytes or {bytes, path} cells; they are stored with the Hugging Face
    ``Image`` feature metadata so ``datasets`` returns PIL images, as for the official dataset.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError("a shard needs at least one row")
    path = Path(path)
    columns: dict[str, list] = {k: [r.get(k) for r in rows] for k in rows[0]}
    features: dict[str, Any] = {}
    for name, values in columns.items():
        if name in image_columns:
            columns[name] = [
                image_to_cell(v)
                if isinstance(v, Image.Image)
                else {"bytes": bytes(v), "path": None}
                if isinstance(v, (bytes, bytearray))
                else v
                for v in values
            ]
            features[name] = {"_type": "Image"}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({k: pa.array(v, type=image_type) if k in features else v for k, v in columns.items()})
    for name in table.column_names:
        if name not in features:
            features[name] = _feature_of(table.schema.field(name).type)
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _feature_of(arrow_type) -> dict[str, Any]:
    import pyarrow as pa

    names = {
        pa.string(): "string",
        pa.large_string(): "large_string",
        pa.int64(): "int64",
        pa.float64(): "float64",
        pa.float32(): "float32",
        pa.int32(): "int32",
        pa.bool_(): "bool",
    }
    return {"dtype": names.get(arrow_type, "string"), "_type": "Value"}


# -- writers: each fills an empty folder ------------------------------------------------------------------------
def _write_parquet(rows: Iterator[dict[str, Any]], out: Path, shard_size: int) -> int:
    n, shard, chunk = 0, 0, []
    for row in rows:
        chunk.append(row)
        n += 1
        if len(chunk) == shard_size:
            write_parquet_shard(chunk, out / f"shard-{shard:05d}.parquet")
            shard, chunk = shard + 1, []
    if chunk:
        write_parquet_shard(chunk, out / f"shard-{shard:05d}.parquet")
    return n


def _write_imagefolder(rows: Iterator[dict[str, Any]], out: Path, shard_size: int) -> int:
    (out / "images").mkdir()
    n = 0
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for n, row in enumerate(rows, 1):
            line = {}
            for name in IMAGES:
                data = row.pop(name)
                if data is not None:
                    file = f"images/{n - 1:08d}.{name}.{_extension(data)}"
                    (out / file).write_bytes(data)
                    line[f"{name}_file_name"] = file
            meta.write(json.dumps({**line, **row}, ensure_ascii=False) + "\n")
    return n


def _write_webdataset(rows: Iterator[dict[str, Any]], out: Path, shard_size: int) -> int:
    n, tar = 0, None
    try:
        for n, row in enumerate(rows, 1):
            if (n - 1) % shard_size == 0:
                if tar is not None:
                    tar.close()
                tar = tarfile.open(out / f"shard-{(n - 1) // shard_size:05d}.tar", "w")
            key = f"{n - 1:08d}"
            members = []
            for name in IMAGES:
                data = row.pop(name)
                if data is not None:
                    members.append((f"{key}.{name}.{_extension(data)}", data))
            members.append((f"{key}.json", json.dumps(row, ensure_ascii=False).encode()))
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    finally:
        if tar is not None:
            tar.close()
    return n


def _write_disk(rows: Iterator[dict[str, Any]], out: Path, shard_size: int) -> int:
    import datasets

    rows = list(rows)  # (a generator cannot be pickled for datasets' fingerprint)
    if not rows:
        return 0
    features = {
        k: datasets.Image() if k in IMAGES else datasets.Value("string") if k in TEXTS else None
        for k in rows[0]
    }
    for row in rows:
        for k in IMAGES:
            if row.get(k) is not None:
                row[k] = {"bytes": row[k], "path": None}
    table = datasets.Dataset.from_list(rows)
    cast = {k: f for k, f in features.items() if f is not None}
    table = table.cast(datasets.Features({**table.features, **cast}))
    table.save_to_disk(str(out))
    return len(rows)


def _write_original(rows: Iterator[dict[str, Any]], out: Path, shard_size: int) -> int:
    listing, n = [], 0
    for n, row in enumerate(rows, 1):
        name = f"{n - 1:07d}"
        folder = out / name
        folder.mkdir()
        seed = int(row.get("seed") or 0)
        prompt = {
            "input": row.get("original_prompt"),
            "edit": row["edit_prompt"],
            "output": row.get("edited_prompt"),
        }
        (folder / "prompt.json").write_text(json.dumps(prompt, ensure_ascii=False))
        for suffix, name_ in (("0", "original_image"), ("1", "edited_image")):
            data = row[name_]
            if data is None:
                raise DatasetError(f"example {n - 1}: the original layout needs an edited image")
            target = folder / f"{seed}_{suffix}.jpg"
            if _extension(data) == "jpg":
                target.write_bytes(data)
            else:
                Image.open(io.BytesIO(data)).convert("RGB").save(target, quality=100)
        listing.append([name, [str(seed)]])
    (out / "seeds.json").write_text(json.dumps(listing))
    return n


_WRITERS = {
    "parquet": _write_parquet,
    "imagefolder": _write_imagefolder,
    "webdataset": _write_webdataset,
    "disk": _write_disk,
    "original": _write_original,
}


def convert_dataset(data, output: str | os.PathLike, format: str, shard_size: int = 1000) -> int:
    """Write an opened dataset (:func:`ip2p.data.open_edit_dataset`) into ``output`` in layout ``format`` (one
    of :data:`WRITABLE`), atomically: a failure leaves no half-written folder. Returns the examples written.

    Example::

        convert_dataset(open_edit_dataset("pairs/"), "pairs-wds", "webdataset")
    """
    if format not in WRITABLE:
        raise DatasetError(f"cannot write format {format!r}; choose one of {', '.join(WRITABLE)}")
    if shard_size < 1:
        raise DatasetError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; choose a new output")
    with atomic_dir(out) as tmp:
        target = tmp / "data" if format == "disk" else tmp
        n = _WRITERS[format](records(data), target, shard_size)
        if format == "disk":
            for item in target.iterdir():
                item.rename(tmp / item.name)
            target.rmdir()
    return n
