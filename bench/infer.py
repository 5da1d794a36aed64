"""Latency and speed of generator inference on CPU with the official model size: the reference-like torch path,
ours (torch, whole and streamed) and onnxruntime side by side in one run, at each of `--threads`.

    python bench/infer.py [--threads 1 2] [--sentence-seconds 3] [--sentences 10] [--repeats 3] [--profile]

Speech: a sentence of about `--sentence-seconds` of audio, and a paragraph of `--sentences` such sentences
(~30 s), spoken sentence by sentence as `Synthesizer.render` does; each variant runs `SynthesizerTrn.infer`
(text encoder, both duration predictors, flow, decoder) on the same weights, inputs and noise:

* `reference-like torch`: our modules with attention and decoder run the reference's way
  (bench/reference_like.py says exactly what differs); it has no streaming;
* `torch (ours)`: `infer.infer_waveform`, the whole sentence at once;
* `torch (ours, windows)`: streaming.py's path: durations and flow once per sentence, then the decoder on
  windows of `--chunk-frames` latent frames widened by its receptive field (the first sentence's windows start
  at a quarter of that and double, as in a stream);
* `onnxruntime`: the generator exported by `export.export_onnx`, run by onnx_infer.py with as many intra-op
  threads as torch; it streams sentence by sentence (its graph runs flow and decoder in one piece).

`first audio` is when a client that waits for the whole file gets its first sample (the whole run);
`streamed` is when a streaming client gets it (the first window, or the first sentence). RTF = compute time /
audio time. The variants are interleaved repeat by repeat, in alternating order, so machine load hits them alike.

The decoder alone, on the first sentence's latent: its FLOPs (counted by torch.utils.flop_counter), and the
GFLOP/s each backend achieves against two ceilings measured in the same run: an SGEMM (torch.mm of 2048²
matrices) in this process at the same thread count, and the cores' theoretical FP32 peak (vector width × FMA
units × clock, from /proc/cpuinfo; the assumptions are printed). `--profile` adds the decoder's time per layer
on one thread: every convolution timed alone with its GFLOP/s, the rest (activations, sums) as the remainder.

Not measured: the text front end and BERT. The BERT features are random tensors of the right shape and the
phone ids are random (with blanks), because neither the real BERT models nor a trained model are available
offline; an untrained duration predictor gives about one frame per id, so the length scale is calibrated once
to make a sentence about `--sentence-seconds` long.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import config as settings  # noqa: E402  (the repository root is put on the path just above)
import infer  # noqa: E402
import streaming  # noqa: E402
from bench.reference_like import reference_like  # noqa: E402
from models import build_generator  # noqa: E402
from synthesis_params import SynthesisParams  # noqa: E402

logger = logging.getLogger(__name__)

OFFICIAL_CONFIG_CANDIDATES = (
    REPO_ROOT / "configs" / "config.json",
    REPO_ROOT.parent / "shared" / "reference" / "official_config.json",
)
# Spoken Mandarin runs at roughly 4-5 characters a second, i.e. ~9 phones; with blanks ~19 ids per second.
IDS_PER_SECOND = 19
SCALES = {"sdp_ratio": 0.2, "noise_scale": 0.6, "noise_scale_w": 0.8}
SGEMM_SIZE = 2048
# FP32 lanes of the widest vector unit the flags announce.
VECTOR_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8), ("sse2", 4))
# /proc/cpuinfo cannot tell how many FMA units a core has: two per core on Intel server cores since Skylake-SP
# (AVX-512) and on client cores since Haswell (AVX2), the assumption printed with the figure.
FMA_UNITS = 2

REFERENCE, OURS, WINDOWS, ONNX = "reference-like torch", "torch (ours)", "torch (ours, windows)", "onnxruntime"


class Timing(NamedTuple):
    wall: float
    cpu: float
    audio: float
    streamed: float  # wall time until a streaming client has its first sample


@dataclass
class Speech:
    """One case: its sentences' generator inputs, spoken one after another."""

    name: str
    sentences: list[dict[str, Tensor]]


# --------------------------------------------------------------------------------------------------------------
# Inputs and runs


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


