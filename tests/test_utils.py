"""utils: checkpoints (layout, atomic writes, resume scan, cleanup), logging, plots, data files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import utils

CLASSIC_KEYS = ["model", "iteration", "optimizer", "learning_rate"]


# --------------------------------------------------------------------------------------------------------------
# helpers


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [b, 3, t]
        h = self.conv(x).transpose(1, 2)  # [b, t, 4]
        return self.proj(torch.tanh(self.norm(h)))


class FakeDDP(nn.Module):
    """Stands in for DistributedDataParallel: the net sits under `.module`, so its keys carry `module.`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def make_training_state(seed: int = 0, steps: int = 3):
    torch.manual_seed(seed)
    net = TinyNet()
    optim = torch.optim.AdamW(net.parameters(), lr=2e-4, betas=(0.8, 0.99), eps=1e-9)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.99995)
    x = torch.randn(2, 3, 5)
    for _ in range(steps):
        optim.zero_grad()
        net(x).pow(2).mean().backward()
        optim.step()
        sched.step()
    return net, optim, sched, x


def fresh_training_state():
    torch.manual_seed(123)
    net = TinyNet()
    optim = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.5, 0.9), eps=1e-6)
    sched = torch.optim.lr_scheduler.ExponentialLR(optim, gamma=0.5)
    return net, optim, sched


