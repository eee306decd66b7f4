"""Streamed training data: sets too large to download first (the official CLIP-filtered set is about 600 GB),
read through ``datasets``' streaming, split over accelerate's processes, shuffled with a buffer and resumable
exactly mid-epoch.

How each property is kept:

- every example once an epoch, by one process: ``datasets.distributed.split_dataset_by_node`` (whole shards to
  each process when their number divides by the processes', else every N-th example); each process then runs
  through its own part epoch after epoch;
- a bounded shuffle: the part is cut into blocks of ``buffer`` examples and each block is yielded in an order drawn
  from (seed, process, epoch, block), so memory holds one block;
- exact resume: a state is ``datasets``' own position at the start of the current block plus how many of the
  block's examples were taken; loading it reads that one block again and skips them, so a resumed run takes the
  same examples in the same order as one never stopped (``datasets``' shuffle buffer would lose its content);
- a row that cannot be used (an image that does not decode, an empty instruction) is a counted skip with one line
  on stderr naming its file and row, never a crash.
"""

from __future__ import annotations

import hashlib
import random
import sys
import weakref
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from ip2p.data.formats import (
    Columns,
    DatasetError,
    EditExample,
    flat_names,
    flatten_row,
    row_to_example,
    undecoded,
)


def _close(iterators: list) -> None:
    while iterators:
        iterators.pop().close()


