"""The hf backend and fine-tuning on tiny randomly initialised causal LMs built from configs (no downloads)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ip2p.text.backends import SamplingConfig
from ip2p.text.finetune import FinetuneConfig, finetune
from ip2p.text.format import DELIMITER_1, STOP, Triplet, parse_completion
from ip2p.text.hf import (
    FrequencyPenaltyLogitsProcessor,
    HFGenerator,
    PerRowSampler,
    SplitTemperatureLogitsWarper,
    StopOnText,
    TextModelError,
    frequency_penalty,
    load_causal_lm,
)
from ip2p.text.sources import read_seed_triplets
from ip2p.toy.lm import build_toy_model, build_toy_tokenizer

TINY = {"toy_layers": 1, "toy_width": 64}  # a ~80k-parameter Llama over the toy tokenizer
TRIPLET = Triplet(
    "a small red circle in the center on a white background",
    "make the circle blue",
    "a small blue circle in the center on a white background",
)


@pytest.fixture(scope="module")
def tok():
    return build_toy_tokenizer()


@pytest.fixture(scope="module")
def one_triplet_lm(tmp_path_factory):
    """A tiny GPT-2 trained from scratch until it has memorised one triplet (a few seconds)."""
    folder = tmp_path_factory.mktemp("lm")
    seeds = folder / "seeds.jsonl"
    seeds.write_text((json.dumps(TRIPLET.to_dict()) + "\n") * 8)
    config = FinetuneConfig(
        model="toy", seeds=str(seeds), output=str(folder / "model"), epochs=60, learning_rate=1e-2,
        batch_size=8, checkpoint_every=0, **TINY,
    )  # fmt: skip
    return finetune(config, progress=False)


def test_frequency_penalty_is_openais_definition():
    scores = torch.zeros(2, 6)
    generated = torch.tensor([[1, 1, 3], [5, 5, 5]])  # (B, T)
    out = frequency_penalty(scores, generated, frequency=0.1, presence=0.5)
    expected = torch.zeros(2, 6)
    expected[0, 1], expected[0, 3] = -(2 * 0.1 + 0.5), -(0.1 + 0.5)
    expected[1, 5] = -(3 * 0.1 + 0.5)
    torch.testing.assert_close(out, expected)
    assert torch.equal(frequency_penalty(scores, generated[:, :0], 0.1), scores)  # nothing generated yet


def test_frequency_penalty_processor_ignores_the_prompt():
    ids = torch.tensor([[4, 4, 4, 2, 2]])  # prompt of 3 tokens, then two 2s generated
    out = FrequencyPenaltyLogitsProcessor(prompt_length=3, frequency=0.1)(ids, torch.zeros(1, 6))
    assert out[0, 2] == pytest.approx(-0.2) and out[0, 4] == 0 and out[0].count_nonzero() == 1


def test_per_row_sampler_draws_from_each_rows_generator():
    scores = torch.randn(3, 50)
    a = PerRowSampler([1, 2, 3], torch.device("cpu"))(None, scores)
    b = PerRowSampler([2], torch.device("cpu"))(None, scores[1:2])
    assert (a.isfinite().sum(-1) == 1).all()
    assert torch.equal(a[1], b[0])  # row 1's draw does not depend on the other rows


def test_stop_on_text_is_per_row(tok):
    rows = [
        tok("p\n##\nedit\n%%\nout\nEND")["input_ids"],
        tok("p\n##\nedit\n%%\nout, still going")["input_ids"],
    ]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    assert StopOnText(tok, prompt_length=3)(ids, None).tolist() == [True, False]


def test_split_temperature_switches_per_row_after_the_separator(tok):
    rows = [
        tok("p\n##\nmake the circle blue\n%%\na")["input_ids"],  # in its edited caption
        tok("p\n##\nmake the circle blue")["input_ids"],  # still writing its instruction
    ]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    scores = torch.randn(2, 20)
    greedy = SplitTemperatureLogitsWarper(tok, prompt_length=3, instruction=0.5, caption=0.0)(
        ids, scores.clone()
    )
    torch.testing.assert_close(greedy[1], scores[1] / 0.5)
    assert greedy[0].isfinite().sum() == 1 and greedy[0].argmax() == scores[0].argmax()
    cooler = SplitTemperatureLogitsWarper(tok, prompt_length=3, instruction=0.5, caption=0.25)(
        ids, scores.clone()
    )
    torch.testing.assert_close(cooler, torch.stack([scores[0] / 0.25, scores[1] / 0.5]))
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(caption_temperature=-1).validate()


def test_greedy_caption_keeps_the_sampled_instruction(one_triplet_lm):
    """Instruction sampled hot, edited caption greedy: the instruction is the one plain sampling draws with the
    same seed, and the caption is the model's argmax continuation of it."""
    model, tok = load_causal_lm(one_triplet_lm, device="cpu")

    def sample(caption_temperature):
        sampling = SamplingConfig(
            temperature=2.5, frequency_penalty=0.0, max_new_tokens=64, caption_temperature=caption_temperature
        )
        return HFGenerator(model, tok, sampling, batch_size=4).generate([TRIPLET.input] * 6, list(range(6)))

    plain, split = sample(None), sample(0.0)
    reached = [i for i, out in enumerate(split) if DELIMITER_1 in out]
    assert reached  # at this temperature some rows still reach the separator
    for i in reached:
        instruction = split[i].split(DELIMITER_1)[0]
        assert plain[i].split(DELIMITER_1)[0] == instruction  # same draws up to the separator
        prefix = TRIPLET.prompt() + instruction + DELIMITER_1
        ids = model.generate(
            **tok(prefix, return_tensors="pt"),
            max_new_tokens=64,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        assert tok.decode(ids[0], skip_special_tokens=True).startswith(TRIPLET.prompt() + split[i])
    assert any(plain[i] != split[i] for i in reached)


def test_sampling_is_independent_of_the_batch(tok):
    model = build_toy_model(len(tok), tok.eos_token_id, layers=1, width=32).eval()
    gen = HFGenerator(model, tok, SamplingConfig(max_new_tokens=10), batch_size=8)
    a, b = (
        "a red circle on a white background",
        "two shapes on navy: a small red circle and a big blue square",
    )
    together = gen.generate([a, b], [11, 12])
    assert together == gen.generate([a], [11]) + gen.generate([b], [12])
    assert together != gen.generate([a, b], [13, 14])


def test_finetuned_lm_writes_the_triplet_batched_and_stops_at_end(one_triplet_lm):
    summary = json.loads((one_triplet_lm / "train_summary.json").read_text())
    assert summary["final_loss"] < 0.3
    gen = HFGenerator.from_pretrained(
        one_triplet_lm, SamplingConfig(max_new_tokens=64), batch_size=2, device="cpu"
    )
    other = "three shapes on a black background: a big red square at the top left, and more"
    out = gen.generate([TRIPLET.input, other, TRIPLET.input], [1, 2, 3])
    assert out[0] == out[2] == TRIPLET.edit + DELIMITER_1 + TRIPLET.output  # cut before "\nEND"
    assert parse_completion(out[0]) == (TRIPLET.edit, TRIPLET.output)
    assert all(STOP not in o for o in out)
    settings = gen.settings()
    assert settings["sampling"]["frequency_penalty"] == 0.1 and settings["model"] == str(one_triplet_lm)


def test_finetuning_resumes_to_the_uninterrupted_weights(tmp_path):
    seeds = tmp_path / "seeds.jsonl"  # 6 triplets in batches of 2: 3 steps an epoch
    seeds.write_text("".join(json.dumps(t.to_dict()) + "\n" for t in read_seed_triplets("toy")[:6]))

    def config(name):
        return FinetuneConfig(
            model="toy", seeds=str(seeds), output=str(tmp_path / name), max_steps=7, batch_size=2,
            learning_rate=1e-3, checkpoint_every=2, log_every=1, **TINY,
        )  # fmt: skip

    full = finetune(config("full"), progress=False)
    stamp = (full / "model.safetensors").stat().st_mtime_ns
    assert finetune(config("full"), progress=False) == full  # a finished job: nothing to do
    assert (full / "model.safetensors").stat().st_mtime_ns == stamp

    def die(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(config("part"), progress=False, callback=die)
    checkpoints = sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002", "step-00000004"]  # the last two kept; step 4 is mid epoch 1
    part = finetune(config("part"), progress=False)
    assert (part / "train_log.jsonl").read_text() == (full / "train_log.jsonl").read_text()
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "train_summary.json").read_text())["resumed_from"].endswith("step-00000004")
    with pytest.raises(ValueError, match="other settings.*learning_rate"):
        finetune(FinetuneConfig(**{**config("part").to_dict(), "learning_rate": 1.0}), progress=False)


