"""Benchmark of the monotonic alignment search at training sizes (B=16, text x frames 200x860 and 300x1000).

Run from the repo root:  python3 bench/mas.py [--repeats 30]

Rows:
* ``ours``              monotonic_align.maximum_path (numba, prange over items, default threads), whole call
                        including the tensor <-> array conversions;
* ``ours, 1 thread``    the same kernel restricted to one thread;
* ``naive, numba``      the literal DP of monotonic_align.naive compiled with numba, one thread, wrapped the
                        way the reference wraps its kernel (float32 copy, int32 path, conversion back): our
                        stand-in for the reference's single-threaded kernel;
* ``naive, Python``     the same literal DP in plain Python on ONE item, multiplied by B (it takes seconds);
* ``torch path (CPU)``  maximum_path_torch, the device-resident implementation meant for CUDA, on the CPU.

Every row's paths are checked against ``ours`` (the Python row on its one item). Times are medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import monotonic_align  # noqa: E402
from monotonic_align.naive import maximum_path_naive, naive_item  # noqa: E402

logger = logging.getLogger(__name__)

BATCH = 16
SHAPES = [(200, 860), (300, 1000)]  # (text tokens, frames)


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def make_inputs(t_x: int, t_y: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Costs shaped like the training forward's neg_cent: [B, frames, tokens], full-length mask."""
    generator = torch.Generator().manual_seed(seed)
    neg_cent = torch.randn(BATCH, t_y, t_x, generator=generator) * 3.0 - 40.0
    mask = torch.ones(BATCH, t_y, t_x)
    return neg_cent, mask


def reference_style_call(compiled_item: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap a per-item kernel like the reference does: copy to float32, int32 path, convert back."""

    def call(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        values = neg_cent.data.cpu().numpy().astype(np.float32)
        path = np.zeros(values.shape, dtype=np.int32)
        t_ys = mask.sum(1)[:, 0].data.cpu().numpy().astype(np.int32)
        t_xs = mask.sum(2)[:, 0].data.cpu().numpy().astype(np.int32)
        compiled_item(path, values, t_ys, t_xs)
        return torch.from_numpy(path).to(device=neg_cent.device, dtype=neg_cent.dtype)

    return call


def compile_naive_batch() -> Callable:
    import numba

    item = numba.njit(nogil=True)(naive_item)

    @numba.njit(nogil=True)
    def batch(path, values, t_ys, t_xs):
        for i in range(values.shape[0]):
            item(values[i], path[i], t_ys[i], t_xs[i])

    return batch


def run(repeats: int) -> list[dict]:
    import numba

    naive_numba = reference_style_call(compile_naive_batch())
    rows = []
    for t_x, t_y in SHAPES:
        neg_cent, mask = make_inputs(t_x, t_y)
        ours = monotonic_align.maximum_path(neg_cent, mask)  # also compiles / loads the cache
        candidates = {
            f"ours ({min(numba.get_num_threads(), torch.get_num_threads())} threads)": (
                lambda: monotonic_align.maximum_path(neg_cent, mask), repeats),
            "ours, 1 thread": (lambda: monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=1), repeats),
            "naive, numba, 1 thread (reference-like)": (lambda: naive_numba(neg_cent, mask), repeats),
            "torch path (CPU)": (lambda: monotonic_align.maximum_path_torch(neg_cent, mask), 2),
        }
        results = {}
        for name, (fn, n) in candidates.items():
            same = torch.equal(fn(), ours)
            results[name] = (median_ms(fn, n), same)

        one_item = neg_cent[:1].numpy()
        lengths = np.array([t_y]), np.array([t_x])
        start = time.perf_counter()
        python_path = maximum_path_naive(one_item, *lengths)
        python_ms = 1e3 * (time.perf_counter() - start) * BATCH
        results["naive, Python (1 item x16)"] = (python_ms, bool(np.array_equal(python_path, ours[:1].numpy())))

        baseline = results["naive, numba, 1 thread (reference-like)"][0]
        for name, (ms, same) in results.items():
            rows.append({"shape": f"{BATCH}x{t_x}x{t_y}", "impl": name, "ms": ms,
                         "speedup": baseline / ms, "same": same})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per fast row (median is reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numba

    logger.info("cores %s, torch threads %s, numba threads %s (%s layer after first call), load avg %s",
                os.cpu_count(), torch.get_num_threads(), numba.get_num_threads(), "?",
                " ".join(f"{v:.2f}" for v in os.getloadavg()))
    rows = run(args.repeats)
    logger.info("numba threading layer: %s", numba.threading_layer())
    header = f"{'B x text x frames':<18} {'implementation':<42} {'ms/call':>10} {'vs ref-like':>11} {'same path':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['shape']:<18} {row['impl']:<42} {row['ms']:>10.2f} {row['speedup']:>10.2f}x "
                     f"{'yes' if row['same'] else 'NO':>9}")
    print("\n".join(lines))
    if not all(row["same"] for row in rows):
        raise SystemExit("paths differ between implementations")


if __name__ == "__main__":
    main()
