"""What one training iteration asks of the host: loss values stay on the device until a log step.

A GPU runs ahead of the Python code until something reads a tensor back; every read in the step stalls that
queue. Recorded with a TorchFunctionMode (every ``item``/``tolist``/``float``/``bool``/``int``/``numpy`` of a
tensor made by this package's code, not torch's internals) around ``training.train_step`` on a tiny config: apart from the CPU monotonic-alignment kernel (numba
needs host arrays; CUDA runs the Triton kernel), the step reads only bool flag vectors - the skip decision of
the discriminators (none with fused AdamW, whose kernel skips on the device) and the iteration's agreement.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from train_tiny import first_batch, make_dataset, tiny_config

import train_nets
import train_runtime
import training
from config import model_config_from_dict

CPU = train_runtime.Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
HOST_READS = {"item", "tolist", "__float__", "__bool__", "__int__", "__index__", "numpy"}
TORCH_DIR = str(Path(torch.__file__).parent)


def _caller_module() -> str | None:
    """The module that asked for the read; None when torch itself did (e.g. the default AdamW reading its CPU
    step counters, which live on the host by design)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(TORCH_DIR):
        return None
    return str(frame.f_globals.get("__name__"))


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, torch.dtype, tuple[int, ...], str]] = []  # what, dtype, shape, caller

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_READS and args and isinstance(args[0], torch.Tensor):
            caller = _caller_module()
            if caller is not None:
                self.reads.append((name, args[0].dtype, tuple(args[0].shape), caller))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny_step(tmp_path_factory, tiny_train_config) -> dict:
    folder = tmp_path_factory.mktemp("syncs")
    config = json.loads(json.dumps(tiny_config(tiny_train_config, make_dataset(folder / "data"))))
    config["model_dir"] = str(folder / "models")
    return {"config": config, "batch": first_batch(model_config_from_dict(config), CPU)}


def _run_step(tiny_step: dict, fused: bool, poison: bool = False) -> tuple[HostReads, dict, train_nets.Trainer]:
    config = json.loads(json.dumps(tiny_step["config"]))
    config["train"]["fused_adamw"] = fused
    hps = model_config_from_dict(config)
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, CPU)
    batch = tiny_step["batch"]
    if poison:
        batch = batch._replace(wav=torch.full_like(batch.wav, float("nan")))
    with HostReads() as recorder:
        metrics, _ = training.train_step(trainer, batch, hps, CPU)
    return recorder, metrics, trainer


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused-adamw"])
def test_the_step_reads_only_flags_from_the_device(tiny_step: dict, fused: bool) -> None:
    recorder, metrics, trainer = _run_step(tiny_step, fused)
    outside_mas = [read for read in recorder.reads if not read[3].startswith("monotonic_align")]
    n_parts = len(trainer.parts())
    flag_reads = [("tolist", torch.bool, (n_parts - 1,), "training")] if not fused else []
    flag_reads.append(("tolist", torch.bool, (n_parts + 1,), "training"))  # skipped updates + stop request
    assert outside_mas == flag_reads
    # The losses and gradient norms come back as device tensors, read at log steps only.
    for tag in ("loss/g/total", "loss/g/mel", "loss/d/total", "loss/d_r/0", "loss/dur_disc_g/0", "grad_norm_g"):
        assert isinstance(metrics[tag], torch.Tensor) and metrics[tag].dim() == 0, tag
    assert metrics["skipped"] == [] and metrics["stop_requested"] is False


def test_fused_adamw_skips_a_poisoned_update_on_the_device(tiny_step: dict) -> None:
    """NaN audio: the waveform discriminators' updates are skipped by the fused kernel itself (weights, Adam
    moments and step counts untouched), the generator's by the iteration's agreement; the duration discriminator,
    which never sees audio, steps."""
    config = json.loads(json.dumps(tiny_step["config"]))
    config["train"]["fused_adamw"] = True
    hps = model_config_from_dict(config)
    torch.manual_seed(0)
    before = train_nets.build_trainer(hps, CPU)
    start = {p.prefix: {k: v.clone() for k, v in p.raw.state_dict().items()} for p in before.parts()}
    recorder, metrics, trainer = _run_step(tiny_step, fused=True, poison=True)
    assert sorted(metrics["skipped"]) == ["D", "G", "WD"]
    for part in trainer.parts():
        same = all(torch.equal(v, start[part.prefix][k]) for k, v in part.raw.state_dict().items())
        assert same is (part.prefix != "DUR"), part.prefix
        states = part.optimizer.state.values()
        steps = {float(state["step"]) for state in states}
        # The generator's update is decided by the iteration's agreement, read anyway: no kernel call at all.
        expected = {"DUR": {1.0}, "G": set()}.get(part.prefix, {0.0})
        assert steps == expected, (part.prefix, steps)
        if part.prefix != "DUR":
            for state in states:
                assert not state["exp_avg"].any() and not state["exp_avg_sq"].any(), part.prefix


def test_a_nan_loss_with_a_finite_gradient_still_skips_its_update(tiny_step: dict, monkeypatch) -> None:
    """A loss can be NaN through a term with no gradient path, leaving the gradient finite. The discriminators'
    updates are decided from the gradient alone (DDP makes it identical on every rank), so the loss must
    poison it: here the WavLM discriminator's loss gets a NaN constant and its update is skipped and reported,
    while the other nets step."""
    import losses

    real_loss = losses.wavlm_discriminator_loss
    monkeypatch.setattr(losses, "wavlm_discriminator_loss", lambda *args: real_loss(*args) + math.nan)
    config = json.loads(json.dumps(tiny_step["config"]))
    hps = model_config_from_dict(config)
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, CPU)
    start = {p.prefix: {k: v.clone() for k, v in p.raw.state_dict().items()} for p in trainer.parts()}
    metrics, _ = training.train_step(trainer, tiny_step["batch"], hps, CPU)
    assert metrics["skipped"] == ["WD"]
    for part in trainer.parts():
        same = all(torch.equal(v, start[part.prefix][k]) for k, v in part.raw.state_dict().items())
        assert same is (part.prefix == "WD"), part.prefix
