"""mel_processing against the reference kit's `mel` golden values, plus the filter-bank cache fix."""

from __future__ import annotations

import librosa
import pytest
import torch
from kit import assert_every_entry

import mel_processing
from mel_processing import mel_filter_bank, mel_spectrogram_torch, spec_to_mel_torch, spectrogram_torch

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def mel_golden(golden: dict) -> dict:
    return golden["mel"]


@pytest.fixture(scope="module")
def mel_input() -> dict:
    """A two-item batch of 1.5 s noise at the dev settings, for the tests that compare nothing with the
    reference (no kit needed)."""
    y = (torch.rand(2, 33075, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6
    settings = dict(n_fft=1024, sampling_rate=22050, hop_size=256, win_size=1024, num_mels=80, fmin=0.0, fmax=None)
    spec = spectrogram_torch(y, 1024, 22050, 256, 1024, center=False)
    return dict(settings, y=y, spec=spec)


def _check_close(ours: torch.Tensor, reference: torch.Tensor, **tolerance: float) -> None:
    assert ours.shape == reference.shape, f"shape {tuple(ours.shape)} != reference {tuple(reference.shape)}"
    assert ours.dtype == torch.float32, f"dtype {ours.dtype}, expected torch.float32"
    torch.testing.assert_close(ours, reference, **tolerance)


# What the kit's `mel` section holds besides its inputs and settings: every entry is compared.
MEL_INPUTS = {"y", "n_fft", "sampling_rate", "hop_size", "win_size", "num_mels", "fmin", "fmax", "fmin2", "fmax2"}
BANK_TOL = dict(atol=1e-7, rtol=1e-6)


def test_mel_pipeline_matches_golden(mel_golden: dict) -> None:
    """The kit's wave through mel_processing, with its two filter settings: the spectrogram, the mel from that
    spectrogram (both settings), the mel from the wave and both filter banks. A failure lists every differing
    entry with its mismatch figures and tolerance."""
    g = mel_golden
    n_fft, sr, hop, win, n_mels = g["n_fft"], g["sampling_rate"], g["hop_size"], g["win_size"], g["num_mels"]
    spec = spectrogram_torch(g["y"], n_fft, sr, hop, win, center=False)
    mel_2 = spec_to_mel_torch(g["spec"], n_fft, n_mels, sr, g["fmin2"], g["fmax2"])

    def check_spec() -> None:
        assert spec.shape == (2, n_fft // 2 + 1, g["y"].shape[-1] // hop)
        _check_close(spec, g["spec"], **TOL)

    def check_second_setting() -> None:
        _check_close(mel_2, g["mel_from_spec_fmin50_fmax2"], **TOL)
        assert not torch.allclose(mel_2, g["mel_from_spec"], **TOL), "the second setting gave the first's mel"

    checks = {
        "spec": check_spec,
        "mel_from_spec": lambda: _check_close(
            spec_to_mel_torch(g["spec"], n_fft, n_mels, sr, g["fmin"], g["fmax"]), g["mel_from_spec"], **TOL
        ),
        "mel_from_spec_fmin50_fmax2": check_second_setting,
        "mel": lambda: _check_close(
            mel_spectrogram_torch(g["y"], n_fft, n_mels, sr, hop, win, g["fmin"], g["fmax"], center=False),
            g["mel"],
            **TOL,
        ),
        "mel_basis": lambda: _check_close(
            mel_filter_bank(n_fft, n_mels, sr, g["fmin"], g["fmax"]), g["mel_basis"], **BANK_TOL
        ),
        "mel_basis_fmin50_fmax2": lambda: _check_close(
            mel_filter_bank(n_fft, n_mels, sr, g["fmin2"], g["fmax2"]), g["mel_basis_fmin50_fmax2"], **BANK_TOL
        ),
    }
    assert MEL_INPUTS <= set(g)
    assert_every_entry(checks, set(g) - MEL_INPUTS, "mel")


def test_spec_to_mel_uses_the_filter_bank(mel_input: dict) -> None:
    """Feeding unit spectra through spec_to_mel reads the bank back (above the log clip); the bank itself is
    compared with the reference's in test_mel_pipeline_matches_golden."""
    g = mel_input
    n_bins = g["n_fft"] // 2 + 1
    eye = torch.eye(n_bins).unsqueeze(0)  # [1, bins, bins]: frame k is a unit impulse at bin k
    mel = spec_to_mel_torch(eye, g["n_fft"], g["num_mels"], g["sampling_rate"], g["fmin"], g["fmax"])
    basis = mel_filter_bank(g["n_fft"], g["num_mels"], g["sampling_rate"], g["fmin"], g["fmax"])
    assert basis.shape == (80, n_bins) and (basis > 1e-5).any()
    torch.testing.assert_close(mel[0].exp(), basis.clamp(min=1e-5), atol=1e-7, rtol=1e-5)


def _librosa_log_mel(
    spec: torch.Tensor, n_fft: int, n_mels: int, sr: int, fmin: float, fmax: float | None
) -> torch.Tensor:
    basis = torch.from_numpy(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax))
    return torch.log(torch.clamp(basis @ spec, min=1e-5))


@pytest.mark.parametrize("first", ["dev", "other"])
def test_two_parameter_sets_in_one_process_get_their_own_banks(mel_input: dict, first: str) -> None:
    """The reference keyed its bank cache by fmax only and reused the first bank for other n_fft/sr/n_mels.
    Both settings are checked against librosa's filter bank (the reference's bank is checked elsewhere)."""
    mel_processing.mel_filter_bank.cache_clear()
    g = mel_input
    wave = g["y"][:, :16000]
    other = dict(n_fft=512, num_mels=64, sampling_rate=16000, hop_size=128, win_size=512, fmin=0.0, fmax=None)
    settings = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax")

    def dev_mel() -> torch.Tensor:
        return mel_spectrogram_torch(g["y"], *(g[k] for k in settings))

    def other_mel() -> torch.Tensor:
        return mel_spectrogram_torch(wave, *(other[k] for k in settings))

    if first == "dev":
        dev, oth = dev_mel(), other_mel()
    else:
        oth, dev = other_mel(), dev_mel()
    assert dev.shape == (2, 80, g["y"].shape[-1] // 256)
    dev_spec = spectrogram_torch(g["y"], 1024, 22050, 256, 1024)
    torch.testing.assert_close(dev, _librosa_log_mel(dev_spec, 1024, 80, 22050, 0.0, None), **TOL)
    assert oth.shape == (2, 64, 16000 // 128)
    spec = spectrogram_torch(wave, 512, 16000, 128, 512)
    torch.testing.assert_close(oth, _librosa_log_mel(spec, 512, 64, 16000, 0.0, None), **TOL)

    # Same n_fft / sr / n_mels / fmax but a different fmin must not share a bank either.
    a = mel_filter_bank(1024, 80, 22050, 0.0, 8000.0)
    b = mel_filter_bank(1024, 80, 22050, 300.0, 8000.0)
    assert not torch.equal(a, b)
    assert a.shape == b.shape == (80, 513)


def test_frames_equal_samples_over_hop(mel_input: dict) -> None:
    g = mel_input
    for n in (4096, 4096 + 100, 8192):
        spec = spectrogram_torch(g["y"][:, :n], g["n_fft"], g["sampling_rate"], g["hop_size"], g["win_size"])
        assert spec.shape[-1] == n // g["hop_size"]


def test_single_wave_without_batch_dim(mel_input: dict) -> None:
    g = mel_input
    spec = spectrogram_torch(g["y"][1], g["n_fft"], g["sampling_rate"], g["hop_size"], g["win_size"])
    torch.testing.assert_close(spec, g["spec"][1], **TOL)


def test_half_precision_input_is_computed_in_float32(mel_input: dict) -> None:
    g = mel_input
    wave = g["y"].bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mel = mel_spectrogram_torch(
            wave, g["n_fft"], g["num_mels"], g["sampling_rate"], g["hop_size"], g["win_size"], g["fmin"], g["fmax"]
        )
    assert mel.dtype == torch.float32
    expected = mel_spectrogram_torch(
        wave.float(), g["n_fft"], g["num_mels"], g["sampling_rate"], g["hop_size"], g["win_size"], g["fmin"], g["fmax"]
    )
    torch.testing.assert_close(mel, expected, **TOL)


def test_float64_input_stays_float64(mel_input: dict) -> None:
    g = mel_input
    spec = spectrogram_torch(g["y"].double(), g["n_fft"], g["sampling_rate"], g["hop_size"], g["win_size"])
    assert spec.dtype == torch.float64
    torch.testing.assert_close(spec.float(), g["spec"], **TOL)


def test_mismatched_spectrogram_raises(mel_input: dict) -> None:
    g = mel_input
    with pytest.raises(ValueError, match="frequency bins"):
        spec_to_mel_torch(g["spec"], 512, 64, 16000, 0.0, None)


def test_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\[b, t\]"):
        spectrogram_torch(torch.zeros(1, 1, 4096), 1024, 22050, 256, 1024)


def test_cache_filled_under_inference_mode_still_supports_backward(mel_input: dict) -> None:
    """A bank first built under inference_mode (e.g. by synthesis code) must still work for training."""
    g = mel_input
    mel_processing.mel_filter_bank.cache_clear()
    mel_processing._hann_window.cache_clear()
    args = (g["n_fft"], g["num_mels"], g["sampling_rate"], g["hop_size"], g["win_size"], g["fmin"], g["fmax"])
    with torch.inference_mode():
        mel_spectrogram_torch(g["y"], *args)
    wave = g["y"].clone().requires_grad_(True)
    mel = mel_spectrogram_torch(wave, *args)
    mel.mean().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0
