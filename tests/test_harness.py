"""The run harness on its own: a tiny training loop stopped by a signal and resumed equals an uninterrupted run;
time limits and a stop step end a run early with a checkpoint; only the newest checkpoints are kept."""

from __future__ import annotations

import os
import random
import signal

import pytest
import torch

from ip2p.harness import (
    Checkpointer,
    Deadline,
    Interrupted,
    keep_newest,
    numbered,
    prefixed,
    run_steps,
    step_batches,
    unprefixed,
)


class TinyRun:
    """A linear model trained by Adam on batches drawn from torch's and Python's global generators: resuming is
    exact only if the checkpoint restores weights, optimizer and both generators."""

    def __init__(self, folder, keep=2):
        torch.manual_seed(0)
        random.seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.ckpt = Checkpointer(folder, keep=keep)
        self.ran = []
        self.start = self.ckpt.resume(  # 0 without a checkpoint
            self.opt,
            torch.device("cpu"),
            lambda weights: self.model.load_state_dict(unprefixed("model", weights)),
        )

    def step(self, step: int) -> float:
        self.ran.append(step)
        x = torch.randn(8, 4)
        y = x.sum(1, keepdim=True) * random.random()
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def save(self, step: int) -> None:
        self.ckpt.save(step, prefixed("model", self.model.state_dict()), {"optimizer": self.opt.state_dict()})

    def run(self, total=10, ckpt_every=4, **kw) -> int:
        return run_steps("tiny", total, self.start, self.step, self.save, ckpt_every, **kw)


def test_a_signal_stops_after_the_step_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = TinyRun(tmp_path / "straight")
    assert straight.run() == 10

    stopped = TinyRun(tmp_path / "stopped")
    step_fn = stopped.step

    def step_and_signal(step):
        loss = step_fn(step)
        if step == 2:  # arrives during step 2: step 2 ends, its checkpoint (3 steps done) is saved
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    stopped.step = step_and_signal
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match=r"stopped at step 3 of 10 \(SIGTERM\).*run the same command again"):
        stopped.run()
    assert stopped.ran == [0, 1, 2] and stopped.ckpt.latest() == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back

    torch.manual_seed(123)  # the checkpoint, not the process, decides what comes next
    random.seed(123)
    resumed = TinyRun(tmp_path / "stopped")
    assert resumed.start == 3 and resumed.run() == 10
    assert resumed.ran == list(range(3, 10))
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)


def test_a_signal_during_the_last_step_saves_it_and_still_raises(tmp_path):
    """The stage is complete, but the run was asked to end: the caller's next stage must not start."""
    run = TinyRun(tmp_path / "last")
    step_fn = run.step

    def step_and_signal(step):
        loss = step_fn(step)
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    run.step = step_and_signal
    with pytest.raises(Interrupted, match=r"stopped at step 5 of 5 \(SIGINT\)"):
        run.run(total=5, ckpt_every=100)
    assert run.ran == [0, 1, 2, 3, 4] and run.ckpt.latest() == 5
    cut = TinyRun(tmp_path / "cut")
    cut.step = lambda step: (os.kill(os.getpid(), signal.SIGTERM) if step == 1 else None) or 0.0
    with pytest.raises(Interrupted, match=r"stopped at step 2 of 50 \(SIGTERM\)"):
        cut.run(total=50, ckpt_every=100, stop=2)  # the last step of a run cut short by ``stop``
    assert cut.ckpt.latest() == 2


def test_time_limit_and_stop_step_end_early_with_a_checkpoint(tmp_path):
    timed = TinyRun(tmp_path / "timed")
    assert timed.run(total=50, ckpt_every=100, minutes=1e-9) == 1  # out of time after the first step
    assert timed.ckpt.latest() == 1
    cut = TinyRun(tmp_path / "cut")
    assert cut.run(total=50, ckpt_every=100, stop=3) == 3
    assert cut.ckpt.latest() == 3 and cut.ran == [0, 1, 2]
    assert not Deadline(None).passed() and Deadline(0).passed()
    with pytest.raises(ValueError, match="at least 0 minutes"):
        Deadline(-1)


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    run = TinyRun(tmp_path / "keep", keep=2)
    run.run(total=7, ckpt_every=2)  # saves 2, 4, 6 and the end, 7
    assert [n for n, _ in numbered(tmp_path / "keep", "step-", ".safetensors")] == [6, 7]
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == [
        "latest.json",
        "step-6.pt",
        "step-6.safetensors",
        "step-7.pt",
        "step-7.safetensors",
    ]
    everything = TinyRun(tmp_path / "all", keep=0)
    everything.run(total=7, ckpt_every=2)
    assert [n for n, _ in numbered(tmp_path / "all", "step-", ".pt")] == [2, 4, 6, 7]
    for n in (1, 3, 10, 2):
        (tmp_path / "folders" / f"checkpoint-{n}").mkdir(parents=True)
    (tmp_path / "folders" / "checkpoint-x").mkdir()
    keep_newest(tmp_path / "folders", "checkpoint-", 2)
    assert sorted(p.name for p in (tmp_path / "folders").iterdir()) == [
        "checkpoint-10",
        "checkpoint-3",
        "checkpoint-x",
    ]


def test_step_batches_from_worker_processes_equal_those_made_here():
    def make(step):
        g = torch.Generator().manual_seed(step)
        return {"step": step, "x": torch.randn(3, generator=g)}

    here = list(step_batches(make, 2, 6, workers=0))
    forked = list(step_batches(make, 2, 6, workers=2))
    assert [b["step"] for b in forked] == [2, 3, 4, 5]
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(here, forked, strict=True))
