"""Slice long recordings into one loudness-normalised clip per utterance, with a manifest.

Every audio file under ``--in-dir`` (wav, flac, ogg, mp3; any rate, any number of channels) is read, mixed down
to mono, and searched for speech with silero-vad's bundled model (``--vad energy``: a plain energy gate, only
when asked). Each utterance becomes ``<out-dir>/<speaker>/<source-stem>_<nnnn>.wav``, where ``<speaker>`` is the
first folder under ``--in-dir`` (files directly in it go to ``--speaker``)::

    python3 slice.py --in-dir raw --out-dir sliced
    python3 slice.py --in-dir raw --out-dir sliced --max-seconds 10 --sr 44100 --processes 2

Utterances are never cut inside speech unless one is longer than ``--max-seconds`` (then at its quietest point,
between words); pieces shorter than ``--min-seconds`` are merged with a neighbour across a short silence
(``--merge-gap``) or dropped. Every clip is normalised to ``--loudness`` LUFS (ITU-R BS.1770, pyloudnorm) with
its peak kept at or under -1 dBFS. ``<out-dir>/slices.csv`` lists every clip (source, start, end, duration,
loudness) and everything dropped, with the reason. A rerun skips the sources the manifest already lists.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import atomic_io

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST_NAME = "slices.csv"
SETTINGS_NAME = "slices.settings.json"  # the settings the clips were cut with
MANIFEST_FIELDS = ("source", "clip", "start", "end", "duration", "loudness", "status", "note")
VAD_RATE = 16000  # silero-vad's rate
VAD_WINDOW = 512  # samples per silero-vad decision at 16 kHz
PEAK_DBFS = -1.0
CLIP_LEVEL = 0.999  # |x| at or above this counts as a clipped sample
LOUDNESS_BLOCK_SECONDS = 0.4  # BS.1770's gating block: shorter audio has no integrated loudness
ENERGY_GATE_DB = 35.0  # --vad energy: speech is within this many dB of the loudest window


@dataclass(frozen=True)
class Settings:
    min_seconds: float = 1.0
    max_seconds: float = 12.0
    min_silence: float = 0.3
    pad: float = 0.1
    loudness: float = -23.0
    merge_gap: float = 1.0
    sampling_rate: int | None = None
    vad: str = "silero"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.min_seconds < LOUDNESS_BLOCK_SECONDS:
            raise ValueError(
                f"--min-seconds must be at least {LOUDNESS_BLOCK_SECONDS} (BS.1770's block), got {self.min_seconds}"
            )
        if self.max_seconds < 2 * self.min_seconds:
            raise ValueError(
                f"--max-seconds ({self.max_seconds}) must be at least twice --min-seconds ({self.min_seconds}) "
                "so that a long utterance can be split into pieces that are both long enough"
            )
        if self.max_seconds <= 2 * self.pad:
            raise ValueError(f"--max-seconds ({self.max_seconds}) must exceed twice --pad ({self.pad})")
        for name in ("min_silence", "pad", "merge_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.vad not in ("silero", "energy"):
            raise ValueError(f"--vad must be 'silero' or 'energy', got {self.vad!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"--threshold must lie between 0 and 1, got {self.threshold}")
        if self.sampling_rate is not None and self.sampling_rate < 8000:
            raise ValueError(f"--sr must be at least 8000 Hz, got {self.sampling_rate}")


@dataclass(frozen=True)
class Source:
    path: Path  # the recording
    relative: str  # its path under --in-dir (the manifest's key)
    target_dir: Path  # where its clips go
    stem: str


@dataclass
class Segment:
    """A stretch of the recording in seconds; ``cut_*`` marks an edge made by splitting (not padded)."""

    start: float
    end: float
    cut_start: bool = False
    cut_end: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Row:
    source: str
    clip: str
    start: float
    end: float
    duration: float
    loudness: float | None
    status: str  # "written", "dropped", "failed"
    note: str = ""

    def as_csv(self) -> dict[str, str]:
        loudness = "" if self.loudness is None else f"{self.loudness:.2f}"
        return {
            "source": self.source,
            "clip": self.clip,
            "start": f"{self.start:.3f}",
            "end": f"{self.end:.3f}",
            "duration": f"{self.duration:.3f}",
            "loudness": loudness,
            "status": self.status,
            "note": self.note,
        }


@dataclass
class SourceResult:
    source: Source
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0  # audio duration, for the speed figure

    @property
    def failed(self) -> bool:
        return any(row.status == "failed" for row in self.rows)


# ------------------------------------------------------------------------------------------------ finding files


def find_sources(in_dir: Path, out_dir: Path, default_speaker: str) -> list[Source]:
    """Every audio file under ``in_dir``; raises ``ValueError`` when two would write the same clip names."""
    sources, owners = [], {}
    for path in sorted(in_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in AUDIO_SUFFIXES or path.name.startswith("."):
            continue
        relative = path.relative_to(in_dir)
        folder = relative.parent if len(relative.parts) > 1 else Path(default_speaker)
        source = Source(path, relative.as_posix(), out_dir / folder, path.stem)
        key = (source.target_dir, source.stem)
        if key in owners:
            raise ValueError(
                f"{path} and {owners[key]} would both write {source.target_dir / source.stem}_*.wav: rename one"
            )
        owners[key] = path
        sources.append(source)
    return sources


def check_folders(in_dir: Path, out_dir: Path, in_flag: str = "--in-dir", out_flag: str = "--out-dir") -> None:
    """Raise ``ValueError`` naming the argument when the input is no folder or the clips cannot be written; writes
    nothing. An output folder inside the input one is refused: its clips would be sliced again on the next run."""
    if not in_dir.is_dir():
        raise ValueError(f"{in_flag}: input folder not found: {in_dir}")
    try:
        atomic_io.check_output_target(out_dir / MANIFEST_NAME)
    except ValueError as error:
        raise ValueError(f"{out_flag}: {error}") from None
    if out_dir.resolve().is_relative_to(in_dir.resolve()):
        raise ValueError(
            f"{out_flag}: {out_dir} is inside {in_flag} {in_dir}: its clips would be read as recordings on the next "
            "run; choose a folder outside it"
        )


def sources_or_error(
    in_dir: Path, out_dir: Path, default_speaker: str | None, in_flag: str = "--in-dir"
) -> list[Source]:
    """:func:`find_sources`, raising ``ValueError`` naming ``in_flag`` when there is nothing to slice."""
    sources = find_sources(in_dir, out_dir, default_speaker or in_dir.resolve().name)
    if not sources:
        others = [p.name for p in sorted(in_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        held = f"; it holds {len(others)} other file(s), e.g. {others[0]}: convert them" if others else ""
        raise ValueError(f"{in_flag}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {in_dir}{held}")
    return sources


def read_manifest(path: Path) -> list[Row]:
    if not path.is_file():
        return []
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, record in enumerate(csv.DictReader(handle), start=2):
            try:
                rows.append(
                    Row(
                        record["source"],
                        record["clip"],
                        float(record["start"]),
                        float(record["end"]),
                        float(record["duration"]),
                        float(record["loudness"]) if record["loudness"] else None,
                        record["status"],
                        record["note"],
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(
                    f"{path}:{number}: not a slices.csv row ({error}); move the file away to redo"
                ) from error
    return rows


def write_manifest(path: Path, rows: Iterable[Row]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r.source, r.start, r.clip)):
        writer.writerow(row.as_csv())
    atomic_io.atomic_write_text(path, buffer.getvalue())


def done_sources(rows: Iterable[Row], out_dir: Path) -> set[str]:
    """Sources the manifest lists without a failure and whose clips are all on disk."""
    done: dict[str, bool] = {}
    for row in rows:
        ok = row.status != "failed" and (row.status != "written" or (out_dir / row.clip).is_file())
        done[row.source] = done.get(row.source, True) and ok
    return {source for source, ok in done.items() if ok}


# ---------------------------------------------------------------------------------------------- audio helpers


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """``[samples, channels]`` float32 and the rate (soundfile reads wav, flac, ogg and mp3)."""
    import soundfile

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return audio, rate


def count_clipped(audio: np.ndarray) -> int:
    """Samples at full scale that have a full-scale neighbour (a lone peak at full scale is not clipping)."""
    hot = np.abs(audio) >= CLIP_LEVEL
    runs = hot[1:] & hot[:-1]
    return int(runs.sum())


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return audio
    import librosa

    return librosa.resample(audio, orig_sr=rate, target_sr=target, res_type="soxr_hq").astype(np.float32)


def window_energy_db(audio: np.ndarray, window: int) -> np.ndarray:
    """Mean power in dB of consecutive ``window``-sample windows (the last one zero-padded)."""
    padded = np.pad(audio, (0, (-len(audio)) % window))
    power = np.mean(padded.reshape(-1, window).astype(np.float64) ** 2, axis=1)
    return 10.0 * np.log10(power + 1e-12)


# ------------------------------------------------------------------------------------------------ finding speech


def _silero():
    """The silero_vad package; importing it sets torch to one thread, so the caller's setting is put back."""
    import torch

    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


