"""Small tensor helpers shared by the models: masks, paths, slicing, padding and weight norm.

Names and signatures follow the reference package so reference-style call sites keep working.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def init_weights(m: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    """Re-draw the weight of every convolution from N(mean, std) (use with ``module.apply``).

    On a weight-normed convolution ``m.weight`` is derived from ``weight_g``/``weight_v`` and recomputed
    before every forward, so the draw only advances the random generator; we keep it anyway because
    nets built from a seed must consume random numbers exactly like the reference.
    """
    if "Conv" in type(m).__name__:
        m.weight.data.normal_(mean, std)


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of a stride-1 convolution with an odd kernel."""
    return (kernel_size * dilation - dilation) // 2


def convert_pad_shape(pad_shape: Sequence[Sequence[int]]) -> list[int]:
    """Turn per-dimension ``[[before, after], ...]`` (first dim first) into ``F.pad``'s flat, last-dim-first list."""
    return [amount for pair in reversed(pad_shape) for amount in pair]


def intersperse(lst: Sequence, item) -> list:
    """Put ``item`` before, between and after the elements: [a, b] -> [item, a, item, b, item]."""
    result = [item] * (2 * len(lst) + 1)
    result[1::2] = lst
    return result


def kl_divergence(m_p: Tensor, logs_p: Tensor, m_q: Tensor, logs_q: Tensor) -> Tensor:
    """Element-wise KL(P || Q) of two diagonal Gaussians given means and log standard deviations."""
    variance_ratio_term = (torch.exp(2.0 * logs_p) + (m_p - m_q) ** 2) * torch.exp(-2.0 * logs_q)
    return (logs_q - logs_p) - 0.5 + 0.5 * variance_ratio_term


def slice_segments(x: Tensor, ids_str: Tensor, segment_size: int = 4) -> Tensor:
    """Cut ``x[i, :, ids_str[i] : ids_str[i] + segment_size]`` for every batch item.

    x: [b, c, t], ids_str: [b] (integer) -> [b, c, segment_size].
    """
    offsets = torch.arange(segment_size, device=x.device)
    time_index = ids_str.to(device=x.device, dtype=torch.long).view(-1, 1, 1) + offsets  # [b, 1, segment]
    return torch.gather(x, 2, time_index.expand(x.size(0), x.size(1), segment_size))


def rand_slice_segments(
    x: Tensor, x_lengths: Tensor | int | None = None, segment_size: int = 4
) -> tuple[Tensor, Tensor]:
    """Slice a random window of ``segment_size`` frames from every item; returns (slices, start indices)."""
    b, _, t = x.size()
    if x_lengths is None:
        x_lengths = t
    ids_str_max = x_lengths - segment_size + 1
    ids_str = (host_random(torch.rand, [b], x.device) * ids_str_max).to(dtype=torch.long)
    return slice_segments(x, ids_str, segment_size), ids_str


def host_random(draw: Callable[..., Tensor], size: Sequence[int], device: torch.device | str) -> Tensor:
    """``draw(size)`` (``torch.rand`` / ``torch.randn``) from the CPU generator, on ``device``, without a host sync.

    The CPU generator, like the reference, so a seed gives the same draws on every device and CPU runs keep their
    numbers. The reference's plain ``.to(cuda)`` copies from pageable memory, which waits for everything queued on
    the device first; drawn into pinned memory, the copy is queued behind the work instead.
    """
    device = torch.device(device)
    pinned = device.type == "cuda"
    values = draw(tuple(size), pin_memory=pinned)
    return values.to(device, non_blocking=pinned)


def subsequent_mask(length: int) -> Tensor:
    """Causal (lower-triangular) attention mask, [1, 1, length, length]."""
    return torch.tril(torch.ones(length, length)).unsqueeze(0).unsqueeze(0)


def fused_add_tanh_sigmoid_multiply(input_a: Tensor, input_b: Tensor, n_channels: int | Tensor) -> Tensor:
    """WaveNet gate: tanh(first half of a + b) * sigmoid(second half). n_channels: int or 1-element tensor."""
    n = int(n_channels[0]) if isinstance(n_channels, Tensor) and n_channels.dim() > 0 else int(n_channels)
    in_act = input_a + input_b  # [b, 2n, t]
    return torch.tanh(in_act[:, :n, :]) * torch.sigmoid(in_act[:, n:, :])


