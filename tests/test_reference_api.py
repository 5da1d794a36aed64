"""The Bert-VITS2 2.3 API routes (reference_api.py) as a reference client calls them, in-process.

The app is built by `server.main` itself (uvicorn.run replaced by a catcher) from a config.yml whose
`dataset_path` is a tiny data folder: one served untrained voice, more checkpoints to list and add, train/val lists
with audio, and files outside the data folder that no route may read. Requests go through Starlette's TestClient,
so every route, the synthesis queue and the limits are the server's own. No reference kit needed.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from served_voices import write_untrained_voice

import export
import reference_api
import server
from text.tiny_bert import build_tiny_bert
from voice_registry import ModelSpec

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
SPEAKERS = ["hiyori", "nanami", "kaede"]
SAMPLING_RATE = 22050
MAX_TEXT_LENGTH = 80
MAX_BODY_SIZE = 4096
QUIET = {"noise": 0, "noisew": 0}  # the generator is deterministic without noise (and with "zeros" unused BERT)
BERT_TEXTS = {"ZH": ["你好。今天天气很好。"], "JP": ["こんにちは。"], "EN": ["hello world, nice to meet you."]}


@dataclass
class Served:
    client: TestClient
    app: FastAPI
    data: Path  # config.yml's dataset_path
    outside: Path  # a folder beside it that no route may read


def _voice_config() -> dict:
    config = json.loads((CONFIGS_DIR / "tiny.json").read_text(encoding="utf-8"))
    config["data"].update(spk2id={name: index for index, name in enumerate(SPEAKERS)}, n_speakers=len(SPEAKERS))
    config["data"]["unused_bert"] = "zeros"  # no random filling: equal requests give equal audio
    return config


def _write_wav(path: Path, seconds: float = 0.1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(SAMPLING_RATE * seconds), dtype=np.float32), SAMPLING_RATE, subtype="PCM_16")
    return path


def _write_data_folder(root: Path) -> tuple[Path, Path, Path]:
    """data/ (dataset_path) and outside/; returns (data, outside, the served checkpoint)."""
    data, outside = root / "data", root / "outside"
    served, _ = write_untrained_voice(data / "alpha/models/G_100.pth", data / "alpha/config.json", _voice_config(), 1)
    for name in ("models/G_20.pth", "models/G_final.pth", "G_5.pth"):  # listed; G_20 is added by a test
        shutil.copy(served, data / "alpha" / name)
    (data / "alpha/models/D_100.pth").write_bytes(b"")  # not a generator
    beta = write_untrained_voice(data / "beta/G_7.pth", data / "beta/config.json", _voice_config(), 2)
    export.export_generator(*beta[:1], data / "exports/beta.safetensors", beta[1])  # carries its config
    (data / "lonely").mkdir()
    shutil.copy(served, data / "lonely/G_1.pth")  # no config.json beside it or above
    (data / "broken").mkdir()
    (data / "broken/G_3.pth").write_bytes(b"not a checkpoint")
    shutil.copy(data / "alpha/config.json", data / "broken/config.json")
    zh_wav, jp_wav = _write_wav(data / "alpha/wavs/zh.wav"), _write_wav(data / "alpha/wavs/jp.wav")
    secret_wav = _write_wav(outside / "secret.wav")
    (data / "alpha/filelists").mkdir()
    (data / "alpha/filelists/train.list").write_text(
        f"{zh_wav}|hiyori|ZH|你好。|_ n i h ao _|0 0 3 0 3 0|1 4 1\n"
        f"{secret_wav}|hiyori|ZH|秘密。|_ m i m i _|0 0 4 0 4 0|1 4 1\n"  # audio outside: never offered
        f"{zh_wav}|hiyori|ZH|你好\n",  # not a cleaned line
        encoding="utf-8",
    )
    (data / "alpha/filelists/val.list").write_text(f"{jp_wav}|nanami|JP|こんにちは。|_ k o _|0 0 0 0|1 2 1\n", "utf-8")
    write_untrained_voice(outside / "G_9.pth", outside / "config.json", _voice_config(), 3)
    (data / "escape").symlink_to(outside, target_is_directory=True)  # a link out of the data folder
    return data, outside, served


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("reference-api")
    data, outside, checkpoint = _write_data_folder(root)
    bert_args = []
    for language, texts in BERT_TEXTS.items():
        bert_args += ["--bert-dir", f"{language}={build_tiny_bert(root / 'bert' / language, language, texts=texts)}"]
    yml = root / "config.yml"
    section = {"device": "cpu", "language": "ZH", "models": [{"name": "alpha", "model": str(checkpoint)}]}
    section["models"][0]["config"] = str(data / "alpha/config.json")
    yml.write_text(yaml.safe_dump({"dataset_path": str(data), "server": section}), encoding="utf-8")
    apps: list[FastAPI] = []
    import uvicorn

    patch = pytest.MonkeyPatch()
    patch.setattr(uvicorn, "run", lambda app, **_options: apps.append(app))
    previous_threads = torch.get_num_threads()
    try:
        argv = ["--yml", str(yml), "--queue-size", "1", "--max-body-size", str(MAX_BODY_SIZE), "--threads", "1"]
        assert server.main([*argv, "--max-text-length", str(MAX_TEXT_LENGTH), *bert_args]) == 0
    finally:
        patch.undo()
    try:
        with TestClient(apps[0]) as client:
            yield Served(client, apps[0], data, outside)
    finally:
        torch.set_num_threads(previous_threads)


@pytest.fixture(scope="module")
def client(served: Served) -> TestClient:
    return served.client


def _wav(response) -> tuple[np.ndarray, soundfile._SoundFileInfo]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    buffer = io.BytesIO(response.content)
    info = soundfile.info(buffer)
    buffer.seek(0)
    return soundfile.read(buffer, dtype="int16")[0], info


def _speak(client: TestClient, text: str, **params: object) -> np.ndarray:
    query = {"text": text, "model_id": 0, "speaker_name": "hiyori", **QUIET, **params}
    query = {name: value for name, value in query.items() if value is not None}
    return _wav(client.get("/voice", params=query))[0]


def _refused(response, http_status: int, code: int | None) -> str:
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body.get("status") == code and isinstance(body["detail"], str), body
    return body["detail"]


# --------------------------------------------------------------------------------------------------------------
# /voice


def test_voice_is_16_bit_wav_at_the_model_rate_scaled_to_full_scale(client: TestClient) -> None:
    samples, info = _wav(client.get("/voice", params={"text": "你好。", "model_id": 0, "speaker_name": "nanami"}))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SAMPLING_RATE, 1, "PCM_16", "WAV")
    assert samples.size > 0 and np.abs(samples.astype(np.int32)).max() >= 32766  # the reference's peak scaling


def test_speaker_by_name_and_by_id_and_the_model_language(client: TestClient) -> None:
    by_name = _speak(client, "今天天气很好。", speaker_name="kaede")
    by_id = _speak(client, "今天天气很好。", speaker_name=None, speaker_id=2)
    assert np.array_equal(by_name, by_id)
    assert np.array_equal(by_name, _speak(client, "今天天气很好。", speaker_name="kaede", speaker_id=0))  # name wins
    assert not np.array_equal(by_name, _speak(client, "今天天气很好。", speaker_name="hiyori"))
    assert np.array_equal(by_name, _speak(client, "今天天气很好。", speaker_name="kaede", language="ZH"))  # default


def test_post_form_is_the_get(client: TestClient) -> None:
    query = {"model_id": 0, "speaker_name": "nanami", "length": 1.2, **QUIET}
    by_get = client.get("/voice", params={**query, "text": "你好。"})
    by_form = client.post("/voice", params=query, data={"text": "你好。"})
    # emotion and reference_audio are taken and ignored, as the reference does for 2.3 models.
    upload = {"reference_audio": ("ref.wav", io.BytesIO(b"RIFF" + bytes(64)), "audio/wav")}
    with_extras = client.post("/voice", params={**query, "emotion": 3}, data={"text": "你好。"}, files=upload)
    assert np.array_equal(_wav(by_get)[0], _wav(by_form)[0])
    assert np.array_equal(_wav(by_get)[0], _wav(with_extras)[0])
    assert _wav(by_get)[0].size > _speak(client, "你好。", speaker_name="nanami").size  # length 1.2 is slower


def test_defaults_are_the_references(client: TestClient) -> None:
    def noisy(**params: object) -> np.ndarray:
        torch.manual_seed(7)  # the one synthesis worker draws the generator's noise from torch's global RNG
        response = client.get("/voice", params={"text": "你好。", "model_id": 0, "speaker_id": 0, **params})
        return _wav(response)[0]

    implicit = noisy()
    assert np.array_equal(implicit, noisy(sdp_ratio=0.2, noise=0.2, noisew=0.9, length=1, style_weight=0.7))
    assert not np.array_equal(implicit, noisy(sdp_ratio=0.5, noise=0.6, noisew=0.9))  # our own /voice's defaults


def test_double_bar_cuts_the_text_into_passes(client: TestClient) -> None:
    once = _speak(client, "你好")
    assert np.array_equal(_speak(client, "你好||你好"), np.concatenate([once, once]))
    assert np.array_equal(_speak(client, "你好||||\n你好"), np.concatenate([once, once]))  # empty pieces, newlines


def test_auto_split_cuts_sentences(client: TestClient) -> None:
    whole = _speak(client, "你好。今天天气很好。")
    split = _speak(client, "你好。今天天气很好。", auto_split="true")
    assert np.array_equal(split, _speak(client, "你好。||今天天气很好。"))
    assert split.size != whole.size


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _assert_spoken_in_parts(joined: np.ndarray, parts: list[np.ndarray]) -> None:
    """`joined` is `parts` one after another, each scaled (the reference scales the whole to full scale)."""
    assert joined.size == sum(part.size for part in parts)
    start = 0
    for part in parts:
        assert _correlation(joined[start : start + part.size], part) > 0.999
        start += part.size


def test_mix_text_speaks_each_speaker_and_language(client: TestClient) -> None:
    mixed = _speak(client, "[nanami]<zh>你好。<EN>hello world.[kaede]<jp>こんにちは。", language="MIX")
    parts = [
        _speak(client, "你好。", speaker_name="nanami", language="ZH"),
        _speak(client, "hello world.", speaker_name="nanami", language="EN"),
        _speak(client, "こんにちは。", speaker_name="kaede", language="JP"),
    ]
    _assert_spoken_in_parts(mixed, parts)


def test_auto_text_is_identified_per_part(client: TestClient) -> None:
    auto = _speak(client, "你好。hello world.||こんにちは。", language="AUTO")
    parts = [_speak(client, "你好。"), _speak(client, "hello world.", language="EN")]
    _assert_spoken_in_parts(auto, [*parts, _speak(client, "こんにちは。", language="JP")])


VOICE = {"text": "你好。", "model_id": 0, "speaker_name": "hiyori"}


@pytest.mark.parametrize(
    ("params", "http_status", "code", "words"),
    [
        ({**VOICE, "model_id": 9}, 404, 10, "model_id=9"),
        ({**VOICE, "speaker_name": None}, 400, 11, "speaker_name or speaker_id"),
        ({**VOICE, "speaker_name": None, "speaker_id": 99}, 404, 12, "speaker_id=99"),
        ({**VOICE, "speaker_name": "nobody"}, 404, 13, "hiyori, nanami, kaede"),
        ({**VOICE, "language": "MIX", "text": "[nobody]<zh>你好"}, 404, 13, "nobody"),
        ({**VOICE, "language": "MIX", "auto_translate": "true"}, 400, 20, "MIX"),
        ({**VOICE, "language": "AUTO", "auto_translate": "true"}, 400, 20, "AUTO"),
        ({**VOICE, "language": "MIX", "text": "你好"}, 400, 21, "']'"),
        ({**VOICE, "language": "MIX", "text": "[hiyori]你好<zh>再见"}, 400, 21, "'>'"),
        ({**VOICE, "language": "MIX", "text": "[hiyori]<fr>bonjour"}, 400, 21, "<fr>"),
        ({**VOICE, "language": "MIX", "text": "[hiyori]]<zh>你好"}, 400, 21, "']'"),
        ({**VOICE, "auto_translate": "true"}, 501, None, "offline"),
        ({**VOICE, "language": "FR"}, 400, None, "ZH, JP, EN, MIX or AUTO"),
        ({**VOICE, "text": " || "}, 422, None, "nothing to"),
        ({**VOICE, "noise": -1}, 422, None, "noise must be a number within [0, 2], got -1"),
        ({**VOICE, "length": 5}, 422, None, "length must be a number within [0.1, 3], got 5"),
        ({**VOICE, "text": "你" * (MAX_TEXT_LENGTH + 1)}, 422, None, f"limit is {MAX_TEXT_LENGTH}"),
    ],
)
def test_voice_refusals_carry_the_reference_codes(
    client: TestClient, params: dict, http_status: int, code: int | None, words: str
) -> None:
    query = {name: value for name, value in params.items() if value is not None}
    assert words in _refused(client.get("/voice", params=query), http_status, code)


def test_bad_parameters_are_refused_as_fastapi_refuses_them(client: TestClient) -> None:
    response = client.get("/voice", params={**VOICE, "model_id": "first"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "model_id"]
    missing_text = client.post("/voice", params={"model_id": 0, "speaker_id": 0}, data={"style_text": "x"})
    assert missing_text.status_code == 422 and missing_text.json()["detail"][0]["loc"] == ["query", "text"]


def test_limits_are_the_servers(client: TestClient) -> None:
    big_upload = {"reference_audio": ("ref.wav", io.BytesIO(bytes(MAX_BODY_SIZE)), "audio/wav")}
    too_big = client.post("/voice", params={"model_id": 0, "speaker_id": 0}, data={"text": "你好"}, files=big_upload)
    assert too_big.status_code == 413
    too_long = client.get("/voice", params={**VOICE, "style_text": "x" * MAX_BODY_SIZE})
    assert too_long.status_code == 414


def test_reference_and_own_voice_share_the_queue(served: Served) -> None:
    client = served.client
    lock = served.app.state.reference_api.table.get(0).lock  # the served model's: shared with our own routes
    answers: list = []
    with lock:
        first = threading.Thread(target=lambda: answers.append(client.get("/voice", params={**VOICE, **QUIET})))
        first.start()
        deadline = time.monotonic() + 30
        while client.get("/health").json()["queue"]["admitted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The queue (size 1) holds the first request: both APIs are refused until it is done.
        assert client.get("/voice", params=VOICE).status_code == 503
        assert client.get("/voice", params={"text": "你好。", "speaker": "hiyori"}).status_code == 503
    first.join(timeout=60)
    assert answers[0].status_code == 200


def test_own_voice_keeps_its_names_and_shapes(client: TestClient) -> None:
    ours = client.get("/voice", params={"text": "你好。", "speaker": "hiyori", "model": "alpha", "format": "flac"})
    assert ours.status_code == 200 and ours.headers["content-type"] == "audio/flac"
    unknown = client.get("/voice", params={"text": "你好。", "speaker": "nobody"})
    assert unknown.status_code == 404 and "known speakers" in unknown.json()["error"]
    by_json = client.post("/voice", json={"text": "你好。", "speaker_name": "nobody", "model_id": 0})
    assert by_json.status_code == 404 and "error" in by_json.json()  # a JSON body is our own POST /voice


# --------------------------------------------------------------------------------------------------------------
# /models


def test_models_info_describes_the_served_model(served: Served) -> None:
    info = served.client.get("/models/info").json()
    assert info == {
        "0": {
            "config_path": str(served.data / "alpha/config.json"),
            "model_path": str(served.data / "alpha/models/G_100.pth"),
            "device": "cpu",
            "language": "ZH",
            "spk2id": {"hiyori": 0, "nanami": 1, "kaede": 2},
            "id2spk": {"0": "hiyori", "1": "nanami", "2": "kaede"},
            "version": "2.3",
        }
    }


def test_models_are_listed_per_folder_by_step(served: Served) -> None:
    client, data = served.client, served.data
    listing = client.get("/models/get_local", params={"root_dir": str(data)}).json()
    assert listing == {
        "alpha": ["G_5.pth", "models/G_20.pth", "models/G_100.pth", "models/G_final.pth"],
        "beta": ["G_7.pth"],
        "broken": ["G_3.pth"],
        "lonely": ["G_1.pth"],
    }
    unloaded = client.get("/models/get_unloaded", params={"root_dir": str(data)}).json()
    assert unloaded["alpha"] == ["G_5.pth", "models/G_20.pth", "models/G_final.pth"]  # G_100 is served
    assert client.get("/models/get_local", params={"root_dir": str(data / "alpha")}).json() == {
        "models": ["G_20.pth", "G_100.pth", "G_final.pth"],
        ".": ["G_5.pth", "models/G_20.pth", "models/G_100.pth", "models/G_final.pth"],
    }


def test_add_use_and_delete_models(served: Served) -> None:
    client, data = served.client, served.data
    before = client.get("/models/info").json()
    beside = client.get("/models/add", params={"model_path": str(data / "beta/G_7.pth"), "language": "JP"}).json()
    assert beside["status"] == 0 and beside["Data"]["model_info"]["config_path"] == str(data / "beta/config.json")
    one_up = client.get("/models/add", params={"model_path": str(data / "alpha/models/G_20.pth")}).json()
    assert one_up["Data"]["model_info"]["config_path"] == str(data / "alpha/config.json")
    beta_id, alpha_id = beside["Data"]["model_id"], one_up["Data"]["model_id"]
    assert str(beta_id) not in before and alpha_id == beta_id + 1
    info = client.get("/models/info").json()
    assert info[str(beta_id)]["language"] == "JP" and info[str(beta_id)] == beside["Data"]["model_info"]
    # The added models speak; the new model's default language is JP.
    assert _speak(client, "こんにちは。", model_id=beta_id).size > 0
    assert np.array_equal(
        _speak(client, "こんにちは。", model_id=beta_id),
        _speak(client, "こんにちは。", model_id=beta_id, language="JP"),
    )
    unloaded = client.get("/models/get_unloaded", params={"root_dir": str(data)}).json()
    assert "beta" not in unloaded and unloaded["alpha"] == ["G_5.pth", "models/G_final.pth"]
    assert client.get("/models/delete", params={"model_id": beta_id}).json() == {"status": 0, "detail": "model deleted"}
    _refused(client.get("/voice", params={**VOICE, "model_id": beta_id}), 404, 10)
    _refused(client.get("/models/delete", params={"model_id": beta_id}), 404, 14)
    assert client.get("/models/delete", params={"model_id": alpha_id}).json()["status"] == 0
    assert client.get("/models/info").json() == before


def test_adding_a_loaded_file_shares_its_weights(served: Served) -> None:
    client, table = served.client, served.app.state.reference_api.table
    again = client.get("/models/add", params={"model_path": str(served.data / "alpha/models/G_100.pth")}).json()
    model_id = again["Data"]["model_id"]
    try:
        assert table.get(model_id) is table.get(0)  # the reference's shared object: same weights, same lock
        assert np.array_equal(_speak(client, "你好。", model_id=model_id), _speak(client, "你好。"))
    finally:
        client.get("/models/delete", params={"model_id": model_id})
    assert _speak(client, "你好。").size > 0  # deleting the reference leaves the first id speaking


def test_an_export_file_needs_no_config(served: Served) -> None:
    client = served.client
    added = client.get("/models/add", params={"model_path": str(served.data / "exports/beta.safetensors")}).json()
    assert added["status"] == 0 and added["Data"]["model_info"]["config_path"] == ""
    model_id = added["Data"]["model_id"]
    try:
        assert added["Data"]["model_info"]["spk2id"] == {"hiyori": 0, "nanami": 1, "kaede": 2}
        assert _speak(client, "你好。", model_id=model_id).size > 0
    finally:
        client.get("/models/delete", params={"model_id": model_id})


@pytest.mark.parametrize(
    ("model_path", "http_status", "code", "words"),
    [
        ("lonely/G_1.pth", 404, 15, "config.json"),
        ("broken/G_3.pth", 422, 16, "cannot load"),
        ("alpha/models/G_404.pth", 404, 16, "does not exist"),
    ],
)
def test_add_refusals(served: Served, model_path: str, http_status: int, code: int, words: str) -> None:
    response = served.client.get("/models/add", params={"model_path": str(served.data / model_path)})
    assert words in _refused(response, http_status, code)


def test_add_with_a_device_this_machine_lacks_names_it(served: Served) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for CPU-only servers")
    params = {"model_path": str(served.data / "beta/G_7.pth"), "device": "cuda"}
    assert "CUDA is not available" in _refused(served.client.get("/models/add", params=params), 422, 16)


# --------------------------------------------------------------------------------------------------------------
# /status and /tools


def test_status_reports_devices_and_memory(client: TestClient) -> None:
    status = client.get("/status").json()
    assert status["devices"][0] == "cpu" and len(status["devices"]) == 1 + len(status["gpu"])
    assert 0 < status["memory_used"] < status["memory_total"] and 0 <= status["memory_percent"] <= 100
    assert 0 <= status["cpu_percent"] <= 100 and status["memory_available"] > 0
    for gpu in status["gpu"]:
        assert set(gpu) == {"gpu_id", "gpu_load", "gpu_memory"} and set(gpu["gpu_memory"]) == {"total", "used", "free"}


def test_random_example_picks_a_line_of_the_lists(served: Served) -> None:
    client, data = served.client, served.data
    zh = client.get("/tools/random_example", params={"language": "ZH", "root_dir": str(data)}).json()
    assert zh == {
        "status": 0,
        "Data": {"text": "你好。", "audio": str(data / "alpha/wavs/zh.wav"), "speaker": "hiyori"},
    }
    jp = client.get("/tools/random_example", params={"language": "JP", "root_dir": str(data)}).json()
    assert jp["Data"]["speaker"] == "nanami"
    seen = {
        client.get("/tools/random_example", params={"root_dir": str(data)}).json()["Data"]["text"] for _ in range(40)
    }
    assert seen == {"你好。", "こんにちは。"}  # never the line whose audio lies outside
    empty = client.get("/tools/random_example", params={"language": "EN", "root_dir": str(data)})
    _refused(empty, 404, 17)
    assert client.get("/tools/random_example", params={"language": "FR", "root_dir": str(data)}).status_code == 400


def test_get_audio_serves_wavs_under_the_roots_only(served: Served) -> None:
    client, data = served.client, served.data
    wav = data / "alpha/wavs/zh.wav"
    response = client.get("/tools/get_audio", params={"path": str(wav)})
    assert response.status_code == 200 and response.content == wav.read_bytes()
    _refused(client.get("/tools/get_audio", params={"path": str(data / "alpha/wavs/none.wav")}), 404, 18)
    _refused(client.get("/tools/get_audio", params={"path": str(data / "alpha/config.json")}), 415, 19)


def test_translate_is_not_offered(client: TestClient) -> None:
    refused = client.get("/tools/translate", params={"texts": "你好", "to_language": "en"})
    assert refused.status_code == 501 and "offline" in refused.json()["detail"]


# --------------------------------------------------------------------------------------------------------------
# Nothing outside the configured folders


def _outside_requests(data: Path, outside: Path) -> list[tuple[str, dict[str, str]]]:
    secret, foreign = outside / "secret.wav", outside / "G_9.pth"
    return [
        ("/tools/get_audio", {"path": str(secret)}),
        ("/tools/get_audio", {"path": str(data / "escape/secret.wav")}),  # through a link
        ("/tools/get_audio", {"path": str(data / "../outside/secret.wav")}),
        ("/tools/get_audio", {"path": "/etc/passwd"}),
        ("/models/add", {"model_path": str(foreign)}),
        ("/models/add", {"model_path": str(data / "escape/G_9.pth")}),
        ("/models/add", {"model_path": str(data / "beta/G_7.pth"), "config_path": str(outside / "config.json")}),
        ("/models/get_local", {"root_dir": str(outside)}),
        ("/models/get_unloaded", {"root_dir": str(data / "escape")}),
        ("/models/get_local", {"root_dir": "/"}),
        ("/tools/random_example", {"root_dir": str(outside)}),
    ]


def test_nothing_outside_the_roots_is_read_or_loaded(served: Served) -> None:
    client = served.client
    before = client.get("/models/info").json()
    for path, params in _outside_requests(served.data, served.outside):
        response = client.get(path, params=params)
        detail = _refused(response, 403, None)
        assert str(served.data) in detail and "outside the folders this server serves" in detail, (path, params)
        assert b"RIFF" not in response.content and b"root:" not in response.content
    assert client.get("/models/info").json() == before


def test_default_root_dir_is_the_references(served: Served) -> None:
    # "Data" relative to the server's working folder is not under this server's dataset_path.
    assert "'Data'" in _refused(served.client.get("/models/get_local"), 403, None)


def test_roots_are_dataset_path_and_the_model_folders(tmp_path: Path) -> None:
    specs = [ModelSpec("a", str(tmp_path / "m/G_1.pth"), str(tmp_path / "c/config.json"), "cpu", "ZH")]
    yml = tmp_path / "config.yml"
    yml.write_text(yaml.safe_dump({"dataset_path": str(tmp_path / "data")}), encoding="utf-8")
    roots = [tmp_path / "data", tmp_path / "m", tmp_path / "c"]
    assert reference_api.configured_roots(str(yml), specs) == tuple(root.resolve() for root in roots)
    yml.write_text(yaml.safe_dump({"dataset_path": ""}), encoding="utf-8")  # empty: not the whole working folder
    assert reference_api.configured_roots(str(yml), specs) == tuple(root.resolve() for root in roots[1:])
    assert reference_api.configured_roots(str(tmp_path / "none.yml"), specs) == tuple(r.resolve() for r in roots[1:])
