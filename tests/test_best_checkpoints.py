"""The best checkpoints (utils.BestCheckpoints): never deleted by keep_ckpts retention, best.json survives resume
and is right after a SIGKILL at any moment."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torch import nn

import utils

PREFIXES = ("G", "D", "DUR", "WD")
REPO_ROOT = Path(__file__).resolve().parents[1]


def mcd_of(step: int) -> float:
    """A made-up validation MCD that goes up and down with the step (lower is better)."""
    return (step * 37 % 101) / 10.0


def make_registry() -> utils.CheckpointRegistry:
    registry = utils.CheckpointRegistry()
    for prefix in PREFIXES:
        registry.add_net(prefix, nn.Linear(2, 2))
    return registry


def train_and_save(model_dir: Path, steps: range, keep_ckpts: int, keep_best: int, metric: str = "val/mcd") -> None:
    """What the trainer does at each eval_interval: score, record, save (with retention)."""
    registry = make_registry()
    best = utils.BestCheckpoints(model_dir, metric, keep_best)
    for step in steps:
        best.record(step, {"val/mcd": mcd_of(step), "val/dnsmos_ovrl": step / 1000.0})
        registry.save(str(model_dir), step, 1, 2e-4, keep=keep_ckpts, best=best)


def steps_on_disk(model_dir: Path, prefix: str) -> set[int]:
    return {utils.checkpoint_step(path) for path in model_dir.glob(f"{prefix}_*.pth")}


def test_retention_keeps_the_newest_and_the_best_complete_sets(tmp_path: Path) -> None:
    steps = range(100, 1100, 100)
    train_and_save(tmp_path, steps, keep_ckpts=2, keep_best=2)
    best_two = sorted(steps, key=lambda step: (mcd_of(step), step))[:2]
    for prefix in PREFIXES:  # the whole set of each kept step: G_, D_, DUR_ and WD_
        assert steps_on_disk(tmp_path, prefix) == {900, 1000, *best_two}, prefix
    document = json.loads((tmp_path / "best.json").read_text(encoding="utf-8"))
    assert document["metric"] == "val/mcd" and document["keep"] == 2
    assert [entry["step"] for entry in document["best"]] == best_two
    assert document["best"][0]["metrics"] == {"val/mcd": mcd_of(best_two[0]), "val/dnsmos_ovrl": best_two[0] / 1000}
    assert document["best"][0]["checkpoint"] == f"G_{best_two[0]}.pth"
    assert sorted(entry["step"] for entry in document["scored"]) == sorted({900, 1000, *best_two})


def test_resume_keeps_protecting_and_a_new_metric_reranks(tmp_path: Path) -> None:
    train_and_save(tmp_path, range(100, 600, 100), keep_ckpts=1, keep_best=1)
    best_step = min(range(100, 600, 100), key=mcd_of)
    resumed = utils.BestCheckpoints(tmp_path, "val/mcd", 1)
    assert resumed.protected_steps() == {best_step}
    train_and_save(tmp_path, range(600, 800, 100), keep_ckpts=1, keep_best=1)  # the resumed run goes on
    assert steps_on_disk(tmp_path, "G") == {700, min(range(100, 800, 100), key=mcd_of)}
    # Higher DNSMOS is better: the newest kept step wins under that metric.
    reranked = utils.BestCheckpoints(tmp_path, "val/dnsmos_ovrl", 1)
    assert reranked.protected_steps() == {max(steps_on_disk(tmp_path, "G"))}


def test_a_step_whose_save_never_completed_is_not_kept(tmp_path: Path) -> None:
    train_and_save(tmp_path, range(100, 300, 100), keep_ckpts=1, keep_best=1)
    best = utils.BestCheckpoints(tmp_path, "val/mcd", 1)
    best.record(300, {"val/mcd": -1.0})  # the best ever, but the process dies before its checkpoint is saved
    (tmp_path / "G_300.pth").write_bytes(b"PK\x03\x04")  # a torn file at most
    assert best.protected_steps() == {min((100, 200), key=mcd_of)}
    utils.BestCheckpoints(tmp_path, "val/mcd", 1)  # the resumed run rewrites the file
    document = json.loads((tmp_path / "best.json").read_text(encoding="utf-8"))
    assert [entry["step"] for entry in document["best"]] == [min((100, 200), key=mcd_of)]


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown metric 'val/nope'"):
        utils.BestCheckpoints(tmp_path, "val/nope", 1)
    (tmp_path / "best.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"best.json: not a best-checkpoints file"):
        utils.BestCheckpoints(tmp_path, "val/mcd", 1)


# The training loop of the kill test: record, save, retention, as fast as it goes, from a given step on.
KILL_LOOP = """
import sys
sys.path.insert(0, {tests!r})
import test_best_checkpoints as t
from pathlib import Path
start = int(sys.argv[2])
print("ready", flush=True)
t.train_and_save(Path(sys.argv[1]), range(start, start + 100000, 10), keep_ckpts=2, keep_best=2)
"""


def last_complete_step(model_dir: Path) -> int | None:
    path = utils.latest_checkpoint_path(model_dir, "G_*.pth")
    return utils.checkpoint_step(path) if path else None


def check_invariants(model_dir: Path, first_step: int) -> int:
    """After a kill: best.json parses, lists complete kept sets in order, and the two best steps ever saved all
    still exist; returns the last complete step."""
    last = last_complete_step(model_dir)
    assert last is not None
    document = json.loads((model_dir / "best.json").read_text(encoding="utf-8"))
    listed = [entry["step"] for entry in document["best"]]
    assert [entry["metrics"]["val/mcd"] for entry in document["best"]] == sorted(mcd_of(step) for step in listed)
    saved = range(first_step, last + 1, 10)  # sequential: every step up to the last complete one was saved
    best_two = sorted(saved, key=lambda step: (mcd_of(step), step))[:2]
    for step in {*listed, *best_two}:
        for prefix in PREFIXES:
            assert utils.is_complete_checkpoint(utils.checkpoint_file(model_dir, prefix, step)), (prefix, step)
    assert utils.BestCheckpoints(model_dir, "val/mcd", 2).protected_steps() == set(best_two)
    return last


def test_sigkill_at_any_moment_leaves_the_best_intact(tmp_path: Path) -> None:
    script = tmp_path / "loop.py"
    script.write_text(KILL_LOOP.format(tests=str(Path(__file__).parent)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    rng = random.Random(5)
    start = 10
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, str(script), str(model_dir), str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.3, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if last_complete_step(model_dir) is None:
            continue
        start = check_invariants(model_dir, 10) + 10  # resume after the last complete checkpoint, as train_ms does
    assert start > 100, "the loop made too little progress to test anything"


def test_registry_save_without_best_still_cleans(tmp_path: Path) -> None:
    registry = make_registry()
    for step in (10, 20, 30):
        registry.save(str(tmp_path), step, 1, 2e-4, keep=1)
    assert steps_on_disk(tmp_path, "G") == {30}


def test_config_declares_keep_best_and_best_metric(tmp_path: Path) -> None:
    import yaml

    import config

    settings = config.load_config(REPO_ROOT / "config.yml").train_ms
    assert (settings.keep_best, settings.best_metric) == (3, "val/dnsmos_ovrl")
    document = yaml.safe_load((REPO_ROOT / "config.yml").read_text(encoding="utf-8"))
    document["train_ms"]["best_metric"] = "val/mos"
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    with pytest.raises(ValueError, match=r"'train_ms.best_metric' must be one of 'val/mel_l1'.*got 'val/mos'"):
        config.load_config(path)
