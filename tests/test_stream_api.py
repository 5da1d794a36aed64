"""The server's /voice/stream and /voice/timings (stream_api.py) on an untrained tiny voice: streamed WAV and PCM
carry /voice's samples, requests are checked as /voice checks them, a client that goes away stops the synthesis
and frees its queue place (a real uvicorn server in this process), and timings come as JSON with the audio."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import soundfile
import torch
from fastapi.testclient import TestClient

import infer
import server
import stream_api
from models import build_generator
from text.tiny_bert import build_tiny_bert
from voice_registry import LoadedModel, ModelRegistry, ModelSpec

TEXT = "你好，世界。今天天气很好！"
LONG_TEXT = "你好，世界。" * 30
NOISY = {"speaker": "spk1", "sdp_ratio": "0.5", "noise_scale": "0.667", "seed": "7"}
MAX_TEXT_LENGTH = 400


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: dict) -> Iterator[server.ServerState]:
    folder = tmp_path_factory.mktemp("stream-api")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_generator(tiny_model_config, for_training=False)
    checkpoint, config_path = folder / "G_0.pth", folder / "config.json"
    torch.save({"model": net.state_dict()}, checkpoint)
    config_path.write_text(json.dumps(tiny_model_config), encoding="utf-8")
    bert = {"ZH": build_tiny_bert(folder / "bert", "ZH", seed=2, texts=[TEXT])}
    synth = infer.load_synthesizer(checkpoint, config_path, bert_dirs=bert)
    spec = ModelSpec("tiny", str(checkpoint), str(config_path), "cpu", "ZH")
    state = server.ServerState(ModelRegistry([LoadedModel(0, spec, synth)]), MAX_TEXT_LENGTH, queue_size=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield state
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def client(state: server.ServerState) -> Iterator[TestClient]:
    with TestClient(server.create_app(state)) as test_client:
        yield test_client


def _wav_samples(content: bytes) -> np.ndarray:
    return soundfile.read(io.BytesIO(content), dtype="int16")[0]


def test_streamed_wav_and_pcm_carry_the_voice_samples(client: TestClient) -> None:
    whole = client.get("/voice", params={"text": TEXT, **NOISY})
    assert whole.status_code == 200, whole.text
    expected = _wav_samples(whole.content)
    streamed = client.get("/voice/stream", params={"text": TEXT, "chunk_frames": "8", **NOISY})
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"] == "audio/wav"
    assert streamed.headers["x-sampling-rate"] == "22050" and streamed.headers["x-sample-format"] == "s16le"
    assert streamed.content[:4] == b"RIFF" and streamed.content[40:44] == b"\xff\xff\xff\xff"  # length unknown
    info = soundfile.info(io.BytesIO(streamed.content))
    assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
    samples = np.frombuffer(streamed.content[44:], dtype="<i2")
    assert samples.shape == expected.shape
    # The windows equal the whole decode to 1e-4: at most one 16-bit step apart after rounding.
    assert np.abs(samples.astype(np.int32) - expected).max() <= 1
    pcm = client.post("/voice/stream", json={"text": TEXT, "format": "pcm", "chunk_frames": 8, **NOISY})
    assert pcm.status_code == 200 and pcm.headers["content-type"] == "audio/pcm"
    assert pcm.content == streamed.content[44:]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"text": TEXT, "speaker": "nobody"}, 404, "unknown speaker"),
        ({"text": TEXT, "speaker": "spk0", "format": "mp3"}, 400, "cannot be streamed"),
        ({"text": TEXT, "speaker": "spk0", "chunk_frames": "0"}, 422, "chunk_frames"),
        ({"text": "你" * (MAX_TEXT_LENGTH + 1), "speaker": "spk0"}, 422, "the limit is 400"),
        ({"text": TEXT, "speaker": "spk0", "noise_scale": "-1"}, 422, "noise_scale"),
        ({"text": TEXT, "speaker": "spk0", "model": "other"}, 404, "other"),
        ({"text": TEXT, "speaker": "spk0", "language": "FR"}, 400, "unknown language"),
    ],
)
def test_stream_requests_are_checked_as_voice_checks_them(
    client: TestClient, params: dict, status: int, words: str
) -> None:
    for response in (client.get("/voice/stream", params=params), client.post("/voice/stream", json=params)):
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
    assert client.post("/voice/stream", content=b"[1]").status_code == 400


def test_timings_come_as_json_with_the_audio(client: TestClient) -> None:
    whole = client.get("/voice", params={"text": TEXT, **NOISY})
    answer = client.get("/voice/timings", params={"text": TEXT, **NOISY})
    assert answer.status_code == 200, answer.text
    timings = answer.json()
    assert timings["format"] == "wav" and timings["sampling_rate"] == 22050
    audio = _wav_samples(base64.b64decode(timings["audio"]))
    assert audio.shape == _wav_samples(whole.content).shape
    assert timings["duration"] == pytest.approx(audio.size / 22050)
    assert [word["text"] for word in timings["words"] if word["kind"] == "word"] == list("你好,世界.今天天气很好!")
    assert timings["phones"][-1]["end"] == pytest.approx(timings["duration"], abs=256 / 22050)
    only = client.post("/voice/timings", json={"text": TEXT, "audio": False, **NOISY}).json()
    assert only["audio"] is None and only["phones"] == timings["phones"]
    bad = client.get("/voice/timings", params={"text": TEXT, "speaker": "spk0", "audio": "maybe"})
    assert bad.status_code == 422 and "'audio'" in bad.json()["error"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def live_url(state: server.ServerState) -> Iterator[str]:
    """A real uvicorn server in a thread (an app of its own: each app's lifespan owns its queue)."""
    import uvicorn

    port = _free_port()
    live = uvicorn.Server(uvicorn.Config(server.create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not live.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.started
    yield f"http://127.0.0.1:{port}"
    live.should_exit = True
    thread.join(timeout=30)


def _admitted(url: str) -> int:
    return httpx.get(f"{url}/health").json()["queue"]["admitted"]


def test_a_client_that_goes_away_stops_the_stream_and_frees_its_place(
    live_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=stream_api.__name__)
    params = {"text": LONG_TEXT, "speaker": "spk0", "chunk_frames": "4", "format": "pcm"}
    with httpx.stream("GET", f"{live_url}/voice/stream", params=params, timeout=60) as response:
        assert response.status_code == 200
        received = response.iter_raw()  # kept: a dropped iterator would close the response
        assert len(next(received)) > 0  # the first chunk arrives while the rest is still being made
        assert _admitted(live_url) == 1
        busy = httpx.get(f"{live_url}/voice/stream", params={"text": TEXT, "speaker": "spk0"})
        assert busy.status_code == 503 and "busy" in busy.json()["error"]  # the queue (size 1) is full
    deadline = time.monotonic() + 30
    while _admitted(live_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _admitted(live_url) == 0
    stopped = [record.getMessage() for record in caplog.records if "client went away" in record.getMessage()]
    assert stopped, "the synthesis ran on after the client left"
    # 30 sentences in windows of 4 frames make hundreds of chunks; far fewer were made.
    assert int(stopped[0].split()[3]) < 100
    again = httpx.get(f"{live_url}/voice/stream", params={"text": TEXT, "speaker": "spk0"}, timeout=60)
    assert again.status_code == 200
