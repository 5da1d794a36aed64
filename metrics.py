"""Objective voice-quality metrics: is the voice getting better?

Every metric is one small function on audio (``numpy`` float arrays in [-1, 1] at a given sampling rate), and
:func:`score_validation` runs them over a validation set for a generator: the trainer at every
``eval_interval`` and ``evaluate.py`` on saved checkpoints call it, so both report the same numbers.

| tag | function | unit, range | better |
|---|---|---|---|
| ``val/mel_l1`` | :func:`mel_l1` | mean absolute log-mel difference (natural log), >= 0 | lower |
| ``val/pesq_wb`` | :func:`pesq_wb` | PESQ wide-band MOS-LQO (ITU-T P.862.2), 1.04..4.64 | higher |
| ``val/stoi`` | :func:`stoi` | short-time objective intelligibility, 0..1 | higher |
| ``val/dnsmos_sig/bak/ovrl`` | :class:`DNSMOS` | DNSMOS P.835 speech / background / overall MOS, 1..5 | higher |
| ``val/dnsmos_p808`` | :class:`DNSMOS` | DNSMOS P.808 MOS, 1..5 | higher |
| ``val/mcd`` | :func:`mel_cepstral_distortion` | dB over mel-cepstra c1..c24, DTW-aligned, >= 0 | lower |
| ``val/f0_rmse`` | :func:`f0_errors` | RMSE of log-F0 in cents on frames voiced in both, >= 0 | lower |
| ``val/vuv_error`` | :func:`f0_errors` | fraction of aligned frames whose voicing differs, 0..1 | lower |
| ``val/duration_ratio`` | :func:`duration_ratio` | synthesized / real length, > 0 | closest to 1 |
| ``val/wer_en`` | :func:`word_error_rate` | word error rate of English clips (pocketsphinx), >= 0 | lower |
| ``val/cer_zh``, ``val/cer_jp`` | :func:`character_error_rate` | character error rate, a local Whisper | lower |

The first three score the *reconstruction* (the posterior path: the real spectrogram encoded and decoded, the
same length as the real clip, as the training mel loss but on whole utterances); the others score *free
synthesis* from the clip's text, speaker and BERT features, with infer.py's default settings and a fixed seed.

Packages: ``pesq``, ``pystoi``, ``pyworld`` (WORLD: DIO + StoneMask F0 and the CheapTrick envelope, fast and the
usual choice for MCD and F0 error in TTS papers; librosa's pyin is ~20x slower), ``pocketsphinx`` + ``jiwer``;
DNSMOS runs the ONNX models that the ``speechmos`` package ships through onnxruntime directly (see
:class:`DNSMOS`). A metric whose package is missing is skipped with one warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DNSMOS_RATE = 16000
PESQ_RATE = 16000
ASR_RATE = 16000
WORLD_FRAME_PERIOD_MS = 5.0
MCEP_ORDER = 24
CENTS_PER_OCTAVE = 1200.0
# 10 / ln 10 * sqrt(2): the dB scale of the mel-cepstral distortion (Kubichek 1993).
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """What a logged metric means: its unit and which way is better (``higher``, ``lower`` or ``target``)."""

    unit: str
    better: str  # "higher", "lower" or "target" (closest to `target` is best)
    package: str | None = None
    target: float = 1.0


METRICS: dict[str, MetricInfo] = {
    "val/mel_l1": MetricInfo("log-mel L1", "lower"),
    "val/pesq_wb": MetricInfo("MOS-LQO", "higher", "pesq"),
    "val/stoi": MetricInfo("0..1", "higher", "pystoi"),
    "val/dnsmos_ovrl": MetricInfo("MOS", "higher", "speechmos"),
    "val/dnsmos_sig": MetricInfo("MOS", "higher", "speechmos"),
    "val/dnsmos_bak": MetricInfo("MOS", "higher", "speechmos"),
    "val/dnsmos_p808": MetricInfo("MOS", "higher", "speechmos"),
    "val/mcd": MetricInfo("dB", "lower", "pyworld"),
    "val/f0_rmse": MetricInfo("cents", "lower", "pyworld"),
    "val/vuv_error": MetricInfo("fraction", "lower", "pyworld"),
    "val/duration_ratio": MetricInfo("ratio", "target"),
    "val/wer_en": MetricInfo("WER", "lower", "pocketsphinx"),
    "val/cer_zh": MetricInfo("CER", "lower", "transformers"),
    "val/cer_jp": MetricInfo("CER", "lower", "transformers"),
}


def metric_badness(name: str, value: float) -> float:
    """A sort key for ``name``'s values: lower is better whatever the metric's direction (NaN is worst)."""
    info = METRICS.get(name)
    if info is None:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    if value is None or not math.isfinite(value):
        return math.inf
    if info.better == "higher":
        return -value
    if info.better == "target":
        return abs(value - info.target)
    return value


# ------------------------------------------------------------------------------------------ audio helpers


def _numpy(values: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor or array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def as_audio(wav: Any) -> np.ndarray:
    """1-D float64 numpy audio from a tensor or array of any shape with one non-singleton axis."""
    return np.nan_to_num(_numpy(wav).reshape(-1))


def resample(wav: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wav`` at ``target`` Hz (librosa's default soxr resampler); unchanged when the rates agree."""
    if rate == target:
        return wav
    import librosa

    return librosa.resample(wav, orig_sr=rate, target_sr=target)


