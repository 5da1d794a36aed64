"""Every loss formula of the Bert-VITS2 training step: GAN, feature-matching, mel, duration, KL and WavLM terms,
and the two sums the discriminator and generator steps minimise (named as the reference logs them).

Every loss is evaluated in float32 (inputs are upcast and autocast is switched off locally), as the
reference training script does by wrapping the loss calls in ``autocast(enabled=False)``. The training step
runs the nets; the numbers it minimises are computed here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "feature_loss",
    "feature_terms",
    "summed_feature_terms",
    "discriminator_loss",
    "discriminator_loss_terms",
    "generator_loss",
    "kl_loss",
    "mel_loss",
    "duration_loss",
    "stack_wavlm_states",
    "wavlm_feature_loss",
    "wavlm_discriminator_loss",
    "wavlm_generator_loss",
    "discriminator_step_losses",
    "generator_step_losses",
    "load_wavlm",
    "WavLMLoss",
]

# A folder written by `save_pretrained` holds config.json plus one of these weight files.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def feature_loss(fmap_r: Sequence[Sequence[Tensor]], fmap_g: Sequence[Sequence[Tensor]]) -> Tensor:
    """2 · Σ over discriminators and layers of mean |real − generated|; the real maps are constants."""
    return summed_feature_terms([feature_terms(maps_r, maps_g) for maps_r, maps_g in zip(fmap_r, fmap_g)])


def feature_terms(maps_r: Sequence[Tensor], maps_g: Sequence[Tensor]) -> list[Tensor]:
    """One discriminator's feature-matching terms: per layer, mean |real − generated| (real maps are constants).
    Taken right after that discriminator's passes, they let its maps go before the next one runs."""
    with torch.autocast(device_type=maps_g[0].device.type, enabled=False):
        return [torch.mean(torch.abs(r.detach().float() - g.float())) for r, g in zip(maps_r, maps_g)]


def summed_feature_terms(terms: Sequence[Sequence[Tensor]]) -> Tensor:
    """The feature-matching loss from every discriminator's ``feature_terms``, added in the reference's order."""
    loss = 0.0
    for per_discriminator in terms:
        for term in per_discriminator:
            loss = loss + term
    return loss * 2


def discriminator_loss(
    disc_real_outputs: Sequence[Tensor], disc_generated_outputs: Sequence[Tensor]
) -> tuple[Tensor, list[float], list[float]]:
    """LSGAN discriminator loss Σ mean((1 − D(real))²) + mean(D(fake)²).

    Iterates over the first dim of its arguments: a list of per-discriminator outputs, or (as the
    duration discriminator is used in training) one tensor whose rows are the batch items.
    Returns the total and the per-entry real / fake terms as python floats, as the reference does (training
    uses ``discriminator_loss_terms``, which keeps them on the device).
    """
    loss, r_losses, g_losses = discriminator_loss_terms(disc_real_outputs, disc_generated_outputs)
    return loss, [t.item() for t in r_losses], [t.item() for t in g_losses]


