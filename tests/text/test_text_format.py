"""The paper's prompt/completion format, its parser, the no-op rule, seeds and the training encoding."""

import json

import pytest

from ip2p.text.format import (
    DELIMITER_0,
    DELIMITER_1,
    STOP,
    Triplet,
    caption_seed,
    is_noop,
    make_completion,
    make_prompt,
    normalize_caption,
    parse_completion,
)
from ip2p.text.sources import HUMAN_SEEDS, TextSourceError, default_seeds, read_seed_triplets


def test_format_is_prepare_for_gpt():
    t = Triplet("girl with horse at sunset", "change the background to a city", "girl with horse in a city")
    assert DELIMITER_0 == "\n##\n" and DELIMITER_1 == "\n%%\n" and STOP == "\nEND"
    assert t.prompt() == make_prompt(t.input) == "girl with horse at sunset\n##\n"
    assert t.completion() == make_completion(t.edit, t.output)
    assert t.completion() == "change the background to a city\n%%\ngirl with horse in a city\nEND"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("make it red\n%%\na red car", ("make it red", "a red car")),
        (
            "make it red\n%%\na red car\nEND",
            ("make it red", "a red car"),
        ),  # stop sequence kept by the sampler
        ("make it red\n%%\na red car\nEND\nmore\n%%\njunk", ("make it red", "a red car")),  # text after END
        ("  make it red \n%%\n a red car  ", ("make it red", "a red car")),
        ("make it red", None),  # no delimiter
        ("a\n%%\nb\n%%\nc", None),  # three parts: the original accepts exactly two
        ("\n%%\na red car", None),  # empty instruction
        ("make it red\n%%\n  ", None),  # empty edited caption
        ("make it red %% a red car", None),  # the delimiter needs its newlines
    ],
)
def test_parse_completion(text, expected):
    assert parse_completion(text) == expected


def test_roundtrip_of_every_seed_triplet():
    for t in read_seed_triplets("toy"):
        assert parse_completion(t.completion()) == (t.edit, t.output)


def test_noop_rule_is_the_originals_normalisation():
    assert normalize_caption("  A Red Car!? ") == "a red car"
    assert is_noop("A red car.", "a red car")
    assert is_noop("a red car", "A RED CAR!")
    assert not is_noop("a red car", "a blue car")
    assert not is_noop("a red car", "a red car, at night")


def test_caption_seed_depends_on_seed_caption_and_attempt_only():
    s = caption_seed(0, "a cat")
    assert s == caption_seed(0, "a cat") and 0 <= s < 2**63
    assert len({s, caption_seed(1, "a cat"), caption_seed(0, "a dog"), caption_seed(0, "a cat", 1)}) == 4


def test_triplet_from_dict_validates():
    assert Triplet.from_dict({"input": "a", "edit": "b", "output": "c", "url": "x"}) == Triplet("a", "b", "c")
    with pytest.raises(ValueError, match="edit"):
        Triplet.from_dict({"input": "a", "output": "c"})


def test_toy_seeds_and_seed_files(tmp_path):
    toy = read_seed_triplets("toy")
    assert len(toy) == 700 and all(isinstance(t, Triplet) for t in toy)
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps({"input": "a", "edit": "b", "output": "c"}) + "\n\n")
    assert read_seed_triplets(path) == [Triplet("a", "b", "c")]
    with pytest.raises(TextSourceError, match="no such seed file"):
        read_seed_triplets(tmp_path / "missing.jsonl")
    path.write_text(json.dumps({"input": "a", "edit": "b"}) + "\n")
    with pytest.raises(TextSourceError, match="triplet 1"):
        read_seed_triplets(path)


@pytest.mark.skipif(
    not HUMAN_SEEDS.is_file(), reason="shared/data/human-written-prompts.jsonl is not present"
)
def test_the_papers_human_written_seeds_are_the_default():
    assert default_seeds() == str(HUMAN_SEEDS)
    seeds = read_seed_triplets()
    assert len(seeds) == 700
    assert all(t.input and t.edit and t.output and not is_noop(t.input, t.output) for t in seeds)


def test_encoding_puts_the_loss_on_the_completion_only():
    from ip2p.text.finetune import IGNORE_INDEX, collate, encode_example
    from ip2p.toy.lm import build_toy_tokenizer

    tok = build_toy_tokenizer()
    t = read_seed_triplets("toy")[0]
    ex = encode_example(tok, t, max_length=512)
    n_prompt = len(tok(t.prompt())["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id  # the model learns to end after END
    assert tok.decode(ex["input_ids"], skip_special_tokens=True) == t.prompt() + t.completion()
    short = encode_example(tok, t, max_length=10)
    assert len(short["input_ids"]) == len(short["labels"]) == 10
    batch = collate([ex, short], tok.pad_token_id)
    assert (
        batch["input_ids"].shape
        == batch["labels"].shape
        == batch["attention_mask"].shape
        == (2, len(ex["input_ids"]))
    )
    assert batch["attention_mask"][1].sum() == 10 and (batch["labels"][1, 10:] == IGNORE_INDEX).all()


def test_toy_tokenizer_makes_words_single_tokens_and_roundtrips():
    from ip2p.toy.captions import VOCABULARY
    from ip2p.toy.lm import build_toy_tokenizer

    tok = build_toy_tokenizer()
    for word in VOCABULARY:
        if word.isalpha():
            assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    text = "Anything else: ünïcode, digits 123 and \n##\n delimiters\n%%\n!\nEND"
    assert tok.decode(tok(text)["input_ids"]) == text
