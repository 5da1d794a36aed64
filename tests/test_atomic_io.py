"""atomic_io: the one write-then-rename helper (mode under the umask, cleanup on error, old file kept)."""

from __future__ import annotations

import os
import stat

import pytest

import atomic_io


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_text_write_creates_folders_and_gets_the_umask_mode(tmp_path, umask_022):
    target = tmp_path / "a" / "b" / "list.txt"
    atomic_io.atomic_write_text(target, "x|y\n")
    assert target.read_text(encoding="utf-8") == "x|y\n"
    assert _mode(target) == 0o644
    assert sorted(os.listdir(target.parent)) == ["list.txt"]


def test_named_path_writer_keeps_the_umask_mode_and_suffix(tmp_path, umask_022):
    target = tmp_path / "voice.onnx"
    with atomic_io.atomic_path(target, suffix=".onnx") as tmp:
        assert tmp.endswith(".tmp.onnx") and os.path.basename(tmp).startswith(".voice.onnx.")
        with open(tmp, "wb") as handle:
            handle.write(b"graph")
    assert target.read_bytes() == b"graph"
    assert _mode(target) == 0o644


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"), atomic_io.atomic_write(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["config.json"]


def test_binary_write_replaces_the_file(tmp_path):
    target = tmp_path / "G_1.pth"
    atomic_io.atomic_write_bytes(target, b"one")
    atomic_io.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["G_1.pth"]


def test_a_target_that_cannot_be_created_raises_and_writes_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(OSError):
        atomic_io.atomic_write_text(blocker / "x.txt", "data")  # a folder path through a regular file
    assert os.listdir(tmp_path) == ["file"]


def test_temporary_names_are_hidden_and_unique(tmp_path):
    names = {atomic_io.temporary_name(tmp_path / "G_5.pth") for _ in range(20)}
    assert len(names) == 20
    assert all(os.path.basename(n).startswith(".G_5.pth.") and n.endswith(".tmp") for n in names)