@functools.lru_cache(maxsize=1)
def silero_model():
    """silero-vad's ONNX model from inside its wheel, loaded once per process (nothing downloads).

    ONNX rather than the TorchScript file of the same wheel: the same probabilities at the same CPU cost
    (bench/slice_speed.py: within 15 % either way), but one onnxruntime thread per process whatever torch's thread
    setting (no oversubscription when slicing in parallel; onnxruntime is already a dependency), and no
    TorchScript, which torch keeps only in maintenance."""
    return _silero().load_silero_vad(onnx=True)


def speech_probabilities(audio16k: np.ndarray, method: str) -> np.ndarray:
    """One speech probability per 512-sample window at 16 kHz (silero-vad), or a 0/1 energy gate."""
    if method == "energy":
        energy = window_energy_db(audio16k, VAD_WINDOW)
        return (energy > max(energy.max() - ENERGY_GATE_DB, -60.0)).astype(np.float32)
    import torch

    with torch.no_grad():
        probs = silero_model().audio_forward(torch.from_numpy(np.ascontiguousarray(audio16k)), VAD_RATE)
    return probs[0].numpy()


def speech_segments(probabilities: np.ndarray, n_samples16k: int, settings: Settings) -> list[Segment]:
    """Utterances: silero-vad's hysteresis (threshold, threshold - 0.15) that ends speech after ``min_silence``."""
    stamps = _silero().get_speech_timestamps_from_probs(
        probabilities.tolist(),
        sampling_rate=VAD_RATE,
        threshold=settings.threshold,
        min_speech_duration_ms=0,  # short pieces are merged or dropped (and reported) below
        min_silence_duration_ms=int(round(settings.min_silence * 1000)),
        speech_pad_ms=0,  # padding is ours, so that a split edge is not padded
        audio_length_samples=n_samples16k,
    )
    return [Segment(s["start"] / VAD_RATE, s["end"] / VAD_RATE) for s in stamps]


