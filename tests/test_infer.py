"""infer.py: golden waveforms from prepared tensors, text-to-speech end to end, errors, the command line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import infer
import synthesis_params
import synthesis_plan
from config import model_config_from_dict
from models import build_generator

REPO_ROOT = Path(__file__).resolve().parents[1]
INPUT_NAMES = ("x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert", "en_bert")
CASES = ("sdp0", "sdp1", "ls13")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The suite shares 2 cores among several processes; one intra-op thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _golden_inputs(golden: dict) -> dict[str, torch.Tensor]:
    return {name: golden["inputs"][name] for name in INPUT_NAMES}


def _scales(params: dict) -> dict[str, float]:
    return {name: params[name] for name in ("sdp_ratio", "noise_scale", "noise_scale_w", "length_scale")}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: dict) -> tuple[Path, Path]:
    """A reference-layout checkpoint of a seeded tiny generator (the dev model's shape), and its config."""
    folder = tmp_path_factory.mktemp("model")
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(tiny_model_config), encoding="utf-8")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        weights = build_generator(tiny_model_config, for_training=True).state_dict()
    checkpoint = folder / "G_0.pth"
    torch.save({"model": weights, "iteration": 0, "optimizer": None, "learning_rate": 2e-4}, checkpoint)
    return checkpoint, config_path


@pytest.fixture(scope="module")
def zh_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from text.tiny_bert import build_tiny_bert

    folder = tmp_path_factory.mktemp("bert") / "tiny-zh"
    build_tiny_bert(folder, "ZH", seed=0)
    return folder


@pytest.fixture(scope="module")
def synthesizer(model_files: tuple[Path, Path], zh_bert_dir: Path) -> infer.Synthesizer:
    checkpoint, config_path = model_files
    return infer.load_synthesizer(checkpoint, config_path, bert_dirs={"ZH": zh_bert_dir})


@pytest.fixture(scope="module")
def zeros_synthesizer(synthesizer: infer.Synthesizer) -> infer.Synthesizer:
    """The same generator, as if trained with data.unused_bert = "zeros": deterministic features."""
    config = synthesizer.config.to_dict()
    config["data"]["unused_bert"] = "zeros"
    return infer.Synthesizer(synthesizer.net_g, config, bert_dirs=synthesizer.bert_dirs)


@pytest.mark.parametrize("case", CASES)
def test_infer_waveform_reproduces_golden(golden: dict, dev_config: dict, case: str) -> None:
    net = build_generator(dev_config, for_training=False)
    assert infer.load_inference_state(net, golden["weights_g"]) == []
    net.eval()
    expected = golden["infer"][case]
    o, y_lengths = infer.infer_waveform(net, **_golden_inputs(golden), **_scales(expected["params"]))
    torch.testing.assert_close(o, expected["o"], atol=1e-4, rtol=1e-4)
    assert torch.equal(y_lengths, expected["y_lengths"])


@pytest.mark.parametrize("which", ["golden", "golden_perturbed"])
def test_loaded_checkpoint_with_folded_weight_norm_reproduces_golden(
    request: pytest.FixtureRequest, tmp_path: Path, dev_config: dict, which: str
) -> None:
    reference = request.getfixturevalue(which)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(dev_config), encoding="utf-8")
    checkpoint = tmp_path / "G_7.pth"
    torch.save({"model": reference["weights_g"], "iteration": 7}, checkpoint)

    net, config = infer.load_generator(checkpoint, config_path, fold_weights=True)
    assert not net.training and config == model_config_from_dict(dev_config)
    assert not any(key.endswith(("weight_g", "weight_v")) for key in net.state_dict())
    for case in ("sdp0", "sdp1"):
        expected = reference["infer"][case]
        o, y_lengths = infer.infer_waveform(net, **_golden_inputs(reference), **_scales(expected["params"]))
        assert torch.equal(y_lengths, expected["y_lengths"])
        torch.testing.assert_close(o, expected["o"], atol=1e-4, rtol=1e-4)


def test_reference_checkpoint_loads(dev_dir: Path, dev_config: dict, tmp_path: Path, golden: dict) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(dev_config), encoding="utf-8")
    net, _ = infer.load_generator(dev_dir / "ckpt" / "G_100.pth", config_path, fold_weights=False)
    saved = torch.load(dev_dir / "ckpt" / "G_100.pth", weights_only=True)["model"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved[key]), key
    o, y_lengths = infer.infer_waveform(net, **_golden_inputs(golden), sdp_ratio=0.5, noise_scale=0, noise_scale_w=0)
    assert torch.isfinite(o).all() and o.shape == (2, 1, int(y_lengths.max()) * 256)


