"""Gradients laid out exactly like their parameters, size-1 dims included.

DDP copies each gradient into a flat bucket through a view with the parameter's strides; a gradient with
other strides (even on a size-1 dim, which autograd itself accepts) triggers "Grad strides do not match bucket
view strides" and an extra copy every step. The relative attention embeddings ([1, 2w+1, k]) used to get one.
"""

from __future__ import annotations

import pytest
import torch

import attentions
from tests.model_nets import build_net_g


def mismatched_grads(module: torch.nn.Module) -> list[str]:
    return [
        f"{name}: grad strides {p.grad.stride()} != {p.stride()}"
        for name, p in module.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    ]


@pytest.mark.parametrize("heads_share", [True, False])
@pytest.mark.parametrize("length", [3, 5, 40])  # shorter than, equal to and longer than the window + 1
def test_relative_attention_gradients_match_the_parameter_layout(heads_share: bool, length: int) -> None:
    torch.manual_seed(0)
    attention = attentions.MultiHeadAttention(16, 16, 2, window_size=4, heads_share=heads_share)
    x = torch.randn(2, 16, length)
    (attention(x, x) * torch.randn(2, 16, length)).sum().backward()
    assert attention.emb_rel_v.grad is not None and attention.emb_rel_k.grad is not None
    assert mismatched_grads(attention) == []


def test_text_encoder_gradients_match_the_parameter_layout(dev_config: dict, golden: dict) -> None:
    """The generator's relative attention lives in its text encoder; the rest of the net is plain convolutions."""
    from text.symbols import symbols

    torch.manual_seed(0)
    net_g = build_net_g(dev_config, len(symbols)).train()
    inputs = golden["inputs"]
    g = net_g.emb_g(inputs["sid"]).unsqueeze(-1)
    names = ["x", "x_lengths", "tone", "language", "bert", "ja_bert", "en_bert"]
    outputs = net_g.enc_p(*[inputs[name] for name in names], g=g)
    sum((o * torch.randn_like(o)).sum() for o in outputs[:3]).backward()
    assert net_g.enc_p.encoder.attn_layers[0].emb_rel_v.grad is not None
    assert mismatched_grads(net_g) == []
