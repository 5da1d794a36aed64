"""Numba kernels of the monotonic alignment search (CPU).

Per item the search is a dynamic programme over t_y frames (rows) and t_x tokens (columns):

    value[y, x] = neg_cent[y, x] + max(value[y-1, x], value[y-1, x-1])

restricted to the band of cells a monotonic path from (0, 0) to (t_y-1, t_x-1) can visit, with -1e9 standing
for "unreachable" and float32 arithmetic throughout (like the reference). The path is traced back from the
last cell: the column drops by one when the path is on the diagonal (x == y) or when
value[y-1, x] < value[y-1, x-1] (a tie keeps the column).

Instead of the full value matrix we keep two rows and record, per cell, the one bit the backtrack needs
(value[y-1, x] < value[y-1, x-1]); that keeps the working set in cache, and the branch-free interior loop
vectorises (SIMD max/compare over a row).
Items are independent, so the batch is spread over threads with ``prange``.
"""

from __future__ import annotations

import numba
import numpy as np

_UNREACHABLE = np.float32(-1e9)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _forward_rows(neg_cent, decisions, row_a, row_b, t_y, t_x):  # pragma: no cover - compiled
    """Run the DP over the band and store the backtrack bit of every interior cell in ``decisions``."""
    prev = row_a
    cur = row_b
    for y in range(t_y):
        lo = max(0, t_x + y - t_y)
        hi = min(t_x - 1, y)
        costs = neg_cent[y]
        bits = decisions[y]
        x_start = lo
        if lo == 0:
            # Column 0 can only be reached from above; the start cell adds nothing.
            if y == 0:
                cur[0] = costs[0] + np.float32(0.0)
            else:
                up = prev[0]
                cur[0] = costs[0] + (up if up > _UNREACHABLE else _UNREACHABLE)
            x_start = 1
        interior_stop = min(hi, y - 1) + 1  # >= 0
        # Unsigned indices: with signed ones numba emits negative-index wraparound code, which keeps LLVM
        # from vectorising this loop (about 5x slower).
        for x in range(np.uint64(x_start), np.uint64(interior_stop)):
            up = prev[x]
            diag = prev[x - np.uint64(1)]
            cur[x] = costs[x] + (up if up > diag else diag)
            bits[x] = up < diag
        if hi == y and y > 0:
            # On the diagonal the cell above lies outside the band.
            diag = prev[y - 1]
            cur[y] = costs[y] + (diag if diag > _UNREACHABLE else _UNREACHABLE)
        prev, cur = cur, prev


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _backtrack(path, decisions, t_y, t_x):  # pragma: no cover - compiled
    index = t_x - 1
    for y in range(t_y - 1, -1, -1):
        row = path[y]
        row[:] = 0.0
        row[index] = 1.0
        if index != 0 and (index == y or decisions[y, index]):
            index -= 1


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _backtrack_without_band(path, neg_cent, t_y, t_x):  # pragma: no cover - compiled
    """t_x > t_y: no monotonic path exists and the DP changes nothing.

    The reference still walks back from (t_y-1, t_x-1) comparing the raw costs of the row above, where
    "the row above" row 0 is the last row of the padded item (negative index); we reproduce that walk.
    """
    index = t_x - 1
    last_row = neg_cent.shape[0] - 1
    for y in range(t_y - 1, -1, -1):
        row = path[y]
        row[:] = 0.0
        row[index] = 1.0
        if index != 0:
            above = y - 1 if y > 0 else last_row
            if index == y or neg_cent[above, index] < neg_cent[above, index - 1]:
                index -= 1


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _fill_item(path, neg_cent, decisions, row_a, row_b, t_y, t_x):  # pragma: no cover - compiled
    path[t_y:, :] = 0.0
    if t_y <= 0 or t_x <= 0:
        path[:, :] = 0.0
    elif t_x > t_y:
        _backtrack_without_band(path, neg_cent, t_y, t_x)
    else:
        _forward_rows(neg_cent, decisions, row_a, row_b, t_y, t_x)
        _backtrack(path, decisions, t_y, t_x)


@numba.njit(nogil=True, parallel=True, cache=True, boundscheck=False)
def _fill_batch(path, neg_cent, t_ys, t_xs, order, n_workers):  # pragma: no cover - compiled
    """Worker w handles items order[w], order[w + n_workers], ... with its own scratch buffers."""
    batch, max_y, max_x = neg_cent.shape
    for worker in numba.prange(n_workers):
        row_a = np.empty(max_x, np.float32)
        row_b = np.empty(max_x, np.float32)
        decisions = np.empty((max_y, max_x), np.uint8)
        for k in range(worker, batch, n_workers):
            item = order[k]
            _fill_item(path[item], neg_cent[item], decisions, row_a, row_b, t_ys[item], t_xs[item])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _fill_batch_serial(path, neg_cent, t_ys, t_xs):  # pragma: no cover - compiled
    """One thread, no thread pool: numba's idle pool threads spin and steal CPU from torch in training."""
    batch, max_y, max_x = neg_cent.shape
    row_a = np.empty(max_x, np.float32)
    row_b = np.empty(max_x, np.float32)
    decisions = np.empty((max_y, max_x), np.uint8)
    for item in range(batch):
        _fill_item(path[item], neg_cent[item], decisions, row_a, row_b, t_ys[item], t_xs[item])


def maximum_path_numpy(
    neg_cent: np.ndarray, t_ys: np.ndarray, t_xs: np.ndarray, n_workers: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Alignment paths for a batch on up to ``n_workers`` threads.

    neg_cent: float32 [b, T_y, T_x] (C-contiguous, not modified); t_ys, t_xs: int32 [b] frames / tokens per item.
    Returns float32 0/1 paths [b, T_y, T_x], written into ``out`` when given (same shape, float32, C-contiguous).
    """
    batch = neg_cent.shape[0]
    n_workers = max(1, min(int(n_workers), batch))
    # Largest bands first, dealt round-robin, so threads get similar amounts of work.
    band_cells = t_xs.astype(np.int64) * np.maximum(t_ys.astype(np.int64) - t_xs + 1, 1)
    order = np.argsort(-band_cells, kind="stable").astype(np.int64)
    path = np.empty(neg_cent.shape, dtype=np.float32) if out is None else out
    if n_workers == 1:
        _fill_batch_serial(path, neg_cent, t_ys, t_xs)
    else:
        _fill_batch(path, neg_cent, t_ys, t_xs, order, n_workers)
    return path
