"""config.yml loading and validation, and the shipped model configs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config
from config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_YML = REPO_ROOT / "config.yml"


def shipped_settings() -> dict:
    return yaml.safe_load(SHIPPED_YML.read_text(encoding="utf-8"))


def write_yml(tmp_path: Path, data: dict, name: str = "settings.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_shipped_config_loads_with_paths_under_dataset_path():
    cfg = load_config(SHIPPED_YML)
    assert cfg.source == str(SHIPPED_YML)
    assert cfg.dataset_path == "Data/"
    assert cfg.resample.sampling_rate == 44100
    assert cfg.resample.in_dir == os.path.join("Data/", "audios/raw")
    assert cfg.resample.out_dir == os.path.join("Data/", "audios/wavs")
    pre = cfg.preprocess_text
    assert pre.transcription_path == os.path.join("Data/", "filelists/transcription.list")
    # An empty cleaned_path means "<transcription_path>.cleaned", as the reference's preprocessing decides.
    assert pre.cleaned_path == pre.transcription_path + ".cleaned"
    assert pre.train_path == os.path.join("Data/", "filelists/train.list")
    assert pre.val_path == os.path.join("Data/", "filelists/val.list")
    assert pre.config_path == os.path.join("Data/", "config.json")
    assert (pre.val_per_lang, pre.max_val_total, pre.clean) == (4, 12, True)
    assert cfg.bert_gen.config_path == os.path.join("Data/", "config.json")
    assert cfg.bert_gen.num_processes >= 1 and cfg.bert_gen.use_multi_device is False
    train = cfg.train_ms
    assert train.model == train.model_dir == os.path.join("Data/", "models")
    assert train.config_path == os.path.join("Data/", "config.json")
    assert train.base.use_base_model is False
    assert train.base.model_dir == os.path.join("Data/", "base_model")
    assert (train.keep_ckpts, train.spec_cache, train.all_in_mem) == (8, True, False)
    assert train.env.as_environ() == {
        "MASTER_ADDR": "localhost",
        "MASTER_PORT": "10086",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "RANK": "0",
    }
    assert (cfg.server.port, cfg.server.language, cfg.server.models) == (5000, "ZH", ())
    # Reference attribute names stay available.
    assert cfg.train_ms_config is cfg.train_ms and cfg.preprocess_text_config is cfg.preprocess_text


def test_the_yml_is_the_argument_else_the_env_var_else_config_yml_here(tmp_path, monkeypatch):
    monkeypatch.delenv("BV2_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.yml"):
        load_config()
    write_yml(tmp_path, shipped_settings(), name="config.yml")
    assert load_config().source == "config.yml"
    data = shipped_settings()
    data["dataset_path"] = "Elsewhere"
    monkeypatch.setenv("BV2_CONFIG", str(write_yml(tmp_path, data)))
    assert load_config().dataset_path == "Elsewhere"
    assert load_config().train_ms.model == os.path.join("Elsewhere", "models")
    assert load_config(SHIPPED_YML).dataset_path == "Data/"


def test_absolute_paths_and_empty_dataset_path(tmp_path):
    data = shipped_settings()
    data["dataset_path"] = ""
    data["resample"]["in_dir"] = str(tmp_path / "raw")
    data["preprocess_text"]["cleaned_path"] = "lists/clean.list"
    cfg = load_config(write_yml(tmp_path, data))
    assert cfg.resample.in_dir == str(tmp_path / "raw")
    assert cfg.resample.out_dir == "audios/wavs"
    assert cfg.preprocess_text.cleaned_path == "lists/clean.list"


def test_env_extra_variables_and_precedence_of_existing_environment(tmp_path, monkeypatch):
    import train_ms

    data = shipped_settings()
    data["train_ms"]["env"]["NCCL_DEBUG"] = "INFO"
    data["train_ms"]["env"]["OMP_NUM_THREADS"] = 2
    env = load_config(write_yml(tmp_path, data)).train_ms.env
    assert env.extra == {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "2"}
    torchrun = {"MASTER_PORT": "29500", "RANK": "1", "WORLD_SIZE": "2"}  # what torchrun set wins
    monkeypatch.setattr(os, "environ", dict(torchrun))
    added = train_ms.apply_env_defaults(env.as_environ())
    assert added == {"MASTER_ADDR": "localhost", "LOCAL_RANK": "0", "NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "2"}
    assert os.environ == {**torchrun, **added}
    data["train_ms"]["env"]["NCCL-DEBUG"] = "INFO"
    with pytest.raises(ValueError, match=r"setting 'train_ms\.env\.NCCL-DEBUG' is not a valid variable name"):
        load_config(write_yml(tmp_path, data))


def test_server_models_take_defaults_from_the_server_section(tmp_path):
    data = shipped_settings()
    data["server"]["device"] = "cpu"
    data["server"]["models"] = [
        {"model": "Data/models/G_100.pth", "config": "Data/config.json"},
        {
            "model": "m.pth",
            "config": "c.json",
            "device": "cuda:1",
            "language": "JP",
            "speakers": [{"speaker": "spk0", "sdp_ratio": 0.5, "length_scale": 1.2}],
        },
    ]
    server = load_config(write_yml(tmp_path, data)).server
    first, second = server.models
    assert first == config.ServerModelConfig(model="Data/models/G_100.pth", config="Data/config.json", device="cpu")
    assert (second.device, second.language) == ("cuda:1", "JP")
    assert second.speakers[0] == config.SpeakerPreset(
        speaker="spk0", sdp_ratio=0.5, noise_scale=0.6, noise_scale_w=0.9, length_scale=1.2
    )


def test_reference_only_sections_are_ignored_with_a_warning(tmp_path, caplog):
    data = shipped_settings()
    data["mirror"] = ""
    data["emo_gen"] = {"device": "cuda", "num_processes": 2}
    data["train_ms"]["base"]["repo_id"] = "Stardust_minus/Bert-VITS2"
    with caplog.at_level(logging.WARNING, logger="config"):
        cfg = load_config(write_yml(tmp_path, data))
    assert cfg.train_ms.base.use_base_model is False
    assert "'emo_gen'" in caplog.text and "'mirror'" in caplog.text and "train_ms.base.repo_id" in caplog.text


def test_hub_download_of_a_base_model_is_refused(tmp_path):
    data = shipped_settings()
    data["train_ms"]["base"] = {"use_base_model": True, "repo_id": "Stardust_minus/Bert-VITS2"}
    with pytest.raises(ValueError, match=r"'train_ms\.base\.repo_id' is not supported.*model_dir"):
        load_config(write_yml(tmp_path, data))


def test_resolve_device():
    import torch

    assert config.resolve_device("cpu") == "cpu" and config.resolve_device("cpu", local_rank=3) == "cpu"
    with pytest.raises(ValueError, match="'gpu'"):
        config.resolve_device("gpu")
    if torch.cuda.is_available():
        assert config.resolve_device("auto") == "cuda" and config.resolve_device("auto", local_rank=1) == "cuda:1"
        assert config.resolve_device("cuda", local_rank=2) == "cuda:2" and config.resolve_device("cuda:1") == "cuda:1"
    else:
        assert config.resolve_device("auto") == config.resolve_device("auto", local_rank=1) == "cpu"
        with pytest.raises(ValueError, match="'cuda:1' requested but CUDA is not available"):
            config.resolve_device("cuda:1")


def test_import_has_no_side_effects(tmp_path):
    # No config.yml in the working directory and unknown argv: importing must neither read nor parse anything.
    code = "import sys; sys.argv = ['prog', '--no-such-flag']; import config; print('ok')"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("BV2_CONFIG", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# configs/*.json


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_official_config_matches_the_reference_except_the_speaker_table(kit_dir):
    ours = _load_json(REPO_ROOT / "configs" / "config.json")
    official = _load_json(kit_dir / "official_config.json")
    assert ours["data"]["spk2id"] == {}
    assert ours["data"]["n_speakers"] == 850
    official["data"]["spk2id"] = {}
    assert ours == official
    assert list(ours) == ["train", "data", "model", "version"] and ours["version"] == "2.3"


def test_demo_config_is_small_and_consistent():
    demo = _load_json(REPO_ROOT / "configs" / "demo.json")
    official = _load_json(REPO_ROOT / "configs" / "config.json")
    # Same settings as the official file, only the values differ.
    for section in ("train", "data", "model"):
        assert set(demo[section]) == set(official[section]), section
    assert set(demo["model"]["slm"]) == set(official["model"]["slm"])
    data, model, train = demo["data"], demo["model"], demo["train"]
    assert data["sampling_rate"] == 22050
    # Short segments and ~300 steps in all keep the demo to minutes on a 2-core CPU.
    assert 2048 <= train["segment_size"] <= 8192 and 4 <= train["batch_size"] <= 8
    assert train["epochs"] <= 20
    assert train["log_interval"] <= 20 and train["eval_interval"] <= 100
    # The text encoder injects the speaker at layer 2, so it needs at least 3 layers.
    assert model["n_layers"] >= 3 and model["hidden_channels"] <= 64
    assert model["slm"]["model"] == "./slm/tiny-wavlm"
    assert sorted(data["spk2id"].values()) == list(range(data["n_speakers"]))


# --------------------------------------------------------------------------------------------------------------
# The model config (config.load_model_config): every script reads configs/*.json through it


def _demo() -> dict:
    return _load_json(REPO_ROOT / "configs" / "demo.json")


def _assert_round_trip(cfg: config.ModelConfig, original: dict, tmp_path: Path) -> None:
    # Every value of the file survives; the resolved dict only adds defaults.
    resolved = cfg.to_dict()
    for section, values in original.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert resolved[section][key] == value, f"{section}.{key}"
        else:
            assert resolved[section] == values
    assert config.model_config_from_dict(resolved) == cfg
    cfg.save(tmp_path / "saved.json")
    assert config.load_model_config(tmp_path / "saved.json") == cfg
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("saved")) == ["saved.json"]


@pytest.mark.parametrize("name", ["config.json", "demo.json"])
def test_shipped_model_configs_load_and_round_trip(tmp_path, name):
    path = REPO_ROOT / "configs" / name
    cfg = config.load_model_config(path)
    assert cfg.source == str(path) and cfg.version == "2.3"
    assert cfg.train.learning_rate == 2e-4 and cfg.train["betas"] == [0.8, 0.99]
    assert cfg.data.unused_bert == "randn"  # the reference's behaviour unless the file says "zeros"
    if cfg.data.training_files:
        config.check_trainable(cfg)
    _assert_round_trip(cfg, _load_json(path), tmp_path)


@pytest.mark.parametrize("name", ["official_config.json", "dev/config.json"])
def test_reference_kit_configs_load_and_round_trip(kit_dir, tmp_path, name):
    cfg = config.load_model_config(kit_dir / name)
    config.check_trainable(cfg)
    assert cfg.model.slm is not None and cfg.data.n_speakers == len(cfg.data.spk2id)
    _assert_round_trip(cfg, _load_json(kit_dir / name), tmp_path)


def test_a_missing_model_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        config.load_model_config(tmp_path / "absent.json")


def test_unused_bert_zeros_and_what_older_runs_saved_load(tmp_path):
    data = _demo()
    data["data"]["unused_bert"] = "zeros"
    # Our earlier training runs saved the config beside the checkpoints with these run-time keys.
    data["model_dir"] = "Data/demo/models"
    data["data"].update(spec_cache=True, all_in_mem=False)
    (tmp_path / "config.json").write_text(json.dumps(data), encoding="utf-8")
    cfg = config.load_model_config(tmp_path / "config.json")
    assert cfg.data.unused_bert == "zeros" and cfg.model_dir == "Data/demo/models" and cfg.data.spec_cache is True
    assert config.model_config_from_dict(cfg.to_dict()) == cfg


def test_check_trainable_and_parsed_mappings():
    data = _demo()
    data["model"].pop("slm")
    inference_only = config.model_config_from_dict(data, "export.json")
    with pytest.raises(ValueError, match="export.json: setting 'model.slm' is missing"):
        config.check_trainable(inference_only)
    # A parsed mapping (a checkpoint's stored config) is validated into the same object; a ModelConfig passes.
    cfg = config.model_config_from_dict(_demo())
    assert config.as_model_config(_demo()) == cfg and config.as_model_config(cfg) is cfg
    assert config.as_data_config(_demo()) == cfg.data and config.as_data_config(cfg) is cfg.data
    assert config.as_data_config(_demo()["data"]).hop_length == 256
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        config.as_model_config({**_demo(), "train": {"learnig_rate": 1e-3}})


def test_one_generator_builder_for_every_caller():
    import torch

    import models

    cfg = config.model_config_from_dict(_demo())
    torch.manual_seed(0)
    from_config = models.build_generator(cfg, for_training=True)
    torch.manual_seed(0)
    from_dict = models.build_generator(_demo(), for_training=True)
    assert from_config.training and from_config.current_mas_noise_scale == models.MAS_NOISE_SCALE_INITIAL
    state = from_dict.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in from_config.state_dict().items())
    inference = models.build_generator(cfg, for_training=False, n_vocab=50)
    assert not inference.training and inference.current_mas_noise_scale == 0.0
    assert inference.enc_p.emb.num_embeddings == 50
    with pytest.raises(ValueError, match="did you mean 'hidden_channels'"):
        models.build_generator({**_demo(), "model": {**_demo()["model"], "hiden_channels": 3}}, for_training=False)


def test_one_language_list():
    import synthesis_plan
    from text import bert_features, symbols

    assert symbols.LANGUAGES == ("ZH", "JP", "EN") and tuple(symbols.language_id_map) == symbols.LANGUAGES
    assert synthesis_plan.LANGUAGES is symbols.LANGUAGES
    assert config.SERVER_LANGUAGES[:3] == symbols.LANGUAGES
    assert tuple(bert_features.BERT_MODEL_FOLDERS) == symbols.LANGUAGES


def test_changed_settings_names_what_differs_from_a_stored_config():
    stored = _demo()  # as a checkpoint stores it: a plain dict, without the defaults spelled out
    now = config.model_config_from_dict(_demo())
    assert config.changed_settings(stored, now) == []
    now.train.learning_rate = 1e-4
    now.model.hidden_channels = 48
    now.data.spk2id = {"spk0": 0, "spk1": 1, "spk2": 0}
    now.model_dir = "elsewhere"
    assert config.changed_settings(stored, now) == [
        ("train.learning_rate", 2e-4, 1e-4),
        ("data.spk2id", {"spk0": 0, "spk1": 1}, {"spk0": 0, "spk1": 1, "spk2": 0}),
        ("model.hidden_channels", 32, 48),
    ]
