"""Every loss term of one reference training step, against golden `train_step_losses`.

The generator forward runs in eval mode under no_grad with the kit's zero-random patch (README,
"Training forward"); the terms are then computed with the same calls and in the same order as the
reference training step, including its two quirks: the two duration-discriminator calls are combined by
element-wise addition, and the GAN helpers then iterate over the batch rows of that tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from kit import net_d_state_dict
from torch.nn import functional as F

import commons
from losses import WavLMLoss, discriminator_loss, feature_loss, generator_loss, kl_loss
from mel_processing import mel_spectrogram_torch, spec_to_mel_torch

TOL = dict(atol=1e-4, rtol=1e-4)


def _requested_shape(size: tuple) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        return tuple(size[0])
    return tuple(size)


@contextlib.contextmanager
def zero_random() -> Iterator[None]:
    """Replace torch.randn/randn_like/rand/rand_like by zeros of the requested shape, dtype and device."""

    def zeros(*size, dtype=None, device=None, generator=None, **kwargs):
        return torch.zeros(_requested_shape(size), dtype=dtype, device=device)

    def zeros_like(tensor, dtype=None, device=None, **kwargs):
        return torch.zeros_like(tensor, dtype=dtype, device=device)

    saved = {name: getattr(torch, name) for name in ("randn", "rand", "randn_like", "rand_like")}
    torch.randn, torch.rand = zeros, zeros
    torch.randn_like, torch.rand_like = zeros_like, zeros_like
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def build_generator_nets(config: dict, weights: dict) -> dict[str, torch.nn.Module]:
    """net_g and net_dur_disc as the training script builds them, with the given weights, in eval mode."""
    from models import DurationDiscriminator, SynthesizerTrn
    from text.symbols import symbols

    data, model, train = config["data"], config["model"], config["train"]
    net_g = SynthesizerTrn(
        len(symbols),
        data["filter_length"] // 2 + 1,
        train["segment_size"] // data["hop_length"],
        n_speakers=data["n_speakers"],
        mas_noise_scale_initial=0.01,
        noise_scale_delta=2e-6,
        **model,
    )
    net_g.load_state_dict(weights["weights_g"])
    hidden, gin = model["hidden_channels"], model["gin_channels"]
    net_dur_disc = DurationDiscriminator(hidden, hidden, 3, 0.1, gin_channels=gin)
    net_dur_disc.load_state_dict(weights["weights_dur"])
    return dict(net_g=net_g.eval(), net_dur_disc=net_dur_disc.eval())


def build_discriminators(config: dict, golden: dict) -> dict[str, torch.nn.Module]:
    """net_d (kit recipe weights) and net_wd from golden.pt, in eval mode; both golden files use these."""
    from models import MultiPeriodDiscriminator, WavLMDiscriminator

    model = config["model"]
    net_d = MultiPeriodDiscriminator(model["use_spectral_norm"])
    net_d.load_state_dict(net_d_state_dict(golden))
    slm = model["slm"]
    net_wd = WavLMDiscriminator(slm["hidden"], slm["nlayers"], slm["initial_channel"])
    net_wd.load_state_dict(golden["weights_wd"])
    return dict(net_d=net_d.eval(), net_wd=net_wd.eval())


def step_loss_terms(config: dict, nets: dict, wl: WavLMLoss, inputs: dict) -> dict:
    """All loss terms of one training step (no backward), named like golden `train_step_losses`."""
    data, train = config["data"], config["train"]
    net_g, net_d, net_dur_disc = nets["net_g"], nets["net_d"], nets["net_dur_disc"]
    hop, segment_size = data["hop_length"], train["segment_size"]
    with zero_random():
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
    y_hat, l_length, attn, ids_slice, x_mask, z_mask, latents, durations, g = out
    _z, z_p, m_p, logs_p, _m_q, logs_q = latents
    hidden_x, logw, logw_, logw_sdp = durations

    t = {"forward_o": y_hat, "ids_slice": ids_slice}
    t["mel"] = spec_to_mel_torch(
        inputs["spec"],
        data["filter_length"],
        data["n_mel_channels"],
        data["sampling_rate"],
        data["mel_fmin"],
        data["mel_fmax"],
    )
    t["y_mel"] = commons.slice_segments(t["mel"], ids_slice, segment_size // hop)
    t["y_hat_mel"] = mel_spectrogram_torch(
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
    t["y_seg"] = y

    # Discriminator side. The reference runs net_d again on the generator side (without detach, for the
    # backward); without a backward both calls give the same tensors, so the 46.7 M-parameter MPD runs once.
    y_d_hat_r, y_d_hat_g, fmap_r, fmap_g = net_d(y, y_hat.detach())
    t["loss_disc"], t["losses_disc_r"], t["losses_disc_g"] = discriminator_loss(y_d_hat_r, y_d_hat_g)
    dur_r, dur_g = net_dur_disc(hidden_x.detach(), x_mask.detach(), logw_.detach(), logw.detach(), g.detach())
    dur_r_sdp, dur_g_sdp = net_dur_disc(
        hidden_x.detach(), x_mask.detach(), logw_.detach(), logw_sdp.detach(), g.detach()
    )
    dur_r, dur_g = dur_r + dur_r_sdp, dur_g + dur_g_sdp  # element-wise, as the reference does
    t["loss_dur_disc"], t["losses_dur_disc_r"], t["losses_dur_disc_g"] = discriminator_loss(dur_r, dur_g)
    t["loss_slm"] = wl.discriminator(y.detach().squeeze(1), y_hat.detach().squeeze(1)).mean()

    # Generator side.
    _, dur_g = net_dur_disc(hidden_x, x_mask, logw_, logw, g)
    _, dur_g_sdp = net_dur_disc(hidden_x, x_mask, logw_, logw_sdp, g)
    dur_g = dur_g + dur_g_sdp
    t["loss_dur"] = torch.sum(l_length.float())
    t["loss_mel"] = F.l1_loss(t["y_mel"], t["y_hat_mel"]) * train["c_mel"]
    t["loss_kl"] = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * train["c_kl"]
    t["loss_fm"] = feature_loss(fmap_r, fmap_g)
    t["loss_gen"], t["losses_gen"] = generator_loss(y_d_hat_g)
    t["loss_lm"] = wl(y.detach().squeeze(1), y_hat.squeeze(1)).mean()
    t["loss_lm_gen"] = wl.generator(y_hat.squeeze(1))
    t["loss_dur_gen"], t["losses_dur_gen"] = generator_loss(dur_g)
    t["loss_gen_all"] = (
        t["loss_gen"]
        + t["loss_fm"]
        + t["loss_mel"]
        + t["loss_dur"]
        + t["loss_kl"]
        + t["loss_lm"]
        + t["loss_lm_gen"]
        + t["loss_dur_gen"]
    )
    return t


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, (list, tuple)):
        return torch.stack([torch.as_tensor(v).float() for v in value])
    return torch.as_tensor(value).float()


TENSOR_TERMS = ["y_seg", "mel", "y_mel", "y_hat_mel"]
LIST_TERMS = [
    "losses_disc_r",
    "losses_disc_g",
    "losses_dur_disc_r",
    "losses_dur_disc_g",
    "losses_gen",
    "losses_dur_gen",
]
SCALAR_TERMS = [
    "loss_disc",
    "loss_dur_disc",
    "loss_slm",
    "loss_dur",
    "loss_mel",
    "loss_kl",
    "loss_fm",
    "loss_gen",
    "loss_lm",
    "loss_lm_gen",
    "loss_dur_gen",
    "loss_gen_all",
]


@pytest.fixture(scope="module")
def discriminators(golden: dict, dev_config: dict) -> dict:
    nets = build_discriminators(dev_config, golden)
    slm = dev_config["model"]["slm"]
    wl = WavLMLoss(slm["model"], nets["net_wd"], dev_config["data"]["sampling_rate"], slm["sr"])
    return dict(nets, wl=wl)


@pytest.fixture(scope="module", params=["golden", "golden_perturbed"])
def step_terms(
    request: pytest.FixtureRequest, golden: dict, dev_config: dict, discriminators: dict
) -> tuple[dict, dict]:
    weights = request.getfixturevalue(request.param)
    from text.symbols import symbols

    assert len(symbols) == golden["meta"]["len_symbols"]
    nets = dict(build_generator_nets(dev_config, weights), net_d=discriminators["net_d"])
    with torch.no_grad():
        terms = step_loss_terms(dev_config, nets, discriminators["wl"], weights["inputs"])
    return terms, weights


def test_forward_matches_golden_first(step_terms: tuple[dict, dict]) -> None:
    """The losses are only meaningful if the forward itself reproduces the golden waveform and slice."""
    terms, weights = step_terms
    assert torch.equal(terms["ids_slice"], weights["forward"]["ids_slice"])
    torch.testing.assert_close(terms["forward_o"], weights["forward"]["o"], **TOL)


@pytest.mark.parametrize("name", TENSOR_TERMS)
def test_step_tensors(step_terms: tuple[dict, dict], name: str) -> None:
    terms, weights = step_terms
    expected = weights["train_step_losses"][name]
    assert terms[name].shape == expected.shape
    torch.testing.assert_close(terms[name], expected, **TOL)


@pytest.mark.parametrize("name", LIST_TERMS)
def test_step_per_entry_losses(step_terms: tuple[dict, dict], name: str) -> None:
    terms, weights = step_terms
    expected = weights["train_step_losses"][name]
    assert len(terms[name]) == len(expected)
    assert type(terms[name][0]) is type(expected[0])  # floats for the discriminator helpers, tensors otherwise
    torch.testing.assert_close(_as_tensor(terms[name]), _as_tensor(expected), **TOL)


@pytest.mark.parametrize("name", SCALAR_TERMS)
def test_step_scalar_losses(step_terms: tuple[dict, dict], name: str) -> None:
    terms, weights = step_terms
    expected = weights["train_step_losses"][name]
    assert terms[name].dtype == torch.float32
    torch.testing.assert_close(_as_tensor(terms[name]), _as_tensor(expected), **TOL)


def test_duration_terms_have_one_entry_per_batch_item(step_terms: tuple[dict, dict]) -> None:
    terms, weights = step_terms
    batch = weights["inputs"]["x"].shape[0]
    assert len(terms["losses_dur_disc_r"]) == len(terms["losses_dur_disc_g"]) == len(terms["losses_dur_gen"]) == batch
