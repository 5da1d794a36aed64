"""GPU-related training settings: strict fp32 vs TF32 (train.allow_tf32) and the fused AdamW (train.fused_adamw)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
