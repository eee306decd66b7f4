import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ip2p import fileio
from ip2p.fileio import (
    atomic_dir,
    atomic_path,
    atomic_write,
    restore_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    old = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(old)


def test_text_bytes_json_round_trip(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    write_json_atomic(tmp_path / "c.json", {"b": "é", "a": [1, 2]}, ensure_ascii=False)
    text = (tmp_path / "c.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"b": "é", "a": [1, 2]} and text.endswith("]\n}\n") and "é" in text
    write_json_atomic(tmp_path / "d.json", [1], indent=None)
    assert (tmp_path / "d.json").read_text() == "[1]\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.json"]


def test_write_replaces_and_creates_parents(tmp_path):
    path = tmp_path / "deep" / "er" / "x.txt"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert os.listdir(path.parent) == ["x.txt"]


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, mode):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, mode) as handle:
            handle.write("partial" if mode == "w" else b"partial")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failed_json_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"a": object()})
    assert os.listdir(tmp_path) == []


def test_atomic_path_for_writers_that_want_a_name(tmp_path):
    path = tmp_path / "w.bin"
    with atomic_path(path, fsync=True) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".w.bin.") and tmp.suffix == ".tmp"
        assert not path.exists()
        tmp.unlink()  # a writer that creates the file anew
        tmp.write_bytes(b"data")
    assert path.read_bytes() == b"data"
    assert os.listdir(tmp_path) == ["w.bin"]
    with pytest.raises(ValueError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("writer failed")
    assert path.read_bytes() == b"data" and os.listdir(tmp_path) == ["w.bin"]


def test_write_onto_a_folder_fails_without_temp(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path / "d", "x")
    assert os.listdir(tmp_path) == ["d"]


def test_fsync_text(tmp_path):
    with atomic_write(tmp_path / "f.txt", fsync=True) as handle:
        handle.write("synced")
    assert (tmp_path / "f.txt").read_text() == "synced"


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert fileio.current_umask() == mask
    write_text_atomic(tmp_path / "t.txt", "x")
    with atomic_path(tmp_path / "p.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inner.txt").write_text("x")
    assert _mode(tmp_path / "t.txt") == 0o666 & ~mask
    assert _mode(tmp_path / "p.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "folder") == 0o777 & ~mask


def test_umask_without_proc_is_the_value_at_import(monkeypatch, umask):
    monkeypatch.setattr(fileio, "_PROC_STATUS", "/nonexistent/status")
    monkeypatch.setattr(fileio, "_UMASK_AT_IMPORT", 0o027)
    umask(0o077)
    assert fileio.current_umask() == 0o027
    assert fileio.file_mode() == 0o640 and fileio.dir_mode() == 0o750


def test_umask_of_a_fresh_process(tmp_path):
    # A new interpreter started under umask 077 writes 0600 files, under 022 0644 ones.
    code = "import sys; from ip2p.fileio import write_text_atomic; write_text_atomic(sys.argv[1], 'x')"
    for mask, expected in ((0o077, 0o600), (0o022, 0o644)):
        path = tmp_path / f"{mask:o}.txt"
        subprocess.run(
            [sys.executable, "-c", code, str(path)], check=True, preexec_fn=lambda m=mask: os.umask(m)
        )
        assert _mode(path) == expected


def test_umask_read_does_not_change_it(umask):
    umask(0o027)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(fileio.current_umask())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [0o027] * 8 and os.umask(0o027) == 0o027


def test_atomic_dir_creates_and_replaces(tmp_path):
    path = tmp_path / "ckpt"
    with atomic_dir(path) as tmp:
        assert tmp.name.startswith(".ckpt.") and not path.exists()
        (tmp / "a").write_text("1")
    assert os.listdir(path) == ["a"]
    with atomic_dir(path) as tmp:
        (tmp / "b").write_text("2")
    assert os.listdir(path) == ["b"]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_atomic_dir_failure_keeps_old_folder(tmp_path):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "old").write_text("kept")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(path) as tmp:
            (tmp / "new").write_text("lost")
            raise KeyboardInterrupt
    assert os.listdir(path) == ["old"] and os.listdir(tmp_path) == ["ckpt"]


def test_atomic_dir_refuses_to_replace_a_file(tmp_path):
    (tmp_path / "f").write_text("file")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        with atomic_dir(tmp_path / "f") as tmp:
            (tmp / "x").write_text("x")
    assert (tmp_path / "f").read_text() == "file" and os.listdir(tmp_path) == ["f"]


def test_fileio_does_not_import_torch():
    code = "import sys, ip2p.fileio; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_atomic_dir_onto_a_link_fails_and_leaves_nothing(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        with atomic_dir(tmp_path / "link") as tmp:
            (tmp / "x").write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["link", "real"] and os.listdir(tmp_path / "real") == []


def test_restore_dir_puts_back_a_folder_moved_aside_by_a_crash(tmp_path):
    path = tmp_path / "ckpt"
    with atomic_dir(path) as tmp:
        (tmp / "a").write_text("old")
    assert restore_dir(path) is False  # nothing to repair
    # A process killed between atomic_dir's two renames leaves the old folder aside and none at ``path``.
    os.replace(path, tmp_path / ".ckpt.x1y2.old")
    assert restore_dir(path) is True and (path / "a").read_text() == "old"
    assert os.listdir(tmp_path) == ["ckpt"]
    (tmp_path / ".ckpt.a.old").mkdir()
    os.replace(path, tmp_path / ".ckpt.b.old")
    with pytest.raises(FileExistsError, match="several folders"):
        restore_dir(path)


def test_restore_dir_leaves_a_dotted_siblings_folders_alone(tmp_path):
    """``model`` and ``model.v2`` side by side: what ``model.v2`` moved aside is not ``model``'s to take."""
    for name in ("model", "model.v2"):
        with atomic_dir(tmp_path / name) as tmp:
            (tmp / "a").write_text(name)
    os.replace(tmp_path / "model.v2", tmp_path / ".model.v2.k3j_x9ab.old")  # model.v2's replacement died
    os.rename(tmp_path / "model", tmp_path / "gone")
    assert restore_dir(tmp_path / "model") is False and not (tmp_path / "model").exists()
    assert (
        restore_dir(tmp_path / "model.v2") is True and (tmp_path / "model.v2" / "a").read_text() == "model.v2"
    )
    os.replace(tmp_path / "gone", tmp_path / ".model.q1w2e3r4.old")
    os.replace(tmp_path / "model.v2", tmp_path / ".model.v2.z9y8x7w6.old")
    assert restore_dir(tmp_path / "model") is True and (tmp_path / "model" / "a").read_text() == "model"
    assert (tmp_path / ".model.v2.z9y8x7w6.old").is_dir()  # neither taken nor counted as several
