"""Reading JSONL files of objects, with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


def iter_jsonl_objects(
    path: str | os.PathLike, error: type[Exception] = ValueError
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for every non-blank line; raise ``error`` naming ``path:line`` on a line that
    is not a JSON object."""
    path = Path(path)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise error(f"{path}:{n}: each line must be a JSON object")
        yield n, row
