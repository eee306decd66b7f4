"""The toy world's language model: its tokenizer, paraphrase augmentation, and the validity measurement."""

import random

import pytest

from ip2p.text.backends import FakeGenerator
from ip2p.text.finetune import SeedDataset
from ip2p.text.format import DELIMITER_1, Triplet, parse_completion
from ip2p.text.sources import read_seed_triplets
from ip2p.toy.lm import (
    build_toy_model,
    build_toy_tokenizer,
    heldout_toy_captions,
    measure_validity,
    paraphrase,
    relabel,
    triplet_is_valid,
)


def test_validity_is_exact():
    seeds = read_seed_triplets("toy")
    assert all(triplet_is_valid(t) for t in seeds[:100])
    t = seeds[0]
    assert not triplet_is_valid(Triplet(t.input, t.edit, t.input))  # the edit not applied
    assert not triplet_is_valid(
        Triplet(t.input, "make it pretty", t.output)
    )  # words outside the toy language


def test_paraphrase_keeps_the_edit_and_varies_the_wording():
    from ip2p.toy.captions import parse_caption
    from ip2p.toy.edits import edit_type_of

    seeds = read_seed_triplets("toy")
    rng = random.Random(0)
    phrased = [paraphrase(t, rng) for t in seeds]
    assert all(triplet_is_valid(p) for p in phrased)  # every one of the 700
    pairs = list(zip(phrased, seeds, strict=True))
    assert all(parse_caption(p.input) == parse_caption(t.input) for p, t in pairs)  # the same scenes
    assert all(edit_type_of(p.edit) == edit_type_of(t.edit) for p, t in pairs)  # the same edits
    assert sum(p.input != t.input for p, t in pairs) > 650 and sum(p.edit != t.edit for p, t in pairs) > 550
    odd = Triplet("not a toy caption", "x", "y")
    assert paraphrase(odd, rng) == odd


def test_relabel_renames_symbols_and_keeps_triplets_valid():
    from ip2p.toy.captions import parse_caption
    from ip2p.toy.edits import edit_type_of

    seeds = read_seed_triplets("toy")
    rng = random.Random(0)
    renamed = [relabel(t, rng) for t in seeds]
    assert all(triplet_is_valid(r) for r in renamed)  # edits commute with renaming: every one of the 700
    pairs = list(zip(renamed, seeds, strict=True))
    assert all(edit_type_of(r.edit) == edit_type_of(t.edit) for r, t in pairs)
    shapes = [(len(parse_caption(r.input).shapes), len(parse_caption(t.input).shapes)) for r, t in pairs]
    assert all(a == b for a, b in shapes)  # the same structure ...
    assert sum(parse_caption(r.input) != parse_caption(t.input) for r, t in pairs) > 650  # ... other scenes
    colours = {s.color for r in renamed for s in parse_caption(r.input).shapes}
    assert len(colours) == 6
    odd = Triplet("not a toy caption", "x", "y")
    assert relabel(odd, rng) == odd


def test_seed_dataset_relabels_when_asked():
    tok = build_toy_tokenizer()
    seeds = read_seed_triplets("toy")[:8]
    data = SeedDataset(seeds, tok, 512, paraphrase_seed=0, relabel=True)
    texts = [tok.decode(data[i]["input_ids"], skip_special_tokens=True) for i in range(8)]
    assert texts == [tok.decode(data[i]["input_ids"], skip_special_tokens=True) for i in range(8)]
    parsed = [Triplet(t.split("\n##\n")[0], *parse_completion(t.split("\n##\n")[1])) for t in texts]
    assert all(triplet_is_valid(t) for t in parsed)
    assert sum(p.input != s.input for p, s in zip(parsed, seeds, strict=True)) >= 7


def test_seed_dataset_paraphrases_per_epoch_deterministically():
    tok = build_toy_tokenizer()
    seeds = read_seed_triplets("toy")[:4]
    data = SeedDataset(seeds, tok, 512, paraphrase_seed=0)
    first = [data[i]["input_ids"] for i in range(4)]
    assert first == [data[i]["input_ids"] for i in range(4)]
    data.epoch = 1
    assert first != [data[i]["input_ids"] for i in range(4)]
    plain = SeedDataset(seeds, tok, 512)
    plain.epoch = 1
    assert (
        tok.decode(plain[0]["input_ids"], skip_special_tokens=True)
        == seeds[0].prompt() + seeds[0].completion()
    )


