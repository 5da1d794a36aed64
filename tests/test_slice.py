"""slice.py on long recordings built from the demo speech (tests/planted_recordings.py), with silero-vad's model.

One slicing run of the whole raw folder is shared by the module; the checks read its clips and manifest.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile
from planted_recordings import Planted, build_raw

import slice as slicer

TOLERANCE = 0.05  # seconds: silero decides per 32 ms window; mp3 decoding may shift by a frame
SETTINGS = slicer.Settings()  # the command's defaults: 1-12 s, 0.3 s silence, 0.1 s pad, -23 LUFS


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Planted]]:
    folder = tmp_path_factory.mktemp("raw")
    return folder, build_raw(folder)


@pytest.fixture(scope="module")
def sliced(raw, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[slicer.SourceResult]]:
    out = tmp_path_factory.mktemp("sliced")
    results = slicer.slice_all(raw[0], out, SETTINGS, processes=2, show_progress=False)
    return out, results


def manifest(out: Path) -> list[dict[str, str]]:
    with (out / slicer.MANIFEST_NAME).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def written(out: Path, source: str) -> list[dict[str, str]]:
    return [row for row in manifest(out) if row["source"] == source and row["status"] == "written"]


def test_every_planted_utterance_lands_whole_in_exactly_one_clip(raw, sliced) -> None:
    out = sliced[0]
    for planted in (p for p in raw[1] if p.kind in ("utterance", "merged")):
        inside = (planted.start + TOLERANCE, planted.end - TOLERANCE)
        touching = [
            r for r in written(out, planted.source) if float(r["start"]) < inside[1] and float(r["end"]) > inside[0]
        ]
        assert len(touching) == 1, f"{planted} is in {len(touching)} clips: {touching}"
        row = touching[0]
        assert float(row["start"]) <= inside[0] and float(row["end"]) >= inside[1], (planted, row)


def test_short_piece_near_an_utterance_is_merged_and_a_lone_one_dropped(raw, sliced) -> None:
    out = sliced[0]
    merged = [p for p in raw[1] if p.kind == "merged"]
    clips = {
        r["clip"]
        for p in merged
        for r in written(out, p.source)
        if float(r["start"]) <= p.start + TOLERANCE and float(r["end"]) >= p.end - TOLERANCE
    }
    assert len(clips) == 1  # the 0.6 s fragment and the utterance 0.5 s after it share one clip
    short = next(p for p in raw[1] if p.kind == "short")
    rows = [r for r in manifest(out) if r["source"] == short.source and float(r["start"]) <= short.end]
    dropped = [r for r in rows if float(r["end"]) >= short.start]
    assert [(r["status"], r["clip"]) for r in dropped] == [("dropped", "")]
    assert "shorter than --min-seconds 1" in dropped[0]["note"]


def test_long_passage_is_split_between_words_into_clips_that_fit(raw, sliced) -> None:
    out = sliced[0]
    passage = next(p for p in raw[1] if p.kind == "passage")
    assert passage.end - passage.start >= 25.0
    rows = sorted(written(out, passage.source), key=lambda r: float(r["start"]))
    assert len(rows) >= 3
    assert float(rows[0]["start"]) <= passage.start + TOLERANCE and float(rows[-1]["end"]) >= passage.end - TOLERANCE
    audio, rate = soundfile.read(raw[0] / passage.source, dtype="float32")
    speech_level = 10 * np.log10(np.mean(audio[int(passage.start * rate) : int(passage.end * rate)] ** 2))
    for left, right in zip(rows, rows[1:]):
        assert float(left["end"]) == pytest.approx(float(right["start"]), abs=1e-3)  # contiguous: nothing lost
        cut = int(float(left["end"]) * rate)
        around = audio[cut - rate // 100 : cut + rate // 100]  # 20 ms around the cut
        assert 10 * np.log10(np.mean(around**2) + 1e-12) < speech_level - 30, f"cut at {left['end']} s is in speech"
    for row in rows:
        assert float(row["duration"]) <= SETTINGS.max_seconds


def test_clips_are_mono_at_the_source_rate_loudness_normalised_and_under_the_peak(raw, sliced) -> None:
    out = sliced[0]
    rows = [r for r in manifest(out) if r["status"] == "written"]
    assert len(rows) >= 14
    for row in rows:
        audio, rate = soundfile.read(out / row["clip"], dtype="float64")
        source_rate = soundfile.info(raw[0] / row["source"]).samplerate
        assert audio.ndim == 1 and rate == source_rate, row
        assert len(audio) / rate == pytest.approx(float(row["duration"]), abs=1e-3)
        assert SETTINGS.min_seconds <= len(audio) / rate <= SETTINGS.max_seconds
        loudness = pyloudnorm.Meter(rate).integrated_loudness(audio)
        assert abs(loudness - SETTINGS.loudness) < 1.0, (row, loudness)
        assert loudness == pytest.approx(float(row["loudness"]), abs=0.05)
        assert np.abs(audio).max() <= 10 ** (slicer.PEAK_DBFS / 20) + 1e-4


def test_manifest_names_every_source_and_reports_clipping(raw, sliced) -> None:
    out, results = sliced
    rows = manifest(out)
    assert list(rows[0]) == list(slicer.MANIFEST_FIELDS)
    sources = sorted({p.source for p in raw[1]})
    assert sorted({r["source"] for r in rows}) == sources == sorted(r.source.relative for r in results)
    for row in rows:
        assert float(row["end"]) - float(row["start"]) == pytest.approx(float(row["duration"]), abs=2e-3)
        if row["status"] == "written":
            speaker = row["source"].split("/")[0]
            stem = Path(row["source"]).stem
            assert row["clip"].startswith(f"{speaker}/{stem}_") and (out / row["clip"]).is_file()
    clipped = [r for r in rows if r["source"] == "spk1/clipped.wav"]
    assert clipped and all("source clipped" in r["note"] for r in clipped)
    assert not any("clipped" in r["note"] for r in rows if r["source"] != "spk1/clipped.wav")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [slicer.MANIFEST_NAME, slicer.SETTINGS_NAME]
    assert files == sorted(r["clip"] for r in rows if r["status"] == "written")  # no temporary files left


def test_rerun_skips_what_is_sliced_and_redoes_a_changed_manifest_entry(raw, sliced, tmp_path, caplog) -> None:
    out = tmp_path / "again"
    shutil.copytree(sliced[0], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    assert slicer.slice_all(raw[0], out, SETTINGS, show_progress=False) == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == before
    # A clip that went missing (a killed run, a user's delete) makes its source be sliced again, and only it.
    victim = out / written(out, "spk0/stereo.flac")[0]["clip"]
    victim.unlink()
    again = slicer.slice_all(raw[0], out, SETTINGS, show_progress=False)
    assert [r.source.relative for r in again] == ["spk0/stereo.flac"] and victim.is_file()
    assert manifest(out) == manifest(sliced[0])
    # Other settings do not silently re-cut what is there: the rerun keeps it and says which settings differ.
    assert slicer.slice_all(raw[0], out, slicer.Settings(max_seconds=10.0), show_progress=False) == []
    assert "6 source(s) already sliced with --max-seconds 12.0 (now 10.0) are kept" in caplog.text
    assert json.loads((out / slicer.SETTINGS_NAME).read_text(encoding="utf-8"))["max_seconds"] == 12.0


def test_energy_fallback_and_target_rate_when_asked(raw, tmp_path: Path) -> None:
    src = tmp_path / "raw" / "spk1"
    src.mkdir(parents=True)
    shutil.copy(raw[0] / "spk1" / "high_rate.wav", src / "high_rate.wav")
    settings = slicer.Settings(vad="energy", sampling_rate=22050, loudness=-20.0)
    results = slicer.slice_all(tmp_path / "raw", tmp_path / "out", settings, show_progress=False)
    planted = [p for p in raw[1] if p.source == "spk1/high_rate.wav"]
    clips = [r for r in results[0].rows if r.status == "written"]
    assert len(clips) == len(planted) == 2
    for clip, p in zip(clips, planted):
        assert clip.start <= p.start + TOLERANCE and clip.end >= p.end - TOLERANCE
        audio, rate = soundfile.read(tmp_path / "out" / clip.clip)
        assert rate == 22050 and abs(pyloudnorm.Meter(rate).integrated_loudness(audio) + 20.0) < 1.0


def test_cli_exit_codes_and_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert slicer.main(["--in-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "o")]) == 2
    assert "input folder not found" in caplog.text
    raw = tmp_path / "raw"
    raw.mkdir()
    assert slicer.main(["--in-dir", str(raw), "--out-dir", str(tmp_path / "o"), "--max-seconds", "1.5"]) == 2
    assert "--max-seconds (1.5) must be at least twice --min-seconds (1.0)" in caplog.text
    (raw / "broken.wav").write_bytes(b"RIFF....not audio")
    assert slicer.main(["--in-dir", str(raw), "--out-dir", str(tmp_path / "o"), "--processes", "1"]) == 1
    rows = manifest(tmp_path / "o")
    assert [(r["source"], r["status"]) for r in rows] == [("broken.wav", "failed")]
    assert "unreadable audio" in rows[0]["note"] and "broken.wav" in caplog.text


def test_short_empty_and_silent_recordings_are_listed_as_dropped(tmp_path: Path) -> None:
    speaker = tmp_path / "raw" / "spk"
    speaker.mkdir(parents=True)
    soundfile.write(speaker / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(speaker / "blip.wav", np.full(300, 0.1, dtype=np.float32), 16000)
    soundfile.write(speaker / "silent.wav", np.zeros(32000, dtype=np.float32), 16000)
    assert slicer.main(["--in-dir", str(tmp_path / "raw"), "--out-dir", str(tmp_path / "out"), "--processes", "1"]) == 0
    assert [(r["source"], r["status"], r["note"]) for r in manifest(tmp_path / "out")] == [
        ("spk/blip.wav", "dropped", "recording shorter than --min-seconds"),
        ("spk/empty.wav", "dropped", "recording shorter than --min-seconds"),
        ("spk/silent.wav", "dropped", "no speech found"),
    ]


def test_clashing_clip_names_are_refused(tmp_path: Path) -> None:
    speaker = tmp_path / "raw" / "spk"
    speaker.mkdir(parents=True)
    for suffix in (".wav", ".flac"):
        soundfile.write(speaker / f"take{suffix}", np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="would both write"):
        slicer.find_sources(tmp_path / "raw", tmp_path / "out", "default")


def test_split_and_merge_rules_on_plain_segments() -> None:
    settings = slicer.Settings(min_seconds=1.0, max_seconds=4.0, pad=0.1, merge_gap=0.8)
    # a 0.5 s piece 0.6 s before a 2 s one is merged; one 1.5 s away from anything stays and is dropped later
    segments = [slicer.Segment(0.0, 0.5), slicer.Segment(1.1, 3.1), slicer.Segment(4.6, 5.0)]
    merged = slicer.merge_short(segments, settings)
    assert [(s.start, s.end) for s in merged] == [(0.0, 3.1), (4.6, 5.0)]
    # a 10 s segment is split at the quietest frames, every piece fitting max_seconds with its padding
    hop = 0.01
    energy = np.zeros(1000)
    energy[295:306] = energy[645:656] = -80.0  # two 0.11 s pauses
    pieces = slicer.split_long(slicer.Segment(0.0, 10.0), energy, hop, settings)
    assert [p.end for p in pieces[:-1]] == pytest.approx([3.005, 6.505])  # their middles
    assert all(p.duration + 0.1 * (2 - p.cut_start - p.cut_end) <= 4.0 for p in pieces)
    padded = slicer.pad_segments(pieces, 10.0, 0.1)
    assert padded[0].start == 0.0 and padded[1].start == pieces[1].start  # cut edges are not padded


def test_silero_is_used_offline_and_keeps_the_callers_threads() -> None:
    import torch

    threads = torch.get_num_threads()
    model = slicer.silero_model()
    assert torch.get_num_threads() == threads
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    silence = np.zeros(16000, dtype=np.float32)
    assert slicer.speech_probabilities(silence, "silero").max() < 0.1
