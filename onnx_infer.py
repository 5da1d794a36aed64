"""Run a generator exported by `export.py --format onnx` with onnxruntime.

The `.onnx` file holds ONE graph: the whole of `SynthesizerTrn.infer` (text encoder, both duration predictors,
length regulation, flow, decoder) with dynamic batch, text and frame axes, and the model config in its
`metadata_props` (key `config`, the config.json text). Its inputs are the generator's eight text tensors, the
four scales as 0-d float tensors, and the two standard-normal noise tensors the torch generator would draw:

    x, tone, language [b, t] int64 · x_lengths, sid [b] int64 · bert, ja_bert, en_bert [b, 1024, t] float32
    sdp_noise [b, 2, t] · prior_noise [b, inter, t_y] · noise_scale, noise_scale_w, length_scale, sdp_ratio []

Its outputs are `waveform` [b, 1, t_y · hop] and the boundary tensors `m_p`, `logs_p` [b, inter, t_y],
`y_mask` [b, 1, t_y] and `g` [b, gin, 1]. The frame count t_y depends on the predicted durations, so a caller
cannot size `prior_noise` before the durations are known; onnxruntime also runs every node of a graph whatever
outputs are asked for. So at load time the graph is cut (`onnx.utils.Extractor`) at the boundary tensors into
a durations part (text inputs -> m_p, logs_p, y_mask, g) and a decoder part (those + prior_noise -> waveform),
run one after the other with the noise drawn in between: one file to ship, no node run twice.

The noise is drawn with torch's generator, in the order and shapes `SynthesizerTrn.infer` draws it, so after
`torch.manual_seed(n)` a `.onnx` export and the checkpoint it came from give the same waveform (to float
rounding). `OnnxGenerator.infer` has the torch generator's `infer` signature, so `infer.Synthesizer`, the
server and the web UI use either unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

import config as settings

logger = logging.getLogger(__name__)

ONNX_FORMAT = "bert-vits2-2.3-generator-onnx"
TEXT_INPUTS = ("x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert", "en_bert")
SCALE_INPUTS = ("noise_scale", "noise_scale_w", "length_scale", "sdp_ratio")
NOISE_INPUTS = ("sdp_noise", "prior_noise")
INPUT_NAMES = TEXT_INPUTS + NOISE_INPUTS + SCALE_INPUTS
BOUNDARY_OUTPUTS = ("m_p", "logs_p", "y_mask", "g")
OUTPUT_NAMES = ("waveform",) + BOUNDARY_OUTPUTS
DURATION_INPUTS = TEXT_INPUTS + ("sdp_noise", "noise_scale_w", "length_scale", "sdp_ratio")
DECODER_INPUTS = BOUNDARY_OUTPUTS + ("prior_noise", "noise_scale")


class OnnxInferenceOutput(NamedTuple):
    """Unpacks like the torch generator's `InferenceOutput`; the graph returns no alignment or latents."""

    o: Tensor  # [b, 1, t_y · hop]
    attn: None
    y_mask: Tensor  # [b, 1, t_y]
    latents: None


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise RuntimeError(
            f"running a .onnx generator needs the onnx and onnxruntime packages ({error}); "
            "install them with: python3 -m pip install onnx onnxruntime"
        ) from error
    return onnx, onnxruntime


def _load_model(path: Path) -> Any:
    """The ONNX model at `path`, checked to be a generator written by export.py."""
    onnx, _ = _require_onnx()
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (OSError, ValueError, DecodeError) as error:
        raise ValueError(f"cannot read {path} as an ONNX model: {error}") from error
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if metadata.get("format") != ONNX_FORMAT:
        raise ValueError(
            f"{path} is not a generator exported by export.py (metadata format {metadata.get('format')!r})"
        )
    inputs = [value.name for value in model.graph.input]
    if sorted(inputs) != sorted(INPUT_NAMES):
        raise ValueError(f"{path}: graph inputs {inputs} differ from the expected {list(INPUT_NAMES)}")
    return model


def _providers(onnxruntime: Any, device: torch.device) -> list[str]:
    available = onnxruntime.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        logger.warning("onnxruntime has no CUDA provider here (%s); running the ONNX graph on CPU", available)
    return ["CPUExecutionProvider"]


