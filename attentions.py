"""Transformer blocks of the text encoder and the transformer coupling flow.

Multi-head self-attention with learned relative-position embeddings (window of +/- ``window_size``
positions, shared by all heads), a convolutional feed-forward block and a channel-first layer norm,
stacked into ``Encoder``. Parameter names and shapes follow Bert-VITS2 2.3 so its checkpoints load here.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# Logit given to masked-out attention scores. The reference uses a finite value (not -inf), so a fully
# masked row (a padded query) attends uniformly instead of producing NaN; we keep it for identical outputs.
MASKED_SCORE = -1e4


class LayerNorm(nn.Module):
    """Layer norm over the channel axis of a ``[b, c, t]`` tensor (parameters ``gamma`` / ``beta``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, -1)  # [b, t, c]
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)  # [b, c, t]


def _relative_index(length: int, device: torch.device) -> Tensor:
    """``index[i, j] = j - i + length - 1``: column of key j in query i's relative window of 2·length−1 slots."""
    positions = torch.arange(length, device=device)
    return positions.unsqueeze(0) - positions.unsqueeze(1) + (length - 1)  # [t, t]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional relative-position embeddings and proximal bias.

    ``window_size`` enables the learned relative key/value embeddings ``emb_rel_k`` / ``emb_rel_v``
    of shape ``[1 or n_heads, 2·window_size+1, channels // n_heads]`` (self-attention only).
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        n_heads: int,
        p_dropout: float = 0.0,
        window_size: int | None = None,
        heads_share: bool = True,
        block_length: int | None = None,
        proximal_bias: bool = False,
        proximal_init: bool = False,
    ) -> None:
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.channels = channels
        self.out_channels = out_channels
        self.n_heads = n_heads
        self.p_dropout = p_dropout
        self.window_size = window_size
        self.heads_share = heads_share
        self.block_length = block_length
        self.proximal_bias = proximal_bias
        self.proximal_init = proximal_init
        self.attn: Tensor | None = None  # last attention weights, kept for inspection like the reference

        self.k_channels = channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)

        if window_size is not None:
            n_heads_rel = 1 if heads_share else n_heads
            rel_stddev = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(n_heads_rel, window_size * 2 + 1, self.k_channels) * rel_stddev)
            self.emb_rel_v = nn.Parameter(torch.randn(n_heads_rel, window_size * 2 + 1, self.k_channels) * rel_stddev)

        nn.init.xavier_uniform_(self.conv_q.weight)
        nn.init.xavier_uniform_(self.conv_k.weight)
        nn.init.xavier_uniform_(self.conv_v.weight)
        if proximal_init:
            # Start keys equal to queries so early attention favours nearby (similar) frames.
            with torch.no_grad():
                self.conv_k.weight.copy_(self.conv_q.weight)
                self.conv_k.bias.copy_(self.conv_q.bias)

    def forward(self, x: Tensor, c: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Attend from queries ``x`` [b, c, t_t] to keys/values ``c`` [b, c, t_s]; mask [b, 1, t_t, t_s]."""
        q = self.conv_q(x)
        k = self.conv_k(c)
        v = self.conv_v(c)
        out, attn = self.attention(q, k, v, mask=attn_mask)
        # Detached: kept through a recomputed (checkpointed) forward, it would hold that recompute's whole graph.
        self.attn = attn.detach()
        return self.conv_o(out)

    def attention(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, d, t_s = key.shape
        t_t = query.size(2)
        query = query.view(b, self.n_heads, self.k_channels, t_t).transpose(2, 3)  # [b, h, t_t, k]
        key = key.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)  # [b, h, t_s, k]
        value = value.view(b, self.n_heads, self.k_channels, t_s).transpose(2, 3)  # [b, h, t_s, k]

        query = query / math.sqrt(self.k_channels)
        scores = torch.matmul(query, key.transpose(-2, -1))  # [b, h, t_t, t_s]
        if self.window_size is not None:
            self._require_self_attention(t_s, t_t, "relative position embeddings")
            rel_keys = self._relative_embeddings(self.emb_rel_k, t_s)  # [1|h, 2t-1, k]
            rel_logits = torch.matmul(query, rel_keys.unsqueeze(0).transpose(-2, -1))  # [b, h, t, 2t-1]
            scores = scores + self._relative_to_absolute(rel_logits)
        if self.proximal_bias:
            self._require_self_attention(t_s, t_t, "proximal bias")
            scores = scores + self._proximal_bias(t_s, scores.device, scores.dtype)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, MASKED_SCORE)
            if self.block_length is not None:
                self._require_self_attention(t_s, t_t, "block-local attention")
                band = torch.ones_like(scores).triu(-self.block_length).tril(self.block_length)
                scores = scores.masked_fill(band == 0, MASKED_SCORE)

        p_attn = self.drop(F.softmax(scores, dim=-1))  # [b, h, t_t, t_s]
        output = torch.matmul(p_attn, value)  # [b, h, t_t, k]
        if self.window_size is not None:
            rel_weights = self._absolute_to_relative(p_attn)  # [b, h, t, 2t-1]
            rel_values = self._relative_embeddings(self.emb_rel_v, t_s)  # [1|h, 2t-1, k]
            output = output + torch.matmul(rel_weights, rel_values.unsqueeze(0))
        output = output.transpose(2, 3).contiguous().view(b, d, t_t)  # [b, c, t_t]
        return output, p_attn

    @staticmethod
    def _require_self_attention(t_s: int, t_t: int, feature: str) -> None:
        if t_s != t_t:
            raise ValueError(
                f"{feature} needs self-attention (equal lengths), got key length {t_s} and query length {t_t}"
            )

    def _relative_embeddings(self, embeddings: Tensor, length: int) -> Tensor:
        """Embeddings for relative offsets -(length-1) .. length-1; offsets beyond the window get zeros."""
        assert self.window_size is not None
        # Zero rows for length-1 offsets beyond the window on each side, then the rows of offsets
        # -(length-1)..length-1, which start at row window_size. One branch-free expression for every length,
        # so that a traced graph (ONNX export) stays right for texts shorter or longer than the traced one.
        # Each head's [n, k] table is padded and the tables stacked: F.pad's backward hands back a narrowed view
        # of the padded gradient, and on the [1, n, k] parameter that view keeps the padded size as the stride of
        # the size-1 head dim. Autograd accepts it, DDP's bucket views do not ("Grad strides do not match bucket
        # view strides", then a copy every step); stack's backward gives a gradient laid out like the parameter.
        padded = torch.stack([F.pad(head, (0, 0, length - 1, length - 1)) for head in embeddings.unbind(0)])
        return padded[:, self.window_size : self.window_size + 2 * length - 1]  # [1|h, 2t-1, k]

    @staticmethod
    def _relative_to_absolute(x: Tensor) -> Tensor:
        """[b, h, t, 2t-1] logits per relative offset -> [b, h, t, t] logits per key position."""
        b, h, length, _ = x.shape
        index = _relative_index(length, x.device).expand(b, h, length, length)
        return torch.gather(x, -1, index)

    @staticmethod
    def _absolute_to_relative(x: Tensor) -> Tensor:
        """[b, h, t, t] weights per key position -> [b, h, t, 2t-1] weights per relative offset (zeros elsewhere)."""
        b, h, length, _ = x.shape
        index = _relative_index(length, x.device).expand(b, h, length, length)
        out = x.new_zeros(b, h, length, 2 * length - 1)
        return out.scatter(-1, index, x)

    @staticmethod
    def _proximal_bias(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Bias -log(1 + |i - j|) that favours attending to nearby positions, [1, 1, t, t]."""
        positions = torch.arange(length, dtype=torch.float32, device=device)
        distance = (positions.unsqueeze(0) - positions.unsqueeze(1)).abs()
        return (-torch.log1p(distance)).to(dtype).unsqueeze(0).unsqueeze(0)


class FFN(nn.Module):
    """Two masked 1-D convolutions with ReLU (or a sigmoid-approximated GELU) between them.

    ``causal`` pads only on the left so position t never sees later frames.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filter_channels: int,
        kernel_size: int,
        p_dropout: float = 0.0,
        activation: str | None = None,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.filter_channels = filter_channels
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.activation = activation
        self.causal = causal

        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: Tensor) -> Tensor:
        if self.kernel_size == 1:
            return x
        if self.causal:
            left, right = self.kernel_size - 1, 0
        else:
            left, right = (self.kernel_size - 1) // 2, self.kernel_size // 2
        return F.pad(x, (left, right))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        x = self.conv_1(self._pad(x * x_mask))  # [b, filter, t]
        if self.activation == "gelu":
            x = x * torch.sigmoid(1.702 * x)
        else:
            x = torch.relu(x)
        x = self.drop(x)
        x = self.conv_2(self._pad(x * x_mask))  # [b, out, t]
        return x * x_mask


class Encoder(nn.Module):
    """Post-norm transformer encoder with relative-position self-attention.

    When ``gin_channels`` (keyword) is non-zero, the speaker embedding ``g`` [b, gin, 1] is projected by
    ``spk_emb_linear`` and added to the hidden states before layer ``cond_layer_idx`` (keyword, default 2).
    ``isflow`` is accepted for signature compatibility with the reference and has no effect.
    """

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int = 1,
        p_dropout: float = 0.0,
        window_size: int = 4,
        isflow: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.filter_channels = filter_channels
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.window_size = window_size
        self.gin_channels = int(kwargs.get("gin_channels", 0) or 0)
        # Without speaker conditioning the injection index is out of range, so it never fires.
        self.cond_layer_idx = n_layers
        if self.gin_channels != 0:
            self.spk_emb_linear = nn.Linear(self.gin_channels, hidden_channels)
            self.cond_layer_idx = int(kwargs.get("cond_layer_idx", 2))
            if not 0 <= self.cond_layer_idx < n_layers:
                raise ValueError(
                    f"cond_layer_idx ({self.cond_layer_idx}) must be in [0, n_layers={n_layers}) when gin_channels "
                    f"is non-zero: the speaker embedding is added before that layer. Use n_layers >= "
                    f"{self.cond_layer_idx + 1} or a smaller cond_layer_idx."
                )
            logger.debug("speaker conditioning: gin_channels=%s at layer %s", self.gin_channels, self.cond_layer_idx)

        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(
                MultiHeadAttention(
                    hidden_channels, hidden_channels, n_heads, p_dropout=p_dropout, window_size=window_size
                )
            )
            self.norm_layers_1.append(LayerNorm(hidden_channels))
            self.ffn_layers.append(
                FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout=p_dropout)
            )
            self.norm_layers_2.append(LayerNorm(hidden_channels))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """x [b, hidden, t], x_mask [b, 1, t], g [b, gin, 1] or None -> [b, hidden, t]."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [b, 1, t, t]
        x = x * x_mask
        for i in range(self.n_layers):
            if i == self.cond_layer_idx and g is not None:
                speaker = self.spk_emb_linear(g.transpose(1, 2)).transpose(1, 2)  # [b, hidden, 1]
                x = (x + speaker) * x_mask
            y = self.drop(self.attn_layers[i](x, x, attn_mask))
            x = self.norm_layers_1[i](x + y)
            y = self.drop(self.ffn_layers[i](x, x_mask))
            x = self.norm_layers_2[i](x + y)
        return x * x_mask
