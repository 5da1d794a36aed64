"""Shared fixtures: the reference kit (golden numbers), and the kit-free tiny model config with a tiny WavLM.

Tests that compare with the reference's numbers use the kit fixtures (``kit_dir``, ``dev_dir``, ``golden``,
``dev_config`` ...): they skip with a reason when the kit is absent and fail under ``CI=true``. Every other test
uses ``tiny_model_config`` (tests/configs/tiny.json, the kit's dev-model shape) or ``tiny_train_config`` (the same
with a tiny WavLM built locally) and runs in a plain clone.
Under ``CI=true`` no test may skip (a skip is turned into a failure), except tests marked ``gpu``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
KIT_DIR = Path(os.environ.get("BV2_REFERENCE_KIT", REPO_ROOT.parent / "shared" / "reference"))


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; the only tests allowed to skip under CI=true")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One thread per xdist worker, for torch and for numba's parallel MAS kernel (read when numba is first
        # imported; the training runs a test starts inherit it): the workers already fill the cores, and
        # OpenMP threads spinning on an oversubscribed core made a tiny training step 20 times slower.
        os.environ["NUMBA_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU checks are deselected (not skipped) unless ``gpu`` is named in ``-m``: the default suite stays skip-free."""
    if "gpu" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("gpu")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI a skipped test is a failure: a missing tool or dependency must not pass unnoticed."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and under_ci()) or hasattr(report, "wasxfail") or item.get_closest_marker("gpu"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, which allows no skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a whole module skipped at import (``pytest.importorskip``, ``allow_module_level``)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and under_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped under CI=true, which allows no skips: {reason}"


def _kit_or_skip() -> Path:
    if KIT_DIR.is_dir():
        return KIT_DIR
    message = (
        f"reference kit not found at {KIT_DIR} (set BV2_REFERENCE_KIT or place ../shared/reference beside the clone)"
    )
    if under_ci():
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
    """The kit's dev config as a plain dict, with slm.model pointed at the kit's tiny WavLM (for golden tests)."""
    config = json.loads((dev_dir / "config.json").read_text(encoding="utf-8"))
    config["model"].setdefault("slm", {})["model"] = str(dev_dir / "tiny-wavlm")
    return config


# ------------------------------------------------------------------------------------------ without the kit


def build_tiny_wavlm(folder: Path, hidden: int = 32, hidden_states: int = 3, seed: int = 0) -> Path:
    """A randomly initialised WavLM of the kit's tiny shape (train_ms's demo builder; nothing downloads).

    WavLM reports its embeddings as an extra hidden state, so ``hidden_states`` (the config's ``slm.nlayers``)
    is one more than its transformer layers. The feature extractor's overall stride is 320 samples, as in the
    real model.
    """
    import train_ms

    train_ms.make_demo_wavlm(folder, hidden, hidden_states, seed=seed)
    return folder


@pytest.fixture(scope="session")
def tiny_wavlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny WavLM folder built for this session (the kit-free stand-in for the kit's dev/tiny-wavlm)."""
    return build_tiny_wavlm(tmp_path_factory.mktemp("tiny-wavlm"))


@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    """tests/configs/tiny.json: the dev model's shape, no reference kit. Its slm.model names no folder; tests
    that train (and so load WavLM) use ``tiny_train_config``.

    Shared by the session: copy it before changing anything (``json.loads(json.dumps(config))``).
    """
    return json.loads((CONFIGS_DIR / "tiny.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_train_config(tiny_model_config: dict, tiny_wavlm_dir: Path) -> dict:
    """``tiny_model_config`` with slm.model pointed at the session's tiny WavLM (shared: copy before changing)."""
    config = json.loads(json.dumps(tiny_model_config))
    config["model"]["slm"]["model"] = str(tiny_wavlm_dir)
    return config
