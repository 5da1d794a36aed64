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
import functools
import json
from collections.abc import Callable, Iterator

import pytest
import torch
from kit import assert_every_entry, net_d_state_dict
from model_nets import random_batch
from test_full_backward import CPU, golden_batch

import train_nets
import training
from config import ModelConfig, model_config_from_dict
from data_utils import Batch

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
def golden_trainer(golden: dict, dev_config: dict) -> train_nets.Trainer:
    """The four nets as train_ms builds them, with the kit's discriminator weights, in eval mode."""
    hps = model_config_from_dict(dev_config)
    net_g, net_d, net_wd, net_dur = train_nets.build_nets(hps)
    net_d.load_state_dict(net_d_state_dict(golden))
    net_wd.load_state_dict(golden["weights_wd"])
    trainer = train_nets.Trainer(
        g=train_nets.Part("G", net_g, None, None),
        d=train_nets.Part("D", net_d, None, None),
        wd=train_nets.Part("WD", net_wd, None, None),
        dur=train_nets.Part("DUR", net_dur, None, None),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=train_nets.TrainState(),
    )
    trainer.wl = train_nets.build_wavlm_loss(hps, trainer, CPU)
    trainer.set_train_mode(False)
    return trainer


def step_loss_terms(trainer: train_nets.Trainer, hps: ModelConfig, batch: Batch) -> dict:
    """All loss terms of one production iteration (no backward), named like golden `train_step_losses`."""
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


# Every entry of the kit's `train_step_losses`, in three kinds; the test asserts that these are exactly the
# entries the kit ships, so a term cannot drop out of the comparison unnoticed.
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


def _values(ours: torch.Tensor, reference: torch.Tensor) -> Callable[[str], str]:
    """assert_close's message with both values appended (the lists and scalars are short)."""
    return lambda message: f"{message}\nours      {ours.tolist()}\nreference {reference.tolist()}"


def _check_tensor(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape, f"shape {tuple(ours.shape)} != reference {tuple(reference.shape)}"
    torch.testing.assert_close(ours, reference, **TOL)


def _check_list(ours: list, reference: list) -> None:
    assert len(ours) == len(reference), f"{len(ours)} entries != reference {len(reference)}"
    # The reference logs python floats for the discriminator helpers; ours stay 0-d device tensors until logged.
    assert all(torch.as_tensor(value).dim() == 0 for value in ours), f"entries not scalars: {ours}"
    a, b = _as_tensor(ours), _as_tensor(reference)
    torch.testing.assert_close(a, b, **TOL, msg=_values(a, b))


def _check_scalar(ours: torch.Tensor, reference) -> None:
    assert ours.dtype == torch.float32, f"dtype {ours.dtype}, expected torch.float32"
    a, b = _as_tensor(ours), _as_tensor(reference)
    torch.testing.assert_close(a, b, **TOL, msg=_values(a, b))


@pytest.fixture(scope="module", params=["golden", "golden_perturbed"])
def step_terms(
    request: pytest.FixtureRequest, golden: dict, dev_config: dict, golden_trainer: train_nets.Trainer
) -> tuple[dict, dict]:
    weights = request.getfixturevalue(request.param)
    from text.symbols import symbols

    assert len(symbols) == golden["meta"]["len_symbols"]
    golden_trainer.g.raw.load_state_dict(weights["weights_g"])
    golden_trainer.dur.raw.load_state_dict(weights["weights_dur"])
    with torch.no_grad():
        terms = step_loss_terms(golden_trainer, model_config_from_dict(dev_config), golden_batch(weights["inputs"]))
    return terms, weights


def _check_ids_slice(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert torch.equal(ours, reference), f"ours {ours.tolist()} != reference {reference.tolist()}"


def test_every_step_term_matches_golden(step_terms: tuple[dict, dict]) -> None:
    """The forward (waveform and slice: the losses are only meaningful if these match) and all 22 entries of the
    kit's `train_step_losses` for this weight set, each at the same tolerance; a failure lists every differing
    entry (mismatch figures, tolerances and, for the short ones, both values)."""
    terms, weights = step_terms
    reference = weights["train_step_losses"]
    checks: dict[str, Callable[[], None]] = {
        "forward.ids_slice": functools.partial(_check_ids_slice, terms["ids_slice"], weights["forward"]["ids_slice"]),
        "forward.o": functools.partial(_check_tensor, terms["forward_o"], weights["forward"]["o"]),
    }
    for names, check in ((TENSOR_TERMS, _check_tensor), (LIST_TERMS, _check_list), (SCALAR_TERMS, _check_scalar)):
        for name in names:
            checks[name] = functools.partial(check, terms[name], reference[name])
    assert len(TENSOR_TERMS) + len(LIST_TERMS) + len(SCALAR_TERMS) == len(reference) == 22
    assert_every_entry(checks, {*reference, "forward.ids_slice", "forward.o"}, "train_step_losses")


def test_duration_terms_have_one_entry_per_batch_item(tiny_train_config: dict) -> None:
    """The two duration-discriminator calls are added element-wise and the GAN helpers then iterate over the
    batch rows (the reference's quirk): one entry per batch item. Checked with three items, so the count cannot
    be confused with the two calls; no reference numbers, tiny config, random batch."""
    from text.symbols import symbols

    config = json.loads(json.dumps(tiny_train_config))
    config["train"]["segment_size"] = 2048  # 8 frames: keeps the multi-period discriminator cheap
    hps = model_config_from_dict(config)
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, CPU)
    trainer.set_train_mode(False)
    batch = random_batch(config, len(symbols), text_lengths=[9, 7, 5], spec_lengths=[14, 12, 10])
    with torch.no_grad():
        terms = step_loss_terms(trainer, hps, batch)
    for name in ("losses_dur_disc_r", "losses_dur_disc_g", "losses_dur_gen"):
        assert len(terms[name]) == 3, name
    assert len(terms["losses_disc_r"]) == len(terms["losses_gen"]) == 6  # one scale + five period discriminators
    for name in SCALAR_TERMS:
        assert torch.isfinite(terms[name]), name
