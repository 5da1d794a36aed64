"""training: settings changed since a checkpoint (reported, LR schedule re-derived, shape changes refused),
the resume position under another batch size, Ctrl-C with DataLoader workers (a real subprocess), and the
HangGuard that turns a wait for a lost rank into an error."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS_DIR
from torch import nn
from train_tiny import REPO_ROOT, make_dataset, read_jsonl, start_training, tiny_config, wait_for, write_run_files

import train_data
import train_nets
import train_resume
import train_runtime
import utils
from config import ModelConfig, model_config_from_dict

CPU = train_runtime.Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


# ------------------------------------------------------------------------------------------ config drift


def _hps(tmp_path: Path, hidden: int = 4, **train) -> ModelConfig:
    """tests/configs/tiny.json with a fast-decaying schedule (the nets are stand-ins: only settings matter)."""
    data = json.loads((CONFIGS_DIR / "tiny.json").read_text(encoding="utf-8"))
    data["train"].update(learning_rate=2e-4, lr_decay=0.5, warmup_epochs=0, batch_size=2, segment_size=2048)
    data["train"].update(train)
    data["model"]["hidden_channels"] = hidden
    data["model_dir"] = str(tmp_path)
    return model_config_from_dict(data)


def _trainer(hps: ModelConfig) -> train_nets.Trainer:
    """Stand-in nets (the resume logic does not depend on what the nets are) with the real optimizers,
    schedules, scaler and train state."""
    torch.manual_seed(0)
    hidden = hps.model.hidden_channels

    def part(prefix: str) -> train_nets.Part:
        net = nn.Linear(hidden, hidden)
        optimizer = train_nets.make_optimizer(net.parameters(), hps.train)
        return train_nets.Part(prefix, net, optimizer, train_nets.make_scheduler(optimizer, hps.train))

    return train_nets.Trainer(
        g=part("G"),
        d=part("D"),
        wd=part("WD"),
        dur=None,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=train_nets.TrainState(batch_size=hps.train.batch_size),
    )


def _save_at_epoch_3(hps: ModelConfig) -> train_nets.Trainer:
    trainer = _trainer(hps)
    for _ in range(2):  # two epochs done
        for part in trainer.parts():
            part.net(torch.ones(1, hps.model.hidden_channels)).sum().backward()
            part.optimizer.step()
            part.scheduler.step()
    trainer.state.step, trainer.state.epoch, trainer.state.batch_in_epoch = 6, 3, 1
    train_resume.save_training_checkpoint(trainer, hps, CPU, keep_ckpts=0)
    return trainer


def test_unchanged_settings_resume_the_schedule_exactly(tmp_path, caplog):
    saved = _save_at_epoch_3(_hps(tmp_path))
    again = _trainer(_hps(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert train_resume.restore_or_initialise(again, _hps(tmp_path), CPU, base_dir=None) is True
    assert "changed since" not in caplog.text
    assert again.state == saved.state
    for a, b in zip(again.parts(), saved.parts()):
        assert a.scheduler.state_dict() == b.scheduler.state_dict()
        assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"] == 2e-4 * 0.25


def test_switching_on_warmup_and_a_new_learning_rate_on_resume(tmp_path, caplog):
    """warmup_epochs 0 -> 3 (once a KeyError 'lr_lambdas' from LambdaLR.load_state_dict) and learning_rate
    2e-4 -> 1e-3: both reported with what now applies, and the schedule is the new one at epoch 3."""
    _save_at_epoch_3(_hps(tmp_path))
    hps = _hps(tmp_path, warmup_epochs=3, learning_rate=1e-3)
    trainer = _trainer(hps)
    with caplog.at_level(logging.WARNING):
        train_resume.restore_or_initialise(trainer, hps, CPU, base_dir=None)
    assert "train.warmup_epochs changed since" in caplog.text and ": 0 -> 3; the LR schedule follows" in caplog.text
    assert "train.learning_rate changed since" in caplog.text and "0.0002 -> 0.001" in caplog.text
    expected = 1e-3 * min(1.0, 3 / 3) * 0.5**2  # two epochs done: ramp (2+1)/3, decay 0.5**2
    assert "learning rate now 0.00025 (epoch 3)" in caplog.text
    for part in trainer.parts():
        assert part.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        assert isinstance(part.scheduler, torch.optim.lr_scheduler.LambdaLR) and part.scheduler.last_epoch == 2
        assert part.optimizer.state  # the AdamW moments are still restored
    assert (trainer.state.step, trainer.state.epoch) == (6, 3)
    # and training continues on the new schedule: epoch 4 has the full ramp and one more decay
    for part in trainer.parts():
        part.optimizer.step()
        part.scheduler.step()
        assert part.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3, rel=1e-12)


def test_batch_size_and_segment_size_changes_are_reported(tmp_path, caplog):
    _save_at_epoch_3(_hps(tmp_path))
    hps = _hps(tmp_path, batch_size=4, segment_size=4096)
    trainer = _trainer(hps)
    with caplog.at_level(logging.WARNING):
        train_resume.restore_or_initialise(trainer, hps, CPU, base_dir=None)
    assert "train.batch_size changed since" in caplog.text and "2 -> 4; batches of 4 from now on" in caplog.text
    assert "train.segment_size changed since" in caplog.text and "segments of 4096 samples" in caplog.text
    # The same share of the epoch: 5 batches of 2 clips are 2 whole batches of 4.
    trainer.state.batch_in_epoch = 5
    assert train_data.resume_skip(trainer.state, CPU, batch_size=4) == 2


def test_model_setting_changes_are_reported_or_refused(tmp_path, caplog):
    _save_at_epoch_3(_hps(tmp_path))
    hps = _hps(tmp_path)
    hps.model.p_dropout = 0.2  # no effect on the weights' shapes
    with caplog.at_level(logging.WARNING):
        train_resume.restore_or_initialise(_trainer(hps), hps, CPU, base_dir=None)
    assert "model.p_dropout changed since" in caplog.text and "0.1 -> 0.2; 0.2 applies from now on" in caplog.text

    wider = _hps(tmp_path, hidden=8)
    with pytest.raises(ValueError, match=r"model.hidden_channels \(4 there, 8 now\).*do not fit"):
        train_resume.restore_or_initialise(_trainer(wider), wider, CPU, base_dir=None)


def test_config_changes_lists_only_watched_and_model_settings(tmp_path):
    """Through config.changed_settings: the watched train and data settings and every model setting, but not
    train.epochs, another data setting or the WavLM's folder; a default spelled out is no change."""
    saved = _hps(tmp_path).to_dict()
    saved["train"].pop("warmup_epochs")  # its default is 0, as the current config spells out
    current = _hps(tmp_path, epochs=99, learning_rate=1e-3)
    current.data.n_speakers = 3
    current.data.mel_fmin = 10.0
    current.model.p_dropout = 0.2
    current.model.slm.model = "elsewhere"
    assert train_resume.config_changes(saved, current, "G_6.pth") == [
        ("train.learning_rate", 2e-4, 1e-3),
        ("data.n_speakers", 4, 3),
        ("model.p_dropout", 0.1, 0.2),
    ]