class OnnxGenerator:
    """An exported generator run by onnxruntime, with the torch generator's `infer` call."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None) -> None:
        _, onnxruntime = _require_onnx()
        from onnx.utils import Extractor

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        model = _load_model(self.path)
        self.metadata = {prop.key: prop.value for prop in model.metadata_props}
        self.config = settings.model_config_from_json(self.metadata["config"], f"{self.path} (its metadata config)")
        self.n_vocab = int(self.metadata["n_vocab"])
        self.inter_channels = self.config.model.inter_channels
        self.device = torch.device(device)

        options = onnxruntime.SessionOptions()
        # One intra-op pool as wide as torch's, so that a thread limit set for torch holds for both.
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        providers = _providers(onnxruntime, self.device)
        extractor = Extractor(model)
        parts = {
            "durations": extractor.extract_model(list(DURATION_INPUTS), list(BOUNDARY_OUTPUTS)),
            "decoder": extractor.extract_model(list(DECODER_INPUTS), ["waveform"]),
        }
        self.sessions = {}
        for name, part in parts.items():
            part_inputs = [value.name for value in part.graph.input]
            expected = DURATION_INPUTS if name == "durations" else DECODER_INPUTS
            if sorted(part_inputs) != sorted(expected):
                raise ValueError(f"{self.path}: cannot cut the graph; its {name} part needs {part_inputs}")
            self.sessions[name] = onnxruntime.InferenceSession(
                part.SerializeToString(), sess_options=options, providers=providers
            )
        del model, parts, extractor

    # The torch generator's module-like surface that callers use.
    def eval(self) -> OnnxGenerator:
        return self

    def to(self, device: str | torch.device) -> OnnxGenerator:
        self.device = torch.device(device)
        return self

    def infer(
        self,
        x: Tensor,
        x_lengths: Tensor,
        sid: Tensor,
        tone: Tensor,
        language: Tensor,
        bert: Tensor,
        ja_bert: Tensor,
        en_bert: Tensor,
        noise_scale: float = 0.667,
        length_scale: float = 1,
        noise_scale_w: float = 0.8,
        max_len: int | None = None,
        sdp_ratio: float = 0,
        y: Tensor | None = None,
        *,
        sdp_noise: Tensor | None = None,
        prior_noise: Tensor | None = None,
    ) -> OnnxInferenceOutput:
        """`SynthesizerTrn.infer` through onnxruntime: `(o, None, y_mask, None)`.

        `sdp_noise` [b, 2, t] and `prior_noise` [b, inter, t_y] replace the standard-normal draws (parity tests).
        """
        if max_len is not None:
            raise ValueError("max_len is not supported by the ONNX generator (the graph decodes every frame)")
        if y is not None:
            raise ValueError("the ONNX generator has a speaker table; it takes sid, not a reference spectrogram")
        out_device = x.device
        batch, length = x.shape
        if sdp_noise is None:
            # Drawn exactly as StochasticDurationPredictor draws it, so torch seeds carry over.
            sdp_noise = torch.randn(batch, 2, length)
        feeds = {
            "x": x,
            "x_lengths": x_lengths,
            "sid": sid,
            "tone": tone,
            "language": language,
            "bert": bert,
            "ja_bert": ja_bert,
            "en_bert": en_bert,
            "sdp_noise": sdp_noise,
        }
        arrays = {
            name: _to_numpy(value, np.int64 if name in TEXT_INPUTS[:5] else np.float32) for name, value in feeds.items()
        }
        for name, value in (("noise_scale_w", noise_scale_w), ("length_scale", length_scale), ("sdp_ratio", sdp_ratio)):
            arrays[name] = np.asarray(value, dtype=np.float32)
        m_p, logs_p, y_mask, g = self.sessions["durations"].run(list(BOUNDARY_OUTPUTS), arrays)
        if prior_noise is None:
            # As randn_like(m_p) in SynthesizerTrn.infer_decode, where m_p is a transposed [b, t_y, inter] matmul
            # result: torch's sampler takes another path for such strides, so draw for the same strides.
            batch, channels, frames = m_p.shape
            prior_noise = torch.randn_like(torch.empty(batch, frames, channels).transpose(1, 2))
        elif tuple(prior_noise.shape) != m_p.shape:
            raise ValueError(f"prior_noise has shape {tuple(prior_noise.shape)}, the durations give {m_p.shape}")
        decoder_feeds = {"m_p": m_p, "logs_p": logs_p, "y_mask": y_mask, "g": g}
        decoder_feeds["prior_noise"] = _to_numpy(prior_noise, np.float32)
        decoder_feeds["noise_scale"] = np.asarray(noise_scale, dtype=np.float32)
        (waveform,) = self.sessions["decoder"].run(["waveform"], decoder_feeds)
        o = torch.from_numpy(waveform).to(out_device)
        return OnnxInferenceOutput(o, None, torch.from_numpy(y_mask).to(out_device), None)


def _to_numpy(value: Tensor | np.ndarray, dtype: type) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    return np.ascontiguousarray(array, dtype=dtype)


def load_onnx_generator(
    path: str | Path,
    config_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> tuple[OnnxGenerator, settings.ModelConfig]:
    """An `OnnxGenerator` and its config (from the file's metadata, or `config_path` when given)."""
    net = OnnxGenerator(path, device=device, threads=threads)
    if config_path is not None:
        config = settings.load_model_config(config_path)
        if config.model.to_dict() != net.config.model.to_dict():
            raise ValueError(f"{config_path}: its model section differs from the one {path} was exported with")
        net.config = config
    return net, net.config