def _block_seed(seed: int, rank: int, epoch: int, block: int) -> int:
    digest = hashlib.sha256(f"ip2p-stream:{seed}:{rank}:{epoch}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class EditStream:
    """This process's part of a streamed edit dataset, epoch after epoch. Example::

    stream = open_edit_stream("hub-user/pairs", rank=acc.process_index, world=acc.num_processes)
    batch = stream.take(32)  # EditExamples; stream.state_dict() resumes exactly after them
    """

    def __init__(
        self,
        dataset,
        columns: Columns | None = None,
        name: str = "the stream",
        *,
        seed: int = 0,
        buffer: int = 1000,
        rank: int = 0,
        world: int = 1,
        base: Path | None = None,
    ):
        from datasets.distributed import split_dataset_by_node

        columns = columns or Columns()
        if buffer < 1:
            raise DatasetError(f"the shuffle buffer must hold at least 1 example, got {buffer}")
        if not 0 <= rank < world:
            raise DatasetError(f"process {rank} of {world} does not exist")
        if dataset.features is not None:
            dataset = undecoded(dataset)
            self.columns = columns.resolve(flat_names(dataset.column_names, dataset.features), name)
        else:
            self.columns = columns  # resolved on the first row
        self.full = dataset
        # (a part of its own even for one process: reading ``full`` for head() then leaves its position alone)
        self.part = split_dataset_by_node(dataset, rank=rank, world_size=world)
        self.name, self.base = name, base
        self.seed, self.buffer, self.rank, self.world = seed, buffer, rank, world
        self.epoch, self.block, self.offset, self.skipped = 0, 0, 0, 0
        self._iter: Iterator[dict[str, Any]] | None = None
        self._rows: list[tuple[int, dict[str, Any]]] = []
        self._block_start: dict | None = None
        # the reader under way, closed at exit while pyarrow is still there (else datasets' generator complains)
        self._open: list[Iterator] = []
        weakref.finalize(self, _close, self._open)

    # -- reading -----------------------------------------------------------------------------------------------
    def _start_epoch(self, state: dict | None = None) -> None:
        self.part.set_epoch(self.epoch)  # (a state saved in another epoch is not applied by datasets)
        if state is not None:
            self.part.load_state_dict(state)
        _close(self._open)
        self._iter = iter(self.part)
        self._open.append(self._iter)

    def _read_block(self) -> None:
        """The next block of this epoch (starting the next epoch when this one is done), in its shuffled order."""
        if self._iter is None:
            self._start_epoch()
        # datasets' position before the block (None at an epoch's start: its state is only fresh once iterated)
        start = None if self.block == 0 else self.part.state_dict()
        rows = list(islice(self._iter, self.buffer))
        if not rows:
            if self.block == 0:
                raise DatasetError(f"{self.name}: no examples for process {self.rank} of {self.world}")
            self.epoch, self.block, start = self.epoch + 1, 0, None
            self._start_epoch()
            rows = list(islice(self._iter, self.buffer))
            if not rows:
                raise DatasetError(f"{self.name}: no examples for process {self.rank} of {self.world}")
        self._block_start = start
        self._set_rows(rows)

    def _set_rows(self, rows: list[dict[str, Any]]) -> None:
        order = list(range(len(rows)))
        random.Random(_block_seed(self.seed, self.rank, self.epoch, self.block)).shuffle(order)
        first = self.block * self.buffer
        self._rows = [(first + i, rows[i]) for i in order]
        self.offset = 0

    def __iter__(self) -> Iterator[EditExample]:
        return self

    def __next__(self) -> EditExample:
        while True:
            if self._iter is None or self.offset >= len(self._rows):
                if self._iter is not None:
                    self.block += 1
                self._read_block()
            index, raw = self._rows[self.offset]
            self.offset += 1
            row = flatten_row(raw)
            if "__key__" in row:
                where = f"{row.get('__url__', self.name)} sample {row['__key__']}"
            else:
                where = f"{self.name} process {self.rank}/{self.world} epoch {self.epoch} row {index}"
            try:
                if self.columns.original_image is None:
                    self.columns = self.columns.resolve(row, self.name)
                return row_to_example(row, self.columns, where, self.base)
            except DatasetError as exc:
                if exc.kind == "dataset":  # a missing column: every row would fail
                    raise
                self.skipped += 1
                print(f"ip2p: skipped ({self.skipped} so far): {exc}", file=sys.stderr)

    def take(self, n: int) -> list[EditExample]:
        """The next ``n`` examples of this process's part."""
        return [next(self) for _ in range(n)]

    def head(self, n: int) -> list[EditExample]:
        """The first ``n`` usable examples of the whole dataset (validation examples), without moving the stream."""
        out = []
        for raw in self.full:
            if len(out) == n:
                break
            row = flatten_row(raw)
            try:
                columns = (
                    self.columns if self.columns.original_image else self.columns.resolve(row, self.name)
                )
                out.append(row_to_example(row, columns, f"{self.name} row {len(out)}", self.base))
            except DatasetError as exc:
                if exc.kind == "dataset":
                    raise
        return out

    # -- exact resume ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this process is: resumes exactly with :meth:`load_state_dict` (JSON-serialisable)."""
        return {
            "started": self._iter is not None,
            "epoch": self.epoch,
            "block": self.block,
            "offset": self.offset,
            "skipped": self.skipped,
            "block_start": self._block_start,
            "seed": self.seed,
            "buffer": self.buffer,
            "rank": self.rank,
            "world": self.world,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "buffer", "rank", "world"):
            if state[key] != getattr(self, key):
                raise DatasetError(
                    f"{self.name}: the saved stream was read with {key} {state[key]}, now {getattr(self, key)}; "
                    "resume with the same settings and number of processes"
                )
        self.epoch, self.block, self.skipped = state["epoch"], state["block"], state["skipped"]
        self._iter, self._rows, self.offset = None, [], 0
        if not state["started"]:
            return
        self._start_epoch(state["block_start"])
        self._block_start = state["block_start"]
        self._set_rows(list(islice(self._iter, self.buffer)))
        self.offset = state["offset"]


def gather_stream_states(stream: EditStream, accelerator) -> list[dict[str, Any]]:
    """Every process's stream state, in process order (a collective call: every process makes it)."""
    if accelerator.num_processes == 1:
        return [stream.state_dict()]
    from accelerate.utils import gather_object

    return list(gather_object([stream.state_dict()]))


def open_edit_stream(
    source: str | Sequence[str],
    columns: Columns | None = None,
    format: str = "auto",
    *,
    split: str = "train",
    seed: int = 0,
    buffer: int = 1000,
    rank: int = 0,
    world: int = 1,
) -> EditStream:
    """Stream any layout but the original folders (:data:`ip2p.data.sources.FORMATS`) as this process's part."""
    from ip2p.data.sources import open_hf

    data, _, base = open_hf(source, format, split, streaming=True)
    name = source if isinstance(source, str) else str(list(source)[0])
    return EditStream(data, columns, name, seed=seed, buffer=buffer, rank=rank, world=world, base=base)


def open_training_data(
    data: str | Sequence[str],
    columns: Columns | None = None,
    format: str = "auto",
    *,
    streaming: bool = False,
    validate: bool = False,
    seed: int = 0,
    buffer: int = 1000,
    rank: int = 0,
    world: int = 1,
    head: int = 4,
) -> tuple[Sequence[EditExample], EditStream | None]:
    """A training run's data: (random-access examples, None), or with ``streaming`` (its first ``head`` examples
    for validation grids, the stream). Training needs an edited image column; ``validate`` reads every example
    first (random access only: a stream counts its bad rows as skips)."""
    from ip2p.data.inspect import check_dataset
    from ip2p.data.sources import open_edit_dataset

    if streaming:
        stream = open_edit_stream(data, columns, format, seed=seed, buffer=buffer, rank=rank, world=world)
        examples: Sequence[EditExample] = stream.head(max(1, head))
        edited = stream.columns.edited_image if stream.columns.original_image else "?"
    else:
        stream, examples = None, open_edit_dataset(data, columns, format)
        edited = getattr(examples, "columns", Columns(edited_image="?")).edited_image
    if edited is None:
        raise DatasetError(
            f"{data if isinstance(data, str) else data[0]}: no edited image column (edited_image or output_image); "
            "name it with --edited-image-column"
        )
    if validate and stream is None:
        check_dataset(examples)
    return examples, stream


def save_stream_states(stream: EditStream, accelerator, folder: Path, step: int) -> None:
    """Every process's stream state at ``step`` in ``folder/step-N.json`` (written before the checkpoint of
    ``step``, so that a checkpoint never exists without it; a collective call)."""
    from ip2p.fileio import write_json_atomic

    states = gather_stream_states(stream, accelerator)
    if accelerator.is_main_process:
        write_json_atomic(folder / f"step-{step}.json", states)


def load_stream_state(stream: EditStream, folder: Path, step: int) -> None:
    """Put ``stream`` where it was at ``step`` (this process's saved state)."""
    import json

    path = folder / f"step-{step}.json"
    if not path.is_file():
        raise DatasetError(
            f"{path}: no stream state for the checkpoint of step {step}; resume without --streaming"
        )
    states = json.loads(path.read_text())
    if len(states) != stream.world:
        raise DatasetError(
            f"{path}: saved by {len(states)} processes, now {stream.world}; resume with as many"
        )
    stream.load_state_dict(states[stream.rank])


def prune_stream_states(folder: Path, keep: Sequence[int]) -> None:
    """Delete the stream states of checkpoints that are gone."""
    for path in folder.glob("step-*.json"):
        if int(path.stem.split("-")[1]) not in keep:
            path.unlink(missing_ok=True)
