"""A plain, literal monotonic alignment search: the yardstick the fast kernels are checked against.

It keeps the whole value matrix, visits every band cell with explicit branches and uses float32 storage
like the reference. Slow in Python (microseconds per cell); ``bench/mas.py`` also compiles
``naive_item`` with numba as a stand-in for the reference's single-threaded kernel.
"""

from __future__ import annotations

import numpy as np

UNREACHABLE = -1e9


def naive_item(value: np.ndarray, path: np.ndarray, t_y: int, t_x: int) -> None:
    """Fill ``path`` [T_y, T_x] for one item; ``value`` (float32 [T_y, T_x], the costs) is overwritten by the DP."""
    for y in range(t_y):
        for x in range(max(0, t_x + y - t_y), min(t_x, y + 1)):
            if x == y:
                from_above = UNREACHABLE  # cell (y-1, y) is right of the band
            else:
                from_above = value[y - 1, x]
            if x == 0:
                from_diagonal = 0.0 if y == 0 else UNREACHABLE
            else:
                from_diagonal = value[y - 1, x - 1]
            value[y, x] += max(from_above, from_diagonal)
    column = t_x - 1
    for y in range(t_y - 1, -1, -1):
        path[y, column] = 1.0
        # value[y - 1] at y == 0 is the last row (Python's negative index), as in the reference.
        if column != 0 and (column == y or value[y - 1, column] < value[y - 1, column - 1]):
            column -= 1


def maximum_path_naive(neg_cent: np.ndarray, t_ys: np.ndarray, t_xs: np.ndarray) -> np.ndarray:
    """Paths [b, T_y, T_x] (float32 0/1) for costs [b, T_y, T_x]; items with no frames or no tokens stay empty."""
    values = np.array(neg_cent, dtype=np.float32, copy=True)
    path = np.zeros(values.shape, dtype=np.float32)
    for item in range(values.shape[0]):
        t_y, t_x = int(t_ys[item]), int(t_xs[item])
        if t_y > 0 and t_x > 0:
            naive_item(values[item], path[item], t_y, t_x)
    return path
