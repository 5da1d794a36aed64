"""The training loop's throughput and memory scalars (metrics.PerfMeter) on a scripted clock."""

from __future__ import annotations

import mmap
from types import SimpleNamespace

import pytest
import torch

import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batch(*lengths: int) -> SimpleNamespace:
    return SimpleNamespace(wav_lengths=torch.tensor(lengths))


def test_interval_averages_and_reset() -> None:
    clock = Clock()
    meter = metrics.PerfMeter("cpu", world_size=2, sampling_rate=1000, clock=clock)
    for wait, work in ((0.5, 1.5), (0.1, 1.9)):  # two steps of 2 s, 0.6 s of them waiting for data
        clock.now += wait
        meter.batch_arrived(batch(1000, 3000))
        clock.now += work
        meter.step_finished()
    scalars = meter.read()
    assert scalars["perf/step_seconds"] == pytest.approx(2.0)
    assert scalars["perf/data_wait_seconds"] == pytest.approx(0.3)
    assert scalars["perf/samples_per_second"] == pytest.approx(4 * 2 / 4.0)  # two ranks' clips per second
    assert scalars["perf/audio_seconds_per_second"] == pytest.approx(8.0 * 2 / 4.0)
    assert scalars["perf/peak_memory_gb"] > 0.0
    assert meter.read() == {}  # a new interval without steps


def test_logging_and_saving_are_not_data_wait() -> None:
    clock = Clock()
    meter = metrics.PerfMeter("cpu", world_size=1, sampling_rate=1000, clock=clock)
    meter.batch_arrived(batch(10))
    clock.now += 1.0
    meter.step_finished()
    clock.now += 3.0  # a checkpoint save
    meter.waiting_for_batch()
    clock.now += 0.5
    meter.batch_arrived(batch(10))
    with meter.paused():
        clock.now += 100.0  # an evaluation: neither step time nor data wait
    clock.now += 0.5
    meter.step_finished()
    scalars = meter.read()
    assert scalars["perf/data_wait_seconds"] == pytest.approx(0.5 / 2)
    assert scalars["perf/step_seconds"] == pytest.approx(5.0 / 2)


def touch_and_free(size: int) -> None:
    """Make ``size`` bytes resident, then give them back to the system. An anonymous mapping of its own: memory
    from the allocator may reuse pages that earlier tests of the same process left resident (no RSS growth)."""
    block = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
    finally:
        block.close()


def test_cpu_peak_memory_is_per_interval() -> None:
    meter = metrics.PerfMeter("cpu", world_size=1, sampling_rate=1000)
    meter.batch_arrived(batch(10))
    touch_and_free(320 << 20)  # freed before the interval ends: only its peak remains
    meter.step_finished()
    high = meter.read()["perf/peak_memory_gb"]
    meter.batch_arrived(batch(10))
    meter.step_finished()
    low = meter.read()["perf/peak_memory_gb"]
    assert high - low > 0.25