class KeyedModule(nn.Module):
    """A module whose state_dict has exactly the given keys and shapes (stand-in for a reference net)."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        super().__init__()
        for key, shape in shapes.items():
            *path, leaf = key.split(".")
            owner: nn.Module = self
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            owner.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))


def save_tiny(path: Path, step_seed: int = 0) -> None:
    net, optim, _, _ = make_training_state(seed=step_seed, steps=1)
    utils.save_checkpoint(net, optim, 2e-4, 1, path)


# --------------------------------------------------------------------------------------------------------------
# save / load


def test_save_zero_load_restores_weights_optimizer_and_scheduler(tmp_path):
    net, optim, sched, x = make_training_state()
    path = tmp_path / "G_3.pth"
    utils.save_checkpoint(
        net, optim, sched.get_last_lr()[0], 3, path, extra={"scheduler": sched, "train_state": {"step": 3, "epoch": 1}}
    )

    saved = torch.load(path, weights_only=True)
    assert list(saved)[:4] == CLASSIC_KEYS
    assert saved["iteration"] == 3 and saved["train_state"] == {"step": 3, "epoch": 1}
    assert saved["scheduler"]["last_epoch"] == 3

    restored, restored_optim, restored_sched = fresh_training_state()
    with torch.no_grad():
        for p in restored.parameters():
            p.zero_()
    _, _, lr, iteration = utils.load_checkpoint(path, restored, restored_optim, scheduler=restored_sched)
    assert iteration == 3 and lr == pytest.approx(2e-4 * 0.99995**3)
    for (name, a), (_, b) in zip(net.state_dict().items(), restored.state_dict().items()):
        assert torch.equal(a, b), name
    assert restored_optim.param_groups[0]["betas"] == (0.8, 0.99)
    assert restored_sched.last_epoch == sched.last_epoch
    assert restored_sched.get_last_lr() == sched.get_last_lr()
    for a, b in zip(optim.state.values(), restored_optim.state.values()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a[key], b[key]), key

    # The next step is identical from the original and from the restored state.
    for n, o, s in ((net, optim, sched), (restored, restored_optim, restored_sched)):
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
        s.step()
    for a, b in zip(net.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_skip_optimizer_leaves_the_optimizer_alone(tmp_path):
    net, optim, _, _ = make_training_state()
    utils.save_checkpoint(net, optim, 2e-4, 3, tmp_path / "G_3.pth")
    restored, restored_optim, _ = fresh_training_state()
    utils.load_checkpoint(tmp_path / "G_3.pth", restored, restored_optim, skip_optimizer=True)
    assert restored_optim.param_groups[0]["lr"] == 1e-3 and not restored_optim.state
    assert torch.equal(restored.proj.weight, net.proj.weight)


def test_ddp_prefix_is_handled_on_either_side(tmp_path):
    net, optim, _, _ = make_training_state()
    # Saving the wrapper writes bare keys, as the reference does.
    utils.save_checkpoint(FakeDDP(net), optim, 2e-4, 1, tmp_path / "G_1.pth")
    assert all(not k.startswith("module.") for k in torch.load(tmp_path / "G_1.pth", weights_only=True)["model"])
    wrapped = FakeDDP(fresh_training_state()[0])
    utils.load_checkpoint(tmp_path / "G_1.pth", wrapped)
    assert torch.equal(wrapped.module.conv.weight, net.conv.weight)
    # A file holding `module.`-prefixed keys (saved from a wrapper's own state_dict) loads into a bare net.
    torch.save(
        {"model": FakeDDP(net).state_dict(), "iteration": 1, "optimizer": None, "learning_rate": 2e-4},
        tmp_path / "G_2.pth",
    )
    bare = fresh_training_state()[0]
    utils.load_checkpoint(tmp_path / "G_2.pth", bare)
    assert torch.equal(bare.norm.weight, net.norm.weight)


def test_strict_loading_reports_missing_unexpected_and_mismatched_keys(tmp_path, caplog):
    net, _, _, _ = make_training_state()
    state = net.state_dict()
    state.pop("proj.bias")
    state["extra.weight"] = torch.ones(1)
    state["conv.bias"] = torch.zeros(7)
    path = tmp_path / "G_5.pth"
    torch.save({"model": state, "iteration": 5, "optimizer": None, "learning_rate": 1e-4}, path)
    target = fresh_training_state()[0]
    with pytest.raises(RuntimeError) as info:
        utils.load_checkpoint(path, target)
    message = str(info.value)
    assert str(path) in message
    assert "missing keys: proj.bias" in message and "unexpected keys: extra.weight" in message
    assert "conv.bias: checkpoint (7,) vs model (4,)" in message

    before_bias = target.conv.bias.clone()
    with caplog.at_level(logging.WARNING, logger="utils"):
        _, _, lr, iteration = utils.load_checkpoint(path, target, strict=False)
    assert (lr, iteration) == (1e-4, 5)
    assert torch.equal(target.conv.weight, net.conv.weight)  # matching keys loaded
    assert torch.equal(target.conv.bias, before_bias)  # mismatched key untouched
    assert "proj.bias" in caplog.text


def test_extra_may_not_overwrite_reference_keys(tmp_path):
    net, optim, _, _ = make_training_state(steps=1)
    with pytest.raises(ValueError, match="iteration"):
        utils.save_checkpoint(net, optim, 2e-4, 1, tmp_path / "G_1.pth", extra={"iteration": 9})


def test_load_accepts_an_already_read_checkpoint(tmp_path):
    net, optim, sched, _ = make_training_state()
    utils.save_checkpoint(net, optim, 2e-4, 3, tmp_path / "G_3.pth", extra={"train_state": {"step": 30, "epoch": 3}})
    checkpoint = utils.read_checkpoint(tmp_path / "G_3.pth")
    restored = fresh_training_state()[0]
    _, _, _, iteration = utils.load_checkpoint(checkpoint, restored)
    assert iteration == 3 and checkpoint["train_state"]["step"] == 30
    assert torch.equal(restored.proj.weight, net.proj.weight)


class Counter:
    """A stateful object the registry saves and restores."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def state_dict(self) -> dict[str, int]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.value = state["value"]


def _registry(seed: int, steps: int) -> tuple[utils.CheckpointRegistry, dict]:
    g, g_optim, g_sched, _ = make_training_state(seed=seed, steps=steps)
    d, d_optim, d_sched, _ = make_training_state(seed=seed + 1, steps=steps)
    counter = Counter(steps)
    registry = utils.CheckpointRegistry()
    registry.add_net("G", g, g_optim, g_sched)
    registry.add_net("D", d, d_optim, d_sched)
    registry.add_state("train_state", counter)
    registry.add_state("rng_states", utils.RankRNG(0, 1, torch.device("cpu")))
    return registry, {"G": (g, g_optim, g_sched), "D": (d, d_optim, d_sched), "counter": counter}