def test_a_stored_config_that_no_longer_validates_is_reported_not_compared(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert train_resume.config_changes({"train": {"epochs": 10}}, _hps(tmp_path), "G_6.pth") == []
    assert "the config stored with G_6.pth is not comparable" in caplog.text


# ----------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_with_dataloader_workers_stops_once_and_a_second_one_during_the_save_corrupts_nothing(
    tmp_path, tiny_train_config
):
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group (the trainer and its 2 DataLoader
    workers). One message, the step finishes, the checkpoint is written completely although a second Ctrl-C
    arrives while it is written, and the exit status is 0; no worker prints a traceback."""
    filelists = make_dataset(tmp_path / "data")
    files = write_run_files(tmp_path / "run", tiny_config(tiny_train_config, filelists, eval_interval=1000))
    probe, out = tmp_path / "probe", tmp_path / "out.log"
    # start_training runs it in its own session: its own process group, as a terminal's foreground job.
    process = start_training(files, "--max-steps", "1000", "--num-workers", "2", log_path=out, probe_dir=probe)

    def optimizer_steps() -> int:
        path = probe / "rank0.jsonl"
        return sum(r["event"] == "opt" for r in read_jsonl(path)) if path.exists() else 0

    try:
        wait_for(lambda: optimizer_steps() >= 4, timeout=600, process=process, what="a training step")
        os.killpg(process.pid, signal.SIGINT)
        wait_for(lambda: "Saving model" in out.read_text(), timeout=300, process=process, what="the checkpoint write")
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=300) == 0, out.read_text()[-4000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = out.read_text()
    assert log.count("received SIGINT: finishing this step") == 1, log[-4000:]
    assert "received SIGINT again: the checkpoint is being written" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-4000:]
    model_dir = files["model_dir"]
    last = utils.checkpoint_step(utils.latest_checkpoint_path(model_dir, "G_*.pth"))
    assert last >= 1 and optimizer_steps() == 4 * last  # the step in flight finished, no step after it
    for prefix in ("G", "D", "WD", "DUR"):
        path = model_dir / f"{prefix}_{last}.pth"
        assert utils.is_complete_checkpoint(path), path
        assert utils.read_checkpoint(path)["model"]
    assert utils.read_checkpoint(model_dir / f"G_{last}.pth")["train_state"]["step"] == last
    assert not list(model_dir.glob(".*.tmp")), "a temporary file was left behind"


# ---------------------------------------------------------------------------------------------- lost ranks


def test_a_distributed_operation_past_the_timeout_ends_the_process_naming_rank_step_and_operation():
    """The HangGuard's thread ends a process whose main thread is stuck (here in a sleep) past the timeout."""
    code = (
        "import logging, time, train_runtime\n"
        "logging.basicConfig()\n"
        "guard = train_runtime.HangGuard(rank=1, timeout=0.5)\n"
        "with guard.watch('the iteration agreement', 7):\n"
        "    time.sleep(60)\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == train_runtime.HANG_EXIT_STATUS, result.stderr
    assert "rank 1, step 7: the iteration agreement did not finish within 0.5 s" in result.stderr
    assert time.monotonic() - started < 50


def test_an_error_in_a_watched_operation_is_logged_with_rank_step_and_operation(caplog):
    guard = train_runtime.HangGuard(rank=0, timeout=60)
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="Connection closed by peer"):
        with guard.watch("the checkpoint", 4), guard.watch("the inner one", 4):
            pass
        with guard.watch("the checkpoint", 4):
            raise RuntimeError("Connection closed by peer")
    assert "rank 0, step 4: the checkpoint failed: Connection closed by peer" in caplog.text
