"""Fine-tune a causal language model on seed triplets (paper section 3.1.1: GPT-3 davinci, 1 epoch, 700 examples).

Each seed triplet becomes one sequence, ``prompt + completion + EOS`` in the original ``prepare_for_gpt.py`` format;
the loss is taken on the completion only (the prompt's labels are -100). Full fine-tuning or LoRA (peft), on CPU or
any number of GPUs through accelerate (``accelerate launch --multi_gpu -m ip2p.cli finetune-text ...``; on
CPUs ``torchrun --nproc_per_node N -m ip2p.cli finetune-text --cpu ...``). Checkpoints (model,
optimizer, scheduler, RNG and data order) are written every ``checkpoint_every`` optimizer steps, and a rerun with
the same output folder resumes from the latest one, ending with the same weights as an uninterrupted run (a
rerun of a finished job does nothing).

Presets: ``paper`` (1 epoch, as the paper's fine-tune), ``toy`` (a ~0.9 M-parameter Llama-style LM trained from
scratch on the 700 toy seed triplets, re-phrased every epoch; ``ip2p finetune-text --preset toy``) and
``toy-relabel`` (its second phase, on seeds also relabelled every epoch: ``--preset toy-relabel --model
runs/toy-lm-phrase``, written to ``runs/toy-lm``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ip2p.fileio import write_json_atomic, write_text_atomic
from ip2p.text.format import Triplet
from ip2p.text.hf import TextModelError, prepare_tokenizer
from ip2p.text.sources import read_seed_triplets

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: marks it complete
CONFIG_FILE = "finetune_config.json"


from ip2p.text.config import (  # noqa: E402, F401 (the config lives in a torch-free module; re-exported here)
    PRESETS,
    FinetuneConfig,
    preset,
)


# -- data ---------------------------------------------------------------------------------------------------
def encode_example(tokenizer, triplet: Triplet, max_length: int) -> dict[str, list[int]]:
    """Token ids of ``prompt + completion + EOS`` and labels that are -100 on the prompt.

    Prompt and completion are tokenized separately, as generation sees them (prompt tokens, then new tokens).
    """
    prompt = tokenizer(triplet.prompt())["input_ids"]
    completion = tokenizer(triplet.completion(), add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    ids = (prompt + completion)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + completion)[:max_length]
    return {"input_ids": ids, "labels": labels}


class SeedDataset(torch.utils.data.Dataset):
    """Encoded seed triplets; with ``paraphrase_seed``, toy triplets re-phrased per epoch (set :attr:`epoch`), and
    with ``relabel`` also renamed: the augmentations ``paraphrase`` and ``relabel`` of
    ``ip2p.registry.TRIPLET_AUGMENTATIONS`` (the toy world's plug-in gives both: :mod:`ip2p.toy.lm`)."""

    def __init__(
        self,
        triplets: list[Triplet],
        tokenizer,
        max_length: int,
        paraphrase_seed: int | None = None,
        relabel: bool = False,
    ):
        self.triplets = triplets
        self.relabel = relabel
        self.tokenizer = tokenizer
        self.max_length = max_length
        if relabel and paraphrase_seed is None:
            raise ValueError("relabelling draws from the per-epoch generator: give paraphrase_seed")
        self.paraphrase_seed = paraphrase_seed
        self.epoch = 0
        self._fixed = None if paraphrase_seed is not None else [self._encode(t) for t in triplets]

    def _encode(self, triplet: Triplet) -> dict[str, list[int]]:
        return encode_example(self.tokenizer, triplet, self.max_length)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if self._fixed is not None:
            return self._fixed[index]
        import random

        from ip2p.registry import TRIPLET_AUGMENTATIONS

        rng = random.Random(
            f"{self.paraphrase_seed}/{self.epoch}/{index}"
        )  # a function of (seed, epoch, item)
        augment = TRIPLET_AUGMENTATIONS.get("relabel" if self.relabel else "paraphrase")
        return self._encode(augment(self.triplets[index], rng))


def collate(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, attention_mask and labels, each (B, T)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -- model --------------------------------------------------------------------------------------------------
def load_for_training(config: FinetuneConfig):
    """(model, tokenizer) to train: a model built from scratch by a builder of ``ip2p.registry.LM_BUILDERS``
    (``toy``: the toy LM), or a pretrained causal LM (fp32 weights)."""
    from ip2p.registry import LM_BUILDERS

    builder = LM_BUILDERS.find(config.model)
    if builder is not None:
        model, tokenizer = builder(config)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:  # never trust_remote_code: only architectures transformers implements
            tokenizer = AutoTokenizer.from_pretrained(config.model)
            model = AutoModelForCausalLM.from_pretrained(config.model, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TextModelError(
                f"cannot load a causal language model from {config.model!r} ({first})"
            ) from exc
    prepare_tokenizer(tokenizer)
    if config.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise TextModelError("--lora needs peft (pip install 'ip2p[text]')") from exc
        targets: str | list[str] = config.lora_target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        from transformers.pytorch_utils import Conv1D

        lora = LoraConfig(
            # GPT-2's projections are Conv1D layers that store weights transposed; peft must know.
            fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer


# -- checkpoints --------------------------------------------------------------------------------------------
def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one with its trainer state written) in ``output/checkpoints``."""
    done = sorted((output / "checkpoints").glob(f"step-*/{STATE_FILE}"))
    return done[-1].parent if done else None


def _check_same_run(output: Path, config: FinetuneConfig) -> None:
    saved = output / CONFIG_FILE
    if not saved.is_file():
        return
    old = json.loads(saved.read_text())
    ignore = {"output", "resume", "log_every", "keep_checkpoints", "extra", "cpu"}  # no effect on the result
    diff = [
        f.name for f in fields(config) if f.name not in ignore and old.get(f.name) != getattr(config, f.name)
    ]
    if diff:
        raise ValueError(
            f"{output} holds checkpoints of a run with other settings ({', '.join(diff)}); "
            "use a new --output, or --no-resume to start over"
        )


# -- the loop -----------------------------------------------------------------------------------------------
def finetune(
    config: FinetuneConfig,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> Path:
    """Fine-tune ``config.model`` on the seed triplets and save it (with its tokenizer and config) in
    ``config.output``; returns that folder.

    ``callback(step, loss)`` is called after every optimizer step (tests use it to interrupt a run).

    Example:
        >>> finetune(preset("toy", output="runs/toy-lm"))  # doctest: +SKIP
        PosixPath('runs/toy-lm')
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    config.validate()
    output = Path(config.output)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        cpu=config.cpu,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    if config.resume:
        _check_same_run(output, config)
    elif accelerator.is_main_process and (output / "checkpoints").exists():
        shutil.rmtree(output / "checkpoints")
    accelerator.wait_for_everyone()
    set_seed(config.seed)

    model, tokenizer = load_for_training(config)
    triplets = read_seed_triplets(config.seeds)
    dataset = SeedDataset(
        triplets,
        tokenizer,
        config.max_length,
        config.seed if config.paraphrase or config.relabel else None,
        relabel=config.relabel,
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id),
        # Its own generator: starting an epoch must not draw from the global RNG that dropout uses, or a resumed
        # run (which starts its epoch after restoring the RNG) would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # Steps are optimizer steps of each process (the prepared loader holds this process's share of the data).
    steps_per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    # accelerate steps a prepared scheduler once per process at every optimizer step: count in those units.
    n = accelerator.num_processes
    scheduler = get_scheduler(config.lr_schedule, optimizer, config.warmup_steps * n, total_steps * n)
    scheduler = accelerator.prepare(scheduler)
    summary_file = output / "train_summary.json"
    if (
        config.resume
        and summary_file.is_file()
        and json.loads(summary_file.read_text())["steps"] >= total_steps
    ):
        return output  # finished before: a rerun of a completed job does nothing

    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / CONFIG_FILE, config.to_dict())
    step, epoch, batches_done = 0, 0, 0
    resumed = latest_checkpoint(output) if config.resume else None
    if resumed is not None:
        accelerator.load_state(str(resumed))
        state = json.loads((resumed / STATE_FILE).read_text())
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_done"]
        log = output / "train_log.jsonl"
        if accelerator.is_main_process and log.is_file():  # drop lines logged after the checkpoint
            rows = [r for r in log.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= step]
            write_text_atomic(log, "".join(r + "\n" for r in rows))

    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="fine-tuning",
        unit="step",
        disable=not (progress and accelerator.is_local_main_process) or None,
    )
    started, tokens, last_loss = time.time(), 0, float("nan")
    model.train()
    while step < total_steps:
        loader.set_epoch(epoch)
        dataset.epoch = epoch
        batches = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            batches_done += 1
            tokens += int(batch["attention_mask"].sum())
            if not accelerator.sync_gradients:
                continue
            step += 1
            last_loss = accelerator.gather(loss.detach()).mean().item()
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}", epoch=epoch)
            if accelerator.is_main_process and (step % config.log_every == 0 or step == total_steps):
                _log(output, step=step, epoch=epoch, loss=last_loss, lr=scheduler.get_last_lr()[0])
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                _save_checkpoint(accelerator, output, config, step, epoch, batches_done)
            if callback is not None:
                callback(step, last_loss)
            if step >= total_steps:
                break
        else:  # the epoch ran out
            epoch, batches_done = epoch + 1, 0
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final(accelerator.unwrap_model(model), tokenizer, config, output)
        summary = {
            "steps": step,
            "final_loss": last_loss,
            "seconds": round(time.time() - started, 1),
            "tokens_seen": tokens,
            "num_seed_triplets": len(triplets),
            "resumed_from": str(resumed) if resumed else None,
        }
        write_json_atomic(summary_file, summary)
    accelerator.wait_for_everyone()
    return output


def _log(output: Path, **row: Any) -> None:
    with open(output / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _save_checkpoint(
    accelerator, output: Path, config: FinetuneConfig, step: int, epoch: int, done: int
) -> None:
    folder = output / "checkpoints" / f"step-{step:08d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        state = {"step": step, "epoch": epoch, "batches_done": done}
        write_json_atomic(folder / STATE_FILE, state, indent=None, fsync=True)  # last: marks it complete
        old = sorted((output / "checkpoints").glob("step-*"))[: -config.keep_checkpoints]
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_final(model, tokenizer, config: FinetuneConfig, output: Path) -> None:
    """The trained model (or LoRA adapter) and tokenizer, loadable by :func:`ip2p.text.hf.load_causal_lm`."""
    if config.lora and config.merge_lora:
        model = model.merge_and_unload()
    model.save_pretrained(str(output))
    tokenizer.save_pretrained(str(output))