def test_registry_save_zero_load_restores_everything(tmp_path):
    """One save loop writes G_/D_ in the reference layout (lead file last, extra state in it); one load loop
    restores weights, optimizers, schedules, the registered states and the RNG."""
    registry, parts = _registry(seed=0, steps=3)
    torch.manual_seed(99)
    paths = registry.save(str(tmp_path), step=7, epoch=2, learning_rate=2e-4)
    assert [os.path.basename(p) for p in paths] == ["D_7.pth", "G_7.pth"]  # the lead file last
    expected_next = torch.rand(3)
    g_file = torch.load(tmp_path / "G_7.pth", weights_only=True)
    assert list(g_file)[:4] == CLASSIC_KEYS and g_file["iteration"] == 2 and g_file["learning_rate"] == 2e-4
    assert {"scheduler", "train_state", "rng_states"} <= set(g_file)
    assert "train_state" not in torch.load(tmp_path / "D_7.pth", weights_only=True)

    fresh, fresh_parts = _registry(seed=5, steps=1)
    for prefix in ("G", "D"):
        with torch.no_grad():
            for p in fresh_parts[prefix][0].parameters():
                p.zero_()
    report = fresh.load(utils.read_checkpoint(tmp_path / "G_7.pth"), str(tmp_path / "G_7.pth"))
    assert report.missing == [] and report.unscheduled == []
    assert torch.equal(torch.rand(3), expected_next)  # the RNG restored last
    assert fresh_parts["counter"].value == 3
    for prefix in ("G", "D"):
        net, optim, sched = parts[prefix]
        new_net, new_optim, new_sched = fresh_parts[prefix]
        for key, value in net.state_dict().items():
            assert torch.equal(new_net.state_dict()[key], value), f"{prefix}: {key}"
        assert new_sched.state_dict() == sched.state_dict()
        assert new_optim.state_dict()["param_groups"] == optim.state_dict()["param_groups"]
        for index, state in optim.state_dict()["state"].items():
            assert torch.equal(new_optim.state_dict()["state"][index]["exp_avg"], state["exp_avg"])


def test_registry_load_falls_back_for_a_missing_sibling_and_reports_it(tmp_path, caplog):
    registry, _ = _registry(seed=0, steps=2)
    registry.save(str(tmp_path), step=5, epoch=1, learning_rate=2e-4)
    registry.save(str(tmp_path), step=9, epoch=1, learning_rate=2e-4)
    os.remove(tmp_path / "D_9.pth")
    fresh, _ = _registry(seed=3, steps=1)
    with caplog.at_level(logging.WARNING):
        report = fresh.load(utils.read_checkpoint(tmp_path / "G_9.pth"), str(tmp_path / "G_9.pth"))
    assert "D_9.pth is missing or incomplete; using" in caplog.text and report.sources["D"].endswith("D_5.pth")
    os.remove(tmp_path / "D_5.pth")
    report = fresh.load(utils.read_checkpoint(tmp_path / "G_9.pth"), str(tmp_path / "G_9.pth"), schedulers=False)
    assert report.missing == ["D"] and report.unscheduled == ["G"]


def test_registry_refuses_taken_names():
    registry, _ = _registry(seed=0, steps=1)
    for key in ("model", "optimizer", "scheduler", "train_state"):
        with pytest.raises(ValueError, match="taken"):
            registry.add_state(key, Counter())
    with pytest.raises(ValueError, match="already registered"):
        registry.add_net("G", TinyNet())


@pytest.mark.parametrize("name", ["G_100.pth", "DUR_100.pth", "WD_100.pth"])
def test_reference_checkpoints_have_the_documented_layout_and_load(dev_dir, tmp_path, name):
    layout = json.loads((dev_dir / "ckpt" / "layout.json").read_text(encoding="utf-8"))[name]
    path = dev_dir / "ckpt" / name
    assert utils.is_complete_checkpoint(path)
    raw = utils.read_checkpoint(path)
    assert list(raw) == layout["top_level_keys"] == CLASSIC_KEYS
    assert len(raw["model"]) == layout["model_num_entries"]
    assert list(raw["model"])[:5] == layout["model_first_keys"]

    # A stand-in net with the same keys and shapes plus an AdamW like the training script's.
    net = KeyedModule({k: v.shape for k, v in raw["model"].items()})
    optim = torch.optim.AdamW(net.parameters(), lr=1.0, betas=(0.8, 0.99), eps=1e-9)
    _, _, lr, iteration = utils.load_checkpoint(path, net, optim)
    assert (lr, iteration) == (layout["learning_rate"], layout["iteration"])
    for key, value in raw["model"].items():
        assert torch.equal(net.state_dict()[key], value), key
    group = optim.param_groups[0]
    assert group["lr"] == 2e-4 and group["initial_lr"] == 2e-4 and tuple(group["betas"]) == (0.8, 0.99)
    first_param = next(net.parameters())
    assert torch.equal(optim.state[first_param]["exp_avg"], raw["optimizer"]["state"][0]["exp_avg"])

    # Written back by us: the same four keys in the same order, same tensors and optimizer layout.
    ours_path = tmp_path / name
    utils.save_checkpoint(net, optim, lr, iteration, ours_path)
    ours = torch.load(ours_path, weights_only=True)
    assert list(ours) == CLASSIC_KEYS
    assert list(ours["model"]) == list(raw["model"])
    assert all(torch.equal(ours["model"][k], raw["model"][k]) for k in raw["model"])
    assert ours["optimizer"]["param_groups"] == raw["optimizer"]["param_groups"]
    assert sorted(ours["optimizer"]["state"][0]) == sorted(layout["optimizer_state_entry_keys"])
    assert (ours["iteration"], ours["learning_rate"]) == (3, 2e-4)


