"""Triton kernel of the monotonic alignment search (CUDA), the same paths as the numba kernel in ``core``.

One program per batch item. The DP row of the current frame lives in registers as a vector over the tokens;
the one-column shift the recurrence needs (value[y-1, x-1]) goes through a per-item scratch row in global
memory (L1/L2 resident, a few KiB). For every cell the kernel records the bit the backtrack needs,
value[y-1, x] < value[y-1, x-1], exactly as the numba kernel does; the backtrack then walks the bits on the
device, one frame per step. Items with more tokens than frames (no monotonic path) take the reference's walk
over the raw costs of the row above, row -1 being the last padded row, like ``core._backtrack_without_band``.

Tie-breaking and float32 arithmetic follow the numba kernel operation for operation
(``cost + (up if up > diag else diag)`` and ``up < diag``), so the paths are identical, NaNs included.
The module imports Triton; ``monotonic_align.maximum_path`` only imports it for CUDA tensors.
Under ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernel runs on CPU tensors, which is how the
tests check it against the numba kernel on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import subprocess

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.compiler.errors import CompilationError
from triton.runtime import errors as runtime_errors

__all__ = ["LAUNCH_ERRORS", "KernelUnavailable", "launch_mas_kernel", "maximum_path_triton"]

_UNREACHABLE = tl.constexpr(-1e9)  # a global a @triton.jit function reads must be a constexpr


@triton.jit
def _mas_kernel(
    values_ptr,  # float32 [b, T_y, T_x], contiguous: the costs, read only
    t_ys_ptr,  # int32 [b]
    t_xs_ptr,  # int32 [b]
    path_ptr,  # float32 [b, T_y, T_x], zero-filled: receives the 0/1 path
    decisions_ptr,  # int8 [b, T_y, T_x] scratch: 1 where the backtrack steps left when leaving the cell
    row_ptr,  # float32 [b, BLOCK_X] scratch: the previous DP row, for the shifted read
    max_y,
    max_x,
    BLOCK_X: tl.constexpr,
):  # pragma: no cover - compiled, or run by Triton's interpreter in a subprocess
    item = tl.program_id(0).to(tl.int64)
    t_y = tl.load(t_ys_ptr + item)
    t_x = tl.load(t_xs_ptr + item)
    item_values = values_ptr + item * max_y * max_x
    item_decisions = decisions_ptr + item * max_y * max_x
    item_path = path_ptr + item * max_y * max_x
    item_row = row_ptr + item * BLOCK_X
    cols = tl.arange(0, BLOCK_X)
    in_row = cols < max_x
    unreachable = tl.full([BLOCK_X], _UNREACHABLE, tl.float32)

    if (t_y > 0) & (t_x > 0):
        if t_x <= t_y:
            # Forward DP over the band lo(y) <= x <= hi(y); cells outside the band hold -1e9, which is what
            # the numba kernel's explicit edge cases amount to (see core._forward_rows).
            prev = unreachable
            # While loops rather than range() over a loaded bound: Triton's interpreter cannot turn a loaded
            # scalar into a range bound under numpy 2.4; compiled, both are the same scf loop.
            y = tl.full([], 0, tl.int32)  # a typed loop variable (a Python 0 would be a compile-time constant)
            while y < t_y:
                tl.store(item_row + cols, prev)
                tl.debug_barrier()  # every thread's part of the row is written before any shifted read
                shifted = tl.load(item_row + cols - 1, mask=cols > 0, other=_UNREACHABLE)
                tl.debug_barrier()  # every shifted read is done before the next row overwrites the scratch
                diag = tl.where((cols == 0) & (y == 0), 0.0, shifted)  # the start cell adds nothing to its cost
                up = prev
                costs = tl.load(item_values + y * max_x + cols, mask=in_row, other=0.0)
                band = (cols <= y) & (cols < t_x) & (cols >= t_x + y - t_y)
                prev = tl.where(band, costs + tl.where(up > diag, up, diag), unreachable)
                tl.store(item_decisions + y * max_x + cols, (up < diag).to(tl.int8), mask=in_row)
                y += 1
            # The backtrack reads single decisions that other threads stored; rows before the last one are
            # fenced by the next iteration's barriers, the last row only by this one.
            tl.debug_barrier()
        column = t_x - 1
        last_row = max_y - 1
        row = t_y - 1
        while row >= 0:
            tl.store(item_path + row * max_x + column, 1.0)
            if t_x <= t_y:
                moves_left = tl.load(item_decisions + row * max_x + column) != 0
            else:
                above = tl.where(row > 0, row - 1, last_row)
                left = tl.maximum(column - 1, 0)
                moves_left = tl.load(item_values + above * max_x + column) < tl.load(item_values + above * max_x + left)
            moves_left = (column != 0) & ((column == row) | moves_left)
            column = column - moves_left.to(tl.int32)
            row -= 1


class KernelUnavailable(RuntimeError):
    """Triton is importable but cannot build or launch the kernel on this machine (the cause is chained)."""


# What Triton (3.0 to 3.5) raises when it cannot build or launch a kernel: no C compiler (RuntimeError) or no
# Python headers (CalledProcessError) for its launcher module, libcuda not found (AssertionError), a failed module
# load (ImportError), a GPU or CUDA version the bundled compiler does not support (CompilationError, ptxas's
# PTXASError or RuntimeError, OutOfResources, RuntimeError from the driver).
LAUNCH_ERRORS = (
    RuntimeError,
    subprocess.CalledProcessError,
    AssertionError,
    ImportError,
    CompilationError,
    runtime_errors.OutOfResources,
    getattr(runtime_errors, "PTXASError", RuntimeError),
)


def maximum_path_triton(values: Tensor, t_ys: Tensor, t_xs: Tensor) -> Tensor:
    """Paths [b, T_y, T_x] float32 0/1 for float32 costs [b, T_y, T_x] and int frame/token counts [b].

    All tensors on one CUDA device (or on the CPU under ``TRITON_INTERPRET=1``); nothing is copied to the host.
    Raises ``KernelUnavailable`` when Triton cannot compile or launch the kernel here.
    """
    values = values.detach().to(torch.float32).contiguous()
    batch, max_y, max_x = values.shape
    path = torch.zeros_like(values)
    if values.numel() == 0:
        return path
    t_ys = t_ys.to(device=values.device, dtype=torch.int32).contiguous()
    t_xs = t_xs.to(device=values.device, dtype=torch.int32).contiguous()
    block_x = triton.next_power_of_2(max_x)
    decisions = torch.empty((batch, max_y, max_x), dtype=torch.int8, device=values.device)
    row = torch.empty((batch, block_x), dtype=torch.float32, device=values.device)
    try:
        launch_mas_kernel(values, t_ys, t_xs, path, decisions, row, block_x)
    except LAUNCH_ERRORS as error:
        raise KernelUnavailable(f"{type(error).__name__}: {error}") from error
    return path


def launch_mas_kernel(
    values: Tensor, t_ys: Tensor, t_xs: Tensor, path: Tensor, decisions: Tensor, row: Tensor, block_x: int
) -> None:
    """Compile (first call per specialisation) and launch ``_mas_kernel``, one program per batch item."""
    batch, max_y, max_x = values.shape
    # Enough warps that each thread holds a few columns; the row is a few hundred tokens at most in practice.
    num_warps = max(1, min(8, block_x // 128))
    with torch.cuda.device(values.device) if values.is_cuda else contextlib.nullcontext():
        _mas_kernel[(batch,)](
            values, t_ys, t_xs, path, decisions, row, max_y, max_x, BLOCK_X=block_x, num_warps=num_warps
        )
