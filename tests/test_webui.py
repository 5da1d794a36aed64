"""webui.py as a real subprocess on 127.0.0.1, driven through gradio_client and a headless Chromium.

Two tiny randomly initialised models (the repository's demo config, built here: no kit needed) and a tiny
Chinese BERT stand in for trained ones, so the audio is noise-like but its length, rate and values are exact.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import numpy as np
import pytest
import soundfile
import yaml
from served_voices import wait_until_answering, write_untrained_voice
from train_tiny import free_port

import config
import infer
import synthesis_params
import webui

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 240.0
MAX_TEXT_LENGTH = 100
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
)
# Off-default values, so a parameter the UI dropped or swapped would change the audio.
PARAMS = {"sdp_ratio": 0.3, "noise_scale": 0.4, "noise_scale_w": 0.7, "length_scale": 1.2}
PRESET = {"sdp_ratio": 0.1, "noise_scale": 0.3, "noise_scale_w": 0.5, "length_scale": 1.4}  # voice_a's spk1
TWO_SENTENCES = "你好，世界。今天天气很好。"


# Runs webui.py as __main__ with an audit hook that writes down every name lookup or connection that is not
# loopback: the web UI must never reach outside this machine (no analytics, version check, fonts, downloads).
LAUNCHER = """
import runpy, sys

LOG = sys.argv.pop(1)
LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "", "None"}


def hook(event, args):
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    else:
        return
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host not in LOCAL:
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(f"{event} {host}\\n")