def test_measure_validity_with_an_oracle_and_a_liar(tmp_path):
    from ip2p.toy.captions import caption, parse_caption
    from ip2p.toy.edits import random_edit

    def oracle(text, seed):  # a correct edit in canonical wording
        edit = random_edit(parse_caption(text), random.Random(seed))
        return f"{edit.instruction}{DELIMITER_1}{caption(edit.after)}"

    captions = heldout_toy_captions(12)
    good = measure_validity(FakeGenerator(oracle), captions, tmp_path / "good.jsonl")
    assert good["valid_raw"] == good["valid_filtered"] == good["yield"] == 1.0
    assert all(row["valid"] == 1.0 for row in good["by_type"].values())
    assert sum(row["share"] for row in good["by_type"].values()) == pytest.approx(1.0)
    assert "unreadable" not in good["by_type"]
    liar = FakeGenerator(
        lambda text, seed: "remove the shapes" if seed % 2 else f"x{DELIMITER_1}{text}, changed"
    )
    bad = measure_validity(liar, captions, tmp_path / "bad.jsonl")
    assert bad["valid_raw"] == 0.0 and bad["valid_filtered"] == 0.0

    def mislabeller(text, seed):  # asks for a new background but restyles the shapes
        scene = parse_caption(text)
        asked = random_edit(scene, random.Random(seed), "background")
        done = random_edit(scene, random.Random(seed), "style")
        return f"{asked.instruction}{DELIMITER_1}{caption(done.after)}"

    wrong = measure_validity(FakeGenerator(mislabeller), captions, tmp_path / "wrong.jsonl")
    assert wrong["kept"] > 0 and wrong["by_type"] == {"background": {"share": 1.0, "valid": 0.0}}


def test_toy_model_size():
    tok = build_toy_tokenizer()
    model = build_toy_model(len(tok), tok.eos_token_id)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    assert model.config.tie_word_embeddings and model.config.max_position_embeddings >= 256 + 64


def test_the_plugin_gives_the_core_its_toy_sources_builder_and_augmentations():
    """What the core reaches by name through ip2p.registry is the toy world's own."""
    from ip2p.registry import LM_BUILDERS, TRIPLET_AUGMENTATIONS
    from ip2p.text.config import FinetuneConfig
    from ip2p.text.finetune import load_for_training
    from ip2p.text.sources import TextSourceError, read_captions
    from ip2p.toy.seeds import seed_triplets

    assert read_captions("toy:3") == heldout_toy_captions(3)
    assert [t.input for t in read_seed_triplets("toy:5")] == [t["input"] for t in seed_triplets(5, seed=0)]
    assert len(read_seed_triplets("toy")) == 700
    with pytest.raises(TextSourceError, match="write toy or toy:N with N a positive number"):
        read_captions("toy:zero")
    t = read_seed_triplets("toy:1")[0]
    for name, augment in (("paraphrase", paraphrase), ("relabel", relabel)):
        assert TRIPLET_AUGMENTATIONS.get(name)(t, random.Random(3)) == augment(t, random.Random(3))
    config = FinetuneConfig(model="toy", toy_layers=1, toy_width=16, output="unused")
    model, tokenizer = load_for_training(config)
    assert LM_BUILDERS.find("toy") is not None and model.config.num_hidden_layers == 1
    assert model.config.hidden_size == 16 and len(tokenizer) == model.config.vocab_size


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_lm_validity_measures_a_saved_model_on_captions_held_out_from_its_seeds(tmp_path):
    from ip2p.toy.lm import lm_validity

    tok = build_toy_tokenizer()
    build_toy_model(len(tok), tok.eos_token_id, layers=1, width=16).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    (tmp_path / "lm" / "finetune_config.json").write_text('{"seeds": "toy:50"}')
    result = lm_validity(tmp_path / "lm", n=3, device="cpu")
    assert result["captions"] == 3 and result["trained_on"] == "toy:50"
    assert 0.0 <= result["valid_raw"] <= 1.0 and (tmp_path / "lm" / "eval.jsonl").is_file()
