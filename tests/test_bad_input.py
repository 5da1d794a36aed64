"""Bad input never costs work or data: each command checks its arguments first, exits 2 with one line naming the
argument, and leaves the file system as it was. One row per kind of mistake a user makes.

The commands run in-process through their ``main(argv)`` (the same code path as the script), so the table is
cheap; the synthesis commands (infer, server, web UI) have their own rows in their test files."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    command: str
    argv: Callable[[Path], list[str]]
    status: int
    message: str  # a fragment of the one ERROR line


def _workspace(tmp: Path) -> None:
    """A model config, a fake checkpoint, a transcription with one malformed line and a folder of audio."""
    shutil.copyfile(REPO_ROOT / "configs" / "demo.json", tmp / "config.json")
    (tmp / "G_1.pth").write_bytes(b"not really a checkpoint")
    (tmp / "a_file").write_text("", encoding="utf-8")
    (tmp / "raw").mkdir()
    (tmp / "old.safetensors").mkdir()
    (tmp / "esd.list").write_text("raw/a.wav|spk|ZH|你好\nonly|three|fields\n", encoding="utf-8")


ROWS = [
    Row("export", lambda t: ["-m", str(t / "nope.pth"), "-o", str(t / "v.safetensors")], 2, "-m/--model: no such"),
    Row("export", lambda t: ["-m", str(t / "G_1.pth"), "-o", str(t / "v.exe")], 2, "must end in .safetensors"),
    Row(
        "export",
        lambda t: ["-m", str(t / "G_1.pth"), "-o", "/proc/voice.safetensors"],
        2,
        "-o/--output: cannot write /proc/voice.safetensors",
    ),
    Row("export", lambda t: ["-m", str(t / "G_1.pth"), "-o", str(t / "old.safetensors")], 2, "is a folder"),
    Row(
        "export",
        lambda t: ["-m", str(t / "G_1.pth"), "-o", str(t / "a_file" / "v.onnx")],
        2,
        "is a file, not a folder",
    ),
    Row("export", lambda t: ["-m", str(t / "G_1.pth"), "-c", str(t / "no.json"), "-o", str(t / "v.onnx")], 2, "-c/"),
    Row("resample", lambda t: ["--in-dir", str(t / "none"), "--out-dir", str(t / "w"), "--sr", "22050"], 2, "--in-dir"),
    Row("resample", lambda t: ["--in-dir", str(t / "raw"), "--out-dir", str(t / "w"), "--sr", "0"], 2, "--sr"),
    Row(
        "resample",
        lambda t: ["--in-dir", str(t / "raw"), "--out-dir", str(t / "a_file" / "w"), "--sr", "22050"],
        2,
        "--out-dir: cannot write",
    ),
    Row("bert_gen", lambda t: ["-c", str(t / "no.json")], 2, "model config not found"),
    Row("bert_gen", lambda t: ["-c", str(t / "config.json"), str(t / "none.list")], 2, "filelist not found"),
    Row("check_dataset", lambda t: ["-c", str(t / "no.json"), str(t / "esd.list")], 2, "model config"),
    Row(
        "preprocess_text",
        lambda t: [
            *("--transcription-path", str(t / "none.list"), "--config-path", str(t / "config.json")),
            *("--train-path", str(t / "train.list"), "--val-path", str(t / "val.list")),
            *("--val-per-lang", "1", "--max-val-total", "2", "--clean"),
        ],
        2,
        "transcription list not found",
    ),
    Row(
        "preprocess_text",
        lambda t: [
            *("--transcription-path", str(t / "esd.list"), "--config-path", str(t / "config.json")),
            *("--train-path", str(t / "a_file" / "train.list"), "--val-path", str(t / "val.list")),
            *("--val-per-lang", "1", "--max-val-total", "2", "--clean"),
        ],
        2,
        "cannot write",
    ),
    # A malformed line: reported (status 1), and nothing written: no lists, the config keeps its speakers.
    Row(
        "preprocess_text",
        lambda t: [
            *("--transcription-path", str(t / "esd.list"), "--config-path", str(t / "config.json")),
            *("--train-path", str(t / "train.list"), "--val-path", str(t / "val.list")),
            *("--val-per-lang", "1", "--max-val-total", "2", "--clean"),
        ],
        1,
        "nothing written",
    ),
]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` with a hash of its content (folders as 'dir')."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _run(command: str, argv: list[str]) -> int:
    module = __import__(command)
    return module.main(argv)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.command}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_exits_with_one_line_and_changes_nothing(
    row: Row, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workspace(tmp_path)
    monkeypatch.chdir(tmp_path)  # no config.yml here: every default the row needs is on its command line
    before = _snapshot(tmp_path)
    with caplog.at_level(logging.INFO):
        status = _run(row.command, row.argv(tmp_path))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert status == row.status, errors
    assert any(row.message in e for e in errors), errors
    assert all("Traceback" not in e for e in errors)
    assert _snapshot(tmp_path) == before


def test_a_malformed_line_leaves_the_speaker_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """preprocess_text rewrote n_speakers 2 -> 1 before it found a bad line; now the config is untouched."""
    _workspace(tmp_path)
    config_path = tmp_path / "config.json"
    model_config = json.loads(config_path.read_text(encoding="utf-8"))
    model_config["data"].update(spk2id={"a": 0, "b": 1}, n_speakers=2)
    config_path.write_text(json.dumps(model_config), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    status = _run("preprocess_text", ROWS[-1].argv(tmp_path))
    assert status == 1
    assert json.loads(config_path.read_text(encoding="utf-8"))["data"]["n_speakers"] == 2
    assert not (tmp_path / "train.list").exists() and not (tmp_path / "esd.list.cleaned").exists()