# ---------------------------------------------------------------------------------------- merging and splitting


def merge_short(segments: list[Segment], settings: Settings) -> list[Segment]:
    """Join each piece shorter than ``min_seconds`` to its nearer neighbour across a gap of at most ``merge_gap``,
    as long as the result (padded) still fits in ``max_seconds``."""
    merged = [replace(s) for s in segments]
    changed = True
    while changed:
        changed = False
        for i, piece in enumerate(merged):
            if piece.duration >= settings.min_seconds:
                continue
            candidates = []
            if i > 0:
                candidates.append((piece.start - merged[i - 1].end, i - 1))
            if i + 1 < len(merged):
                candidates.append((merged[i + 1].start - piece.end, i))
            for gap, left in sorted(candidates):
                joined = Segment(merged[left].start, merged[left + 1].end)
                if gap <= settings.merge_gap and joined.duration + 2 * settings.pad <= settings.max_seconds:
                    merged[left : left + 2] = [joined]
                    changed = True
                    break
            if changed:
                break
    return merged


def quietest_point(energy_db: np.ndarray, hop: float, low: float, high: float, span: int = 15) -> float:
    """The time in ``[low, high]`` at the centre of the quietest ``span`` energy frames: about 150 ms, so that the
    middle of a pause between words wins over a stop consonant's short closure or the edge of a pause."""
    first, last = int(np.ceil(low / hop)), int(np.floor(high / hop))
    if last <= first:
        return (low + high) / 2
    smoothed = np.convolve(energy_db, np.ones(span) / span, mode="same")[first : last + 1]
    best = int(np.argmin(smoothed))
    quiet = smoothed <= smoothed[best] + 1.0  # a flat pause: take its middle, not its first frame
    left, right = best, best
    while left > 0 and quiet[left - 1]:
        left -= 1
    while right + 1 < len(quiet) and quiet[right + 1]:
        right += 1
    return (first + (left + right) / 2 + 0.5) * hop


