"""GPU-related training settings: strict fp32 vs TF32 (train.allow_tf32) and the fused AdamW (train.fused_adamw)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_nets
import train_runtime
from config import load_model_config


def write_config(tmp_path: Path, tiny_model_config: dict, **train: object) -> Path:
    config = json.loads(json.dumps(tiny_model_config))
    config["train"].update(train)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def test_settings_are_optional_and_left_out_of_saved_configs(tmp_path: Path, tiny_model_config: dict) -> None:
    cfg = load_model_config(write_config(tmp_path, tiny_model_config))
    assert cfg.train.allow_tf32 is None and cfg.train.fused_adamw is None
    saved = cfg.to_dict()["train"]
    assert "allow_tf32" not in saved and "fused_adamw" not in saved


def test_settings_are_read_and_kept(tmp_path: Path, tiny_model_config: dict) -> None:
    cfg = load_model_config(write_config(tmp_path, tiny_model_config, allow_tf32=False, fused_adamw=True))
    assert cfg.train.allow_tf32 is False and cfg.train.fused_adamw is True
    saved = cfg.to_dict()["train"]
    assert saved["allow_tf32"] is False and saved["fused_adamw"] is True


@pytest.mark.parametrize("key", ["allow_tf32", "fused_adamw"])
def test_a_non_boolean_setting_is_an_error_naming_it(tmp_path: Path, tiny_model_config: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"train.{key}"):
        load_model_config(write_config(tmp_path, tiny_model_config, **{key: "yes"}))


# ------------------------------------------------------------------- precision flags and the fused AdamW


@pytest.fixture
def restore_backend_flags():
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
        torch.backends.mkldnn.enabled,
    )
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[:3]
    torch.set_float32_matmul_precision(saved[3])
    torch.backends.mkldnn.enabled = saved[4]


def train_section(tmp_path: Path, tiny_model_config: dict, **train: object):
    return load_model_config(write_config(tmp_path, tiny_model_config, **train)).train


@pytest.mark.usefixtures("restore_backend_flags")
@pytest.mark.parametrize("train", [{}, {"allow_tf32": True}])
def test_cuda_runs_use_tf32_and_medium_matmul_precision_like_the_reference(
    tmp_path: Path, tiny_model_config: dict, train: dict
) -> None:
    torch.set_float32_matmul_precision("highest")
    # Sets flags only: no device is touched, so this runs on a machine without CUDA too.
    train_runtime.configure_kernels(torch.device("cuda", 0), train_section(tmp_path, tiny_model_config, **train))
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "medium"
    assert torch.backends.cudnn.benchmark


@pytest.mark.usefixtures("restore_backend_flags")
def test_allow_tf32_false_gives_a_strict_fp32_run(tmp_path: Path, tiny_model_config: dict) -> None:
    train_runtime.configure_kernels(
        torch.device("cuda", 0), train_section(tmp_path, tiny_model_config, allow_tf32=False)
    )
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.usefixtures("restore_backend_flags")
def test_cpu_runs_keep_full_float32_matmuls(tmp_path: Path, tiny_model_config: dict) -> None:
    torch.set_float32_matmul_precision("highest")
    train_runtime.configure_kernels(torch.device("cpu"), train_section(tmp_path, tiny_model_config))
    assert torch.get_float32_matmul_precision() == "highest"  # "medium" could mean bf16 matmuls on some CPUs


def _twin_nets(tmp_path: Path, tiny_model_config: dict) -> list[tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """The same small conv net twice, one with the default AdamW and one with train.fused_adamw."""
    pairs = []
    for name, train in (("plain", {}), ("fused", {"fused_adamw": True})):
        folder = tmp_path / name
        folder.mkdir()
        cfg = load_model_config(write_config(folder, tiny_model_config, **train))
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3), torch.nn.ReLU(), torch.nn.Conv1d(8, 2, 1))
        pairs.append((net, train_nets.make_optimizer(net.parameters(), cfg.train)))
    return pairs


def test_fused_adamw_matches_the_default_within_rounding(tmp_path: Path, tiny_model_config: dict) -> None:
    (plain, opt_plain), (fused, opt_fused) = _twin_nets(tmp_path, tiny_model_config)
    assert opt_fused.defaults["fused"] and not opt_plain.defaults["fused"]
    initial = [p.detach().clone() for p in plain.parameters()]
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(3, 4, 16, generator=generator)
        for net, optimizer in ((plain, opt_plain), (fused, opt_fused)):
            optimizer.zero_grad()
            net(x).pow(2).mean().backward()
            optimizer.step()
    moved = min((p - q).abs().max().item() for p, q in zip(plain.parameters(), initial))
    differ = max((p - q).abs().max().item() for p, q in zip(plain.parameters(), fused.parameters()))
    assert moved > 1e-4  # ten steps at lr 2e-4 moved every tensor
    assert differ <= 1e-6, f"fused AdamW differs from the default by {differ}"


def test_a_fused_run_keeps_its_setting_when_it_loads_a_default_optimizer_state(
    tmp_path: Path, tiny_model_config: dict
) -> None:
    (plain, opt_plain), (fused, opt_fused) = _twin_nets(tmp_path, tiny_model_config)
    x = torch.randn(3, 4, 16)
    plain(x).pow(2).mean().backward()
    opt_plain.step()
    opt_fused.load_state_dict(opt_plain.state_dict())  # e.g. a reference checkpoint's optimizer
    assert all(group["fused"] for group in opt_fused.param_groups)
    fused(x).pow(2).mean().backward()
    opt_fused.step()
    assert all(float(state["step"]) == 2 for state in opt_fused.state.values())
    opt_plain.load_state_dict(opt_fused.state_dict())  # and the other way round
    assert not any(group["fused"] for group in opt_plain.param_groups)


def test_bf16_run_refuses_emulated_bfloat16(tmp_path: Path, tiny_model_config: dict, monkeypatch) -> None:
    """V100 and T4 make bfloat16 tensors by emulation, so torch.cuda.is_bf16_supported() says yes by default, but
    they have no bfloat16 units (slow, and cuDNN has no bf16 convolutions there): training asks without emulation."""
    asked = []

    def emulating_gpu(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulating_gpu)
    train = train_section(tmp_path, tiny_model_config, bf16_run=True)
    with pytest.raises(ValueError, match="fp16_run"):
        train_runtime.resolve_amp_dtype(train, torch.device("cuda", 0))
    assert asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train_runtime.resolve_amp_dtype(train, torch.device("cuda", 0)) is torch.bfloat16