def discriminator_loss_terms(
    disc_real_outputs: Sequence[Tensor], disc_generated_outputs: Sequence[Tensor]
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``discriminator_loss`` with the per-entry terms as detached 0-d tensors: no host sync per entry."""
    loss = 0.0
    r_losses: list[Tensor] = []
    g_losses: list[Tensor] = []
    for d_real, d_fake in zip(disc_real_outputs, disc_generated_outputs):
        r_loss = torch.mean((1 - d_real.float()) ** 2)
        g_loss = torch.mean(d_fake.float() ** 2)
        loss = loss + (r_loss + g_loss)
        r_losses.append(r_loss.detach())
        g_losses.append(g_loss.detach())
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


def mel_loss(y_mel: Tensor, y_hat_mel: Tensor) -> Tensor:
    """Mean |mel(real) − mel(generated)| over [b, n_mels, frames] (the reference scales it by train.c_mel)."""
    return F.l1_loss(y_mel.float(), y_hat_mel.float())


def duration_loss(l_length: Tensor) -> Tensor:
    """Sum over the batch of the duration predictors' per-item losses [b]."""
    return torch.sum(l_length.float())


def stack_wavlm_states(hidden_states: Sequence[Tensor]) -> Tensor:
    """WavLM layer outputs L × [b, t, c] -> the WavLM discriminator's input [b, L·c, t] (layer-major channels)."""
    stacked = torch.stack(tuple(hidden_states), dim=1)  # [b, L, t, c]
    return stacked.transpose(-1, -2).flatten(start_dim=1, end_dim=2)  # [b, L·c, t]


def wavlm_feature_loss(real_states: Sequence[Tensor], fake_states: Sequence[Tensor]) -> Tensor:
    """Σ over WavLM layers of mean |h(real) − h(generated)| (the reference's loss_lm)."""
    loss: Tensor | float = 0.0
    for real, fake in zip(real_states, fake_states):
        loss = loss + torch.mean(torch.abs(real.float() - fake.float()))
    return loss  # type: ignore[return-value]


def wavlm_discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """LSGAN term of the WavLM discriminator: mean((1 − WD(real))²) + mean(WD(generated)²)."""
    return torch.mean((1 - d_real.float()) ** 2) + torch.mean(d_fake.float() ** 2)


def wavlm_generator_loss(d_fake: Tensor) -> Tensor:
    """LSGAN generator term of the WavLM discriminator: mean((1 − WD(generated))²)."""
    return torch.mean((1 - d_fake.float()) ** 2)


def _indexed(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    return {f"{prefix}/{i}": value for i, value in enumerate(values)}


def discriminator_step_losses(
    mpd_real: Sequence[Tensor],
    mpd_fake: Sequence[Tensor],
    loss_wd: Tensor,
    dur_real: Tensor | None = None,
    dur_fake: Tensor | None = None,
) -> dict[str, Any]:
    """What the three discriminator updates minimise, under the reference's TensorBoard names.

    ``mpd_*``: the multi-period discriminator's outputs; ``loss_wd``: the WavLM discriminator's term;
    ``dur_*``: the duration discriminator's [b, t_x, 1] scores (None without one). ``loss/d/total``,
    ``loss/dur_disc/total`` and ``loss/wd/total`` are tensors; the per-entry terms detached 0-d tensors.
    """
    loss_disc, losses_r, losses_g = discriminator_loss_terms(mpd_real, mpd_fake)
    losses: dict[str, Any] = {
        "loss/d/total": loss_disc,
        **_indexed("loss/d_r", losses_r),
        **_indexed("loss/d_g", losses_g),
    }
    if dur_real is not None and dur_fake is not None:
        loss_dur_disc, dur_r, dur_g = discriminator_loss_terms(dur_real, dur_fake)
        losses["loss/dur_disc/total"] = loss_dur_disc
        losses.update({**_indexed("loss/dur_disc_r", dur_r), **_indexed("loss/dur_disc_g", dur_g)})
    losses["loss/wd/total"] = loss_wd
    return losses


def generator_step_losses(
    *,
    mpd_fake: Sequence[Tensor],
    loss_fm: Tensor,
    y_mel: Tensor,
    y_hat_mel: Tensor,
    l_length: Tensor,
    z_p: Tensor,
    logs_q: Tensor,
    m_p: Tensor,
    logs_p: Tensor,
    z_mask: Tensor,
    loss_lm: Tensor,
    loss_lm_gen: Tensor,
    c_mel: float,
    c_kl: float,
    dur_fake: Tensor | None = None,
) -> dict[str, Tensor]:
    """The generator's terms and their sum ``loss/g/total`` (what its update minimises), reference names.

    Summed in the reference's order: GAN + feature matching + mel·c_mel + duration + KL·c_kl + WavLM feature
    + WavLM GAN (+ duration-discriminator GAN when there is one). ``loss_fm`` is ``feature_loss`` of the judges'
    maps (``summed_feature_terms`` where each discriminator's maps were compared as they were made).
    """
    loss_gen, losses_gen = generator_loss(mpd_fake)
    loss_mel = mel_loss(y_mel, y_hat_mel) * c_mel
    loss_dur = duration_loss(l_length)
    loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * c_kl
    total = loss_gen + loss_fm + loss_mel + loss_dur + loss_kl + loss_lm + loss_lm_gen
    losses: dict[str, Tensor] = {
        "loss/g/fm": loss_fm,
        "loss/g/mel": loss_mel,
        "loss/g/dur": loss_dur,
        "loss/g/kl": loss_kl,
        "loss/g/lm": loss_lm,
        "loss/g/lm_gen": loss_lm_gen,
        **_indexed("loss/g", losses_gen),
    }
    if dur_fake is not None:
        loss_dur_gen, losses_dur_gen = generator_loss(dur_fake)
        total = total + loss_dur_gen
        losses["loss/g/dur_gen"] = loss_dur_gen
        losses.update({f"loss/g/dur_gen_{i}": value for i, value in enumerate(losses_dur_gen)})
    losses["loss/g/total"] = total
    return losses


# Terms that sum over the batch items (the duration discriminator's GAN helpers iterate over batch rows, see
# ``discriminator_loss``): a batch made of k micro-batches has the sum of theirs. Every other term is a mean over
# the batch, and the batch's is the mean of its equal micro-batches'.
BATCH_SUMMED_TERMS = ("loss/g/dur_gen", "loss/dur_disc/total")


def micro_batch_share(terms: Mapping[str, Any], total_tag: str, micro_batches: int) -> Tensor:
    """What one of ``micro_batches`` micro-batches adds to the loss ``total_tag`` of the batch made of them all:
    its batch-mean terms divided by their number, its batch-summed terms whole (gradient accumulation)."""
    section = total_tag.rsplit("/", 1)[0] + "/"
    summed = [tag for tag in BATCH_SUMMED_TERMS if tag in terms and tag.startswith(section)]
    whole = terms[total_tag]
    if total_tag in summed:
        return whole
    kept = sum((terms[tag] for tag in summed), torch.zeros_like(whole))
    return kept + (whole - kept) / micro_batches


def combine_micro_batch_terms(terms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The loss terms of a batch from those of its micro-batches: totals as ``micro_batch_share`` adds them,
    batch-summed terms summed, the rest (batch means; per-entry terms by position) averaged."""
    combined: dict[str, Any] = {}
    for tag in dict.fromkeys(tag for micro in terms for tag in micro):
        values = [micro[tag] for micro in terms if tag in micro]
        if tag.endswith("/total"):
            combined[tag] = sum(micro_batch_share(micro, tag, len(terms)) for micro in terms if tag in micro)
        elif tag in BATCH_SUMMED_TERMS:
            combined[tag] = sum(values)
        else:
            combined[tag] = sum(values) / len(values)
    return combined


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

    def hidden_states(self, wav: Tensor) -> tuple[Tensor, ...]:
        """WavLM layer outputs L × [b, t_slm, c] (float32) of waves [b, t] or [b, 1, t] at ``model_sr``.

        The training step computes these once per wave and per iteration and feeds them to the formulas above
        (the reference recomputes them in every term).
        """
        with torch.autocast(device_type=wav.device.type, enabled=False):
            wav_16 = self.resample(_as_waves(wav))  # [b, t_16k]
            return tuple(self.wavlm(input_values=wav_16, output_hidden_states=True).hidden_states)

    def _embeddings(self, wav: Tensor) -> Tensor:
        return stack_wavlm_states(self.hidden_states(wav))  # [b, L·c, t_slm]

    # The reference's WavLMLoss interface: each call runs WavLM again on its inputs.

    def forward(self, wav: Tensor, y_rec: Tensor) -> Tensor:
        """Σ over WavLM layers of mean |h(real) − h(generated)|."""
        with torch.no_grad():
            real_states = self.hidden_states(wav)
        return wavlm_feature_loss(real_states, self.hidden_states(y_rec))

    def generator(self, y_rec: Tensor) -> Tensor:
        """LSGAN generator term mean((1 − WD(generated))²)."""
        with torch.autocast(device_type=y_rec.device.type, enabled=False):
            return wavlm_generator_loss(self.wd(self._embeddings(y_rec)))

    def discriminator(self, wav: Tensor, y_rec: Tensor) -> Tensor:
        """LSGAN discriminator term mean((1 − WD(real))²) + mean(WD(generated)²); only WD gets gradients."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            with torch.no_grad():
                real = self._embeddings(wav)
                fake = self._embeddings(y_rec)
            return wavlm_discriminator_loss(self.wd(real), self.wd(fake))

    def discriminator_forward(self, wav: Tensor) -> Tensor:
        """WD scores [b, t_slm] of a wave (WavLM features without gradient)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            with torch.no_grad():
                real = self._embeddings(wav)
            return self.wd(real)
