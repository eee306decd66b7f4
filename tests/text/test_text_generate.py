"""Stage 1's loop with the deterministic fake backend: filters and their counts, retries, the resumable output."""

import json

import pytest

from ip2p.text.backends import FakeGenerator, ItemError
from ip2p.text.filters import FilterConfig, TripletFilter, blocklist_pattern
from ip2p.text.format import DELIMITER_1, caption_seed
from ip2p.text.generate import GenerateConfig, caption_order, generate_triplets, sidecar
from ip2p.text.writer import JsonlLog


def lines(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def scripted(table):
    """A fake whose completion for a caption is table[caption][attempt] (attempt found from the seed)."""

    def respond(caption, seed):
        for attempt, completion in enumerate(table[caption]):
            if caption_seed(0, caption, attempt) == seed:
                return completion
        raise AssertionError("more tries than scripted")

    return FakeGenerator(respond)


def test_filters_are_counted_and_retried(tmp_path):
    good = f"make it red{DELIMITER_1}a red car"
    table = {
        "a car": [
            "no delimiter",
            f"make it red{DELIMITER_1}A car.",
            good,
        ],  # unparsable, then no-op, then fine on the third try
        "a boat": ["junk"] * 4,  # given up after 1 + 3 tries
        "a dog": [f"make it huge{DELIMITER_1}" + "x" * 50] * 4,  # too long every time
        "a cat": [f"make it a lion{DELIMITER_1}A CAT!"] * 4,  # no-op every time
        "a bad word here": ["never asked"],
        "a tree": [f"paint it with a bad word{DELIMITER_1}a painted tree"] * 4,  # blocked output
        "A car.": [f"make it red{DELIMITER_1}a red car"],  # same triplet as "a car" after normalisation
    }
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("# comment\nbad word\n")
    captions = [*table, "a car", " a car "]  # two exact duplicates of "a car"
    config = GenerateConfig(
        output=str(tmp_path / "out.jsonl"),
        shuffle=False,
        batch_size=3,
        filters=FilterConfig(max_chars=40, blocklist=str(blocklist)),
    )
    report = generate_triplets(captions, scripted(table), config, progress=False)
    kept = lines(config.output)
    assert [(r["input"], r["edit"], r["output"]) for r in kept] == [("a car", "make it red", "a red car")]
    assert kept[0]["provenance"] == {
        "backend": "fake",
        "model": "fake",
        "sampling": None,
        "seed": 0,
        "sample_seed": caption_seed(0, "a car", 2),
        "attempt": 2,
    }
    assert report.skipped == {"duplicate_caption": 2, "caption_blocked": 1}
    assert report.dropped == {"unparsable": 1, "length": 1, "noop": 1, "blocked": 1, "duplicate_triplet": 1}
    assert report.rejected_attempts == {
        "unparsable": 1 + 4,
        "noop": 1 + 4,
        "length": 4,
        "blocked": 4,
        "duplicate_triplet": 1,
    }
    assert report.kept == report.total == 1 and report.captions == len(captions)
    rejected = {r["input"]: r for r in lines(sidecar(config.output, "rejected"))}
    assert rejected["a boat"]["reason"] == "unparsable" and rejected["a boat"]["attempts"] == 4
    assert rejected["A car."]["reason"] == "duplicate_triplet"
    assert json.loads(sidecar(config.output, "report").read_text())["dropped"]["noop"] == 1
    saved = json.loads(sidecar(config.output, "config").read_text())
    assert saved["identity"]["seed"] == 0 and saved["generate"]["filters"]["max_chars"] == 40


def test_filter_pieces():
    f = TripletFilter(FilterConfig(min_chars=3))
    assert f.check_caption("ab") == "caption_length"
    assert f.check_caption("ab") == "duplicate_caption"
    assert f.check_output("a cat", "x\n%%\na dog") == "length"
    pattern = blocklist_pattern(["cat"])
    assert pattern.search("a Cat.") and not pattern.search("a category")
    with pytest.raises(ValueError, match="no such blocklist"):
        TripletFilter(FilterConfig(blocklist="/nonexistent/list.txt"))


def test_num_samples_partitions_and_order(tmp_path):
    captions = [f"caption number {i}" for i in range(10)]
    # The original's order: np.random.seed(seed); array_split(permutation(n), parts)[part].
    import numpy as np

    np.random.seed(3)
    expected = np.array_split(np.random.permutation(10), 3)[1]
    assert caption_order(10, 3, num_partitions=3, partition=1) == list(expected)
    config = GenerateConfig(output=str(tmp_path / "o.jsonl"), seed=3, num_samples=4, batch_size=3)
    report = generate_triplets(captions, FakeGenerator(), config, progress=False)
    assert report.total == 4 and [r["input"] for r in lines(config.output)] == [
        captions[i] for i in caption_order(10, 3)[:4]
    ]
    # A larger num_samples continues where the first run stopped.
    config.num_samples = 6
    assert generate_triplets(captions, FakeGenerator(), config, progress=False).kept == 2
    assert len(lines(config.output)) == 6


class Interrupt(Exception):
    pass


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    captions = [f"caption {i}" for i in range(23)] + ["caption 3"]
    flaky = {"caption 5", "caption 17"}

    def respond(caption, seed):  # deterministic in (caption, seed); some need retries
        if caption in flaky and caption_seed(0, caption, 0) == seed:
            return "unparsable"
        return f"edit {seed % 7}{DELIMITER_1}{caption} edited"

    full = GenerateConfig(output=str(tmp_path / "full.jsonl"), batch_size=4)
    generate_triplets(captions, FakeGenerator(respond), full, progress=False)

    calls = {"n": 0}

    def dying(caption, seed):
        calls["n"] += 1
        if calls["n"] > 9:
            raise Interrupt  # the process dies mid-batch
        return respond(caption, seed)

    part = GenerateConfig(output=str(tmp_path / "part.jsonl"), batch_size=4)
    with pytest.raises(Interrupt):
        generate_triplets(captions, FakeGenerator(dying), part, progress=False)
    done_before = len(lines(part.output))
    assert 0 < done_before < len(lines(full.output))
    with open(part.output, "a", encoding="utf-8") as f:
        f.write('{"input": "half a li')  # a kill during a write leaves a partial last line
    # Resume with another batch size: per-caption seeds make the result independent of batching.
    part.batch_size = 5
    report = generate_triplets(captions, FakeGenerator(respond), part, progress=False)
    assert report.kept == len(lines(full.output)) - done_before
    assert open(part.output).read() == open(full.output).read()
    # A third run has nothing left to do.
    again = generate_triplets(captions, FakeGenerator(respond), part, progress=False)
    assert again.kept == 0 and again.already_done == 24  # the duplicate "caption 3" too


def test_resume_refuses_other_settings_and_overwrite_starts_over(tmp_path):
    config = GenerateConfig(output=str(tmp_path / "o.jsonl"))
    generate_triplets(["a cat", "a dog"], FakeGenerator(), config, progress=False)
    config.seed = 1
    with pytest.raises(ValueError, match="other settings.*seed"):
        generate_triplets(["a cat"], FakeGenerator(), config, progress=False)
    config.overwrite = True
    assert generate_triplets(["a cat"], FakeGenerator(), config, progress=False).total == 1


def test_backend_errors_leave_captions_undone(tmp_path):
    config = GenerateConfig(output=str(tmp_path / "o.jsonl"))
    down = FakeGenerator(lambda c, s: ItemError("HTTP 503") if c == "a dog" else f"x y{DELIMITER_1}{c} z")
    report = generate_triplets(["a cat", "a dog"], down, config, progress=False)
    assert (
        report.backend_errors == 1 and report.kept == 1 and not sidecar(config.output, "rejected").read_text()
    )
    report = generate_triplets(["a cat", "a dog"], FakeGenerator(), config, progress=False)
    assert report.kept == 1 and report.already_done == 1


def test_jsonl_log_drops_a_partial_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')
    log = JsonlLog(path, fsync=False)
    assert log.open() == [{"a": 1}, {"a": 2}]
    log.append([{"a": 4}, {"a": 5}])
    log.close()
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 4}\n{"a": 5}\n'
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="log.jsonl:1"):
        JsonlLog(path).open()
