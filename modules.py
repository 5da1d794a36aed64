"""Building blocks of the synthesizer: norms, convolution stacks, HiFi-GAN residual blocks and flows.

Parameter names, shapes and the order in which submodules are created follow Bert-VITS2 2.3: the names
make reference checkpoints load, and the creation order makes a net built under a given seed draw the
same random initial weights as the reference.

Flows share one calling convention: ``flow(x, x_mask, g=None, reverse=False)`` returns ``(y, logdet)``
with logdet [b] going forward and just ``x`` in reverse.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import attentions
from attentions import LayerNorm  # one channel-first layer norm, reachable under both reference names
from commons import fused_add_tanh_sigmoid_multiply, get_padding, init_weights, remove_weight_norm, weight_norm
from transforms import piecewise_rational_quadratic_transform

LRELU_SLOPE = 0.1


def _zero_(layer: nn.Conv1d) -> nn.Conv1d:
    """Zero a layer's weight and bias. Used on the output layer of every coupling flow, so a fresh flow
    starts as the identity map (as in the reference)."""
    layer.weight.data.zero_()
    layer.bias.data.zero_()
    return layer


class ConvReluNorm(nn.Module):
    """Conv -> LayerNorm -> ReLU -> dropout, ``n_layers`` times, plus a zero-initialised residual projection."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        kernel_size: int,
        n_layers: int,
        p_dropout: float,
    ) -> None:
        super().__init__()
        if n_layers <= 1:
            raise ValueError(f"ConvReluNorm needs n_layers > 1, got {n_layers}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.n_layers = n_layers
        self.p_dropout = p_dropout

        self.conv_layers = nn.ModuleList()
        self.norm_layers = nn.ModuleList()
        self.conv_layers.append(nn.Conv1d(in_channels, hidden_channels, kernel_size, padding=kernel_size // 2))
        self.norm_layers.append(LayerNorm(hidden_channels))
        self.relu_drop = nn.Sequential(nn.ReLU(), nn.Dropout(p_dropout))
        for _ in range(n_layers - 1):
            self.conv_layers.append(nn.Conv1d(hidden_channels, hidden_channels, kernel_size, padding=kernel_size // 2))
            self.norm_layers.append(LayerNorm(hidden_channels))
        self.proj = _zero_(nn.Conv1d(hidden_channels, out_channels, 1))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """x [b, in, t], x_mask [b, 1, t] -> [b, out, t] (out must equal in for the residual)."""
        x_org = x
        for conv, norm in zip(self.conv_layers, self.norm_layers):
            x = self.relu_drop(norm(conv(x * x_mask)))  # [b, hidden, t]
        return (x_org + self.proj(x)) * x_mask


class DDSConv(nn.Module):
    """Dilated, depth-wise separable convolutions (dilation kernel_size**i), each in a residual block."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.n_layers = n_layers
        self.p_dropout = p_dropout

        self.drop = nn.Dropout(p_dropout)
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size**i
            padding = get_padding(kernel_size, dilation)
            self.convs_sep.append(
                nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dilation, padding=padding)
            )
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(LayerNorm(channels))
            self.norms_2.append(LayerNorm(channels))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """x [b, c, t], x_mask [b, 1, t], g (added to x) [b, c, t] or None -> [b, c, t]."""
        if g is not None:
            x = x + g
        for i in range(self.n_layers):
            y = self.convs_sep[i](x * x_mask)
            y = F.gelu(self.norms_1[i](y))
            y = self.convs_1x1[i](y)
            y = F.gelu(self.norms_2[i](y))
            x = x + self.drop(y)
        return x * x_mask


class WN(nn.Module):
    """WaveNet-style stack: dilated convolutions with gated activations, residual and skip outputs.

    With ``gin_channels`` the conditioning ``g`` [b, gin, 1] is projected once by ``cond_layer`` and a
    2*hidden slice is added inside each layer's gate.
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN needs an odd kernel_size, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.p_dropout = p_dropout

        # Registered before cond_layer (state_dict order), but cond_layer is drawn first (random stream).
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels != 0:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))
        for i in range(n_layers):
            dilation = dilation_rate**i
            self.in_layers.append(
                weight_norm(
                    nn.Conv1d(
                        hidden_channels,
                        2 * hidden_channels,
                        kernel_size,
                        dilation=dilation,
                        padding=get_padding(kernel_size, dilation),
                    )
                )
            )
            # The last layer only feeds the skip sum, so it needs no residual half.
            res_skip_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, res_skip_channels, 1)))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, **kwargs) -> Tensor:
        """x [b, hidden, t], x_mask [b, 1, t], g [b, gin, 1] or None -> [b, hidden, t]."""
        hidden = self.hidden_channels
        output = torch.zeros_like(x)
        if g is not None:
            g = self.cond_layer(g)  # [b, 2 * hidden * n_layers, 1]
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)  # [b, 2 * hidden, t]
            if g is not None:
                g_l = g[:, i * 2 * hidden : (i + 1) * 2 * hidden, :]
            else:
                g_l = torch.zeros_like(x_in)
            acts = self.drop(fused_add_tanh_sigmoid_multiply(x_in, g_l, hidden))  # [b, hidden, t]
            res_skip_acts = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip_acts[:, :hidden, :]) * x_mask
                output = output + res_skip_acts[:, hidden:, :]
            else:
                output = output + res_skip_acts
        return output * x_mask

    def remove_weight_norm(self) -> None:
        if self.gin_channels != 0:
            remove_weight_norm(self.cond_layer)
        for layer in self.in_layers:
            remove_weight_norm(layer)
        for layer in self.res_skip_layers:
            remove_weight_norm(layer)


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type 1: per dilation, a dilated conv then a plain conv, both after leaky ReLU."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            [
                weight_norm(
                    nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d))
                )
                for d in dilation
            ]
        )
        self.convs1.apply(init_weights)
        self.convs2 = nn.ModuleList(
            [
                weight_norm(
                    nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size, 1))
                )
                for _ in dilation
            ]
        )
        self.convs2.apply(init_weights)

    def forward(self, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
        """x [b, c, t], x_mask [b, 1, t] or None -> [b, c, t]; or rows [b, c, 1, t] (`to_rows`) without a mask."""
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = apply_conv(c1, _masked(F.leaky_relu(x, LRELU_SLOPE), x_mask))
            # In place on the fresh convolution outputs, saving two [b, c, t] buffers per step (the decoder's
            # largest tensors); a convolution's backward needs its input and weight, not its output.
            xt = apply_conv(c2, _masked(F.leaky_relu_(xt, LRELU_SLOPE), x_mask))
            x = xt.add_(x)
        return _masked(x, x_mask)

    def remove_weight_norm(self) -> None:
        for layer in [*self.convs1, *self.convs2]:
            remove_weight_norm(layer)


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2: one dilated conv per dilation, after leaky ReLU."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: tuple[int, ...] = (1, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                weight_norm(
                    nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d))
                )
                for d in dilation
            ]
        )
        self.convs.apply(init_weights)

    def forward(self, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
        """x [b, c, t], x_mask [b, 1, t] or None -> [b, c, t]; or rows [b, c, 1, t] (`to_rows`) without a mask."""
        for conv in self.convs:
            xt = _masked(F.leaky_relu(x, LRELU_SLOPE), x_mask)
            x = apply_conv(conv, xt).add_(x)  # in place on the fresh convolution output, as in ResBlock1
        return _masked(x, x_mask)

    def remove_weight_norm(self) -> None:
        for layer in self.convs:
            remove_weight_norm(layer)


def _masked(x: Tensor, x_mask: Tensor | None) -> Tensor:
    return x if x_mask is None else x * x_mask


def to_rows(x: Tensor) -> Tensor:
    """[b, c, t] -> [b, c, 1, t] stored time-major (channels last): the layout in which oneDNN's CPU
    convolutions run fastest (1.3-1.8x the channel-major [b, c, t] for the decoder's 16-256 channels)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def apply_conv(conv: nn.Conv1d | nn.ConvTranspose1d, x: Tensor) -> Tensor:
    """`conv(x)` for x [b, c, t], or the same convolution as a 2-D one over rows [b, c, 1, t] (see `to_rows`).

    The rows form reads `conv.weight` directly, so it needs plain weights (weight norm folded) and zero padding.
    """
    if x.dim() == 3:
        return conv(x)
    weight = conv.weight.unsqueeze(2)  # [out, in, 1, k] (transposed: [in, out, 1, k])
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose2d(
            x,
            weight,
            conv.bias,
            stride=(1, conv.stride[0]),
            padding=(0, conv.padding[0]),
            output_padding=(0, conv.output_padding[0]),
            groups=conv.groups,
            dilation=(1, conv.dilation[0]),
        )
    return F.conv2d(
        x,
        weight,
        conv.bias,
        stride=(1, conv.stride[0]),
        padding=(0, conv.padding[0]),
        dilation=(1, conv.dilation[0]),
        groups=conv.groups,
    )


class Log(nn.Module):
    """y = log(x) on the masked positions (x clamped at 1e-5); used on durations, which are positive."""

    def forward(
        self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False, **kwargs
    ) -> tuple[Tensor, Tensor] | Tensor:
        if not reverse:
            y = torch.log(torch.clamp_min(x, 1e-5)) * x_mask
            logdet = torch.sum(-y, [1, 2])  # log|d log(x)/dx| = -log(x)
            return y, logdet
        return torch.exp(x) * x_mask


class Flip(nn.Module):
    """Reverse the channel order (so the next coupling layer transforms the other half); volume preserving."""

    def forward(
        self, x: Tensor, x_mask: Tensor | None = None, g: Tensor | None = None, reverse: bool = False, **kwargs
    ) -> tuple[Tensor, Tensor] | Tensor:
        x = torch.flip(x, [1])
        if not reverse:
            return x, x.new_zeros(x.size(0))
        return x


class ElementwiseAffine(nn.Module):
    """y = m + exp(logs) * x per channel, with m = logs = 0 at construction (identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(
        self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False, **kwargs
    ) -> tuple[Tensor, Tensor] | Tensor:
        if not reverse:
            y = (self.m + torch.exp(self.logs) * x) * x_mask
            logdet = torch.sum(self.logs * x_mask, [1, 2])
            return y, logdet
        return (x - self.m) * torch.exp(-self.logs) * x_mask


class _AffineCoupling(nn.Module):
    """Affine coupling: the second channel half is shifted (and, unless mean_only, scaled) by statistics
    computed from the first half. Subclasses provide ``pre``, ``enc`` and ``post``."""

    half_channels: int
    mean_only: bool
    pre: nn.Conv1d
    enc: nn.Module
    post: nn.Conv1d

    def forward(
        self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False
    ) -> tuple[Tensor, Tensor] | Tensor:
        """x [b, channels, t], x_mask [b, 1, t], g [b, gin, 1] or None."""
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)  # [b, half, t] each
        h = self.pre(x0) * x_mask  # [b, hidden, t]
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask  # [b, half * (2 - mean_only), t]
        if self.mean_only:
            m = stats
            logs = torch.zeros_like(m)
        else:
            m, logs = torch.split(stats, [self.half_channels] * 2, 1)
        if not reverse:
            x1 = m + x1 * torch.exp(logs) * x_mask
            logdet = torch.sum(logs, [1, 2])
            return torch.cat([x0, x1], 1), logdet
        x1 = (x1 - m) * torch.exp(-logs) * x_mask
        return torch.cat([x0, x1], 1)


class ResidualCouplingLayer(_AffineCoupling):
    """Affine coupling whose statistics come from a WN stack."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        p_dropout: float = 0,
        gin_channels: int = 0,
        mean_only: bool = False,
    ) -> None:
        if channels % 2 != 0:
            raise ValueError(f"channels must be even for a coupling layer, got {channels}")
        super().__init__()
        self.channels = channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.n_layers = n_layers
        self.half_channels = channels // 2
        self.mean_only = mean_only

        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(
            hidden_channels, kernel_size, dilation_rate, n_layers, p_dropout=p_dropout, gin_channels=gin_channels
        )
        self.post = _zero_(nn.Conv1d(hidden_channels, self.half_channels * (2 - mean_only), 1))


class TransformerCouplingLayer(_AffineCoupling):
    """Affine coupling whose statistics come from a relative-position transformer encoder (VITS2).

    ``wn_sharing_parameter``: an existing ``attentions.Encoder`` to use (shared between layers) instead of
    building one.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        n_layers: int,
        n_heads: int,
        p_dropout: float = 0,
        filter_channels: int = 0,
        mean_only: bool = False,
        wn_sharing_parameter: nn.Module | None = None,
        gin_channels: int = 0,
    ) -> None:
        if channels % 2 != 0:
            raise ValueError(f"channels must be even for a coupling layer, got {channels}")
        super().__init__()
        self.channels = channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.n_layers = n_layers
        self.half_channels = channels // 2
        self.mean_only = mean_only

        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        if wn_sharing_parameter is None:
            self.enc = attentions.Encoder(
                hidden_channels,
                filter_channels,
                n_heads,
                n_layers,
                kernel_size,
                p_dropout,
                isflow=True,
                gin_channels=gin_channels,
            )
        else:
            self.enc = wn_sharing_parameter
        self.post = _zero_(nn.Conv1d(hidden_channels, self.half_channels * (2 - mean_only), 1))


