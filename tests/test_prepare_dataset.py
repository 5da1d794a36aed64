"""prepare_dataset.py: raw recordings -> checked training set, stopping at the first stage with problems and
resuming there; the whole path with the tiny Whisper and BERT, then train_ms.py on the result (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import yaml
from planted_recordings import build_raw
from tiny_whisper import WORDS, build_tiny_whisper, whisper_folder_stub
from train_tiny import free_port, subprocess_env

import config
import prepare_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RAW = REPO_ROOT / "demo" / "raw"


def write_yml(folder: Path, sampling_rate: int = 22050) -> Path:
    """config.yml with the small settings a tiny run wants (one process, CPU, one validation clip)."""
    yml = yaml.safe_load((REPO_ROOT / "config.yml").read_text(encoding="utf-8"))
    yml["resample"]["sampling_rate"] = sampling_rate
    yml["preprocess_text"].update({"val_per_lang": 1, "max_val_total": 2})
    yml["bert_gen"].update({"num_processes": 1, "device": "cpu"})
    yml["train_ms"].update({"num_workers": 0, "spec_cache": False, "keep_ckpts": 2})
    yml["train_ms"]["env"]["MASTER_PORT"] = free_port()
    path = folder / "config.yml"
    path.write_text(yaml.safe_dump(yml), encoding="utf-8")
    return path


def write_template(folder: Path, model_config: dict) -> Path:
    path = folder / "template.json"
    path.write_text(json.dumps(model_config), encoding="utf-8")
    return path


def state(out: Path) -> list[str]:
    return json.loads((out / prepare_dataset.STATE_NAME).read_text(encoding="utf-8"))["completed"]


def test_stages_resume_after_the_last_one_done() -> None:
    assert prepare_dataset.stages_to_run([], None) == list(prepare_dataset.STAGES)
    assert prepare_dataset.stages_to_run(["slice", "transcribe"], None)[0] == "resample"
    assert prepare_dataset.stages_to_run(["slice", "transcribe", "resample"], "transcribe")[0] == "transcribe"
    assert prepare_dataset.stages_to_run(list(prepare_dataset.STAGES), None) == []


def test_stops_at_slicing_naming_the_unreadable_recording(tmp_path, tiny_model_config, caplog) -> None:
    raw = tmp_path / "raw" / "spk0"
    raw.mkdir(parents=True)
    (raw / "broken.flac").write_bytes(b"fLaC but not really")
    out = tmp_path / "data"
    whisper = whisper_folder_stub(tmp_path / "whisper")  # checked before slicing, never loaded here
    args = ["--raw", str(tmp_path / "raw"), "--out", str(out), "--asr-model", str(whisper)]
    args += ["--yml", str(write_yml(tmp_path)), "--config-template", str(write_template(tmp_path, tiny_model_config))]
    assert prepare_dataset.main(args + ["--processes", "1"]) == 1
    assert "stopped at stage slice with 1 problem(s)" in caplog.text
    assert f"{raw / 'broken.flac'}: unreadable audio" in caplog.text
    assert state(out) == [] and (out / "config.json").is_file()


def test_resumes_after_transcription_keeping_the_reviewed_list(tmp_path, tiny_model_config, caplog) -> None:
    """Slicing and transcription are recorded as done: a rerun must not touch the (hand-edited) list, and the
    resample stage names the two settings that disagree."""
    out = tmp_path / "data"
    layout = prepare_dataset.Layout.from_settings(out, config.load_config(write_yml(tmp_path, 44100)))
    clip = layout.sliced / "spk0" / "take_0000.wav"
    clip.parent.mkdir(parents=True)
    audio, rate = soundfile.read(DEMO_RAW / "spk0" / "en_00.flac")
    soundfile.write(clip, audio, rate)
    reviewed = f"{clip.as_posix()}|spk0|EN|the morning train was late\n"
    layout.esd_list.parent.mkdir(parents=True)
    layout.esd_list.write_text(reviewed, encoding="utf-8")
    prepare_dataset.write_state(layout, ["slice", "transcribe"])
    args = ["--raw", str(tmp_path), "--out", str(out), "--asr-model", str(tmp_path / "no-whisper")]
    args += [
        "--yml",
        str(tmp_path / "config.yml"),
        "--config-template",
        str(write_template(tmp_path, tiny_model_config)),
    ]
    assert prepare_dataset.main(args) == 1  # the missing --asr-model folder is never opened: no transcription
    assert "stopped at stage resample" in caplog.text
    assert "resample.sampling_rate of" in caplog.text and "is 44100 but data.sampling_rate of" in caplog.text
    assert layout.esd_list.read_text(encoding="utf-8") == reviewed
    assert state(out) == ["slice", "transcribe"]


# ------------------------------------------------------------------------------------ the whole path (slow)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_train_config: dict) -> dict[str, Path]:
    from text.tiny_bert import build_tiny_bert

    root = tmp_path_factory.mktemp("prepare")
    raw = root / "raw"
    build_raw(raw)
    whisper = build_tiny_whisper(root / "whisper")
    bert = build_tiny_bert(root / "bert-en", "EN", texts=[" ".join(WORDS)])
    out = root / "data"
    args = ["--raw", str(raw), "--out", str(out), "--asr-model", str(whisper), "--bert-dir", f"EN={bert}"]
    args += ["--language", "EN", "--device", "cpu", "--processes", "2", "--yml", str(write_yml(root))]
    args += ["--config-template", str(write_template(root, tiny_train_config))]
    (raw / "spk1" / "broken.wav").write_bytes(b"RIFF....")
    first = prepare_dataset.main(args)
    (raw / "spk1" / "broken.wav").unlink()
    done_after_first = state(out)
    second = prepare_dataset.main(args)
    return {"root": root, "out": out, "args": args, "codes": (first, second), "first_state": done_after_first}


@pytest.mark.slow
def test_the_whole_path_gives_a_checked_dataset(prepared, capsys) -> None:
    out = prepared["out"]
    assert prepared["codes"] == (1, 0) and prepared["first_state"] == []
    assert state(out) == list(prepare_dataset.STAGES)
    model_config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert model_config["data"]["spk2id"] == {"spk0": 0, "spk1": 1}
    train = Path(model_config["data"]["training_files"]).read_text(encoding="utf-8").splitlines()
    val = Path(model_config["data"]["validation_files"]).read_text(encoding="utf-8").splitlines()
    esd = (out / "filelists" / "esd.list").read_text(encoding="utf-8").splitlines()
    assert len(train) + len(val) == len(esd) >= 14
    for line in train + val:
        wav = Path(line.split("|")[0])
        info = soundfile.info(wav)
        assert (info.samplerate, info.channels) == (22050, 1) and wav.with_suffix(".bert.pt").is_file()
        assert info.duration <= prepare_dataset.longest_clip_seconds(out / "config.json")
    # A rerun has nothing left to do and prints the command again.
    capsys.readouterr()
    assert prepare_dataset.main(prepared["args"]) == 0
    assert capsys.readouterr().out.startswith(f"python3 train_ms.py -c {(out / 'config.json').as_posix()} -m ")


@pytest.mark.slow
def test_train_ms_trains_on_the_prepared_dataset(prepared, capsys) -> None:
    assert prepare_dataset.main(prepared["args"]) == 0
    command = capsys.readouterr().out.strip().split()
    assert command[:2] == ["python3", "train_ms.py"]
    extra = ["--device", "cpu", "--num-workers", "0", "--threads", "1", "--max-steps", "2"]
    result = subprocess.run(
        [sys.executable, *command[1:], *extra],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    models = prepared["out"] / "models"
    assert (models / "G_2.pth").is_file() and (models / "D_2.pth").is_file()
    shutil.rmtree(models)
