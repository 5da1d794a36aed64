"""Write a generator-only inference file from a training checkpoint: safetensors (torch) or ONNX.

    python export.py --model Data/models/G_8000.pth --config Data/config.json -o Data/models/G_8000.safetensors
    python export.py --model Data/models/G_8000.pth --config Data/config.json -o Data/models/G_8000.onnx

A training checkpoint holds the generator, its AdamW moments (twice the model's size) and the parts of the
generator only training uses. The export keeps just what `SynthesizerTrn.infer` runs, folds weight norm into
plain weights (unless `--keep-weight-norm`), and stores the model config in the safetensors metadata, so
`infer.py` / `server.py` need nothing but this one file. Before writing, the exported weights are loaded into a
fresh generator and checked to give the checkpoint's waveform on a probe input.

`--format onnx` (the default for a `.onnx` output) writes the whole of `SynthesizerTrn.infer` as ONE ONNX graph
(see onnx_infer.py for its inputs and outputs) with the config in the model's `metadata_props`. One graph rather
than the reference's six (text encoder, speaker embedding, two duration predictors, flow, decoder): a single
file to ship and keep consistent, and the length regulation between them stays inside the graph instead of
being re-written in numpy by every runner; onnx_infer.py cuts it at the frame-prior tensors at load time
because the frame noise can only be drawn once the durations are known. Tracing exporter (TorchScript,
opset 17): the frame count depends on the predicted durations, which the tracer records as ordinary tensor
ops, while the torch.export-based exporter needs every data-dependent size declared. The ONNX file is run by
onnxruntime and checked against the torch generator (same noise) on a probe of another text length than the
traced one before it is moved into place.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

import atomic_io
import infer
from config import ModelConfig

logger = logging.getLogger(__name__)

EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx"}
ONNX_OPSET = 17
# The ONNX export must reproduce the torch generator to this (max abs over the waveform), or it is not written.
ONNX_TOLERANCE = 1e-3


class ExportResult(NamedTuple):
    path: Path
    num_tensors: int
    num_dropped: int
    bytes_written: int
    max_probe_difference: float


def _probe_inputs(config: ModelConfig, n_vocab: int, length: int = 13) -> dict[str, Tensor]:
    """A small fixed batch that runs every inference path (both duration predictors, flow, decoder)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1, n_vocab, (1, length), generator=generator)
    x[:, ::2] = 0  # blanks, as add_blank makes them
    n_speakers = max(config.data.n_speakers, 1)
    return {
        "x": x,
        "x_lengths": torch.tensor([length]),
        "sid": torch.tensor([n_speakers - 1]),
        "tone": torch.zeros(1, length, dtype=torch.long),
        "language": torch.zeros(1, length, dtype=torch.long),
        "bert": torch.randn(1, infer.BERT_FEATURE_DIM, length, generator=generator),
        "ja_bert": torch.randn(1, infer.BERT_FEATURE_DIM, length, generator=generator),
        "en_bert": torch.randn(1, infer.BERT_FEATURE_DIM, length, generator=generator),
    }


