"""The fine-tuning options of issue 16 in one update: ``train.grad_accum_steps`` 2 with
``train.activation_checkpointing`` and ``train.freeze`` takes the gradient of the batch made of both
micro-batches, for every net and every parameter not frozen, as one plain update on that batch; frozen parameters
get no gradient, no optimizer state and keep their bits; the checkpoint resumes in a run without the freeze.

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

import commons
import losses
import models
import train_data
import train_nets
import train_resume
import training
from config import model_config_from_dict
from data_utils import Batch
from text.symbols import symbols

LENGTHS = dict(text_lengths=[9, 7], spec_lengths=[14, 12])
FROZEN = ["text_encoder", "flow"]
# Largest |accumulated - one batch| of a tensor's gradient, relative to that net's largest gradient entry
# (float32 sums in another order; measured: 1e-6 or less).
GRAD_TOL = 1e-5


def _hps(config: dict, **train):
    config = json.loads(json.dumps(config))
    # a 1024-sample segment keeps the discriminators cheap; eps 1 makes AdamW's first update proportional to the gradient,
    # so the generator step (judged by the updated discriminators) does not amplify rounding into sign flips.
    config["train"].update(segment_size=1024, eps=1.0, **train)
    return model_config_from_dict(config)


def _trainer(hps) -> train_nets.Trainer:
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, CPU)
    trainer.set_train_mode(False)
    return trainer


def _union(*batches: Batch) -> Batch:
    return Batch(*(torch.cat(fields) for fields in zip(*batches)))


def _largest_gap(ours: train_nets.Part, theirs: train_nets.Part, frozen: set[str]) -> tuple[float, str]:
    """The largest gradient difference relative to the net's largest gradient entry, and where it is; frozen
    parameters have none."""
    scale = max(p.grad.abs().max().item() for p in theirs.raw.parameters() if p.grad is not None)
    worst, where = 0.0, ""
    for (name, a), b in zip(ours.raw.named_parameters(), theirs.raw.parameters()):
        if name in frozen:
            assert a.grad is None, f"frozen {name} has a gradient"
            continue
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None and (gap := (a.grad - b.grad).abs().max().item() / scale) > worst:
            worst, where = gap, name
    return worst, where


def _frozen_names(trainer: train_nets.Trainer) -> set[str]:
    modules = models.freezable_parts(trainer.g.raw)
    ids = {id(p) for part in FROZEN for module in modules[part] for p in module.parameters()}
    return {name for name, p in trainer.g.raw.named_parameters() if id(p) in ids}


@pytest.fixture(scope="module")
def accumulated_and_whole(tiny_train_config: dict, tmp_path_factory) -> dict:
    tuned_hps = _hps(tiny_train_config, grad_accum_steps=2, activation_checkpointing=True, freeze=FROZEN)
    plain_hps = _hps(tiny_train_config)
    first = random_batch(tiny_train_config, len(symbols), **LENGTHS, seed=1)
    second = random_batch(tiny_train_config, len(symbols), **LENGTHS, seed=2)
    tuned, whole = _trainer(tuned_hps), _trainer(plain_hps)
    before = {name: p.detach().clone() for name, p in tuned.g.raw.named_parameters()}
    with zero_random():
        tuned_metrics, _ = training.train_update(tuned, [first, second], tuned_hps, CPU)
        whole_metrics, _ = training.train_update(whole, [_union(first, second)], plain_hps, CPU)
    tuned_hps.model_dir = str(tmp_path_factory.mktemp("tuned"))
    tuned.state.step = 1
    train_resume.save_training_checkpoint(tuned, tuned_hps, CPU, keep_ckpts=2)
    return dict(
        tuned=tuned,
        whole=whole,
        metrics=(tuned_metrics, whole_metrics),
        before=before,
        model_dir=tuned_hps.model_dir,
        plain_hps=plain_hps,
    )


def test_accumulated_gradients_equal_one_batch_of_all_micro_batches(accumulated_and_whole) -> None:
    tuned, whole = accumulated_and_whole["tuned"], accumulated_and_whole["whole"]
    frozen = _frozen_names(tuned)
    assert frozen and all(name.startswith(("enc_p.", "flow.")) for name in frozen)
    for ours, theirs in zip(tuned.parts(), whole.parts()):
        gap, where = _largest_gap(ours, theirs, frozen if ours.prefix == "G" else set())
        assert gap <= GRAD_TOL, f"{ours.prefix}: {where} differs by {gap:.2e} of the largest gradient"


def test_frozen_parts_keep_their_bits_and_get_no_optimizer_state(accumulated_and_whole) -> None:
    tuned, before = accumulated_and_whole["tuned"], accumulated_and_whole["before"]
    frozen = _frozen_names(tuned)
    changed = {name for name, p in tuned.g.raw.named_parameters() if not torch.equal(p, before[name])}
    assert not changed & frozen, f"frozen parameters moved: {sorted(changed & frozen)}"
    assert any(name.startswith("dec.") for name in changed), "the decoder did not train"
    for name, p in tuned.g.raw.named_parameters():
        assert (p in tuned.g.optimizer.state) == (name not in frozen), name


def test_a_checkpoint_trained_with_a_freeze_resumes_without_it(accumulated_and_whole) -> None:
    hps = accumulated_and_whole["plain_hps"]
    hps.model_dir = accumulated_and_whole["model_dir"]
    trainer = _trainer(hps)
    train_resume.restore_or_initialise(trainer, hps, CPU, None, None)
    assert trainer.state.step == 1
    for (name, p), q in zip(trainer.g.raw.named_parameters(), accumulated_and_whole["tuned"].g.raw.parameters()):
        assert torch.equal(p, q), name
    saved = accumulated_and_whole["tuned"].g.optimizer
    assert len(trainer.g.optimizer.state) == len(saved.state)  # moments of the trained parameters only
    assert all(p.requires_grad for p in trainer.g.raw.parameters())  # without the freeze, every part trains


def test_accumulated_losses_are_the_whole_batch_losses(accumulated_and_whole) -> None:
    ours, theirs = accumulated_and_whole["metrics"]
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


def test_the_generator_step_adds_no_gradient_to_its_judges(accumulated_and_whole) -> None:
    """After the update each discriminator still holds exactly the gradient its own step measured: the
    generator's backward (with the discriminators recomputed under activation checkpointing) added nothing."""
    for trainer, metrics in zip(
        (accumulated_and_whole["tuned"], accumulated_and_whole["whole"]), accumulated_and_whole["metrics"]
    ):
        for part, tag in ((trainer.d, "grad_norm_d"), (trainer.wd, "grad_norm_wd"), (trainer.dur, "grad_norm_dur")):
            assert commons.grad_norm(part.raw.parameters()).item() == metrics[tag].item(), part.prefix
