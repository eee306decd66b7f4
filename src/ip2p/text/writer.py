"""An append-only JSONL file that survives being killed: complete lines only, a partial last line dropped on reopen.

Stage 1 is a long job (the paper wrote 454k triplets); rerunning it with the same output must skip what is done and
produce the same file as an uninterrupted run. Each batch of records is written with one ``write`` of complete lines
and flushed (and fsynced); a kill can leave at most one partial line at the end, which :meth:`JsonlLog.open` cuts
off, so the record it held is simply made again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class JsonlLog:
    """A resumable JSONL file of dict records.

    Example:
        >>> log = JsonlLog("out.jsonl")  # doctest: +SKIP
        >>> done = log.open()  # records already there; a trailing partial line is cut off
        >>> log.append([{"input": "a cat", "edit": "make it a dog", "output": "a dog"}])
        >>> log.close()
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._file = None

    def open(self) -> list[dict[str, Any]]:
        """Open for appending; return the complete records already in the file (a partial last line is removed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records: list[dict[str, Any]] = []
        if self.path.exists():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1  # everything after the last newline is a partial line
            if end < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(end)
            for n, line in enumerate(data[:end].splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{self.path}:{n}: not valid JSON ({exc.msg}); not a file this tool wrote?"
                    ) from exc
        self._file = open(self.path, "a", encoding="utf-8")
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records as complete lines in one write, then flush (and fsync)."""
        if self._file is None:
            raise RuntimeError("JsonlLog.append before open()")
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not text:
            return
        self._file.write(text)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
