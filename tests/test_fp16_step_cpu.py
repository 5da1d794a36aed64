"""The fp16 path of the training step (GradScaler enabled) on the CPU, under float16 autocast.

train_ms.py uses fp16 on CUDA only; this runs the same step code with the scaler on so its skip logic is
checked on every machine (``tests/test_gpu.py`` repeats the overflow check on a GPU): an overflowing gradient
is the scaler's business (update skipped, scale backed off, not counted as a non-finite loss), a NaN loss
skips the updates it poisons and is reported.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from train_tiny import first_batch, make_dataset, tiny_config

import train_nets
import train_runtime
import training
from config import model_config_from_dict

# float16 convolutions have no fast CPU kernels: the four steps of the 46.7 M-parameter discriminator take minutes
# on a 2-core machine. CI runs them with -m slow; tests/test_gpu.py repeats the overflow check on a GPU.
pytestmark = pytest.mark.slow

FP16_CPU = train_runtime.Runtime(
    rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), amp_dtype=torch.float16
)


@pytest.fixture(scope="module")
def fp16_setup(tmp_path_factory, tiny_train_config) -> dict:
    folder = tmp_path_factory.mktemp("fp16")
    config = json.loads(json.dumps(tiny_config(tiny_train_config, make_dataset(folder / "data"))))
    config["model_dir"] = str(folder / "models")
    hps = model_config_from_dict(config)
    return {"hps": hps, "batch": first_batch(hps, FP16_CPU)}


def _trainer(hps) -> train_nets.Trainer:
    torch.manual_seed(0)
    trainer = train_nets.build_trainer(hps, FP16_CPU)
    assert trainer.scaler.is_enabled()
    return trainer


def _weights(part: train_nets.Part) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in part.raw.state_dict().items()}


def test_an_overflowing_generator_gradient_is_skipped_by_the_scaler(fp16_setup: dict) -> None:
    hps, batch = fp16_setup["hps"], fp16_setup["batch"]
    trainer = _trainer(hps)
    training.train_step(trainer, batch, hps, FP16_CPU)  # settles the initial scale
    before, scale = _weights(trainer.g), trainer.scaler.get_scale()
    victim = next(p for p in trainer.g.raw.parameters() if p.requires_grad)
    hook = victim.register_hook(lambda grad: torch.full_like(grad, math.inf))
    try:
        metrics, _ = training.train_step(trainer, batch, hps, FP16_CPU)
    finally:
        hook.remove()
    assert trainer.scaler.get_scale() == scale * trainer.scaler.get_backoff_factor()
    assert all(torch.equal(value, before[name]) for name, value in trainer.g.raw.state_dict().items())
    assert metrics["skipped"] == []  # an overflow is not a non-finite loss: no streak, no warning
    scalars = training.scalar_values(metrics)
    assert all(math.isfinite(value) for tag, value in scalars.items() if tag.startswith("loss/")), scalars
    assert not math.isfinite(scalars["grad_norm_g"])  # logged as it was


def test_a_nan_loss_skips_the_updates_it_poisons(fp16_setup: dict) -> None:
    """Whether the duration discriminator (which never sees audio) steps is up to the scaler's overflow check
    here, so only the poisoned nets are asserted on."""
    hps, batch = fp16_setup["hps"], fp16_setup["batch"]
    trainer = _trainer(hps)
    training.train_step(trainer, batch, hps, FP16_CPU)
    start = {part.prefix: _weights(part) for part in trainer.parts()}
    poisoned = batch._replace(wav=torch.full_like(batch.wav, float("nan")))
    metrics, _ = training.train_step(trainer, poisoned, hps, FP16_CPU)
    assert sorted(metrics["skipped"]) == ["D", "G", "WD"]
    for part in trainer.parts():
        weights = part.raw.state_dict()
        assert all(torch.isfinite(value).all() for value in weights.values()), part.prefix
        if part.prefix != "DUR":
            assert all(torch.equal(value, start[part.prefix][name]) for name, value in weights.items()), part.prefix