# --------------------------------------------------------------------------------------------------------------
# atomic writes, resume scan, cleanup


def test_atomic_save_leaves_no_temporary_files_and_survives_a_failed_write(tmp_path):
    net, optim, _, _ = make_training_state(steps=1)
    path = tmp_path / "G_1.pth"
    utils.save_checkpoint(net, optim, 2e-4, 1, path)
    assert sorted(os.listdir(tmp_path)) == ["G_1.pth"]
    good = path.read_bytes()

    # An unpicklable extra fails halfway through torch.save: the old file stays, no temp file is left.
    with pytest.raises(Exception, match="pickle|lambda"):
        utils.save_checkpoint(net, optim, 2e-4, 2, path, extra={"bad": lambda: None})
    assert sorted(os.listdir(tmp_path)) == ["G_1.pth"]
    assert path.read_bytes() == good
    assert utils.read_checkpoint(path)["iteration"] == 1


def test_saved_checkpoint_gets_normal_file_permissions(tmp_path):
    net, optim, _, _ = make_training_state(steps=1)
    umask = os.umask(0o022)
    os.umask(umask)
    utils.save_checkpoint(net, optim, 2e-4, 1, tmp_path / "G_1.pth")
    assert (tmp_path / "G_1.pth").stat().st_mode & 0o777 == 0o666 & ~umask


def test_latest_checkpoint_sorts_by_the_step_in_the_file_name(tmp_path):
    folder = tmp_path / "run42" / "ckpt2024_v3"  # digits in the folder names must not influence the order
    folder.mkdir(parents=True)
    assert utils.latest_checkpoint_path(folder) is None
    for step in (9, 100, 10):
        save_tiny(folder / f"G_{step}.pth")
    save_tiny(folder / "DUR_500.pth")
    assert utils.latest_checkpoint_path(folder) == str(folder / "G_100.pth")
    assert utils.latest_checkpoint_path(str(folder), "G_*.pth") == str(folder / "G_100.pth")
    assert utils.latest_checkpoint_path(folder, "D_*.pth") is None  # "D_" does not match DUR_500.pth
    assert utils.latest_checkpoint_path(folder, "DUR_*.pth") == str(folder / "DUR_500.pth")


def test_latest_checkpoint_skips_a_truncated_newest_file(tmp_path, caplog):
    folder = tmp_path / "models"
    folder.mkdir()
    save_tiny(folder / "G_9.pth")
    save_tiny(folder / "G_10.pth")
    whole = (folder / "G_10.pth").read_bytes()
    (folder / "G_100.pth").write_bytes(whole[: len(whole) // 2])  # e.g. a copy cut short by a full disk
    (folder / "G_200.pth").write_bytes(b"")
    assert not utils.is_complete_checkpoint(folder / "G_100.pth")
    assert utils.is_complete_checkpoint(folder / "G_10.pth")
    with caplog.at_level(logging.WARNING, logger="utils"):
        assert utils.latest_checkpoint_path(folder) == str(folder / "G_10.pth")
    assert "G_100.pth" in caplog.text and "G_200.pth" in caplog.text
    with pytest.raises(ValueError, match="truncated or corrupt"):
        utils.read_checkpoint(folder / "G_100.pth")


def test_is_complete_checkpoint_handles_the_legacy_format(tmp_path):
    path = tmp_path / "G_1.pth"
    torch.save({"model": {"w": torch.ones(3)}}, path, _use_new_zipfile_serialization=False)
    assert utils.is_complete_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-10])
    assert not utils.is_complete_checkpoint(path)


