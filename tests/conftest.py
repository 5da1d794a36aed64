"""Shared fixtures: the reference kit, a fixed thread count, and the dev config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KIT_DIR = Path(os.environ.get("BV2_REFERENCE_KIT", REPO_ROOT.parent / "shared" / "reference"))


def _kit_or_skip() -> Path:
    if KIT_DIR.is_dir():
        return KIT_DIR
    message = (
        f"reference kit not found at {KIT_DIR} (set BV2_REFERENCE_KIT or place ../shared/reference beside the clone)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; under CI the kit is required")
    pytest.skip(message)


@pytest.fixture(scope="session")
def kit_dir() -> Path:
    """The reference kit folder; skipped outside CI when absent, a failure under CI."""
    return _kit_or_skip()


@pytest.fixture(scope="session")
def dev_dir(kit_dir: Path) -> Path:
    return kit_dir / "dev"


@pytest.fixture(scope="session")
def golden(dev_dir: Path) -> dict:
    import torch

    return torch.load(dev_dir / "golden.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_perturbed(dev_dir: Path) -> dict:
    import torch

    return torch.load(dev_dir / "golden_perturbed.pt", weights_only=True)


@pytest.fixture(scope="session")
def symbols_json(kit_dir: Path) -> dict:
    return json.loads((kit_dir / "symbols.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def dev_config(dev_dir: Path) -> dict:
    """The dev config as a plain dict, with slm.model pointed at the kit's tiny WavLM."""
    config = json.loads((dev_dir / "config.json").read_text(encoding="utf-8"))
    config["model"].setdefault("slm", {})["model"] = str(dev_dir / "tiny-wavlm")
    return config