def _is_silent(wav: np.ndarray) -> bool:
    return wav.size == 0 or float(np.max(np.abs(wav))) < 1e-6


# ------------------------------------------------------------------------------------- reconstruction


def mel_l1(reference_mel: Any, generated_mel: Any) -> float:
    """Mean absolute difference of two log-mel spectrograms ([..., n_mels, frames], natural log of magnitude).

    The training mel loss (``loss/g/mel``) is ``c_mel`` (45) times this on random 32-frame slices; here whole
    utterances of equal length are compared.
    """
    ref, gen = _numpy(reference_mel), _numpy(generated_mel)
    if ref.shape != gen.shape:
        raise ValueError(f"mel_l1: shapes differ ({ref.shape} vs {gen.shape})")
    return float(np.mean(np.abs(ref - gen)))


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) of ``degraded`` against ``reference``, as MOS-LQO from 1.04 to 4.64.

    Both are resampled to 16 kHz. NaN when PESQ finds no speech (e.g. silence) or the clip is too short.
    """
    from pesq import PesqError, pesq

    if _is_silent(reference):
        return math.nan  # PESQ would find no utterance
    ref16 = resample(reference, rate, PESQ_RATE)
    deg16 = resample(degraded, rate, PESQ_RATE)
    length = min(len(ref16), len(deg16))
    try:
        return float(pesq(PESQ_RATE, ref16[:length], deg16[:length], "wb"))
    except PesqError as err:
        logger.debug("PESQ not computable: %s", err)
        return math.nan


def stoi(reference: np.ndarray, degraded: np.ndarray, rate: int) -> float:
    """Short-time objective intelligibility (Taal et al. 2011) of ``degraded`` against ``reference``, 0..1.

    pystoi resamples to its 10 kHz itself and drops silent frames of the reference; NaN for a silent reference.
    """
    from pystoi import stoi as pystoi_stoi

    length = min(len(reference), len(degraded))
    if _is_silent(reference[:length]):
        return math.nan
    return float(pystoi_stoi(reference[:length], degraded[:length], rate, extended=False))


# ------------------------------------------------------------------------------------------------ DNSMOS


class DNSMOS:
    """DNSMOS P.835 (speech ``sig``, background ``bak``, overall ``ovrl``) and P.808 MOS, 1..5 (Reddy et al.).

    Runs the ONNX models shipped in the ``speechmos`` wheel (``dnsmos_models/sig_bak_ovr.onnx`` and
    ``model_v8.onnx``) with onnxruntime, computing exactly what ``speechmos.dnsmos.run`` does (a test compares
    them): audio at 16 kHz, repeated until 9.01 s long, scored in 9.01 s windows at 1 s hops and averaged; the
    P.835 outputs go through DNSMOS's polynomial calibration. Run directly rather than through
    ``speechmos.dnsmos.run`` because that function keeps its sessions in a module global, opens them with
    onnxruntime's default thread pool (all cores, beside the trainer's threads), imports ``requests`` without
    declaring it and raises on samples outside [-1, 1]; here the windows of a clip go in one batch, the thread
    count is ours, onnxruntime's memory arena is off and audio is clipped to [-1, 1].
    """

    window_seconds = 9.01
    # DNSMOS's calibration polynomials (highest power first), as in Microsoft's dnsmos_local.py.
    _calibration = {
        "sig": (-0.08397278, 1.22083953, 0.0052439),
        "bak": (-0.13166888, 1.60915514, -0.39604546),
        "ovrl": (-0.06766283, 1.11546468, 0.04602535),
    }

    def __init__(self, model_dir: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort

        folder = Path(model_dir) if model_dir is not None else speechmos_model_dir()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Without onnxruntime's memory arena and patterns: they keep each run's peak for the life of the process
        # (the demo trainer on CPU: its resident memory grew from 3.6 to 6.0 GB at its first evaluation).
        # Same scores, no slower.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        providers = ["CPUExecutionProvider"]
        paths = {name: folder / name for name in ("sig_bak_ovr.onnx", "model_v8.onnx")}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"DNSMOS model {path} is missing (it ships in the speechmos package)")
        self.p835 = ort.InferenceSession(str(paths["sig_bak_ovr.onnx"]), options, providers=providers)
        self.p808 = ort.InferenceSession(str(paths["model_v8.onnx"]), options, providers=providers)

    def windows(self, wav16: np.ndarray) -> np.ndarray:
        """[n, 9.01 s] float32 windows at 1 s hops of the clip, repeated (doubled) until long enough."""
        window = int(self.window_seconds * DNSMOS_RATE)
        audio = np.clip(wav16, -1.0, 1.0)
        if audio.size == 0:
            audio = np.zeros(1)
        while len(audio) < window:
            audio = np.concatenate([audio, audio])
        hops = int(np.floor(len(audio) / DNSMOS_RATE) - self.window_seconds) + 1
        starts = [
            hop * DNSMOS_RATE for hop in range(hops) if int((hop + self.window_seconds) * DNSMOS_RATE) <= len(audio)
        ]
        return np.stack([audio[start : start + window] for start in starts]).astype(np.float32)

    @staticmethod
    def p808_features(window: np.ndarray) -> np.ndarray:
        """[frames, 120] scaled log-mel input of the P.808 model (power dB re max, +40, /40)."""
        import librosa

        mel = librosa.feature.melspectrogram(y=window[:-160], sr=DNSMOS_RATE, n_fft=321, hop_length=160, n_mels=120)
        return ((librosa.power_to_db(mel, ref=np.max) + 40) / 40).T

    def __call__(self, wav: np.ndarray, rate: int) -> dict[str, float]:
        """``{"sig", "bak", "ovrl", "p808"}`` for one clip at ``rate`` Hz."""
        windows = self.windows(resample(wav, rate, DNSMOS_RATE))
        raw = self.p835.run(None, {"input_1": windows})[0]  # [n, 3]: sig, bak, ovrl
        features = np.stack([self.p808_features(window) for window in windows]).astype(np.float32)
        p808 = self.p808.run(None, {"input_1": features})[0]  # [n, 1]
        scores = {
            name: float(np.mean(np.polyval(self._calibration[name], raw[:, column])))
            for column, name in enumerate(("sig", "bak", "ovrl"))
        }
        scores["p808"] = float(np.mean(p808))
        return scores


def speechmos_model_dir() -> Path:
    """The folder of DNSMOS ONNX models inside the installed ``speechmos`` package (found without importing it:
    its ``__init__`` imports modules with undeclared dependencies)."""
    spec = importlib.util.find_spec("speechmos")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("speechmos is not installed (pip install speechmos): it ships the DNSMOS models")
    return Path(next(iter(spec.submodule_search_locations))) / "dnsmos_models"


# ---------------------------------------------------------------------------------------- WORLD analysis


@dataclasses.dataclass
class WorldFeatures:
    """WORLD analysis of a clip at 5 ms frames: F0 in Hz (0 = unvoiced) [frames], mel-cepstrum [frames, 25]."""

    f0: np.ndarray
    mcep: np.ndarray


@functools.lru_cache(maxsize=16)
def mcep_alpha(rate: int) -> float:
    """All-pass warping constant whose frequency warp best fits the mel scale at ``rate`` Hz (3 decimals).

    The mel scale is 1000/ln 2 · ln(1 + f/1000); e.g. 0.410 at 16 kHz, 0.455 at 22.05 kHz, 0.544 at 44.1 kHz.
    """
    omega = np.linspace(0.0, np.pi, 512)
    mel = np.log1p(omega / np.pi * (rate / 2) / 1000.0)
    mel = mel / mel[-1] * np.pi
    alphas = np.arange(0.0, 1.0, 0.001)
    errors = [np.sum((warp_frequency(omega, alpha) - mel) ** 2) for alpha in alphas]
    return round(float(alphas[int(np.argmin(errors))]), 3)


def warp_frequency(omega: np.ndarray, alpha: float) -> np.ndarray:
    """Phase response of the first-order all-pass (z^-1 - α)/(1 - α z^-1): frequency ω (rad) to warped ω̃."""
    return omega + 2.0 * np.arctan2(alpha * np.sin(omega), 1.0 - alpha * np.cos(omega))


def mel_cepstrum(power_envelope: np.ndarray, alpha: float, order: int = MCEP_ORDER) -> np.ndarray:
    """Mel-cepstra c0..c``order`` of power spectral envelopes [frames, bins 0..π] (SPTK's convention).

    ln P is sampled on a uniform grid of the warped frequency (the inverse warp is the warp with -α) and
    expanded in cosines: ln P(ω̃) = c0 + 2 Σ c_m cos(m ω̃).
    """
    bins = power_envelope.shape[-1]
    warped = np.linspace(0.0, np.pi, bins)
    linear = np.linspace(0.0, np.pi, bins)
    source = warp_frequency(warped, -alpha)  # the linear frequency of each warped grid point
    log_power = np.log(np.maximum(power_envelope, 1e-300))
    resampled = np.stack([np.interp(source, linear, row) for row in log_power])
    return np.fft.irfft(resampled, axis=-1)[:, : order + 1]


def world_features(wav: np.ndarray, rate: int) -> WorldFeatures:
    """F0 by DIO refined with StoneMask, and the CheapTrick envelope as mel-cepstra, at 5 ms frames."""
    import pyworld

    audio = np.ascontiguousarray(wav, dtype=np.float64)
    if audio.size < rate // 10:  # WORLD needs some signal; pad very short clips with silence
        audio = np.pad(audio, (0, rate // 10 - audio.size))
    f0, times = pyworld.dio(audio, rate, frame_period=WORLD_FRAME_PERIOD_MS)
    f0 = pyworld.stonemask(audio, f0, times, rate)
    envelope = pyworld.cheaptrick(audio, f0, times, rate)
    return WorldFeatures(f0=f0, mcep=mel_cepstrum(envelope, mcep_alpha(rate)))


def dtw_path(reference: WorldFeatures, synthesized: WorldFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Frame pairs (reference index, synthesized index) of the DTW alignment of the mel-cepstra c1..c24
    (Euclidean distance, librosa's DTW), in time order."""
    import librosa

    _, path = librosa.sequence.dtw(X=reference.mcep[:, 1:].T, Y=synthesized.mcep[:, 1:].T, metric="euclidean")
    path = path[::-1]
    return path[:, 0], path[:, 1]


def mel_cepstral_distortion(
    reference: WorldFeatures, synthesized: WorldFeatures, path: tuple[np.ndarray, np.ndarray] | None = None
) -> float:
    """MCD in dB: mean over DTW-aligned frame pairs of 10/ln 10 · sqrt(2 Σ_{m=1..24} (c_m - ĉ_m)²).

    c0 (the level) is left out, so a louder or quieter copy scores 0; silent frames count like any other.
    """
    ref_index, syn_index = path if path is not None else dtw_path(reference, synthesized)
    diff = reference.mcep[ref_index, 1:] - synthesized.mcep[syn_index, 1:]
    return float(np.mean(_MCD_SCALE * np.sqrt(np.sum(diff**2, axis=1))))


def f0_errors(
    reference: WorldFeatures, synthesized: WorldFeatures, path: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[float, float]:
    """(log-F0 RMSE in cents, voicing error) over DTW-aligned frame pairs.

    The RMSE of 1200 · log2(F0_syn / F0_ref) is taken over pairs voiced in both (NaN when there is none, e.g.
    silence); the voicing error is the fraction of pairs where one is voiced and the other is not.
    """
    ref_index, syn_index = path if path is not None else dtw_path(reference, synthesized)
    f0_ref, f0_syn = reference.f0[ref_index], synthesized.f0[syn_index]
    voiced_ref, voiced_syn = f0_ref > 0, f0_syn > 0
    both = voiced_ref & voiced_syn
    vuv = float(np.mean(voiced_ref != voiced_syn)) if len(f0_ref) else math.nan
    if not both.any():
        return math.nan, vuv
    cents = CENTS_PER_OCTAVE * np.log2(f0_syn[both] / f0_ref[both])
    return float(np.sqrt(np.mean(cents**2))), vuv


def duration_ratio(reference_samples: int, synthesized_samples: int) -> float:
    """Length of the synthesized clip over the real one's (1 = same speaking rate; > 1 slower)."""
    if reference_samples <= 0:
        return math.nan
    return float(synthesized_samples) / float(reference_samples)


# ------------------------------------------------------------------------------------ intelligibility


def normalise_transcript(text: str) -> str:
    """Lower case, punctuation removed, single spaces (jiwer's transforms), for word error rates."""
    import jiwer

    transform = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
    )
    return transform(text)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate (substitutions + deletions + insertions over reference words) after
    :func:`normalise_transcript`; NaN without reference words."""
    import jiwer

    pairs = [(normalise_transcript(ref), normalise_transcript(hyp)) for ref, hyp in zip(references, hypotheses)]
    pairs = [(ref, hyp) for ref, hyp in pairs if ref]
    if not pairs:
        return math.nan
    return float(jiwer.wer([ref for ref, _ in pairs], [hyp for _, hyp in pairs]))


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus character error rate for languages written without spaces (ZH, JP): edits over reference
    characters, after :func:`normalise_transcript` and with every space removed; NaN without reference text."""
    import jiwer

    def chars(text: str) -> str:
        return normalise_transcript(text).replace(" ", "")

    pairs = [(chars(ref), chars(hyp)) for ref, hyp in zip(references, hypotheses)]
    pairs = [(ref, hyp) for ref, hyp in pairs if ref]
    if not pairs:
        return math.nan
    return float(jiwer.cer([ref for ref, _ in pairs], [hyp for _, hyp in pairs]))


class WhisperRecognizer:
    """A Whisper checkpoint in a local folder (transcribe.py's loader; nothing downloads) for ZH and JP clips.

    Whisper writes Japanese with kanji where the filelists hold kana, so ``val/cer_jp`` is an upper bound; what
    counts is its trend over training.
    """

    def __init__(self, folder: str | Path) -> None:
        from transcribe import Recogniser

        self.recogniser = Recogniser(Path(folder), device="cpu")

    def transcribe(self, wav: np.ndarray, rate: int, language: str) -> str:
        audio = resample(wav, rate, self.recogniser.rate).astype(np.float32)
        return self.recogniser.transcribe([audio], language)[0][1]


class EnglishRecognizer:
    """Offline English speech recognition with the acoustic and language models bundled in ``pocketsphinx``."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")

    def transcribe(self, wav: np.ndarray, rate: int) -> str:
        pcm = (np.clip(resample(wav, rate, ASR_RATE), -1.0, 1.0) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""


# -------------------------------------------------------------------------------------------- the scorer

# Each optional package and the tags it provides.
_PACKAGE_TAGS = {
    "pesq": ("val/pesq_wb",),
    "pystoi": ("val/stoi",),
    "speechmos": ("val/dnsmos_ovrl", "val/dnsmos_sig", "val/dnsmos_bak", "val/dnsmos_p808"),
    "pyworld": ("val/mcd", "val/f0_rmse", "val/vuv_error"),
    "pocketsphinx": ("val/wer_en",),
    "jiwer": ("val/wer_en",),
}


def missing_packages(packages: Iterable[str] = _PACKAGE_TAGS) -> list[str]:
    """The optional metric packages that cannot be imported (pyworld, e.g., needs setuptools' pkg_resources)."""
    missing = []
    for name in packages:
        try:
            if name == "speechmos":
                speechmos_model_dir()
            else:
                importlib.import_module(name)
        except ImportError as err:
            logger.debug("%s unavailable: %s", name, err)
            missing.append(name)
    return missing


@dataclasses.dataclass
class Utterance:
    """One validation clip's audio: the real clip, its reconstruction and its free synthesis (float arrays)."""

    reference: np.ndarray
    reconstruction: np.ndarray | None
    synthesis: np.ndarray | None
    language: str = ""
    text: str = ""
    mel_l1: float = math.nan


class Scorer:
    """Scores utterances with every metric whose package is installed (one warning per missing package)."""

    def __init__(self, rate: int, threads: int = 1, whisper_dir: str | Path | None = None) -> None:
        self.rate = rate
        missing = missing_packages()
        for name in missing:
            tags = ", ".join(_PACKAGE_TAGS[name])
            logger.warning("%s is not installed: %s skipped (pip install %s)", name, tags, name)
        self.skipped = {tag for name in missing for tag in _PACKAGE_TAGS[name]}
        self.dnsmos = DNSMOS(threads=threads) if "speechmos" not in missing else None
        self._english: EnglishRecognizer | None = None
        # A configured Whisper folder that cannot load is an error naming it (transcribe.ModelFolderError).
        self.whisper = WhisperRecognizer(whisper_dir) if whisper_dir else None

    def english(self) -> EnglishRecognizer | None:
        """The English recogniser, loaded on first use (None when its packages are missing)."""
        if self._english is None and "val/wer_en" not in self.skipped:
            self._english = EnglishRecognizer()
        return self._english

    def reconstruction_scores(self, reference: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        scores = {}
        if "val/pesq_wb" not in self.skipped:
            scores["val/pesq_wb"] = pesq_wb(reference, reconstruction, self.rate)
        if "val/stoi" not in self.skipped:
            scores["val/stoi"] = stoi(reference, reconstruction, self.rate)
        return scores

    def synthesis_scores(self, reference: np.ndarray, synthesis: np.ndarray) -> dict[str, float]:
        scores = {"val/duration_ratio": duration_ratio(len(reference), len(synthesis))}
        if self.dnsmos is not None:
            scores.update({f"val/dnsmos_{name}": value for name, value in self.dnsmos(synthesis, self.rate).items()})
        if "val/mcd" not in self.skipped:
            ref, syn = world_features(reference, self.rate), world_features(synthesis, self.rate)
            path = dtw_path(ref, syn)
            scores["val/mcd"] = mel_cepstral_distortion(ref, syn, path)
            scores["val/f0_rmse"], scores["val/vuv_error"] = f0_errors(ref, syn, path)
        return scores

    def score(self, utterances: Sequence[Utterance]) -> dict[str, float]:
        """Mean of each metric over the utterances (NaN values left out; a metric with none is absent), and
        the corpus WER of the English ones."""
        rows: list[dict[str, float]] = []
        references, hypotheses = [], []
        transcripts: dict[str, tuple[list[str], list[str]]] = {"ZH": ([], []), "JP": ([], [])}
        for utt in utterances:
            row = {"val/mel_l1": utt.mel_l1}
            if utt.reconstruction is not None:
                row.update(self.reconstruction_scores(utt.reference, utt.reconstruction))
            if utt.synthesis is not None:
                row.update(self.synthesis_scores(utt.reference, utt.synthesis))
                recognizer = self.english() if utt.language == "EN" else None
                if recognizer is not None:
                    references.append(utt.text)
                    hypotheses.append(recognizer.transcribe(utt.synthesis, self.rate))
                if self.whisper is not None and utt.language in transcripts:
                    refs, hyps = transcripts[utt.language]
                    refs.append(utt.text)
                    hyps.append(self.whisper.transcribe(utt.synthesis, self.rate, utt.language))
            rows.append(row)
        result = mean_scores(rows)
        if references:
            wer = word_error_rate(references, hypotheses)
            if math.isfinite(wer):
                result["val/wer_en"] = wer
        for language, (refs, hyps) in transcripts.items():
            cer = character_error_rate(refs, hyps) if refs else math.nan
            if math.isfinite(cer):
                result[f"val/cer_{language.lower()}"] = cer
        return result


def mean_scores(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per tag, the mean of the finite values over rows; tags without any finite value are left out."""
    result = {}
    for tag in METRICS:
        values = [row[tag] for row in rows if tag in row and math.isfinite(row[tag])]
        if values:
            result[tag] = float(np.mean(values))
    return result


# --------------------------------------------------------------------------------- a generator's val set

# Free synthesis settings: infer.py's defaults.
SYNTHESIS_SETTINGS = {"sdp_ratio": 0.2, "noise_scale": 0.6, "noise_scale_w": 0.8, "length_scale": 1.0}
DEFAULT_SEED = 1234


def _device_rng_devices(device: Any) -> list[int]:
    """The CUDA device whose random stream synthesis draws from, for ``fork_rng``."""
    return [device.index or 0] if device.type == "cuda" else []


@contextlib.contextmanager
def same_kernels(device: Any) -> Iterator[None]:
    """On the CPU, torch's native kernels (oneDNN off, as the trainer runs: ``train_runtime.configure_kernels``) on
    one thread, so a checkpoint's audio is the same bit for bit in the trainer and in ``evaluate.py`` whatever
    their thread counts (the native kernels split their sums by thread; oneDNN rounds otherwise). On CUDA the
    process's settings apply (``evaluate.py`` takes the trainer's TF32 settings; cuDNN may still choose other
    algorithms, so its numbers there agree to the kernels' rounding only)."""
    import torch

    if torch.device(device).type != "cpu":
        yield
        return
    # The flag itself, not torch.backends.mkldnn.flags(): that one also sets oneDNN's TF32 flag, with a warning.
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = onednn
        torch.set_num_threads(threads)


def generate_utterances(net_g: Any, dataset: Any, data: Any, device: Any, seed: int = DEFAULT_SEED) -> list[Utterance]:
    """Reconstruct and freely synthesize every clip of ``dataset`` (a ``TextAudioSpeakerLoader``) with ``net_g``.

    Clip ``i`` uses the seed ``seed + i`` in a forked RNG (the caller's random streams are left untouched), in
    eval mode and fp32 with :func:`same_kernels`, so the trainer and ``evaluate.py`` get the same audio from the
    same weights.
    """
    import torch

    from data_utils import TextAudioSpeakerCollate
    from training import waveform_mel

    device = torch.device(device)
    collate = TextAudioSpeakerCollate()
    was_training = net_g.training
    net_g.eval()
    utterances = []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=_device_rng_devices(device)), same_kernels(device):
            for index in range(len(dataset)):
                entry = dataset.audiopaths_sid_text[index]
                batch = collate([dataset[index]]).to(device)
                torch.manual_seed(seed + index)
                frames = int(batch.spec_lengths[0])
                reference = batch.wav[:, 0, : frames * data.hop_length].float()
                g = net_g._speaker_embedding(batch.sid, batch.spec)  # [1, gin, 1]
                z, _m, _logs, y_mask = net_g.enc_q(batch.spec, batch.spec_lengths, g=g)
                reconstruction = net_g.dec(z * y_mask, g=g)[:, 0].float()  # [1, frames * hop]
                # Batch fields from sid on are infer's sid, tone, language, bert, ja_bert, en_bert.
                out = net_g.infer(batch.text, batch.text_lengths, *batch[6:], y=batch.spec, **SYNTHESIS_SETTINGS)
                length = int(out.y_mask.sum()) * data.hop_length
                utterances.append(
                    Utterance(
                        reference=as_audio(batch.wav[0, 0, : int(batch.wav_lengths[0])]),
                        reconstruction=as_audio(reconstruction),
                        synthesis=as_audio(out.o[0, 0, :length]),
                        language=entry.language,
                        text=entry.norm_text,
                        mel_l1=mel_l1(waveform_mel(reference, data), waveform_mel(reconstruction, data)),
                    )
                )
    finally:
        net_g.train(was_training)
    return utterances


def score_validation(
    net_g: Any, dataset: Any, data: Any, device: Any, scorer: Scorer, seed: int = DEFAULT_SEED
) -> dict[str, float]:
    """Every ``val/...`` metric of ``net_g`` on ``dataset`` (see the table above)."""
    return scorer.score(generate_utterances(net_g, dataset, data, device, seed))


# ------------------------------------------------------------------------------------ throughput and memory


class PerfMeter:
    """Throughput and memory of the training loop, averaged over each logging interval (host clock only).

    The loop calls :meth:`batch_arrived` with each batch as the loader hands it over (still on the CPU),
    :meth:`step_finished` after the step and :meth:`waiting_for_batch` when it asks for the next batch (after
    logging and saving); :meth:`read` returns the interval's ``perf/...`` scalars and starts
    the next interval. Nothing here reads a device tensor, so the step gains no host synchronisation; on CUDA
    the interval's wall time is still exact because the log step reads the losses anyway.

    * ``perf/step_seconds``: wall seconds per iteration, data wait, logging and saving included (evaluation not);
    * ``perf/data_wait_seconds``: seconds per iteration spent waiting for the loader;
    * ``perf/samples_per_second``, ``perf/audio_seconds_per_second``: clips and seconds of training audio per
      wall second, all ranks (this rank's count times the world size: counting exactly would need a collective);
    * ``perf/peak_memory_gb`` (and ``perf/peak_reserved_gb`` on CUDA): the device's peak allocated (reserved)
      memory in the interval; on the CPU the process's peak resident set (reset per interval where Linux allows).
    """

    def __init__(self, device: Any, world_size: int, sampling_rate: int, clock: Any = None) -> None:
        import torch

        self.device = torch.device(device)
        self.world_size, self.sampling_rate = world_size, sampling_rate
        self.clock = clock or _perf_counter
        self._reset(self.clock())

    def _reset(self, now: float) -> None:
        self.interval_start = self.last_end = now
        self.steps = self.samples = self.audio_samples = 0
        self.data_wait = 0.0
        self._reset_peak_memory()

    def batch_arrived(self, *batches: Any) -> None:
        """Count the wait since the last step and this rank's clips and audio (``batch.wav_lengths``, CPU) of the
        update's batches (one, or ``train.grad_accum_steps`` micro-batches)."""
        self.data_wait += self.clock() - self.last_end
        for batch in batches:
            self.samples += len(batch.wav_lengths)
            self.audio_samples += int(batch.wav_lengths.sum())

    def step_finished(self) -> None:
        self.steps += 1
        self.last_end = self.clock()

    def waiting_for_batch(self) -> None:
        """The loop is done with the step (logging, saving) and now waits for the loader: the wait starts."""
        self.last_end = self.clock()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside (an evaluation) out of the interval and of the next data wait."""
        start = self.clock()
        try:
            yield
        finally:
            spent = self.clock() - start
            self.interval_start += spent
            self.last_end += spent

    def read(self) -> dict[str, float]:
        """The interval's scalars (empty before any step), then a new interval begins."""
        now = self.clock()
        elapsed = max(now - self.interval_start, 1e-9)
        scalars: dict[str, float] = {}
        if self.steps:
            scalars = {
                "perf/step_seconds": elapsed / self.steps,
                "perf/data_wait_seconds": self.data_wait / self.steps,
                "perf/samples_per_second": self.samples * self.world_size / elapsed,
                "perf/audio_seconds_per_second": self.audio_samples * self.world_size / self.sampling_rate / elapsed,
            }
            scalars.update(self._peak_memory())
        self._reset(now)
        return scalars

    def _peak_memory(self) -> dict[str, float]:
        import torch

        gib = float(1 << 30)
        if self.device.type == "cuda":
            return {
                "perf/peak_memory_gb": torch.cuda.max_memory_allocated(self.device) / gib,
                "perf/peak_reserved_gb": torch.cuda.max_memory_reserved(self.device) / gib,
            }
        return {"perf/peak_memory_gb": peak_rss_bytes() / gib}

    def _reset_peak_memory(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()


def _perf_counter() -> float:
    import time

    return time.perf_counter()


def peak_rss_bytes() -> int:
    """The process's peak resident set size: VmHWM of /proc/self/status, else getrusage's maximum."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: "5" to /proc/self/clear_refs); elsewhere the peak is since start."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


# --------------------------------------------------------------------------------- the training loop's hooks


class TrainingMonitor:
    """What the training loop measures besides its losses: the ``perf/...`` scalars of each logging interval
    (:class:`PerfMeter`, every rank) and, on rank 0, the validation metrics with the best checkpoints.

    The loop calls ``perf.batch_arrived(batch)`` when the loader hands a batch over, :meth:`step_finished` after
    the step, adds :meth:`perf_scalars` to its log scalars, and :meth:`waiting_for_batch` before asking for the
    next batch. At each evaluation (rank 0, before saving that step) it runs inside :meth:`evaluation` and calls
    :meth:`validate`; it passes ``best`` to the checkpoint save, whose retention then keeps the best checkpoints.
    """

    def __init__(
        self,
        model_dir: str,
        device: Any,
        world_size: int,
        sampling_rate: int,
        is_main: bool,
        keep_best: int = 0,
        best_metric: str = "val/dnsmos_ovrl",
        whisper_dir: str = "",
        score: bool = True,
    ) -> None:
        import utils

        self.perf = PerfMeter(device, world_size, sampling_rate)
        self.device, self.sampling_rate, self.score = device, sampling_rate, score and is_main
        # best.json exists on rank 0 only; without scores it still protects the best of an earlier run.
        self.best = utils.BestCheckpoints(model_dir, best_metric, keep_best) if is_main and keep_best > 0 else None
        self._scorer: Scorer | None = None
        self.whisper_dir = whisper_dir
        self.last_evaluation_end = _perf_counter()

    def step_finished(self) -> None:
        self.perf.step_finished()

    def waiting_for_batch(self) -> None:
        self.perf.waiting_for_batch()

    def perf_scalars(self) -> dict[str, float]:
        """This logging interval's ``perf/...`` scalars (see :class:`PerfMeter`); a new interval starts."""
        return self.perf.read()

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[dict[str, float]]:
        """Time an evaluation: left out of the throughput; on exit the yielded dict holds ``perf/eval_seconds``
        and ``perf/eval_share`` (its share of the wall time since the previous evaluation ended, itself included).
        """
        timing: dict[str, float] = {}
        start = _perf_counter()
        with self.perf.paused():
            yield timing
        end = _perf_counter()
        spent = end - start
        timing["perf/eval_seconds"] = spent
        timing["perf/eval_share"] = spent / max(end - self.last_evaluation_end, 1e-9)
        self.last_evaluation_end = end

    def validate(self, net_g: Any, dataset: Any, data: Any, step: int) -> dict[str, float]:
        """Every ``val/...`` metric of ``net_g`` on ``dataset``, recorded for the best checkpoints (empty when
        scoring is off)."""
        if not self.score:
            return {}
        if self._scorer is None:
            self._scorer = Scorer(self.sampling_rate, whisper_dir=self.whisper_dir)
        scores = score_validation(net_g, dataset, data, self.device, self._scorer)
        if self.best is not None:
            self.best.record(step, scores)
        return scores