def test_checkpoint_step_uses_only_the_file_name():
    assert utils.checkpoint_step("/data/run7/G_1200.pth") == 1200
    assert utils.checkpoint_step("logs/44k/DUR_0.pth") == 0
    assert utils.checkpoint_step("run3/G_best.pth") is None


def test_clean_checkpoints_keeps_the_newest_of_each_net_and_the_base_model(tmp_path):
    steps = [0, 100, 200, 1000, 300]
    for prefix in ("G", "D", "DUR", "WD"):
        for step in steps:
            (tmp_path / f"{prefix}_{step}.pth").write_bytes(b"x")
    (tmp_path / "D_5000.pth.bak").write_bytes(b"x")
    (tmp_path / "train.log").write_text("log")
    deleted = utils.clean_checkpoints(tmp_path, n_ckpts_to_keep=2)
    kept = sorted(os.listdir(tmp_path))
    expected = sorted(
        [f"{p}_{s}.pth" for p in ("G", "D", "DUR", "WD") for s in (0, 300, 1000)] + ["D_5000.pth.bak", "train.log"]
    )
    assert kept == expected
    assert sorted(os.path.basename(p) for p in deleted) == sorted(
        f"{p}_{s}.pth" for p in ("G", "D", "DUR", "WD") for s in (100, 200)
    )
    # Idempotent, and 0 means "keep everything" (the reference only cleans when keep_ckpts > 0).
    assert utils.clean_checkpoints(tmp_path, 2) == []
    assert utils.clean_checkpoints(tmp_path, 0) == []
    with pytest.raises(ValueError):
        utils.clean_checkpoints(tmp_path, -1)


def test_clean_checkpoints_does_not_confuse_d_with_dur(tmp_path):
    for name in ("D_100.pth", "DUR_200.pth", "DUR_300.pth", "DUR_400.pth"):
        (tmp_path / name).write_bytes(b"x")
    utils.clean_checkpoints(tmp_path, n_ckpts_to_keep=1)
    assert sorted(os.listdir(tmp_path)) == ["DUR_400.pth", "D_100.pth"]


# --------------------------------------------------------------------------------------------------------------
# logging, provenance, TensorBoard, plots


