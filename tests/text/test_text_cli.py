"""`ip2p gen-text` and `ip2p finetune-text`, and reading captions from txt/jsonl/csv/parquet."""

import csv
import json

import pytest

from ip2p.cli import main
from ip2p.text.sources import TextSourceError, read_captions

CAPTIONS = ["a red car on a road", "  a cat on a sofa ", "", "a boat at sea"]
EXPECTED = ["a red car on a road", "a cat on a sofa", "a boat at sea"]


@pytest.fixture
def caption_files(tmp_path):
    files = {}
    files["txt"] = tmp_path / "c.txt"
    files["txt"].write_text("\n".join(CAPTIONS) + "\n")
    files["jsonl"] = tmp_path / "c.jsonl"
    files["jsonl"].write_text(
        "".join(json.dumps({"id": i, "TEXT": c}) + "\n" for i, c in enumerate(CAPTIONS))
    )
    files["csv"] = tmp_path / "c.csv"
    with open(files["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, ["url", "caption"])
        writer.writeheader()
        writer.writerows({"url": f"u{i}", "caption": c} for i, c in enumerate(CAPTIONS))
    import pyarrow as pa
    import pyarrow.parquet as pq

    files["parquet"] = tmp_path / "c.parquet"
    pq.write_table(pa.table({"my_text": CAPTIONS + [None], "n": list(range(5))}), files["parquet"])
    return files


def test_read_captions_from_every_format(caption_files):
    assert read_captions(caption_files["txt"]) == EXPECTED
    assert read_captions(caption_files["jsonl"]) == EXPECTED  # the column found by name (TEXT, as LAION's)
    assert read_captions(caption_files["csv"]) == EXPECTED
    assert read_captions(caption_files["parquet"], column="my_text") == EXPECTED


def test_read_captions_errors(caption_files, tmp_path):
    with pytest.raises(TextSourceError, match="no column 'nope'; columns are 'url', 'caption'"):
        read_captions(caption_files["csv"], column="nope")
    with pytest.raises(TextSourceError, match="none of the caption columns"):
        read_captions(caption_files["parquet"])
    with pytest.raises(TextSourceError, match="no such file"):
        read_captions(tmp_path / "missing.jsonl")
    with pytest.raises(TextSourceError, match="toy:N"):
        read_captions("toy:many")
    (tmp_path / "bad.jsonl").write_text('{"caption": "x"}\nnot json\n')
    with pytest.raises(TextSourceError, match="bad.jsonl:2"):
        read_captions(tmp_path / "bad.jsonl")


def test_toy_captions_are_held_out_from_the_training_seeds():
    from ip2p.toy.captions import parse_caption
    from ip2p.toy.seeds import seed_triplets

    captions = read_captions("toy:40")
    assert len(set(captions)) == 40 and not set(captions) & {t["input"] for t in seed_triplets(700, seed=0)}
    assert all(parse_caption(c) for c in captions)


def test_gen_text_with_the_fake_backend_resumes(caption_files, tmp_path, capsys):
    out = tmp_path / "out" / "t.jsonl"
    args = ["gen-text", str(caption_files["csv"]), "-o", str(out), "--backend", "fake", "--no-progress"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] == 3 and len(out.read_text().splitlines()) == 3
    assert main(args) == 0
    assert "kept 0 (output holds 3); already done 3" in capsys.readouterr().out
    assert (tmp_path / "out" / "t.config.json").is_file() and (tmp_path / "out" / "t.report.json").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["MISSING.txt", "--backend", "fake"], "MISSING.txt: no such file"),
        (["CSV", "--backend", "fake", "--column", "nope"], "no column 'nope'"),
        (["CSV", "--backend", "gpt5"], "unknown backend 'gpt5'; choose hf, openai or fake"),
        (["CSV", "--backend", "hf"], "the hf backend needs --model"),
        (["CSV", "--backend", "hf", "--model", "NOWHERE"], "cannot load a causal language model"),
        (["CSV", "--backend", "fake", "--blocklist", "NOWHERE.txt"], "NOWHERE.txt: no such blocklist file"),
        (["CSV", "--backend", "fake", "--partition", "2"], "partition 2 of 1"),
        (["CSV", "--backend", "fake", "--temperature", "0"], "temperature must be > 0"),
        (["CSV", "--backend", "fake", "--caption-temperature", "-1"], "caption temperature must be >= 0"),
        (
            ["CSV", "--backend", "openai", "--model", "m", "--caption-temperature", "0"],
            "needs the hf backend",
        ),
        (["CSV", "--backend", "openai", "--model", "m", "--seeds", "NOWHERE.jsonl"], "no such seed file"),
        (["CSV", "--backend", "openai", "--model", "m", "--base-url", "ftp://x"], "must start with http"),
    ],
)
def test_gen_text_bad_inputs_are_one_line_errors(caption_files, tmp_path, capsys, extra, message):
    extra = [
        str(caption_files["csv"]) if a == "CSV" else str(tmp_path / a) if a.isupper() else a for a in extra
    ]
    assert main(["gen-text", *extra, "-o", str(tmp_path / "o.jsonl"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ip2p: error:") and message in err and "\n" not in err


def test_finetune_text_then_gen_text_with_the_hf_backend(tmp_path, capsys):
    model = tmp_path / "toy-lm"
    assert (
        main(
            [
                "finetune-text",
                "--preset",
                "toy",
                "--output",
                str(model),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--no-progress",
                "--cpu",
            ]
        )  # fmt: skip
        == 0
    )
    assert "trained 2 steps" in capsys.readouterr().out
    saved = json.loads((model / "finetune_config.json").read_text())
    assert saved["model"] == "toy" and saved["seeds"] == "toy" and saved["max_steps"] == 2
    # the toy LM's second phase: the first phase's model on relabelled seeds
    phase2 = tmp_path / "toy-lm-2"
    argv = ["finetune-text", "--preset", "toy-relabel", "--model", str(model), "-o", str(phase2)]
    assert main([*argv, "--max-steps", "2", "--batch-size", "4", "--no-progress", "--cpu"]) == 0
    capsys.readouterr()
    saved = json.loads((phase2 / "finetune_config.json").read_text())
    assert saved["model"] == str(model) and saved["relabel"] and saved["paraphrase"]
    out = tmp_path / "t.jsonl"
    args = [
        "gen-text",
        "toy:3",
        "-o",
        str(out),
        "--model",
        str(model),
        "--max-new-tokens",
        "4",
        "--num-retries",
        "0",
    ]
    assert main([*args, "--no-progress", "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["captions"] == 3 and report["kept"] + sum(report["dropped"].values()) == 3


def test_finetune_text_bad_inputs(tmp_path, capsys):
    assert (
        main(
            ["finetune-text", "--model", "toy", "--seeds", str(tmp_path / "none.jsonl"), "-o", str(tmp_path)]
        )
        == 1
    )
    assert "none.jsonl: no such seed file" in capsys.readouterr().err
    assert main(["finetune-text", "-o", str(tmp_path)]) == 1
    assert "no model: give --model" in capsys.readouterr().err
    assert main(["finetune-text", "--preset", "toy", "--lora", "-o", str(tmp_path)]) == 1
    assert "LoRA adapts a pretrained model" in capsys.readouterr().err
    assert main(["finetune-text", "--preset", "toy-relabel", "-o", str(tmp_path)]) == 1
    assert "no model: give --model" in capsys.readouterr().err


def test_every_flag_has_help():
    from ip2p.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("gen-text", "finetune-text"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
