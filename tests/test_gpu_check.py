"""bench/gpu_check.sh and its parts on a machine without CUDA: exit status 2 with a clear message after the import
check, the report written row by row, the interleaved timing, and the reference-like step's host round trips.
(The GPU run itself is bench/gpu_check.sh; its tests are in test_gpu.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import commons
import monotonic_align

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "bench"))


def test_gpu_check_without_cuda_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU, so this holds on every machine
    out = tmp_path / "report.json"
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in result.stderr
    assert not out.exists()
    # The import check ran first, before torch loaded, and took well under a second.
    found = re.search(r"--- imports found in ([0-9.]+) s: all", result.stdout)
    assert found, result.stdout
    assert float(found.group(1)) < 1.0


def test_report_is_written_after_every_row(tmp_path: Path) -> None:
    """A run cut short by the device's time limit still leaves everything measured so far."""
    import gpu_check

    out = tmp_path / "report.json"
    report = gpu_check.Report(out)
    report.add_row("train_step", {"precision": "fp32", "batch": 8})
    assert json.loads(out.read_text())["checks"]["train_step"] == [{"precision": "fp32", "batch": 8}]
    report.skip("train_step fp16 batch 16", "the 540 s budget is spent")
    report.fail("mas", "paths differ")
    saved = json.loads(out.read_text())
    assert saved["skipped"] == {"train_step fp16 batch 16": "the 540 s budget is spent"}
    assert saved["failed"] == {"mas": "paths differ"} and saved["wall_s"] >= 0


def test_variants_alternate_batch_by_batch_after_the_warmup(monkeypatch) -> None:
    import train_step

    calls = []

    def fake_time_steps(trainer, batch, hps, rt, ref_like, steps):
        calls.append((batch, "reference_like" if ref_like else "ours"))
        return [0.5 if ref_like else 0.25]

    monkeypatch.setattr(train_step, "time_steps", fake_time_steps)
    rt = type("Runtime", (), {"device": torch.device("cpu")})()
    figures = train_step.compare_steps(None, ["short", "long"], None, rt, warmup_rounds=1, rounds=2)
    # Every shape seen by both variants in the warm-up; which variant goes first alternates at every batch.
    assert calls[:4] == [("short", "reference_like"), ("short", "ours"), ("long", "ours"), ("long", "reference_like")]
    assert len(calls) == 12
    assert figures["ours"]["seconds"] == [0.25] * 4 and figures["reference_like"]["seconds"] == [0.5] * 4
    assert figures["ours"]["peak_gib"] is None


def test_reference_like_round_trips_are_swapped_in_and_out() -> None:
    import reference_like

    originals = (commons.grad_norm, commons.host_random, monotonic_align.maximum_path)
    with reference_like.reference_host_round_trips():
        assert commons.grad_norm is reference_like.per_parameter_grad_norm
        assert commons.host_random is reference_like.pageable_host_random
        assert monotonic_align.maximum_path is monotonic_align.maximum_path_cpu
    assert (commons.grad_norm, commons.host_random, monotonic_align.maximum_path) == originals


def test_reference_like_grad_norm_reads_the_same_norm() -> None:
    import reference_like

    generator = torch.Generator().manual_seed(0)
    parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((3, 4), (5,), (2, 2, 2))]
    for p in parameters[:2]:
        p.grad = torch.randn(p.shape, generator=generator)
    expected = commons.grad_norm(parameters)
    measured = reference_like.per_parameter_grad_norm(parameters)
    assert measured.dtype == torch.float64 and measured.shape == ()
    assert float(measured) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.slow  # about 35 s on an idle 2-core machine (four nets, two steps); run it before a GPU session
def test_train_step_figures_run_on_a_tiny_config_on_the_cpu(tmp_path: Path, tiny_train_config: dict) -> None:
    """The GPU check's timing code, run on the CPU (fp32, batch 1, one step) so that it is known to work
    before a GPU session spends its time on it."""
    import gpu_check

    config = json.loads(json.dumps(tiny_train_config))
    config["train"]["segment_size"] = 2048
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    rows = gpu_check.check_train_step(
        path, [1], steps=1, warmup=0, lengths_s=[0.5, 0.6], device_name="cpu", precisions=["fp32"]
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["precision"] == "fp32" and row["batch"] == 1 and row["clip_seconds"] == [0.5, 0.6]
    assert row["ours_s_per_step"] > 0 and row["reference_like_s_per_step"] > 0
    assert row["ours_peak_gib"] is None  # no memory figures off CUDA


@pytest.mark.slow  # four tiny trainers, six updates on the CPU
def test_largest_batch_search_runs_on_a_tiny_config_on_the_cpu(tmp_path: Path, tiny_train_config: dict) -> None:
    """The largest-batch section's code, on the CPU (no out-of-memory there: the search stops at its limit)."""
    import gpu_check

    config = json.loads(json.dumps(tiny_train_config))
    config["train"]["segment_size"] = 2048
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    rows = gpu_check.check_largest_batch(path, 0.5, device_name="cpu", precisions=("fp32",), start=1, limit=2)
    assert [(r["activation_checkpointing"], r["largest_batch"], r["tried_up_to"]) for r in rows] == [
        (False, 2, 4),
        (True, 2, 4),
    ]
