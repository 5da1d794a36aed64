"""Bert-VITS2 2.3 networks: the synthesizer (generator side) and the three discriminators.

Module and parameter names follow the reference exactly so its checkpoints load with ``strict=True``:
``SynthesizerTrn`` (children ``enc_p``, ``dec``, ``enc_q``, ``flow``, ``sdp``, ``dp``, ``emb_g`` / ``ref_enc``),
``MultiPeriodDiscriminator``, ``DurationDiscriminator`` and ``WavLMDiscriminator``.

Random draws go through the module-level ``torch.randn`` / ``torch.randn_like`` / ``torch.rand`` functions,
looked up at call time, so tests can replace them (e.g. with zeros) to make the training forward deterministic.
Draws the reference makes on the CPU generator stay there (``commons.host_random``: same numbers on every device).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import Conv1d, Conv2d, ConvTranspose1d
from torch.nn import functional as F
from torch.nn.utils import spectral_norm
from torch.utils.checkpoint import checkpoint

import attentions
import commons
import modules
import monotonic_align
from commons import get_padding, init_weights, is_weight_normed, release_normed_weight, remove_weight_norm, weight_norm
from modules import LRELU_SLOPE
from text.symbols import num_languages, num_tones

logger = logging.getLogger(__name__)

# Width of the BERT features fed to the text encoder (all three language models have 1024 channels).
BERT_CHANNELS = 1024
# Filter width of the stochastic duration predictor's constructor call in the reference; the predictor
# ignores it and uses its input width instead (kept so the call site reads like the reference).
SDP_FILTER_CHANNELS_ARG = 192
# The deterministic duration predictor always has this many filter channels, whatever the config says.
DP_FILTER_CHANNELS = 256
# The posterior encoder's WaveNet shape is fixed in the reference, independent of ``n_layers_q``.
POSTERIOR_KERNEL_SIZE, POSTERIOR_DILATION_RATE, POSTERIOR_N_LAYERS = 5, 1, 16
# Kernel size of the FFN / WN convolutions inside the flow's coupling layers.
FLOW_KERNEL_SIZE = 5


class Latents(NamedTuple):
    """Prior/posterior tensors of the training forward, each [b, inter, t_spec]."""

    z: Tensor
    z_p: Tensor
    m_p: Tensor
    logs_p: Tensor
    m_q: Tensor
    logs_q: Tensor


class DurationTerms(NamedTuple):
    """Text hidden states [b, hidden, t_x] and log-durations [b, 1, t_x]: predicted (dp), MAS target, sdp."""

    x: Tensor
    logw: Tensor
    logw_: Tensor
    logw_sdp: Tensor


class SynthesizerOutput(NamedTuple):
    """Training forward result; unpacks like the reference's 9-tuple."""

    o: Tensor  # [b, 1, segment_size · hop]
    l_length: Tensor  # [b]
    attn: Tensor  # [b, 1, t_spec, t_x]
    ids_slice: Tensor  # [b]
    x_mask: Tensor  # [b, 1, t_x]
    y_mask: Tensor  # [b, 1, t_spec]
    latents: Latents
    durations: DurationTerms
    g: Tensor  # [b, gin, 1]


class InferenceLatents(NamedTuple):
    """Latents of inference, each [b, inter, t_y]."""

    z: Tensor
    z_p: Tensor
    m_p: Tensor
    logs_p: Tensor


class FramePrior(NamedTuple):
    """The prior expanded from phones to frames (first half of ``infer``)."""

    m_p: Tensor  # [b, inter, t_y]
    logs_p: Tensor  # [b, inter, t_y]
    y_mask: Tensor  # [b, 1, t_y]
    attn: Tensor  # [b, 1, t_y, t_x]


class InferenceOutput(NamedTuple):
    """``infer`` result; unpacks like the reference's ``(o, attn, y_mask, (z, z_p, m_p, logs_p))``."""

    o: Tensor  # [b, 1, t_y · hop]
    attn: Tensor  # [b, 1, t_y, t_x]
    y_mask: Tensor  # [b, 1, t_y]
    latents: InferenceLatents


def _sequence_mask(lengths: Tensor, max_length: int | None, dtype: torch.dtype) -> Tensor:
    return torch.unsqueeze(commons.sequence_mask(lengths, max_length), 1).to(dtype)  # [b, 1, t]


class DurationDiscriminator(nn.Module):
    """VITS2 duration discriminator: scores (text hidden, log-duration) pairs with a BiLSTM.

    ``forward`` returns ``[prob(dur_r), prob(dur_hat)]``, each [b, t_x, 1] in (0, 1).
    """

    def __init__(
        self, in_channels: int, filter_channels: int, kernel_size: int, p_dropout: float, gin_channels: int = 0
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.filter_channels = filter_channels
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.gin_channels = gin_channels

        self.drop = nn.Dropout(p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = modules.LayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = modules.LayerNorm(filter_channels)
        self.dur_proj = nn.Conv1d(1, filter_channels, 1)
        self.LSTM = nn.LSTM(2 * filter_channels, filter_channels, batch_first=True, bidirectional=True)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)
        self.output_layer = nn.Sequential(nn.Linear(2 * filter_channels, 1), nn.Sigmoid())

    def forward_probability(self, x: Tensor, dur: Tensor) -> Tensor:
        dur = self.dur_proj(dur)  # [b, filter, t]
        x = torch.cat([x, dur], dim=1).transpose(1, 2)  # [b, t, 2·filter]
        x, _ = self.LSTM(x)  # [b, t, 2·filter]
        return self.output_layer(x)  # [b, t, 1]

    def forward(
        self, x: Tensor, x_mask: Tensor, dur_r: Tensor, dur_hat: Tensor, g: Tensor | None = None
    ) -> list[Tensor]:
        # The discriminator must not push gradients into the text encoder or speaker embedding.
        x = torch.detach(x)
        if g is not None:
            x = x + self.cond(torch.detach(g))
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * x_mask))))
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * x_mask))))  # [b, filter, t]
        return [self.forward_probability(x, dur) for dur in (dur_r, dur_hat)]


