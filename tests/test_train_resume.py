"""Resuming train_ms.py: a run SIGKILLed at startup, during a step, during evaluation and while writing a
checkpoint resumes each time from a complete checkpoint and ends bit-identical to an uninterrupted run; SIGTERM
finishes the step, saves and exits 0; truncated checkpoints, checkpoint cleanup, the reference's own
checkpoints, and fine-tuning from a base model.

The kill points are not timed: tests/probe_run.py holds the run at a named point (a file being loaded or
written, an optimizer step, the evaluation's synthesis) and the test kills it there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from train_tiny import (
    first_batch,
    kill,
    make_dataset,
    release,
    run_training,
    start_training,
    tiny_config,
    wait_for,
    wait_paused,
    write_run_files,
)

import train_nets
import train_resume
import train_runtime
import training
import utils
from config import ModelConfig, model_config_from_dict

CPU = train_runtime.Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
PREFIXES = ("G", "D", "WD", "DUR")
N_STEPS = 3  # 2 batches per epoch: the runs cross an epoch boundary (LR decay, sampler epoch)
OPTIMIZERS_PER_STEP = 4  # DUR, D, WD, G


def _checkpoint(model_dir: Path, prefix: str, step: int) -> dict:
    return torch.load(model_dir / f"{prefix}_{step}.pth", map_location="cpu", weights_only=True)


def _steps(model_dir: Path, prefix: str = "G") -> list[int]:
    return sorted(utils.checkpoint_step(str(p)) for p in model_dir.glob(f"{prefix}_*.pth"))


def _assert_same_tree(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _assert_same_run_state(expected_dir: Path, actual_dir: Path, step: int) -> None:
    """Weights, optimizer moments, LR schedules, scaler, counters and RNG states all bitwise equal."""
    for prefix in PREFIXES:
        expected, actual = _checkpoint(expected_dir, prefix, step), _checkpoint(actual_dir, prefix, step)
        expected.pop("config", None), actual.pop("config", None)  # the configs name their own folders
        _assert_same_tree(expected, actual, f"{prefix}_{step}")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_train_config) -> dict:
    """N_STEPS steps in one go, evaluating and saving after every step, keeping the 2 newest checkpoints and the
    best one."""
    root = tmp_path_factory.mktemp("straight")
    filelists = make_dataset(root / "data")
    config = tiny_config(tiny_train_config, filelists, eval_interval=1, log_interval=1)
    files = write_run_files(root / "run", config, keep_ckpts=2, keep_best=1)
    run_training(files, "--max-steps", str(N_STEPS))
    return {"files": files, "config": config, "root": root}


def test_keep_ckpts_removes_older_checkpoints_of_every_net_but_the_best(straight_run):
    model_dir = straight_run["files"]["model_dir"]
    best = json.loads((model_dir / utils.BestCheckpoints.FILE).read_text(encoding="utf-8"))["best"]
    assert len(best) == 1
    kept = {2, 3, best[0]["step"]}
    names = sorted(p.name for p in model_dir.glob("*.pth"))
    assert names == sorted(f"{prefix}_{step}.pth" for prefix in PREFIXES for step in kept)


def _killed_at(files: dict, pause: str, folder: Path, expected_at: str) -> None:
    """Start a run held by the probe at ``pause``, check where it holds, SIGKILL its process group."""
    process = start_training(
        files, "--max-steps", "1000", log_path=folder / "out.log", probe_dir=folder / "probe", pause=pause
    )
    try:
        at = wait_paused(folder / "probe", process)
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL
    assert at.startswith(expected_at), at
    _assert_best_sets_complete(files["model_dir"])


def _assert_best_sets_complete(model_dir: Path) -> None:
    """best.json, whenever the run was cut, names as best only steps whose four checkpoints are complete."""
    path = model_dir / utils.BestCheckpoints.FILE
    if path.is_file():
        for entry in json.loads(path.read_text(encoding="utf-8"))["best"]:
            for prefix in PREFIXES:
                assert utils.is_complete_checkpoint(model_dir / f"{prefix}_{entry['step']}.pth"), (prefix, entry)


@pytest.mark.slow  # five train_ms.py runs (four killed, one resumed); CI runs it with -m slow
def test_sigkill_at_each_phase_resumes_bit_identically(straight_run, tmp_path):
    """SIGKILL during a step, at startup (while reading the checkpoint), during evaluation and while writing
    G_2.pth (its siblings already written): every restart resumes from the newest complete checkpoint, and the
    run ends with the same weights, optimizer moments, LR, counters and RNG states as the uninterrupted one."""
    files = write_run_files(tmp_path / "run", straight_run["config"], keep_ckpts=2)
    model_dir = files["model_dir"]

    # During the second step: after its duration and multi-period discriminator updates, before WD's and G's.
    _killed_at(files, f"step:{OPTIMIZERS_PER_STEP + 2}", tmp_path / "kill_step", "after optimizer step")
    assert _steps(model_dir) == [1]

    # At startup, while the resumed run reads its checkpoint.
    _killed_at(files, r"load:1:^G_\d+\.pth$", tmp_path / "kill_startup", "load G_1.pth")
    assert _steps(model_dir) == [1]

    # During the evaluation after step 2 (before its checkpoint).
    _killed_at(files, "infer:1", tmp_path / "kill_eval", "infer")
    assert _steps(model_dir) == [1]

    # While writing G_2.pth, after DUR_2, WD_2 and D_2: the resume must take G_1 with its own siblings.
    _killed_at(files, r"save:1:G_2\.pth", tmp_path / "kill_save", "save .G_2.pth")
    assert _steps(model_dir) == [1] and all(_steps(model_dir, prefix) == [1, 2] for prefix in ("D", "WD", "DUR"))
    assert list(model_dir.glob(".G_2.pth.*.tmp")), "the half-written temporary file should be left behind"

    result = run_training(files, "--max-steps", str(N_STEPS))
    assert f"resuming from {model_dir / 'G_1.pth'}" in result.stderr
    best = json.loads((model_dir / utils.BestCheckpoints.FILE).read_text(encoding="utf-8"))
    assert [entry["step"] for entry in best["scored"]] == [1, 2, 3]  # step 2 scored again after the kills
    _assert_best_sets_complete(model_dir)
    _assert_same_run_state(straight_run["files"]["model_dir"], model_dir, N_STEPS)
    state = _checkpoint(model_dir, "G", N_STEPS)["train_state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 2, 1)
    lr = _checkpoint(model_dir, "G", N_STEPS)["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(2e-4 * 0.99995)  # one epoch of decay


def test_sigterm_finishes_the_step_saves_and_exits_0(straight_run, tmp_path):
    """SIGTERM in the middle of step 2: the step completes, its checkpoint is written (bitwise the uninterrupted
    run's step-2 state) and the process exits 0."""
    files = write_run_files(tmp_path / "run", straight_run["config"], keep_ckpts=2)
    probe_dir = tmp_path / "probe"
    log = tmp_path / "out.log"
    process = start_training(
        files, "--max-steps", "1000", log_path=log, probe_dir=probe_dir, pause=f"step:{OPTIMIZERS_PER_STEP + 2}"
    )
    try:
        wait_paused(probe_dir, process)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM" in log.read_text(encoding="utf-8"), timeout=120, what="the SIGTERM log")
        release(probe_dir)
        assert process.wait(timeout=600) == 0, log.read_text(encoding="utf-8")[-4000:]
    finally:
        kill(process)
    assert _steps(files["model_dir"]) == [1, 2]
    _assert_same_run_state(straight_run["files"]["model_dir"], files["model_dir"], 2)


def test_truncated_newest_checkpoint_is_skipped(straight_run, tmp_path, caplog):
    """A G_ file cut short (crash during a copy, full disk) is skipped: the trainer resumes from the previous one
    and loads that step's D_/WD_/DUR_ siblings, bit for bit what the run saved then. (That a resumed run then
    ends bitwise equal to an uninterrupted one is the slow SIGKILL test's.)"""
    source = straight_run["files"]["model_dir"]
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    for path in source.glob("*.pth"):
        os.link(path, model_dir / path.name)  # saves replace files by rename, so the originals stay intact
    newest = model_dir / f"G_{N_STEPS}.pth"
    data = newest.read_bytes()
    newest.unlink()
    newest.write_bytes(data[: len(data) // 2])

    hps = model_config_from_dict(straight_run["config"])
    hps.model_dir = str(model_dir)
    trainer = train_nets.build_trainer(hps, CPU)
    with caplog.at_level(logging.INFO):
        assert train_resume.restore_or_initialise(trainer, hps, CPU, base_dir=None) is True
    assert f"skipping incomplete checkpoint {newest}" in caplog.text
    assert f"resuming from {model_dir / 'G_2.pth'}: step 2" in caplog.text
    assert trainer.state.step == 2
    for part in trainer.parts():
        saved = _checkpoint(source, part.prefix, 2)
        _assert_same_tree(part.raw.state_dict(), saved["model"], f"{part.prefix}_2 weights")
        _assert_same_tree(part.optimizer.state_dict(), saved["optimizer"], f"{part.prefix}_2 optimizer")


# ------------------------------------------------------------------------------- reference checkpoints, base


def _tiny_hps(tmp_path: Path, dev_config: dict, **train) -> ModelConfig:
    filelists = make_dataset(tmp_path / "data")
    hps = model_config_from_dict(tiny_config(dev_config, filelists, **train))
    hps.model_dir = str(tmp_path / "models")
    os.makedirs(hps.model_dir, exist_ok=True)
    return hps


def _copy_reference_checkpoints(dev_dir: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("G_100.pth", "DUR_100.pth", "WD_100.pth"):
        shutil.copyfile(dev_dir / "ckpt" / name, folder / name)


def test_reference_checkpoints_resume(tmp_path, dev_dir, dev_config, caplog):
    """The kit's G_100/DUR_100/WD_100 (written by the reference, no D_100) resume: weights and optimizer
    moments loaded, step 100 from the file name, epoch 3 from "iteration", LR decayed for 2 epochs, and a
    fresh multi-period discriminator with a warning. Training then continues and saves the full state."""
    hps = _tiny_hps(tmp_path, dev_config, skip_optimizer=False)
    _copy_reference_checkpoints(dev_dir, Path(hps.model_dir))
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, CPU)
    fresh_d = {k: v.clone() for k, v in trainer.d.raw.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        assert train_resume.restore_or_initialise(trainer, hps, CPU, base_dir=None) is True
    assert "no D_*.pth" in caplog.text and "fresh weights" in caplog.text

    for part, name in ((trainer.g, "G_100.pth"), (trainer.dur, "DUR_100.pth"), (trainer.wd, "WD_100.pth")):
        saved = torch.load(dev_dir / "ckpt" / name, map_location="cpu", weights_only=True)
        for key, value in saved["model"].items():
            assert torch.equal(part.raw.state_dict()[key], value), f"{name}: {key}"
        first = part.optimizer.state[part.optimizer.param_groups[0]["params"][0]]
        assert float(first["step"]) == 1.0 and torch.equal(first["exp_avg"], saved["optimizer"]["state"][0]["exp_avg"])
    assert all(torch.equal(v, fresh_d[k]) for k, v in trainer.d.raw.state_dict().items())
    assert (trainer.state.step, trainer.state.epoch, trainer.state.batch_in_epoch) == (100, 3, 0)
    for part in trainer.parts():
        assert part.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.99995**2, rel=1e-12)
        assert part.scheduler.last_epoch == 2

    # Continue: one step, then a checkpoint in this script's format, which resumes exactly.
    metrics, _ = training.train_step(trainer, first_batch(hps, CPU, trainer.state.epoch), hps, CPU)
    assert metrics["skipped"] == []
    trainer.state.step += 1
    trainer.state.batch_in_epoch += 1
    train_resume.save_training_checkpoint(trainer, hps, CPU, keep_ckpts=0)
    again = train_nets.build_trainer(hps, CPU)
    train_resume.restore_or_initialise(again, hps, CPU, base_dir=None)
    assert again.state == trainer.state
    for a, b in zip(again.parts(), trainer.parts()):
        _assert_same_tree(a.raw.state_dict(), b.raw.state_dict(), a.prefix)
        _assert_same_tree(a.optimizer.state_dict(), b.optimizer.state_dict(), f"{a.prefix} optimizer")
        assert a.scheduler.state_dict() == b.scheduler.state_dict()


def test_reference_checkpoints_honour_skip_optimizer(tmp_path, dev_dir, dev_config):
    hps = _tiny_hps(tmp_path, dev_config, skip_optimizer=True)
    _copy_reference_checkpoints(dev_dir, Path(hps.model_dir))
    trainer = train_nets.build_trainer(hps, CPU)
    train_resume.restore_or_initialise(trainer, hps, CPU, base_dir=None)
    assert all(not part.optimizer.state for part in trainer.parts())
    assert trainer.g.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * 0.99995**2, rel=1e-12)


def test_base_model_fine_tuning_loads_weights_only(tmp_path, dev_dir, dev_config, caplog):
    """No G_ in the model folder + a base model folder: weights only (another speaker count keeps a fresh
    speaker table), step 0, fresh optimizers, and the base folder is never written."""
    base_dir = tmp_path / "base"
    _copy_reference_checkpoints(dev_dir, base_dir)
    before = {p.name: p.read_bytes() for p in base_dir.iterdir()}
    hps = _tiny_hps(tmp_path, dev_config)
    hps.data.n_speakers = 2
    hps.data.spk2id = {"spk0": 0, "spk1": 1, "spk2": 1, "spk3": 0}
    trainer = train_nets.build_trainer(hps, CPU)
    with caplog.at_level(logging.WARNING):
        assert train_resume.restore_or_initialise(trainer, hps, CPU, base_dir=str(base_dir)) is False
    assert "emb_g.weight" in caplog.text
    saved = torch.load(base_dir / "G_100.pth", map_location="cpu", weights_only=True)["model"]
    state = trainer.g.raw.state_dict()
    assert state["emb_g.weight"].shape[0] == 2
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k != "emb_g.weight")
    assert trainer.state.step == 0 and all(not part.optimizer.state for part in trainer.parts())

    trainer.state.step = 1
    train_resume.save_training_checkpoint(trainer, hps, CPU, keep_ckpts=2)
    assert (Path(hps.model_dir) / "G_1.pth").is_file()
    assert {p.name: p.read_bytes() for p in base_dir.iterdir()} == before
