"""The harness of a training run: atomic checkpoints (the newest N kept), exact resume, a stop on SIGINT/SIGTERM
with a checkpoint of the step under way, wall-clock limits, and a progress bar.

A run that is stopped, killed or out of time loses at most the steps since its last checkpoint, and the same
command resumes it: the step function draws all the randomness of step ``i`` from ``i`` (or the checkpoint restores
the generators), so a resumed run equals an uninterrupted one bit for bit.

Example::

    ckpt = Checkpointer(out / "checkpoints", keep=2)
    start = ckpt.resume(optimizer, device, model.load_state_dict)  # weights, optimizer state, RNG states; or 0

    def save(step):
        ckpt.save(step, model.state_dict(), {"optimizer": optimizer.state_dict()})

    run_steps("train", total=1000, start=start, step_fn=train_step, save_fn=save, ckpt_every=100, minutes=30)
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ip2p.fileio import atomic_path, write_json_atomic

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------
# Numbered entries (checkpoints), the newest kept
# ---------------------------------------------------------------------------


def numbered(folder: str | os.PathLike, prefix: str, suffix: str = "") -> list[tuple[int, Path]]:
    """``(n, path)`` of the entries ``{prefix}{n}{suffix}`` in ``folder``, by ``n``; other names are ignored."""
    found = []
    for path in Path(folder).glob(f"{prefix}*{suffix}"):
        number = path.name[len(prefix) : len(path.name) - len(suffix)]
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def keep_newest(folder: str | os.PathLike, prefix: str, keep: int, suffixes: tuple[str, ...] = ("",)) -> None:
    """Delete all but the ``keep`` highest-numbered entries ``{prefix}{n}{suffix}`` (files or folders) of
    ``folder`` (``keep=0``: delete none); an entry's files with each of ``suffixes`` go together (the first suffix
    names the entry)."""
    if keep < 0:
        raise ValueError(f"keep 0 (all) or more checkpoints, not {keep}")
    for n, _ in numbered(folder, prefix, suffixes[0])[: -keep or 0]:
        for suffix in suffixes:
            path = Path(folder) / f"{prefix}{n}{suffix}"
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


class Checkpointer:
    """Numbered checkpoints in a folder: ``step-N.safetensors`` (weights) and ``step-N.pt`` (optimizer, step,
    RNG states), then ``latest.json`` naming them; each file is written under a temporary name and renamed, and
    only the newest ``keep`` checkpoints are kept (0: all).

    :meth:`load` restores torch's and Python's global generators as they were when the checkpoint was saved, and
    reads the state with ``weights_only=True`` (tensors, numbers and strings only)."""

    def __init__(self, folder: str | os.PathLike, keep: int = 2):
        if keep < 0:
            raise ValueError(f"keep 0 (all) or more checkpoints, not {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def latest(self) -> int | None:
        pointer = self.folder / "latest.json"
        if not pointer.is_file():
            return None
        return int(json.loads(pointer.read_text())["step"])

    def weights_path(self, step: int) -> Path:
        return self.folder / f"step-{step}.safetensors"

    def save(self, step: int, weights: dict[str, torch.Tensor], state: dict) -> None:
        import torch
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        with atomic_path(self.weights_path(step)) as tmp:
            save_file(tensors, tmp)
        full = dict(state, step=step, torch_rng=torch.get_rng_state(), python_rng=random.getstate())
        with atomic_path(self.folder / f"step-{step}.pt") as tmp:
            torch.save(full, tmp)
        write_json_atomic(self.folder / "latest.json", {"step": step}, indent=None)
        keep_newest(self.folder, "step-", self.keep, (".safetensors", ".pt"))

    def load(self, step: int | None = None) -> tuple[dict[str, torch.Tensor], dict] | None:
        """(weights, state) of checkpoint ``step`` (default: the latest), or None where there is none."""
        import torch
        from safetensors.torch import load_file

        step = self.latest() if step is None else step
        if step is None:
            return None
        weights = load_file(self.weights_path(step))
        state = torch.load(self.folder / f"step-{step}.pt", weights_only=True, map_location="cpu")
        torch.set_rng_state(state["torch_rng"])
        version, internal, gauss = state["python_rng"]  # torch.load gives back lists for tuples
        random.setstate((version, tuple(internal), gauss))
        return weights, state

    def resume(
        self,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        load_weights: Callable[[dict[str, torch.Tensor]], object],
    ) -> int:
        """Restore the latest checkpoint, if any (:meth:`load`): ``load_weights(weights)`` puts the models'
        weights back, then the optimizer's state is loaded and moved to ``device``. Returns the step to start
        at: the checkpoint's, or 0 where there is none."""
        loaded = self.load()
        if loaded is None:
            return 0
        weights, state = loaded
        load_weights(weights)
        optimizer.load_state_dict(state["optimizer"])
        optimizer_to(optimizer, device)
        return int(state["step"])


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every key under ``prefix.``: several modules' weights in one checkpoint file."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, without it (the inverse of :func:`prefixed`)."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a loaded optimizer state to ``device`` (its step counters stay where they are, as torch keeps them)."""
    import torch

    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(device)