class ConvFlow(nn.Module):
    """Coupling layer with a piecewise rational-quadratic spline (linear tails) on the second half.

    The spline parameters per position come from a DDSConv over the first half. ``proj`` is zero at
    construction: equal bins and fixed knot derivatives, the same smooth monotonic map for every input
    (close to, but not exactly, the identity).
    """

    def __init__(
        self,
        in_channels: int,
        filter_channels: int,
        kernel_size: int,
        n_layers: int,
        num_bins: int = 10,
        tail_bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.filter_channels = filter_channels
        self.kernel_size = kernel_size
        self.n_layers = n_layers
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.half_channels = in_channels // 2

        self.pre = nn.Conv1d(self.half_channels, filter_channels, 1)
        self.convs = DDSConv(filter_channels, kernel_size, n_layers, p_dropout=0.0)
        # Per channel and position: num_bins widths, num_bins heights, num_bins - 1 inner derivatives.
        self.proj = _zero_(nn.Conv1d(filter_channels, self.half_channels * (num_bins * 3 - 1), 1))

    def forward(
        self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False
    ) -> tuple[Tensor, Tensor] | Tensor:
        """x [b, in, t], x_mask [b, 1, t], g [b, filter, t] or None."""
        x0, x1 = torch.split(x, [self.half_channels] * 2, 1)  # [b, half, t] each
        h = self.pre(x0)
        h = self.convs(h, x_mask, g=g)
        h = self.proj(h) * x_mask  # [b, half * (3 * bins - 1), t]

        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # [b, half, t, 3 * bins - 1]
        scale = math.sqrt(self.filter_channels)
        unnormalized_widths = h[..., : self.num_bins] / scale
        unnormalized_heights = h[..., self.num_bins : 2 * self.num_bins] / scale
        unnormalized_derivatives = h[..., 2 * self.num_bins :]

        x1, logabsdet = piecewise_rational_quadratic_transform(
            x1,
            unnormalized_widths,
            unnormalized_heights,
            unnormalized_derivatives,
            inverse=reverse,
            tails="linear",
            tail_bound=self.tail_bound,
        )
        x = torch.cat([x0, x1], 1) * x_mask
        if not reverse:
            return x, torch.sum(logabsdet * x_mask, [1, 2])
        return x


__all__ = [
    "LRELU_SLOPE",
    "LayerNorm",
    "ConvReluNorm",
    "DDSConv",
    "WN",
    "ResBlock1",
    "ResBlock2",
    "Log",
    "Flip",
    "ElementwiseAffine",
    "ResidualCouplingLayer",
    "TransformerCouplingLayer",
    "ConvFlow",
]