def split_long(segment: Segment, energy_db: np.ndarray, hop: float, settings: Settings) -> list[Segment]:
    """Split at the quietest point, recursively, until every piece fits ``max_seconds`` with its padding."""
    pads = settings.pad * ((not segment.cut_start) + (not segment.cut_end))
    if segment.duration + pads <= settings.max_seconds:
        return [segment]
    cut = quietest_point(energy_db, hop, segment.start + settings.min_seconds, segment.end - settings.min_seconds)
    left = Segment(segment.start, cut, segment.cut_start, True)
    right = Segment(cut, segment.end, True, segment.cut_end)
    return split_long(left, energy_db, hop, settings) + split_long(right, energy_db, hop, settings)


def pad_segments(segments: list[Segment], total: float, pad: float) -> list[Segment]:
    """Widen each uncut edge by ``pad`` without passing the recording's ends or the middle of a gap."""
    padded = []
    for i, seg in enumerate(segments):
        floor = 0.0 if i == 0 else (segments[i - 1].end + seg.start) / 2
        ceiling = total if i + 1 == len(segments) else (seg.end + segments[i + 1].start) / 2
        start = seg.start if seg.cut_start else max(floor, seg.start - pad)
        end = seg.end if seg.cut_end else min(ceiling, seg.end + pad)
        padded.append(Segment(start, end, seg.cut_start, seg.cut_end))
    return padded


def plan_clips(segments: list[Segment], energy_db: np.ndarray, hop: float, total: float, settings: Settings):
    """Merge short pieces, split long ones, pad; returns (clips, dropped) as segment lists."""
    pieces = []
    for segment in merge_short(segments, settings):
        pieces.extend(split_long(segment, energy_db, hop, settings))
    padded = pad_segments(pieces, total, settings.pad)
    keep = [seg for seg in padded if seg.duration >= settings.min_seconds]
    dropped = [seg for seg in padded if seg.duration < settings.min_seconds]
    return keep, dropped


# ------------------------------------------------------------------------------------------------- loudness


