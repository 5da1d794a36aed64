"""check_dataset: every defect of a deliberately broken corpus is reported with file:line, read-only."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import check_dataset as cd
from check_dataset import DatasetError, assert_dataset_ok, check_filelist, check_filelist_fast

REPO_ROOT = Path(__file__).resolve().parents[1]
SR = 22050
HOP = 256

GOOD = {
    "speaker": "spk0",
    "language": "ZH",
    "text": "你好",
    "phones": ["_", "n", "i", "h", "ao", "_"],
    "tones": [0, 3, 3, 3, 3, 0],
    "word2ph": [1, 2, 2, 1],
}


def _hparams(**data_overrides) -> dict:
    data = {
        "sampling_rate": SR,
        "hop_length": HOP,
        "filter_length": 1024,
        "win_length": 1024,
        "add_blank": True,
        "spk2id": {"spk0": 0, "spk1": 1},
        "training_files": "",
        "validation_files": "",
    }
    data.update(data_overrides)
    return {"data": data}


class CorpusBuilder:
    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []
        self.expected: dict[int, set[str]] = {}

    def wav(self, name: str, seconds: float = 1.0, sr: int = SR, channels: int = 1, silent: bool = False) -> Path:
        path = self.root / f"{name}.wav"
        n = int(seconds * sr)
        audio = np.zeros(n, np.float32) if silent else (0.3 * np.sin(np.arange(n) * 0.05)).astype(np.float32)
        soundfile.write(path, audio if channels == 1 else np.stack([audio] * channels, 1), sr, subtype="PCM_16")
        return path

    @staticmethod
    def bert(wav: Path, n_phones: int | None) -> None:
        torch.save(torch.zeros(1024, n_phones), wav.with_suffix(".bert.pt"))

    def add(self, kinds: set[str], wav: Path | str, bert_phones: int | None = -1, raw: str | None = None, **fields):
        f = dict(GOOD, **fields)
        if raw is None:
            raw = "|".join(
                [
                    str(wav),
                    f["speaker"],
                    f["language"],
                    f["text"],
                    " ".join(f["phones"]),
                    " ".join(map(str, f["tones"])),
                    " ".join(map(str, f["word2ph"])),
                ]
            )
        if bert_phones is not None:
            self.bert(Path(wav), 2 * len(f["phones"]) + 1 if bert_phones == -1 else bert_phones)
        self.lines.append(raw)
        self.expected[len(self.lines)] = kinds

    def write(self, name: str = "train.list") -> Path:
        path = self.root / name
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        return path


def _broken_corpus(root: Path) -> tuple[Path, dict[int, set[str]]]:
    c = CorpusBuilder(root)
    good = c.wav("good")
    c.add(set(), good)  # line 1: clean
    c.add({cd.MALFORMED}, good, bert_phones=None, raw=f"{good}|spk0|ZH|你好|_ n i h ao _")
    c.add({cd.MALFORMED}, good, bert_phones=None, raw=f"{good}|spk0|ZH|你好|_ n i h ao _|0 3 x 3 3 0|1 2 2 1")
    c.add({cd.MISSING_AUDIO}, root / "absent.wav")
    garbage = root / "garbage.wav"
    garbage.write_bytes(b"this is not a wav file" * 100)
    c.add({cd.UNREADABLE_AUDIO}, garbage)
    c.add({cd.SAMPLING_RATE}, c.wav("rate16k", sr=16000))
    c.add({cd.NOT_MONO}, c.wav("stereo", channels=2))
    c.add({cd.EMPTY_AUDIO}, c.wav("empty", seconds=0.0))
    c.add({cd.SILENT_AUDIO}, c.wav("silent", silent=True))
    c.add({cd.TOO_SHORT}, c.wav("short", seconds=0.3))
    c.add({cd.TOO_LONG}, c.wav("long", seconds=12.0))
    c.add({cd.DUPLICATE}, good)
    c.add({cd.UNKNOWN_SPEAKER}, c.wav("spk"), speaker="nobody")
    c.add({cd.UNKNOWN_LANGUAGE}, c.wav("lang"), language="XX")
    c.add({cd.UNKNOWN_PHONE}, c.wav("phone"), phones=["_", "n", "zzz", "h", "ao", "_"])
    c.add({cd.EMPTY_TEXT}, c.wav("notext"), text="", phones=[], tones=[], word2ph=[])
    long_phones = ["_"] + ["a"] * 19 + ["_"]
    c.add({cd.TEXT_LENGTH}, c.wav("textlen"), text="啊" * 19, phones=long_phones, tones=[0] * 21, word2ph=[1] * 21)
    c.add({cd.TONE_COUNT}, c.wav("tonecount"), tones=[0, 3, 3, 3, 0])
    c.add({cd.TONE_RANGE}, c.wav("tonerange"), tones=[0, 3, 9, 3, 3, 0])
    c.add({cd.WORD2PH_VALUE}, c.wav("w2pneg"), word2ph=[1, 4, -1, 2])
    c.add({cd.WORD2PH_COUNT}, c.wav("w2pcount"), text="你好吗")
    c.add({cd.WORD2PH_SUM}, c.wav("w2psum"), word2ph=[1, 2, 2, 2])
    c.add({cd.MISSING_BERT}, c.wav("nobert"), bert_phones=None)
    c.add({cd.BAD_BERT}, c.wav("badbert"), bert_phones=12)
    corrupt = c.wav("corruptbert")
    c.add({cd.BAD_BERT}, corrupt, bert_phones=None)
    corrupt.with_suffix(".bert.pt").write_bytes(b"\x00garbage" * 50)
    c.lines.insert(3, "")  # a blank line is skipped but still counted
    c.expected = {k + (k >= 4): v for k, v in c.expected.items()}
    return c.write(), c.expected


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def broken(tmp_path: Path) -> tuple[Path, dict[int, set[str]]]:
    return _broken_corpus(tmp_path)


def _by_line(problems: list[cd.Problem], filelist: Path) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for p in problems:
        name, _, line = p.where.rpartition(":")
        assert name == str(filelist)
        found.setdefault(int(line), set()).add(p.kind)
    return found


def test_every_defect_reported_with_file_and_line(broken, tmp_path: Path) -> None:
    filelist, expected = broken
    assert len({k for kinds in expected.values() for k in kinds}) >= 15
    before = _snapshot(tmp_path)
    problems = check_filelist(filelist, _hparams(max_text_len=20))
    assert _snapshot(tmp_path) == before, "the checker must not touch the files"
    wanted = {line: kinds for line, kinds in expected.items() if kinds}
    assert _by_line(problems, filelist) == wanted
    assert all(str(filelist) in str(p) and p.message for p in problems)


def test_fast_variant_skips_only_decoding(broken, tmp_path: Path) -> None:
    filelist, expected = broken
    before = _snapshot(tmp_path)
    fast = check_filelist_fast(filelist, _hparams(max_text_len=20))
    assert _snapshot(tmp_path) == before
    wanted = {line: kinds for line, kinds in expected.items() if kinds and kinds != {cd.SILENT_AUDIO}}
    assert _by_line(fast, filelist) == wanted


def test_assert_dataset_ok(broken, tmp_path: Path) -> None:
    filelist, expected = broken
    with pytest.raises(DatasetError) as info:
        assert_dataset_ok([filelist], _hparams(max_text_len=20))
    assert len(info.value.problems) == sum(len(k) for k in expected.values()) - 1  # fast: no silent-audio
    assert f"{filelist}:2: [malformed-line]" in str(info.value)
    clean = tmp_path / "clean.list"
    clean.write_text(filelist.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    assert_dataset_ok([clean], _hparams())


def test_cli_exit_codes_and_report(broken, tmp_path: Path) -> None:
    filelist, expected = broken
    config = tmp_path / "config.json"
    # A whole model config (the CLI reads it through config.load_model_config): the demo's, with this data.
    whole = json.loads((REPO_ROOT / "configs" / "demo.json").read_text(encoding="utf-8"))
    whole["data"].update(_hparams(max_text_len=20)["data"])
    config.write_text(json.dumps(whole), encoding="utf-8")
    before = _snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run = subprocess.run(
        [sys.executable, "check_dataset.py", str(filelist), "--config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    for line, kinds in expected.items():
        for kind in kinds:
            assert f"{filelist}:{line}: [{kind}]" in run.stdout
    assert _snapshot(tmp_path) == before

    clean = tmp_path / "clean.list"
    clean.write_text(filelist.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "check_dataset.py", str(clean), "--config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""


def test_missing_filelist_is_a_problem(tmp_path: Path) -> None:
    problems = check_filelist(tmp_path / "nope.list", _hparams())
    assert [p.kind for p in problems] == [cd.MISSING_FILELIST]
