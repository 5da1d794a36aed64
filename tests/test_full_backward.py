"""Two real training iterations of the production step (``training.train_step``) on the tiny dev config: every
loss and gradient finite, every trainable parameter of the four nets receives a gradient and moves.

The nets, optimizers, GradScaler and WavLM are built as ``train_ms.py`` builds them (seeded), in train mode,
with real randomness (dropout, MAS noise, random slices); the batch is random, in the shapes of the kit's
golden input (no reference numbers are compared, so no kit is needed).
"""

from __future__ import annotations

import copy

import pytest
import torch
from model_nets import random_batch

import train_nets
import train_runtime
import training
from config import model_config_from_dict
from data_utils import Batch
from text.symbols import symbols

# Two steps are the minimum: the coupling layers' and ConvFlows' output projections start at zero, so the
# layers feeding them only receive gradients once the first step has moved those projections.
N_STEPS = 2
# The training crop is shortened from the dev config's 8192 samples (32 frames) to keep the 46.7 M-parameter
# MultiPeriodDiscriminator cheap on CPU; the nets themselves are exactly the dev config's.
SEGMENT_SIZE = 2048
CPU = train_runtime.Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

# Trainable parameters that cannot move in the first two iterations, with the reason. Keep this short: a
# parameter that does not move and is not listed here is a bug in the step.
NO_PATH_TO_LOSS: dict[str, str] = {}


def golden_batch(inputs: dict) -> Batch:
    i = inputs
    return Batch(
        i["x"], i["x_lengths"], i["spec"], i["spec_lengths"], i["y"], i["y_lengths"], i["sid"], i["tone"],
        i["language"], i["bert"], i["ja_bert"], i["en_bert"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def two_steps(tiny_train_config: dict) -> dict:
    config = copy.deepcopy(tiny_train_config)
    config["train"]["segment_size"] = SEGMENT_SIZE
    hps = model_config_from_dict(config)
    torch.manual_seed(1234)
    trainer = train_nets.build_trainer(hps, CPU)
    trainer.set_train_mode()
    trainer.wl.train()
    names = {p.prefix: dict(p.raw.named_parameters()) for p in trainer.parts()}
    initial = {(k, n): p.detach().clone() for k, params in names.items() for n, p in params.items() if p.requires_grad}
    batch = random_batch(config, len(symbols), text_lengths=[17, 12], spec_lengths=[60, 45])
    torch.manual_seed(0)
    history, with_gradient = [], set()
    for _ in range(N_STEPS):
        metrics, _ = training.train_step(trainer, batch, hps, CPU)
        trainer.state.step += 1
        history.append(metrics)
        # Each net's gradients of this iteration are still there: every optimizer zeroes only its own net.
        for key, params in names.items():
            for name, p in params.items():
                if p.grad is not None:
                    assert torch.isfinite(p.grad).all(), f"{key}.{name}: non-finite gradient"
                    if p.grad.abs().sum() > 0:
                        with_gradient.add((key, name))
    return {"trainer": trainer, "history": history, "initial": initial, "with_gradient": with_gradient}


def test_every_loss_is_finite_and_no_update_is_skipped(two_steps: dict) -> None:
    for metrics in two_steps["history"]:
        assert metrics["skipped"] == []
        for tag, value in training.scalar_values(metrics).items():
            assert torch.isfinite(torch.tensor(value)), f"{tag} = {value}"
        assert metrics["loss/g/total"] > 0 and metrics["loss/d/total"] > 0


def test_every_trainable_parameter_gets_a_gradient_and_moves(two_steps: dict) -> None:
    trainer, initial = two_steps["trainer"], two_steps["initial"]
    exempt = {tuple(key.split(".", 1)) for key in NO_PATH_TO_LOSS}
    assert exempt <= set(initial), "stale entries in NO_PATH_TO_LOSS"
    current = {(p.prefix, n): q.detach() for p in trainer.parts() for n, q in p.raw.named_parameters()}
    assert {key for key, _ in initial} == {"G", "D", "WD", "DUR"}
    no_grad = sorted(f"{k}.{n}" for k, n in set(initial) - two_steps["with_gradient"] - exempt)
    assert not no_grad, f"parameters that never received a non-zero gradient: {no_grad}"
    unmoved = sorted(
        f"{k}.{n}" for k, n in initial if (k, n) not in exempt and torch.equal(current[k, n], initial[k, n])
    )
    assert not unmoved, f"parameters that did not move in {N_STEPS} iterations: {unmoved}"


def test_frozen_parts_stay_frozen(two_steps: dict) -> None:
    """The WavLM feature extractor has no trainable parameter, receives no gradient and is never in train mode."""
    wl = two_steps["trainer"].wl
    assert not any(p.requires_grad for p in wl.wavlm.parameters())
    assert all(p.grad is None for p in wl.wavlm.parameters())
    assert not wl.wavlm.training
