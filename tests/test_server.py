"""server.py as a real subprocess on 127.0.0.1, answering real HTTP requests."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_TEXT_LENGTH = 60
STARTUP_TIMEOUT = 180.0
DETERMINISTIC = {"noise": 0, "noisew": 0, "sdp_ratio": 0.4}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_healthy(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not healthy after {STARTUP_TIMEOUT} s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory, golden: dict, dev_config: dict) -> Iterator[str]:
    from text.tiny_bert import build_tiny_bert

    folder = tmp_path_factory.mktemp("server")
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(dev_config), encoding="utf-8")
    checkpoint = folder / "G_0.pth"
    torch.save({"model": golden["weights_g"], "iteration": 0}, checkpoint)
    bert_dir = folder / "tiny-zh"
    build_tiny_bert(bert_dir, "ZH", seed=0)

    port = _free_port()
    log = folder / "server.log"
    command = [sys.executable, "server.py", "--model", str(checkpoint), "--config", str(config_path)]
    command += ["--bert-dir", f"ZH={bert_dir}", "--bert-dir", f"EN={folder / 'missing-en'}"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--max-text-length", str(MAX_TEXT_LENGTH), "--threads", "1"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=120.0) as http:
        yield http


def _read_audio(response: httpx.Response) -> tuple[np.ndarray, int]:
    return soundfile.read(io.BytesIO(response.content))


def test_health_and_speakers(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    speakers = client.get("/speakers").json()
    assert speakers["speakers"] == ["spk0", "spk1", "spk2", "spk3"]
    assert speakers["languages"] == ["ZH", "JP", "EN"] and speakers["sampling_rate"] == 22050


@pytest.mark.parametrize(
    ("audio_format", "media_type"), [("wav", "audio/wav"), ("flac", "audio/flac"), ("ogg", "audio/ogg")]
)
def test_get_voice_in_each_format(client: httpx.Client, audio_format: str, media_type: str) -> None:
    response = client.get(
        "/voice", params={"text": "你好，世界。", "speaker": "spk1", "language": "ZH", "format": audio_format}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    audio, sampling_rate = _read_audio(response)
    assert sampling_rate == 22050 and audio.ndim == 1 and audio.size >= 256
    assert np.abs(audio).max() > 1e-4


def test_post_voice_matches_get(client: httpx.Client) -> None:
    query = {"text": "今天天气很好。", "speaker": "spk2", "language": "zh", **DETERMINISTIC}
    by_get = client.get("/voice", params=query)
    by_post = client.post("/voice", json={**query, "speaker_name": "spk2", "length": 1.2})
    by_post_same = client.post("/voice", json=query)
    assert by_get.status_code == by_post.status_code == by_post_same.status_code == 200
    assert by_post_same.content == by_get.content
    audio_get, _ = _read_audio(by_get)
    audio_slow, _ = _read_audio(by_post)
    assert audio_slow.size > audio_get.size  # length 1.2 stretches the durations


INVALID_REQUESTS = [
    ("missing text", "GET", {"speaker": "spk0"}, "missing parameter 'text'"),
    ("missing speaker", "GET", {"text": "你好"}, "missing parameter 'speaker'"),
    ("empty text", "GET", {"text": "   ", "speaker": "spk0"}, "empty"),
    ("too long", "GET", {"text": "你" * (MAX_TEXT_LENGTH + 1), "speaker": "spk0"}, "limit is"),
    ("unknown speaker", "GET", {"text": "你好", "speaker": "nobody"}, "known speakers: spk0"),
    ("unknown language", "GET", {"text": "你好", "speaker": "spk0", "language": "FR"}, "unknown language"),
    ("unknown format", "GET", {"text": "你好", "speaker": "spk0", "format": "mp4"}, "unknown format"),
    ("sdp above 1", "GET", {"text": "你好", "speaker": "spk0", "sdp_ratio": "1.5"}, "sdp_ratio"),
    ("negative noise", "GET", {"text": "你好", "speaker": "spk0", "noise": "-0.1"}, "noise"),
    ("noisew too big", "GET", {"text": "你好", "speaker": "spk0", "noisew": "9"}, "noisew"),
    ("length zero", "GET", {"text": "你好", "speaker": "spk0", "length": "0"}, "length"),
    ("length not a number", "GET", {"text": "你好", "speaker": "spk0", "length": "fast"}, "length"),
    ("length nan", "GET", {"text": "你好", "speaker": "spk0", "length": "nan"}, "length"),
    ("nothing to say", "GET", {"text": "。。。", "speaker": "spk0"}, "nothing to pronounce"),
    ("post out of range", "POST", {"text": "你好", "speaker": "spk0", "sdp_ratio": -1}, "sdp_ratio"),
    ("post missing text", "POST", {"speaker": "spk0"}, "missing parameter 'text'"),
    ("post text not a string", "POST", {"text": 5, "speaker": "spk0"}, "text"),
]


@pytest.mark.parametrize(("name", "method", "data", "message"), INVALID_REQUESTS, ids=[r[0] for r in INVALID_REQUESTS])
def test_invalid_requests_get_4xx_json(client: httpx.Client, name: str, method: str, data: dict, message: str) -> None:
    if method == "GET":
        response = client.get("/voice", params=data)
    else:
        response = client.post("/voice", json=data)
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert message in response.json()["error"]


def test_language_without_bert_model_is_503_json(client: httpx.Client) -> None:
    # The server was pointed at an EN BERT folder that does not exist: a server-side gap, not a crash.
    response = client.get("/voice", params={"text": "Hello there.", "speaker": "spk0", "language": "EN"})
    assert response.status_code == 503, response.text
    message = response.json()["error"]
    assert "missing-en" in message and "deberta-v3-large" in message


def test_malformed_post_bodies(client: httpx.Client) -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = client.post("/voice", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert "JSON" in response.json()["error"]


def test_concurrent_requests_all_succeed(client: httpx.Client) -> None:
    texts = ["你好。", "今天天气很好。", "我们去公园吧。", "谢谢你。"]
    expected = {}
    for text in texts:
        single = client.get("/voice", params={"text": text, "speaker": "spk3", **DETERMINISTIC})
        assert single.status_code == 200
        expected[text] = single.content

    def request(index: int) -> tuple[str, httpx.Response]:
        text = texts[index % len(texts)]
        return text, client.get("/voice", params={"text": text, "speaker": "spk3", **DETERMINISTIC})

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(request, range(20)))
    assert len(results) == 20
    for text, response in results:
        assert response.status_code == 200, response.text
        assert response.content == expected[text]  # no request saw another's state


def test_settings_come_from_the_yml_server_section(tmp_path: Path) -> None:
    import server

    yml = tmp_path / "config.yml"
    yml.write_text(
        "server:\n  port: 5123\n  device: cpu\n  models:\n"
        "    - model: m/G_1.pth\n      config: m/config.json\n      language: EN\n"
        "      speakers:\n        - speaker: spk1\n          sdp_ratio: 0.5\n",
        encoding="utf-8",
    )
    settings = server.resolve_settings(server.build_parser().parse_args(["--yml", str(yml)]))
    assert (settings.model, settings.config, settings.device, settings.language, settings.port) == (
        "m/G_1.pth",
        "m/config.json",
        "cpu",
        "EN",
        5123,
    )
    assert settings.presets["spk1"]["sdp_ratio"] == 0.5 and settings.presets["spk1"]["length_scale"] == 1.0
    # The command line wins over the yml.
    override = ["--yml", str(yml), "--model", "x.pth", "--port", "7", "--language", "jp"]
    settings = server.resolve_settings(server.build_parser().parse_args(override))
    assert (settings.model, settings.config, settings.language, settings.port) == ("x.pth", None, "JP", 7)

    empty = tmp_path / "empty.yml"
    empty.write_text("server:\n  models: []\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no model to serve"):
        server.resolve_settings(server.build_parser().parse_args(["--yml", str(empty)]))