def normalise(clip: np.ndarray, rate: int, target: float) -> tuple[np.ndarray, float, str]:
    """Gain to ``target`` LUFS, then down so the peak stays at or under -1 dBFS; returns (audio, LUFS, note)."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate)
    measured = meter.integrated_loudness(clip.astype(np.float64))
    if not np.isfinite(measured):
        return clip, float("-inf"), "silent"
    out = clip * np.float32(10.0 ** ((target - measured) / 20.0))
    peak, limit = float(np.abs(out).max()), 10.0 ** (PEAK_DBFS / 20.0)
    note = ""
    if peak > limit:
        out = out * np.float32(limit / peak)
        note = f"peak-limited to {PEAK_DBFS:g} dBFS"
    return out, float(meter.integrated_loudness(out.astype(np.float64))), note


# --------------------------------------------------------------------------------------------- one recording


def clip_name(stem: str, index: int) -> str:
    return f"{stem}_{index:04d}.wav"


def remove_old_clips(source: Source) -> None:
    """A source sliced again (forced, or after a kill) must not keep clips numbered past its new ones."""
    for old in source.target_dir.glob(f"{source.stem}_[0-9][0-9][0-9][0-9].wav"):
        old.unlink()


def slice_source(source: Source, out_dir: Path, settings: Settings) -> SourceResult:
    """Slice one recording; an unreadable file becomes a ``failed`` row, never an exception."""
    import soundfile

    result = SourceResult(source)
    try:
        audio, rate = read_audio(source.path)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        result.rows.append(Row(source.relative, "", 0.0, 0.0, 0.0, None, "failed", f"unreadable audio: {error}"))
        return result
    clipped = count_clipped(audio)
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    total = len(mono) / rate
    result.seconds = total
    if total < settings.min_seconds:
        result.rows.append(
            Row(source.relative, "", 0.0, total, total, None, "dropped", "recording shorter than --min-seconds")
        )
        return result
    note = f"source clipped ({clipped} samples at full scale)" if clipped else ""
    if clipped:
        logger.warning("%s: %d clipped samples at full scale; its clips may sound distorted", source.path, clipped)

    audio16k = resample(mono, rate, VAD_RATE)
    probabilities = speech_probabilities(audio16k, settings.vad)
    segments = speech_segments(probabilities, len(audio16k), settings)

    out_rate = settings.sampling_rate or rate
    out_audio = resample(mono, rate, out_rate)
    window = max(1, out_rate // 100)  # ~10 ms energy frames; times use the exact hop, not 0.01
    energy_db, hop = window_energy_db(out_audio, window), window / out_rate
    clips, dropped = plan_clips(segments, energy_db, hop, total, settings)

    remove_old_clips(source)
    for seg in dropped:
        reason = f"shorter than --min-seconds {settings.min_seconds:g}"
        result.rows.append(Row(source.relative, "", seg.start, seg.end, seg.duration, None, "dropped", reason))
    index = 0
    for seg in clips:
        piece = out_audio[int(round(seg.start * out_rate)) : int(round(seg.end * out_rate))]
        normalised, loudness, level_note = normalise(piece, out_rate, settings.loudness)
        if level_note == "silent":
            result.rows.append(Row(source.relative, "", seg.start, seg.end, seg.duration, None, "dropped", "silent"))
            continue
        target = source.target_dir / clip_name(source.stem, index)
        write_clip(target, normalised, out_rate)
        index += 1
        duration = len(piece) / out_rate
        row_note = "; ".join(n for n in (note, level_note) if n)
        clip = target.relative_to(out_dir).as_posix()
        result.rows.append(
            Row(source.relative, clip, seg.start, seg.start + duration, duration, loudness, "written", row_note)
        )
    if not result.rows:
        result.rows.append(Row(source.relative, "", 0.0, total, total, None, "dropped", "no speech found"))
    return result


def write_clip(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile

    with atomic_io.atomic_path(path, suffix=".wav") as tmp:
        soundfile.write(tmp, audio, rate, subtype="PCM_16", format="WAV")


def _slice_job(args: tuple[Source, Path, Settings]) -> SourceResult:
    return slice_source(*args)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core does the parallel work


# ------------------------------------------------------------------------------------------------------ driver


def slice_all(
    in_dir: Path,
    out_dir: Path,
    settings: Settings,
    processes: int = 1,
    force: bool = False,
    default_speaker: str | None = None,
    show_progress: bool = True,
) -> list[SourceResult]:
    """Slice every source not yet in the manifest; the manifest is rewritten after each finished source."""
    from tqdm import tqdm

    sources = find_sources(in_dir, out_dir, default_speaker or in_dir.resolve().name)
    manifest = out_dir / MANIFEST_NAME
    rows = read_manifest(manifest)
    skip = set() if force else done_sources(rows, out_dir)
    todo = [s for s in sources if s.relative not in skip]
    if skip:
        logger.info("%d source(s) already sliced (in %s); --force redoes them", len(sources) - len(todo), manifest)
    rows = [row for row in rows if row.source in skip]
    warn_if_settings_changed(out_dir / SETTINGS_NAME, settings, len(sources) - len(todo))
    results = []
    bar = tqdm(total=len(todo), desc="slice", unit="file", disable=not show_progress)

    def finished(result: SourceResult) -> None:
        results.append(result)
        rows.extend(result.rows)
        write_manifest(manifest, rows)
        bar.update()

    with bar:
        if processes <= 1 or len(todo) <= 1:
            for source in todo:
                finished(slice_source(source, out_dir, settings))
        else:
            with ProcessPoolExecutor(max_workers=processes, initializer=_worker_init) as pool:
                futures = [pool.submit(_slice_job, (source, out_dir, settings)) for source in todo]
                for future in as_completed(futures):
                    finished(future.result())
    if not todo:
        write_manifest(manifest, rows)
    if todo:  # the settings of the latest run that cut something
        atomic_io.atomic_write_text(out_dir / SETTINGS_NAME, json.dumps(asdict(settings), indent=2) + "\n")
    return results


def warn_if_settings_changed(path: Path, settings: Settings, kept: int) -> None:
    """Clips kept from an earlier run were cut with that run's settings: say which differ (not an error)."""
    if not kept or not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return
    changed = [
        f"--{name.replace('_', '-')} {before.get(name)} (now {value})"
        for name, value in asdict(settings).items()
        if before.get(name) != value
    ]
    if changed:
        logger.warning(
            "%d source(s) already sliced with %s are kept as they are; --force slices them again",
            kept,
            ", ".join(changed),
        )