def sequence_mask(length: Tensor, max_length: int | Tensor | None = None) -> Tensor:
    """Boolean mask [b, max_length]: True where position < length (max_length defaults to max(length))."""
    if max_length is None:
        max_length = length.max()
    positions = torch.arange(max_length, dtype=length.dtype, device=length.device)
    return positions.unsqueeze(0) < length.unsqueeze(1)


def generate_path(duration: Tensor, mask: Tensor) -> Tensor:
    """Hard alignment from integer durations.

    duration: [b, 1, t_x] (frames per token), mask: [b, 1, t_y, t_x] -> path [b, 1, t_y, t_x] (mask's dtype),
    where frame y belongs to token x iff cumsum(d)[x-1] <= y < cumsum(d)[x].
    """
    t_y = mask.size(2)
    cum_duration = torch.cumsum(duration, -1).unsqueeze(2)  # [b, 1, 1, t_x]
    frames = torch.arange(t_y, dtype=duration.dtype, device=duration.device).view(1, 1, t_y, 1)
    covered = (frames < cum_duration).to(mask.dtype)  # [b, 1, t_y, t_x]: frame lies before the end of token x
    covered_by_earlier = F.pad(covered, [1, 0])[..., :-1]  # same for token x - 1
    return (covered - covered_by_earlier) * mask


def grad_norm(parameters: Tensor | Iterable[Tensor], norm_type: float = 2) -> Tensor:
    """The total ``norm_type`` norm of the gradients (float64, on their device), without a host sync.

    Parameters without a gradient are left out; with none at all the norm is a CPU zero.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    norm_type = float(norm_type)
    if not grads:
        return torch.zeros((), dtype=torch.float64)
    device = grads[0].device
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    # One fused kernel per device and dtype (as torch's clip_grad_norm_), not one launch per parameter.
    norms = torch.stack([n.to(device) for group in groups.values() for n in torch._foreach_norm(group, norm_type)])
    norms = norms.double()
    return norms.max() if math.isinf(norm_type) else torch.linalg.vector_norm(norms, norm_type)


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float | None, norm_type: float = 2) -> float:
    """Clamp every gradient to [-clip_value, clip_value] in place; return the total gradient norm.

    The norm is measured before clamping, over parameters that have a gradient (others are skipped);
    clip_value None only measures. One host sync per call instead of one per parameter.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    parameters = list(parameters)
    total_norm = grad_norm(parameters, norm_type)
    if clip_value is not None:
        clip_value = float(clip_value)
        for p in parameters:
            if p.grad is not None:
                p.grad.detach().clamp_(min=-clip_value, max=clip_value)
    return float(total_norm)


def weight_norm(module: ModuleT, name: str = "weight", dim: int = 0) -> ModuleT:
    """Weight normalisation stored the old way, as ``<name>_g`` / ``<name>_v`` (reference checkpoint layout).

    The one place that chooses the implementation: torch's hook-based version, whose deprecation
    warning we silence because the parametrization-based replacement changes the state_dict keys.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated", category=FutureWarning)
        return nn.utils.weight_norm(module, name=name, dim=dim)


def is_weight_normed(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``weight_norm`` holds ``module``'s ``name`` as ``<name>_g`` / ``<name>_v``."""
    return hasattr(module, name + "_g") and hasattr(module, name + "_v")


def release_normed_weight(module: nn.Module, inputs: Any, output: Any) -> None:
    """Forward hook: drop the normed ``weight`` that ``weight_norm`` leaves on ``module`` after a forward (it
    computes it again before the next one)."""
    if is_weight_normed(module):  # not once remove_weight_norm has folded it back into a parameter
        module.weight = None


def remove_weight_norm(module: ModuleT, name: str = "weight") -> ModuleT:
    """Fold ``<name>_g`` / ``<name>_v`` back into a plain ``<name>`` parameter (for export/inference)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated", category=FutureWarning)
        return nn.utils.remove_weight_norm(module, name=name)
