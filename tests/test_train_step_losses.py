"""Every loss term of one training iteration, computed by the production step (``training``) and against the
kit's golden `train_step_losses`.

The generator forward runs in eval mode under no_grad with the kit's zero-random patch (README, "Training
forward"); the discriminator and generator losses are then ``training.discriminator_losses`` and
``training.generator_losses``, the functions ``training.train_step`` minimises. Golden values include the
reference's two quirks: the two duration-discriminator calls are combined by element-wise addition, and the GAN
helpers then iterate over the batch rows of that tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from kit import net_d_state_dict
from test_full_backward import CPU, golden_batch

import training
import utils

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


@pytest.fixture(scope="module")
def golden_trainer(golden: dict, dev_config: dict) -> training.Trainer:
    """The four nets as train_ms builds them, with the kit's discriminator weights, in eval mode."""
    hps = utils.HParams(**dev_config)
    net_g, net_d, net_wd, net_dur = training.build_nets(hps)
    net_d.load_state_dict(net_d_state_dict(golden))
    net_wd.load_state_dict(golden["weights_wd"])
    trainer = training.Trainer(
        g=training.Part("G", net_g, None, None),
        d=training.Part("D", net_d, None, None),
        wd=training.Part("WD", net_wd, None, None),
        dur=training.Part("DUR", net_dur, None, None),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=training.TrainState(),
    )
    trainer.wl = training.build_wavlm_loss(hps, trainer, CPU)
    trainer.set_train_mode(False)
    return trainer


def step_loss_terms(trainer: training.Trainer, hps: utils.HParams, inputs: dict) -> dict:
    """All loss terms of one production iteration (no backward), named like golden `train_step_losses`."""
    batch = golden_batch(inputs)
    with zero_random():
        out = training.synthesizer_forward(trainer, batch, CPU)
    fwd = training.prepare_pass(out, batch, hps, trainer.wl)
    d = training.discriminator_losses(trainer, fwd, CPU)
    g = training.generator_losses(trainer, fwd, hps, CPU)
    n_mpd = sum(1 for tag in d if tag.startswith("loss/d_r/"))
    n_dur = sum(1 for tag in d if tag.startswith("loss/dur_disc_r/"))
    t = {"forward_o": out.o, "ids_slice": out.ids_slice, "y_seg": fwd.y, "mel": fwd.mel}
    t.update(y_mel=fwd.y_mel, y_hat_mel=fwd.y_hat_mel)
    t["loss_disc"], t["loss_dur_disc"], t["loss_slm"] = d["loss/d/total"], d["loss/dur_disc/total"], d["loss/wd/total"]
    t["losses_disc_r"] = [d[f"loss/d_r/{k}"] for k in range(n_mpd)]
    t["losses_disc_g"] = [d[f"loss/d_g/{k}"] for k in range(n_mpd)]
    t["losses_dur_disc_r"] = [d[f"loss/dur_disc_r/{k}"] for k in range(n_dur)]
    t["losses_dur_disc_g"] = [d[f"loss/dur_disc_g/{k}"] for k in range(n_dur)]
    t["losses_gen"] = [g[f"loss/g/{k}"] for k in range(n_mpd)]
    t["losses_dur_gen"] = [g[f"loss/g/dur_gen_{k}"] for k in range(n_dur)]
    t["loss_gen"] = sum(t["losses_gen"])  # the reference's loss_gen is the sum of these, in this order
    for name in ("dur", "mel", "kl", "fm", "lm", "lm_gen", "dur_gen"):
        t[f"loss_{name}"] = g[f"loss/g/{name}"]
    t["loss_gen_all"] = g["loss/g/total"]
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


@pytest.fixture(scope="module", params=["golden", "golden_perturbed"])
def step_terms(
    request: pytest.FixtureRequest, golden: dict, dev_config: dict, golden_trainer: training.Trainer
) -> tuple[dict, dict]:
    weights = request.getfixturevalue(request.param)
    from text.symbols import symbols

    assert len(symbols) == golden["meta"]["len_symbols"]
    golden_trainer.g.raw.load_state_dict(weights["weights_g"])
    golden_trainer.dur.raw.load_state_dict(weights["weights_dur"])
    with torch.no_grad():
        terms = step_loss_terms(golden_trainer, utils.HParams(**dev_config), weights["inputs"])
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