def summarise(results: Sequence[SourceResult]) -> tuple[int, int, int]:
    """(clips written, pieces dropped, sources failed)."""
    rows = [row for result in results for row in result.rows]
    return (
        sum(r.status == "written" for r in rows),
        sum(r.status == "dropped" for r in rows),
        sum(result.failed for result in results),
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-dir", "--in_dir", dest="in_dir", required=True, help="folder of long recordings")
    parser.add_argument("--out-dir", "--out_dir", dest="out_dir", required=True, help="folder for the clips")
    parser.add_argument("--min-seconds", type=float, default=defaults.min_seconds, help="shortest clip kept")
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help="longest clip written")
    parser.add_argument(
        "--min-silence", type=float, default=defaults.min_silence, help="silence (s) that ends an utterance"
    )
    parser.add_argument("--pad", type=float, default=defaults.pad, help="silence (s) kept before and after speech")
    parser.add_argument("--loudness", type=float, default=defaults.loudness, help="clip loudness in LUFS")
    parser.add_argument(
        "--merge-gap", type=float, default=defaults.merge_gap, help="longest silence (s) a short piece is merged across"
    )
    parser.add_argument("--sr", type=int, help="sampling rate of the clips (default: each source's own)")
    parser.add_argument(
        "--vad", choices=("silero", "energy"), default=defaults.vad, help="speech detector (energy: a plain level gate)"
    )
    parser.add_argument("--threshold", type=float, default=defaults.threshold, help="silero-vad speech probability")
    parser.add_argument("--speaker", help="speaker of files directly in --in-dir (default: its folder name)")
    parser.add_argument("--processes", type=int, default=0, help="worker processes (default: CPU count - 1)")
    parser.add_argument("--force", action="store_true", help="slice again the sources the manifest already lists")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    try:  # every argument before any work: a mistake costs nothing and writes nothing
        check_folders(in_dir, out_dir)
        if args.processes < 0:
            raise ValueError(f"--processes: give 0 (one per CPU core but one) or more, got {args.processes}")
        settings = Settings(
            args.min_seconds,
            args.max_seconds,
            args.min_silence,
            args.pad,
            args.loudness,
            args.merge_gap,
            args.sr,
            args.vad,
            args.threshold,
        )
        sources_or_error(in_dir, out_dir, args.speaker)
        processes = args.processes or max(1, (os.cpu_count() or 2) - 1)
        results = slice_all(in_dir, out_dir, settings, processes, args.force, args.speaker)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    written, dropped, failed = summarise(results)
    logger.info("%d clip(s) written, %d piece(s) dropped; manifest %s", written, dropped, out_dir / MANIFEST_NAME)
    for result in results:
        for row in result.rows:
            if row.status == "failed":
                logger.error("%s: %s", result.source.path, row.note)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
