"""Text-to-speech with a trained Bert-VITS2 2.3 generator.

Loads a generator from a training checkpoint (`G_*.pth`, ours or the reference's: a dict whose `model` entry is
the state_dict) or from an inference file written by `export.py` (safetensors, config stored in its metadata;
or `.onnx`, run by onnxruntime through onnx_infer.py behind the same `infer(...)` call), turns text into phone
ids and BERT features the way the reference `infer.py` does, and runs `SynthesizerTrn.infer`.

    python infer.py --model Data/models/G_8000.pth --config Data/config.json \\
        --text "你好，世界。" --speaker spk0 --language ZH \\
        --bert-dir ZH=bert/chinese-roberta-wwm-ext-large -o out.wav

Python API: `load_synthesizer(...)` returns a `Synthesizer` whose `synthesize(text, speaker, language, ...)`
gives `(sampling_rate, waveform)`; `synthesize_parts([(text, language), ...], speaker, ...)` speaks an explicit
list of parts in one voice; `infer_waveform(net_g, ...)` runs the generator on prepared tensors.

Languages: "ZH", "JP", "EN"; "mix" (the reference webui's tagged form `[speaker]<zh>你好<en>hello|<jp>…`) and
"auto" (parts split at punctuation and script changes, each identified as ZH, JP or EN). Parts in different
languages are joined at feature level into one generator pass, as Bert-VITS2 2.3 does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pickle
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

import config as settings
import streaming
import synthesis_params
from synthesis_params import DEFAULT_PARAMS, SynthesisParams, brief
from synthesis_plan import REQUEST_LANGUAGES, Plan, check_language, plan_given_parts, plan_text
from text.bert_features import add_bert_dir_argument, parse_bert_dirs
from text.symbols import pad, pu_symbols

logger = logging.getLogger(__name__)

BERT_FEATURE_DIM = 1024
# Which keyword of `SynthesizerTrn.infer` carries the features of each language; the other two are "unused" and
# get what the model was trained with (data.unused_bert: noise or zeros).
BERT_SLOTS = {"ZH": "bert", "JP": "ja_bert", "EN": "en_bert"}
# A joined part loses its leading blank, "_" pad and blank (all parts but the first) and its trailing pad and
# blank (all parts but the last), so no pause appears at the seams (the reference's skip_start/skip_end).
SKIP_START = 3
SKIP_END = 2

EXPORT_FORMAT = "bert-vits2-2.3-generator"
# The top-level modules of each discriminator's state_dict (what D_, DUR_ and WD_ checkpoints hold).
DISCRIMINATOR_MODULES = {
    "D_*.pth, the multi-period discriminator": frozenset({"discriminators"}),
    "DUR_*.pth, the duration discriminator": frozenset(
        {"LSTM", "cond", "conv_1", "conv_2", "dur_proj", "norm_1", "norm_2", "output_layer"}
        | {"pre_out_conv_1", "pre_out_conv_2", "pre_out_norm_1", "pre_out_norm_2"}  # older releases' layers
    ),
    "WD_*.pth, the WavLM discriminator": frozenset({"conv_post", "convs", "pre"}),
}
# Phones that say nothing: the pad, punctuation, silence and unknown.
SILENT_PHONES = frozenset([pad, *pu_symbols])
LANGUAGE_NAMES = {"ZH": "Chinese", "JP": "Japanese", "EN": "English"}
WARM_UP_TEXT = {"ZH": "你好", "JP": "こんにちは", "EN": "hello"}
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
    state = _strip_ddp_prefix(state)
    discriminator = discriminator_kind(state)
    if discriminator:
        raise ValueError(
            f"{model_path} is a discriminator checkpoint ({discriminator}), not a generator: "
            "give the G_*.pth of the same step"
        )
    return state


def discriminator_kind(state: Mapping[str, Tensor]) -> str | None:
    """Which of the three discriminators `state` holds (by its top-level modules), or None."""
    top = {key.split(".", 1)[0] for key in state}
    for kind, modules in DISCRIMINATOR_MODULES.items():
        if top and top <= modules:
            return kind
    return None


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
) -> tuple[nn.Module, settings.ModelConfig]:
    """Generator in eval mode on `device`, and its config, from a `G_*.pth` checkpoint or an export file.

    An export file carries its own config; `config_path` (if given) overrides it. A checkpoint needs
    `config_path`. With `fold_weights` weight norm is folded into plain weights (faster, same output).
    """
    from models import build_generator

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path} (a G_*.pth checkpoint or an export .safetensors)")
    if path.suffix == ".onnx":
        # export.py --format onnx: run by onnxruntime behind the same `infer(...)` call (onnx_infer.py).
        import onnx_infer

        return onnx_infer.load_onnx_generator(path, config_path, device=device)
    if path.suffix == ".safetensors":
        state, metadata = read_export_file(path)
        if config_path:
            config = settings.load_model_config(config_path)
        else:
            config = settings.model_config_from_json(metadata["config"], f"{path} (the config in its metadata)")
        net = build_generator(config, for_training=False, n_vocab=int(metadata["n_vocab"]))
        stored_folded = metadata.get("weight_norm") == "folded"
        if stored_folded:
            fold_weight_norm(net)  # give the net the plain-weight layout the file holds
        load_inference_state(net, {key: value.float() for key, value in state.items()})
        if fold_weights and not stored_folded:
            fold_weight_norm(net)
    else:
        if config_path is None:
            raise ValueError(f"{path} is a training checkpoint: pass its config.json too (--config)")
        config = settings.load_model_config(config_path)
        net = build_generator(config, for_training=False)
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
    sdp_ratio: float = DEFAULT_PARAMS.sdp_ratio,
    noise_scale: float = DEFAULT_PARAMS.noise_scale,
    noise_scale_w: float = DEFAULT_PARAMS.noise_scale_w,
    length_scale: float = DEFAULT_PARAMS.length_scale,
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


def unused_bert_of(config: Mapping[str, Any] | Any) -> str:
    """The model's `data.unused_bert` regime; configs without it (the reference's) mean "randn"."""
    from data_utils import unused_bert_regime

    data = config["data"] if isinstance(config, Mapping) else config.data
    return unused_bert_regime(data)


def prepare_text(
    text: str,
    language: str,
    *,
    add_blank: bool = True,
    device: str | torch.device = "cpu",
    bert_dir: str | Path | None = None,
    style_text: str | None = None,
    style_weight: float = 0.7,
    unused_bert: str = "randn",
    generator: torch.Generator | None = None,
) -> PreparedText:
    """Phone, tone and language ids and BERT features for one utterance, as the reference inference makes them.

    The two BERT slots of the languages the text is not in are filled by `unused_bert`: "randn" draws standard
    normal noise from `generator` (the reference's behaviour), "zeros" leaves zeros.
    """
    import commons
    from data_utils import fill_bert_slots
    from text import cleaned_text_to_sequence, get_bert
    from text.cleaner import clean_text

    norm_text, phones, tones, word2ph = clean_text(text, language, bert_dir=bert_dir)
    check_pronounceable(text, language, phones)
    phone_ids, tone_ids, lang_ids = cleaned_text_to_sequence(phones, tones, language)
    if add_blank:
        phone_ids = commons.intersperse(phone_ids, 0)
        tone_ids = commons.intersperse(tone_ids, 0)
        lang_ids = commons.intersperse(lang_ids, 0)
        # Every word's phones now come with a blank each, and the leading blank belongs to the first word.
        word2ph = [2 * count for count in word2ph]
        word2ph[0] += 1
    style = style_text.strip() if style_text else None
    features = get_bert(
        norm_text, word2ph, language, device, bert_dir=bert_dir, style_text=style, style_weight=style_weight
    )
    n_phones = len(phone_ids)
    if tuple(features.shape) != (BERT_FEATURE_DIM, n_phones):
        raise ValueError(
            f"BERT features have shape {tuple(features.shape)}, expected ({BERT_FEATURE_DIM}, {n_phones}) for {text!r}"
        )
    slots = fill_bert_slots(features.float().cpu(), language, unused_bert, generator)
    bert, ja_bert, en_bert = (slot.to(device=device, dtype=torch.float32) for slot in slots)
    return PreparedText(
        phones=torch.tensor(phone_ids, dtype=torch.long, device=device),
        tones=torch.tensor(tone_ids, dtype=torch.long, device=device),
        lang_ids=torch.tensor(lang_ids, dtype=torch.long, device=device),
        bert=bert,
        ja_bert=ja_bert,
        en_bert=en_bert,
    )


def check_pronounceable(text: str, language: str, phones: Sequence[str]) -> None:
    """Refuse text of which the language's front end made only pads and punctuation (e.g. "hello" as ZH)."""
    if all(phone in SILENT_PHONES for phone in phones):
        name = LANGUAGE_NAMES[language]
        raise ValueError(
            f"{language} ({name}) cannot pronounce {brief(text)}: nothing in it is {name}; "
            "choose the language of the text, or auto"
        )


def join_prepared(parts: Sequence[PreparedText]) -> PreparedText:
    """One utterance from parts prepared separately (each in its own language), joined at feature level.

    Every part but the first loses its first `SKIP_START` entries (blank, "_" pad, blank) and every part but the
    last its last `SKIP_END` (pad, blank), in all six sequences, so the seams carry no pause.
    """
    if not parts:
        raise ValueError("nothing to join: no parts")
    last = len(parts) - 1
    trimmed: list[PreparedText] = []
    for index, part in enumerate(parts):
        start = SKIP_START if index > 0 else 0
        stop = part.phones.numel() - (SKIP_END if index < last else 0)
        if stop <= start:
            raise ValueError(f"part {index} is too short to join ({part.phones.numel()} phones)")
        trimmed.append(PreparedText(*(tensor[..., start:stop] for tensor in part)))
    if len(trimmed) == 1:
        return trimmed[0]
    return PreparedText(*(torch.cat(tensors, dim=-1) for tensors in zip(*trimmed)))


@contextlib.contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Within the block torch's global RNG (the generator's noise) starts from `seed`; None leaves it alone."""
    if seed is None:
        yield
        return
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Synthesizer:
    """A loaded generator plus what it needs to speak: config, speaker table, BERT folders."""

    def __init__(
        self,
        net_g: nn.Module,
        config: settings.ModelConfig | Mapping[str, Any],
        device: str | torch.device = "cpu",
        bert_dirs: Mapping[str, str | Path] | None = None,
    ) -> None:
        self.net_g = net_g
        self.config = settings.as_model_config(config)
        self.device = torch.device(device)
        self.bert_dirs = {check_language(lang): Path(path) for lang, path in (bert_dirs or {}).items()}
        self.speaker_ids: dict[str, int] = {str(name): int(i) for name, i in config["data"].get("spk2id", {}).items()}
        # What the unused BERT slots got in training; the model expects the same at inference.
        self.unused_bert = unused_bert_of(config)

    @property
    def sampling_rate(self) -> int:
        return int(self.config["data"]["sampling_rate"])

    @property
    def speakers(self) -> list[str]:
        return list(self.speaker_ids)

    @property
    def languages(self) -> list[str]:
        """The values `synthesize` accepts as `language`."""
        return list(REQUEST_LANGUAGES)

    def speaker_id(self, speaker: str) -> int:
        if speaker not in self.speaker_ids:
            raise ValueError(f"unknown speaker {brief(speaker)}; known speakers: {', '.join(self.speakers)}")
        return self.speaker_ids[speaker]

    def prepare(
        self,
        text: str,
        language: str,
        *,
        style_text: str | None = None,
        style_weight: float = 0.7,
        generator: torch.Generator | None = None,
    ) -> PreparedText:
        code = check_language(language)
        return prepare_text(
            text,
            code,
            add_blank=bool(self.config["data"].get("add_blank", True)),
            device=self.device,
            bert_dir=self.bert_dirs.get(code),  # None: the text package's default folder under bert/
            style_text=style_text,
            style_weight=style_weight,
            unused_bert=self.unused_bert,
            generator=generator,
        )

    def prepare_parts(
        self,
        parts: Sequence[tuple[str, str]],
        *,
        style_text: str | None = None,
        style_weight: float = 0.7,
        generator: torch.Generator | None = None,
    ) -> PreparedText:
        """One utterance from (text, language) parts, each prepared in its language, joined at feature level."""
        prepared = [
            self.prepare(text, language, style_text=style_text, style_weight=style_weight, generator=generator)
            for text, language in parts
        ]
        return join_prepared(prepared)

    def infer_prepared(
        self,
        prepared: PreparedText,
        speaker_id: int,
        params: SynthesisParams = DEFAULT_PARAMS,
    ) -> np.ndarray:
        """The float32 waveform for one prepared utterance (`params`' sdp, noise and length scales)."""
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
            sdp_ratio=params.sdp_ratio,
            noise_scale=params.noise_scale,
            noise_scale_w=params.noise_scale_w,
            length_scale=params.length_scale,
        )
        audio = o[0, 0].float().cpu().numpy()
        if not np.isfinite(audio).all():
            raise RuntimeError("the generator produced non-finite samples (damaged or incomplete weights?)")
        return audio

    def warm_up(self, plan: Plan) -> None:
        """Load what speaking `plan` needs (text front ends, BERT models) by preparing a word per language, so
        that timing `render` measures synthesis, not loading."""
        from text.cleaner import clean_text

        parts = [part for paragraph in plan for utterance in paragraph for part in utterance.parts]
        for text, language in parts:  # the front ends first: text they cannot pronounce fails before BERT loads
            check_pronounceable(text, language, clean_text(text, language, bert_dir=self.bert_dirs.get(language))[1])
        for language in sorted({language for _, language in parts}):
            self.prepare(WARM_UP_TEXT[language], language)

    def render(self, plan: Plan, params: SynthesisParams = DEFAULT_PARAMS) -> tuple[int, np.ndarray]:
        """Speak a plan: utterances joined by sentence pauses, paragraphs by paragraph pauses.

        The waveform is not normalised: every utterance keeps the generator's own level, so loudness does not
        jump between pieces (the reference scales each piece to full scale on its own).
        """
        if not plan:
            raise ValueError("the text has nothing to pronounce")
        speaker_ids = {u.speaker: self.speaker_id(u.speaker) for paragraph in plan for u in paragraph}
        # The unused-BERT noise comes from its own generator: seeded, one request is reproducible.
        generator = torch.Generator()
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        pieces: list[np.ndarray] = []
        with seeded_rng(params.seed, self.device):
            for paragraph_index, paragraph in enumerate(plan):
                for index, utterance in enumerate(paragraph):
                    if pieces:
                        pause = params.paragraph_pause if index == 0 else params.sentence_pause
                        pieces.append(np.zeros(int(round(pause * self.sampling_rate)), dtype=np.float32))
                    start = time.perf_counter()
                    prepared = self.prepare_parts(
                        utterance.parts,
                        style_text=params.style_text,
                        style_weight=params.style_weight,
                        generator=generator,
                    )
                    audio = self.infer_prepared(prepared, speaker_ids[utterance.speaker], params)
                    logger.debug(
                        "paragraph %d, utterance %d (%s): %d samples in %.3f s",
                        paragraph_index,
                        index,
                        "+".join(language for _, language in utterance.parts),
                        audio.size,
                        time.perf_counter() - start,
                    )
                    pieces.append(audio)
        return self.sampling_rate, np.concatenate(pieces).astype(np.float32, copy=False)

    def synthesize(
        self,
        text: str,
        speaker: str,
        language: str,
        params: SynthesisParams | None = None,
        *,
        timings: bool = False,
        **changes: Any,
    ) -> tuple[int, np.ndarray] | tuple[int, np.ndarray, streaming.Timings]:
        """Speak `text`: (sampling rate, float32 waveform), and with `timings` its `streaming.Timings` third.

        `language`: "ZH", "JP", "EN", "mix" (tagged parts, see `synthesis_plan.parse_mix`; `speaker` is the voice
        until the first [speaker] tag) or "auto" (parts identified by `text.language_id`). `params` (default: the
        defaults) with `changes` (`SynthesisParams` fields by name, e.g. `sdp_ratio=0.2, seed=1`) say how.
        """
        if timings:
            return streaming.synthesize_with_timings(self, text, speaker, language, params, **changes)
        params = SynthesisParams.checked(changes, base=params)
        self.speaker_id(speaker)
        return self.render(plan_text(text, speaker, language, params.split), params)

    def stream(
        self,
        text: str,
        speaker: str,
        language: str,
        params: SynthesisParams | None = None,
        *,
        chunk_frames: int | None = streaming.DEFAULT_CHUNK_FRAMES,
        **changes: Any,
    ) -> Iterator[np.ndarray]:
        """`synthesize`'s waveform as float32 chunks, sentence by sentence and within a sentence every
        `chunk_frames` latent frames (see streaming.py); joined, they equal `synthesize` with the same seed."""
        return streaming.stream(self, text, speaker, language, params, chunk_frames, **changes)

    def synthesize_parts(
        self, parts: Sequence[tuple[str, str]], speaker: str, params: SynthesisParams | None = None, **changes: Any
    ) -> tuple[int, np.ndarray]:
        """Speak an explicit list of (text, language) parts, language "ZH", "JP", "EN" or "auto" per part.

        Consecutive parts are joined at feature level into one generator pass; with `split`, sentence ends and
        line breaks inside the parts still start new utterances and paragraphs.
        """
        params = SynthesisParams.checked(changes, base=params)
        self.speaker_id(speaker)
        return self.render(plan_given_parts(parts, speaker, params.split), params)


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
    """Write with soundfile, atomically; the format follows the file extension. Integer formats get clipped."""
    import soundfile

    import atomic_io

    if subtype is None or not subtype.upper().startswith(("FLOAT", "DOUBLE")):
        audio = np.clip(audio, -1.0, 1.0)
    # The temporary file keeps the extension: soundfile picks the format by it.
    with atomic_io.atomic_path(path, suffix=Path(path).suffix, make_dirs=False) as tmp:
        soundfile.write(tmp, audio, sampling_rate, subtype=subtype)