# ---------------------------------------------------------------------------
# Stops: signals and time limits
# ---------------------------------------------------------------------------


class Interrupted(Exception):
    """A run stopped by SIGINT or SIGTERM, after saving a checkpoint of the step it had reached."""


@dataclass
class StopRequest:
    """Set by SIGINT or SIGTERM while :func:`stop_requests` is active; checked between steps."""

    signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the yielded request instead of ending the process, so that the loop can finish its
    step and save a checkpoint first (main thread only: elsewhere signals cannot be caught; handlers restored)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        request.signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Deadline:
    """A wall-clock limit of ``minutes`` from now (None: none; 0: passed after the first step)."""

    def __init__(self, minutes: float | None):
        if minutes is not None and minutes < 0:
            raise ValueError(f"a time limit is at least 0 minutes, not {minutes}")
        self.minutes = minutes
        self.at = None if minutes is None else time.perf_counter() + 60 * minutes

    def passed(self) -> bool:
        return self.at is not None and time.perf_counter() > self.at


class StepTimer:
    """Wall and process CPU time per step, for the log (CPU time / threads estimates an idle machine's wall time)."""

    def __init__(self):
        self.wall, self.cpu, self.n = 0.0, 0.0, 0

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c
        self.n += 1

    def summary(self, threads: int) -> str:
        n = max(1, self.n)
        return f"{self.wall / n:.2f} s/step wall, {self.cpu / n / max(1, threads):.2f} s/step CPU/thread"


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def schedule_end(total: int, stop: int) -> int:
    """The step a run ends at: ``stop`` if it cuts the schedule of ``total`` short, else ``total``."""
    return stop if 0 < stop < total else total


def run_steps(
    name: str,
    total: int,
    start: int,
    step_fn: Callable[[int], float],
    save_fn: Callable[[int], None],
    ckpt_every: int,
    threads: int = 1,
    minutes: float = 0.0,
    stop: int = 0,
) -> int:
    """Run steps ``start .. total - 1`` (of a schedule of ``total``), checkpointing every ``ckpt_every``; end early,
    with a checkpoint, after step ``stop`` or once ``minutes`` of wall time have passed, if set (0: no limit).

    ``step_fn(step)`` trains one step and returns its loss; ``save_fn(done)`` saves a checkpoint of ``done`` steps.
    Returns the number of steps done. SIGINT or SIGTERM ends the step under way, saves a checkpoint and raises
    :class:`Interrupted` (also when that step was the last), so that a run stopped on purpose (for example to resume it with more threads) loses
    nothing."""
    from tqdm.auto import tqdm

    if ckpt_every < 1:
        raise ValueError(f"checkpoint every 1 step or more, not {ckpt_every}")
    timer = StepTimer()
    smooth = None
    deadline = Deadline(minutes if minutes > 0 else None)
    end = schedule_end(total, stop)
    bar = tqdm(range(start, end), initial=start, total=total, desc=name, dynamic_ncols=True, mininterval=5)
    done = start
    with stop_requests() as request:
        for step in bar:
            with timer:
                loss = step_fn(step)
            done = step + 1
            smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
            bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)
            out_of_time = deadline.passed()
            if done % ckpt_every == 0 or done == end or out_of_time or request.requested:
                save_fn(done)
                tqdm.write(f"[{name}] step {done}/{total} loss {smooth:.4f} ({timer.summary(threads)})")
            if request.requested:
                break
            if out_of_time and done < total:
                tqdm.write(f"[{name}] stopping at step {done} of {total}: its {minutes:g} minutes are spent")
                break
        bar.close()
        if request.requested:  # even during the last step: the caller must not go on to its next stage
            raise Interrupted(
                f"{name} stage stopped at step {done} of {total} ({request.name}), "
                "checkpoint saved: run the same command again to resume"
            )
    if done == end < total:
        tqdm.write(f"[{name}] ending at step {done} of {total}, as asked")
    return done


class _StepBatches:
    """A map-style dataset of ``make(step)`` for steps ``start .. total - 1`` (for a DataLoader's workers)."""

    def __init__(self, make: Callable[[int], dict], start: int, total: int):
        self.make, self.start, self.total = make, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, i: int) -> dict:
        return self.make(self.start + i)


def step_batches(make: Callable[[int], dict], start: int, total: int, workers: int) -> Iterator[dict]:
    """``make(step)`` for ``step = start .. total - 1``, in order, prepared by ``workers`` forked processes ahead of
    use (``workers=0``: here, when asked for). Each batch is a function of its step alone, so the batches are the
    same either way."""
    if workers <= 0 or total <= start:
        return (make(step) for step in range(start, total))
    import torch

    loader = torch.utils.data.DataLoader(
        _StepBatches(make, start, total),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4,
        multiprocessing_context="fork",
    )
    return iter(loader)