def _sentence(n_ids: int, n_vocab: int, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
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


class Clock:
    """Wall and process CPU time since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def timing(self, audio: float, streamed: float) -> Timing:
        return Timing(time.perf_counter() - self.wall, time.process_time() - self.cpu, audio, streamed)

    def since(self) -> float:
        return time.perf_counter() - self.wall


def _speak(net: Any, speech: Speech, rate: int, length_scale: float) -> tuple[Timing, Tensor]:
    """Each sentence whole, one after another; streamed = the first sentence (utterance-level streaming)."""
    torch.manual_seed(0)  # the same noise every run and variant, so every run makes the same number of frames
    clock = Clock()
    pieces, first = [], 0.0
    for inputs in speech.sentences:
        o, _ = infer.infer_waveform(net, **inputs, **SCALES, length_scale=length_scale)
        pieces.append(o[0, 0])
        first = first or clock.since()
    audio = torch.cat(pieces)
    return clock.timing(audio.numel() / rate, first), audio


def _speak_in_windows(
    net: Any, speech: Speech, model: Any, rate: int, length_scale: float, chunk_frames: int
) -> tuple[Timing, Tensor]:
    """As `_speak`, through streaming.py: per sentence durations and flow once, then the decoder in windows."""
    params = SynthesisParams.model_construct(**SCALES, length_scale=length_scale)  # the calibrated scale may
    overlap, hop = streaming.decoder_receptive_field(model), streaming.hop_of(model)  # lie outside the API's range
    torch.manual_seed(0)
    clock = Clock()
    pieces, first = [], 0.0
    for index, inputs in enumerate(speech.sentences):
        first_frames = streaming.first_window(chunk_frames) if index == 0 else None  # as streaming.speak_plan
        prepared = infer.PreparedText(
            *(inputs[name][0] for name in ("x", "tone", "language", "bert", "ja_bert", "en_bert"))
        )
        latent = streaming.utterance_latent(net, prepared, int(inputs["sid"][0]), params)
        for chunk in streaming.decode_in_windows(net.dec, latent.z, latent.g, chunk_frames, overlap, hop, first_frames):
            pieces.append(chunk)
            first = first or clock.since()
    audio = torch.cat(pieces)
    return clock.timing(audio.numel() / rate, first), audio


def _calibrate(net: Any, inputs: dict[str, Tensor], rate: int, seconds: float) -> float:
    # ceil() of the durations makes the length only roughly proportional to the scale: a few correction steps.
    length_scale, speech = 1.0, Speech("calibration", [inputs])
    for _ in range(4):
        timing, _ = _speak(net, speech, rate, length_scale)
        if abs(timing.audio - seconds) < 0.05 * seconds:
            break
        length_scale *= seconds / timing.audio
    return length_scale


def _export_onnx(config: dict, state: dict[str, Tensor], folder: Path) -> Path:
    import export

    config_path, checkpoint, output = folder / "config.json", folder / "G_0.pth", folder / "voice.onnx"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    torch.save({"model": state}, checkpoint)  # as training writes it (weight norm not folded)
    start = time.perf_counter()
    result = export.export_onnx(checkpoint, output, config_path)
    logger.info("ONNX export: %.1f MB in %.0f s", result.bytes_written / 1e6, time.perf_counter() - start)
    return output


def _export_decoder_onnx(decoder: torch.nn.Module, z: Tensor, g: Tensor, path: Path) -> Path:
    """The decoder alone (weight norm folded) as an ONNX graph with a free number of frames."""
    import export

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's (see export.py)
        torch.onnx.export(
            decoder,
            (z, g),
            str(path),
            input_names=["z", "g"],
            output_names=["waveform"],
            dynamic_axes={"z": {2: "frames"}, "waveform": {2: "samples"}},
            opset_version=export.ONNX_OPSET,
            dynamo=False,
        )
    return path


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------------------------
# Ceilings


def sgemm_gflops(threads: int, repeats: int = 3) -> float:
    """Best of `repeats` torch.mm of two 2048² float32 matrices at `threads` threads, in GFLOP/s."""
    with _threads(threads):
        a, b = torch.randn(SGEMM_SIZE, SGEMM_SIZE), torch.randn(SGEMM_SIZE, SGEMM_SIZE)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * SGEMM_SIZE**3 / best / 1e9


def core_peak(cpuinfo: str) -> tuple[float, str]:
    """One core's theoretical FP32 peak in GFLOP/s (lanes × FMA units × 2 × clock) and the assumption, from the
    text of /proc/cpuinfo."""
    flags = set(re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE).group(1).split())
    name, lanes = next(((flag, lanes) for flag, lanes in VECTOR_LANES if flag in flags), ("scalar", 1))
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE).group(1))
    peak = lanes * FMA_UNITS * 2 * mhz / 1e3
    assumption = (
        f"{name}: {lanes} FP32 lanes × {FMA_UNITS} FMA units (assumed) × 2 FLOP × {mhz / 1e3:.2f} GHz "
        "(cpu MHz of /proc/cpuinfo: the clock the kernel reports, turbo unknown)"
    )
    return peak, assumption


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count inside the block."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def decoder_flops(decoder: torch.nn.Module, z: Tensor, g: Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        decoder(z, g=g)
    return counter.get_total_flops()


# --------------------------------------------------------------------------------------------------------------
# The per-layer profile


def _decoder_convs(decoder: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    """(label, conv) of every convolution the decoder runs, in order."""
    yield "conv_pre", decoder.conv_pre
    for stage, up in enumerate(decoder.ups):
        yield f"stage {stage} upsampling", up
        for index in range(decoder.num_kernels):
            block = decoder.resblocks[stage * decoder.num_kernels + index]
            layers = [*block.convs1, *block.convs2] if hasattr(block, "convs1") else list(block.convs)
            for conv in layers:
                yield f"stage {stage} resblock k={conv.kernel_size[0]}", conv
    yield "conv_post", decoder.conv_post


def profile_decoder(decoder: Any, z: Tensor, g: Tensor, repeats: int) -> list[tuple[str, int, float, int]]:
    """(label, convolutions, seconds, FLOPs) per layer group, each convolution run alone on rows input of the
    shape it meets in the decoder (captured by running the decoder once), on the current thread count; the
    fastest of `repeats` runs (the least disturbed by other processes)."""
    from torch.utils.flop_counter import FlopCounterMode

    import modules

    shapes: dict[int, torch.Size] = {}
    original = modules.apply_conv

    def recording(conv: Any, x: Tensor) -> Tensor:
        shapes[id(conv)] = x.shape
        return original(conv, x)

    modules.apply_conv = recording  # the bench's own process: captured once, restored at once
    try:
        with torch.no_grad():
            decoder(z, g=g)
    finally:
        modules.apply_conv = original
    groups: dict[str, list] = {}
    with torch.no_grad():
        for label, conv in _decoder_convs(decoder):
            x = modules.to_rows(torch.randn(shapes[id(conv)][0], shapes[id(conv)][1], shapes[id(conv)][-1]))
            with FlopCounterMode(display=False) as counter:
                modules.apply_conv(conv, x)
            seconds = min(_timed(lambda c=conv, x=x: modules.apply_conv(c, x)) for _ in range(repeats))
            entry = groups.setdefault(label, [0, 0.0, 0])
            entry[0] += 1
            entry[1] += seconds
            entry[2] += counter.get_total_flops()
    return [(label, count, seconds, flops) for label, (count, seconds, flops) in groups.items()]


# --------------------------------------------------------------------------------------------------------------
# The run


def _interleaved(variants: dict[str, Callable[[], tuple[Timing, Tensor]]], repeats: int) -> dict[str, list[Timing]]:
    timings: dict[str, list[Timing]] = {name: [] for name in variants}
    for repeat in range(repeats):
        # Alternate the order (ABC, CBA, ...) so that whatever a run leaves behind (caches, allocator, frequency)
        # does not favour one variant.
        order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in order:
            timings[name].append(variants[name]()[0])
    return timings


def _median(runs: list[Timing], field: Callable[[Timing], float]) -> float:
    return statistics.median(field(run) for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="model config (default: configs/config.json, else the kit's)")
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch and onnxruntime threads")
    parser.add_argument("--sentence-seconds", type=float, default=3.0, help="audio length of one sentence")
    parser.add_argument("--sentences", type=int, default=10, help="sentences in the paragraph")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the sentence (median)")
    parser.add_argument("--paragraph-repeats", type=int, default=1, help="runs of the paragraph (median)")
    parser.add_argument("--no-onnx", action="store_true", help="time the torch variants only")
    parser.add_argument("--chunk-frames", type=int, default=streaming.DEFAULT_CHUNK_FRAMES)
    parser.add_argument("--profile", action="store_true", help="the decoder's time per layer on one thread")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_before = os.getloadavg()
    torch.manual_seed(1234)

    config_path = _find_config(args.config)
    config = _config_with_speakers(config_path, args.speakers)
    model = settings.as_model_config(config).model
    rate = config["data"]["sampling_rate"]
    net = build_generator(config, for_training=False).eval()
    checkpoint_state = {key: value.clone() for key, value in net.state_dict().items()}
    infer.fold_weight_norm(net)
    n_params = sum(p.numel() for p in net.parameters())
    n_vocab = net.enc_p.emb.num_embeddings
    n_ids = max(int(args.sentence_seconds * IDS_PER_SECOND), 3)
    sentences = [_sentence(n_ids, n_vocab, seed) for seed in range(args.sentences)]
    cases = [Speech("sentence", sentences[:1]), Speech("paragraph", sentences)]
    with _threads(max(args.threads)):
        length_scale = _calibrate(net, sentences[0], rate, args.sentence_seconds)
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    peak, assumption = core_peak(cpuinfo)

    # The first sentence's latent: what the decoder measurements run on.
    params = SynthesisParams.model_construct(**SCALES, length_scale=length_scale)
    prepared = infer.PreparedText(
        *(sentences[0][k][0] for k in ("x", "tone", "language", "bert", "ja_bert", "en_bert"))
    )
    latent = streaming.utterance_latent(net, prepared, 0, params)
    z, g = latent.z, latent.g
    flops = decoder_flops(net.dec, z, g)
    decoder_audio = z.shape[-1] * streaming.hop_of(model) / rate

    speech_rows: list[tuple[int, str, str, float, float, float, float | None]] = []
    decoder_rows: list[tuple[int, str, float]] = []
    ceilings: dict[int, float] = {}
    differences: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = None if args.no_onnx else _export_onnx(config, checkpoint_state, Path(folder))
        decoder_path = None if args.no_onnx else _export_decoder_onnx(net.dec, z, g, Path(folder) / "decoder.onnx")
        for threads in args.threads:
            logger.info("%d thread(s)", threads)
            with _threads(threads):
                runners: dict[str, Any] = {REFERENCE: net, OURS: net, WINDOWS: net}
                if onnx_path is not None:
                    import onnx_infer

                    runners[ONNX] = onnx_infer.OnnxGenerator(onnx_path, threads=threads)
                for case in cases:
                    variants = {
                        name: _variant(name, runner, case, model, rate, length_scale, args.chunk_frames)
                        for name, runner in runners.items()
                    }
                    outputs = {name: variant()[1] for name, variant in variants.items()} if case is cases[0] else {}
                    for name, output in outputs.items():  # warm-up, and the waveforms to compare
                        if output.shape == outputs[OURS].shape:
                            differences[name] = float((output - outputs[OURS]).abs().max())
                    repeats = args.repeats if case is cases[0] else args.paragraph_repeats
                    for name, runs in _interleaved(variants, repeats).items():
                        streamed = None if name == REFERENCE else _median(runs, lambda t: t.streamed)
                        speech_rows.append(
                            (
                                threads,
                                case.name,
                                name,
                                _median(runs, lambda t: t.audio),
                                _median(runs, lambda t: t.wall),
                                _median(runs, lambda t: t.wall / t.audio),
                                streamed,
                            )
                        )
                decoder_rows.extend(_decoder_rates(net, z, g, flops, decoder_path, threads, args.repeats))
            ceilings[threads] = sgemm_gflops(threads)
        profile = None
        if args.profile:
            with _threads(1):
                profile = profile_decoder(net.dec, z, g, args.repeats)
    load_after = os.getloadavg()

    print(
        f"config {config_path} ({n_params / 1e6:.1f} M generator parameters, {rate} Hz), length scale "
        f"{length_scale:.2f}, {n_ids} ids a sentence, random weights and BERT features (front end and BERT not "
        f"included); sentence: median of {args.repeats}, paragraph of {args.sentences} sentences: median of "
        f"{args.paragraph_repeats}; decoder windows of {args.chunk_frames} frames "
        f"(+{streaming.decoder_receptive_field(model)} a side)"
    )
    print(f"load average before {_load(load_before)}, after {_load(load_after)} ({os.cpu_count()} CPUs)")
    print(f"max |waveform − ours| on the sentence: {', '.join(f'{n} {d:.2g}' for n, d in differences.items())}")
    print()
    print(
        f"{'threads':>7} {'speech':<9} {'variant':<22} {'audio s':>7} {'first audio s':>13} {'streamed s':>10} {'RTF':>6}"
    )
    for threads, case, name, audio, wall, rtf, streamed in speech_rows:
        whole = "—" if name == WINDOWS else f"{wall:.2f}"
        first = "—" if streamed is None else f"{streamed:.2f}"
        print(f"{threads:>7} {case:<9} {name:<22} {audio:7.2f} {whole:>13} {first:>10} {rtf:6.3f}")
    print()
    print(
        f"decoder: {flops / 1e9:.1f} GFLOP for {decoder_audio:.2f} s of audio "
        f"({flops / 1e9 / decoder_audio:.1f} GFLOP per second of audio)"
    )
    print(f"theoretical FP32 peak of one core: {peak:.0f} GFLOP/s ({assumption})")
    print(f"{'threads':>7} {'backend':<32} {'GFLOP/s':>8} {'SGEMM GFLOP/s':>13} {'of SGEMM':>8} {'of peak':>8}")
    for threads, name, gflops in decoder_rows:
        ceiling = ceilings[threads]
        print(
            f"{threads:>7} {name:<32} {gflops:8.1f} {ceiling:13.1f} {gflops / ceiling:8.0%} "
            f"{gflops / (peak * threads):8.0%}"
        )
    if profile is not None:
        _print_profile(profile, net.dec, z, g, args.repeats, ceilings.get(1) or sgemm_gflops(1))
    return 0


def _variant(
    name: str, runner: Any, case: Speech, model: Any, rate: int, length_scale: float, chunk_frames: int
) -> Callable[[], tuple[Timing, Tensor]]:
    def run() -> tuple[Timing, Tensor]:
        if name == WINDOWS:
            return _speak_in_windows(runner, case, model, rate, length_scale, chunk_frames)
        with reference_like() if name == REFERENCE else nullcontext():
            return _speak(runner, case, rate, length_scale)

    return run


def _decoder_rates(
    net: Any, z: Tensor, g: Tensor, flops: int, decoder_path: Path | None, threads: int, repeats: int
) -> list[tuple[int, str, float]]:
    """(threads, backend, GFLOP/s) of the decoder on latent z, median of `repeats` after a warm-up."""
    runs: dict[str, Callable[[], Any]] = {}
    with torch.no_grad():
        runs["torch (ours: time-major rows)"] = lambda: net.dec(z, g=g)

        def channel_major() -> Any:
            with reference_like():
                return net.dec(z, g=g)

        runs["torch (reference-like: [b, c, t])"] = channel_major
        if decoder_path is not None:
            session = _onnx_session(decoder_path, threads)
            feed = {"z": z.numpy(), "g": g.numpy()}
            runs["onnxruntime"] = lambda: session.run(None, feed)
            expected = net.dec(z, g=g).numpy()
            logger.info("decoder ONNX vs torch: %.2g", float(np.abs(session.run(None, feed)[0] - expected).max()))
        rows = []
        for name, run in runs.items():
            run()
            seconds = statistics.median(_timed(run) for _ in range(repeats))
            rows.append((threads, name, flops / seconds / 1e9))
    return rows


def _print_profile(profile: list, decoder: Any, z: Tensor, g: Tensor, repeats: int, sgemm: float) -> None:
    with _threads(1), torch.no_grad():
        decoder(z, g=g)
        total = min(_timed(lambda: decoder(z, g=g)) for _ in range(repeats))
    convs = sum(seconds for _, _, seconds, _ in profile)
    print()
    print(f"decoder per layer, 1 thread, {total:.3f} s a call (fastest of {repeats}; each convolution timed alone):")
    print(f"{'layer':<28} {'convs':>5} {'seconds':>8} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'of SGEMM':>8}")
    for label, count, seconds, flops in profile:
        print(
            f"{label:<28} {count:>5} {seconds:8.3f} {seconds / total:6.1%} {flops / 1e9:7.2f} "
            f"{flops / seconds / 1e9:8.1f} {flops / seconds / 1e9 / sgemm:8.0%}"
        )
    print(f"{'rest (activations, sums)':<28} {'':>5} {total - convs:8.3f} {(total - convs) / total:6.1%}")


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


if __name__ == "__main__":
    sys.exit(main())