def check_output(path: str, subtype: str | None) -> None:
    """Refuse an output that cannot be written, before any work (format, subtype, folder, permission); the
    ValueError names the argument and the fix."""
    import soundfile

    import atomic_io

    formats = soundfile.available_formats()
    extension = Path(path).suffix.lstrip(".").upper()
    if extension not in formats:
        known = ", ".join(f".{name.lower()}" for name in ("WAV", "FLAC", "OGG", "MP3") if name in formats)
        raise ValueError(f"-o/--output: {path} has no audio file extension soundfile knows; use {known}")
    if subtype is not None and not soundfile.check_format(extension, subtype.upper()):
        subtypes = ", ".join(soundfile.available_subtypes(extension))
        raise ValueError(
            f"--subtype: {subtype} cannot be written to a .{extension.lower()} file; use one of {subtypes}"
        )
    try:
        atomic_io.check_output_target(path, make_dirs=False)
    except ValueError as error:
        raise ValueError(f"-o/--output: {error}") from None


# --------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Bert-VITS2 2.3 text-to-speech inference")
    parser.add_argument("-m", "--model", required=True, help="G_*.pth checkpoint, export .safetensors or .onnx file")
    parser.add_argument("-c", "--config", help="model config.json (optional for an export file)")
    parser.add_argument("-t", "--text", required=True)
    parser.add_argument("-s", "--speaker", required=True, help="speaker name from the config's spk2id")
    parser.add_argument(
        "-l",
        "--language",
        default="ZH",
        help="ZH, JP, EN, mix ([speaker]<zh>…<en>…|… tagged text) or auto (each part's language identified)",
    )
    add_bert_dir_argument(parser)
    synthesis_params.add_arguments(parser)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (CUDA when available)")
    parser.add_argument("--subtype", default=None, help="soundfile subtype, e.g. PCM_16 (default) or FLOAT")
    parser.add_argument(
        "-o", "--output", required=True, help="output audio file in an existing folder (.wav, .flac, .ogg, .mp3)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = synthesis_params.from_arguments(args)
        check_output(args.output, args.subtype)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    try:
        start = time.perf_counter()
        synthesizer = load_synthesizer(
            args.model,
            args.config,
            device=settings.resolve_device(args.device),
            bert_dirs=parse_bert_dirs(args.bert_dir),
        )
        plan = plan_text(args.text, args.speaker, args.language, params.split)
        synthesizer.warm_up(plan)
        loaded = time.perf_counter()
        sampling_rate, audio = synthesizer.render(plan, params)
        elapsed = time.perf_counter() - loaded
        write_audio(args.output, audio, sampling_rate, args.subtype)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    duration = audio.size / sampling_rate
    logger.info("loaded the model and the text front ends in %.2f s", loaded - start)
    logger.info("wrote %s: %.2f s of audio in %.2f s (RTF %.3f)", args.output, duration, elapsed, elapsed / duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
