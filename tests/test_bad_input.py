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

import numpy as np
import pytest
import soundfile
from tiny_whisper import whisper_folder_stub

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
    (tmp / "clips" / "spk").mkdir(parents=True)  # a recording for slice, a clip for transcribe
    soundfile.write(tmp / "clips" / "spk" / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    (tmp / "texts").mkdir()  # an input folder of the wrong kind of files
    (tmp / "texts" / "notes.txt").write_text("not audio", encoding="utf-8")
    whisper_folder_stub(tmp / "whisper")  # passes the folder check; never loaded by a row
    whisper_folder_stub(tmp / "bert-model", model_type="bert")


def _slice(t: Path, *extra: str, in_dir: str = "clips", out_dir: str = "sliced") -> list[str]:
    return ["--in-dir", str(t / in_dir), "--out-dir", str(t / out_dir), *extra]


def _transcribe(t: Path, *extra: str, in_dir: str = "clips", model: str = "whisper", out: str = "e.list") -> list[str]:
    return ["--in-dir", str(t / in_dir), "--model", str(t / model), "-o", str(t / out), *extra]


def _prepare(t: Path, *extra: str, raw: str = "clips", out: str = "data", asr: str = "whisper") -> list[str]:
    """prepare_dataset with the repository's config.yml (read only) and the demo model config as template."""
    args = ["--raw", str(t / raw), "--out", str(t / out), "--asr-model", str(t / asr)]
    return [*args, "--yml", str(REPO_ROOT / "config.yml"), "--config-template", str(t / "config.json"), *extra]


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
    Row("slice", lambda t: _slice(t, out_dir="/proc/x"), 2, "--out-dir: cannot write /proc/x/slices.csv"),
    Row("slice", lambda t: _slice(t, out_dir="a_file"), 2, "--out-dir: cannot write"),
    Row("slice", lambda t: _slice(t, out_dir="clips/sliced"), 2, "--out-dir: " + "{t}/clips/sliced is inside --in-dir"),
    Row("slice", lambda t: ["--out-dir", str(t / "sliced")], 2, "required: --in-dir"),
    Row("slice", lambda t: _slice(t, in_dir="none"), 2, "--in-dir: input folder not found"),
    Row("slice", lambda t: _slice(t, in_dir="raw"), 2, "--in-dir: no audio files (.wav, .flac, .ogg, .mp3) under"),
    Row("slice", lambda t: _slice(t, in_dir="texts"), 2, "e.g. notes.txt: convert them"),
    Row("slice", lambda t: _slice(t, "--min-seconds", "5", "--max-seconds", "2"), 2, "--max-seconds (2.0) must be"),
    Row("slice", lambda t: _slice(t, "--processes", "-1"), 2, "--processes: give 0"),
    Row("transcribe", lambda t: _transcribe(t, out="/proc/x.list"), 2, "-o/--output: cannot write /proc/x.list"),
    Row("transcribe", lambda t: _transcribe(t, out="a_file/x.list"), 2, "is a file, not a folder"),
    Row("transcribe", lambda t: _transcribe(t, out="clips"), 2, "-o/--output: " + "{t}/clips is a folder"),
    Row("transcribe", lambda t: _transcribe(t, in_dir="raw"), 2, "--in-dir: no .wav clips under"),
    Row("transcribe", lambda t: _transcribe(t, in_dir="none"), 2, "--in-dir: clip folder not found"),
    Row("transcribe", lambda t: _transcribe(t, model="none"), 2, "--model: Whisper model folder not found"),
    Row("transcribe", lambda t: _transcribe(t, model="bert-model"), 2, "holds a 'bert' model, not Whisper"),
    Row("transcribe", lambda t: _transcribe(t, "--device", "gpu"), 2, "--device: device 'gpu'"),
    Row("transcribe", lambda t: _transcribe(t, "--batch-size", "0"), 2, "--batch-size: give 1 or more"),
    Row("prepare_dataset", lambda t: _prepare(t, out="/proc/ds"), 2, "--out: cannot write /proc/ds/"),
    Row("prepare_dataset", lambda t: _prepare(t, out="a_file"), 2, "is a file, not a folder"),
    Row("prepare_dataset", lambda t: _prepare(t, out="clips/ds"), 2, "is inside --raw"),
    Row("prepare_dataset", lambda t: _prepare(t, raw="raw"), 2, "--raw: no audio files"),
    Row("prepare_dataset", lambda t: _prepare(t, raw="none"), 2, "--raw: input folder not found"),
    Row("prepare_dataset", lambda t: _prepare(t, asr="none"), 2, "--asr-model: Whisper model folder not found"),
    Row(
        "prepare_dataset", lambda t: _prepare(t, asr="bert-model"), 2, "--asr-model: " + "{t}/bert-model holds a 'bert'"
    ),
    Row("prepare_dataset", lambda t: _prepare(t, "--min-seconds", "0.1"), 2, "--min-seconds must be at least 0.4"),
    Row("prepare_dataset", lambda t: _prepare(t, "--min-seconds", "5", "--max-seconds", "2"), 2, "--max-seconds"),
    Row("prepare_dataset", lambda t: _prepare(t, "--device", "gpu"), 2, "--device: device 'gpu'"),
    Row("prepare_dataset", lambda t: _prepare(t, "--processes", "-2"), 2, "--processes: give 0"),
    Row("prepare_dataset", lambda t: _prepare(t, "--config-template", str(t / "no.json")), 2, "--config-template"),
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
    """The command's exit status; argparse's own refusals (a missing required argument) exit through SystemExit."""
    module = __import__(command)
    try:
        return module.main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.command}-{i}" for i, r in enumerate(ROWS)])
def test_bad_input_exits_with_one_line_and_changes_nothing(
    row: Row,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _workspace(tmp_path)
    monkeypatch.chdir(tmp_path)  # no config.yml here: every default the row needs is on its command line
    before = _snapshot(tmp_path)
    with caplog.at_level(logging.INFO):
        status = _run(row.command, row.argv(tmp_path))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    errors += [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]  # argparse's line
    assert status == row.status, errors
    assert any(row.message.format(t=tmp_path) in e for e in errors), errors
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
