"""Monotonic alignment search (MAS): the most likely monotonic, surjective text-to-frame alignment.

``maximum_path(neg_cent, mask)`` takes the log-likelihood of every (frame, token) pair, ``neg_cent``
[b, t_y, t_x], and the attention mask [b, t_y, t_x], and returns the 0/1 path with the largest total, as a
tensor of ``neg_cent``'s dtype on its device. Frames per item are read from ``mask[:, :, 0]`` and tokens from
``mask[:, 0, :]``, like the reference. CPU tensors go to a multi-threaded numba kernel (``core``); CUDA tensors
stay on the device and go to a Triton kernel (``triton_kernel``) where Triton is installed and can build and
launch it; tensors on other devices, or on CUDA where Triton is missing or cannot compile (no C compiler or Python
headers, a GPU its compiler does not support), use a vectorised torch implementation. All give the same paths.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "maximum_path",
    "maximum_path_cpu",
    "maximum_path_cuda",
    "maximum_path_torch",
    "path_lengths",
    "triton_available",
    "triton_usable",
]

logger = logging.getLogger(__name__)

_UNREACHABLE = -1e9


def path_lengths(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(frames t_y, tokens t_x) per item, counted along the first token column and the first frame row."""
    # Same counts as the reference's mask.sum(1)[:, 0] and mask.sum(2)[:, 0], without summing the whole mask.
    t_ys = mask[:, :, 0].sum(1).to(torch.long)
    t_xs = mask[:, 0, :].sum(1).to(torch.long)
    return t_ys, t_xs


def maximum_path(neg_cent: Tensor, mask: Tensor) -> Tensor:
    """Best monotonic alignment path, [b, t_y, t_x] 0/1 in neg_cent's dtype and device."""
    if neg_cent.device.type == "cpu":
        return maximum_path_cpu(neg_cent, mask)
    if neg_cent.device.type == "cuda" and triton_available():
        return maximum_path_cuda(neg_cent, mask)
    return maximum_path_torch(neg_cent, mask)


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it ships with torch's CUDA wheels on Linux x86_64)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def triton_usable(device: torch.device) -> bool:
    """Whether Triton builds and launches the kernel on ``device``: tried once per device and process, on a
    one-item 2 x 2 problem. A failure is logged once, with its cause, and the torch kernel takes over."""
    if not triton_available():
        return False
    try:
        from monotonic_align.triton_kernel import KernelUnavailable, maximum_path_triton
    except ImportError as error:  # found but broken (e.g. built for another torch)
        _warn_torch_kernel(device, error)
        return False

    lengths = torch.full((1,), 2, dtype=torch.int32, device=device)
    try:
        maximum_path_triton(torch.zeros((1, 2, 2), device=device), lengths, lengths)
    except KernelUnavailable as error:
        _warn_torch_kernel(device, error)
        return False
    return True


def _warn_torch_kernel(device: torch.device, error: Exception) -> None:
    logger.warning(
        "monotonic alignment: Triton cannot build or launch its kernel on %s (%s); using the torch kernel, which "
        "gives the same paths more slowly. Triton needs a C compiler (gcc) and the Python headers (python3-dev) "
        "for its launcher, and a GPU its bundled compiler supports",
        device,
        error,
    )


def maximum_path_cuda(neg_cent: Tensor, mask: Tensor) -> Tensor:
    """Triton kernel on neg_cent's device (CUDA, or the CPU under ``TRITON_INTERPRET=1``); no host copies.

    Where Triton cannot build or launch the kernel (``triton_usable``), the torch kernel gives the same paths.
    """
    if neg_cent.numel() == 0:
        return torch.zeros_like(neg_cent)
    if not triton_usable(neg_cent.device):
        return maximum_path_torch(neg_cent, mask)
    from monotonic_align.triton_kernel import KernelUnavailable, maximum_path_triton

    t_ys, t_xs = path_lengths(mask.detach())
    try:
        path = maximum_path_triton(neg_cent.detach(), t_ys, t_xs)
    except KernelUnavailable as error:  # a specialisation the probe did not build (e.g. out of resources)
        _warn_torch_kernel(neg_cent.device, error)
        return maximum_path_torch(neg_cent, mask)
    return path.to(dtype=neg_cent.dtype)


def maximum_path_cpu(neg_cent: Tensor, mask: Tensor, n_threads: int | None = None) -> Tensor:
    """Numba kernel on the CPU; ``n_threads`` defaults to the smaller of numba's and torch's thread counts.

    Following torch's thread budget means a per-process limit (e.g. torchrun's OMP_NUM_THREADS=1) also
    applies here.
    """
    if neg_cent.numel() == 0:
        return torch.zeros_like(neg_cent)
    import numba

    from monotonic_align.core import maximum_path_numpy

    if n_threads is None:
        n_threads = min(numba.get_num_threads(), torch.get_num_threads())
    values = neg_cent.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    t_ys, t_xs = path_lengths(mask.detach().cpu())
    # Written into memory torch owns: a numpy-backed tensor still held by an autograd graph when the interpreter
    # exits (after an error mid-step) frees its memory through the GIL there, and the exit hangs.
    path = torch.empty(values.shape, dtype=torch.float32)
    maximum_path_numpy(
        values, t_ys.numpy().astype(np.int32), t_xs.numpy().astype(np.int32), n_threads, out=path.numpy()
    )
    return path.to(device=neg_cent.device, dtype=neg_cent.dtype)


