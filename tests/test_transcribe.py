"""transcribe.py with a tiny randomly initialised Whisper built locally (tests/tiny_whisper.py): the real
loading, feature extraction, language detection, batched decoding and list writing; the words are random."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from tiny_whisper import WORDS, build_tiny_whisper

import transcribe

DEMO_RAW = Path(__file__).resolve().parents[1] / "demo" / "raw"
CLIPS = ("spk0/en_00.flac", "spk0/zh_00.flac", "spk1/jp_00.flac")


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


@pytest.fixture(scope="module")
def recogniser(whisper_dir: Path) -> transcribe.Recogniser:
    return transcribe.Recogniser(whisper_dir, "cpu")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three clips as slice.py leaves them: <speaker>/<name>.wav at 22050 Hz (Whisper wants 16 kHz)."""
    folder = tmp_path_factory.mktemp("clips")
    for name in CLIPS:
        audio, rate = soundfile.read(DEMO_RAW / name, dtype="float32")
        target = folder / Path(name).with_suffix(".wav")
        target.parent.mkdir(exist_ok=True)
        soundfile.write(target, audio, rate)
    return folder


def read_list(path: Path) -> list[list[str]]:
    return [line.split("|") for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_writes_one_line_per_clip_in_the_preprocess_text_format(whisper_dir, clip_dir, tmp_path) -> None:
    output = tmp_path / "esd.list"
    code = transcribe.main(
        [
            "--in-dir",
            str(clip_dir),
            "--model",
            str(whisper_dir),
            "--language",
            "EN",
            "--device",
            "cpu",
            "-o",
            str(output),
        ]
    )
    assert code == 0
    rows = read_list(output)
    assert [(Path(r[0]).relative_to(clip_dir).as_posix(), r[1], r[2]) for r in rows] == [
        ("spk0/en_00.wav", "spk0", "EN"),
        ("spk0/zh_00.wav", "spk0", "EN"),
        ("spk1/jp_00.wav", "spk1", "EN"),
    ]
    for row in rows:
        assert len(row) == 4 and row[3] and set(row[3].split()) <= set(WORDS)
    assert (tmp_path / "esd.list.report.txt").read_text(encoding="utf-8") == ""


def test_batches_give_the_same_text_as_one_clip_at_a_time(recogniser, clip_dir) -> None:
    clips = transcribe.find_clips(clip_dir)
    batched = transcribe.transcribe_clips(clips, recogniser, "JP", batch_size=2, show_progress=False)
    single = transcribe.transcribe_clips(clips, recogniser, "JP", batch_size=1, show_progress=False)
    assert [(t.clip, t.language, t.text) for t in batched.transcripts] == [
        (t.clip, t.language, t.text) for t in single.transcripts
    ]
    assert len(batched.transcripts) == 3 and {t.language for t in batched.transcripts} == {"JP"}


def test_auto_language_is_whispers_own_detection_among_zh_jp_en(recogniser, clip_dir) -> None:
    clips = transcribe.find_clips(clip_dir)
    audios = [transcribe.read_clip(c.path, recogniser.rate) for c in clips]
    features, _ = recogniser.features(audios)
    # The tiny model knows only these three languages, so transformers' unrestricted detection must agree.
    expected = recogniser.model.detect_language(input_features=features).reshape(-1).tolist()
    by_token = {token: tag for tag, token in recogniser.language_ids.items()}
    detected = recogniser.detect(features)
    assert detected == [by_token[t] for t in expected] and set(detected) <= {"ZH", "JP", "EN"}
    outcome = transcribe.transcribe_clips(clips, recogniser, "auto", show_progress=False)
    assert [t.language for t in outcome.transcripts] == detected


def test_clips_with_no_text_are_reported_not_written(clip_dir, tmp_path) -> None:
    mute = build_tiny_whisper(tmp_path / "mute-whisper", speak=False)
    clips = transcribe.find_clips(clip_dir) + [transcribe.Clip(tmp_path / "missing.wav", "spk0")]
    outcome = transcribe.transcribe_clips(clips, transcribe.Recogniser(mute, "cpu"), "ZH", show_progress=False)
    assert outcome.transcripts == [] and outcome.empty == clips[:3]
    assert [c for c, _ in outcome.unreadable] == clips[3:]
    report = transcribe.write_outputs(outcome, tmp_path / "esd.list")
    assert (tmp_path / "esd.list").read_text(encoding="utf-8") == ""
    lines = report.read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[1] for line in lines[:3]] == ["no text recognised"] * 3
    assert lines[3].startswith(f"{(tmp_path / 'missing.wav').as_posix()}\tunreadable: ")


def test_a_missing_or_incomplete_model_folder_says_what_to_put_there(clip_dir, tmp_path, caplog) -> None:
    args = ["--in-dir", str(clip_dir), "-o", str(tmp_path / "esd.list")]
    assert transcribe.main(args + ["--model", str(tmp_path / "no-whisper")]) == 2
    assert f"Whisper model folder not found: {tmp_path / 'no-whisper'}" in caplog.text
    assert "a Whisper checkpoint folder" in caplog.text and "config.json" in caplog.text
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}", encoding="utf-8")
    assert transcribe.main(args + ["--model", str(partial)]) == 2
    assert "lacks weights, preprocessor_config.json, tokenizer" in caplog.text
    assert not (tmp_path / "esd.list").exists()


def test_a_damaged_or_foreign_model_is_one_line_before_any_clip_is_read(
    whisper_dir, clip_dir, tmp_path, caplog
) -> None:
    """A truncated weights file fails while loading (one line naming the folder, no safetensors traceback); a
    folder of another model type fails before loading, where transformers would only warn."""
    damaged = tmp_path / "damaged"
    shutil.copytree(whisper_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ["--in-dir", str(clip_dir), "-o", str(tmp_path / "esd.list"), "--device", "cpu"]
    assert transcribe.main(args + ["--model", str(damaged)]) == 2
    assert f"--model: cannot load the Whisper model in {damaged}: " in caplog.text
    foreign = tmp_path / "foreign"
    shutil.copytree(whisper_dir, foreign)
    model_config = json.loads((foreign / "config.json").read_text(encoding="utf-8"))
    (foreign / "config.json").write_text(json.dumps({**model_config, "model_type": "bert"}), encoding="utf-8")
    assert transcribe.main(args + ["--model", str(foreign)]) == 2
    assert f"--model: {foreign} holds a 'bert' model, not Whisper" in caplog.text
    assert "Traceback" not in caplog.text and not (tmp_path / "esd.list").exists()


def test_long_clip_and_separator_in_text_are_handled(recogniser, tmp_path, caplog) -> None:
    long_clip = tmp_path / "spk" / "long.wav"
    long_clip.parent.mkdir()
    soundfile.write(long_clip, np.zeros(31 * 16000, dtype=np.float32), 16000)
    outcome = transcribe.transcribe_clips(transcribe.find_clips(tmp_path), recogniser, "EN", show_progress=False)
    assert "longer than 30 s" in caplog.text and len(outcome.transcripts) == 1
    line = transcribe.format_line(transcribe.Transcript(outcome.transcripts[0].clip, "EN", "a|b"))
    assert line.endswith("|spk|EN|a b\n")
