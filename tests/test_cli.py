"""The `ip2p edit` command line, run in-process through `ip2p.cli.main` on a tiny model folder."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ip2p.cli import main

FAST = ["--steps", "2", "--resolution", "32", "--seed", "5"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ip2p.models import save_edit_model
    from ip2p.tiny import tiny_components

    folder = tmp_path_factory.mktemp("cli") / "tiny"
    save_edit_model(tiny_components(), folder)
    return str(folder)


@pytest.fixture
def image_path(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_edit_one_image_writes_png_with_metadata(model_dir, image_path, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert (
        main(["edit", str(image_path), "make it red", "-o", str(out), "--model", model_dir, *FAST, "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"][0]["status"] == "ok" and summary["items"][0]["seed"] == 5
    text = Image.open(out).text
    assert text["ip2p:instruction"] == "make it red"
    assert text["ip2p:seed"] == "5" and text["ip2p:steps"] == "2"
    assert text["ip2p:text_guidance_scale"] == "7.5" and text["ip2p:image_guidance_scale"] == "1.5"
    assert text["ip2p:model"] == model_dir


def test_edit_with_the_tiny_builtin_model(image_path, tmp_path):
    out = tmp_path / "o.png"
    assert (
        main(["edit", str(image_path), "x", "-o", str(out), "--model", "tiny", *FAST, "--num-images", "2"])
        == 0
    )
    assert (tmp_path / "o_0.png").exists() and (tmp_path / "o_1.png").exists()


def test_batch_folder_resumes_and_records_failures(model_dir, tmp_path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 0, 0)).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "edited"
    code = main(["edit", str(src), "make it blue", "-o", str(out), "--model", model_dir, *FAST, "--json"])
    assert code == 1  # one item failed, the others were written
    summary = json.loads(capsys.readouterr().out)
    assert [s["status"] for s in summary["items"]] == ["failed", "ok", "ok"]
    assert sorted(p.name for p in out.iterdir()) == ["im0.png", "im1.png"]
    (src / "broken.png").unlink()
    assert (
        main(["edit", str(src), "make it blue", "-o", str(out), "--model", model_dir, *FAST, "--json"]) == 0
    )
    assert all(s["status"].startswith("skipped") for s in json.loads(capsys.readouterr().out)["items"])


def test_batch_jsonl(model_dir, image_path, tmp_path):
    listing = tmp_path / "jobs.jsonl"
    listing.write_text(
        json.dumps({"image": image_path.name, "instruction": "a", "output": "first.png"})
        + "\n\n"
        + json.dumps({"image": str(image_path), "instruction": "b"})
        + "\n"
    )
    out = tmp_path / "res"
    assert main(["edit", str(listing), "-o", str(out), "--model", model_dir, *FAST]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000003_in.png", "first.png"]
    assert Image.open(out / "first.png").text["ip2p:instruction"] == "a"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("notimage", "not an image"),
        ("truncated", "truncated"),
        ("bomb", "exceeds the limit"),
    ],
)
def test_bad_images_fail_in_one_line_and_write_nothing(model_dir, tmp_path, capsys, case, expected):
    path = tmp_path / "bad.png"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "notimage":
        path.write_text("hello")
    elif case == "truncated":
        Image.new("RGB", (64, 64), "red").save(path)
        path.write_bytes(path.read_bytes()[:60])
    elif case == "bomb":
        Image.new("L", (2000, 2000)).save(path)
    out = tmp_path / "out.png"
    extra = ["--max-pixels", "1000000"] if case == "bomb" else []
    code = main(["edit", str(path), "x", "-o", str(out), "--model", model_dir, *FAST, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("ip2p: error:") and expected in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out.png*"))


def test_bad_model_and_bad_output_fail_before_any_work(image_path, tmp_path, capsys):
    assert (
        main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "nope")])
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    assert (
        main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "junk")])
        == 1
    )
    assert "not a diffusers model folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["edit", str(image_path), "x", "-o", str(blocker / "o.png"), "--model", "tiny"]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_bad_flags_exit_non_zero(image_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--scheduler", "nope"])
    assert info.value.code == 2
    assert (
        main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--model", "tiny", "--steps", "0"])
        == 2
    )
    assert "steps must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "99999999999999999999"], "--seed must lie between 0 and 2**64-1"),
        (["--seed", "-1"], "--seed must lie between 0 and 2**64-1"),
        (["--device", "nope"], "--device 'nope' is not a device"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--resolution", "100000"], "resolution must be a multiple of 8 between 8 and 4096"),
        (["--resolution", "33"], "resolution must be a multiple of 8"),
        (["--max-pixels", "-1"], "--max-pixels must be at least 1"),
        (["--max-pixels", "0"], "--max-pixels must be at least 1"),
        (["--text-guidance", "nan"], "text_guidance_scale = nan"),
        (["--image-guidance", "inf"], "image_guidance_scale = inf"),
        (["--steps", "100000"], "steps must be at most 1000"),
    ],
)
def test_every_flag_is_checked_before_any_work_in_one_line(
    image_path, tmp_path, capsys, monkeypatch, flags, message
):
    import ip2p.pipeline

    monkeypatch.setattr(ip2p.pipeline.EditPipeline, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    out = tmp_path / "o.png"
    assert main(["edit", str(image_path), "x", "-o", str(out), "--model", "tiny", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ip2p edit: error: ") and message in err, err
    assert not out.exists()


def test_cuda_without_cuda_is_refused(image_path, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_output_naming_an_existing_folder_writes_inside_it(model_dir, image_path, tmp_path):
    folder = tmp_path / "edited"
    folder.mkdir()
    assert main(["edit", str(image_path), "x", "-o", str(folder), "--model", model_dir, *FAST]) == 0
    assert [p.name for p in folder.iterdir()] == ["in.png"]
    assert not (tmp_path / "edited.png").exists()


def test_one_image_is_decoded_once(model_dir, image_path, tmp_path, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert (
        main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--model", model_dir, *FAST]) == 0
    )
    assert len(opened) == 1


# -- flag values at random (Hypothesis): a config or a one-line error, never a traceback ---------------------------
def _random_flags():
    from hypothesis import strategies as st

    numbers = st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "--seed": numbers,
            "--resolution": numbers,
            "--steps": numbers,
            "--max-pixels": numbers,
            "--text-guidance": numbers,
            "--image-guidance": numbers,
            "--device": st.one_of(
                st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:99", "mps", "nope", "cpu:1", ""]),
                st.text(max_size=8),
            ),
        },
    )


@pytest.mark.slow
def test_random_flag_values_give_a_config_or_one_line_error(tmp_path):
    import contextlib
    import io

    from hypothesis import HealthCheck, given, settings

    missing = str(tmp_path / "missing.png")  # valid flags reach the input check: one line, exit 1

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_random_flags())
    def check(flags):
        argv = ["edit", missing, "x", "-o", str(tmp_path / "o.png"), "--model", "tiny"]
        for flag, value in flags.items():
            argv.append(f"{flag}={value}")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: a value that is not a number
                code = exc.code
        lines = err.getvalue().strip().splitlines()
        assert "Traceback" not in err.getvalue()
        assert code in (1, 2) and lines[-1].startswith(("ip2p edit: error: ", "ip2p: error: ")), lines
        assert (code == 1) == lines[-1].endswith("no such file or folder"), lines  # 2: a flag was refused
        assert (code == 1) == all(_valid(flag, str(value)) for flag, value in flags.items()), (flags, lines)
        if code == 2 and lines[0].startswith("ip2p edit: error: "):  # our own check: exactly one line
            assert len(lines) == 1

    check()


def _valid(flag: str, text: str) -> bool:
    """The flags' rules, written independently of ip2p's checks (the oracle of the test above)."""
    import math

    import torch

    if flag == "--device":
        return text in ("auto", "cpu") or (text in ("cuda", "cuda:0") and torch.cuda.is_available())
    try:
        value = float(text) if flag.endswith("guidance") else int(text)
    except ValueError:
        return False
    if flag == "--seed":
        return 0 <= value < 2**64
    if flag == "--resolution":
        return 8 <= value <= 4096 and value % 8 == 0
    if flag == "--steps":
        return 1 <= value <= 1000
    if flag == "--max-pixels":
        return value >= 1
    return math.isfinite(value) and -100 <= value <= 100


def test_empty_instruction_returns_the_input(model_dir, tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path)
    out = tmp_path / "o.png"
    assert main(["edit", str(path), "", "-o", str(out), "--model", model_dir, *FAST]) == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(path)))


def test_help_describes_every_flag():
    from ip2p.cli import build_parser

    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for flag in action._actions:
            if flag.option_strings and flag.dest != "help":
                assert flag.help, f"{action.prog} {flag.option_strings} has no help"


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "ip2p.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "edit" in result.stdout and "demo" in result.stdout


# -- the model's own settings ----------------------------------------------------------------------------------
def test_flags_override_the_models_settings_which_override_the_papers(model_dir, image_path, tmp_path):
    import shutil

    from ip2p.edit_settings import write_edit_settings

    folder = tmp_path / "with-settings"
    shutil.copytree(model_dir, folder)
    write_edit_settings(folder, {"num_inference_steps": 3, "text_guidance_scale": 2.5, "resolution": 32})
    out = tmp_path / "o.png"
    assert main(["edit", str(image_path), "x", "-o", str(out), "--model", str(folder), "--steps", "2"]) == 0
    text = Image.open(out).text
    assert text["ip2p:steps"] == "2"  # the flag
    assert text["ip2p:text_guidance_scale"] == "2.5" and text["ip2p:resolution"] == "32"  # the model's file
    assert text["ip2p:image_guidance_scale"] == "1.5"  # the paper's


def test_a_bad_settings_file_fails_in_one_line_naming_it(model_dir, image_path, tmp_path, capsys):
    import shutil

    folder = tmp_path / "bad-settings"
    shutil.copytree(model_dir, folder)
    (folder / "edit_settings.json").write_text('{"steps": 20}')
    assert main(["edit", str(image_path), "x", "-o", str(tmp_path / "o.png"), "--model", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "edit_settings.json" in err and "unknown key(s) steps" in err
    assert not (tmp_path / "o.png").exists()


# -- help without heavy imports ---------------------------------------------------------------------------------
HEAVY = ("torch", "diffusers", "transformers", "gradio", "peft")


def test_help_of_every_command_imports_no_heavy_library():
    """`ip2p --help` and every `ip2p COMMAND --help` (toy ones too), in one fresh process: no torch and co."""
    code = f"""
