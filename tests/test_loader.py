"""TextAudioSpeakerLoader: reference get_text results, audio/spectrogram loading, caching and errors."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

from data_utils import (
    FilelistEntry,
    Sample,
    TextAudioSpeakerLoader,
    bert_path_for,
    blanked_word2ph,
    parse_filelist_line,
    spec_path_for,
)
from mel_processing import spectrogram_torch

SLOT_NAMES = ("bert", "ja_bert", "en_bert")


@pytest.fixture(scope="module")
def dev_config(tiny_model_config: dict) -> dict:
    """Only the data settings are used here, which the kit-free tiny config shares with the kit's dev config."""
    return tiny_model_config


def _data_hparams(dev_config: dict, **overrides) -> dict:
    return dict(dev_config["data"], **overrides)


def _write_wav(path: Path, seconds: float, sr: int = 22050, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    audio = (0.3 * np.sin(np.arange(n) * 2 * np.pi * 220 / sr) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    data = audio if channels == 1 else np.stack([audio] * channels, axis=1)
    soundfile.write(path, data, sr, subtype="PCM_16")
    return audio


def _line(wav: Path, speaker: str, language: str, phones: list[str], tones: list[int], word2ph: list[int]) -> str:
    return "|".join(
        [str(wav), speaker, language, "text", " ".join(phones), " ".join(map(str, tones)), " ".join(map(str, word2ph))]
    )


def _write_bert(wav: Path, n_phones: int, seed: int = 0, dim: int = 1024) -> torch.Tensor:
    features = torch.randn(dim, n_phones, generator=torch.Generator().manual_seed(seed))
    torch.save(features, bert_path_for(wav))
    return features


def _write_corpus(folder: Path, cases: list[dict]) -> tuple[Path, list[torch.Tensor]]:
    """One clip per case (language_str, phones, tones, word2ph_in) with matching BERT files, and the filelist."""
    lines, features = [], []
    for i, case in enumerate(cases):
        wav = folder / f"clip{i}.wav"
        _write_wav(wav, 0.5 + 0.1 * i, seed=i)
        features.append(_write_bert(wav, 2 * len(case["phones"]) + 1, seed=i))  # phones with blanks around each
        lines.append(_line(wav, f"spk{i}", case["language_str"], case["phones"], case["tones"], case["word2ph_in"]))
    filelist = folder / "train.list"
    filelist.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return filelist, features


# Hand-written cleaned text, one per language: for the tests that compare nothing with the reference.
LOCAL_CASES = [
    {"language_str": "ZH", "phones": ["_", "m", "a", "_"], "tones": [0, 1, 1, 0], "word2ph_in": [1, 2, 1]},
    {
        "language_str": "JP",
        "phones": ["_", "s", "o", "r", "a", "_"],
        "tones": [0, 0, 1, 1, 0, 0],
        "word2ph_in": [1, 2, 2, 1],
    },
    {"language_str": "EN", "phones": ["_", "k", "ae", "t", "_"], "tones": [0, 3, 1, 3, 0], "word2ph_in": [1, 3, 1]},
]


@pytest.fixture()
def golden_corpus(tmp_path: Path, golden: dict) -> tuple[Path, list[dict], list[torch.Tensor]]:
    """One clip per golden get_text case (ZH, JP, EN) with matching BERT files."""
    cases = golden["loader_get_text"]
    filelist, features = _write_corpus(tmp_path, cases)
    assert [f.shape[1] for f in features] == [len(case["phone_ids"]) for case in cases]
    return filelist, cases, features


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """Three clips (ZH, JP, EN) of hand-written cleaned text with matching BERT files: no kit needed."""
    return _write_corpus(tmp_path, LOCAL_CASES)[0]


def test_get_text_matches_reference(golden_corpus, dev_config: dict) -> None:
    filelist, cases, features = golden_corpus
    loader = TextAudioSpeakerLoader(filelist, _data_hparams(dev_config))
    for i, case in enumerate(cases):
        word2ph = list(case["word2ph_in"])
        bert, ja_bert, en_bert, phones, tones, langs = loader.get_text(
            "text", word2ph, case["phones"], case["tones"], case["language_str"], str(filelist.parent / f"clip{i}.wav")
        )
        assert word2ph == case["word2ph_in"], "get_text must not modify the caller's word2ph"
        assert blanked_word2ph(case["word2ph_in"]) == case["word2ph_after"]
        assert torch.equal(phones, case["phone_ids"])
        assert torch.equal(tones, case["tone_ids"])
        assert torch.equal(langs, case["lang_ids"])
        slots = dict(zip(SLOT_NAMES, (bert, ja_bert, en_bert)))
        for name, slot in slots.items():
            assert list(slot.shape) == case["bert_shapes"][SLOT_NAMES.index(name)]
            if name == case["bert_slot_holding_file"]:
                assert torch.equal(slot, features[i])
            else:
                assert torch.count_nonzero(slot) == 0, f"{name} should be zeros"


def test_items_spectrogram_and_cache(corpus: Path, dev_config: dict) -> None:
    filelist = corpus
    data = dev_config["data"]
    loader = TextAudioSpeakerLoader(filelist, _data_hparams(dev_config))
    assert len(loader) == 3
    for index, entry in enumerate(loader.audiopaths_sid_text):
        assert loader.lengths[index] == os.path.getsize(entry.wav) // (2 * data["hop_length"])
        item = loader[index]
        assert isinstance(item, Sample)
        audio, sr = soundfile.read(entry.wav, dtype="float32")
        assert torch.equal(item.wav, torch.from_numpy(audio).unsqueeze(0))
        expected = spectrogram_torch(
            item.wav, data["filter_length"], sr, data["hop_length"], data["win_length"], center=False
        ).squeeze(0)
        torch.testing.assert_close(item.spec, expected, atol=1e-4, rtol=1e-4)
        assert item.spec.shape == (data["filter_length"] // 2 + 1, len(audio) // data["hop_length"])
        assert item.sid.tolist() == [data["spk2id"][entry.speaker]]
        assert item.phones.shape == item.tone.shape == item.language.shape
        assert item.bert.shape[1] == item.phones.shape[0]
        assert spec_path_for(entry.wav).is_file()

    # A (valid-shaped) cache newer than the wav is used as is ...
    entry = loader.audiopaths_sid_text[0]
    cache = spec_path_for(entry.wav)
    marker = torch.full_like(torch.load(cache, weights_only=True), 7.0)
    torch.save(marker, cache)
    assert torch.equal(loader[0].spec, marker)
    # ... but not when caching is off, and a cache with the wrong shape is recomputed.
    no_cache = TextAudioSpeakerLoader(filelist, _data_hparams(dev_config, spec_cache=False))
    assert not torch.equal(no_cache[0].spec, marker)
    torch.save(marker[:, :3], cache)
    assert loader[0].spec.shape == marker.shape and not torch.equal(loader[0].spec, marker)


def test_filelist_is_shuffled_like_the_reference_and_filtered(tmp_path: Path, dev_config: dict) -> None:
    lines = []
    for i in range(8):
        wav = tmp_path / f"c{i}.wav"
        _write_wav(wav, 0.2, seed=i)
        n = 3 if i != 5 else 6  # clip 5 exceeds max_text_len
        lines.append(_line(wav, "spk0", "ZH", ["_"] + ["a"] * (n - 2) + ["_"], [0] * n, [1] * n))
    filelist = tmp_path / "list.txt"
    filelist.write_text("\n".join(lines), encoding="utf-8")
    loader = TextAudioSpeakerLoader(filelist, _data_hparams(dev_config, max_text_len=5))
    expected = [parse_filelist_line(line) for line in lines]
    random.Random(1234).shuffle(expected)
    expected = [e for e in expected if len(e.phones) <= 5]
    assert loader.audiopaths_sid_text == expected
    assert len(loader) == 7
    assert loader.origins[0].startswith(f"{filelist}:")


def test_all_in_mem_and_namespace_hparams(corpus: Path, dev_config: dict) -> None:
    filelist = corpus
    hparams = SimpleNamespace(**_data_hparams(dev_config, spec_cache=False))
    loader = TextAudioSpeakerLoader(filelist, hparams, all_in_mem=True)
    assert loader.preloaded is not None and len(loader.preloaded) == 3
    # Preloaded tensors are served as they are (only the unused-BERT noise is drawn per access).
    assert loader[1].spec is loader.preloaded[1].spec and loader[1].wav is loader.preloaded[1].wav
    assert not any(spec_path_for(e.wav).exists() for e in loader.audiopaths_sid_text)


def _single_clip(tmp_path: Path, dev_config: dict, **kw) -> tuple[TextAudioSpeakerLoader, Path]:
    wav = tmp_path / "one.wav"
    _write_wav(wav, 0.3, sr=kw.pop("sr", 22050), channels=kw.pop("channels", 1))
    phones = ["_", "a", "_"]
    n_bert = kw.pop("n_bert", 7)
    if n_bert is not None:
        _write_bert(wav, n_bert)
    filelist = tmp_path / "one.list"
    filelist.write_text(_line(wav, kw.pop("speaker", "spk0"), "ZH", phones, [0, 1, 0], [1, 1, 1]), encoding="utf-8")
    return TextAudioSpeakerLoader(filelist, _data_hparams(dev_config)), wav


def test_wrong_sampling_rate_is_a_clear_error(tmp_path: Path, dev_config: dict) -> None:
    loader, wav = _single_clip(tmp_path, dev_config, sr=16000)
    with pytest.raises(ValueError, match=r"one\.wav: sampling rate 16000 Hz, but the config expects 22050"):
        loader[0]


def test_stereo_is_a_clear_error(tmp_path: Path, dev_config: dict) -> None:
    loader, _ = _single_clip(tmp_path, dev_config, channels=2)
    with pytest.raises(ValueError, match="2 channels"):
        loader[0]


def test_bert_shape_mismatch_names_the_file(tmp_path: Path, dev_config: dict) -> None:
    loader, wav = _single_clip(tmp_path, dev_config, n_bert=3)
    with pytest.raises(ValueError, match=r"one\.bert\.pt: BERT features have shape \(1024, 3\), expected \[1024, 7\]"):
        loader[0]


def test_missing_bert_names_the_file(tmp_path: Path, dev_config: dict) -> None:
    loader, _ = _single_clip(tmp_path, dev_config, n_bert=None)
    with pytest.raises(FileNotFoundError, match=r"one\.bert\.pt: BERT features missing"):
        loader[0]


def test_unknown_speaker_names_the_line(tmp_path: Path, dev_config: dict) -> None:
    loader, _ = _single_clip(tmp_path, dev_config, speaker="nobody")
    with pytest.raises(KeyError, match=r"one\.list:1: speaker 'nobody'"):
        loader[0]


def test_malformed_line_names_file_and_line(tmp_path: Path, dev_config: dict) -> None:
    filelist = tmp_path / "bad.list"
    filelist.write_text("\n\na.wav|spk0|ZH|text|_ a _\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.list:3: expected 7 '\|'-separated fields"):
        TextAudioSpeakerLoader(filelist, _data_hparams(dev_config))


def test_missing_audio_names_file_and_line(tmp_path: Path, dev_config: dict) -> None:
    filelist = tmp_path / "missing.list"
    filelist.write_text(_line(tmp_path / "nope.wav", "spk0", "ZH", ["_"], [0], [1]), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"missing\.list:1: cannot read audio file"):
        TextAudioSpeakerLoader(filelist, _data_hparams(dev_config))


def test_parse_filelist_line_fields() -> None:
    entry = parse_filelist_line("a/b.wav|spk|EN|hi.|_ hh ay . _|0 1 1 0 0|1 2 1 1\n")
    phones = ["_", "hh", "ay", ".", "_"]
    assert entry == FilelistEntry("a/b.wav", "spk", "EN", "hi.", phones, [0, 1, 1, 0, 0], [1, 2, 1, 1])
    with pytest.raises(ValueError, match="x.list:4: tones must be space-separated integers"):
        parse_filelist_line("a.wav|s|EN|t|_|zero|1", "x.list:4")
    assert bert_path_for("d.wav/x.wav") == Path("d.wav/x.bert.pt")


def test_unknown_phone_names_the_clip(tmp_path: Path, dev_config: dict) -> None:
    loader, wav = _single_clip(tmp_path, dev_config)
    with pytest.raises(ValueError, match=r"one\.wav: .*zzz"):
        loader.get_text("t", [1, 1, 1], ["_", "zzz", "_"], [0, 1, 0], "ZH", str(wav))
