"""config.yml loading and validation, and the shipped model configs."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
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
    assert (first.model, first.config, first.device, first.language, first.speakers) == (
        "Data/models/G_100.pth",
        "Data/config.json",
        "cpu",
        "ZH",
        (),
    )
    assert (second.device, second.language) == ("cuda:1", "JP")
    assert second.speakers[0] == config.SpeakerPreset(
        speaker="spk0", sdp_ratio=0.5, noise_scale=0.6, noise_scale_w=0.9, length_scale=1.2
    )


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("resample.sampling_rate", -1, "integer >= 1"),
        ("resample.sampling_rate", "44100", "integer >= 1"),
        ("resample.in_dir", "", "non-empty string"),
        ("preprocess_text.val_per_lang", -3, "integer >= 0"),
        ("preprocess_text.clean", "yes", "true or false"),
        ("bert_gen.num_processes", 0, "integer >= 1"),
        ("bert_gen.device", "gpu", "'cuda:N'"),
        ("train_ms.keep_ckpts", True, "integer >= 0"),
        ("train_ms.num_workers", 1.5, "integer >= 0"),
        ("train_ms.spec_cache", 1, "true or false"),
        ("train_ms.env.MASTER_PORT", 70000, "integer in [1, 65535]"),
        ("train_ms.env.RANK", 1, "smaller than WORLD_SIZE"),
        ("train_ms.base.use_base_model", "true", "true or false"),
        ("server.port", 0, "integer in [1, 65535]"),
        ("server.language", "FR", "one of"),
        ("dataset_path", 5, "a string"),
        ("bert_gen", ["cpu"], "must be a mapping of settings"),
        ("train_ms.env.NCCL_DEBUG", None, "a string or a number"),
        ("webui.share", True, "must be false"),
    ],
)
def test_bad_values_name_the_setting_and_the_file(tmp_path, setting, value, message):
    data = shipped_settings()
    _set(data, setting, value)
    path = write_yml(tmp_path, data)
    with pytest.raises(ValueError) as info:
        load_config(path)
    text = str(info.value)
    assert f"'{setting}'" in text
    assert str(path) in text
    assert message in text
    assert repr(value) in text


def test_bad_value_inside_a_server_model_names_its_index(tmp_path):
    data = shipped_settings()
    data["server"]["models"] = [
        {"model": "a.pth", "config": "a.json"},
        {"model": "b.pth", "config": "b.json", "device": "tpu"},
    ]
    path = write_yml(tmp_path, data)
    with pytest.raises(ValueError, match=r"'server\.models\[1\]\.device'") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "setting"),
    [
        (lambda d: d["train_ms"].update(keep_ckpt=3), "train_ms.keep_ckpt"),
        (lambda d: d["train_ms"]["base"].update(modeldir="x"), "train_ms.base.modeldir"),
        (lambda d: d.update(trian_ms={}), "trian_ms"),
        (lambda d: d["resample"].update(sample_rate=16000), "resample.sample_rate"),
    ],
)
def test_unknown_settings_are_errors(tmp_path, mutate, setting):
    data = shipped_settings()
    mutate(data)
    path = write_yml(tmp_path, data)
    with pytest.raises(ValueError, match="unknown setting") as info:
        load_config(path)
    assert f"'{setting}'" in str(info.value) and str(path) in str(info.value)


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


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text('dataset_path: "Data/"\nresample:\n  sampling_rate: [44100\n  in_dir: x\n', encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "invalid YAML at line" in str(info.value)


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
    hop = data["hop_length"]
    upsample = 1
    for rate in model["upsample_rates"]:
        upsample *= rate
    assert upsample == hop and train["segment_size"] % hop == 0
    assert len(model["upsample_rates"]) == len(model["upsample_kernel_sizes"])
    # The text encoder injects the speaker at layer 2, so it needs at least 3 layers.
    assert model["n_layers"] >= 3 and model["hidden_channels"] <= 64
    assert model["slm"]["model"] == "./slm/tiny-wavlm"
    assert data["n_speakers"] == len(data["spk2id"]) and sorted(data["spk2id"].values()) == list(
        range(data["n_speakers"])
    )


# --------------------------------------------------------------------------------------------------------------
# The model config (config.load_model_config): every script reads configs/*.json through it


def _demo() -> dict:
    return _load_json(REPO_ROOT / "configs" / "demo.json")


def _write_json(tmp_path: Path, data: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


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


def test_attribute_and_mapping_access_like_hparams():
    cfg = config.model_config_from_dict(_demo(), "demo.json")
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
    ("section", "key", "nearest"),
    [
        ("model", "hiden_channels", "hidden_channels"),
        ("train", "learnig_rate", "learning_rate"),
        ("data", "sampling_rat", "sampling_rate"),
        ("data", "unused_berts", "unused_bert"),
        ("model.slm", "hiden", "hidden"),
        ("", "modle", "model"),
    ],
)
def test_misspelled_key_names_key_section_file_and_nearest(tmp_path, section, key, nearest):
    data = _demo()
    target = data
    for part in filter(None, section.split(".")):
        target = target[part]
    target[key] = target.get(nearest, 1)
    path = _write_json(tmp_path, data)
    with pytest.raises(ValueError) as info:
        config.load_model_config(path)
    message = str(info.value)
    dotted = f"{section}.{key}" if section else key
    where = f"in section '{section}'" if section else "at the top level"
    assert str(path) in message and f"'{dotted}'" in message and where in message
    assert f"did you mean '{nearest}'?" in message


def test_a_misspelling_that_leaves_a_required_key_missing_reports_both(tmp_path):
    data = _demo()
    data["model"]["hiden_channels"] = data["model"].pop("hidden_channels")
    path = _write_json(tmp_path, data)
    with pytest.raises(ValueError) as info:
        config.load_model_config(path)
    unknown, missing = str(info.value).splitlines()
    assert unknown.startswith(f"{path}: ") and missing.startswith(f"{path}: ")
    assert "'model.hiden_channels' (did you mean 'hidden_channels'?) in section 'model'" in unknown
    assert missing.endswith("setting 'model.hidden_channels' is missing")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["train"].update(learning_rate="fast"), "'train.learning_rate' must be a number > 0"),
        (lambda d: d["train"].update(batch_size=0), "'train.batch_size' must be an integer >= 1, got 0"),
        (lambda d: d["train"].update(betas=[0.8]), "'train.betas' must be a list of two numbers"),
        (lambda d: d["train"].update(bf16_run="yes"), "'train.bf16_run' must be true or false"),
        (lambda d: d["data"].update(hop_length=256.0), "'data.hop_length' must be an integer"),
        (lambda d: d["data"].update(unused_bert="ones"), "'data.unused_bert' must be one of 'randn', 'zeros'"),
        (lambda d: d["data"].update(spk2id={"a": 0, "b": 5}), "'data.spk2id' gives 'b' an id >= data.n_speakers"),
        (lambda d: d["model"].update(resblock=1), "'model.resblock' must be one of '1', '2', got 1 (int)"),
        (lambda d: d["model"].update(p_dropout=1.5), "'model.p_dropout' must be a number in [0.0, 1.0]"),
        (lambda d: d["model"].pop("hidden_channels"), "'model.hidden_channels' is missing"),
        (lambda d: d["model"].update(upsample_rates=[8, 8, 2]), "model.upsample_rates [8, 8, 2] multiplies to 128"),
        (lambda d: d["train"].update(segment_size=1000), "train.segment_size (1000) must be a multiple of"),
        (lambda d: d.update(version=[2, 3]), "'version' must be a string"),
    ],
)
def test_wrong_type_or_range_names_the_setting(tmp_path, mutate, expected):
    data = _demo()
    mutate(data)
    path = _write_json(tmp_path, data)
    with pytest.raises(ValueError) as info:
        config.load_model_config(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_bad_json_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train": {\n  "seed": 1,,\n}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 2"):
        config.load_model_config(path)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        config.load_model_config(tmp_path / "absent.json")


def test_unused_bert_zeros_and_what_older_runs_saved_load(tmp_path):
    data = _demo()
    data["data"]["unused_bert"] = "zeros"
    # Our earlier training runs saved the config beside the checkpoints with these run-time keys.
    data["model_dir"] = "Data/demo/models"
    data["data"].update(spec_cache=True, all_in_mem=False)
    cfg = config.load_model_config(_write_json(tmp_path, data))
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