sys.addaudithook(hook)
sys.argv = ["webui.py", *sys.argv[1:]]
sys.path[0] = "."  # as `python3 webui.py` from the repository root would have it
runpy.run_path("webui.py", run_name="__main__")
"""


@dataclass(frozen=True)
class TinyVoices:
    folder: Path
    models: tuple[tuple[Path, Path], ...]  # (checkpoint, config) of model A and model B
    bert_dir: Path


def _tiny_model(folder: Path, name: str, speakers: list[str], seed: int) -> tuple[Path, Path]:
    settings = json.loads((REPO_ROOT / "configs" / "demo.json").read_text(encoding="utf-8"))
    settings["data"]["spk2id"] = {speaker: index for index, speaker in enumerate(speakers)}
    settings["data"]["n_speakers"] = len(speakers)
    return write_untrained_voice(folder / name / "G_0.pth", folder / f"{name}.json", settings, seed)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> TinyVoices:
    from text.tiny_bert import build_tiny_bert

    folder = tmp_path_factory.mktemp("webui")
    models = (
        _tiny_model(folder, "voice_a", ["spk0", "spk1"], seed=1),
        _tiny_model(folder, "voice_b", ["alice", "bob", "carol"], seed=2),
    )
    bert_dir = build_tiny_bert(folder / "tiny-zh", "ZH", seed=0)
    return TinyVoices(folder=folder, models=models, bert_dir=Path(bert_dir))


@pytest.fixture(scope="module")
def webui_url(voices: TinyVoices) -> Iterator[str]:
    port = free_port()
    log = voices.folder / "webui.log"
    launcher = voices.folder / "launch_webui.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    # The models come from the yml's webui section, with a speaker preset (the -m path is read in-process below).
    entries = [
        {"name": name, "model": str(checkpoint), "config": str(config_path), "device": "cpu"}
        for name, (checkpoint, config_path) in zip(("voice_a", "voice_b"), voices.models)
    ]
    entries[0]["speakers"] = [{"speaker": "spk1", **PRESET}]
    yml = voices.folder / "webui.yml"
    yml.write_text(yaml.safe_dump({"webui": {"models": entries}}), encoding="utf-8")
    command = [sys.executable, str(launcher), str(voices.folder / "outside.log"), "--yml", str(yml)]
    command += ["--bert-dir", f"ZH={voices.bert_dir}", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    command += ["--max-text-length", str(MAX_TEXT_LENGTH), "--queue-size", "4"]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(voices.folder / "gradio-tmp")}
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, f"{url}/config", log, "webui", STARTUP_TIMEOUT)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def client(webui_url: str, voices: TinyVoices):
    from gradio_client import Client

    downloads = voices.folder / "downloads"
    downloads.mkdir(exist_ok=True)
    return Client(webui_url, verbose=False, download_files=str(downloads))


def _arguments(text: str, model: str, speaker: str, **overrides) -> dict:
    arguments = {
        "text": text,
        "model": model,
        "speaker": speaker,
        "language": "ZH",
        **PARAMS,
        "style_text": "",
        "style_weight": 0.7,
        "split": True,
        "sentence_pause": 0.2,
        "paragraph_pause": 1.0,
        "seed": 1234,
    }
    arguments.update(overrides)
    return arguments


def _tts(client, text: str, model: str, speaker: str, **overrides) -> tuple[np.ndarray, int]:
    path, player = client.predict(*_arguments(text, model, speaker, **overrides).values(), api_name="/tts")
    assert player.startswith("<audio controls") and 'src="data:audio/wav;base64,' in player
    audio, sampling_rate = soundfile.read(path, dtype="int16")
    return audio, sampling_rate


def test_api_audio_equals_direct_synthesis(client, voices: TinyVoices) -> None:
    audio, sampling_rate = _tts(client, TWO_SENTENCES, "voice_b", "bob")
    checkpoint, config_path = voices.models[1]
    synthesizer = infer.load_synthesizer(checkpoint, config_path, bert_dirs={"ZH": voices.bert_dir})
    expected_rate, expected = synthesizer.synthesize(TWO_SENTENCES, "bob", "ZH", **PARAMS, seed=1234)
    assert sampling_rate == expected_rate == 22050
    assert audio.shape == expected.shape and audio.size > 0.5 * sampling_rate
    # int16 on the wire; the two processes run the same float math (tiny thread-count differences allowed).
    np.testing.assert_allclose(audio / 32767.0, np.clip(expected, -1, 1), atol=2e-3)
    assert np.abs(audio).max() > 10


def test_api_pauses_and_model_choice(client) -> None:
    base, rate = _tts(client, TWO_SENTENCES, "voice_a", "spk1", sentence_pause=0.0)
    paused, _ = _tts(client, TWO_SENTENCES, "voice_a", "spk1", sentence_pause=0.5)
    assert paused.size - base.size == round(0.5 * rate)
    two_lines = TWO_SENTENCES.replace("。", "。\n", 1)
    lines, _ = _tts(client, two_lines, "voice_a", "spk1", sentence_pause=0.0, paragraph_pause=0.0)
    lines_paused, _ = _tts(client, two_lines, "voice_a", "spk1", sentence_pause=0.0, paragraph_pause=0.7)
    assert lines_paused.size - lines.size == round(0.7 * rate)
    auto, _ = _tts(client, TWO_SENTENCES, "voice_a", "spk1", sentence_pause=0.0, language="auto")
    np.testing.assert_array_equal(auto, base)  # Chinese text: "auto" finds ZH and speaks it the same way
    unsplit, _ = _tts(client, TWO_SENTENCES, "voice_a", "spk1", split=False)
    assert unsplit.size != paused.size
    other_model, _ = _tts(client, TWO_SENTENCES, "voice_b", "alice", sentence_pause=0.0)
    assert other_model.shape != base.shape or not np.array_equal(other_model, base)
    styled, _ = _tts(
        client, TWO_SENTENCES, "voice_a", "spk1", sentence_pause=0.0, style_text="你好世界", style_weight=1
    )
    assert not np.array_equal(styled, base)


def _ffmpeg_or_skip() -> None:
    if webui.can_stream_audio():
        return
    message = "ffmpeg not installed (apt-get install -y ffmpeg): Gradio's streaming player encodes with it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; under CI the streaming test is required")
    pytest.skip(message)


def test_api_streams_chunk_by_chunk(webui_url: str, voices: TinyVoices) -> None:
    """/tts_stream (the page's "Stream" button) sends one update per chunk of Synthesizer.stream as it comes, and
    its joined stream is the whole audio (AAC-encoded by Gradio: lengths to the encoder's padding)."""
    _ffmpeg_or_skip()
    from gradio_client import Client
    from pydub import AudioSegment

    # Two paragraphs, the second long enough for two decoder windows.
    two_lines = "你好，世界。\n今天天气很好，我们一起去公园散步，然后回家吃饭。"
    streamer = Client(webui_url, verbose=False, download_files=False)  # the playlist's address, not a copy
    job = streamer.submit(*_arguments(two_lines, "voice_b", "bob").values(), api_name="/tts_stream")
    playlist_url = job.result(timeout=120)["url"]
    checkpoint, config_path = voices.models[1]
    synthesizer = infer.load_synthesizer(checkpoint, config_path, bert_dirs={"ZH": voices.bert_dir})
    chunks = list(synthesizer.stream(two_lines, "bob", "ZH", **PARAMS, seed=1234, paragraph_pause=1.0))
    assert len(chunks) >= 4  # two utterances (the second in windows) and the pause between them
    assert len(job.outputs()) == len(chunks)  # one update per chunk, each sent as it came
    # The HLS playlist the page's player follows: one segment per chunk, of the chunk's length (in ms).
    playlist = httpx.get(playlist_url, timeout=30).text.splitlines()
    assert playlist[-1] == "#EXT-X-ENDLIST"  # the stream was closed when the synthesis ended
    durations = [float(line.split(":", 1)[1].rstrip(",")) for line in playlist if line.startswith("#EXTINF:")]
    np.testing.assert_allclose(durations, [chunk.size / synthesizer.sampling_rate for chunk in chunks], atol=1e-3)
    segments = [line for line in playlist if line and not line.startswith("#")]
    loudest = 0
    for segment, chunk in zip(segments, chunks, strict=True):
        answer = httpx.get(urljoin(playlist_url, segment), timeout=30)
        decoded = AudioSegment.from_file(io.BytesIO(answer.content), format="aac")  # ADTS: AAC, as Gradio sends it
        assert decoded.frame_rate == synthesizer.sampling_rate
        # AAC frames are 1024 samples, and the encoder adds up to two frames of padding.
        assert chunk.size <= len(decoded.get_array_of_samples()) <= chunk.size + 3 * 1024
        loudest = max(loudest, decoded.max)
    assert loudest > 100


def test_without_ffmpeg_the_page_offers_the_whole_file_only(
    voices: TinyVoices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voice_registry import command_line_specs, load_models

    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on it
    checkpoint, config_path = voices.models[0]
    registry = load_models(command_line_specs([str(checkpoint)], [str(config_path)], "cpu", "ZH"))
    app = webui.build_app(webui.VoiceService(registry))
    api_names = {dependency.get("api_name") for dependency in app.config["dependencies"]}
    assert "tts" in api_names and "tts_stream" not in api_names
    hidden = {block.elem_id for block in app.blocks.values() if getattr(block, "visible", True) is False}
    assert {"stream_button", "streamed"} <= hidden


def test_a_stream_left_early_lets_the_model_go(voices: TinyVoices) -> None:
    """The page's stream, closed after its first chunk (a page that left), stops and frees the model's lock;
    bad requests are refused at the call, before any work."""
    from voice_registry import command_line_specs, load_models

    checkpoint, config_path = voices.models[0]
    specs = command_line_specs([f"voice_a={checkpoint}"], [str(config_path)], "cpu", "ZH")
    registry = load_models(specs, bert_dirs={"ZH": voices.bert_dir})
    service = webui.VoiceService(registry)
    params = synthesis_params.SynthesisParams.checked({"seed": 1})
    text = "你好，世界。\n今天天气很好，我们一起去公园散步，然后回家吃饭。"
    chunks = service.stream(text, "voice_a", "spk0", "ZH", params, chunk_frames=4)
    rate, first = next(chunks)
    assert rate == 22050 and first.dtype == np.int16 and first.size > 0
    chunks.close()
    lock = registry.get("voice_a").lock
    assert lock.acquire(timeout=60)  # the synthesis thread let go of the model
    lock.release()
    with pytest.raises(ValueError, match="text is empty"):
        service.stream("  ", "voice_a", "spk0", "ZH", params)
    with pytest.raises(ValueError, match="unknown speaker"):
        service.stream("你好。", "voice_a", "nobody", "ZH", params)


def test_api_reports_bad_input(client) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown speaker 'spk1'.*alice, bob, carol"):
        _tts(client, "你好。", "voice_b", "spk1")
    with pytest.raises(AppError, match="text is empty"):
        _tts(client, "   ", "voice_a", "spk0")
    with pytest.raises(AppError, match=f"101 characters long; the limit is {MAX_TEXT_LENGTH}"):
        _tts(client, "你" * 101, "voice_a", "spk0")
    with pytest.raises(AppError, match="mix text"):
        _tts(client, "你好<en", "voice_a", "spk0", language="mix")
    with pytest.raises(AppError, match=r"ZH \(Chinese\) cannot pronounce 'hello'"):
        _tts(client, "hello", "voice_a", "spk0")


def test_api_speaker_list_follows_the_model(client) -> None:
    speakers, language = client.predict("voice_b", api_name="/speakers")
    assert speakers["value"] == "alice" and [choice[0] for choice in speakers["choices"]] == ["alice", "bob", "carol"]
    assert language["value"] == "ZH"


def test_speaker_presets_of_the_yml_set_the_sliders(client) -> None:
    assert client.predict("voice_a", "spk1", api_name="/preset") == tuple(PRESET.values())
    defaults = synthesis_params.DEFAULT_PARAMS
    expected = tuple(getattr(defaults, name) for name in PRESET)
    assert client.predict("voice_a", "spk0", api_name="/preset") == expected
    assert client.predict("voice_b", "spk1", api_name="/preset") == expected  # voice_b has no presets


def _browser_or_skip() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if not missing:
        return
    message = f"{' and '.join(missing)} not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; under CI the browser test is required")
    pytest.skip(message)


def test_a_missing_browser_fails_under_ci_and_skips_outside(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    driver = tmp_path / "chromedriver"  # present, so the message is about chromium alone on any machine
    driver.touch()
    monkeypatch.setattr(sys.modules[__name__], "CHROMEDRIVER", driver)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-chromium not installed.*under CI the browser test is required"):
        _browser_or_skip()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium chromium-driver"):
        _browser_or_skip()


@pytest.fixture()
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Both paths are given, so selenium-manager has nothing to look up; offline makes sure it never downloads.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_browser_generates_audio(browser, webui_url: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(webui_url)
    wait = WebDriverWait(browser, 120)
    text_box = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#text textarea")))
    text_box.send_keys(TWO_SENTENCES)
    seed_box = browser.find_element(By.CSS_SELECTOR, "#seed input")
    seed_box.clear()
    seed_box.send_keys("7")  # a fixed seed: "Generate" and "Stream" below speak the same audio
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    source = wait.until(
        lambda driver: driver.execute_script(
            "const audio = document.querySelector('#audio audio'); return audio && audio.getAttribute('src');"
        )
    )
    time.sleep(1.0)  # let the waveform draw before the screenshot
    screenshot = tmp_path / "webui.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    logging.getLogger(__name__).info("screenshot: %s", screenshot)
    # The source is the WAV itself: decode it and check it is audio of the right rate.
    assert source.startswith("data:audio/wav;base64,"), source[:80]
    audio, sampling_rate = soundfile.read(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), dtype="int16")
    assert sampling_rate == 22050 and audio.size > 0.5 * sampling_rate and np.abs(audio).max() > 10
    duration = browser.execute_script("return document.querySelector('#audio audio').duration")
    assert duration == pytest.approx(audio.size / sampling_rate, abs=0.01)
    # "Stream": the streamed player (Gradio's, through media source extensions) starts playing by itself when the
    # first chunk is there, and grows as the next chunks arrive (two sentences and the pause between them).
    browser.find_element(By.CSS_SELECTOR, "#stream_button").click()
    script = "const a = document.querySelector('#streamed audio'); return a && [a.currentTime, a.paused, a.duration];"
    first = wait.until(lambda driver: (state := driver.execute_script(script)) and state[0] > 0 and state)
    assert first[1] is False and first[2] > 0
    # Joined, the chunks are the file "Generate" made (AAC frames of 1024 samples, up to two of padding a chunk).
    whole = audio.size / sampling_rate
    streamed = WebDriverWait(browser, 60).until(
        lambda driver: (state := driver.execute_script(script)) and state[2] >= whole - 0.01 and state[2]
    )
    assert streamed <= whole + 3 * 2 * 1024 / sampling_rate
    labels = browser.find_element(By.TAG_NAME, "body").text
    for label in ("SDP ratio", "Noise", "Noise_W", "Length", "Style text", "Split by sentence"):
        assert label in labels
    # Nothing but this server: no web fonts, no CDN, no analytics.
    network = [url for url in _requested_urls(browser) if url.startswith(("http:", "https:", "ws:", "wss:"))]
    outside = [url for url in network if not url.startswith((webui_url, webui_url.replace("http", "ws", 1)))]
    assert any(url.startswith(webui_url) for url in network)
    assert outside == []


def test_nothing_reaches_outside_loopback(webui_url: str, voices: TinyVoices) -> None:
    """After start-up and the requests above, the server process has looked up or connected to no other host."""
    outside = voices.folder / "outside.log"
    assert not outside.exists(), outside.read_text(encoding="utf-8")
    assert (voices.folder / "gradio-tmp").is_dir()  # the launcher really ran the web UI, with this environment


# --------------------------------------------------------------------------------------------------------------
# Settings and command line (in-process, no server)


def test_webui_settings_from_yml() -> None:
    data = {
        "dataset_path": "Data/",
        "webui": {
            "device": "cpu",
            "model": "models/G_8000.pth",
            "config_path": "config.json",
            "language_identification_library": "langid",
            "port": 7861,
            "share": False,
            "debug": False,
        },
    }
    settings = config.config_from_dict(data, "test.yml").webui
    assert settings.host == "127.0.0.1" and settings.port == 7861 and settings.language == "ZH"
    assert [(m.model, m.config, m.device) for m in settings.models] == [
        ("Data/models/G_8000.pth", "Data/config.json", "cpu")
    ]
    with pytest.raises(ValueError, match=r"test\.yml: setting 'webui\.share' must be false"):
        config.config_from_dict({"webui": {"share": True}}, "test.yml")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'webui\.prot'"):
        config.config_from_dict({"webui": {"prot": 7860}}, "test.yml")
    listed = config.config_from_dict({"webui": {"models": [{"model": "a/G_1.pth", "config": "a.json"}]}}).webui
    assert listed.models[0].device == "auto" and listed.models[0].language == "ZH"


def test_models_come_from_the_command_line_then_webui_then_server() -> None:
    server_model = {"model": "s/G_1.pth", "config": "s.json"}
    data = {"server": {"models": [server_model]}, "webui": {"device": "cpu", "language": "JP"}}
    settings = config.config_from_dict(data)
    parse = webui.build_parser().parse_args
    assert [spec.model for spec in webui.model_specs(parse([]), settings)] == ["s/G_1.pth"]
    data["webui"]["models"] = [{"model": "w/G_2.pth", "config": "w.json", "name": "web"}]
    settings = config.config_from_dict(data)
    (spec,) = webui.model_specs(parse(["--language", "en"]), settings)
    assert (spec.name, spec.model, spec.device, spec.language) == ("web", "w/G_2.pth", "cpu", "EN")
    specs = webui.model_specs(parse(["-m", "a=x/G_3.pth", "-m", "y/G_4.pth", "-c", "one.json"]), settings)
    assert [(s.name, s.model, s.config, s.device, s.language) for s in specs] == [
        ("a", "x/G_3.pth", "one.json", "cpu", "JP"),
        ("G_4", "y/G_4.pth", "one.json", "cpu", "JP"),
    ]
    with pytest.raises(ValueError, match="--config needs --model"):
        webui.model_specs(parse(["-c", "one.json"]), settings)


def test_command_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # main sets these; monkeypatch restores them after the test.
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yml = tmp_path / "settings.yml"
    yml.write_text("webui:\n  models: []\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR):
        assert webui.main(["--yml", str(yml)]) == 2
    assert "no model to serve" in caplog.text and "webui.models" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert webui.main(["--yml", str(yml), "-m", str(tmp_path / "missing.pth"), "-c", "x.json"]) == 2
    assert "missing.pth" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert webui.main(["--yml", str(yml), "-m", "G_1.pth", "--queue-size", "0"]) == 2
    assert "--queue-size must be >= 1, got 0" in caplog.text
