"""Text-to-speech with a trained Bert-VITS2 2.3 generator.

Loads a generator from a training checkpoint (`G_*.pth`, ours or the reference's: a dict whose `model` entry is
the state_dict) or from an inference file written by `export.py` (safetensors, config stored in its metadata),
turns text into phone ids and BERT features the way the reference `infer.py` does, and runs
`SynthesizerTrn.infer`.

    python infer.py --model Data/models/G_8000.pth --config Data/config.json \\
        --text "你好，世界。" --speaker spk0 --language ZH \\
        --bert-dir bert/chinese-roberta-wwm-ext-large -o out.wav

Python API: `load_synthesizer(...)` returns a `Synthesizer` whose `synthesize(text, speaker, language, ...)`
gives `(sampling_rate, waveform)`; `infer_waveform(net_g, ...)` runs the generator on prepared tensors.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

LANGUAGES = ("ZH", "JP", "EN")
BERT_FEATURE_DIM = 1024
# Which keyword of `SynthesizerTrn.infer` carries the features of each language; the other two get zeros.
BERT_SLOTS = {"ZH": "bert", "JP": "ja_bert", "EN": "en_bert"}

EXPORT_FORMAT = "bert-vits2-2.3-generator"
# Parts of the generator that `SynthesizerTrn.infer` never runs: the posterior encoder (training only), the
# posterior flows of the stochastic duration predictor (its forward/training direction) and the one ConvFlow
# that the predictor's reverse pass skips. An export drops them; a load tolerates their absence.
INFERENCE_UNUSED_PREFIXES = (
    "enc_q.",
    "sdp.post_pre.",
    "sdp.post_proj.",
    "sdp.post_convs.",
    "sdp.post_flows.",
    "sdp.flows.1.",
)

DEFAULT_SENTENCE_PAUSE = 0.2  # seconds of silence between sentences of a long text (the reference webui's default)

# Sentence ends: CJK and ASCII terminators (a "." only when followed by a space or the end, so "3.5" stays whole).
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…\n])|(?<=\.)(?=\s|$)")
_CLAUSE_END = re.compile(r"(?<=[，,、：:])")
MAX_SENTENCE_CHARS = 200


class PreparedText(NamedTuple):
    """One utterance ready for the generator: ids [t] and BERT features [1024, t] per language slot."""

    phones: Tensor
    tones: Tensor
    lang_ids: Tensor
    bert: Tensor
    ja_bert: Tensor
    en_bert: Tensor


# --------------------------------------------------------------------------------------------------------------
# Building and loading the generator


def read_config(config_path: str | Path) -> dict[str, Any]:
    """The model config (Bert-VITS2 `config.json` layout) as a plain dict."""
    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path} (pass the config.json the model was trained with)")
    return json.loads(path.read_text(encoding="utf-8"))


def default_vocab_size() -> int:
    from text.symbols import symbols

    return len(symbols)


def build_generator(config: Mapping[str, Any], n_vocab: int | None = None) -> nn.Module:
    """A fresh `SynthesizerTrn` built exactly as the training script builds it."""
    from models import SynthesizerTrn

    data, model = config["data"], dict(config["model"])
    return SynthesizerTrn(
        n_vocab if n_vocab is not None else default_vocab_size(),
        data["filter_length"] // 2 + 1,
        config["train"]["segment_size"] // data["hop_length"],
        n_speakers=data["n_speakers"],
        **model,
    )


def _has_weight_norm(module: nn.Module) -> bool:
    # commons.weight_norm keeps the old (g, v) parameter pair on the layer itself.
    direct = dict(module.named_parameters(recurse=False))
    return "weight_g" in direct and "weight_v" in direct


def fold_weight_norm(net: nn.Module) -> int:
    """Replace every weight-normed layer's (g, v) pair by the plain weight it computes; returns the layer count.

    Saves recomputing g·v/‖v‖ in every forward call; the state_dict then holds `*.weight` instead of
    `*.weight_g`/`*.weight_v`.
    """
    import commons

    layers = [module for module in net.modules() if _has_weight_norm(module)]
    for module in layers:
        commons.remove_weight_norm(module)
    return len(layers)


def _strip_ddp_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def is_inference_unused(key: str) -> bool:
    return key.startswith(INFERENCE_UNUSED_PREFIXES)


def load_inference_state(net: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Load `state` into `net`, allowing only parameters inference never uses to be absent.

    Absent parameters are filled with NaN, so that if inference ever did use one, the output would be NaN
    instead of silently coming from a random initialisation. Returns the absent keys.
    """
    expected = net.state_dict()
    unexpected = [key for key in state if key not in expected]
    missing = [key for key in expected if key not in state]
    needed = [key for key in missing if not is_inference_unused(key)]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    if unexpected or needed or mismatched:
        raise ValueError(
            "the weights do not fit the model built from the config (is it the config the model was trained "
            f"with?): {len(needed)} missing {needed[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(mismatched)} of another shape {mismatched[:5]}"
        )
    full = dict(state)
    for key in missing:
        full[key] = torch.full_like(expected[key], float("nan"))
    net.load_state_dict(full, strict=True)
    return missing


