"""A reference-like `SynthesizerTrn.infer` for timing side by side with ours (bench/infer.py).

The reference implementation is not available here, so this runs OUR modules and weights with the
places where our forward code departs from the reference's known algorithm put back the reference's way
(written from the algorithm's description, not from its source):

* relative-position self-attention: the reference converts between relative and absolute positions with
  pad-and-reshape (pad the last axis, flatten, pad again, view with one more column and slice) and slices
  the embedding table with Python-level length checks; it divides the query by sqrt(k) once for the scores
  and again for the relative logits. Ours uses a gather / scatter with an index table and a branch-free
  embedding slice.
* the HiFi-GAN decoder and its residual blocks: the reference sums the resblocks of a stage in place
  (`xs += block(x)`) and divides out of place; inside a block every activation and residual sum makes a new
  tensor (`xt = leaky_relu(xt)`, `x = xt + x`). Ours also works in place on fresh convolution outputs.

Everything else (text encoder, duration predictors, flows, the decoder's convolutions, the length
regulation) already runs the same torch operations in the same order in both. Both sides get the same
(weight-norm folded) weights and the same noise. Use `with reference_like(): net.infer(...)`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

import attentions
import models
import modules
from modules import LRELU_SLOPE


def _relative_embeddings(self: attentions.MultiHeadAttention, embeddings: Tensor, length: int) -> Tensor:
    pad_length = max(length - (self.window_size + 1), 0)
    start = max((self.window_size + 1) - length, 0)
    padded = F.pad(embeddings, [0, 0, pad_length, pad_length, 0, 0]) if pad_length > 0 else embeddings
    return padded[:, start : start + 2 * length - 1]


def _relative_to_absolute(x: Tensor) -> Tensor:
    batch, heads, length, _ = x.size()
    x = F.pad(x, [0, 1])  # one extra column
    flat = x.view(batch, heads, length * 2 * length)
    flat = F.pad(flat, [0, length - 1])
    return flat.view(batch, heads, length + 1, 2 * length - 1)[:, :, :length, length - 1 :]


def _absolute_to_relative(x: Tensor) -> Tensor:
    batch, heads, length, _ = x.size()
    x = F.pad(x, [0, length - 1])
    flat = x.view(batch, heads, length**2 + length * (length - 1))
    flat = F.pad(flat, [length, 0])  # skew so that the view below lines offsets up
    return flat.view(batch, heads, length, 2 * length)[:, :, :, 1:]


def _attention(
    self: attentions.MultiHeadAttention, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    b, d, t_s = key.shape
    t_t = query.size(2)
    query = query.view(b, self.n_heads, self.k_channels, t_t).transpose(2, 3)
    key = key.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)
    value = value.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)
    scores = torch.matmul(query / math.sqrt(self.k_channels), key.transpose(-2, -1))
    if self.window_size is not None:
        rel_keys = _relative_embeddings(self, self.emb_rel_k, t_s)
        rel_logits = torch.matmul(query / math.sqrt(self.k_channels), rel_keys.unsqueeze(0).transpose(-2, -1))
        scores = scores + _relative_to_absolute(rel_logits)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, -1e4)
    p_attn = self.drop(F.softmax(scores, dim=-1))
    output = torch.matmul(p_attn, value)
    if self.window_size is not None:
        rel_weights = _absolute_to_relative(p_attn)
        rel_values = _relative_embeddings(self, self.emb_rel_v, t_s)
        output = output + torch.matmul(rel_weights, rel_values.unsqueeze(0))
    output = output.transpose(2, 3).contiguous().view(b, d, t_t)
    return output, p_attn


def _decoder_forward(self: models.Generator, x: Tensor, g: Tensor | None = None) -> Tensor:
    x = self.conv_pre(x)
    if g is not None:
        x = x + self.cond(g)
    for i in range(self.num_upsamples):
        x = F.leaky_relu(x, LRELU_SLOPE)
        x = self.ups[i](x)
        xs = None
        for j in range(self.num_kernels):
            if xs is None:
                xs = self.resblocks[i * self.num_kernels + j](x)
            else:
                xs += self.resblocks[i * self.num_kernels + j](x)
        x = xs / self.num_kernels
    x = F.leaky_relu(x)
    x = self.conv_post(x)
    return torch.tanh(x)


def _resblock1_forward(self: modules.ResBlock1, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
    for c1, c2 in zip(self.convs1, self.convs2):
        xt = F.leaky_relu(x, LRELU_SLOPE)
        if x_mask is not None:
            xt = xt * x_mask
        xt = c1(xt)
        xt = F.leaky_relu(xt, LRELU_SLOPE)
        if x_mask is not None:
            xt = xt * x_mask
        xt = c2(xt)
        x = xt + x
    if x_mask is not None:
        x = x * x_mask
    return x


def _resblock2_forward(self: modules.ResBlock2, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
    for conv in self.convs:
        xt = F.leaky_relu(x, LRELU_SLOPE)
        if x_mask is not None:
            xt = xt * x_mask
        x = conv(xt) + x
    if x_mask is not None:
        x = x * x_mask
    return x


@contextlib.contextmanager
def reference_like() -> Iterator[None]:
    """Within the block, attention and the decoder run the reference's way (see the module docstring)."""
    patches = [
        (attentions.MultiHeadAttention, "attention", _attention),
        (models.Generator, "forward", _decoder_forward),
        (modules.ResBlock1, "forward", _resblock1_forward),
        (modules.ResBlock2, "forward", _resblock2_forward),
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, function in patches:
        setattr(owner, name, function)
    try:
        yield
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)