def test_load_rejects_config_that_does_not_fit(
    model_files: tuple[Path, Path], tiny_model_config: dict, tmp_path: Path
) -> None:
    checkpoint, _ = model_files
    other = json.loads(json.dumps(tiny_model_config))
    other["model"]["hidden_channels"] = 48
    config_path = tmp_path / "other.json"
    config_path.write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(ValueError, match="do not fit the model built from the config"):
        infer.load_generator(checkpoint, config_path)
    with pytest.raises(ValueError, match="pass its config.json"):
        infer.load_generator(checkpoint, None)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        infer.load_generator(tmp_path / "nope.pth", config_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        infer.load_generator(junk, config_path)
    not_generator = tmp_path / "list.pth"
    torch.save({"model": [1, 2]}, not_generator)
    with pytest.raises(ValueError, match="not a generator checkpoint"):
        infer.load_generator(not_generator, config_path)


def test_split_sentences() -> None:
    assert synthesis_plan.split_sentences("你好。今天天气很好！What is 3.5? OK.\n再见") == [
        "你好。",
        "今天天气很好！",
        "What is 3.5?",
        "OK.",
        "再见",
    ]
    assert synthesis_plan.split_sentences("……。！  ") == []
    assert synthesis_plan.split_sentences("一句话") == ["一句话"]
    # Over-long sentences are cut at commas, packing clauses up to the limit.
    assert synthesis_plan.split_sentences("一二三，四五六，七八九，十。再见。", max_chars=7) == [
        "一二三，",
        "四五六，",
        "七八九，十。",
        "再见。",
    ]


def test_prepare_text_layout(synthesizer: infer.Synthesizer, zeros_synthesizer: infer.Synthesizer) -> None:
    from text import cleaned_text_to_sequence
    from text.cleaner import clean_text

    prepared = zeros_synthesizer.prepare("你好，世界。", "ZH")
    n = prepared.phones.numel()
    _, phones, tones, word2ph = clean_text("你好，世界。", "ZH")
    phone_ids, tone_ids, _ = cleaned_text_to_sequence(phones, tones, "ZH")
    # add_blank: blanks at every even position, the cleaned phones in between.
    assert n == 2 * len(phone_ids) + 1 == 2 * sum(word2ph) + 1
    assert torch.all(prepared.phones[::2] == 0) and prepared.phones[1::2].tolist() == phone_ids
    assert torch.all(prepared.tones[::2] == 0) and prepared.tones[1::2].tolist() == tone_ids
    assert prepared.tones.shape == prepared.lang_ids.shape == (n,)
    assert torch.all(prepared.lang_ids == 0)  # ZH language id
    assert prepared.bert.shape == prepared.ja_bert.shape == prepared.en_bert.shape == (1024, n)
    assert prepared.bert.abs().sum() > 0
    assert torch.count_nonzero(prepared.ja_bert) == 0 and torch.count_nonzero(prepared.en_bert) == 0
    # A config without data.unused_bert (the reference's) means standard-normal noise in the unused slots,
    # drawn from the generator passed in: reproducible with a seed.
    assert synthesizer.unused_bert == "randn" and zeros_synthesizer.unused_bert == "zeros"
    noisy = synthesizer.prepare("你好，世界。", "ZH", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noisy.bert, prepared.bert)
    for slot in (noisy.ja_bert, noisy.en_bert):
        assert abs(slot.mean().item()) < 0.05 and abs(slot.std().item() - 1.0) < 0.05
    assert not torch.equal(noisy.ja_bert, noisy.en_bert)
    again = synthesizer.prepare("你好，世界。", "ZH", generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.ja_bert, noisy.ja_bert) and torch.equal(again.en_bert, noisy.en_bert)


def test_synthesize_from_text(synthesizer: infer.Synthesizer, tiny_model_config: dict) -> None:
    text = "你好，世界。"
    n_ids = synthesizer.prepare(text, "ZH").phones.numel()
    sampling_rate, audio = synthesizer.synthesize(text, "spk1", "ZH")
    hop = tiny_model_config["data"]["hop_length"]
    assert sampling_rate == tiny_model_config["data"]["sampling_rate"] == 22050
    assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
    # Every id gets at least one frame (ceil of a positive duration); an untrained model gives a few per id.
    assert audio.size % hop == 0 and n_ids * hop <= audio.size <= 20 * n_ids * hop
    assert np.sqrt(np.mean(audio**2)) > 1e-4


def test_long_text_is_spoken_sentence_by_sentence(zeros_synthesizer: infer.Synthesizer) -> None:
    synthesizer = zeros_synthesizer
    deterministic = {"sdp_ratio": 0.3, "noise_scale": 0.0, "noise_scale_w": 0.0}
    _, first = synthesizer.synthesize("你好。", "spk0", "ZH", **deterministic)
    _, second = synthesizer.synthesize("今天天气很好！", "spk0", "ZH", **deterministic)
    _, third = synthesizer.synthesize("再见。", "spk0", "ZH", **deterministic)
    text = "你好。今天天气很好！\n\n再见。"
    sampling_rate, whole = synthesizer.synthesize(
        text, "spk0", "ZH", **deterministic, sentence_pause=0.1, paragraph_pause=0.3
    )
    gap, paragraph_gap = int(round(0.1 * sampling_rate)), int(round(0.3 * sampling_rate))
    assert whole.size == first.size + gap + second.size + paragraph_gap + third.size
    np.testing.assert_allclose(whole[: first.size], first, atol=1e-5)
    assert not whole[first.size : first.size + gap].any()
    at = first.size + gap
    np.testing.assert_allclose(whole[at : at + second.size], second, atol=1e-5)
    at += second.size
    assert not whole[at : at + paragraph_gap].any()
    # No normalisation: every piece keeps its own level, exactly as when spoken alone.
    np.testing.assert_allclose(whole[at + paragraph_gap :], third, atol=1e-5)


def test_clear_errors(synthesizer: infer.Synthesizer, model_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown speaker 'nobody'; known speakers: spk0, spk1, spk2, spk3"):
        synthesizer.synthesize("你好", "nobody", "ZH")
    with pytest.raises(ValueError, match="unknown language 'FR'"):
        synthesizer.synthesize("bonjour", "spk0", "FR")
    with pytest.raises(ValueError, match="sdp_ratio"):
        synthesizer.synthesize("你好", "spk0", "ZH", sdp_ratio=1.5)
    with pytest.raises(ValueError, match="length_scale"):
        synthesizer.synthesize("你好", "spk0", "ZH", length_scale=0.0)
    with pytest.raises(ValueError, match="nothing to pronounce"):
        synthesizer.synthesize("。。。", "spk0", "ZH")
    checkpoint, config_path = model_files
    missing = tmp_path / "no-bert-here"
    without_bert = infer.load_synthesizer(checkpoint, config_path, bert_dirs={"ZH": missing})
    with pytest.raises(FileNotFoundError, match="chinese-roberta-wwm-ext-large") as error:
        without_bert.synthesize("你好", "spk0", "ZH")
    assert str(missing) in str(error.value)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_command_line(model_files: tuple[Path, Path], zh_bert_dir: Path, tmp_path: Path) -> None:
    checkpoint, config_path = model_files
    output = tmp_path / "out.wav"
    common = ["infer.py", "--model", str(checkpoint), "--config", str(config_path), "--language", "ZH"]
    common += ["--bert-dir", f"ZH={zh_bert_dir}", "--text", "你好，世界。今天天气很好。"]
    done = _run(*common, "--speaker", "spk2", "-o", str(output))
    assert done.returncode == 0, done.stderr
    audio, sampling_rate = soundfile.read(output)
    assert sampling_rate == 22050 and audio.ndim == 1 and audio.size > 22050 * 0.2
    assert np.abs(audio).max() > 1e-4

    failed = _run(*common, "--speaker", "nobody", "-o", str(tmp_path / "bad.wav"))
    assert failed.returncode == 2
    assert "known speakers: spk0, spk1, spk2, spk3" in failed.stderr
    assert not (tmp_path / "bad.wav").exists()


def test_the_command_line_takes_the_one_set_of_defaults() -> None:
    required = ["-m", "G.pth", "-t", "x", "-s", "s", "-o", "o.wav"]
    parse = infer.build_parser().parse_args
    assert synthesis_params.from_arguments(parse(required)) == synthesis_params.DEFAULT_PARAMS
    changed = synthesis_params.from_arguments(parse([*required, "--no-split", "--pause", "0.5", "--seed", "3"]))
    assert changed == synthesis_params.SynthesisParams(split=False, sentence_pause=0.5, seed=3)
    with pytest.raises(ValueError, match=r"--noise-scale-w must be a number within \[0, 2\], got 9.0"):
        synthesis_params.from_arguments(parse([*required, "--noise-scale-w", "9"]))


# --------------------------------------------------------------------------------------------------------------
# Bad input on the command line: exit status 2, one line naming the argument or the language, nothing written.
# Rows whose check must come before any model loads name a model file that does not exist: had the model been
# loaded first, the error would be "model file not found" instead.


def _discriminator_checkpoints(folder: Path) -> None:
    """A D_ (its real layout, meta tensors instead of its 46M weights) and a tiny DUR_ checkpoint."""
    import models

    with torch.device("meta"):
        multi_period = models.MultiPeriodDiscriminator().state_dict()
    torch.save({"model": multi_period, "iteration": 50}, folder / "D_50.pth")
    duration = models.DurationDiscriminator(8, 8, 3, 0.1, gin_channels=4).state_dict()
    torch.save({"model": duration, "iteration": 50}, folder / "DUR_50.pth")


BAD_RUNS = [
    ("unpronounceable ZH", ["-t", "hello", "-l", "ZH"], "ZH (Chinese) cannot pronounce 'hello'"),
    ("unpronounceable EN", ["-t", "你好", "-l", "EN"], "EN (English) cannot pronounce '你好'"),
    ("unknown speaker", ["-s", "nobody"], "unknown speaker 'nobody'; known speakers: spk0"),
    ("D_ as generator", ["-m", "{tmp}/D_50.pth"], "is a discriminator checkpoint (D_*.pth"),
    ("DUR_ as generator", ["-m", "{tmp}/DUR_50.pth"], "is a discriminator checkpoint (DUR_*.pth"),
    ("no such folder", ["-m", "{tmp}/no.pth", "-o", "{tmp}/no/such/out.wav"], "-o/--output: cannot write"),
    ("unknown extension", ["-m", "{tmp}/no.pth", "-o", "{tmp}/out.exe"], "-o/--output: {tmp}/out.exe has no audio"),
    ("unwritable", ["-m", "{tmp}/no.pth", "-o", "/proc/out.wav"], "-o/--output: cannot write /proc/out.wav"),
    ("a folder", ["-m", "{tmp}/no.pth", "-o", "{tmp}/old.wav"], "old.wav is a folder"),
    ("subtype", ["-m", "{tmp}/no.pth", "--subtype", "VORBIS"], "--subtype: VORBIS cannot be written to a .wav"),
    ("parameter range", ["-m", "{tmp}/no.pth", "--noise-scale-w", "9"], "--noise-scale-w must be a number within"),
]


def _infer_argv(tmp: Path, model_files: tuple[Path, Path], bert_dir: Path, changes: list[str]) -> list[str]:
    """A good command line (tiny model, tiny ZH BERT, output in `tmp`) with `changes` (flag, value, ...) applied."""
    checkpoint, config_path = model_files
    options = {"-m": str(checkpoint), "-c": str(config_path), "-t": "你好。", "-s": "spk0", "-l": "ZH"}
    options |= {"--bert-dir": f"ZH={bert_dir}", "-o": str(tmp / "out.wav"), "--seed": "1"}
    options |= {flag: value.format(tmp=tmp) for flag, value in zip(changes[::2], changes[1::2], strict=True)}
    return [item for option in options.items() for item in option]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else b"dir" for path in folder.rglob("*")
    }


@pytest.mark.parametrize(("name", "changes", "message"), BAD_RUNS, ids=[row[0] for row in BAD_RUNS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    name: str,
    changes: list[str],
    message: str,
    model_files: tuple[Path, Path],
    zh_bert_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _discriminator_checkpoints(tmp_path)
    (tmp_path / "old.wav").mkdir()
    before = _snapshot(tmp_path)
    with caplog.at_level(logging.INFO):
        status = infer.main(_infer_argv(tmp_path, model_files, zh_bert_dir, changes))
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert status == 2 and len(errors) == 1, errors
    assert message.format(tmp=tmp_path) in errors[0] and "\n" not in errors[0]
    assert _snapshot(tmp_path) == before


def test_rtf_leaves_out_model_and_bert_loading(
    model_files: tuple[Path, Path], zh_bert_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from text.bert_features import bert_loader

    bert_loader.cache_clear()
    loaded_when_timing_starts = []
    render = infer.Synthesizer.render

    def watched_render(self: infer.Synthesizer, *args, **kwargs):
        loaded_when_timing_starts.append(bert_loader.cache_info().currsize)
        return render(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.INFO):
        patch.setattr(infer.Synthesizer, "render", watched_render)
        assert infer.main(_infer_argv(tmp_path, model_files, zh_bert_dir, [])) == 0
    assert loaded_when_timing_starts == [1]  # the ZH BERT was loaded before the timed synthesis began
    assert "loaded the model and the text front ends in" in caplog.text and "(RTF " in caplog.text
    audio, sampling_rate = soundfile.read(tmp_path / "out.wav")
    assert sampling_rate == 22050 and audio.size > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.wav"]  # no temporary file left
