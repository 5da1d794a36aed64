"""Write a generator-only inference file from a training checkpoint.

    python export.py --model Data/models/G_8000.pth --config Data/config.json -o Data/models/G_8000.safetensors

A training checkpoint holds the generator, its AdamW moments (twice the model's size) and the parts of the
generator only training uses. The export keeps just what `SynthesizerTrn.infer` runs, folds weight norm into
plain weights (unless `--keep-weight-norm`), and stores the model config in the safetensors metadata, so
`infer.py` / `server.py` need nothing but this one file. Before writing, the exported weights are loaded into a
fresh generator and checked to give the checkpoint's waveform on a probe input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

import infer
from config import ModelConfig

logger = logging.getLogger(__name__)

EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    save_file(state, str(output), metadata=metadata)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a Bert-VITS2 2.3 generator for inference (safetensors)")
    parser.add_argument("-m", "--model", required=True, help="G_*.pth training checkpoint")
    parser.add_argument("-c", "--config", help="its config.json (not needed when re-exporting an export file)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors file")
    parser.add_argument("--keep-weight-norm", action="store_true", help="store weight_g/weight_v instead of folding")
    parser.add_argument("--dtype", default="float32", choices=sorted(EXPORT_DTYPES), help="storage precision")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.output.endswith(".safetensors"):
        logger.error("the output file must end in .safetensors (infer.py recognises export files by it)")
        return 2
    try:
        export_generator(args.model, args.output, args.config, fold_weights=not args.keep_weight_norm, dtype=args.dtype)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
