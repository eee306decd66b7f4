"""Atomic writes of files and folders: a temporary name in the same folder, renamed into place on success.

A reader (a resumed job, a web page, another worker of a job array) sees the old content or the new one, never a
half-written file; a write that fails or is interrupted removes its temporary file and leaves the old one intact.
Temporary names start with a dot and end in ``.tmp``, so globs such as ``*.png`` or ``shard-*`` never match them.

Created files get the mode ``open()`` gives a new file (``0o666`` less the umask) and folders ``0o777`` less the
umask: ``tempfile.mkstemp``/``mkdtemp`` alone make private 0600/0700 entries that another user or a web server
cannot read.

Example::

    with atomic_write("out/report.txt") as f:
        f.write("all good\\n")
    write_json_atomic("out/stats.json", {"kept": 3})
    with atomic_path("out/unet.safetensors") as tmp:  # for writers that want a file name
        safetensors.torch.save_file(tensors, tmp)
    with atomic_dir("out/checkpoint-100") as tmp:  # a whole folder, replacing an old one
        (tmp / "state.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_PROC_STATUS = "/proc/self/status"


def _umask_from_proc() -> int | None:
    """The umask as Linux reports it (the ``Umask:`` line, since Linux 4.7); None where it is not reported."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _umask_round_trip() -> int:
    # os.umask can only read the mask by setting it: another thread creating a file in between would get the
    # temporary value, so this runs once, at import, and only where /proc does not tell the umask.
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK_AT_IMPORT = _umask_from_proc()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = _umask_round_trip()


def current_umask() -> int:
    """The process's umask, read without changing it (from ``/proc``; elsewhere its value at import)."""
    value = _umask_from_proc()
    return _UMASK_AT_IMPORT if value is None else value


def file_mode() -> int:
    """The mode ``open()`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir()`` would give a new folder: ``0o777`` less the umask."""
    return 0o777 & ~current_umask()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` for a writer that wants a name; rename it to ``path`` after.

    For ``torch.save``, ``safetensors.torch.save_file``, ``pyarrow.parquet.write_table``, ``PIL.Image.save``:
    ``with atomic_path(p) as tmp: writer(tmp)``. The temporary name ends in ``.tmp``: give writers that guess
    the format from the suffix (PIL, matplotlib) the format explicitly. Missing parent folders are created.

    Args:
        path: the final file; replaced atomically if it exists.
        fsync: flush the file's data to disk before the rename, so a crash cannot leave an empty file under the
            final name.

    Raises:
        whatever the writer raises, or ``OSError`` from the file system; the temporary file is removed and an
        existing ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.chmod(tmp, file_mode())  # after the writer: some writers create the file anew
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", *, encoding: str = "utf-8", fsync: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``, on failure it is removed.

    Args:
        path: the final file (missing parent folders are created).
        mode: ``"w"`` (text, in ``encoding``) or ``"wb"`` (bytes).
        fsync: flush the data to disk before the rename.

    Example::

        with atomic_write("weights.txt") as f:
            f.write("1.0\\n")
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if mode == "wb" else encoding) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def write_text_atomic(
    path: str | os.PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = False
) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_write(path, "w", encoding=encoding, fsync=fsync) as handle:
        handle.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_write(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(
    path: str | os.PathLike, data: Any, *, indent: int | None = 2, fsync: bool = False, **dumps_kwargs: Any
) -> Path:
    """Write ``json.dumps(data, indent=indent, **dumps_kwargs)`` and a final newline to ``path`` atomically.

    The data is serialised before anything is written, so an unserialisable value leaves no file behind.
    """
    text = json.dumps(data, indent=indent, **dumps_kwargs) + "\n"
    return write_text_atomic(path, text, fsync=fsync)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success it takes the place of ``path`` (an old folder
    there is replaced, then deleted), on failure it is deleted and an old ``path`` is left as it was.

    Example::

        with atomic_dir("out/checkpoint-100") as tmp:
            torch.save(state, tmp / "optimizer.pt")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, dir_mode())
        _replace_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an existing folder at ``path`` is moved aside first and deleted after."""
    if not path.exists():
        os.replace(new, path)
        return
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder; cannot replace it with a folder")
    # A rename cannot replace a non-empty folder: move the old one aside (onto an empty folder of our own), then
    # rename the new one in; readers see the folder missing only between the two renames.
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    try:
        os.replace(path, old)
    except BaseException:  # e.g. path is a link to a folder: a rename cannot put it onto a folder
        old.rmdir()
        raise
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # put the old folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def restore_dir(path: str | os.PathLike) -> bool:
    """Put back the old folder that :func:`atomic_dir` had moved aside when the process died between its two
    renames (``path`` missing, ``.{name}.*.old`` beside it); True if it did. Call it before reading ``path``.

    Raises:
        FileExistsError: several such folders lie beside ``path``, and which one was last is not known.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        return False
    # Exactly the names _replace_dir makes (mkdtemp's random part has no dot): ``.model.v2.x.old``, aside from the
    # sibling ``model.v2``, is not ``model``'s.
    mine = re.compile(re.escape(f".{path.name}.") + r"[^.]+\.old")
    aside = [
        p
        for p in path.parent.glob(f".{glob.escape(path.name)}.*.old")
        if mine.fullmatch(p.name) and p.is_dir()
    ]
    if len(aside) > 1:
        raise FileExistsError(
            f"{path} is missing and several folders were moved aside from it: {sorted(aside)}"
        )
    if not aside:
        return False
    os.replace(aside[0], path)
    return True
