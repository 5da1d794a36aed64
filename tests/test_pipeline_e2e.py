"""The demo corpus through the whole data pipeline: resample -> preprocess_text -> bert_gen -> checker -> batches.

Runs offline on the committed espeak-ng corpus with tiny random BERTs (about 30 s of CPU).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

import bert_gen
import check_dataset
import preprocess_text
import resample
from data_utils import DistributedBucketSampler, TextAudioSpeakerCollate, TextAudioSpeakerLoader, bert_path_for

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "demo"
BOUNDARIES = [32, 300, 400, 500, 600, 700, 800, 900, 1000]


def _load_prepare():
    spec = importlib.util.spec_from_file_location("demo_prepare", DEMO / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    # The tiny BERT's matrices are small: one thread is several times faster than two on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("demo")
        failures = _load_prepare().prepare(out, REPO_ROOT / "configs" / "demo.json", show_progress=False)
        assert failures == 0
        return out
    finally:
        torch.set_num_threads(threads)
        mp.undo()


def test_committed_corpus_is_compact_and_complete() -> None:
    rows = [line.split("|") for line in (DEMO / "transcription.list").read_text(encoding="utf-8").splitlines()]
    assert all(len(r) == 4 for r in rows)
    speakers, languages = {r[1] for r in rows}, {r[2] for r in rows}
    assert len(speakers) >= 2 and {"EN", "ZH"} <= languages
    for spk in speakers:
        for lang in languages:
            assert sum(r[1] == spk and r[2] == lang for r in rows) >= 20
    files = [DEMO / "raw" / r[0] for r in rows]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    info = soundfile.info(files[0])
    assert (info.samplerate, info.channels) == (22050, 1)


def test_prepared_dataset_is_clean_and_consistent(demo_dataset: Path) -> None:
    config = json.loads((demo_dataset / "config.json").read_text(encoding="utf-8"))
    data = config["data"]
    assert data["spk2id"] == {"spk0": 0, "spk1": 1} and data["n_speakers"] == 2
    train = Path(data["training_files"])
    val = Path(data["validation_files"])
    # The lists of this dataset folder, never the default Data/demo ones.
    assert (train.parent, val.parent) == (demo_dataset / "filelists", demo_dataset / "filelists")
    train_lines = train.read_text(encoding="utf-8").splitlines()
    val_lines = val.read_text(encoding="utf-8").splitlines()
    corpus = (DEMO / "transcription.list").read_text(encoding="utf-8").splitlines()
    assert len(train_lines) + len(val_lines) == len(corpus)
    # one validation clip per (speaker, language)
    groups = sorted({(row.split("|")[1], row.split("|")[2]) for row in corpus})
    assert sorted((line.split("|")[1], line.split("|")[2]) for line in val_lines) == groups
    for line in train_lines + val_lines:
        wav = line.split("|")[0]
        info = soundfile.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        assert bert_path_for(wav).is_file()
    assert check_dataset.check_filelist(train, config) == []
    assert check_dataset.check_filelist(val, config) == []


def test_batches_from_the_bucket_sampler(demo_dataset: Path) -> None:
    config = json.loads((demo_dataset / "config.json").read_text(encoding="utf-8"))
    data = config["data"]
    dataset = TextAudioSpeakerLoader(data["training_files"], data)
    sampler = DistributedBucketSampler(dataset, 4, BOUNDARIES, num_replicas=1, rank=0, shuffle=True)
    sampler.set_epoch(1)
    loader = DataLoader(dataset, num_workers=0, collate_fn=TextAudioSpeakerCollate(), batch_sampler=sampler)
    n_batches = 0
    for batch in loader:
        n_batches += 1
        b = batch.text.shape[0]
        assert b == 4
        t_text, t_spec = int(batch.text_lengths.max()), int(batch.spec_lengths.max())
        assert batch.text.shape == batch.tone.shape == batch.language.shape == (b, t_text)
        assert batch.spec.shape == (b, data["filter_length"] // 2 + 1, t_spec)
        assert batch.wav.shape == (b, 1, int(batch.wav_lengths.max()))
        assert torch.equal(batch.spec_lengths, batch.wav_lengths // data["hop_length"])
        assert torch.all(batch.spec_lengths[:-1] >= batch.spec_lengths[1:])
        for field in (batch.bert, batch.ja_bert, batch.en_bert):
            assert field.shape == (b, 1024, t_text)
        for row in range(b):
            n = int(batch.text_lengths[row])
            lang = int(batch.language[row, 1])  # position 0 is a blank
            slots = (batch.bert, batch.ja_bert, batch.en_bert)
            assert torch.count_nonzero(slots[lang][row, :, :n]) > 0
            # data.unused_bert defaults to "randn": the other two slots hold standard-normal noise, padding zeros.
            for slot in (s for i, s in enumerate(slots) if i != lang):
                assert abs(slot[row, :, :n].std().item() - 1.0) < 0.1 and not slot[row, :, n:].any()
            assert torch.all(batch.text[row, n:] == 0)
        assert set(batch.sid.tolist()) <= {0, 1}
    assert n_batches == len(sampler) > 0


def test_bert_gen_skips_up_to_date_and_reports_mismatch(demo_dataset: Path, tmp_path: Path) -> None:
    config = json.loads((demo_dataset / "config.json").read_text(encoding="utf-8"))
    bert_dirs = {lang: str(demo_dataset / "bert" / f"tiny-{lang.lower()}") for lang in ("EN", "ZH", "JP")}
    line = Path(config["data"]["validation_files"]).read_text(encoding="utf-8").splitlines()[0]
    fields = line.split("|")
    wav = tmp_path / "copy.wav"
    wav.write_bytes(Path(fields[0]).read_bytes())
    filelist = tmp_path / "one.list"
    filelist.write_text("|".join([str(wav)] + fields[1:]) + "\n", encoding="utf-8")
    settings = bert_gen.Settings(add_blank=True, device="cpu", bert_dirs=bert_dirs, force=False)

    first = bert_gen.generate(bert_gen.read_jobs([str(filelist)]), settings, show_progress=False)
    assert [r.status for r in first] == ["written"]
    n_phones = len(fields[4].split())
    assert torch.load(bert_path_for(wav), weights_only=True).shape == (1024, 2 * n_phones + 1)
    again = bert_gen.generate(bert_gen.read_jobs([str(filelist)]), settings, show_progress=False)
    assert [r.status for r in again] == ["skipped"]

    # word2ph that does not add up to the phones is reported with file:line and the reason
    bad = fields[:6] + [" ".join(["1"] * len(fields[6].split()))]
    filelist.write_text("\n" + "|".join([str(wav)] + bad[1:]) + "\n", encoding="utf-8")
    results = bert_gen.generate(bert_gen.read_jobs([str(filelist)]), settings, show_progress=False)
    assert results[0].status == "error" and results[0].where == f"{filelist}:2"
    assert "sum(word2ph)" in results[0].message


def _bad_line_case(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(22050, np.float32), 22050)
    transcription = tmp_path / "t.list"
    transcription.write_text(
        f"{wav}|spk|ZH|你好。\n"
        "only|three|fields\n"
        f"{wav}|spk|XX|hello\n"
        f"{tmp_path / 'missing.wav'}|spk|ZH|再见。\n"
        f"{wav}|spk|ZH|重复。\n",
        encoding="utf-8",
    )
    config = tmp_path / "config.json"
    # A whole model config (preprocess_text validates it before and after filling in the speaker table).
    template = json.loads((REPO_ROOT / "configs" / "demo.json").read_text(encoding="utf-8"))
    template["data"].update(spk2id={"old": 0, "older": 1}, n_speakers=2)
    config.write_text(json.dumps(template), encoding="utf-8")
    return wav, transcription, config, template


def _preprocess(tmp_path: Path, transcription: Path, config: Path, **options) -> preprocess_text.Report:
    fake_clean = lambda text, lang: (text, ["_", "n", "i", "_"], [0, 3, 3, 0], [1, 2, 1])  # noqa: E731
    return preprocess_text.preprocess(
        str(transcription),
        str(tmp_path / "t.cleaned"),
        str(tmp_path / "train.list"),
        str(tmp_path / "val.list"),
        str(config),
        val_per_lang=0,
        max_val_total=4,
        cleaner=fake_clean,
        **options,
    )


def test_preprocess_text_reports_bad_lines_and_writes_nothing(tmp_path: Path) -> None:
    wav, transcription, config, template = _bad_line_case(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    report = _preprocess(tmp_path, transcription, config)
    joined = "\n".join(report.problems)
    # Every problem names the transcription's own line, the one the user edits.
    assert f"{transcription}:2: expected 4" in joined
    assert f"{transcription}:3: unknown language 'XX'" in joined
    assert f"{transcription}:4: audio file not found" in joined
    assert f"{transcription}:5: audio {wav} already used at {transcription}:1" in joined
    assert len(report.problems) == 4
    # Nothing it was asked to produce is written, and the config keeps its speaker table.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert json.loads(config.read_text(encoding="utf-8")) == template


def test_preprocess_text_drop_bad_lines_writes_the_usable_ones(tmp_path: Path) -> None:
    _, transcription, config, _ = _bad_line_case(tmp_path)
    report = _preprocess(tmp_path, transcription, config, drop_bad_lines=True)
    assert len(report.problems) == 4
    written = json.loads(config.read_text(encoding="utf-8"))["data"]
    assert written["spk2id"] == {"spk": 0} and written["n_speakers"] == 1
    assert (tmp_path / "train.list").read_text(encoding="utf-8").count("\n") == 1
    assert (tmp_path / "t.cleaned").read_text(encoding="utf-8").count("\n") == 3


def test_resample_keeps_layout_and_writes_mono_16bit(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "nested"
    raw.mkdir(parents=True)
    stereo = np.stack([np.sin(np.arange(44100) * 0.01)] * 2, axis=1).astype(np.float32) * 0.5
    soundfile.write(raw / "x.wav", stereo, 44100)
    soundfile.write(raw / "y.flac", stereo[:, 0], 44100)
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "resample.py",
            "--sr",
            "22050",
            "--in_dir",
            str(tmp_path / "raw"),
            "--out_dir",
            str(out),
            "--processes",
            "1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    for name in ("x.wav", "y.wav"):
        info = soundfile.info(out / "nested" / name)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (22050, 1, "PCM_16", 22050)
    assert resample.find_jobs(tmp_path / "raw", out, 22050) == []  # up to date now


@pytest.mark.parametrize(
    "script",
    ["resample.py", "preprocess_text.py", "bert_gen.py", "check_dataset.py", "demo/prepare.py", "demo/make_corpus.py"],
)
def test_scripts_have_help(script: str) -> None:
    run = subprocess.run([sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "usage:" in run.stdout
