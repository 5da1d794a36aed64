"""losses.py: GAN / feature / KL terms and the WavLM loss against the reference kit, and their properties\n(dtypes, gradients, shapes) on local inputs."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from kit import assert_every_entry

from losses import WavLMLoss, discriminator_loss, feature_loss, generator_loss, kl_loss

TOL = dict(atol=1e-4, rtol=1e-4)


def _close(actual: float | torch.Tensor, expected: float | torch.Tensor) -> None:
    torch.testing.assert_close(torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), **TOL)


# ---------------------------------------------------------------- GAN and feature-matching terms


def _check_discriminator_loss(mpd: dict) -> tuple[Callable[[], None], ...]:
    loss, r_losses, g_losses = discriminator_loss(mpd["y_d_rs"], mpd["y_d_gs"])
    expected = mpd["losses"]

    def terms(ours: list, reference: list) -> None:
        assert all(type(v) is float for v in ours), "the per-discriminator terms are Python floats"
        assert len(ours) == 6
        _close(ours, reference)

    return (
        functools.partial(_close, loss, expected["discriminator_loss"]),
        functools.partial(terms, r_losses, expected["discriminator_r_losses"]),
        functools.partial(terms, g_losses, expected["discriminator_g_losses"]),
    )


def _check_generator_loss(mpd: dict) -> tuple[Callable[[], None], ...]:
    loss, terms = generator_loss(mpd["y_d_gs"])
    expected = mpd["losses"]

    def check_terms() -> None:
        assert all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in terms), "0-dim tensors expected"
        _close(torch.stack(terms), torch.stack(expected["generator_losses"]))

    return functools.partial(_close, loss, expected["generator_loss"]), check_terms


@pytest.mark.parametrize("group", ["mpd_seg", "mpd_short"])
def test_gan_losses_match_golden(golden: dict, group: str) -> None:
    """Every loss the kit recorded for one group of discriminator outputs: discriminator_loss (total, real and
    generated terms), generator_loss (total and terms) and, where the kit ships the feature maps (mpd_short;
    mpd_seg has only their statistics), feature_loss. A failure lists every differing entry."""
    mpd = golden[group]
    checks: dict[str, Callable[[], None]] = {}
    disc = _check_discriminator_loss(mpd)
    checks.update(zip(("discriminator_loss", "discriminator_r_losses", "discriminator_g_losses"), disc))
    checks.update(zip(("generator_loss", "generator_losses"), _check_generator_loss(mpd)))
    expected = set(mpd["losses"])
    if "fmap_rs" in mpd:
        checks["feature_loss"] = lambda: _close(
            feature_loss(mpd["fmap_rs"], mpd["fmap_gs"]), mpd["losses"]["feature_loss"]
        )
    else:
        expected -= {"feature_loss"}
    assert group != "mpd_short" or "feature_loss" in checks
    assert_every_entry(checks, expected, f"{group} losses")


def test_feature_loss_is_twice_the_summed_mean_abs_difference() -> None:
    real = [[torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 0.0]])], [torch.tensor([3.0])]]
    fake = [[torch.tensor([2.0, 0.0]), torch.tensor([[1.0, -1.0]])], [torch.tensor([1.0])]]
    # means: 1.5, 1.0, 2.0 -> sum 4.5 -> ×2
    assert feature_loss(real, fake).item() == pytest.approx(9.0)


def test_feature_loss_treats_real_maps_as_constants() -> None:
    real = torch.randn(2, 3, requires_grad=True)
    fake = torch.randn(2, 3, requires_grad=True)
    feature_loss([[real]], [[fake]]).backward()
    assert real.grad is None
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_gan_losses_are_float32_for_half_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    scores_r = [torch.randn(2, n, generator=generator).bfloat16() for n in (7, 5, 3)]
    scores_g = [torch.randn(2, n, generator=generator).bfloat16() for n in (7, 5, 3)]
    loss, _, _ = discriminator_loss(scores_r, scores_g)
    gen, _ = generator_loss(scores_g)
    assert loss.dtype == gen.dtype == torch.float32
    # The values are those of the float32 inputs (computed in float32, not merely cast at the end).
    _close(loss, discriminator_loss([t.float() for t in scores_r], [t.float() for t in scores_g])[0])
    _close(gen, generator_loss([t.float() for t in scores_g])[0])


def test_lsgan_losses_by_hand_over_the_rows_of_one_tensor() -> None:
    """Given one tensor (as the duration discriminator's scores are), the helpers iterate over its rows: one
    term per row, mean((1 - real)^2) and mean(fake^2) for the discriminator, mean((1 - fake)^2) for the
    generator, summed. Values worked out by hand."""
    real = torch.tensor([[[0.5], [1.0]], [[0.0], [1.0]], [[1.0], [1.0]]])  # [b=3, t=2, 1]
    fake = torch.tensor([[[0.5], [0.0]], [[1.0], [1.0]], [[0.0], [0.0]]])
    loss, r_losses, g_losses = discriminator_loss(real, fake)
    assert r_losses == [0.125, 0.5, 0.0]
    assert g_losses == [0.125, 1.0, 0.0]
    assert loss.item() == pytest.approx(1.75)
    gen, terms = generator_loss(fake)
    assert [t.item() for t in terms] == [0.625, 0.0, 1.0]
    assert gen.item() == pytest.approx(1.625)
    # A list of per-discriminator outputs of different shapes: one term per discriminator.
    loss, r_losses, g_losses = discriminator_loss(
        [torch.zeros(2, 4), torch.ones(1, 3)], [torch.ones(2, 4), 2 * torch.ones(1, 3)]
    )
    assert (r_losses, g_losses, loss.item()) == ([1.0, 0.0], [1.0, 4.0], 6.0)


def test_duration_discriminator_losses_iterate_over_the_batch(golden: dict) -> None:
    """The training step adds the two duration-discriminator calls element-wise; the helpers then
    iterate over the batch rows of that one tensor (one entry per batch item)."""
    dur = golden["dur_disc"]
    expected = golden["train_step_losses"]
    prob_r = dur["dur_r_prob"] + dur["dur_r_prob_sdpcall"]  # [b, t_x, 1]
    prob_g = dur["dur_hat_prob"] + dur["dur_hat_prob_sdp"]
    loss, r_losses, g_losses = discriminator_loss(prob_r, prob_g)
    assert len(r_losses) == len(g_losses) == prob_r.shape[0] == 2
    _close(loss, expected["loss_dur_disc"])
    _close(r_losses, expected["losses_dur_disc_r"])
    _close(g_losses, expected["losses_dur_disc_g"])
    gen, gen_terms = generator_loss(prob_g)
    _close(gen, expected["loss_dur_gen"])
    _close(torch.stack(gen_terms), torch.stack(expected["losses_dur_gen"]))


# ---------------------------------------------------------------- KL


def test_kl_loss_matches_golden(golden: dict) -> None:
    f = golden["forward"]
    _close(kl_loss(f["z_p"], f["logs_q"], f["m_p"], f["logs_p"], f["y_mask"]), golden["losses"]["kl_loss"])


def test_kl_loss_matches_golden_perturbed(golden_perturbed: dict) -> None:
    f = golden_perturbed["forward"]
    expected = golden_perturbed["losses"]["kl_loss"]
    _close(kl_loss(f["z_p"], f["logs_q"], f["m_p"], f["logs_p"], f["y_mask"]), expected)


def test_kl_loss_formula_and_mask() -> None:
    z_p = torch.tensor([[[1.0, 5.0, 9.0]]])
    m_p = torch.tensor([[[0.0, 0.0, 0.0]]])
    logs_p = torch.tensor([[[0.0, 0.0, 0.0]]])
    logs_q = torch.tensor([[[0.5, 0.5, 0.5]]])
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])  # the third frame is padding and must not count
    per_frame = [0.0 - 0.5 - 0.5 + 0.5 * 1.0, 0.0 - 0.5 - 0.5 + 0.5 * 25.0]
    assert kl_loss(z_p, logs_q, m_p, logs_p, mask).item() == pytest.approx(sum(per_frame) / 2)


def test_kl_loss_is_float32_for_half_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    z_p, logs_q, m_p, logs_p = (torch.randn(2, 4, 9, generator=generator).bfloat16() for _ in range(4))
    y_mask = torch.tensor([[1.0] * 9, [1.0] * 6 + [0.0] * 3]).unsqueeze(1).bfloat16()
    args = (z_p, logs_q, m_p, logs_p, y_mask)
    value = kl_loss(*args)
    assert value.dtype == torch.float32
    _close(value, kl_loss(*(t.float() for t in args)))


# ---------------------------------------------------------------- WavLM


@pytest.fixture(scope="module")
def wavlm_loss(golden: dict, dev_config: dict) -> WavLMLoss:
    from models import build_wavlm_discriminator

    slm = dev_config["model"]["slm"]
    net_wd = build_wavlm_discriminator(dev_config)
    net_wd.load_state_dict(golden["weights_wd"])
    net_wd.eval()
    g = golden["wavlm_loss"]
    assert g["slm_sr"] == slm["sr"]
    return WavLMLoss(slm["model"], net_wd, g["model_sr"], g["slm_sr"])


@pytest.fixture(scope="module")
def local_wavlm_loss(tiny_model_config: dict, tiny_wavlm_dir: Path) -> WavLMLoss:
    """The WavLM loss of the tiny config, with the session's tiny WavLM and a seeded WD: no kit needed."""
    from models import build_wavlm_discriminator

    slm = tiny_model_config["model"]["slm"]
    torch.manual_seed(0)
    net_wd = build_wavlm_discriminator(tiny_model_config).eval()
    return WavLMLoss(tiny_wavlm_dir, net_wd, tiny_model_config["data"]["sampling_rate"], slm["sr"])


@pytest.fixture(scope="module")
def waves() -> tuple[torch.Tensor, torch.Tensor]:
    """A real and a generated batch of two 8192-sample segments at 22.05 kHz (noise; the kit's are [2, 8192])."""
    generator = torch.Generator().manual_seed(1)
    wav = (torch.rand(2, 8192, generator=generator) - 0.5) * 0.6
    y_rec = (torch.rand(2, 8192, generator=generator) - 0.5) * 0.6
    return wav, y_rec


def test_wavlm_loss_matches_golden(golden: dict, wavlm_loss: WavLMLoss) -> None:
    """Every output the kit recorded for the WavLM loss on its (wav, y_rec) pair: the 16 kHz resampling, the
    hidden states and embeddings of both waves, the loss, its generator and discriminator terms and the
    discriminator's scores. A failure lists every differing entry."""
    g = golden["wavlm_loss"]
    checks: dict[str, Callable[[], None]] = {}
    with torch.no_grad():
        for name in ("wav", "y_rec"):
            states = wavlm_loss.hidden_states(g[name])
            embeddings = wavlm_loss._embeddings(g[name])
            checks[f"{name}_16"] = functools.partial(_close, wavlm_loss.resample(g[name]), g[f"{name}_16"])
            checks[f"{name}_hidden_states"] = functools.partial(_check_states, states, g[f"{name}_hidden_states"])
            checks[f"{name}_embeddings"] = functools.partial(
                _check_shaped, embeddings, g[f"{name}_embeddings"], (2, 96, 19)
            )
    checks["forward"] = lambda: _close(wavlm_loss(g["wav"], g["y_rec"]), g["forward"])
    checks["generator"] = lambda: _close(wavlm_loss.generator(g["y_rec"]), g["generator"])
    checks["discriminator"] = lambda: _close(wavlm_loss.discriminator(g["wav"], g["y_rec"]), g["discriminator"])
    scores = wavlm_loss.discriminator_forward(g["wav"])
    checks["discriminator_forward"] = functools.partial(_check_shaped, scores, g["discriminator_forward"], (2, 19))
    inputs = {"model_dir", "model_sr", "slm_sr", "wav", "y_rec"}
    assert_every_entry(checks, set(g) - inputs, "wavlm_loss")


def _check_states(ours: tuple, reference: list) -> None:
    assert len(ours) == len(reference) == 3, f"{len(ours)} hidden states, reference {len(reference)}, expected 3"
    for got, want in zip(ours, reference):
        _close(got, want)


def _check_shaped(ours: torch.Tensor, reference: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert ours.shape == reference.shape == shape, f"shape {tuple(ours.shape)}, reference {tuple(reference.shape)}"
    _close(ours, reference)


def test_wavlm_discriminator_on_golden_input(golden: dict, wavlm_loss: WavLMLoss) -> None:
    with torch.no_grad():
        _close(wavlm_loss.wd(golden["wd"]["input"]), golden["wd"]["output"])


def test_wavlm_is_frozen_and_stays_in_eval(local_wavlm_loss: WavLMLoss) -> None:
    wavlm_loss = local_wavlm_loss
    assert not any(p.requires_grad for p in wavlm_loss.wavlm.parameters())
    wavlm_loss.train()
    try:
        assert wavlm_loss.training and not wavlm_loss.wavlm.training
        assert not any(m.training for m in wavlm_loss.wavlm.modules())
    finally:
        wavlm_loss.eval()


def test_wavlm_loss_gradients_reach_the_right_tensors(local_wavlm_loss: WavLMLoss, waves: tuple) -> None:
    wavlm_loss = local_wavlm_loss
    wav = waves[0].clone().requires_grad_(True)
    y_rec = waves[1].clone().requires_grad_(True)
    wavlm_loss.wd.zero_grad(set_to_none=True)

    (wavlm_loss(wav, y_rec) + wavlm_loss.generator(y_rec)).backward()
    assert wav.grad is None, "the real wave is a constant in the feature loss"
    assert y_rec.grad is not None and torch.isfinite(y_rec.grad).all() and y_rec.grad.abs().sum() > 0
    assert all(p.grad is None for p in wavlm_loss.wavlm.parameters())

    y_rec.grad = None
    wavlm_loss.wd.zero_grad(set_to_none=True)
    wavlm_loss.discriminator(wav, y_rec).backward()
    assert wav.grad is None and y_rec.grad is None, "the discriminator term only trains WD"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in wavlm_loss.wd.parameters())
    wavlm_loss.wd.zero_grad(set_to_none=True)


def test_wavlm_loss_accepts_channel_dim_and_batch_of_one(local_wavlm_loss: WavLMLoss, waves: tuple) -> None:
    wavlm_loss, (wav, y_rec) = local_wavlm_loss, waves
    with torch.no_grad():
        plain = wavlm_loss(wav, y_rec)
        batched = wavlm_loss(wav.unsqueeze(1), y_rec.unsqueeze(1))
        single = wavlm_loss(wav[:1].unsqueeze(1), y_rec[:1].unsqueeze(1))
        scores = wavlm_loss.discriminator_forward(wav)
        scores_single = wavlm_loss.discriminator_forward(wav[:1])
    _close(batched, plain)
    assert single.dim() == 0 and torch.isfinite(single)
    assert scores.shape == (2, 19)  # 8192 samples at 22.05 kHz -> 5944 at 16 kHz -> 19 WavLM frames
    _close(scores_single, scores[:1])


def test_wavlm_loss_is_float32_under_autocast(local_wavlm_loss: WavLMLoss, waves: tuple) -> None:
    with torch.no_grad():
        expected = local_wavlm_loss(*waves)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            value = local_wavlm_loss(*waves)
    assert value.dtype == torch.float32
    _close(value, expected)


def test_wavlm_loads_without_network(tiny_wavlm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loss = WavLMLoss(tiny_wavlm_dir, torch.nn.Identity(), 16000)
    assert not loss.wavlm.training


def _assert_helpful_missing_error(err: pytest.ExceptionInfo, folder: Path) -> None:
    message = str(err.value)
    assert str(folder) in message
    assert "save_pretrained" in message and "microsoft/wavlm-base-plus" in message
    assert "config.json" in message


def test_missing_wavlm_folder_raises_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "slm" / "wavlm-base-plus"
    with pytest.raises(FileNotFoundError) as err:
        WavLMLoss(folder, torch.nn.Identity(), 22050)
    _assert_helpful_missing_error(err, folder)
    assert "does not exist" in str(err.value)


def test_wavlm_folder_without_config_raises_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        WavLMLoss(tmp_path, torch.nn.Identity(), 22050)
    _assert_helpful_missing_error(err, tmp_path)
    assert "has no config.json" in str(err.value)


def test_wavlm_folder_without_weights_raises_clear_error(tmp_path: Path, tiny_wavlm_dir: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny_wavlm_dir / "config.json").read_bytes())
    with pytest.raises(FileNotFoundError) as err:
        WavLMLoss(tmp_path, torch.nn.Identity(), 22050)
    _assert_helpful_missing_error(err, tmp_path)
    assert "model.safetensors" in str(err.value)
