"""bench/gpu_check.sh on a machine without CUDA: a clear message and exit status 2 (the GPU run is in test_gpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow  # about 35 s on an idle 2-core machine (four nets, two steps); run it before a GPU session
def test_train_step_figures_run_on_a_tiny_config_on_the_cpu(tmp_path: Path, tiny_train_config: dict) -> None:
    """The GPU check's timing code, run on the CPU (fp32, batch 1, one step) so that it is known to work
    before a GPU session spends its time on it."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import gpu_check

    config = json.loads(json.dumps(tiny_train_config))
    config["train"]["segment_size"] = 2048
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    rows = gpu_check.check_train_step(path, [1], steps=1, warmup=0, seconds=0.5, device_name="cpu", precisions=["fp32"])
    assert len(rows) == 1
    row = rows[0]
    assert row["precision"] == "fp32" and row["batch"] == 1
    assert row["ours_s_per_step"] > 0 and row["reference_like_s_per_step"] > 0
    assert row["ours_peak_gib"] is None  # no memory figures off CUDA
