"""train.activation_checkpointing: the decoder's stages, the flow's couplings and each multi-period/scale
discriminator recompute their activations in the backward pass, with the plain results (tiny config, CPU)."""

from __future__ import annotations

import json

import torch
from model_nets import random_batch
from test_full_backward import CPU
from torch import nn

import attentions
import losses
import models
import train_nets
import training
from config import model_config_from_dict
from text.symbols import symbols


def _nets(tiny_model_config: dict) -> tuple[models.SynthesizerTrn, models.MultiPeriodDiscriminator]:
    torch.manual_seed(0)
    config = model_config_from_dict(tiny_model_config, "tiny.json")
    return models.build_generator(config, for_training=True), models.MultiPeriodDiscriminator()


def _gradients(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


def _decoder_flow_and_discriminator_pass(net_g, net_d, z, y_mask, g, wav):
    """Flow forward, decoder, both discriminator passes: every recomputable part, one scalar to back-propagate."""
    z_p = net_g.flow(z, y_mask, g=g)
    y_hat = net_g.dec(z * y_mask, g=g)
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = net_d(wav, y_hat)
    total = z_p.square().mean() + sum(d.square().mean() for d in y_d_rs + y_d_gs)
    return total + sum(f.abs().mean() for fmaps in fmap_gs for f in fmaps)


def test_checkpointed_gradients_equal_the_plain_ones(tiny_model_config: dict) -> None:
    net_g, net_d = _nets(tiny_model_config)
    net_g.train(), net_d.train()
    inter = net_g.dec.conv_pre.in_channels
    frames = 4
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(2, inter, frames, generator=generator)
    y_mask = torch.ones(2, 1, frames)
    g = torch.randn(2, net_g.emb_g.embedding_dim, 1, generator=generator)
    wav = torch.randn(2, 1, frames * 256, generator=generator) * 0.1  # the tiny config's hop: 256 samples

    results = {}
    for enabled in (False, True):
        parts = models.set_activation_checkpointing(enabled, net_g, net_d)
        assert parts == 3  # the decoder, the flow, the multi-period discriminator
        net_g.zero_grad(set_to_none=True), net_d.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the flow's coupling layers have dropout: the same draws both times
        loss = _decoder_flow_and_discriminator_pass(net_g, net_d, z, y_mask, g, wav)
        loss.backward()
        results[enabled] = (loss.detach(), _gradients(net_g), _gradients(net_d))

    plain, recomputed = results[False], results[True]
    torch.testing.assert_close(recomputed[0], plain[0], rtol=0, atol=1e-6)
    for index in (1, 2):
        assert plain[index].keys() == recomputed[index].keys() and plain[index]
        for name, grad in plain[index].items():
            torch.testing.assert_close(recomputed[index][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointing_is_off_in_eval_and_without_gradients(tiny_model_config: dict, monkeypatch) -> None:
    net_g, _ = _nets(tiny_model_config)
    models.set_activation_checkpointing(True, net_g)
    calls = []
    monkeypatch.setattr(models, "checkpoint", lambda *a, **k: calls.append(1) or a[0](*a[1:]))
    z = torch.randn(1, net_g.dec.conv_pre.in_channels, 8)
    net_g.eval()
    net_g.dec(z)
    net_g.train()
    with torch.no_grad():
        net_g.dec(z)
    assert calls == []
    net_g.dec(z)
    assert len(calls) == net_g.dec.num_upsamples


def test_the_flag_changes_no_checkpoint_key(tiny_model_config: dict) -> None:
    net_g, net_d = _nets(tiny_model_config)
    keys = (list(net_g.state_dict()), list(net_d.state_dict()))
    models.set_activation_checkpointing(True, net_g, net_d)
    assert (list(net_g.state_dict()), list(net_d.state_dict())) == keys


def _judged_generated_audio(net_d: models.MultiPeriodDiscriminator, wav: torch.Tensor, fake: torch.Tensor):
    """The generator step's path: scores and feature-matching terms of a frozen discriminator, one scalar."""
    y_d_gs, terms = net_d.judge_generated(wav, fake, losses.feature_terms)
    return sum(d.square().mean() for d in y_d_gs) + losses.summed_feature_terms(terms)


def _frozen_discriminator_and_audio(tiny_model_config: dict):
    _, net_d = _nets(tiny_model_config)
    net_d.train().requires_grad_(False)
    generator = torch.Generator().manual_seed(2)
    wav = torch.randn(2, 1, 1024, generator=generator) * 0.1
    fake = torch.randn(2, 1, 1024, generator=generator) * 0.1
    return net_d, wav, fake


def test_a_frozen_discriminator_gives_the_plain_input_gradient(tiny_model_config: dict) -> None:
    """The generator step's path: frozen multi-period discriminator, gradient into the generated audio only."""
    net_d, wav, fake = _frozen_discriminator_and_audio(tiny_model_config)
    results = []
    for enabled in (False, True):
        models.set_activation_checkpointing(enabled, net_d)
        y_hat = fake.clone().requires_grad_()
        loss = _judged_generated_audio(net_d, wav, y_hat)
        loss.backward()
        results.append((loss.detach(), y_hat.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)


def test_the_generator_step_judgement_is_the_forward_and_the_feature_loss(tiny_model_config: dict) -> None:
    """Without checkpointing, judge_generated gives bit for bit what forward and feature_loss of its maps give."""
    net_d, wav, fake = _frozen_discriminator_and_audio(tiny_model_config)
    _, y_d_gs, fmap_rs, fmap_gs = net_d(wav, fake)
    scores, terms = net_d.judge_generated(wav, fake, losses.feature_terms)
    assert all(torch.equal(a, b) for a, b in zip(scores, y_d_gs, strict=True))
    assert torch.equal(losses.summed_feature_terms(terms), losses.feature_loss(fmap_rs, fmap_gs))
    scores_only = net_d(wav, fake, keep_maps=False)
    assert scores_only[2:] == ([], []) and all(torch.equal(a, b) for a, b in zip(scores_only[1], y_d_gs))


def _saved_bytes(run, *args) -> int:
    """Bytes of activations (tensors whose first dimension is a batch of 2, or 4 for real and generated audio
    as one batch; no weight here has 2 or 4 output channels) autograd keeps for the backward pass while
    ``run(*args)`` builds its graph."""
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() >= 2 and tensor.shape[0] in (2, 4):
            saved.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run(*args)
    return sum(saved)


def test_checkpointed_discriminators_keep_no_activation_for_the_backward(tiny_model_config: dict) -> None:
    """With checkpointing neither discriminator pass keeps its maps for the backward pass: in the generator step
    (frozen judges, gradient into the audio) and in their own update (batch of real and generated audio)."""
    net_d, wav, fake = _frozen_discriminator_and_audio(tiny_model_config)
    y_hat = fake.clone().requires_grad_()
    kept = {}
    for enabled in (False, True):
        models.set_activation_checkpointing(enabled, net_d)
        net_d.requires_grad_(False)
        generator_step = _saved_bytes(_judged_generated_audio, net_d, wav, y_hat)
        net_d.requires_grad_(True)
        own_update = _saved_bytes(net_d, wav, fake)
        kept[enabled] = (generator_step, own_update)
    assert kept[False][0] > 1_000_000 and kept[False][1] > 1_000_000  # the plain passes keep their maps
    assert kept[True][0] < kept[False][0] / 100 and kept[True][1] < kept[False][1] / 100, kept


def test_attention_keeps_its_weights_without_their_graph(tiny_model_config: dict) -> None:
    """The flow's attention layers keep their last weights for inspection, detached: a checkpointed coupling's
    recomputed weights would otherwise hold the recomputation's graph (and its activations) until the next step."""
    net_g, _ = _nets(tiny_model_config)
    net_g.train()
    models.set_activation_checkpointing(True, net_g)
    z = torch.randn(2, net_g.dec.conv_pre.in_channels, 6, requires_grad=True)
    g = torch.randn(2, net_g.emb_g.embedding_dim, 1)
    net_g.flow(z, torch.ones(2, 1, 6), g=g).sum().backward()
    layers = [m for m in net_g.flow.modules() if isinstance(m, attentions.MultiHeadAttention)]
    assert layers and all(m.attn is not None and m.attn.grad_fn is None for m in layers)


def test_checkpointed_parts_drop_their_normed_weights_between_passes(tiny_model_config: dict) -> None:
    """Weight norm recomputes a layer's weight before each forward: with checkpointing on, the copy is dropped
    after the forward (the pass keeps what its backward needs; the gradients are the plain ones, tested above),
    and turning checkpointing off restores the plain behaviour. The recomputation in backward stops inside each
    discriminator's last layer, once it has what backward needs: that small layer keeps its copy."""
    _, net_d = _nets(tiny_model_config)
    net_d.train()
    wav = torch.randn(2, 1, 1024)
    normed = {name: m for name, m in net_d.named_modules() if hasattr(m, "weight_g")}
    for enabled in (True, False):
        models.set_activation_checkpointing(enabled, net_d)
        y_d_rs, y_d_gs, _, _ = net_d(wav, wav.clone(), keep_maps=False)
        assert all((m.weight is None) == enabled for m in normed.values()), enabled
        sum(d.square().mean() for d in y_d_rs + y_d_gs).backward()
        kept = {name for name, m in normed.items() if m.weight is not None}
        expected = {name for name in normed if name.endswith("conv_post")} if enabled else set(normed)
        assert kept == expected, enabled


def test_the_training_steps_keep_no_discriminator_activation(tiny_train_config: dict) -> None:
    """training.discriminator_losses and training.generator_losses (the production steps, not the nets alone)
    keep for backward, with checkpointing, almost nothing of what they keep without it: the period/scale
    discriminators' activations are most of it, and checkpointing recomputes them."""
    config = json.loads(json.dumps(tiny_train_config))
    config["train"]["segment_size"] = 1024
    batch = random_batch(config, len(symbols), text_lengths=[9, 7], spec_lengths=[14, 12], seed=1)
    kept = {}
    for enabled in (False, True):
        config["train"]["activation_checkpointing"] = enabled
        hps = model_config_from_dict(config)
        torch.manual_seed(0)
        trainer = train_nets.build_trainer(hps, CPU)
        trainer.set_train_mode()
        fwd = training.generator_forward(trainer, batch, hps, CPU)
        own_update = _saved_bytes(training.discriminator_losses, trainer, fwd, CPU)
        with training.frozen(training.judges(trainer)):
            generator_step = _saved_bytes(training.generator_losses, trainer, fwd, hps, CPU)
        kept[enabled] = (own_update, generator_step)
    assert kept[True][0] < kept[False][0] / 10 and kept[True][1] < kept[False][1] / 10, kept
