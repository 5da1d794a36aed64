"""bench/gpu_check.sh on a machine without CUDA: a clear message and exit status 2 (the GPU run is in test_gpu)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
