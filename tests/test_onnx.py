"""ONNX export (export.py --format onnx) and its onnxruntime runner (onnx_infer.py).

Parity: with the same inputs and the same fixed noise tensors, onnxruntime's waveform equals the torch
generator's within 1e-3 (max abs), on the kit's dev config with its golden weights and, without the kit, on a
tiny config of this file's own. Also: the runner stands in for the torch generator in `infer.load_synthesizer`,
a torch seed gives the same audio through either, and texts shorter than the attention window still match.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import torch

import config as settings
import export
import infer
import onnx_infer
from models import build_generator

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT_INPUTS = ("x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert", "en_bert")
PARITY_TOLERANCE = 1e-3
SCALES = {"noise_scale": 0.667, "noise_scale_w": 0.8, "length_scale": 1.1, "sdp_ratio": 0.4}
# A few thousand parameters: the official layout (transformer flow, ResBlock 1, speaker-conditioned encoder)
# at a size that exports in seconds.
TINY_MODEL = {
    "use_spk_conditioned_encoder": True,
    "use_noise_scaled_mas": True,
    "use_mel_posterior_encoder": False,
    "use_duration_discriminator": True,
    "inter_channels": 8,
    "hidden_channels": 8,
    "filter_channels": 16,
    "n_heads": 2,
    "n_layers": 3,
    "n_layers_trans_flow": 3,
    "n_flow_layer": 2,
    "kernel_size": 3,
    "p_dropout": 0.1,
    "resblock": "1",
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "upsample_rates": [4, 4],
    "upsample_initial_channel": 16,
    "upsample_kernel_sizes": [8, 8],
    "n_layers_q": 3,
    "use_spectral_norm": False,
    "gin_channels": 8,
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The suite shares 2 cores among several processes; one intra-op thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny_config() -> dict:
    official = json.loads((REPO_ROOT / "configs" / "config.json").read_text(encoding="utf-8"))
    official["model"] = dict(TINY_MODEL)
    official["data"].update(
        sampling_rate=16000,
        filter_length=64,
        hop_length=16,
        win_length=64,
        n_speakers=3,
        spk2id={"a": 0, "b": 1, "c": 2},
    )
    official["train"]["segment_size"] = 256
    return official


def _export(folder: Path, weights: dict[str, torch.Tensor], config: dict) -> tuple[Path, Path, Path]:
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    checkpoint = folder / "G_0.pth"
    torch.save({"model": weights, "iteration": 0, "optimizer": None, "learning_rate": 2e-4}, checkpoint)
    output = folder / "voice.onnx"
    result = export.export_onnx(checkpoint, output, config_path)
    assert result.path == output and output.is_file() and result.max_probe_difference <= PARITY_TOLERANCE
    return checkpoint, config_path, output


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    config = _tiny_config()
    torch.manual_seed(0)
    net = build_generator(config, for_training=False)
    return _export(tmp_path_factory.mktemp("tiny"), net.state_dict(), config)


@pytest.fixture(scope="module")
def tiny_runner(tiny_export: tuple[Path, Path, Path]) -> onnx_infer.OnnxGenerator:
    runner, _ = infer.load_generator(tiny_export[2])  # config from the file's metadata
    assert isinstance(runner, onnx_infer.OnnxGenerator)
    return runner


@pytest.fixture(scope="module")
def dev_runner(dev_export: tuple[Path, Path, Path]) -> onnx_infer.OnnxGenerator:
    return onnx_infer.OnnxGenerator(dev_export[2])


@pytest.fixture(scope="module")
def dev_export(tmp_path_factory: pytest.TempPathFactory, golden: dict, dev_config: dict) -> tuple[Path, Path, Path]:
    return _export(tmp_path_factory.mktemp("dev"), golden["weights_g"], dev_config)


def _random_text(n_vocab: int, lengths: list[int], n_speakers: int, seed: int) -> dict[str, torch.Tensor]:
    """A padded batch of random ids and BERT features, as `infer.Synthesizer` would prepare them."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), max(lengths)
    mask = (torch.arange(length).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    features = torch.randn(batch, infer.BERT_FEATURE_DIM, length, generator=generator) * mask.unsqueeze(1)
    return {
        "x": torch.randint(1, n_vocab, (batch, length), generator=generator) * mask,
        "x_lengths": torch.tensor(lengths),
        "sid": torch.arange(batch) % n_speakers,
        "tone": torch.randint(0, 3, (batch, length), generator=generator) * mask,
        "language": torch.zeros(batch, length, dtype=torch.long),
        "bert": features,
        "ja_bert": torch.zeros_like(features),
        "en_bert": features.flip(1),
    }


def _parity(net: torch.nn.Module, runner: onnx_infer.OnnxGenerator, text: dict[str, torch.Tensor], seed: int) -> float:
    """Max abs waveform difference of torch vs onnxruntime on `text`, both fed the same fixed noise tensors."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = text["x"].shape
    sdp_noise = torch.randn(batch, 2, length, generator=generator)
    with torch.no_grad():
        g = net.emb_g(text["sid"]).unsqueeze(-1)
        prior = net.infer_frame_prior(
            *(text[name] for name in ("x", "x_lengths")),
            g,
            *(text[name] for name in ("tone", "language", "bert", "ja_bert", "en_bert")),
            length_scale=SCALES["length_scale"],
            noise_scale_w=SCALES["noise_scale_w"],
            sdp_ratio=SCALES["sdp_ratio"],
            sdp_noise=sdp_noise,
        )
        prior_noise = torch.randn(prior.m_p.shape, generator=generator)
        expected, _, _ = net.infer_decode(
            prior.m_p, prior.logs_p, prior.y_mask, g, noise_scale=SCALES["noise_scale"], prior_noise=prior_noise
        )
    o, attn, y_mask, latents = runner.infer(**text, **SCALES, sdp_noise=sdp_noise, prior_noise=prior_noise)
    assert attn is None and latents is None
    torch.testing.assert_close(y_mask, prior.y_mask, rtol=0, atol=0)
    assert o.shape == expected.shape
    return float((o - expected).abs().max())


def test_tiny_export_file_carries_its_config(tiny_export: tuple[Path, Path, Path]) -> None:
    _, config_path, onnx_path = tiny_export
    model = onnx.load(str(onnx_path))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["format"] == onnx_infer.ONNX_FORMAT
    stored = settings.model_config_from_json(metadata["config"])
    assert stored.to_dict() == settings.load_model_config(config_path).to_dict()
    assert [value.name for value in model.graph.input] == list(onnx_infer.INPUT_NAMES)
    assert [value.name for value in model.graph.output] == list(onnx_infer.OUTPUT_NAMES)
    text_axes = [dim.dim_param for dim in model.graph.input[0].type.tensor_type.shape.dim]
    assert text_axes == ["batch", "text"]  # dynamic text length


@pytest.mark.parametrize("lengths", [[23], [3], [17, 9]], ids=["long", "shorter-than-window", "padded-batch"])
def test_tiny_onnx_matches_torch_with_fixed_noise(
    tiny_export: tuple[Path, Path, Path], tiny_runner: onnx_infer.OnnxGenerator, lengths: list[int]
) -> None:
    checkpoint, config_path, _ = tiny_export
    net, config = infer.load_generator(checkpoint, config_path)
    runner = tiny_runner
    assert runner.config.to_dict() == config.to_dict()
    text = _random_text(net.enc_p.emb.num_embeddings, lengths, config.data.n_speakers, seed=len(lengths))
    assert _parity(net, runner, text, seed=7) <= PARITY_TOLERANCE


def test_tiny_onnx_synthesizer_follows_torch_seed(tiny_export: tuple[Path, Path, Path]) -> None:
    """`load_synthesizer(.onnx)` serves like the checkpoint; the runner draws its noise as torch does."""
    checkpoint, config_path, onnx_path = tiny_export
    torch_synth = infer.load_synthesizer(checkpoint, config_path)
    onnx_synth = infer.load_synthesizer(onnx_path)
    assert onnx_synth.speakers == torch_synth.speakers and onnx_synth.sampling_rate == 16000
    text = _random_text(torch_synth.net_g.enc_p.emb.num_embeddings, [15], 3, seed=3)
    waveforms = []
    for synth in (torch_synth, onnx_synth):
        torch.manual_seed(11)
        o, lengths = infer.infer_waveform(synth.net_g, **text, **SCALES)
        waveforms.append(o)
    assert waveforms[0].shape == waveforms[1].shape
    assert float((waveforms[0] - waveforms[1]).abs().max()) <= PARITY_TOLERANCE
    assert int(lengths[0]) * 16 == waveforms[1].shape[-1]


def test_runner_rejects_what_the_graph_cannot_do(
    tiny_export: tuple[Path, Path, Path], tiny_runner: onnx_infer.OnnxGenerator, tmp_path: Path
) -> None:
    onnx_path, runner = tiny_export[2], tiny_runner
    text = _random_text(runner.n_vocab, [9], 3, seed=0)
    with pytest.raises(ValueError, match="max_len"):
        runner.infer(**text, max_len=3)
    with pytest.raises(ValueError, match="prior_noise has shape"):
        runner.infer(**text, prior_noise=torch.zeros(1, 8, 1))
    not_ours = tmp_path / "other.onnx"
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    onnx.save(model, str(not_ours))
    with pytest.raises(ValueError, match="not a generator exported by export.py"):
        infer.load_generator(not_ours)


def test_export_cli_checks_format_and_suffix(
    tiny_export: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint, config_path, _ = tiny_export
    output = tmp_path / "voice.safetensors"
    arguments = ["-m", str(checkpoint), "-c", str(config_path), "--format", "onnx", "-o", str(output)]
    assert export.main(arguments) == 2
    assert "must end in .onnx" in caplog.text and not output.exists()
    arguments = ["-m", str(checkpoint), "-c", str(config_path), "--dtype", "float16", "-o", str(tmp_path / "v.onnx")]
    assert export.main(arguments) == 2
    assert "safetensors exports only" in caplog.text


def test_dev_onnx_matches_torch_with_fixed_noise(
    dev_export: tuple[Path, Path, Path], dev_runner: onnx_infer.OnnxGenerator, golden: dict
) -> None:
    checkpoint, config_path, _ = dev_export
    net, _ = infer.load_generator(checkpoint, config_path)
    runner = dev_runner
    text = {name: golden["inputs"][name] for name in TEXT_INPUTS}  # a padded batch of two
    assert _parity(net, runner, text, seed=5) <= PARITY_TOLERANCE


@pytest.mark.parametrize("case", ["sdp0", "sdp1", "ls13"])
def test_dev_onnx_reproduces_reference_infer(dev_runner: onnx_infer.OnnxGenerator, golden: dict, case: str) -> None:
    """The golden `infer` calls (noise scales 0) give the reference's waveform through onnxruntime too."""
    runner = dev_runner
    expected = golden["infer"][case]
    text = {name: golden["inputs"][name] for name in TEXT_INPUTS}
    o, _, y_mask, _ = runner.infer(**text, **expected["params"])
    torch.testing.assert_close(y_mask, expected["y_mask"], rtol=0, atol=0)
    assert float((o - expected["o"]).abs().max()) <= PARITY_TOLERANCE


def test_tiny_onnx_speaks_text_like_its_checkpoint(tiny_export: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Text in, audio out through `Synthesizer.synthesize` (front end, BERT, sentences): same seed, same audio."""
    from text.tiny_bert import build_tiny_bert

    checkpoint, config_path, onnx_path = tiny_export
    bert_dir = tmp_path / "tiny-zh"
    build_tiny_bert(bert_dir, "ZH", seed=0)
    results = [
        infer.load_synthesizer(path, config, bert_dirs={"ZH": bert_dir}).synthesize(
            "你好。今天天气很好！", "b", "ZH", seed=5
        )
        for path, config in ((checkpoint, config_path), (onnx_path, None))
    ]
    (rate_torch, audio_torch), (rate_onnx, audio_onnx) = results
    assert rate_torch == rate_onnx == 16000 and audio_torch.shape == audio_onnx.shape and audio_onnx.size > 0
    assert float(abs(audio_torch - audio_onnx).max()) <= PARITY_TOLERANCE
