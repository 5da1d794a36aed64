"""GAN, feature-matching, KL and WavLM losses of the Bert-VITS2 training step.

Every loss is evaluated in float32 (inputs are upcast and autocast is switched off locally), as the
reference training script does by wrapping the loss calls in ``autocast(enabled=False)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["feature_loss", "discriminator_loss", "generator_loss", "kl_loss", "load_wavlm", "WavLMLoss"]

# A folder written by `save_pretrained` holds config.json plus one of these weight files.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def feature_loss(fmap_r: Sequence[Sequence[Tensor]], fmap_g: Sequence[Sequence[Tensor]]) -> Tensor:
    """2 · Σ over discriminators and layers of mean |real − generated|; the real maps are constants."""
    loss = 0.0
    for maps_r, maps_g in zip(fmap_r, fmap_g):
        for r, g in zip(maps_r, maps_g):
            loss = loss + torch.mean(torch.abs(r.detach().float() - g.float()))
    return loss * 2


def discriminator_loss(
    disc_real_outputs: Sequence[Tensor], disc_generated_outputs: Sequence[Tensor]
) -> tuple[Tensor, list[float], list[float]]:
    """LSGAN discriminator loss Σ mean((1 − D(real))²) + mean(D(fake)²).

    Iterates over the first dim of its arguments: a list of per-discriminator outputs, or (as the
    duration discriminator is used in training) one tensor whose rows are the batch items.
    Returns the total and the per-entry real / fake terms as python floats (for logging).
    """
    loss = 0.0
    r_losses: list[float] = []
    g_losses: list[float] = []
    for d_real, d_fake in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = torch.mean((1 - d_real.float()) ** 2)
        g_loss = torch.mean(d_fake.float() ** 2)
        loss = loss + (r_loss + g_loss)
        r_losses.append(r_loss.item())
        g_losses.append(g_loss.item())
    return loss, r_losses, g_losses


def generator_loss(disc_outputs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """LSGAN generator loss Σ mean((1 − D(fake))²); also returns the per-entry terms (tensors)."""
    loss = 0.0
    gen_losses: list[Tensor] = []
    for d_fake in disc_outputs:
        term = torch.mean((1 - d_fake.float()) ** 2)
        gen_losses.append(term)
        loss = loss + term
    return loss, gen_losses


def kl_loss(z_p: Tensor, logs_q: Tensor, m_p: Tensor, logs_p: Tensor, z_mask: Tensor) -> Tensor:
    """Masked mean over frames of KL(q ‖ p) estimated at the flow output z_p.

    z_p, logs_q: [b, h, t_t]; m_p, logs_p: [b, h, t_t] (prior expanded to frames); z_mask: [b, 1, t_t].
    The per-element term is logs_p − logs_q − ½ + ½ (z_p − m_p)² e^(−2 logs_p); the entropy of q is
    replaced by its value at the sample, as in VITS.
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def _missing_wavlm_message(folder: Path, problem: str) -> str:
    return (
        f"WavLM model folder {str(folder)!r} (resolved: {folder.resolve()}) {problem}. "
        "Put a WavLM checkpoint saved with transformers' save_pretrained there (config.json plus "
        "model.safetensors or pytorch_model.bin), e.g. on a machine with network access load "
        "microsoft/wavlm-base-plus with AutoModel and save_pretrained it into <that folder>, "
        "or point slm.model in the config at a folder that has it. Nothing is downloaded at run time."
    )


def load_wavlm(model_dir: str | Path) -> nn.Module:
    """A frozen WavLM (eval mode, requires_grad False) read from a local `save_pretrained` folder."""
    from transformers import AutoModel  # heavy import, only needed when the WavLM loss is built

    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(_missing_wavlm_message(folder, "does not exist"))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(_missing_wavlm_message(folder, "has no config.json"))
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(
            _missing_wavlm_message(folder, f"has no weight file (looked for {', '.join(_WEIGHT_FILES)})")
        )
    try:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    except OSError as err:
        raise FileNotFoundError(_missing_wavlm_message(folder, f"could not be loaded ({err})")) from err
    model.eval()
    model.requires_grad_(False)
    logger.info("loaded WavLM from %s (%s)", folder, type(model).__name__)
    return model