def restore_root_logging(handlers: list[logging.Handler], level: int) -> None:
    """Close what TrainLogger added to the root logger and put back what was there."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_train_logger_writes_train_log_once_and_tensorboard_values(tmp_path):
    """Rank 0: train.log gets each line once (a second logger for the same run does not duplicate it) and the
    events hold the scalars, the images and the evaluation audio at their steps."""
    from tensorboard.backend.event_processing import event_accumulator

    root_handlers = list(logging.getLogger().handlers)
    root_level = logging.getLogger().level
    try:
        utils.TrainLogger(tmp_path, rank=0).close()
        log = utils.TrainLogger(tmp_path, rank=0)
        scalars = {"loss/g/total": 3.5, "loss/d/total": 1.25, "learning_rate": 2e-4}
        log.log_train(10, 2, 0.5, scalars, {"all/mel": torch.rand(8, 20)}, {"all/attn": torch.rand(20, 7)})
        log.log_eval(10, {"gen/mel_0": np.random.rand(8, 12)}, {"gen/audio_0_True": torch.rand(1, 400) - 0.5}, 16000)
        log.close()
        for handler in logging.getLogger().handlers:
            handler.flush()
    finally:
        restore_root_logging(root_handlers, root_level)
    text = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert text.count("Train Epoch: 2 [50%] step 10: g 3.5000, d 1.2500") == 1
    train = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    train.Reload()
    assert [(e.step, e.value) for e in train.Scalars("loss/g/total")] == [(10, 3.5)]
    assert set(train.Tags()["images"]) == {"all/mel", "all/attn"}
    evaluation = event_accumulator.EventAccumulator(str(tmp_path / "eval"), size_guidance={"audio": 0, "images": 0})
    evaluation.Reload()
    assert [e.step for e in evaluation.Audio("gen/audio_0_True")] == [10]
    assert evaluation.Tags()["images"] == ["gen/mel_0"]


def test_train_logger_off_rank_0_writes_nothing(tmp_path):
    root_handlers = list(logging.getLogger().handlers)
    root_level = logging.getLogger().level
    try:
        log = utils.TrainLogger(tmp_path / "run", rank=1)
        log.log_train(1, 1, 0.0, {"loss/g/total": 1.0}, {}, {})
        log.close()
    finally:
        restore_root_logging(root_handlers, root_level)
    assert not (tmp_path / "run").exists()


def test_check_git_hash_records_and_compares(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(utils, "_git_head", lambda source_dir: "a" * 40)
    assert utils.check_git_hash(tmp_path) == "a" * 40
    assert (tmp_path / "githash").read_text() == "a" * 40
    (tmp_path / "githash").write_text("b" * 40)
    with caplog.at_level(logging.WARNING, logger="utils"):
        utils.check_git_hash(tmp_path)
    assert "different" in caplog.text


def test_check_git_hash_outside_a_repository_only_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(utils, "__file__", str(tmp_path / "src" / "utils.py"))
    (tmp_path / "src").mkdir()
    with caplog.at_level(logging.WARNING, logger="utils"):
        assert utils.check_git_hash(tmp_path / "model") is None
    assert "not a git repository" in caplog.text
    assert not (tmp_path / "model" / "githash").exists()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(utils.subprocess, "run", no_git)
    assert utils.check_git_hash(tmp_path / "model") is None


def test_summarize_forwards_everything_to_the_writer():
    calls = []

    class Writer:
        def __getattr__(self, name):
            return lambda *args, **kwargs: calls.append((name, args, kwargs))

    image = np.zeros((4, 5, 3), dtype=np.uint8)
    utils.summarize(
        Writer(),
        7,
        scalars={"loss/g/total": 1.5},
        histograms={"h": torch.ones(3)},
        images={"img": image},
        audios={"gen/audio": torch.zeros(10)},
        audio_sampling_rate=16000,
    )
    names = [c[0] for c in calls]
    assert names == ["add_scalar", "add_histogram", "add_image", "add_audio"]
    assert calls[0][1] == ("loss/g/total", 1.5, 7)
    assert calls[2][2] == {"dataformats": "HWC"}
    assert calls[3][1][3] == 16000
    utils.summarize(Writer(), 1)  # nothing to write is fine


def test_plots_return_uint8_rgb_images():
    spec = utils.plot_spectrogram_to_numpy(torch.randn(80, 120))
    assert spec.dtype == np.uint8 and spec.ndim == 3 and spec.shape[2] == 3
    assert spec.shape[1] > spec.shape[0]  # a wide 10x2 figure
    assert spec.std() > 0  # something was drawn
    align = utils.plot_alignment_to_numpy(np.random.rand(30, 12), info="step 5")
    assert align.dtype == np.uint8 and align.shape[2] == 3 and align.std() > 0
    assert spec.flags["C_CONTIGUOUS"] and align.flags["C_CONTIGUOUS"]


# --------------------------------------------------------------------------------------------------------------
# data files


def test_load_wav_to_torch_returns_int16_scale_samples(tmp_path):
    import soundfile  # a hard dependency: missing is a failure, not a skip

    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    path = tmp_path / "a.wav"
    soundfile.write(path, samples, 22050, subtype="PCM_16")
    audio, sr = utils.load_wav_to_torch(path)
    assert sr == 22050 and audio.dtype == torch.float32
    assert torch.equal(audio, torch.from_numpy(samples.astype(np.float32)))
    soundfile.write(tmp_path / "stereo.wav", np.zeros((10, 2), dtype=np.int16), 22050)
    with pytest.raises(ValueError, match="mono"):
        utils.load_wav_to_torch(tmp_path / "stereo.wav")


def test_load_filepaths_and_text(tmp_path):
    path = tmp_path / "train.list"
    path.write_text("a.wav|spk0|ZH|你好|n i h ao\n\nb.wav|spk1|EN|hi|h ay\n", encoding="utf-8")
    assert utils.load_filepaths_and_text(path) == [
        ["a.wav", "spk0", "ZH", "你好", "n i h ao"],
        ["b.wav", "spk1", "EN", "hi", "h ay"],
    ]
    assert utils.load_filepaths_and_text(path, split=" ")[0][0] == "a.wav|spk0|ZH|你好|n"
