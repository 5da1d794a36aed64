"""Checkpoints written by the reference (dev/ckpt/*_100.pth) load into our nets with strict=True, their AdamW
states load into our optimizers parameter by parameter, and training can continue from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models

BETAS = (0.8, 0.99)
EPS = 1e-9
CHECKPOINTS = {"G_100.pth": "net_g", "DUR_100.pth": "net_dur_disc", "WD_100.pth": "net_wd"}


def _build(net_name: str, config: dict, n_vocab: int) -> torch.nn.Module:
    if net_name == "net_g":
        return models.build_generator(config, for_training=True, n_vocab=n_vocab)
    if net_name == "net_dur_disc":
        return models.build_duration_discriminator(config)
    return models.build_wavlm_discriminator(config)


@pytest.mark.parametrize("file_name", sorted(CHECKPOINTS))
def test_reference_checkpoint_loads_and_training_continues(
    dev_dir: Path, dev_config: dict, symbols_json: dict, file_name: str
) -> None:
    checkpoint = torch.load(dev_dir / "ckpt" / file_name, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["model", "iteration", "optimizer", "learning_rate"]
    net = _build(CHECKPOINTS[file_name], dev_config, len(symbols_json["symbols"]))

    result = net.load_state_dict(checkpoint["model"], strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in net.state_dict().items():
        assert torch.equal(value, checkpoint["model"][key]), key

    # The optimizer state is keyed by parameter position: our parameter order must be the checkpoint's key order.
    names = [name for name, _ in net.named_parameters()]
    assert names == list(checkpoint["model"])
    optimizer = torch.optim.AdamW(net.parameters(), checkpoint["learning_rate"], betas=BETAS, eps=EPS)
    optimizer.load_state_dict(checkpoint["optimizer"])
    group = optimizer.param_groups[0]
    assert group["lr"] == group["initial_lr"] == 2e-4
    assert tuple(group["betas"]) == BETAS and group["eps"] == EPS
    params = list(net.parameters())
    old_exp_avg = []
    for index, param in enumerate(params):
        state = optimizer.state[param]
        assert float(state["step"]) == 1.0
        assert state["exp_avg"].shape == param.shape == state["exp_avg_sq"].shape, names[index]
        old_exp_avg.append(state["exp_avg"].clone())

    before = [param.detach().clone() for param in params]
    optimizer.zero_grad()
    # The kit's dummy objective: sum over parameters of 0.5·|p|² + 0.001·sum(p), gradient p + 0.001.
    loss = sum(0.5 * (param**2).sum() + 0.001 * param.sum() for param in params)
    loss.backward()
    optimizer.step()

    for index, param in enumerate(params):
        state = optimizer.state[param]
        assert float(state["step"]) == 2.0
        expected_exp_avg = BETAS[0] * old_exp_avg[index] + (1 - BETAS[0]) * (before[index] + 0.001)
        torch.testing.assert_close(state["exp_avg"], expected_exp_avg, atol=1e-7, rtol=1e-5, msg=names[index])
        assert not torch.equal(param.detach(), before[index]), f"{names[index]} did not move"
