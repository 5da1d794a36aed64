"""export.py: the inference file is small, self-contained, and gives the checkpoint's waveform."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from model_nets import random_batch
from safetensors import safe_open

import export
import infer
from config import model_config_from_dict, model_config_from_json
from models import build_generator
from text.symbols import symbols

REPO_ROOT = Path(__file__).resolve().parents[1]
INPUT_NAMES = ("x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert", "en_bert")
DETERMINISTIC = {"sdp_ratio": 0.5, "noise_scale": 0.0, "noise_scale_w": 0.0, "length_scale": 1.0}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The suite shares 2 cores among several processes; one intra-op thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _waveform(net: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return infer.infer_waveform(net, **{name: inputs[name] for name in INPUT_NAMES}, **DETERMINISTIC)


@pytest.fixture(scope="module")
def dev_config(tiny_model_config: dict) -> dict:
    """The tiny config (the kit's dev-model shape): the exports here compare nothing with the reference."""
    return tiny_model_config


@pytest.fixture(scope="module")
def text_inputs(tiny_model_config: dict) -> dict:
    """A random two-item text batch in the dev shapes (the kit's golden inputs have these shapes)."""
    batch = random_batch(tiny_model_config, len(symbols), [17, 12], [60, 45])
    return {
        "x": batch.text, "x_lengths": batch.text_lengths, "sid": batch.sid, "tone": batch.tone,
        "language": batch.language, "bert": batch.bert, "ja_bert": batch.ja_bert, "en_bert": batch.en_bert,
    }  # fmt: skip


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory, dev_config: dict) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(dev_config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory, dev_config: dict) -> Path:
    """A checkpoint as training writes it: perturbed generator weights after one AdamW step, with its state.
    The perturbation moves the zero-initialised output layers (flows, duration predictor) off the identity."""
    import utils

    torch.manual_seed(0)
    net = build_generator(dev_config, for_training=True)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * (torch.rand(p.shape, generator=generator) - 0.5))
    train = dev_config["train"]
    optimizer = torch.optim.AdamW(net.parameters(), train["learning_rate"], betas=train["betas"], eps=train["eps"])
    loss = sum((p.float() ** 2).sum() for p in net.parameters())
    loss.backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("ckpt") / "G_1000.pth"
    utils.save_checkpoint(net, optimizer, train["learning_rate"], 3, path)
    return path


def test_export_matches_training_checkpoint(
    training_checkpoint: Path, config_path: Path, tmp_path: Path, text_inputs: dict, dev_config: dict
) -> None:
    output = tmp_path / "G_1000.safetensors"
    result = export.export_generator(training_checkpoint, output, config_path)
    assert result.path == output and result.max_probe_difference <= 1e-5
    assert output.stat().st_size * 3 <= training_checkpoint.stat().st_size

    with safe_open(str(output), framework="pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["format"] == infer.EXPORT_FORMAT and metadata["weight_norm"] == "folded"
    # The stored config is the resolved one: the same settings, every default spelled out.
    assert model_config_from_json(metadata["config"]) == model_config_from_dict(dev_config)
    assert not any(key.startswith("enc_q.") or key.endswith(("weight_g", "weight_v")) for key in keys)
    assert any(key.startswith("dec.ups.") for key in keys)

    source, _ = infer.load_generator(training_checkpoint, config_path, fold_weights=False)
    exported, config = infer.load_generator(output)  # no config: it comes from the metadata
    assert config == model_config_from_dict(dev_config)
    expected_o, expected_lengths = _waveform(source, text_inputs)
    actual_o, actual_lengths = _waveform(exported, text_inputs)
    assert torch.equal(actual_lengths, expected_lengths)
    torch.testing.assert_close(actual_o, expected_o, atol=1e-4, rtol=1e-4)


def test_export_of_reference_checkpoint(dev_dir: Path, config_path: Path, tmp_path: Path, golden: dict) -> None:
    checkpoint = dev_dir / "ckpt" / "G_100.pth"
    output = tmp_path / "G_100.safetensors"
    export.export_generator(checkpoint, output, config_path, fold_weights=False)
    assert output.stat().st_size * 3 <= checkpoint.stat().st_size
    with safe_open(str(output), framework="pt") as handle:
        assert handle.metadata()["weight_norm"] == "kept"
        assert any(key.endswith("weight_g") for key in handle.keys())

    source, _ = infer.load_generator(checkpoint, config_path, fold_weights=False)
    for fold in (False, True):
        exported, _ = infer.load_generator(output, fold_weights=fold)
        expected_o, expected_lengths = _waveform(source, golden["inputs"])
        actual_o, actual_lengths = _waveform(exported, golden["inputs"])
        assert torch.equal(actual_lengths, expected_lengths)
        torch.testing.assert_close(actual_o, expected_o, atol=1e-4, rtol=1e-4)


def test_half_precision_export_is_smaller_and_close(
    training_checkpoint: Path, config_path: Path, tmp_path: Path, text_inputs: dict
) -> None:
    full = export.export_generator(training_checkpoint, tmp_path / "f32.safetensors", config_path)
    half = export.export_generator(training_checkpoint, tmp_path / "f16.safetensors", config_path, dtype="float16")
    assert half.bytes_written < 0.6 * full.bytes_written
    net32, _ = infer.load_generator(full.path)
    net16, _ = infer.load_generator(half.path)
    o32, lengths32 = _waveform(net32, text_inputs)
    o16, lengths16 = _waveform(net16, text_inputs)
    assert torch.isfinite(o16).all()
    # float16 storage rounds every weight by ~5e-4 relative: same durations here, samples within 1% of the peak.
    assert torch.equal(lengths16, lengths32)
    assert float((o16 - o32).abs().max()) <= 0.01 * float(o32.abs().max())


def test_load_rejects_foreign_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a generator export file"):
        infer.load_generator(path)


def test_export_command_line_and_synthesis_from_export(
    training_checkpoint: Path, config_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "cli.safetensors"
    done = subprocess.run(
        [sys.executable, "export.py", "-m", str(training_checkpoint), "-c", str(config_path), "-o", str(output)],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert output.stat().st_size * 3 <= training_checkpoint.stat().st_size

    from text.tiny_bert import build_tiny_bert

    bert_dir = tmp_path / "tiny-zh"
    build_tiny_bert(bert_dir, "ZH", seed=0)
    from_export = infer.load_synthesizer(output, bert_dirs={"ZH": bert_dir})
    from_checkpoint = infer.load_synthesizer(training_checkpoint, config_path, bert_dirs={"ZH": bert_dir})
    settings = {"sdp_ratio": 0.2, "noise_scale": 0.0, "noise_scale_w": 0.0, "seed": 0}  # seed: unused-BERT noise
    rate_a, audio_a = from_export.synthesize("你好，世界。", "spk3", "ZH", **settings)
    rate_b, audio_b = from_checkpoint.synthesize("你好，世界。", "spk3", "ZH", **settings)
    assert rate_a == rate_b == 22050
    assert audio_a.shape == audio_b.shape and audio_a.size > 0
    torch.testing.assert_close(torch.from_numpy(audio_a), torch.from_numpy(audio_b), atol=1e-4, rtol=1e-4)

    bad = subprocess.run(
        [sys.executable, "export.py", "-m", str(training_checkpoint), "-o", str(tmp_path / "x.safetensors")],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "config.json" in bad.stderr
