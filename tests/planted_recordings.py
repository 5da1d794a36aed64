"""Long multi-speaker recordings built from the demo corpus's speech, with every utterance's place known.

Used by the slicing and dataset-preparation tests. The layout covers what a user's raw folder holds: silences
of several lengths over a noise floor, a burst of loud noise, a quiet utterance, a short piece close to an
utterance (merged), a lone short piece (dropped), a stereo file, a 48 kHz file, an mp3, a 25-second continuous
passage (split between words) and a clipped file. ``build_raw`` writes them and returns where the speech is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RAW = REPO_ROOT / "demo" / "raw"
DEMO_RATE = 22050
NOISE_FLOOR_DBFS = -55.0


@dataclass(frozen=True)
class Planted:
    """Speech placed in a recording: ``start``/``end`` in seconds of the recording's own time."""

    source: str  # path under the raw folder
    start: float
    end: float
    kind: str  # "utterance", "merged" (a short piece and its neighbour), "passage", "short" (to be dropped)
    texts: tuple[str, ...] = ()  # the demo lines spoken, in order


def demo_rows() -> dict[str, tuple[str, str, str]]:
    """``"spk0/en_00.flac"`` -> (speaker, language, text) from the demo transcription."""
    rows = {}
    for line in (REPO_ROOT / "demo" / "transcription.list").read_text(encoding="utf-8").splitlines():
        path, speaker, language, text = line.split("|")
        rows[path] = (speaker, language, text)
    return rows


def speech_extent(audio: np.ndarray, rate: int, below_peak_db: float = 40.0) -> tuple[int, int]:
    """First and last sample of the 10 ms windows within ``below_peak_db`` of the loudest one."""
    hop = rate // 100
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    level = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > level.max() - below_peak_db)
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def demo_speech(name: str) -> np.ndarray:
    """A demo clip trimmed to its speech."""
    audio, rate = soundfile.read(DEMO_RAW / name, dtype="float32")
    assert rate == DEMO_RATE
    start, end = speech_extent(audio, rate)
    return audio[start:end]


class Recording:
    """Appends silence and speech at a given rate and remembers where each piece of speech went."""

    def __init__(self, source: str, rate: int = DEMO_RATE) -> None:
        self.source, self.rate = source, rate
        self.parts: list[np.ndarray] = []
        self.planted: list[Planted] = []
        self.length = 0

    def _append(self, audio: np.ndarray) -> tuple[float, float]:
        start = self.length
        self.parts.append(audio.astype(np.float32))
        self.length += len(audio)
        return start / self.rate, self.length / self.rate

    def silence(self, seconds: float) -> None:
        self._append(np.zeros(int(round(seconds * self.rate)), dtype=np.float32))

    def noise(self, seconds: float, dbfs: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self._append(rng.standard_normal(int(round(seconds * self.rate))) * 10 ** (dbfs / 20))

    def speech(self, names: list[str], gain: float = 1.0, gap: float = 0.0, kind: str = "utterance") -> None:
        """One planted stretch: the named clips with ``gap`` seconds between them."""
        rows = demo_rows()
        pieces = []
        for i, name in enumerate(names):
            if i:
                pieces.append(np.zeros(int(round(gap * self.rate)), dtype=np.float32))
            pieces.append(self._at_rate(demo_speech(name)))
        start, end = self._append(np.concatenate(pieces) * gain)
        self.planted.append(Planted(self.source, start, end, kind, tuple(rows[n][2] for n in names)))

    def piece(self, name: str, seconds: float, kind: str) -> None:
        """The first ``seconds`` of a clip's speech (a fragment)."""
        audio = self._at_rate(demo_speech(name))[: int(round(seconds * self.rate))]
        start, end = self._append(audio)
        self.planted.append(Planted(self.source, start, end, kind))

    def _at_rate(self, audio: np.ndarray) -> np.ndarray:
        if self.rate == DEMO_RATE:
            return audio
        import librosa

        return librosa.resample(audio, orig_sr=DEMO_RATE, target_sr=self.rate).astype(np.float32)

    def audio(self, noise_seed: int | None = None) -> np.ndarray:
        audio = np.concatenate(self.parts)
        if noise_seed is not None:
            rng = np.random.default_rng(noise_seed)
            audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * 10 ** (NOISE_FLOOR_DBFS / 20)
        return audio


def _write(raw: Path, recording: Recording, audio: np.ndarray, **kwargs) -> list[Planted]:
    path = raw / recording.source
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, recording.rate, **kwargs)
    return recording.planted


def build_raw(raw: Path) -> list[Planted]:
    """Write the recordings under ``raw/<speaker>/`` and return every planted piece of speech."""
    planted: list[Planted] = []

    session = Recording("spk0/session.wav")
    session.silence(1.0)
    session.noise(1.0, -30.0, seed=1)  # a loud hiss, no speech
    session.silence(0.8)
    session.speech(["spk0/en_00.flac"], gain=0.5)
    session.silence(1.2)
    session.speech(["spk0/en_01.flac"])
    session.silence(0.8)
    session.speech(["spk0/zh_00.flac"], gain=0.1)  # 20 dB quieter than the rest
    session.silence(2.5)
    session.piece("spk0/en_02.flac", 0.6, kind="merged")  # too short alone, 0.5 s before the next utterance
    session.silence(0.5)
    session.speech(["spk0/jp_00.flac"], kind="merged")
    session.silence(2.0)
    session.piece("spk0/en_03.flac", 0.5, kind="short")  # too short and alone: dropped
    session.silence(2.0)
    planted += _write(raw, session, session.audio(noise_seed=2), subtype="PCM_16")

    stereo = Recording("spk0/stereo.flac")
    stereo.silence(0.5)
    stereo.speech(["spk0/en_04.flac"])
    stereo.silence(1.0)
    stereo.speech(["spk0/zh_01.flac"])
    stereo.silence(0.6)
    mono = stereo.audio(noise_seed=3)
    planted += _write(raw, stereo, np.stack([mono, 0.6 * mono], axis=1), subtype="PCM_16")

    high = Recording("spk1/high_rate.wav", rate=48000)
    high.silence(0.7)
    high.speech(["spk1/en_00.flac"])
    high.silence(0.9)
    high.speech(["spk1/jp_01.flac"])
    high.silence(0.5)
    planted += _write(raw, high, high.audio(noise_seed=4), subtype="PCM_24")

    mp3 = Recording("spk1/talk.mp3")
    mp3.silence(0.8)
    mp3.speech(["spk1/en_01.flac"], gain=0.7)  # mp3 decoding overshoots a full-scale peak: that is no clipping
    mp3.silence(1.0)
    mp3.speech(["spk1/zh_02.flac"], gain=0.7)
    mp3.silence(0.8)
    planted += _write(raw, mp3, mp3.audio(noise_seed=5), format="MP3")

    passage = Recording("spk1/passage.flac")
    passage.silence(0.6)
    names = [f"spk1/en_{i:02d}.flac" for i in range(2, 12)]
    passage.speech(names, gap=0.12, kind="passage")  # word-length pauses only: one 25+ s utterance
    passage.silence(0.6)
    planted += _write(raw, passage, passage.audio(noise_seed=6), subtype="PCM_16")

    clipped = Recording("spk1/clipped.wav")
    clipped.silence(0.5)
    clipped.speech(["spk1/zh_03.flac"], gain=6.0)
    clipped.silence(0.5)
    planted += _write(raw, clipped, np.clip(clipped.audio(), -1.0, 1.0), subtype="PCM_16")
    return planted
