"""Gradient accumulation (``train.grad_accum_steps``, issue 16): one update on k micro-batches takes the gradient
of the batch made of all of them, for every net, and the step's bookkeeping counts updates.

The random draws are made identical (eval mode: no dropout; ``zero_random``: zero noise and slice offsets), and
the micro-batches have the same lengths, so the batch-mean losses of their union are exactly the mean of theirs
(the KL and duration terms divide by mask sums of the whole batch)."""

from __future__ import annotations

import json

import pytest
import torch
from model_nets import random_batch
from test_full_backward import CPU
from test_train_step_losses import zero_random

import losses
import train_data
import train_nets
import training
from config import model_config_from_dict
from data_utils import Batch
from text.symbols import symbols

LENGTHS = dict(text_lengths=[9, 7], spec_lengths=[14, 12])
# Largest |accumulated - one batch| of a tensor's gradient, relative to that net's largest gradient entry
# (float32 sums in another order; measured: 1e-6 or less).
GRAD_TOL = 1e-5


def _hps(config: dict, **train):
    config = json.loads(json.dumps(config))
    # segment 2048 keeps the discriminators cheap; eps 1 makes AdamW's first update proportional to the gradient,
    # so the generator step (judged by the updated discriminators) does not amplify rounding into sign flips.
    config["train"].update(segment_size=2048, eps=1.0, **train)
    return model_config_from_dict(config)


def _trainer(hps) -> train_nets.Trainer:
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, CPU)
    trainer.set_train_mode(False)
    return trainer


def _union(*batches: Batch) -> Batch:
    return Batch(*(torch.cat(fields) for fields in zip(*batches)))


def _largest_gap(ours: train_nets.Part, theirs: train_nets.Part) -> tuple[float, str]:
    """The largest gradient difference relative to the net's largest gradient entry, and where it is."""
    scale = max(p.grad.abs().max().item() for p in theirs.raw.parameters() if p.grad is not None)
    worst, where = 0.0, ""
    for (name, a), b in zip(ours.raw.named_parameters(), theirs.raw.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None and (gap := (a.grad - b.grad).abs().max().item() / scale) > worst:
            worst, where = gap, name
    return worst, where


@pytest.fixture(scope="module")
def accumulated_and_whole(tiny_train_config: dict) -> tuple[train_nets.Trainer, train_nets.Trainer, dict, dict]:
    hps = _hps(tiny_train_config, grad_accum_steps=2)
    first = random_batch(tiny_train_config, len(symbols), **LENGTHS, seed=1)
    second = random_batch(tiny_train_config, len(symbols), **LENGTHS, seed=2)
    accumulated, whole = _trainer(hps), _trainer(hps)
    with zero_random():
        acc_metrics, _ = training.train_update(accumulated, [first, second], hps, CPU)
        whole_metrics, _ = training.train_update(whole, [_union(first, second)], hps, CPU)
    return accumulated, whole, acc_metrics, whole_metrics


def test_accumulated_gradients_equal_one_batch_of_all_micro_batches(accumulated_and_whole) -> None:
    accumulated, whole, _, _ = accumulated_and_whole
    for ours, theirs in zip(accumulated.parts(), whole.parts()):
        gap, where = _largest_gap(ours, theirs)
        assert gap <= GRAD_TOL, f"{ours.prefix}: {where} differs by {gap:.2e} of the largest gradient"


def test_accumulated_losses_are_the_whole_batch_losses(accumulated_and_whole) -> None:
    _, _, ours, theirs = accumulated_and_whole
    totals = [tag for tag in theirs if tag.endswith("/total")] + ["loss/g/mel", "loss/g/kl", "loss/g/dur_gen"]
    values = training.scalar_values({tag: ours[tag] for tag in totals})
    expected = training.scalar_values({tag: theirs[tag] for tag in totals})
    for tag in totals:
        assert values[tag] == pytest.approx(expected[tag], rel=1e-5, abs=1e-6), tag
    assert ours["skipped"] == theirs["skipped"] == []


def test_a_micro_batch_share_keeps_batch_summed_terms_whole() -> None:
    terms = {"loss/g/mel": torch.tensor(4.0), "loss/g/dur_gen": torch.tensor(2.0), "loss/g/total": torch.tensor(6.0)}
    assert losses.micro_batch_share(terms, "loss/g/total", 2).item() == 4.0  # 4 / 2 + 2
    disc = {"loss/dur_disc/total": torch.tensor(3.0), "loss/d/total": torch.tensor(8.0)}
    assert losses.micro_batch_share(disc, "loss/dur_disc/total", 4).item() == 3.0
    assert losses.micro_batch_share(disc, "loss/d/total", 4).item() == 2.0
    combined = losses.combine_micro_batch_terms([terms, terms])
    assert [combined[tag].item() for tag in terms] == [4.0, 4.0, 8.0]


def test_update_groups_cover_the_epoch_in_order() -> None:
    assert list(train_data.update_groups(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(train_data.update_groups(range(2), 1)) == [[0], [1]]