class Recomputable:
    """A net whose stages can recompute their activations in the backward pass (``train.activation_checkpointing``).

    Off by default: the flag is plain module state, not a parameter or buffer, so checkpoints are unchanged. When
    on, and only while training with gradients, each stage runs under ``torch.utils.checkpoint`` (non-reentrant:
    works with DDP and with inputs that need no gradient; the RNG state is replayed, so dropout draws agree)."""

    checkpoint_activations: bool = False

    def set_checkpointing(self, enabled: bool) -> None:
        """Turn checkpointing on or off; when on, its weight-normed layers also drop their normed weight after
        each forward (``commons.release_normed_weight``: the pass keeps what its backward needs, and the copy
        left on the layer would hold memory checkpointing otherwise frees, 0.17 GiB for the period/scale
        discriminators)."""
        self.checkpoint_activations = enabled
        for handle in getattr(self, "_weight_releases", ()):
            handle.remove()
        layers = [m for m in self.modules() if is_weight_normed(m)] if enabled else []
        self._weight_releases = [layer.register_forward_hook(release_normed_weight) for layer in layers]

    def _recomputing(self) -> bool:
        return self.checkpoint_activations and self.training and torch.is_grad_enabled()

    def _run_stage(self, stage: Any, *args: Any) -> Any:
        if self._recomputing():
            return checkpoint(stage, *args, use_reentrant=False)
        return stage(*args)


def set_activation_checkpointing(enabled: bool, *nets: nn.Module | None) -> int:
    """Turn activation checkpointing on or off in every recomputable part of ``nets``; returns how many parts:
    the decoder's upsampling stages, the flow's coupling layers and each multi-period/scale discriminator."""
    parts = 0
    for net in nets:
        if net is None:
            continue
        for module in net.modules():
            if isinstance(module, Recomputable):
                module.set_checkpointing(enabled)
                parts += 1
    return parts


class TransformerCouplingBlock(Recomputable, nn.Module):
    """``n_flows`` transformer coupling layers, each followed by a channel flip."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        n_flows: int = 4,
        gin_channels: int = 0,
        share_parameter: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.n_layers = n_layers
        self.n_flows = n_flows
        self.gin_channels = gin_channels

        # Sharing one encoder across couplings. (The reference refers to an encoder class it does not define
        # here and cannot build this; we share a regular conditioned encoder instead.)
        self.wn = (
            attentions.Encoder(
                hidden_channels,
                filter_channels,
                n_heads,
                n_layers,
                kernel_size,
                p_dropout,
                isflow=True,
                gin_channels=gin_channels,
            )
            if share_parameter
            else None
        )
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                modules.TransformerCouplingLayer(
                    channels,
                    hidden_channels,
                    kernel_size,
                    n_layers,
                    n_heads,
                    p_dropout,
                    filter_channels,
                    mean_only=True,
                    wn_sharing_parameter=self.wn,
                    gin_channels=gin_channels,
                )
            )
            self.flows.append(modules.Flip())

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        return _run_flows(self, x, x_mask, g, reverse)


class ResidualCouplingBlock(Recomputable, nn.Module):
    """``n_flows`` WaveNet residual coupling layers (``n_layers`` WN layers each), each followed by a flip."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.n_layers = n_layers
        self.n_flows = n_flows
        self.gin_channels = gin_channels

        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                modules.ResidualCouplingLayer(
                    channels,
                    hidden_channels,
                    kernel_size,
                    dilation_rate,
                    n_layers,
                    gin_channels=gin_channels,
                    mean_only=True,
                )
            )
            self.flows.append(modules.Flip())

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        return _run_flows(self, x, x_mask, g, reverse)


def _forward_flow(flow: nn.Module, x: Tensor, x_mask: Tensor, g: Tensor | None) -> Tensor:
    return flow(x, x_mask, g=g, reverse=False)[0]


def _run_flows(block: TransformerCouplingBlock | ResidualCouplingBlock, x, x_mask, g, reverse: bool) -> Tensor:
    """Apply volume-preserving coupling flows forwards (dropping log-dets) or inverted in reverse order."""
    if not reverse:
        for flow in block.flows:
            x = block._run_stage(functools.partial(_forward_flow, flow), x, x_mask, g)
    else:
        for flow in reversed(block.flows):
            x = flow(x, x_mask, g=g, reverse=True)
    return x