def maximum_path_torch(neg_cent: Tensor, mask: Tensor) -> Tensor:
    """Same result as the numba kernel, with torch ops only, on neg_cent's device (no host copies).

    The DP runs row by row across the whole batch (t_y steps of a few element-wise ops); the backtrack is
    a parallel prefix composition of the per-row "column step" tables (log2(t_y) gathers).
    """
    if neg_cent.numel() == 0:
        return torch.zeros_like(neg_cent)
    values = neg_cent.detach().to(torch.float32)  # [b, T_y, T_x]
    t_ys, t_xs = path_lengths(mask.detach())
    t_ys = t_ys.to(values.device)
    t_xs = t_xs.to(values.device)
    decisions = _column_decisions(values, t_ys, t_xs)  # [b, T_y, T_x] bool: step left when leaving (y, x)
    return _trace_paths(decisions, t_ys, t_xs).to(dtype=neg_cent.dtype)


def _band_mask(max_y: int, max_x: int, t_ys: Tensor, t_xs: Tensor) -> Tensor:
    """[b, T_y, T_x]: cells a monotonic path from (0, 0) to (t_y-1, t_x-1) can visit."""
    device = t_ys.device
    y = torch.arange(max_y, device=device).view(1, max_y, 1)
    x = torch.arange(max_x, device=device).view(1, 1, max_x)
    t_y = t_ys.view(-1, 1, 1)
    t_x = t_xs.view(-1, 1, 1)
    return (x <= y) & (x < t_x) & (y < t_y) & (x >= t_x + y - t_y)


def _column_decisions(values: Tensor, t_ys: Tensor, t_xs: Tensor) -> Tensor:
    """For every cell, whether the backtrack moves one column left when leaving it (before the x == 0 rule).

    Inside the band that is value[y-1, x] < value[y-1, x-1] on the DP values; for items without a band
    (t_x > t_y) the reference compares the raw costs of the row above, row -1 meaning the last padded row.
    """
    batch, max_y, max_x = values.shape
    band = _band_mask(max_y, max_x, t_ys, t_xs)
    unreachable = values.new_full((batch, 1), _UNREACHABLE)
    start = values.new_zeros((batch, 1))  # the start cell (0, 0) adds nothing to its own cost
    prev = values.new_full((batch, max_x), _UNREACHABLE)  # row y-1 of the DP, unreachable outside the band
    dp_moves_left = torch.empty_like(band)
    for y in range(max_y):
        diag = torch.cat([start if y == 0 else unreachable, prev[:, :-1]], dim=1)  # value[y-1, x-1]
        dp_moves_left[:, y] = prev < diag
        prev = torch.where(band[:, y], values[:, y] + torch.maximum(prev, diag), unreachable)

    above_raw = torch.roll(values, shifts=1, dims=1)  # row y-1, wrapping row -1 to the last row
    raw_moves_left = torch.zeros_like(band)
    raw_moves_left[..., 1:] = above_raw[..., 1:] < above_raw[..., :-1]
    has_band = (t_xs <= t_ys).view(-1, 1, 1)
    decisions = torch.where(has_band, dp_moves_left, raw_moves_left)

    y = torch.arange(max_y, device=values.device).view(1, max_y, 1)
    x = torch.arange(max_x, device=values.device).view(1, 1, max_x)
    return (x > 0) & ((x == y) | decisions)


def _trace_paths(decisions: Tensor, t_ys: Tensor, t_xs: Tensor) -> Tensor:
    """Paths from the per-cell decisions, walking back from (t_y-1, t_x-1) of every item.

    step[y] maps the column at row y+1 to the column at row y. The column reached at row y is
    (step[y] o step[y+1] o ... o step[T-1])(t_x-1), with identity steps from row t_y-1 on; all these
    compositions come from a Hillis-Steele suffix scan whose combine step is one gather.
    """
    batch, max_y, max_x = decisions.shape
    device = decisions.device
    columns = torch.arange(max_x, device=device).expand(batch, max_y, max_x)
    rows = torch.arange(max_y, device=device).view(1, max_y, 1)
    moves = (decisions & (rows < t_ys.view(-1, 1, 1))).long()  # rows past t_y-1 do not move
    step = torch.cat([columns[:, 1:] - moves[:, 1:], columns[:, :1]], dim=1)  # last row: identity
    offset = 1
    while offset < max_y:
        composed = torch.gather(step[:, :-offset], 2, step[:, offset:])
        step = torch.cat([composed, step[:, -offset:]], dim=1)
        offset *= 2
    start = (t_xs - 1).clamp(min=0).view(-1, 1, 1).expand(batch, max_y, 1)
    column_at_row = torch.gather(step, 2, start)  # [b, T_y, 1]
    on_path = (rows < t_ys.view(-1, 1, 1)) & (t_xs > 0).view(-1, 1, 1)
    path = torch.zeros(batch, max_y, max_x, device=device)
    path.scatter_(2, column_at_row, 1.0)
    return path * on_path
