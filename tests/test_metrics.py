"""The voice-quality metrics (metrics.py) on signals with known answers, and on the demo corpus's speech."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

import metrics

DEMO_RAW = Path(__file__).resolve().parents[1] / "demo" / "raw"
# 4.56 s: DNSMOS repeats it to 9.1 s, one 9.01 s window (the cheapest clip to score).
ONE_WINDOW_CLIP = DEMO_RAW / "spk1" / "zh_02.flac"
ENGLISH_CLIP = DEMO_RAW / "spk1" / "en_01.flac"
ENGLISH_TEXT = "Please put the green cups on the lowest shelf."
RATE = 22050


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = soundfile.read(ONE_WINDOW_CLIP, dtype="float64")
    assert rate == RATE
    return audio


@pytest.fixture(scope="module")
def noisy_speech(speech: np.ndarray) -> np.ndarray:
    """The clip under loud white noise (about 0 dB SNR), within [-1, 1]."""
    noise = np.random.default_rng(0).standard_normal(speech.size)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2))
    return np.clip(speech + noise, -1.0, 1.0)


@pytest.fixture(scope="module")
def speech_world(speech: np.ndarray) -> metrics.WorldFeatures:
    return metrics.world_features(speech, RATE)


def tone(frequency: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.5 * np.sin(2 * np.pi * frequency * t)


# ---------------------------------------------------------------------------------- mel-cepstrum and MCD


@pytest.mark.parametrize(("rate", "alpha"), [(16000, 0.41), (22050, 0.455), (44100, 0.544)])
def test_mcep_alpha_fits_the_mel_scale(rate: int, alpha: float) -> None:
    assert metrics.mcep_alpha(rate) == pytest.approx(alpha, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.455])
def test_mel_cepstrum_recovers_a_known_warped_cosine(alpha: float) -> None:
    # ln P(ω) = c0 + 2 c1 cos(ω̃) + 2 c3 cos(3 ω̃) with ω̃ the warped frequency: the mel-cepstrum is (c0, c1, 0, c3).
    omega = np.linspace(0.0, np.pi, 513)
    warped = metrics.warp_frequency(omega, alpha)
    log_power = 0.7 + 2 * 0.3 * np.cos(warped) + 2 * -0.1 * np.cos(3 * warped)
    mcep = metrics.mel_cepstrum(np.exp(log_power)[None, :], alpha)
    expected = np.zeros(metrics.MCEP_ORDER + 1)
    expected[[0, 1, 3]] = 0.7, 0.3, -0.1
    np.testing.assert_allclose(mcep[0], expected, atol=2e-3)


def test_mcd_is_in_db_over_c1_to_c24() -> None:
    base = np.zeros((5, metrics.MCEP_ORDER + 1))
    shifted = base.copy()
    shifted[:, 0] += 3.0  # the level: left out
    shifted[:, 2] += 0.1
    f0 = np.zeros(5)
    mcd = metrics.mel_cepstral_distortion(metrics.WorldFeatures(f0, base), metrics.WorldFeatures(f0, shifted))
    assert mcd == pytest.approx(10 / math.log(10) * math.sqrt(2) * 0.1, rel=1e-9)


def test_identical_audio_has_zero_mcd_and_f0_error(speech_world: metrics.WorldFeatures) -> None:
    assert metrics.mel_cepstral_distortion(speech_world, speech_world) == 0.0
    assert metrics.f0_errors(speech_world, speech_world) == (0.0, 0.0)
    assert (speech_world.f0 > 0).mean() > 0.3  # the clip has voiced frames to compare


def test_mcd_ignores_the_level_and_grows_with_noise(speech: np.ndarray, noisy_speech: np.ndarray) -> None:
    reference = metrics.world_features(speech, RATE)
    quieter = metrics.world_features(0.3 * speech, RATE)
    noisy = metrics.world_features(noisy_speech, RATE)
    assert metrics.mel_cepstral_distortion(reference, quieter) < 0.01
    assert metrics.mel_cepstral_distortion(reference, noisy) > 5.0


@pytest.mark.parametrize("cents", [25.0, 100.0])
def test_tone_shifted_by_known_cents_gives_that_f0_error(cents: float) -> None:
    low = metrics.world_features(tone(200.0), RATE)
    high = metrics.world_features(tone(200.0 * 2 ** (cents / 1200)), RATE)
    rmse, vuv = metrics.f0_errors(low, high)
    assert rmse == pytest.approx(cents, abs=3.0)
    assert vuv == 0.0


def test_silence_has_no_voiced_frames_and_no_f0_error(speech_world: metrics.WorldFeatures) -> None:
    silence = metrics.world_features(np.zeros(RATE), RATE)
    assert not (silence.f0 > 0).any()
    rmse, vuv = metrics.f0_errors(silence, silence)
    assert math.isnan(rmse) and vuv == 0.0
    assert metrics.mel_cepstral_distortion(silence, silence) == 0.0
    rmse, vuv = metrics.f0_errors(speech_world, silence)
    assert math.isnan(rmse)
    assert 0.3 < vuv < 1.0  # the speech's voiced frames, aligned against unvoiced silence


def test_duration_ratio() -> None:
    assert metrics.duration_ratio(1000, 1500) == 1.5
    assert math.isnan(metrics.duration_ratio(0, 10))


# ------------------------------------------------------------------------------- intrusive and DNSMOS


def test_pesq_and_stoi_known_answers(speech: np.ndarray, noisy_speech: np.ndarray) -> None:
    assert metrics.pesq_wb(speech, speech, RATE) == pytest.approx(4.64, abs=0.01)  # the scale's top
    assert metrics.pesq_wb(speech, noisy_speech, RATE) < 2.0
    assert metrics.stoi(speech, speech, RATE) == pytest.approx(1.0, abs=1e-6)
    assert metrics.stoi(speech, noisy_speech, RATE) < 0.9
    silence = np.zeros(RATE)
    assert math.isnan(metrics.pesq_wb(silence, silence, RATE))
    assert math.isnan(metrics.stoi(silence, silence, RATE))


def test_dnsmos_equals_speechmos_and_prefers_clean_speech(speech: np.ndarray, noisy_speech: np.ndarray) -> None:
    import librosa
    from speechmos import dnsmos as speechmos_dnsmos

    scorer = metrics.DNSMOS()
    clean = scorer(speech, RATE)
    # speechmos refuses samples outside [-1, 1], which resampling can overshoot; ours clips the same way.
    speech16 = np.clip(librosa.resample(speech, orig_sr=RATE, target_sr=16000), -1.0, 1.0)
    expected = speechmos_dnsmos.run(speech16, 16000)
    for ours, theirs in [("ovrl", "ovrl_mos"), ("sig", "sig_mos"), ("bak", "bak_mos"), ("p808", "p808_mos")]:
        assert clean[ours] == pytest.approx(float(expected[theirs]), abs=1e-4)
    noisy = scorer(noisy_speech, RATE)
    # Additive noise is what BAK and the overall scores rate; SIG rates the speech itself (distortion).
    for name in ("ovrl", "bak", "p808"):
        assert 1.0 <= noisy[name] < clean[name] <= 5.0, name
    silence = scorer(np.zeros(RATE // 2), RATE)  # no crash; repeated until a window is filled
    assert all(math.isfinite(value) for value in silence.values())


# ------------------------------------------------------------------------------------ intelligibility


def test_word_error_rate_normalises_case_and_punctuation() -> None:
    assert metrics.word_error_rate(["Hello, World!"], ["hello word"]) == 0.5
    assert metrics.word_error_rate(["one two", "three"], ["one two", ""]) == pytest.approx(1 / 3)
    assert math.isnan(metrics.word_error_rate(["..."], ["x"]))


def test_pocketsphinx_recognises_english_speech_offline() -> None:
    audio, rate = soundfile.read(ENGLISH_CLIP, dtype="float64")
    recognizer = metrics.EnglishRecognizer()
    hypothesis = recognizer.transcribe(audio, rate)
    # espeak-ng's formant speech is hard for a model of natural speech; some words still come through.
    speech_wer = metrics.word_error_rate([ENGLISH_TEXT], [hypothesis])
    assert speech_wer < 0.9
    silence_wer = metrics.word_error_rate([ENGLISH_TEXT], [recognizer.transcribe(np.zeros(rate // 2), rate)])
    assert silence_wer > speech_wer


# --------------------------------------------------------------------------------------------- scorer


def test_scorer_on_identical_audio(speech: np.ndarray) -> None:
    utterance = metrics.Utterance(speech, speech, speech, language="ZH", text="x", mel_l1=0.0)
    scores = metrics.Scorer(RATE).score([utterance])
    assert scores["val/mel_l1"] == 0.0
    assert scores["val/pesq_wb"] == pytest.approx(4.64, abs=0.01)
    assert scores["val/stoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["val/mcd"] == 0.0 and scores["val/f0_rmse"] == 0.0 and scores["val/vuv_error"] == 0.0
    assert scores["val/duration_ratio"] == 1.0
    assert 1.0 < scores["val/dnsmos_ovrl"] < 5.0
    assert "val/wer_en" not in scores  # no English utterance
    assert set(scores) <= set(metrics.METRICS)


def test_missing_packages_are_skipped_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = metrics.importlib.import_module

    def without_metric_packages(name: str, *args: object) -> object:
        if name in ("pesq", "pystoi", "pyworld", "pocketsphinx", "jiwer"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(metrics.importlib, "import_module", without_metric_packages)
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name, *args: None)
    with caplog.at_level(logging.WARNING, logger="metrics"):
        scorer = metrics.Scorer(RATE)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 6 and any(message.startswith("pesq is not installed") for message in warnings)
    clip = tone(200.0, 0.5)
    scores = scorer.score([metrics.Utterance(clip, clip, clip[:5000], language="EN", text="a b", mel_l1=0.5)])
    assert scores == {"val/mel_l1": 0.5, "val/duration_ratio": pytest.approx(5000 / clip.size)}


def test_metric_directions() -> None:
    assert metrics.metric_badness("val/dnsmos_ovrl", 4.0) < metrics.metric_badness("val/dnsmos_ovrl", 3.0)
    assert metrics.metric_badness("val/mcd", 4.0) < metrics.metric_badness("val/mcd", 5.0)
    assert metrics.metric_badness("val/duration_ratio", 0.95) < metrics.metric_badness("val/duration_ratio", 1.1)
    assert metrics.metric_badness("val/mcd", math.nan) == math.inf
    with pytest.raises(ValueError, match="unknown metric 'val/nope'"):
        metrics.metric_badness("val/nope", 1.0)


# ------------------------------------------------------------------------------------- a local Whisper


def test_character_error_rate_ignores_spaces_and_punctuation() -> None:
    assert metrics.character_error_rate(["你好，世界。"], ["你好 世"]) == 0.25
    assert math.isnan(metrics.character_error_rate(["。"], ["x"]))


def test_a_local_whisper_gives_the_chinese_and_japanese_cer(tmp_path: Path) -> None:
    from tiny_whisper import build_tiny_whisper

    folder = build_tiny_whisper(tmp_path / "whisper")
    recognizer = metrics.WhisperRecognizer(folder)
    clip = tone(200.0, 0.5)
    assert isinstance(recognizer.transcribe(clip, RATE, "JP"), str)
    scorer = metrics.Scorer(RATE, whisper_dir=folder)
    utterances = [metrics.Utterance(clip, None, clip, language=lang, text="今日は") for lang in ("ZH", "JP")]
    scores = scorer.score(utterances)
    # The tiny model says random English words: every reference character is wrong or missing.
    assert scores["val/cer_zh"] >= 1.0 and scores["val/cer_jp"] >= 1.0
    with pytest.raises(ValueError, match=r"Whisper model folder not found: .*nowhere"):
        metrics.Scorer(RATE, whisper_dir=tmp_path / "nowhere")