class StochasticDurationPredictor(nn.Module):
    """Flow-based duration model (VITS).

    Forward mode returns the per-item negative log-likelihood bound ``nll + log q`` [b] of durations ``w``;
    reverse mode samples log-durations [b, 1, t] from noise scaled by ``noise_scale``.
    The ``filter_channels`` argument is ignored: the reference uses ``in_channels`` everywhere.
    """

    def __init__(
        self,
        in_channels: int,
        filter_channels: int,
        kernel_size: int,
        p_dropout: float,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        filter_channels = in_channels  # reference behaviour; parameter shapes depend on it
        self.in_channels = in_channels
        self.filter_channels = filter_channels
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.n_flows = n_flows
        self.gin_channels = gin_channels

        self.log_flow = modules.Log()
        self.flows = self._make_flows(n_flows, filter_channels, kernel_size)

        self.post_pre = nn.Conv1d(1, filter_channels, 1)
        self.post_proj = nn.Conv1d(filter_channels, filter_channels, 1)
        self.post_convs = modules.DDSConv(filter_channels, kernel_size, n_layers=3, p_dropout=p_dropout)
        self.post_flows = self._make_flows(4, filter_channels, kernel_size)

        self.pre = nn.Conv1d(in_channels, filter_channels, 1)
        self.proj = nn.Conv1d(filter_channels, filter_channels, 1)
        self.convs = modules.DDSConv(filter_channels, kernel_size, n_layers=3, p_dropout=p_dropout)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, filter_channels, 1)

    @staticmethod
    def _make_flows(n_flows: int, filter_channels: int, kernel_size: int) -> nn.ModuleList:
        flows = nn.ModuleList([modules.ElementwiseAffine(2)])
        for _ in range(n_flows):
            flows.append(modules.ConvFlow(2, filter_channels, kernel_size, n_layers=3))
            flows.append(modules.Flip())
        return flows

    def forward(
        self,
        x: Tensor,
        x_mask: Tensor,
        w: Tensor | None = None,
        g: Tensor | None = None,
        reverse: bool = False,
        noise_scale: float | Tensor = 1.0,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``noise`` [b, 2, t] replaces the standard-normal draw of reverse mode (ONNX export, parity tests)."""
        # Duration training must not shape the text encoder or speaker embedding.
        x = self.pre(torch.detach(x))
        if g is not None:
            x = x + self.cond(torch.detach(g))
        x = self.convs(x, x_mask)
        x = self.proj(x) * x_mask  # [b, filter, t]
        if reverse:
            return self._sample_log_durations(x, x_mask, noise_scale, noise)
        if w is None:
            raise ValueError("StochasticDurationPredictor needs durations w in forward mode (reverse=False)")
        return self._negative_log_likelihood(x, x_mask, w)

    def _negative_log_likelihood(self, x: Tensor, x_mask: Tensor, w: Tensor) -> Tensor:
        # Variational dequantisation: a posterior over (u, z1) conditioned on x and w.
        h_w = self.post_pre(w)
        h_w = self.post_convs(h_w, x_mask)
        h_w = self.post_proj(h_w) * x_mask  # [b, filter, t]
        e_q = commons.host_random(torch.randn, (w.size(0), 2, w.size(2)), x.device).to(x.dtype) * x_mask  # [b, 2, t]
        z_q = e_q
        logdet_tot_q = 0
        for flow in self.post_flows:
            z_q, logdet_q = flow(z_q, x_mask, g=(x + h_w))
            logdet_tot_q = logdet_tot_q + logdet_q
        z_u, z1 = torch.split(z_q, [1, 1], 1)
        u = torch.sigmoid(z_u) * x_mask
        z0 = (w - u) * x_mask
        logdet_tot_q = logdet_tot_q + torch.sum((F.logsigmoid(z_u) + F.logsigmoid(-z_u)) * x_mask, [1, 2])
        logq = torch.sum(-0.5 * (math.log(2 * math.pi) + (e_q**2)) * x_mask, [1, 2]) - logdet_tot_q

        logdet_tot = 0
        z0, logdet = self.log_flow(z0, x_mask)
        logdet_tot = logdet_tot + logdet
        z = torch.cat([z0, z1], 1)  # [b, 2, t]
        for flow in self.flows:
            z, logdet = flow(z, x_mask, g=x, reverse=False)
            logdet_tot = logdet_tot + logdet
        nll = torch.sum(0.5 * (math.log(2 * math.pi) + (z**2)) * x_mask, [1, 2]) - logdet_tot
        return nll + logq  # [b]

    def _sample_log_durations(
        self, x: Tensor, x_mask: Tensor, noise_scale: float | Tensor, noise: Tensor | None = None
    ) -> Tensor:
        flows = list(reversed(self.flows))
        # The last flip before the affine layer only permutes the unused channel; the reference skips it.
        flows = flows[:-2] + [flows[-1]]
        if noise is None:
            noise = commons.host_random(torch.randn, (x.size(0), 2, x.size(2)), x.device).to(x.dtype)
        z = noise * noise_scale  # [b, 2, t]
        for flow in flows:
            z = flow(z, x_mask, g=x, reverse=True)
        z0, _ = torch.split(z, [1, 1], 1)
        return z0  # [b, 1, t]


class DurationPredictor(nn.Module):
    """Deterministic log-duration predictor: two conv + ReLU + layer-norm blocks and a 1x1 projection."""

    def __init__(
        self, in_channels: int, filter_channels: int, kernel_size: int, p_dropout: float, gin_channels: int = 0
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.filter_channels = filter_channels
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.gin_channels = gin_channels

        self.drop = nn.Dropout(p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = modules.LayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = modules.LayerNorm(filter_channels)
        self.proj = nn.Conv1d(filter_channels, 1, 1)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        x = torch.detach(x)
        if g is not None:
            x = x + self.cond(torch.detach(g))
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * x_mask))))
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * x_mask))))  # [b, filter, t]
        x = self.proj(x * x_mask)  # [b, 1, t]
        return x * x_mask


class TextEncoder(nn.Module):
    """Phone, tone and language embeddings plus projected BERT features through a transformer encoder.

    Returns ``(x, m_p, logs_p, x_mask)``: hidden [b, hidden, t], prior mean / log-std [b, out, t], mask [b, 1, t].
    """

    def __init__(
        self,
        n_vocab: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        gin_channels: int = 0,
        n_tones: int = num_tones,
        n_languages: int = num_languages,
    ) -> None:
        super().__init__()
        self.n_vocab = n_vocab
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.filter_channels = filter_channels
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.gin_channels = gin_channels

        self.emb = nn.Embedding(n_vocab, hidden_channels)
        nn.init.normal_(self.emb.weight, 0.0, hidden_channels**-0.5)
        self.tone_emb = nn.Embedding(n_tones, hidden_channels)
        nn.init.normal_(self.tone_emb.weight, 0.0, hidden_channels**-0.5)
        self.language_emb = nn.Embedding(n_languages, hidden_channels)
        nn.init.normal_(self.language_emb.weight, 0.0, hidden_channels**-0.5)
        self.bert_proj = nn.Conv1d(BERT_CHANNELS, hidden_channels, 1)
        self.ja_bert_proj = nn.Conv1d(BERT_CHANNELS, hidden_channels, 1)
        self.en_bert_proj = nn.Conv1d(BERT_CHANNELS, hidden_channels, 1)

        self.encoder = attentions.Encoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, gin_channels=gin_channels
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self,
        x: Tensor,
        x_lengths: Tensor,
        tone: Tensor,
        language: Tensor,
        bert: Tensor,
        ja_bert: Tensor,
        en_bert: Tensor,
        g: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        bert_emb = self.bert_proj(bert).transpose(1, 2)  # [b, t, hidden]
        ja_bert_emb = self.ja_bert_proj(ja_bert).transpose(1, 2)
        en_bert_emb = self.en_bert_proj(en_bert).transpose(1, 2)
        x = self.emb(x) + self.tone_emb(tone) + self.language_emb(language) + bert_emb + ja_bert_emb + en_bert_emb
        x = x * math.sqrt(self.hidden_channels)  # [b, t, hidden]
        x = torch.transpose(x, 1, -1)  # [b, hidden, t]
        x_mask = _sequence_mask(x_lengths, x.size(2), x.dtype)  # [b, 1, t]

        x = self.encoder(x * x_mask, x_mask, g=g)
        stats = self.proj(x) * x_mask  # [b, 2·out, t]
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return x, m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> posterior latent ``z`` via a WaveNet; returns ``(z, m, logs, mask)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.n_layers = n_layers
        self.gin_channels = gin_channels

        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = modules.WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, x: Tensor, x_lengths: Tensor, g: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_mask = _sequence_mask(x_lengths, x.size(2), x.dtype)  # [b, 1, t]
        x = self.pre(x) * x_mask
        x = self.enc(x, x_mask, g=g)
        stats = self.proj(x) * x_mask  # [b, 2·out, t]
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask  # [b, out, t]
        return z, m, logs, x_mask


class Generator(Recomputable, nn.Module):
    """HiFi-GAN decoder: latent [b, inter, t] -> waveform [b, 1, t · prod(upsample_rates)]."""

    def __init__(
        self,
        initial_channel: int,
        resblock: str,
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: list[int],
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        if str(resblock) not in ("1", "2"):
            raise ValueError(f'resblock must be "1" or "2", got {resblock!r}')
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.conv_pre = Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        resblock_class = modules.ResBlock1 if str(resblock) == "1" else modules.ResBlock2

        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(
                weight_norm(
                    ConvTranspose1d(
                        upsample_initial_channel // (2**i),
                        upsample_initial_channel // (2 ** (i + 1)),
                        kernel,
                        rate,
                        padding=(kernel - rate) // 2,
                    )
                )
            )

        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for i in range(len(self.ups)):
            channels = upsample_initial_channel // (2 ** (i + 1))
            for kernel, dilation in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(resblock_class(channels, kernel, dilation))

        self.conv_post = Conv1d(channels, 1, 7, 1, padding=3, bias=False)
        self.ups.apply(init_weights)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: Tensor, g: Tensor | None = None) -> Tensor:
        rows = self._runs_in_rows(x)
        if rows:
            x = modules.to_rows(x)  # [b, c, 1, t] time-major; every layer keeps that layout
        x = modules.apply_conv(self.conv_pre, x)  # [b, upsample_initial_channel, (1,) t]
        if g is not None:
            cond = self.cond(g)  # [b, upsample_initial_channel, 1]
            x = x + (cond.unsqueeze(2) if rows else cond)
        for i in range(self.num_upsamples):
            x = self._run_stage(functools.partial(self._upsample_stage, i), x)
        x = F.leaky_relu(x)  # default slope 0.01 here, as in the reference
        x = modules.apply_conv(self.conv_post, x)  # [b, 1, (1,) t_wav]
        x = torch.tanh_(x)  # in place on the fresh conv output (tanh's backward uses its result)
        return x.squeeze(2) if rows else x

    def _runs_in_rows(self, x: Tensor) -> bool:
        """Inference on the CPU runs the convolutions as 2-D ones over time-major rows (`modules.to_rows`):
        the same numbers to float rounding, ~1.3x faster. The ONNX export records the same 2-D convolutions
        (onnxruntime then runs them in its blocked NCHWc layout, ~1.4x its 1-D ones). Not with gradients, not
        with weight norm unfolded (the rows form reads the plain weights)."""
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 3:
            return False
        return not any(hasattr(layer, "weight_g") for layer in self.modules())

    def _upsample_stage(self, i: int, x: Tensor) -> Tensor:
        x = F.leaky_relu(x, LRELU_SLOPE)
        x = modules.apply_conv(self.ups[i], x)  # [b, c / 2^(i+1), (1,) t · prod(rates[:i+1])]
        # Multi-receptive-field fusion: average of the resblocks of this stage.
        stage = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
        xs = stage[0](x)
        for block in stage[1:]:
            # Summed in place into the first block's fresh output (no new [b, c, t] buffer per block); the
            # add's backward needs no values. A block that returned its input unchanged is not summed into.
            xs = xs.add_(block(x)) if xs is not x else xs + block(x)
        return xs.div_(self.num_kernels) if xs is not x else xs / self.num_kernels

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights (for inference / export)."""
        logger.info("Removing weight norm...")
        for layer in self.ups:
            remove_weight_norm(layer)
        for block in self.resblocks:
            block.remove_weight_norm()


def judged_by_conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """A period/scale discriminator's body: leaky-ReLU convolutions, then ``conv_post``; returns the flattened
    scores and every layer's map."""
    fmap = []
    for layer in convs:
        # In place on the fresh convolution output: backward then keeps one tensor per layer (this map, also the
        # next convolution's input) instead of two; a convolution's backward needs no output.
        x = F.leaky_relu_(layer(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorP(nn.Module):
    """Period discriminator: folds the waveform into [b, 1, t / period, period] and applies 2-D convs."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False) -> None:
        super().__init__()
        self.period = period
        self.use_spectral_norm = use_spectral_norm
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        padding = (get_padding(kernel_size, 1), 0)
        channels = [1, 32, 128, 512, 1024]
        convs = [
            norm_f(Conv2d(c_in, c_out, (kernel_size, 1), (stride, 1), padding=padding))
            for c_in, c_out in zip(channels[:-1], channels[1:])
        ]
        convs.append(norm_f(Conv2d(1024, 1024, (kernel_size, 1), 1, padding=padding)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = norm_f(Conv2d(1024, 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, t = x.shape
        if t % self.period != 0:
            n_pad = self.period - (t % self.period)
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)  # [b, 1, t / p, p]
        return judged_by_conv_stack(self.convs, self.conv_post, x)


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw waveform with grouped strided 1-D convs."""

    def __init__(self, use_spectral_norm: bool = False) -> None:
        super().__init__()
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        self.convs = nn.ModuleList(
            [
                norm_f(Conv1d(1, 16, 15, 1, padding=7)),
                norm_f(Conv1d(16, 64, 41, 4, groups=4, padding=20)),
                norm_f(Conv1d(64, 256, 41, 4, groups=16, padding=20)),
                norm_f(Conv1d(256, 1024, 41, 4, groups=64, padding=20)),
                norm_f(Conv1d(1024, 1024, 41, 4, groups=256, padding=20)),
                norm_f(Conv1d(1024, 1024, 5, 1, padding=2)),
            ]
        )
        self.conv_post = norm_f(Conv1d(1024, 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return judged_by_conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(Recomputable, nn.Module):
    """One scale discriminator plus period discriminators for periods 2, 3, 5, 7, 11."""

    PERIODS = (2, 3, 5, 7, 11)

    def __init__(self, use_spectral_norm: bool = False) -> None:
        super().__init__()
        discriminators = [DiscriminatorS(use_spectral_norm=use_spectral_norm)]
        discriminators += [DiscriminatorP(period, use_spectral_norm=use_spectral_norm) for period in self.PERIODS]
        self.discriminators = nn.ModuleList(discriminators)

    def forward(
        self, y: Tensor, y_hat: Tensor, keep_maps: bool = True
    ) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]], list[list[Tensor]]]:
        """Real ``y`` and generated ``y_hat`` [b, 1, t] -> (y_d_rs, y_d_gs, fmap_rs, fmap_gs); the map lists are
        empty unless ``keep_maps`` (the discriminators' own update needs only the scores: with activation
        checkpointing, maps kept until every discriminator has run would be all of their activations)."""
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        # With activation checkpointing, real and generated audio run as one batch (weight norm runs once, and
        # one recomputation in backward serves both).
        both = torch.cat([y, y_hat]) if self._recomputing() else None
        for discriminator in self.discriminators:
            (y_d_r, fmap_r), (y_d_g, fmap_g) = self._judge(discriminator, y, y_hat, both)
            y_d_rs.append(y_d_r)
            y_d_gs.append(y_d_g)
            if keep_maps:
                fmap_rs.append(fmap_r)
                fmap_gs.append(fmap_g)
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs

    def _judge(self, discriminator: nn.Module, y: Tensor, y_hat: Tensor, both: Tensor | None) -> tuple[Any, Any]:
        """``discriminator``'s (scores, maps) of ``y`` and of ``y_hat``: from ``both`` (the two as one batch,
        recomputed in backward) when given."""
        if both is None:
            return discriminator(y), discriminator(y_hat)
        scores, fmap = self._run_stage(discriminator, both)
        real, fake = zip(*(t.chunk(2) for t in (scores, *fmap)))
        return (real[0], list(real[1:])), (fake[0], list(fake[1:]))

    def judge_generated(
        self, y: Tensor, y_hat: Tensor, compare: Callable[[list[Tensor], list[Tensor]], list[Tensor]]
    ) -> tuple[list[Tensor], list[list[Tensor]]]:
        """What the generator step needs of each discriminator: its scores of ``y_hat`` and ``compare(maps of y,
        maps of y_hat)`` (the feature-matching terms), taken before the next discriminator runs, so no one holds
        every map at once. With activation checkpointing on, each discriminator's two passes run again in the
        backward pass instead of keeping their activations. The same numbers as ``forward`` and then
        ``compare`` of its maps."""
        scores, compared = [], []
        for discriminator in self.discriminators:
            score, terms = self._run_stage(_scores_and_compared_maps, discriminator, y, y_hat, compare)
            scores.append(score)
            compared.append(terms)
        return scores, compared


def _scores_and_compared_maps(
    discriminator: nn.Module, y: Tensor, y_hat: Tensor, compare: Callable[[list[Tensor], list[Tensor]], list[Tensor]]
) -> tuple[Tensor, list[Tensor]]:
    _, maps_real = discriminator(y)
    score, maps_fake = discriminator(y_hat)
    return score, compare(maps_real, maps_fake)


class WavLMDiscriminator(nn.Module):
    """Discriminator on stacked WavLM hidden states [b, slm_hidden · slm_layers, t] -> scores [b, t]."""

    def __init__(
        self, slm_hidden: int = 768, slm_layers: int = 13, initial_channel: int = 64, use_spectral_norm: bool = False
    ) -> None:
        super().__init__()
        norm_f = spectral_norm if use_spectral_norm else weight_norm
        self.pre = norm_f(Conv1d(slm_hidden * slm_layers, initial_channel, 1, 1, padding=0))
        self.convs = nn.ModuleList(
            [
                norm_f(nn.Conv1d(initial_channel, initial_channel * 2, kernel_size=5, padding=2)),
                norm_f(nn.Conv1d(initial_channel * 2, initial_channel * 4, kernel_size=5, padding=2)),
                norm_f(nn.Conv1d(initial_channel * 4, initial_channel * 4, 5, 1, padding=2)),
            ]
        )
        self.conv_post = norm_f(Conv1d(initial_channel * 4, 1, 3, 1, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre(x)  # [b, initial_channel, t]
        for layer in self.convs:
            x = F.leaky_relu(layer(x), LRELU_SLOPE)
        x = self.conv_post(x)  # [b, 1, t]
        return torch.flatten(x, 1, -1)  # [b, t]


class ReferenceEncoder(nn.Module):
    """Speaker embedding from a spectrogram (used when there are no speaker ids).

    inputs [b, t, spec_channels] -> [b, gin_channels].
    """

    REF_ENC_FILTERS = (32, 32, 64, 64, 128, 128)
    GRU_HIDDEN = 128

    def __init__(self, spec_channels: int, gin_channels: int = 0) -> None:
        super().__init__()
        self.spec_channels = spec_channels
        filters = [1, *self.REF_ENC_FILTERS]
        self.convs = nn.ModuleList(
            [
                weight_norm(nn.Conv2d(filters[i], filters[i + 1], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)))
                for i in range(len(self.REF_ENC_FILTERS))
            ]
        )
        freq_bins = self.calculate_channels(spec_channels, 3, 2, 1, len(self.REF_ENC_FILTERS))
        self.gru = nn.GRU(
            input_size=self.REF_ENC_FILTERS[-1] * freq_bins, hidden_size=self.GRU_HIDDEN, batch_first=True
        )
        self.proj = nn.Linear(self.GRU_HIDDEN, gin_channels)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> Tensor:
        n = inputs.size(0)
        out = inputs.reshape(n, 1, -1, self.spec_channels)  # [b, 1, t, freq]
        for conv in self.convs:
            out = F.relu(conv(out))  # [b, c, t / 2^k, freq / 2^k]
        out = out.transpose(1, 2)  # [b, t', c, freq']
        out = out.contiguous().view(n, out.size(1), -1)  # [b, t', c · freq']
        self.gru.flatten_parameters()
        _, last = self.gru(out)  # [1, b, 128]
        return self.proj(last.squeeze(0))  # [b, gin]

    @staticmethod
    def calculate_channels(length: int, kernel_size: int, stride: int, pad: int, n_convs: int) -> int:
        for _ in range(n_convs):
            length = (length - kernel_size + 2 * pad) // stride + 1
        return length


def mas_log_likelihood(z_p: Tensor, m_p: Tensor, logs_p: Tensor) -> Tensor:
    """log N(z_p[:, :, y]; m_p[:, :, x], exp(logs_p[:, :, x])) summed over channels: the MAS scores
    [b, t_spec, t_x] for z_p [b, d, t_spec] and m_p, logs_p [b, d, t_x], always in float32.

    Under fp16 autocast exp(-2 logs_p) and the channel sums of the matmuls overflow from logs_p of about -4
    (192 channels), and inf - inf = NaN would make the search align garbage while ``attn`` still looks like a
    path; bf16 keeps the range but rounds scores of 1e4 by tens. So the scores leave autocast. With float32
    inputs these are the reference's operations, unchanged.
    """
    device_type = z_p.device.type
    no_autocast = torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else nullcontext()
    with no_autocast:
        z_p, m_p, logs_p = z_p.float(), m_p.float(), logs_p.float()
        # Four matmul-friendly terms of the expanded square.
        s_p_sq_r = torch.exp(-2 * logs_p)  # [b, d, t_x]
        neg_cent1 = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, [1], keepdim=True)  # [b, 1, t_x]
        neg_cent2 = torch.matmul(-0.5 * (z_p**2).transpose(1, 2), s_p_sq_r)  # [b, t_spec, t_x]
        neg_cent3 = torch.matmul(z_p.transpose(1, 2), (m_p * s_p_sq_r))  # [b, t_spec, t_x]
        neg_cent4 = torch.sum(-0.5 * (m_p**2) * s_p_sq_r, [1], keepdim=True)  # [b, 1, t_x]
        return neg_cent1 + neg_cent2 + neg_cent3 + neg_cent4


class SynthesizerTrn(nn.Module):
    """Bert-VITS2 2.3 synthesizer for training (``forward``) and synthesis (``infer``)."""

    def __init__(
        self,
        n_vocab: int,
        spec_channels: int,
        segment_size: int,
        inter_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        resblock: str,
        resblock_kernel_sizes: list[int],
        resblock_dilation_sizes: list[list[int]],
        upsample_rates: list[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: list[int],
        n_speakers: int = 256,
        gin_channels: int = 256,
        use_sdp: bool = True,
        n_flow_layer: int = 4,
        n_layers_trans_flow: int = 4,
        flow_share_parameter: bool = False,
        use_transformer_flow: bool = True,
        **kwargs,
    ) -> None:
        super().__init__()
        self.n_vocab = n_vocab
        self.spec_channels = spec_channels
        self.inter_channels = inter_channels
        self.hidden_channels = hidden_channels
        self.filter_channels = filter_channels
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.kernel_size = kernel_size
        self.p_dropout = p_dropout
        self.resblock = resblock
        self.resblock_kernel_sizes = resblock_kernel_sizes
        self.resblock_dilation_sizes = resblock_dilation_sizes
        self.upsample_rates = upsample_rates
        self.upsample_initial_channel = upsample_initial_channel
        self.upsample_kernel_sizes = upsample_kernel_sizes
        self.segment_size = segment_size
        self.n_speakers = n_speakers
        self.gin_channels = gin_channels
        self.n_layers_trans_flow = n_layers_trans_flow
        self.use_sdp = use_sdp
        self.use_spk_conditioned_encoder = kwargs.get("use_spk_conditioned_encoder", True)
        self.use_noise_scaled_mas = kwargs.get("use_noise_scaled_mas", False)
        self.mas_noise_scale_initial = kwargs.get("mas_noise_scale_initial", 0.01)
        self.noise_scale_delta = kwargs.get("noise_scale_delta", 2e-6)
        # The training loop lowers this every step (initial - delta · step, floored at 0).
        self.current_mas_noise_scale = self.mas_noise_scale_initial
        self.enc_gin_channels = gin_channels if self.use_spk_conditioned_encoder and gin_channels > 0 else 0

        self.enc_p = TextEncoder(
            n_vocab,
            inter_channels,
            hidden_channels,
            filter_channels,
            n_heads,
            n_layers,
            kernel_size,
            p_dropout,
            gin_channels=self.enc_gin_channels,
        )
        self.dec = Generator(
            inter_channels,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            upsample_rates,
            upsample_initial_channel,
            upsample_kernel_sizes,
            gin_channels=gin_channels,
        )
        self.enc_q = PosteriorEncoder(
            spec_channels,
            inter_channels,
            hidden_channels,
            POSTERIOR_KERNEL_SIZE,
            POSTERIOR_DILATION_RATE,
            POSTERIOR_N_LAYERS,
            gin_channels=gin_channels,
        )
        if use_transformer_flow:
            self.flow = TransformerCouplingBlock(
                inter_channels,
                hidden_channels,
                filter_channels,
                n_heads,
                n_layers_trans_flow,
                FLOW_KERNEL_SIZE,
                p_dropout,
                n_flow_layer,
                gin_channels=gin_channels,
                share_parameter=flow_share_parameter,
            )
        else:
            # Reference quirk kept for checkpoint compatibility: here n_flow_layer is the WN depth per coupling.
            self.flow = ResidualCouplingBlock(
                inter_channels, hidden_channels, FLOW_KERNEL_SIZE, 1, n_flow_layer, gin_channels=gin_channels
            )
        self.sdp = StochasticDurationPredictor(
            hidden_channels, SDP_FILTER_CHANNELS_ARG, 3, 0.5, 4, gin_channels=gin_channels
        )
        self.dp = DurationPredictor(hidden_channels, DP_FILTER_CHANNELS, 3, 0.5, gin_channels=gin_channels)

        if n_speakers >= 1:
            self.emb_g = nn.Embedding(n_speakers, gin_channels)
        else:
            self.ref_enc = ReferenceEncoder(spec_channels, gin_channels)

    def _speaker_embedding(self, sid: Tensor | None, spec: Tensor | None) -> Tensor:
        """[b, gin, 1] from speaker ids, or from a spectrogram [b, spec_channels, t] without speaker table."""
        if self.n_speakers > 0:
            if sid is None:
                raise ValueError("sid is required: this model has a speaker table (n_speakers > 0)")
            return self.emb_g(sid).unsqueeze(-1)
        if spec is None:
            raise ValueError(
                "a reference spectrogram is required: with n_speakers == 0 the speaker embedding comes from the "
                "ReferenceEncoder; pass y=[b, spec_channels, t] to infer"
            )
        return self.ref_enc(spec.transpose(1, 2)).unsqueeze(-1)

    def forward(
        self,
        x: Tensor,
        x_lengths: Tensor,
        y: Tensor,
        y_lengths: Tensor,
        sid: Tensor,
        tone: Tensor,
        language: Tensor,
        bert: Tensor,
        ja_bert: Tensor,
        en_bert: Tensor,
    ) -> SynthesizerOutput:
        """Training pass. ``y`` is the linear spectrogram [b, spec_channels, t_spec]."""
        g = self._speaker_embedding(sid, y)  # [b, gin, 1]
        x, m_p, logs_p, x_mask = self.enc_p(x, x_lengths, tone, language, bert, ja_bert, en_bert, g=g)
        z, m_q, logs_q, y_mask = self.enc_q(y, y_lengths, g=g)
        z_p = self.flow(z, y_mask, g=g)  # [b, inter, t_spec]

        attn = self._monotonic_alignment(z_p, m_p, logs_p, x_mask, y_mask)  # [b, 1, t_spec, t_x]
        w = attn.sum(2)  # [b, 1, t_x] frames per phone

        x_mask_sum = torch.sum(x_mask)
        l_length_sdp = self.sdp(x, x_mask, w, g=g) / x_mask_sum
        logw_ = torch.log(w + 1e-6) * x_mask
        logw = self.dp(x, x_mask, g=g)
        logw_sdp = self.sdp(x, x_mask, g=g, reverse=True, noise_scale=1.0)
        l_length_dp = torch.sum((logw - logw_) ** 2, [1, 2]) / x_mask_sum
        l_length_sdp = l_length_sdp + torch.sum((logw_sdp - logw_) ** 2, [1, 2]) / x_mask_sum
        l_length = l_length_dp + l_length_sdp  # [b]

        # Expand the prior from phones to frames along the alignment.
        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)  # [b, inter, t_spec]
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)

        z_slice, ids_slice = commons.rand_slice_segments(z, y_lengths, self.segment_size)
        o = self.dec(z_slice, g=g)
        return SynthesizerOutput(
            o,
            l_length,
            attn,
            ids_slice,
            x_mask,
            y_mask,
            Latents(z, z_p, m_p, logs_p, m_q, logs_q),
            DurationTerms(x, logw, logw_, logw_sdp),
            g,
        )

    @torch.no_grad()
    def _monotonic_alignment(self, z_p: Tensor, m_p: Tensor, logs_p: Tensor, x_mask: Tensor, y_mask: Tensor) -> Tensor:
        """Most likely monotonic alignment of frames to phones under the prior, [b, 1, t_spec, t_x] (0/1)."""
        neg_cent = mas_log_likelihood(z_p, m_p, logs_p)  # [b, t_spec, t_x], float32
        if self.use_noise_scaled_mas:
            # VITS2: noise proportional to the spread of the scores, annealed by the training loop.
            epsilon = torch.std(neg_cent) * torch.randn_like(neg_cent) * self.current_mas_noise_scale
            neg_cent = neg_cent + epsilon
        attn_mask = torch.unsqueeze(x_mask, 2) * torch.unsqueeze(y_mask, -1)  # [b, 1, t_spec, t_x]
        return monotonic_align.maximum_path(neg_cent, attn_mask.squeeze(1)).unsqueeze(1).detach()

    def infer(
        self,
        x: Tensor,
        x_lengths: Tensor,
        sid: Tensor,
        tone: Tensor,
        language: Tensor,
        bert: Tensor,
        ja_bert: Tensor,
        en_bert: Tensor,
        noise_scale: float = 0.667,
        length_scale: float = 1,
        noise_scale_w: float = 0.8,
        max_len: int | None = None,
        sdp_ratio: float = 0,
        y: Tensor | None = None,
    ) -> InferenceOutput:
        """Synthesize. ``sdp_ratio`` mixes stochastic (1) and deterministic (0) durations; ``max_len`` caps
        the decoded frames; ``y`` is the reference spectrogram used when the model has no speaker table."""
        g = self._speaker_embedding(sid, y)  # [b, gin, 1]
        prior = self.infer_frame_prior(
            x,
            x_lengths,
            g,
            tone,
            language,
            bert,
            ja_bert,
            en_bert,
            length_scale=length_scale,
            noise_scale_w=noise_scale_w,
            sdp_ratio=sdp_ratio,
        )
        o, z, z_p = self.infer_decode(
            prior.m_p, prior.logs_p, prior.y_mask, g, noise_scale=noise_scale, max_len=max_len
        )
        return InferenceOutput(o, prior.attn, prior.y_mask, InferenceLatents(z, z_p, prior.m_p, prior.logs_p))

    def infer_frame_prior(
        self,
        x: Tensor,
        x_lengths: Tensor,
        g: Tensor,
        tone: Tensor,
        language: Tensor,
        bert: Tensor,
        ja_bert: Tensor,
        en_bert: Tensor,
        *,
        length_scale: float | Tensor,
        noise_scale_w: float | Tensor,
        sdp_ratio: float | Tensor,
        sdp_noise: Tensor | None = None,
    ) -> FramePrior:
        """First half of ``infer``: text encoder and durations, the prior expanded from phones to frames.

        ``g`` is the speaker embedding [b, gin, 1]; ``sdp_noise`` [b, 2, t_x] replaces the stochastic duration
        predictor's standard-normal draw (ONNX export and parity tests pass it explicitly).
        """
        x, m_p, logs_p, x_mask = self.enc_p(x, x_lengths, tone, language, bert, ja_bert, en_bert, g=g)
        logw = self.sdp(x, x_mask, g=g, reverse=True, noise_scale=noise_scale_w, noise=sdp_noise) * sdp_ratio + self.dp(
            x, x_mask, g=g
        ) * (1 - sdp_ratio)  # [b, 1, t_x]
        w = torch.exp(logw) * x_mask * length_scale
        w_ceil = torch.ceil(w)
        y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()  # [b]
        y_mask = _sequence_mask(y_lengths, None, x_mask.dtype)  # [b, 1, t_y]
        attn_mask = torch.unsqueeze(x_mask, 2) * torch.unsqueeze(y_mask, -1)  # [b, 1, t_y, t_x]
        attn = commons.generate_path(w_ceil, attn_mask)

        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)  # [b, inter, t_y]
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)
        return FramePrior(m_p, logs_p, y_mask, attn)

    def infer_decode(
        self,
        m_p: Tensor,
        logs_p: Tensor,
        y_mask: Tensor,
        g: Tensor,
        *,
        noise_scale: float | Tensor,
        max_len: int | None = None,
        prior_noise: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Second half of ``infer``: sample the frame prior, invert the flow, decode. Returns (o, z, z_p).

        ``prior_noise`` [b, inter, t_y] replaces the standard-normal draw (ONNX export and parity tests).
        """
        noise = torch.randn_like(m_p) if prior_noise is None else prior_noise
        z_p = m_p + noise * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=g, reverse=True)
        o = self.dec((z * y_mask)[:, :, :max_len], g=g)  # [b, 1, t_y · hop]
        return o, z, z_p


# --------------------------------------------------------------------------------------------------------------
# Building the generator from a model config

# The reference training script's noise-scaled MAS schedule (model.use_noise_scaled_mas): initial scale and
# its decrease per step.
MAS_NOISE_SCALE_INITIAL = 0.01
MAS_NOISE_SCALE_DELTA = 2e-6


def build_generator(cfg: Any, *, for_training: bool, n_vocab: int | None = None) -> SynthesizerTrn:
    """The one place a ``SynthesizerTrn`` is built from a model config (train_ms, infer, export, tests).

    ``cfg``: a ``config.ModelConfig`` (or a parsed dict, validated into one). The constructor gets the same
    values, in the same order of random draws, as the reference training script gives it, so seeded initial
    weights match. ``for_training`` sets up the noise-scaled MAS schedule (inference never runs MAS) and
    leaves the net in train mode; otherwise it is in eval mode. ``n_vocab`` defaults to the symbol table's size
    (an export file records its own).
    """
    from config import as_model_config  # deferred: config stays importable without torch
    from text.symbols import symbols

    cfg = as_model_config(cfg)
    model, data = cfg.model, cfg.data
    noise_scaled = for_training and model.use_noise_scaled_mas
    net = SynthesizerTrn(
        n_vocab if n_vocab is not None else len(symbols),
        # The posterior encoder reads mel frames with use_mel_posterior_encoder (the reference hard-codes 80 mel
        # bins; n_mel_channels is the same for its configs and right for others), else linear spectrograms.
        data.n_mel_channels if model.use_mel_posterior_encoder else data.filter_length // 2 + 1,
        cfg.train.segment_size // data.hop_length,
        inter_channels=model.inter_channels,
        hidden_channels=model.hidden_channels,
        filter_channels=model.filter_channels,
        n_heads=model.n_heads,
        n_layers=model.n_layers,
        kernel_size=model.kernel_size,
        p_dropout=model.p_dropout,
        resblock=model.resblock,
        resblock_kernel_sizes=model.resblock_kernel_sizes,
        resblock_dilation_sizes=model.resblock_dilation_sizes,
        upsample_rates=model.upsample_rates,
        upsample_initial_channel=model.upsample_initial_channel,
        upsample_kernel_sizes=model.upsample_kernel_sizes,
        n_speakers=data.n_speakers,
        gin_channels=model.gin_channels,
        use_sdp=model.use_sdp,
        n_flow_layer=model.n_flow_layer,
        n_layers_trans_flow=model.n_layers_trans_flow,
        flow_share_parameter=model.flow_share_parameter,
        use_transformer_flow=model.use_transformer_flow,
        use_spk_conditioned_encoder=model.use_spk_conditioned_encoder,
        use_noise_scaled_mas=model.use_noise_scaled_mas,
        mas_noise_scale_initial=MAS_NOISE_SCALE_INITIAL if noise_scaled else 0.0,
        noise_scale_delta=MAS_NOISE_SCALE_DELTA if noise_scaled else 0.0,
    )
    return net.train(for_training)


def freezable_parts(net: SynthesizerTrn) -> dict[str, list[nn.Module]]:
    """The generator's parts ``train.freeze`` can name (config.FREEZE_PARTS), each with its modules."""
    speaker = net.emb_g if hasattr(net, "emb_g") else net.ref_enc
    return {
        "text_encoder": [net.enc_p],
        "duration_predictors": [net.sdp, net.dp],
        "flow": [net.flow],
        "decoder": [net.dec],
        "posterior_encoder": [net.enc_q],
        "speaker_embedding": [speaker],
        "bert_projections": [net.enc_p.bert_proj, net.enc_p.ja_bert_proj, net.enc_p.en_bert_proj],
    }


def freeze_parts(net: SynthesizerTrn, names: list[str] | tuple[str, ...]) -> int:
    """Keep the named parts fixed: their parameters take no gradient, so the optimizer (which skips parameters
    without one) neither moves them nor creates state for them. Returns how many parameter tensors it froze.

    They stay in the optimizer's parameter list, so a checkpoint trained with a freeze resumes without it (and
    the other way round): only the frozen parameters' (absent) moments differ, and AdamW creates them lazily."""
    parts = freezable_parts(net)
    unknown = [name for name in names if name not in parts]
    if unknown:
        raise ValueError(f"unknown part(s) to freeze: {', '.join(unknown)}; valid: {', '.join(parts)}")
    frozen = 0
    for name in names:
        for module in parts[name]:
            for parameter in module.parameters():
                frozen += int(parameter.requires_grad)
                parameter.requires_grad_(False)
    return frozen


def build_duration_discriminator(cfg: Any) -> DurationDiscriminator | None:
    """``net_dur_disc`` as the reference training script builds it; ``None`` unless
    ``model.use_duration_discriminator`` (it is conditioned on the speaker only in multi-speaker models)."""
    from config import as_model_config

    cfg = as_model_config(cfg)
    model = cfg.model
    if not model.use_duration_discriminator:
        return None
    gin_channels = model.gin_channels if cfg.data.n_speakers != 0 else 0
    return DurationDiscriminator(model.hidden_channels, model.hidden_channels, 3, 0.1, gin_channels=gin_channels)


def build_period_discriminator(cfg: Any) -> MultiPeriodDiscriminator:
    """``net_d``: the multi-period discriminator (``model.use_spectral_norm`` picks its weight normalisation)."""
    from config import as_model_config

    return MultiPeriodDiscriminator(as_model_config(cfg).model.use_spectral_norm)


def build_wavlm_discriminator(cfg: Any) -> WavLMDiscriminator:
    """``net_wd``: the discriminator on the frozen WavLM's hidden states (``model.slm``)."""
    from config import as_model_config

    slm = as_model_config(cfg).model.slm
    return WavLMDiscriminator(slm.hidden, slm.nlayers, slm.initial_channel)
