"""settings_base: sections read as the reference's HParams, and a file's problems come as one error naming the file,
each setting and the nearest valid key. Exercised through config.py's sections, on config.yml and demo.json."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import config

REPO_ROOT = Path(__file__).resolve().parents[1]
DROP = object()  # a change that removes the key


def _error(tmp_path: Path, name: str, changes: dict[str, Any]) -> tuple[str, str]:
    """What loading the shipped ``name`` (config.yml or demo.json) with ``changes`` (dotted setting: value) raises,
    and the file it was loaded from."""
    yml = name == "config.yml"
    text = (REPO_ROOT / (name if yml else f"configs/{name}")).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if yml else json.loads(text)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        section = data
        for part in parents:
            section = section[part]
        if value is DROP:
            del section[last]
        else:
            section[last] = value
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is also YAML
    with pytest.raises(ValueError) as info:
        (config.load_config if yml else config.load_model_config)(path)
    return str(info.value), str(path)


def test_sections_read_like_hparams():
    cfg = config.load_model_config(REPO_ROOT / "configs" / "demo.json")
    assert cfg.train.learning_rate == cfg["train"]["learning_rate"] == cfg.train.get("learning_rate")
    assert cfg.data.sampling_rate == 22050 and cfg.model.slm.hidden == 32 and cfg.model["slm"]["sr"] == 16000
    assert "slm" in cfg.model and "hiden_channels" not in cfg.model and cfg.train.get("nope", 7) == 7
    expanded = {**cfg.model}
    assert expanded["hidden_channels"] == 32 and expanded["resblock"] == "1"
    assert list(cfg) == ["train", "data", "model", "version", "model_dir"]  # `source` is not a setting
    # What train_ms does with the config at run time.
    cfg.train.seed = 7
    cfg.model_dir = "runs/x"
    assert cfg.data.setdefault("spec_cache", False) is False and cfg.data.setdefault("spec_cache", True) is False
    assert cfg.to_dict()["model_dir"] == "runs/x" and cfg.to_dict()["data"]["spec_cache"] is False
    # What train_ms stores in G_*.pth and beside it reads back as the same settings; DataLoader workers and
    # torch.save can pickle it.
    assert config.model_config_from_dict(cfg.to_dict()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
    with pytest.raises(AttributeError, match="no setting 'learnig_rate'.*did you mean 'learning_rate'"):
        cfg.train.learnig_rate = 1e-3
    # A default is declared once: a caller's default that contradicts it is an error, not a silent second one.
    assert config.TrainConfig().get("skip_optimizer") is True and cfg.train.get("bf16_run", False) is False
    with pytest.raises(TypeError, match=r"get\('skip_optimizer', False\): declared default is True"):
        cfg.train.get("skip_optimizer", False)


@pytest.mark.parametrize(
    ("name", "section", "key", "nearest"),
    [
        ("demo.json", "model", "hiden_channels", "hidden_channels"),
        ("demo.json", "train", "learnig_rate", "learning_rate"),
        ("demo.json", "data", "sampling_rat", "sampling_rate"),
        ("demo.json", "data", "unused_berts", "unused_bert"),
        ("demo.json", "model.slm", "hiden", "hidden"),
        ("demo.json", "", "modle", "model"),
        ("config.yml", "train_ms", "keep_ckpt", "keep_ckpts"),
        ("config.yml", "train_ms.base", "modeldir", "model_dir"),
        ("config.yml", "resample", "sample_rate", "sampling_rate"),
        ("config.yml", "", "trian_ms", "train_ms"),
    ],
)
def test_misspelled_key_names_key_section_file_and_nearest(tmp_path, name, section, key, nearest):
    dotted = f"{section}.{key}" if section else key
    message, path = _error(tmp_path, name, {dotted: 1})
    where = f"in section '{section}'" if section else "at the top level"
    assert path in message and f"'{dotted}'" in message and where in message
    assert f"unknown setting(s) '{dotted}' (did you mean '{nearest}'?)" in message


def test_a_misspelling_that_leaves_a_required_key_missing_reports_both(tmp_path):
    message, path = _error(tmp_path, "demo.json", {"model.hiden_channels": 32, "model.hidden_channels": DROP})
    unknown, missing = message.splitlines()
    assert unknown.startswith(f"{path}: ") and missing.startswith(f"{path}: ")
    assert "'model.hiden_channels' (did you mean 'hidden_channels'?) in section 'model'" in unknown
    assert missing.endswith("setting 'model.hidden_channels' is missing")


MODEL_SECTIONS = ("train", "data", "model", "version")  # of demo.json; any other setting is config.yml's


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("resample.sampling_rate", -1, "'resample.sampling_rate' must be an integer >= 1, got -1"),
        ("resample.sampling_rate", "44100", "'resample.sampling_rate' must be an integer >= 1, got '44100'"),
        ("resample.in_dir", "", "'resample.in_dir' must be a non-empty string, got ''"),
        ("preprocess_text.val_per_lang", -3, "'preprocess_text.val_per_lang' must be an integer >= 0, got -3"),
        ("preprocess_text.clean", "yes", "'preprocess_text.clean' must be true or false, got 'yes'"),
        ("bert_gen.num_processes", 0, "'bert_gen.num_processes' must be an integer >= 1, got 0"),
        ("bert_gen.device", "gpu", "'bert_gen.device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
        ("train_ms.keep_ckpts", True, "'train_ms.keep_ckpts' must be an integer >= 0, got True"),
        ("train_ms.num_workers", 1.5, "'train_ms.num_workers' must be an integer >= 0, got 1.5"),
        ("train_ms.spec_cache", 1, "'train_ms.spec_cache' must be true or false, got 1"),
        ("train_ms.env.MASTER_PORT", 70000, "'train_ms.env.MASTER_PORT' must be an integer in [1, 65535], got 70000"),
        ("train_ms.env.RANK", 1, "'train_ms.env.RANK' must be smaller than WORLD_SIZE (1), got 1"),
        ("train_ms.env.NCCL_DEBUG", None, "'train_ms.env.NCCL_DEBUG' must be a string or a number, got None"),
        ("train_ms.base.use_base_model", "true", "'train_ms.base.use_base_model' must be true or false, got 'true'"),
        ("server.port", 0, "'server.port' must be an integer in [1, 65535], got 0"),
        ("server.language", "FR", "'server.language' must be one of 'ZH', 'JP', 'EN', 'mix', 'auto', got 'FR'"),
        (
            "server.models",
            [{"model": "a.pth", "config": "a.json"}, {"model": "b.pth", "config": "b.json", "device": "tpu"}],
            "'server.models[1].device' must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'",
        ),
        (
            "webui.share",
            True,
            "'webui.share' must be false (public share links are not supported; bind a host instead), got True",
        ),
        ("dataset_path", 5, "'dataset_path' must be a string, got 5"),
        ("bert_gen", ["cpu"], "'bert_gen' must be a mapping of settings, got ['cpu']"),
        ("train.learning_rate", "fast", "'train.learning_rate' must be a number > 0.0, got 'fast'"),
        ("train.batch_size", 0, "'train.batch_size' must be an integer >= 1, got 0"),
        ("train.betas", [0.8], "'train.betas' must be a list of two numbers in [0, 1), got [0.8]"),
        ("train.bf16_run", "yes", "'train.bf16_run' must be true or false, got 'yes'"),
        ("data.hop_length", 256.0, "'data.hop_length' must be an integer >= 1, got 256.0"),
        ("data.unused_bert", "ones", "'data.unused_bert' must be one of 'randn', 'zeros', got 'ones'"),
        ("data.spk2id", {"a": 0, "b": 5}, "'data.spk2id' gives 'b' an id >= data.n_speakers (2)"),
        ("model.resblock", 1, "'model.resblock' must be one of '1', '2', got 1 (int)"),
        ("model.p_dropout", 1.5, "'model.p_dropout' must be a number in [0.0, 1.0], got 1.5"),
        ("model.hidden_channels", DROP, "'model.hidden_channels' is missing"),
        ("model.upsample_rates", [8, 8, 2], "model.upsample_rates [8, 8, 2] multiplies to 128, but the decoder"),
        ("train.segment_size", 1000, "train.segment_size (1000) must be a multiple of data.hop_length (256)"),
        ("version", [2, 3], "'version' must be a string such as '2.3', got [2, 3]"),
    ],
)
def test_wrong_type_or_range_names_the_setting_and_the_file(tmp_path, setting, value, expected):
    name = "demo.json" if setting.split(".")[0] in MODEL_SECTIONS else "config.yml"
    message, path = _error(tmp_path, name, {setting: value})
    assert f"{path}: setting {expected}" in message


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("broken.json", '{"train": {\n  "seed": 1,,\n}', "invalid JSON at line 2"),
        (
            "broken.yml",
            'dataset_path: "Data/"\nresample:\n  sampling_rate: [44100\n  in_dir: x\n',
            "invalid YAML at line",
        ),
    ],
)
def test_syntax_errors_name_the_file_and_line(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: {problem}")):
        (config.load_config if name.endswith(".yml") else config.load_model_config)(path)
