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

Every row's paths are checked against ``ours`` (the Python row on its one item). The fast rows are timed
interleaved (one call of each in turn, ``--repeats`` rounds); we print the median and the minimum, since
the 2-core machine is shared and the minimum is the least disturbed figure.
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


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every function, calling them in turn so that load from other processes on
    this shared machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


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
    n_threads = min(numba.get_num_threads(), torch.get_num_threads())
    rows = []
    for t_x, t_y in SHAPES:
        neg_cent, mask = make_inputs(t_x, t_y)
        ours = monotonic_align.maximum_path(neg_cent, mask)  # also compiles or loads the numba cache
        fast = {
            f"ours ({n_threads} threads)": lambda: monotonic_align.maximum_path(neg_cent, mask),
            "ours, 1 thread": lambda: monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=1),
            "naive, numba, 1 thread (reference-like)": lambda: naive_numba(neg_cent, mask),
        }
        same = {name: torch.equal(fn(), ours) for name, fn in fast.items()}
        times = time_interleaved(fast, repeats)

        torch_path = lambda: monotonic_align.maximum_path_torch(neg_cent, mask)  # noqa: E731
        same["torch path (CPU), 2 calls"] = torch.equal(torch_path(), ours)
        times["torch path (CPU), 2 calls"] = time_interleaved({"t": torch_path}, 2)["t"]

        one_item = neg_cent[:1].numpy()
        start = time.perf_counter()
        python_path = maximum_path_naive(one_item, np.array([t_y]), np.array([t_x]))
        name = f"naive, Python (1 item x {BATCH})"
        times[name] = [(time.perf_counter() - start) * BATCH]
        same[name] = bool(np.array_equal(python_path, ours[:1].numpy()))

        baseline = times["naive, numba, 1 thread (reference-like)"]
        for name, seconds in times.items():
            rows.append(
                {
                    "shape": f"{BATCH}x{t_x}x{t_y}",
                    "impl": name,
                    "median_ms": 1e3 * statistics.median(seconds),
                    "min_ms": 1e3 * min(seconds),
                    "speedup_median": statistics.median(baseline) / statistics.median(seconds),
                    "speedup_min": min(baseline) / min(seconds),
                    "same": same[name],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per fast row (median is reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import numba

    load_before = os.getloadavg()[0]
    rows = run(args.repeats)
    logger.info(
        "cores %s, torch threads %s, numba threads %s (threading layer %s), 1-min load avg %.2f -> %.2f",
        os.cpu_count(),
        torch.get_num_threads(),
        numba.get_num_threads(),
        numba.threading_layer(),
        load_before,
        os.getloadavg()[0],
    )
    header = (
        f"{'B x text x frames':<18} {'implementation':<40} {'median ms':>10} {'min ms':>9} "
        f"{'speedup vs ref-like (median / min)':>35} {'same path':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        speedup = f"{row['speedup_median']:.2f}x / {row['speedup_min']:.2f}x"
        lines.append(
            f"{row['shape']:<18} {row['impl']:<40} {row['median_ms']:>10.2f} {row['min_ms']:>9.2f} "
            f"{speedup:>35} {'yes' if row['same'] else 'NO':>9}"
        )
    print("\n".join(lines))
    if not all(row["same"] for row in rows):
        raise SystemExit("paths differ between implementations")


if __name__ == "__main__":
    main()
