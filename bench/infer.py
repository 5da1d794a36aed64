"""Real-time factor of generator inference on CPU, with the official model size: ours (torch), a
reference-like torch variant and onnxruntime, side by side in one run.

    python bench/infer.py [--config configs/config.json] [--seconds 1.6] [--repeats 5] [--threads 1] [--no-onnx]

What is measured: `SynthesizerTrn.infer` (text encoder, both duration predictors, flow, decoder) for one
utterance of about `--seconds` of audio, built from the official config (random weights, weight norm folded as
infer.py does), run three ways on the same weights, inputs and noise:

* `torch (ours)`: `infer.infer_waveform` on our generator;
* `torch (reference-like)`: the same net with attention and decoder run the reference's way
  (bench/reference_like.py says exactly what differs);
* `torch (ours, streamed)`: the same through streaming.py (durations and flow once, then the decoder on
  windows of `--chunk-frames` widened by its receptive field); `first s` is the time until its first chunk
  exists (for the others, the whole run);
* `onnxruntime`: the generator exported by `export.export_onnx` (to a temporary folder) and run by
  onnx_infer.py, with as many intra-op threads as torch.

The variants are interleaved repeat by repeat, in alternating order, so machine load hits them alike.
RTF = compute time / audio time, from wall-clock time and from this process's CPU time (less disturbed by other
processes on a shared machine; with one thread it is the compute itself). What is not measured: the text front end and BERT. The BERT
features are random tensors of the right shape [1, 1024, T] and the phone ids are random (with blanks), because
neither the real BERT models nor a trained model are available offline. An untrained duration predictor gives
about one frame per id, so the length scale is calibrated once to make the output about `--seconds` long.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import config as settings  # noqa: E402  (the repository root is put on the path just above)
import infer  # noqa: E402
from bench.reference_like import reference_like  # noqa: E402
from models import build_generator  # noqa: E402

logger = logging.getLogger(__name__)

OFFICIAL_CONFIG_CANDIDATES = (
    REPO_ROOT / "configs" / "config.json",
    REPO_ROOT.parent / "shared" / "reference" / "official_config.json",
)
# Spoken Mandarin runs at roughly 4-5 characters a second, i.e. ~9 phones; with blanks ~19 ids per second.
IDS_PER_SECOND = 19
SCALES = {"sdp_ratio": 0.2, "noise_scale": 0.6, "noise_scale_w": 0.8}


def _find_config(path: str | None) -> Path:
    if path:
        return Path(path)
    for candidate in OFFICIAL_CONFIG_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no official config found; tried {[str(c) for c in OFFICIAL_CONFIG_CANDIDATES]}")


def _config_with_speakers(path: Path, n_speakers: int) -> dict:
    config = json.loads(path.read_text(encoding="utf-8"))
    config["data"]["n_speakers"] = n_speakers
    config["data"]["spk2id"] = {f"spk{i}": i for i in range(n_speakers)}
    return config


def _inputs(n_ids: int, n_vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1, n_vocab, (1, n_ids), generator=generator)
    x[:, ::2] = 0
    zeros = torch.zeros(1, infer.BERT_FEATURE_DIM, n_ids)
    return {
        "x": x,
        "x_lengths": torch.tensor([n_ids]),
        "sid": torch.tensor([0]),
        "tone": torch.zeros(1, n_ids, dtype=torch.long),
        "language": torch.zeros(1, n_ids, dtype=torch.long),
        "bert": torch.randn(1, infer.BERT_FEATURE_DIM, n_ids, generator=generator),
        "ja_bert": zeros,
        "en_bert": zeros,
    }


class Timing(NamedTuple):
    wall: float
    cpu: float
    audio: float
    first: float  # wall time until the first audio sample exists (the whole run unless streamed)


def _run(net: Any, inputs: dict[str, torch.Tensor], sampling_rate: int, length_scale: float) -> tuple[Timing, Any]:
    torch.manual_seed(0)  # the same noise every run and variant, so every run makes the same number of frames
    wall, cpu = time.perf_counter(), time.process_time()
    o, _ = infer.infer_waveform(net, **inputs, **SCALES, length_scale=length_scale)
    elapsed = time.perf_counter() - wall
    return Timing(elapsed, time.process_time() - cpu, o.shape[-1] / sampling_rate, elapsed), o


def _run_streamed(
    net: Any, inputs: dict[str, torch.Tensor], config: Any, length_scale: float, chunk_frames: int
) -> tuple[Timing, Any]:
    """As `_run`, through streaming.py: durations and flow once, then the decoder window by window."""
    import streaming
    from synthesis_params import SynthesisParams

    prepared = infer.PreparedText(
        *(inputs[name][0] for name in ("x", "tone", "language", "bert", "ja_bert", "en_bert"))
    )
    # model_construct: the calibrated length scale of an untrained net may lie outside the API's range.
    params = SynthesisParams.model_construct(**SCALES, length_scale=length_scale)
    model, rate = config.model, config.data.sampling_rate
    torch.manual_seed(0)
    wall, cpu = time.perf_counter(), time.process_time()
    latent = streaming.utterance_latent(net, prepared, int(inputs["sid"][0]), params)
    windows = streaming.decode_in_windows(
        net.dec, latent.z, latent.g, chunk_frames, streaming.decoder_receptive_field(model), streaming.hop_of(model)
    )
    chunks = [next(windows)]
    first = time.perf_counter() - wall
    chunks.extend(windows)
    o = torch.cat(chunks).view(1, 1, -1)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, o.shape[-1] / rate, first), o


def _calibrate(net: Any, inputs: dict[str, torch.Tensor], sampling_rate: int, seconds: float) -> float:
    # ceil() of the durations makes the length only roughly proportional to the scale: a few correction steps.
    length_scale = 1.0
    for _ in range(4):
        timing, _ = _run(net, inputs, sampling_rate, length_scale)
        if abs(timing.audio - seconds) < 0.05 * seconds:
            break
        length_scale *= seconds / timing.audio
    return length_scale


def _export_onnx(config: dict, state: dict[str, torch.Tensor], folder: Path) -> Path:
    import export

    config_path, checkpoint, output = folder / "config.json", folder / "G_0.pth", folder / "voice.onnx"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    torch.save({"model": state}, checkpoint)  # as training writes it (weight norm not folded)
    start = time.perf_counter()
    result = export.export_onnx(checkpoint, output, config_path)
    logger.info("ONNX export: %.1f MB in %.0f s", result.bytes_written / 1e6, time.perf_counter() - start)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="model config (default: configs/config.json, else the kit's)")
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.6, help="target audio length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime CPU threads")
    parser.add_argument("--no-onnx", action="store_true", help="time the torch variants only")
    parser.add_argument("--chunk-frames", type=int, default=64, help="decoder window of the streamed variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)

    config_path = _find_config(args.config)
    config = _config_with_speakers(config_path, args.speakers)
    sampling_rate = config["data"]["sampling_rate"]
    net = build_generator(config, for_training=False)
    checkpoint_state = {key: value.clone() for key, value in net.state_dict().items()}
    infer.fold_weight_norm(net)
    n_params = sum(p.numel() for p in net.parameters())
    inputs = _inputs(max(int(args.seconds * IDS_PER_SECOND), 3), net.enc_p.emb.num_embeddings)

    with tempfile.TemporaryDirectory() as folder:
        variants: dict[str, Callable[[float], tuple[Timing, Any]]] = {
            "torch (ours)": lambda scale: _run(net, inputs, sampling_rate, scale),
        }

        def reference_run(scale: float) -> tuple[Timing, Any]:
            with reference_like():
                return _run(net, inputs, sampling_rate, scale)

        variants["torch (reference-like)"] = reference_run
        model_config = settings.as_model_config(config)
        variants["torch (ours, streamed)"] = lambda scale: _run_streamed(
            net, inputs, model_config, scale, args.chunk_frames
        )
        if not args.no_onnx:
            import onnx_infer

            runner = onnx_infer.OnnxGenerator(
                _export_onnx(config, checkpoint_state, Path(folder)), threads=args.threads
            )
            variants["onnxruntime"] = lambda scale: _run(runner, inputs, sampling_rate, scale)

        length_scale = _calibrate(net, inputs, sampling_rate, args.seconds)
        timings: dict[str, list[Timing]] = {name: [] for name in variants}
        outputs = {}
        for name, variant in variants.items():  # warm-up, and the waveforms to compare
            _, outputs[name] = variant(length_scale)
        for repeat in range(args.repeats):
            # Alternate the order (ABC, CBA, ...) so that whatever a run leaves behind (caches, allocator,
            # frequency) does not favour one variant.
            order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for name in order:
                timings[name].append(variants[name](length_scale)[0])

    print(
        f"config {config_path} ({n_params / 1e6:.1f} M generator parameters, {sampling_rate} Hz), "
        f"{args.threads} CPU thread(s), {inputs['x'].shape[1]} ids, length scale {length_scale:.2f}, "
        f"random weights and random BERT features (front end and BERT not included), median of {args.repeats}"
    )
    reference = outputs["torch (ours)"]
    print(f"{'variant':<24} {'audio s':>8} {'wall s':>8} {'first s':>8} {'RTF wall':>9} {'RTF cpu':>8}  max |o - ours|")
    for name, runs in timings.items():
        audio = statistics.mean(t.audio for t in runs)
        difference = float((outputs[name] - reference).abs().max()) if outputs[name].shape == reference.shape else -1
        print(
            f"{name:<24} {audio:8.2f} {statistics.median(t.wall for t in runs):8.2f} "
            f"{statistics.median(t.first for t in runs):8.2f} "
            f"{statistics.median(t.wall / t.audio for t in runs):9.3f} "
            f"{statistics.median(t.cpu / t.audio for t in runs):8.3f}  {difference:.2g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