def _read_checkpoint_state(model_path: Path) -> dict[str, Tensor]:
    try:
        checkpoint = torch.load(model_path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError, struct.error) as error:
        raise ValueError(f"cannot read checkpoint {model_path}: {error}") from error
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{model_path} is not a generator checkpoint (expected a dict with a 'model' state_dict)")
    return _strip_ddp_prefix(state)


def read_export_file(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of an export file; raises ValueError when it is not one."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"cannot read {path} as safetensors: {error}") from error
    if metadata.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a generator export file (metadata format {metadata.get('format')!r})")
    return load_file(str(path), device="cpu"), metadata


def load_generator(
    model_path: str | Path,
    config_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    fold_weights: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Generator in eval mode on `device`, and its config, from a `G_*.pth` checkpoint or an export file.

    An export file carries its own config; `config_path` (if given) overrides it. A checkpoint needs
    `config_path`. With `fold_weights` weight norm is folded into plain weights (faster, same output).
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (a G_*.pth checkpoint or an export .safetensors)")
    if path.suffix == ".safetensors":
        state, metadata = read_export_file(path)
        config = read_config(config_path) if config_path else json.loads(metadata["config"])
        net = build_generator(config, n_vocab=int(metadata["n_vocab"]))
        stored_folded = metadata.get("weight_norm") == "folded"
        if stored_folded:
            fold_weight_norm(net)  # give the net the plain-weight layout the file holds
        load_inference_state(net, {key: value.float() for key, value in state.items()})
        if fold_weights and not stored_folded:
            fold_weight_norm(net)
    else:
        if config_path is None:
            raise ValueError(f"{path} is a training checkpoint: pass its config.json too (--config)")
        config = read_config(config_path)
        net = build_generator(config)
        load_inference_state(net, _read_checkpoint_state(path))
        if fold_weights:
            fold_weight_norm(net)
    net.eval()
    return net.to(device), config


# --------------------------------------------------------------------------------------------------------------
# Running the generator


def infer_waveform(
    net_g: nn.Module,
    x: Tensor,
    x_lengths: Tensor,
    sid: Tensor,
    tone: Tensor,
    language: Tensor,
    bert: Tensor,
    ja_bert: Tensor,
    en_bert: Tensor,
    *,
    sdp_ratio: float = 0.2,
    noise_scale: float = 0.6,
    noise_scale_w: float = 0.8,
    length_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Batched generator inference on prepared tensors: waveform [b, 1, t] and frame lengths [b]."""
    with torch.no_grad():
        o, _attn, y_mask, _latents = net_g.infer(
            x,
            x_lengths,
            sid,
            tone,
            language,
            bert,
            ja_bert,
            en_bert,
            noise_scale=noise_scale,
            length_scale=length_scale,
            noise_scale_w=noise_scale_w,
            sdp_ratio=sdp_ratio,
        )
    return o, y_mask.sum(dim=(1, 2)).long()


def _pack_clauses(sentence: str, max_chars: int) -> list[str]:
    """Split an over-long sentence at commas into pieces of at most about `max_chars` characters."""
    pieces: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        if pieces and len(pieces[-1]) + len(clause) <= max_chars:
            pieces[-1] += clause
        else:
            pieces.append(clause)
    return pieces


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Sentences of `text` (terminators kept), leaving out pieces with nothing to pronounce.

    A sentence longer than `max_chars` is cut further at commas: BERT sees at most 512 tokens at once.
    """
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        pieces.extend(_pack_clauses(sentence, max_chars) if len(sentence) > max_chars else [sentence])
    stripped = (piece.strip() for piece in pieces)
    return [piece for piece in stripped if any(ch.isalnum() for ch in piece)]


def check_language(language: str) -> str:
    code = str(language).upper()
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}: use one of {', '.join(LANGUAGES)}")
    return code


def prepare_text(
    text: str,
    language: str,
    *,
    add_blank: bool = True,
    device: str | torch.device = "cpu",
    bert_dir: str | Path | None = None,
) -> PreparedText:
    """Phone, tone and language ids and BERT features for one utterance, as the reference inference makes them."""
    import commons
    from text import cleaned_text_to_sequence, get_bert
    from text.cleaner import clean_text

    norm_text, phones, tones, word2ph = clean_text(text, language, bert_dir=bert_dir)
    phone_ids, tone_ids, lang_ids = cleaned_text_to_sequence(phones, tones, language)
    if add_blank:
        phone_ids = commons.intersperse(phone_ids, 0)
        tone_ids = commons.intersperse(tone_ids, 0)
        lang_ids = commons.intersperse(lang_ids, 0)
        # Every word's phones now come with a blank each, and the leading blank belongs to the first word.
        word2ph = [2 * count for count in word2ph]
        word2ph[0] += 1
    features = get_bert(norm_text, word2ph, language, device, bert_dir=bert_dir)
    n_phones = len(phone_ids)
    if tuple(features.shape) != (BERT_FEATURE_DIM, n_phones):
        raise ValueError(
            f"BERT features have shape {tuple(features.shape)}, expected ({BERT_FEATURE_DIM}, {n_phones}) for {text!r}"
        )
    slots = {slot: torch.zeros(BERT_FEATURE_DIM, n_phones, device=device) for slot in BERT_SLOTS.values()}
    slots[BERT_SLOTS[language]] = features.to(device=device, dtype=torch.float32)
    return PreparedText(
        phones=torch.tensor(phone_ids, dtype=torch.long, device=device),
        tones=torch.tensor(tone_ids, dtype=torch.long, device=device),
        lang_ids=torch.tensor(lang_ids, dtype=torch.long, device=device),
        **slots,
    )


def check_inference_params(sdp_ratio: float, noise_scale: float, noise_scale_w: float, length_scale: float) -> None:
    if not 0.0 <= sdp_ratio <= 1.0:
        raise ValueError(f"sdp_ratio must be within [0, 1], got {sdp_ratio}")
    for name, value in (("noise_scale", noise_scale), ("noise_scale_w", noise_scale_w)):
        if not (np.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if not (np.isfinite(length_scale) and length_scale > 0.0):
        raise ValueError(f"length_scale must be a finite number > 0, got {length_scale}")


class Synthesizer:
    """A loaded generator plus what it needs to speak: config, speaker table, BERT folders."""

    def __init__(
        self,
        net_g: nn.Module,
        config: Mapping[str, Any],
        device: str | torch.device = "cpu",
        bert_dirs: Mapping[str, str | Path] | None = None,
    ) -> None:
        self.net_g = net_g
        self.config = config
        self.device = torch.device(device)
        self.bert_dirs = {check_language(lang): Path(path) for lang, path in (bert_dirs or {}).items()}
        self.speaker_ids: dict[str, int] = {str(name): int(i) for name, i in config["data"].get("spk2id", {}).items()}

    @property
    def sampling_rate(self) -> int:
        return int(self.config["data"]["sampling_rate"])

    @property
    def speakers(self) -> list[str]:
        return list(self.speaker_ids)

    def speaker_id(self, speaker: str) -> int:
        if speaker not in self.speaker_ids:
            raise ValueError(f"unknown speaker {speaker!r}; known speakers: {', '.join(self.speakers)}")
        return self.speaker_ids[speaker]

    def prepare(self, text: str, language: str) -> PreparedText:
        code = check_language(language)
        return prepare_text(
            text,
            code,
            add_blank=bool(self.config["data"].get("add_blank", True)),
            device=self.device,
            bert_dir=self.bert_dirs.get(code),  # None: the text package's default folder under bert/
        )

    def infer_prepared(
        self,
        prepared: PreparedText,
        speaker_id: int,
        *,
        sdp_ratio: float,
        noise_scale: float,
        noise_scale_w: float,
        length_scale: float,
    ) -> np.ndarray:
        """The float32 waveform for one prepared utterance."""
        o, _ = infer_waveform(
            self.net_g,
            prepared.phones.unsqueeze(0),
            torch.tensor([prepared.phones.numel()], dtype=torch.long, device=self.device),
            torch.tensor([speaker_id], dtype=torch.long, device=self.device),
            prepared.tones.unsqueeze(0),
            prepared.lang_ids.unsqueeze(0),
            prepared.bert.unsqueeze(0),
            prepared.ja_bert.unsqueeze(0),
            prepared.en_bert.unsqueeze(0),
            sdp_ratio=sdp_ratio,
            noise_scale=noise_scale,
            noise_scale_w=noise_scale_w,
            length_scale=length_scale,
        )
        audio = o[0, 0].float().cpu().numpy()
        if not np.isfinite(audio).all():
            raise RuntimeError("the generator produced non-finite samples (damaged or incomplete weights?)")
        return audio

    def synthesize(
        self,
        text: str,
        speaker: str,
        language: str,
        sdp_ratio: float = 0.2,
        noise_scale: float = 0.6,
        noise_scale_w: float = 0.8,
        length_scale: float = 1.0,
        *,
        split: bool = True,
        pause: float = DEFAULT_SENTENCE_PAUSE,
    ) -> tuple[int, np.ndarray]:
        """Speak `text`: (sampling rate, float32 waveform). With `split`, sentence by sentence with pauses."""
        code = check_language(language)
        speaker_id = self.speaker_id(speaker)
        check_inference_params(sdp_ratio, noise_scale, noise_scale_w, length_scale)
        sentences = split_sentences(text) if split else ([text.strip()] if text.strip() else [])
        if not sentences:
            raise ValueError("the text has nothing to pronounce")
        silence = np.zeros(int(round(pause * self.sampling_rate)), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for index, sentence in enumerate(sentences):
            start = time.perf_counter()
            audio = self.infer_prepared(
                self.prepare(sentence, code),
                speaker_id,
                sdp_ratio=sdp_ratio,
                noise_scale=noise_scale,
                noise_scale_w=noise_scale_w,
                length_scale=length_scale,
            )
            logger.debug("sentence %d: %d samples in %.3f s", index, audio.size, time.perf_counter() - start)
            if index:
                pieces.append(silence)
            pieces.append(audio)
        return self.sampling_rate, np.concatenate(pieces).astype(np.float32, copy=False)


def load_synthesizer(
    model_path: str | Path,
    config_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    bert_dirs: Mapping[str, str | Path] | None = None,
    fold_weights: bool = True,
) -> Synthesizer:
    """A `Synthesizer` for a `G_*.pth` checkpoint (with its config) or an export file (config inside)."""
    net_g, config = load_generator(model_path, config_path, device=device, fold_weights=fold_weights)
    return Synthesizer(net_g, config, device=device, bert_dirs=bert_dirs)


def write_audio(path: str | Path, audio: np.ndarray, sampling_rate: int, subtype: str | None = None) -> None:
    """Write with soundfile; the format follows the file extension. Integer formats get clipped samples."""
    import soundfile

    if subtype is None or not subtype.upper().startswith(("FLOAT", "DOUBLE")):
        audio = np.clip(audio, -1.0, 1.0)
    soundfile.write(str(path), audio, sampling_rate, subtype=subtype)


# --------------------------------------------------------------------------------------------------------------
# Command line


def parse_bert_dirs(items: Iterable[str], default_language: str | None = None) -> dict[str, str]:
    """`LANG=PATH` items (or a bare PATH, meaning `default_language`) as a language → folder dict."""
    dirs: dict[str, str] = {}
    for item in items:
        language, sep, path = item.partition("=")
        if sep and language.upper() in LANGUAGES:
            dirs[language.upper()] = path
        elif default_language is not None:
            dirs[check_language(default_language)] = item
        else:
            raise ValueError(f"--bert-dir {item!r}: write LANG=PATH with LANG one of {', '.join(LANGUAGES)}")
    return dirs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Bert-VITS2 2.3 text-to-speech inference")
    parser.add_argument("-m", "--model", required=True, help="G_*.pth checkpoint or export .safetensors file")
    parser.add_argument("-c", "--config", help="model config.json (optional for an export file)")
    parser.add_argument("-t", "--text", required=True)
    parser.add_argument("-s", "--speaker", required=True, help="speaker name from the config's spk2id")
    parser.add_argument("-l", "--language", default="ZH", help="ZH, JP or EN")
    parser.add_argument("--sdp-ratio", type=float, default=0.2)
    parser.add_argument("--noise-scale", type=float, default=0.6)
    parser.add_argument("--noise-scale-w", type=float, default=0.8)
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument(
        "--bert-dir",
        action="append",
        default=[],
        help="BERT folder: PATH (for --language) or LANG=PATH; repeatable. Default: the text package's location",
    )
    parser.add_argument("--no-split", action="store_true", help="do not split long text into sentences")
    parser.add_argument("--pause", type=float, default=DEFAULT_SENTENCE_PAUSE, help="seconds between sentences")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=None, help="seed the noise for a reproducible result")
    parser.add_argument("--subtype", default=None, help="soundfile subtype, e.g. PCM_16 (default) or FLOAT")
    parser.add_argument("-o", "--output", required=True, help="output audio file (.wav, .flac, .ogg)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    try:
        synthesizer = load_synthesizer(
            args.model,
            args.config,
            device=args.device,
            bert_dirs=parse_bert_dirs(args.bert_dir, default_language=args.language),
        )
        start = time.perf_counter()
        sampling_rate, audio = synthesizer.synthesize(
            args.text,
            args.speaker,
            args.language,
            sdp_ratio=args.sdp_ratio,
            noise_scale=args.noise_scale,
            noise_scale_w=args.noise_scale_w,
            length_scale=args.length_scale,
            split=not args.no_split,
            pause=args.pause,
        )
        elapsed = time.perf_counter() - start
        write_audio(args.output, audio, sampling_rate, args.subtype)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    duration = audio.size / sampling_rate
    logger.info("wrote %s: %.2f s of audio in %.2f s (RTF %.3f)", args.output, duration, elapsed, elapsed / duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
