"""Untrained voices and a started-process wait, for the tests that serve speech (server, web UI)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch

from models import build_generator


def write_untrained_voice(checkpoint: Path, config_path: Path, config: dict, seed: int) -> tuple[Path, Path]:
    """``config`` as JSON at ``config_path`` and a freshly built generator (seeded, the caller's RNG untouched)
    as a reference-layout ``G_0``-style checkpoint at ``checkpoint``. Returns (checkpoint, config_path)."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net_g = build_generator(config, for_training=True)
    torch.save({"model": net_g.state_dict(), "iteration": 0}, checkpoint)
    return checkpoint, config_path


def wait_until_answering(process: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not answering {url} after {timeout} s:\n{log.read_text(errors='replace')}")
