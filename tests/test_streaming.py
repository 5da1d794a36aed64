"""Streamed synthesis and timings (streaming.py) on untrained tiny generators: the decoder's receptive field
from the config, chunks that join to `synthesize`'s waveform for several decoder shapes and chunk sizes, and
phone/word timings that tile the audio. Tiny configs (tests/configs/tiny.json and variants), no reference kit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import infer
import streaming
from models import build_generator
from text.tiny_bert import build_tiny_bert

TEXTS = {
    "ZH": ["你好，世界。我喜欢用写代码。", "今天天气很好！"],
    "JP": ["私はが好きです。", "こんにちは。"],
    "EN": ["nice to meet you.", "Python is fun."],
}
NOISY = {"sdp_ratio": 0.5, "noise_scale": 0.667, "noise_scale_w": 0.8, "seed": 7}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _variant(config: dict, **model: object) -> dict:
    copy = json.loads(json.dumps(config))
    data = model.pop("data", {})
    copy["model"].update(model)
    copy["data"].update(data)
    return copy


@pytest.fixture(scope="module")
def configs(tiny_model_config: dict) -> dict[str, dict]:
    """tiny.json and two other decoders: type-2 residual blocks with odd (kernel - rate) upsamplers (the output
    runs past frames × hop), and a deeper stack with wide dilations."""
    return {
        "tiny": tiny_model_config,
        "resblock2-odd": _variant(
            tiny_model_config,
            resblock="2",
            resblock_kernel_sizes=[3, 5],
            resblock_dilation_sizes=[[1, 3], [2, 4]],
            upsample_rates=[5, 4, 8],
            upsample_kernel_sizes=[11, 9, 16],
            data={"hop_length": 160},
        ),
        "deep": _variant(
            tiny_model_config,
            resblock_kernel_sizes=[3, 5],
            resblock_dilation_sizes=[[1, 5, 9], [1, 3, 5]],
            upsample_rates=[4, 4, 4, 4],
            upsample_kernel_sizes=[8, 8, 8, 8],
        ),
    }


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bert")
    return {lang: build_tiny_bert(root / lang, lang, seed=2, texts=TEXTS[lang]) for lang in TEXTS}


@pytest.fixture(scope="module")
def synths(
    tmp_path_factory: pytest.TempPathFactory, configs: dict[str, dict], bert_dirs: dict[str, Path]
) -> dict[str, infer.Synthesizer]:
    folder = tmp_path_factory.mktemp("voices")
    loaded = {}
    for seed, (name, config) in enumerate(configs.items()):
        if name != "tiny":
            config["train"]["segment_size"] = 32 * config["data"]["hop_length"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_generator(config, for_training=False)
        checkpoint, config_path = folder / f"{name}.pth", folder / f"{name}.json"
        torch.save({"model": net.state_dict()}, checkpoint)
        config_path.write_text(json.dumps(config), encoding="utf-8")
        loaded[name] = infer.load_synthesizer(checkpoint, config_path, bert_dirs=bert_dirs)
    return loaded


@pytest.mark.parametrize("name", ["tiny", "resblock2-odd", "deep"])
def test_the_receptive_field_bounds_the_decoders_reach(synths: dict[str, infer.Synthesizer], name: str) -> None:
    synth = synths[name]
    model = synth.config.model
    radius, hop = streaming.decoder_receptive_field(model), streaming.hop_of(model)
    frames, changed = 4 * radius + 8, 2 * radius + 4
    z = torch.randn(1, model.inter_channels, frames, generator=torch.Generator().manual_seed(0))
    g = synth.net_g.emb_g(torch.tensor([0])).unsqueeze(-1)
    with torch.no_grad():
        before = synth.net_g.dec(z, g=g)[0, 0]
        z[:, :, changed] += 1.0
        after = synth.net_g.dec(z, g=g)[0, 0]
    moved = torch.nonzero((after - before).abs() > 0).flatten()
    first, last = int(moved[0]) // hop, int(moved[-1]) // hop  # frames of the first and last samples that moved
    reach = max(changed - first, last - changed)
    assert reach <= radius  # a bound: streaming's windows are exact
    assert radius - reach <= 2  # and a close one: the overlap costs no more than it must


@pytest.mark.parametrize("name", ["tiny", "resblock2-odd", "deep"])
def test_the_stream_joins_to_synthesize(synths: dict[str, infer.Synthesizer], name: str) -> None:
    synth = synths[name]
    text = "你好，世界。我喜欢用写代码。\n今天天气很好！"
    rate, whole = synth.synthesize(text, "spk1", "ZH", **NOISY)
    radius = streaming.decoder_receptive_field(synth.config.model)
    for chunk_frames in (4, radius + 3, None):
        chunks = list(synth.stream(text, "spk1", "ZH", chunk_frames=chunk_frames, **NOISY))
        assert all(chunk.dtype == np.float32 and chunk.ndim == 1 for chunk in chunks)
        joined = np.concatenate(chunks)
        assert joined.shape == whole.shape, chunk_frames
        np.testing.assert_allclose(joined, whole, atol=1e-4, rtol=0)
        # 3 utterances and 2 pauses; windows split each utterance further.
        assert len(chunks) == 5 if chunk_frames is None else len(chunks) > 5
        if chunk_frames is not None:  # the stream starts with a smaller window: its first audio comes early
            assert chunks[0].size == streaming.first_window(chunk_frames) * streaming.hop_of(synth.config.model)
    assert rate == synth.sampling_rate


def test_windows_tile_the_latent_starting_small_and_doubling() -> None:
    assert streaming.window_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert streaming.window_bounds(30, 16, first_frames=4) == [(0, 4), (4, 12), (12, 28), (28, 30)]
    assert streaming.window_bounds(3, 64, first_frames=16) == [(0, 3)]
    assert streaming.first_window(64) == 16 and streaming.first_window(2) == 1


def test_stream_checks_before_any_work(synths: dict[str, infer.Synthesizer]) -> None:
    synth = synths["tiny"]
    with pytest.raises(ValueError, match="unknown speaker"):
        synth.stream("你好。", "nobody", "ZH")
    with pytest.raises(ValueError, match="noise_scale"):
        synth.stream("你好。", "spk0", "ZH", noise_scale=-1)
    with pytest.raises(ValueError, match="chunk_frames"):
        next(synth.stream("你好。", "spk0", "ZH", chunk_frames=0))


def _check_tiling(entries: list[dict], duration: float, hop_seconds: float) -> None:
    assert entries[0]["start"] == 0.0
    for before, after in zip(entries, entries[1:]):
        assert after["start"] == pytest.approx(before["end"], abs=1e-9)
    assert all(entry["end"] >= entry["start"] for entry in entries)
    assert abs(entries[-1]["end"] - duration) <= hop_seconds


@pytest.mark.parametrize(
    ("text", "language", "words"),
    [
        (
            "你好，世界。今天天气很好！",
            "ZH",
            ["你", "好", ",", "世", "界", ".", "今", "天", "天", "气", "很", "好", "!"],
        ),
        ("こんにちは。", "JP", ["こ", "ん", "に", "ち", "は", "."]),
        ("nice to meet you. Python is fun.", "EN", ["nice", "to", "meet", "you", ".", "python", "is", "fun", "."]),
        ("[spk2]<zh>你好，<en>nice to meet you.", "mix", ["你", "好", ",", "nice", "to", "meet", "you", "."]),
        ("你好。\n\nnice to meet you.", "auto", ["你", "好", ".", "nice", "to", "meet", "you", "."]),
    ],
)
def test_timings_tile_the_audio(
    synths: dict[str, infer.Synthesizer], text: str, language: str, words: list[str]
) -> None:
    synth = synths["tiny"]
    rate, audio = synth.synthesize(text, "spk0", language, **NOISY)
    timed_rate, timed_audio, timings = synth.synthesize(text, "spk0", language, timings=True, **NOISY)
    assert timed_rate == rate and timings.sampling_rate == rate
    np.testing.assert_allclose(timed_audio, audio, atol=1e-4, rtol=0)
    assert timings.duration == pytest.approx(audio.size / rate)
    hop_seconds = streaming.hop_of(synth.config.model) / rate
    _check_tiling(timings.phones, timings.duration, hop_seconds)
    _check_tiling(timings.words, timings.duration, hop_seconds)
    spoken = [word["text"] for word in timings.words if word["kind"] == "word"]
    assert [word.lower() for word in spoken] == words
    # Every phone of the generator is listed once (pauses apart), each a symbol of the table.
    from text.symbols import symbols

    phones = [phone for phone in timings.phones if phone["symbol"] not in streaming.PAUSE_SYMBOL.values()]
    assert all(phone["symbol"] in symbols for phone in phones)
    # A word spans its phones: its start and end are phone boundaries.
    boundaries = {phone["start"] for phone in timings.phones} | {timings.phones[-1]["end"]}
    assert all(word["start"] in boundaries and word["end"] in boundaries for word in timings.words)
    languages = {word["language"] for word in timings.words if word["kind"] == "word"}
    assert languages == ({"ZH", "EN"} if language in ("mix", "auto") else {language})


def test_timings_mark_sentence_and_paragraph_pauses(synths: dict[str, infer.Synthesizer]) -> None:
    synth = synths["tiny"]
    text = "你好。今天天气很好！\n世界。"
    _, audio, timings = synth.synthesize(
        text, "spk0", "ZH", timings=True, sentence_pause=0.25, paragraph_pause=0.5, **NOISY
    )
    pauses = [word for word in timings.words if word["kind"].endswith("pause")]
    assert [pause["kind"] for pause in pauses] == ["sentence pause", "paragraph pause"]
    lengths = [pause["end"] - pause["start"] for pause in pauses]
    assert lengths == pytest.approx([0.25, 0.5], abs=1 / synth.sampling_rate)
    # The pauses are silent; the audio around them is not.
    rate = synth.sampling_rate
    for pause in pauses:
        start, end = round(pause["start"] * rate), round(pause["end"] * rate)
        assert not audio[start:end].any()
        assert audio[start - 100 : start].any() and audio[end : end + 100].any()
    assert [phone["symbol"] for phone in timings.phones].count("<paragraph pause>") == 1


def test_timings_are_plain_json(synths: dict[str, infer.Synthesizer]) -> None:
    _, _, timings = synths["tiny"].synthesize("你好。", "spk0", "ZH", timings=True)
    encoded = json.loads(json.dumps(timings.as_dict()))
    assert set(encoded) == {"sampling_rate", "duration", "phones", "words"}
    assert set(encoded["phones"][0]) == {"symbol", "start", "end"}
    assert set(encoded["words"][0]) == {"text", "start", "end", "language", "kind"}


@pytest.mark.slow  # the ONNX export of even the tiny generator takes half a minute on 2 busy cores
def test_an_onnx_generator_streams_utterance_by_utterance(
    tmp_path: Path, tiny_model_config: dict, bert_dirs: dict[str, Path]
) -> None:
    """The ONNX graph runs flow and decoder as one piece (the flow's attention needs the whole utterance), so
    its stream has one chunk per utterance; joined, they are its `synthesize`. Timings need the torch pieces."""
    import export

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_generator(tiny_model_config, for_training=False)
    checkpoint, config_path = tmp_path / "G_0.pth", tmp_path / "config.json"
    torch.save({"model": net.state_dict()}, checkpoint)
    config_path.write_text(json.dumps(tiny_model_config), encoding="utf-8")
    export.export_onnx(checkpoint, tmp_path / "tiny.onnx", config_path)
    synth = infer.load_synthesizer(tmp_path / "tiny.onnx", bert_dirs=bert_dirs)
    text = "你好，世界。\n今天天气很好！"
    _, whole = synth.synthesize(text, "spk0", "ZH", **NOISY)
    chunks = list(synth.stream(text, "spk0", "ZH", chunk_frames=4, **NOISY))
    assert len(chunks) == 3  # two utterances and the paragraph pause
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="timings need the torch generator"):
        synth.synthesize(text, "spk0", "ZH", timings=True)
