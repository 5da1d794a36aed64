"""Gradients laid out exactly like their parameters, size-1 dims included.

DDP copies each gradient into a flat bucket through a view with the parameter's strides; a gradient with
other strides (even on a size-1 dim, which autograd itself accepts) triggers "Grad strides do not match bucket
view strides" and an extra copy every step. The relative attention embeddings ([1, 2w+1, k]) used to get one.
"""

from __future__ import annotations

import pytest
import torch

import attentions
import models


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


def test_text_encoder_gradients_match_the_parameter_layout(tiny_model_config: dict) -> None:
    """The generator's relative attention lives in its text encoder; the rest of the net is plain convolutions."""
    torch.manual_seed(0)
    net_g = models.build_generator(tiny_model_config, for_training=True)
    lengths = torch.tensor([17, 12])
    x = torch.randint(1, net_g.n_vocab, (2, 17))
    zeros = torch.zeros_like(x)
    bert = [torch.randn(2, 1024, 17) for _ in range(3)]
    g = net_g.emb_g(torch.tensor([0, 1])).unsqueeze(-1)
    outputs = net_g.enc_p(x, lengths, zeros, zeros, *bert, g=g)
    sum((o * torch.randn_like(o)).sum() for o in outputs[:3]).backward()
    assert net_g.enc_p.encoder.attn_layers[0].emb_rel_v.grad is not None
    assert mismatched_grads(net_g) == []
