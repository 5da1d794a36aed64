"""Linear and mel spectrograms as the Bert-VITS2 training recipe computes them.

The wave is reflect-padded by (n_fft - hop) / 2 on both sides and fed to a non-centred STFT, so a wave of
``n`` samples gives ``n // hop`` frames (the posterior encoder and the slicing code rely on that count).
Magnitudes are ``sqrt(re² + im² + 1e-6)``; mels are ``log(clamp(mel, 1e-5))`` with a Slaney-style librosa
filter bank.

Windows and filter banks are cached per full parameter set, device and dtype. (The reference keyed its bank
cache by fmax alone, so a second n_fft / sampling rate / n_mels in the same process silently reused the first
bank.)
"""

from __future__ import annotations

import functools
import logging

import librosa
import torch
from torch import Tensor
from torch.nn import functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "dynamic_range_compression_torch",
    "dynamic_range_decompression_torch",
    "spectral_normalize_torch",
    "spectral_de_normalize_torch",
    "mel_filter_bank",
    "spectrogram_torch",
    "spec_to_mel_torch",
    "mel_spectrogram_torch",
]

# Added under the square root so that the gradient of the magnitude stays finite at silent bins.
_MAGNITUDE_EPS = 1e-6
_LOG_CLIP = 1e-5


def dynamic_range_compression_torch(x: Tensor, C: float = 1.0, clip_val: float = _LOG_CLIP) -> Tensor:
    """log(C · max(x, clip_val)); the clamp keeps log finite on silent bins."""
    return torch.log(torch.clamp(x, min=clip_val) * C)


def dynamic_range_decompression_torch(x: Tensor, C: float = 1.0) -> Tensor:
    """Inverse of :func:`dynamic_range_compression_torch` (above the clip value)."""
    return torch.exp(x) / C


def spectral_normalize_torch(magnitudes: Tensor) -> Tensor:
    return dynamic_range_compression_torch(magnitudes)


def spectral_de_normalize_torch(magnitudes: Tensor) -> Tensor:
    return dynamic_range_decompression_torch(magnitudes)


@functools.lru_cache(maxsize=16)
def _hann_window(win_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    # Cached tensors must not be inference tensors, or a later training call could not save them for backward.
    with torch.inference_mode(False):
        return torch.hann_window(win_size, device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def mel_filter_bank(
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    fmin: float,
    fmax: float | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The Slaney mel filter bank [num_mels, n_fft // 2 + 1]; fmax None means sampling_rate / 2.

    Cached: the returned tensor is shared between callers and must not be modified in place.
    """
    basis = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
    with torch.inference_mode(False):  # see _hann_window
        # A copy torch owns (not numpy's memory): see monotonic_align.maximum_path_cpu.
        return torch.tensor(basis, device=device, dtype=dtype)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (STFT and log are not trusted below fp32); float64 stays float64."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _warn_if_out_of_range(y: Tensor) -> None:
    # Checking min/max forces a device sync, so only do it when someone is listening.
    if not logger.isEnabledFor(logging.DEBUG):
        return
    low, high = float(y.min()), float(y.max())
    if low < -1.0 or high > 1.0:
        logger.debug("waveform outside [-1, 1]: min %.4f, max %.4f", low, high)


def spectrogram_torch(
    y: Tensor, n_fft: int, sampling_rate: int, hop_size: int, win_size: int, center: bool = False
) -> Tensor:
    """Linear magnitude spectrogram [b, n_fft // 2 + 1, frames] of waves y [b, t] (or [t])."""
    del sampling_rate  # part of the reference signature; the linear spectrogram does not depend on it
    if y.dim() not in (1, 2):
        raise ValueError(f"spectrogram_torch expects a wave of shape [b, t] or [t], got {tuple(y.shape)}")
    _warn_if_out_of_range(y)
    dtype = _compute_dtype(y)
    with torch.autocast(device_type=y.device.type, enabled=False):
        y = y.to(dtype)
        pad = (n_fft - hop_size) // 2
        # F.pad's reflect mode wants a channel dim: [b, t] -> [b, 1, t] -> [b, t + 2·pad]
        y = F.pad(y.unsqueeze(-2), (pad, pad), mode="reflect").squeeze(-2)
        spec = torch.stft(
            y,
            n_fft,
            hop_length=hop_size,
            win_length=win_size,
            window=_hann_window(win_size, y.device, dtype),
            center=center,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + _MAGNITUDE_EPS)  # [b, n_fft/2+1, frames]


def spec_to_mel_torch(
    spec: Tensor, n_fft: int, num_mels: int, sampling_rate: int, fmin: float, fmax: float | None
) -> Tensor:
    """Log-mel [b, num_mels, frames] from a linear magnitude spectrogram [b, n_fft // 2 + 1, frames]."""
    dtype = _compute_dtype(spec)
    with torch.autocast(device_type=spec.device.type, enabled=False):
        spec = spec.to(dtype)
        basis = mel_filter_bank(
            int(n_fft),
            int(num_mels),
            int(sampling_rate),
            float(fmin),
            None if fmax is None else float(fmax),
            spec.device,
            dtype,
        )
        if spec.shape[-2] != basis.shape[-1]:
            raise ValueError(
                f"spectrogram has {spec.shape[-2]} frequency bins but n_fft={n_fft} needs {basis.shape[-1]}"
            )
        mel = torch.matmul(basis, spec)  # [b, num_mels, frames]
        return spectral_normalize_torch(mel)


def mel_spectrogram_torch(
    y: Tensor,
    n_fft: int,
    num_mels: int,
    sampling_rate: int,
    hop_size: int,
    win_size: int,
    fmin: float,
    fmax: float | None,
    center: bool = False,
) -> Tensor:
    """Log-mel spectrogram [b, num_mels, frames] of waves y [b, t] (or [t])."""
    spec = spectrogram_torch(y, n_fft, sampling_rate, hop_size, win_size, center=center)
    return spec_to_mel_torch(spec, n_fft, num_mels, sampling_rate, fmin, fmax)