import contextlib, io, sys
from ip2p.cli import build_parser, main

def helps(argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*argv, "--help"])

helps([])
commands = build_parser()._subparsers._group_actions[0].choices
for name, parser in commands.items():
    helps([name])
    for action in parser._actions:
        if getattr(action, "choices", None) and hasattr(action, "_name_parser_map"):
            for sub in action.choices:
                helps([name, sub])
print(",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"--help imported {result.stdout.strip()}"


def test_library_chatter_is_quieted_except_for_toy_training_and_measuring(tmp_path, monkeypatch, capsys):
    """train-base and quality show the libraries' progress and warnings; every other command, toy ones too, not."""
    from ip2p import cli

    quieted = []
    monkeypatch.setattr(cli, "_quiet_libraries", lambda: quieted.append(True))
    assert cli.main(["toy", "bundle"]) == 1  # names no model: one line, after the libraries were quieted
    assert quieted == [True] and "name at least one of" in capsys.readouterr().err
    quieted.clear()
    assert cli.main(["toy", "train-base", "--out", str(tmp_path / "run"), "--attention", "flash"]) == 2
    assert quieted == []


def test_help_and_the_toy_parser_import_no_numpy():
    """`ip2p --help` needs no numpy; the toy world's commands build their flags without numpy or PIL."""
    code = """
import argparse, contextlib, io, sys
from ip2p.toy.cli import add_toy_parser
add_toy_parser(argparse.ArgumentParser().add_subparsers())
toy = sorted(m for m in ("numpy", "PIL") if m in sys.modules)
from ip2p.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(["--help"])
print(",".join(toy), "numpy" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False"], result.stdout