def _probe(net: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    # Noise scales 0 make the output deterministic; sdp_ratio 0.5 mixes in both duration predictors.
    waveform, _ = infer.infer_waveform(net, **inputs, sdp_ratio=0.5, noise_scale=0.0, noise_scale_w=0.0)
    return waveform


def inference_state_dict(net: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """The net's state_dict without the parts inference never runs, as contiguous tensors of `dtype`."""
    return {
        key: value.detach().to(dtype=dtype if value.is_floating_point() else value.dtype).contiguous().clone()
        for key, value in net.state_dict().items()
        if not infer.is_inference_unused(key)
    }


def export_generator(
    model_path: str | Path,
    output_path: str | Path,
    config_path: str | Path | None = None,
    *,
    fold_weights: bool = True,
    dtype: str = "float32",
) -> ExportResult:
    """Export the generator of `model_path` (a `G_*.pth` checkpoint, or an export file) to `output_path`."""
    from safetensors.torch import save_file

    from models import build_generator

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    net, config = infer.load_generator(model_path, config_path, device="cpu", fold_weights=fold_weights)
    n_vocab = int(net.enc_p.emb.num_embeddings)
    state = inference_state_dict(net, EXPORT_DTYPES[dtype])
    num_dropped = len(net.state_dict()) - len(state)

    # Load the export the way infer.py will and compare waveforms before anything is written.
    check = build_generator(config, for_training=False, n_vocab=n_vocab)
    if fold_weights:
        infer.fold_weight_norm(check)
    infer.load_inference_state(check, {key: value.float() for key, value in state.items()})
    check.eval()
    inputs = _probe_inputs(config, n_vocab)
    expected, actual = _probe(net, inputs), _probe(check, inputs)
    if expected.shape != actual.shape or not torch.isfinite(actual).all():
        raise RuntimeError(
            "export check failed: the exported weights give a waveform of another length or non-finite samples, "
            "so inference uses a weight the exporter drops"
        )
    difference = float((expected - actual).abs().max()) if expected.numel() else 0.0
    if dtype == "float32" and difference > 1e-5:
        raise RuntimeError(f"export check failed: waveforms differ by up to {difference:.3g}")

    metadata = {
        "format": infer.EXPORT_FORMAT,
        # The resolved config (every setting spelled out), read back by config.model_config_from_json.
        "config": json.dumps(config.to_dict(), ensure_ascii=False),
        "n_vocab": str(n_vocab),
        "weight_norm": "folded" if fold_weights else "kept",
        "dtype": dtype,
        "source": Path(model_path).name,
    }
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_io.atomic_path(output, suffix=".safetensors") as temporary:
        save_file(state, temporary, metadata=metadata)
    result = ExportResult(output, len(state), num_dropped, output.stat().st_size, difference)
    logger.info(
        "wrote %s: %d tensors (%d training-only dropped), %.1f MB, probe difference %.2g",
        output,
        result.num_tensors,
        result.num_dropped,
        result.bytes_written / 1e6,
        difference,
    )
    return result


class OnnxExportResult(NamedTuple):
    path: Path
    bytes_written: int
    max_probe_difference: float


class InferenceGraph(nn.Module):
    """`SynthesizerTrn.infer` with explicit noise and tensor scales: the module the ONNX graph is traced from."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        x: Tensor,
        x_lengths: Tensor,
        sid: Tensor,
        tone: Tensor,
        language: Tensor,
        bert: Tensor,
        ja_bert: Tensor,
        en_bert: Tensor,
        sdp_noise: Tensor,
        prior_noise: Tensor,
        noise_scale: Tensor,
        noise_scale_w: Tensor,
        length_scale: Tensor,
        sdp_ratio: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        g = self.net.emb_g(sid).unsqueeze(-1)  # [b, gin, 1]
        prior = self.net.infer_frame_prior(
            x,
            x_lengths,
            g,
            tone,
            language,
            bert,
            ja_bert,
            en_bert,
            length_scale=length_scale,
            noise_scale_w=noise_scale_w,
            sdp_ratio=sdp_ratio,
            sdp_noise=sdp_noise,
        )
        o, _z, _z_p = self.net.infer_decode(
            prior.m_p, prior.logs_p, prior.y_mask, g, noise_scale=noise_scale, prior_noise=prior_noise
        )
        return o, prior.m_p, prior.logs_p, prior.y_mask, g


def _onnx_trace_inputs(net: nn.Module, config: ModelConfig, n_vocab: int, length: int) -> tuple[Tensor, ...]:
    """Example inputs in `onnx_infer.INPUT_NAMES` order; the frame noise is sized by running the durations."""
    import onnx_infer

    text = _probe_inputs(config, n_vocab, length)
    generator = torch.Generator().manual_seed(1)
    sdp_noise = torch.randn(1, 2, length, generator=generator)
    scales = {"noise_scale": 0.667, "noise_scale_w": 0.8, "length_scale": 1.0, "sdp_ratio": 0.5}
    with torch.no_grad():
        g = net.emb_g(text["sid"]).unsqueeze(-1)
        prior = net.infer_frame_prior(
            *(text[name] for name in ("x", "x_lengths")),
            g,
            *(text[name] for name in ("tone", "language", "bert", "ja_bert", "en_bert")),
            length_scale=scales["length_scale"],
            noise_scale_w=scales["noise_scale_w"],
            sdp_ratio=scales["sdp_ratio"],
            sdp_noise=sdp_noise,
        )
    prior_noise = torch.randn(prior.m_p.shape, generator=generator)
    values = {**text, "sdp_noise": sdp_noise, "prior_noise": prior_noise}
    values.update({name: torch.tensor(value) for name, value in scales.items()})
    return tuple(values[name] for name in onnx_infer.INPUT_NAMES)


def _onnx_dynamic_axes() -> dict[str, dict[int, str]]:
    text_axis = {name: {0: "batch", 1: "text"} for name in ("x", "tone", "language")}
    feature_axis = {name: {0: "batch", 2: "text"} for name in ("bert", "ja_bert", "en_bert", "sdp_noise")}
    frame_axis = {name: {0: "batch", 2: "frames"} for name in ("prior_noise", "m_p", "logs_p", "y_mask")}
    return {
        **text_axis,
        **feature_axis,
        **frame_axis,
        "x_lengths": {0: "batch"},
        "sid": {0: "batch"},
        "g": {0: "batch"},
        "waveform": {0: "batch", 2: "samples"},
    }


def _torchscript_exporter() -> dict[str, bool]:
    """The keyword that picks the TorchScript exporter where torch.onnx.export has a choice (torch >= 2.5)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _onnx_probe_difference(net: nn.Module, onnx_path: Path, config: ModelConfig, n_vocab: int) -> float:
    """Max abs waveform difference of onnxruntime vs torch on probes of lengths the trace did not see."""
    import onnx_infer

    runner = onnx_infer.OnnxGenerator(onnx_path)
    scales = {"noise_scale": 0.667, "noise_scale_w": 0.8, "length_scale": 1.0, "sdp_ratio": 0.5}
    difference = 0.0
    for length in (13, 3):  # 3: shorter than the attention window, whose branch-free slicing must hold too
        inputs = _probe_inputs(config, n_vocab, length)
        # The runner draws its noise with torch in the generator's order, so equal seeds mean equal noise.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(length)
            expected, _ = infer.infer_waveform(net, **inputs, **scales)
            torch.manual_seed(length)
            actual, _ = infer.infer_waveform(runner, **inputs, **scales)
        if expected.shape != actual.shape:
            raise RuntimeError(f"ONNX check failed: waveform shape {tuple(actual.shape)} != {tuple(expected.shape)}")
        difference = max(difference, float((expected - actual).abs().max()))
    return difference


def export_onnx(
    model_path: str | Path, output_path: str | Path, config_path: str | Path | None = None, *, trace_length: int = 24
) -> OnnxExportResult:
    """Export the generator of `model_path` (a `G_*.pth` checkpoint or an export file) as one ONNX graph."""
    try:
        import onnx
    except ImportError as error:
        raise RuntimeError(
            f"ONNX export needs the onnx package ({error}): python3 -m pip install onnx onnxruntime"
        ) from error
    import onnx_infer

    net, config = infer.load_generator(model_path, config_path, device="cpu", fold_weights=True)
    if config.data.n_speakers < 1:
        raise ValueError("ONNX export needs a model with a speaker table (data.n_speakers >= 1)")
    n_vocab = int(net.enc_p.emb.num_embeddings)
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_io.atomic_path(output, suffix=".onnx") as temporary_name:
        temporary = Path(temporary_name)
        graph = InferenceGraph(net).eval()
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python-level checks it records as constants (equal query/key lengths in
            # self-attention, the spline's bin-width bounds): none of them depends on the input's length.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's; see the docstring
            warnings.filterwarnings("ignore", message="Constant folding")  # a skipped optimisation, not an error
            torch.onnx.export(
                graph,
                _onnx_trace_inputs(net, config, n_vocab, trace_length),
                str(temporary),
                input_names=list(onnx_infer.INPUT_NAMES),
                output_names=list(onnx_infer.OUTPUT_NAMES),
                dynamic_axes=_onnx_dynamic_axes(),
                opset_version=ONNX_OPSET,
                **_torchscript_exporter(),
            )
        model = onnx.load(str(temporary))
        metadata = {
            "format": onnx_infer.ONNX_FORMAT,
            "config": json.dumps(config.to_dict(), ensure_ascii=False),  # config.model_config_from_json reads it
            "n_vocab": str(n_vocab),
            "noise": "sdp_noise [b,2,t] and prior_noise [b,inter,t_y] are standard normal; see onnx_infer.py",
            "source": Path(model_path).name,
        }
        onnx.helper.set_model_props(model, metadata)
        model.doc_string = "Bert-VITS2 2.3 SynthesizerTrn.infer (export.py --format onnx)"
        onnx.save(model, str(temporary))
        del model
        difference = _onnx_probe_difference(net, temporary, config, n_vocab)
        if difference > ONNX_TOLERANCE:
            raise RuntimeError(f"ONNX check failed: onnxruntime and torch waveforms differ by up to {difference:.3g}")
    result = OnnxExportResult(output, output.stat().st_size, difference)
    logger.info("wrote %s: %.1f MB, probe difference %.2g", output, result.bytes_written / 1e6, difference)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a Bert-VITS2 2.3 generator for inference (safetensors or ONNX)"
    )
    parser.add_argument("-m", "--model", required=True, help="G_*.pth training checkpoint")
    parser.add_argument("-c", "--config", help="its config.json (not needed when re-exporting an export file)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors or .onnx file")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default=None, help="default: from the output file's extension"
    )
    parser.add_argument("--keep-weight-norm", action="store_true", help="store weight_g/weight_v instead of folding")
    parser.add_argument("--dtype", default="float32", choices=sorted(EXPORT_DTYPES), help="storage precision")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output_format = args.format or ("onnx" if args.output.endswith(".onnx") else "safetensors")
    if not args.output.endswith(FORMATS[output_format]):
        logger.error(
            "-o/--output: the file name must end in %s for --format %s (infer.py recognises export files by it)",
            FORMATS[output_format],
            output_format,
        )
        return 2
    if output_format == "onnx" and (args.dtype != "float32" or args.keep_weight_norm):
        logger.error("--dtype and --keep-weight-norm apply to safetensors exports only (ONNX is float32, folded)")
        return 2
    if not os.path.isfile(args.model):
        logger.error("-m/--model: no such checkpoint file: %s", args.model)
        return 2
    if args.config and not os.path.isfile(args.config):
        logger.error("-c/--config: no such config file: %s", args.config)
        return 2
    try:
        atomic_io.check_output_target(args.output)
    except ValueError as error:
        logger.error("-o/--output: %s", error)
        return 2
    try:
        if output_format == "onnx":
            export_onnx(args.model, args.output, args.config)
        else:
            export_generator(
                args.model, args.output, args.config, fold_weights=not args.keep_weight_norm, dtype=args.dtype
            )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
