"""A few full training steps on the tiny dev config: finite gradients and every trainable parameter moves.

The steps follow the reference training step: discriminator side first (duration discriminator, MPD,
WavLM discriminator, each with its own AdamW), then the generator with all loss terms. Nets are the
as-built ones (seeded), in train mode, with real randomness (dropout, MAS noise, random slices).
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

import commons
from losses import WavLMLoss, discriminator_loss, feature_loss, generator_loss, kl_loss
from mel_processing import mel_spectrogram_torch, spec_to_mel_torch

# Two steps are the minimum: the coupling layers' and ConvFlows' output projections start at zero, so the
# layers feeding them only receive gradients once the first step has moved those projections.
N_STEPS = 2
# The training crop is shortened from the dev config's 8192 samples (32 frames) to keep the 46.7 M-parameter
# MultiPeriodDiscriminator cheap on CPU; the nets themselves are exactly the dev config's.
SEGMENT_SIZE = 2048
ADAMW = dict(lr=2e-4, betas=(0.8, 0.99), eps=1e-9)

# Parameters that cannot receive a gradient from the training losses, with the reason. Keep this empty
# unless a parameter genuinely has no path to any loss; a parameter missing here that does not move is a bug.
NO_PATH_TO_LOSS: dict[str, str] = {}


def _build_nets(config: dict) -> dict[str, torch.nn.Module]:
    from models import DurationDiscriminator, MultiPeriodDiscriminator, SynthesizerTrn, WavLMDiscriminator
    from text.symbols import symbols

    data, model, train = config["data"], config["model"], config["train"]
    torch.manual_seed(1234)
    net_g = SynthesizerTrn(
        len(symbols),
        data["filter_length"] // 2 + 1,
        train["segment_size"] // data["hop_length"],
        n_speakers=data["n_speakers"],
        mas_noise_scale_initial=0.01,
        noise_scale_delta=2e-6,
        **model,
    )
    net_d = MultiPeriodDiscriminator(model["use_spectral_norm"])
    hidden, gin = model["hidden_channels"], model["gin_channels"]
    net_dur_disc = DurationDiscriminator(hidden, hidden, 3, 0.1, gin_channels=gin)
    slm = model["slm"]
    net_wd = WavLMDiscriminator(slm["hidden"], slm["nlayers"], slm["initial_channel"])
    return dict(net_g=net_g, net_d=net_d, net_dur_disc=net_dur_disc, net_wd=net_wd)


def _assert_finite_grads(net_name: str, net: torch.nn.Module) -> None:
    bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{net_name}: non-finite gradients in {bad}"


def _record_nonzero_grads(net_name: str, net: torch.nn.Module, seen: set[str]) -> None:
    for name, p in net.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            seen.add(f"{net_name}.{name}")


class _Trainer:
    """The discriminator and generator halves of one reference training step, with backward and AdamW."""

    def __init__(self, config: dict, nets: dict[str, torch.nn.Module], wl: WavLMLoss) -> None:
        self.config, self.nets, self.wl = config, nets, wl
        self.optims = {name: torch.optim.AdamW(net.parameters(), **ADAMW) for name, net in nets.items()}
        self.grads_seen: set[str] = set()

    def _finish(self, names: tuple[str, ...], loss: torch.Tensor) -> None:
        for name in names:
            self.optims[name].zero_grad()
        assert torch.isfinite(loss), f"non-finite loss for {names}"
        loss.backward()
        for name in names:
            _assert_finite_grads(name, self.nets[name])
            _record_nonzero_grads(name, self.nets[name], self.grads_seen)
            self.optims[name].step()

    def step(self, inputs: dict) -> dict[str, float]:
        data, train = self.config["data"], self.config["train"]
        n = self.nets
        net_g, net_d, net_dur_disc = n["net_g"], n["net_d"], n["net_dur_disc"]
        hop, segment_size = data["hop_length"], train["segment_size"]
        out = net_g(
            inputs["x"],
            inputs["x_lengths"],
            inputs["spec"],
            inputs["spec_lengths"],
            inputs["sid"],
            inputs["tone"],
            inputs["language"],
            inputs["bert"],
            inputs["ja_bert"],
            inputs["en_bert"],
        )
        y_hat, l_length, _attn, ids_slice, x_mask, z_mask, latents, durations, g = out
        _z, z_p, m_p, logs_p, _m_q, logs_q = latents
        hidden_x, logw, logw_, logw_sdp = durations
        mel = spec_to_mel_torch(
            inputs["spec"],
            data["filter_length"],
            data["n_mel_channels"],
            data["sampling_rate"],
            data["mel_fmin"],
            data["mel_fmax"],
        )
        y_mel = commons.slice_segments(mel, ids_slice, segment_size // hop)
        y_hat_mel = mel_spectrogram_torch(
            y_hat.squeeze(1),
            data["filter_length"],
            data["n_mel_channels"],
            data["sampling_rate"],
            hop,
            data["win_length"],
            data["mel_fmin"],
            data["mel_fmax"],
        )
        y = commons.slice_segments(inputs["y"], ids_slice * hop, segment_size)

        # Discriminators.
        dur_args = (hidden_x.detach(), x_mask.detach(), logw_.detach())
        dur_r, dur_g = net_dur_disc(*dur_args, logw.detach(), g.detach())
        dur_r_sdp, dur_g_sdp = net_dur_disc(*dur_args, logw_sdp.detach(), g.detach())
        loss_dur_disc, _, _ = discriminator_loss(dur_r + dur_r_sdp, dur_g + dur_g_sdp)
        self._finish(("net_dur_disc",), loss_dur_disc)

        y_d_hat_r, y_d_hat_g, _, _ = net_d(y, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
        self._finish(("net_d",), loss_disc)

        loss_slm = self.wl.discriminator(y.detach().squeeze(1), y_hat.detach().squeeze(1)).mean()
        self._finish(("net_wd",), loss_slm)

        # Generator, all terms.
        _, y_d_hat_g, fmap_r, fmap_g = net_d(y, y_hat)
        _, dur_g = net_dur_disc(hidden_x, x_mask, logw_, logw, g)
        _, dur_g_sdp = net_dur_disc(hidden_x, x_mask, logw_, logw_sdp, g)
        loss_gen, _ = generator_loss(y_d_hat_g)
        loss_dur_gen, _ = generator_loss(dur_g + dur_g_sdp)
        terms = {
            "gen": loss_gen,
            "fm": feature_loss(fmap_r, fmap_g),
            "mel": F.l1_loss(y_mel, y_hat_mel) * train["c_mel"],
            "dur": torch.sum(l_length.float()),
            "kl": kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train["c_kl"],
            "lm": self.wl(y.detach().squeeze(1), y_hat.squeeze(1)).mean(),
            "lm_gen": self.wl.generator(y_hat.squeeze(1)),
            "dur_gen": loss_dur_gen,
        }
        loss_gen_all = sum(terms.values())
        self._finish(("net_g",), loss_gen_all)
        metrics = {k: v.item() for k, v in terms.items()}
        metrics.update(disc=loss_disc.item(), dur_disc=loss_dur_disc.item(), slm=loss_slm.item())
        return metrics


def test_full_backward_moves_every_trainable_parameter(dev_config: dict, golden: dict) -> None:
    dev_config = copy.deepcopy(dev_config)
    dev_config["train"]["segment_size"] = SEGMENT_SIZE
    nets = _build_nets(dev_config)
    slm = dev_config["model"]["slm"]
    wl = WavLMLoss(slm["model"], nets["net_wd"], dev_config["data"]["sampling_rate"], slm["sr"])
    for net in nets.values():
        net.train()
    wl.train()
    assert not wl.wavlm.training

    initial = {
        f"{net_name}.{name}": p.detach().clone()
        for net_name, net in nets.items()
        for name, p in net.named_parameters()
        if p.requires_grad
    }
    trainer = _Trainer(dev_config, nets, wl)
    torch.manual_seed(0)
    history = [trainer.step(golden["inputs"]) for _ in range(N_STEPS)]
    for metrics in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics

    current = {
        f"{net_name}.{name}": p.detach()
        for net_name, net in nets.items()
        for name, p in net.named_parameters()
        if p.requires_grad
    }
    assert set(NO_PATH_TO_LOSS) <= set(current), "stale entries in NO_PATH_TO_LOSS"
    no_grad = sorted(set(current) - trainer.grads_seen - set(NO_PATH_TO_LOSS))
    assert not no_grad, f"parameters that never received a non-zero gradient: {no_grad}"
    unmoved = sorted(
        name for name in current if name not in NO_PATH_TO_LOSS and torch.equal(current[name], initial[name])
    )
    assert not unmoved, f"parameters that did not move in {N_STEPS} AdamW steps: {unmoved}"
    # The WavLM feature extractor is frozen: it has no trainable parameters and none of it moved.
    assert not any(p.requires_grad for p in wl.wavlm.parameters())
    assert all(p.grad is None for p in wl.wavlm.parameters())