def test_lora_trains_an_adapter_and_loads_merged(tmp_path, tok):
    pytest.importorskip("peft")
    base = tmp_path / "base"
    model = build_toy_model(len(tok), tok.eos_token_id, layers=1, width=32)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    config = FinetuneConfig(
        model=str(base), seeds="toy", output=str(tmp_path / "lora"), max_steps=3, batch_size=4,
        learning_rate=1e-2, lora=True, lora_r=4, lora_alpha=8, checkpoint_every=0,
    )  # fmt: skip
    out = finetune(config, progress=False)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    merged, _ = load_causal_lm(out, device="cpu")
    assert type(merged).__name__ == "LlamaForCausalLM"  # peft wrappers gone
    original = model.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(merged.state_dict()["model.layers.0.self_attn.q_proj.weight"], original)
    gen = HFGenerator(merged, tok, SamplingConfig(max_new_tokens=5))
    assert len(gen.generate(["a red circle on a white background"], [0])) == 1

    config.output, config.merge_lora = str(tmp_path / "merged"), True
    out = finetune(config, progress=False)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()


def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(TextModelError, match="cannot load a causal language model"):
        load_causal_lm(tmp_path, device="cpu")
    with pytest.raises(ValueError, match="LoRA adapts a pretrained model"):
        FinetuneConfig(model="toy", lora=True).validate()


def test_toy_names_the_bundled_language_model_and_says_where_it_is_missing(tmp_path, monkeypatch):
    from ip2p import registry

    registry.load_plugins()  # the toy plug-in's own entry, replaced for this test
    monkeypatch.setitem(registry.LANGUAGE_MODELS._items, "toy", tmp_path / "lm")
    with pytest.raises(
        TextModelError, match=f"bundled toy language model is not installed at {tmp_path / 'lm'}"
    ):
        load_causal_lm("toy", device="cpu")


@pytest.mark.slow
def test_finetuning_in_two_processes(tmp_path):
    """Data-parallel fine-tuning through accelerate (two CPU processes under torchrun, gloo), then a resume."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "mp"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "ip2p.cli", "finetune-text", "--preset", "toy"]
    cmd += [
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "-o",
        str(out),
        "--no-progress",
        "--cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained 4 steps") == 1  # printed by the main process only
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 4