def _as_waves(x: Tensor) -> Tensor:
    """[b, t] float32 waves from [b, t], [b, 1, t] or [t] (no blind squeeze, so batch size 1 works)."""
    if x.dim() == 3 and x.size(1) == 1:
        x = x.squeeze(1)
    elif x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"expected waves of shape [b, t], [b, 1, t] or [t], got {tuple(x.shape)}")
    return x.float()


def _stack_hidden_states(hidden_states: Sequence[Tensor]) -> Tensor:
    """Layer outputs L × [b, t, c] -> discriminator input [b, L·c, t] (layer-major channels)."""
    stacked = torch.stack(tuple(hidden_states), dim=1)  # [b, L, t, c]
    return stacked.transpose(-1, -2).flatten(start_dim=1, end_dim=2)  # [b, L·c, t]


class WavLMLoss(nn.Module):
    """Speech-language-model losses: WavLM feature matching and the WavLM-discriminator GAN terms.

    `wav` is the real segment and `y_rec` the generated one, both [b, t] (or [b, 1, t]) at `model_sr`;
    they are resampled to `slm_sr` for WavLM. The WavLM stays frozen and in eval mode; gradients reach
    the generator through `y_rec` and the discriminator `wd` through its own parameters.
    """

    def __init__(self, model_dir: str | Path, wd: nn.Module, model_sr: int, slm_sr: int = 16000) -> None:
        super().__init__()
        self.wavlm = load_wavlm(model_dir)
        self.wd = wd
        self.resample = torchaudio.transforms.Resample(model_sr, slm_sr)

    def train(self, mode: bool = True) -> WavLMLoss:
        super().train(mode)
        # Dropout, layer drop and SpecAugment masking would make the frozen feature extractor random.
        self.wavlm.eval()
        return self

    def _hidden_states(self, wav: Tensor) -> tuple[Tensor, ...]:
        wav_16 = self.resample(_as_waves(wav))  # [b, t_16k]
        return self.wavlm(input_values=wav_16, output_hidden_states=True).hidden_states

    def _embeddings(self, wav: Tensor) -> Tensor:
        return _stack_hidden_states(self._hidden_states(wav))  # [b, L·c, t_slm]

    def forward(self, wav: Tensor, y_rec: Tensor) -> Tensor:
        """Σ over WavLM layers of mean |h(real) − h(generated)|."""
        with torch.autocast(device_type=y_rec.device.type, enabled=False):
            with torch.no_grad():
                real_states = self._hidden_states(wav)
            fake_states = self._hidden_states(y_rec)
            loss = 0.0
            for real, fake in zip(real_states, fake_states):
                loss = loss + torch.mean(torch.abs(real - fake))
            return loss

    def generator(self, y_rec: Tensor) -> Tensor:
        """LSGAN generator term mean((1 − WD(generated))²)."""
        with torch.autocast(device_type=y_rec.device.type, enabled=False):
            d_fake = self.wd(self._embeddings(y_rec))
            return torch.mean((1 - d_fake.float()) ** 2)

    def discriminator(self, wav: Tensor, y_rec: Tensor) -> Tensor:
        """LSGAN discriminator term mean((1 − WD(real))²) + mean(WD(generated)²); only WD gets gradients."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            with torch.no_grad():
                real = self._embeddings(wav)
                fake = self._embeddings(y_rec)
            d_real = self.wd(real).float()
            d_fake = self.wd(fake).float()
            return torch.mean((1 - d_real) ** 2) + torch.mean(d_fake**2)

    def discriminator_forward(self, wav: Tensor) -> Tensor:
        """WD scores [b, t_slm] of a wave (WavLM features without gradient)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            with torch.no_grad():
                real = self._embeddings(wav)
            return self.wd(real)
