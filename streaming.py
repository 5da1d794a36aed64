"""Streamed synthesis and phone/word timings for `infer.Synthesizer`.

Streaming: a plan is spoken utterance by utterance (the pauses between them are chunks of their own), and
within an utterance the text encoder, durations and flow run once on the whole utterance (the flow's attention
sees every frame) while the HiFi-GAN decoder runs on windows of the latent. Each window is widened on both sides
by the decoder's receptive field, computed from the config (`decoder_receptive_field`), and only its centre is
kept, so the chunks joined equal `Synthesizer.synthesize` with the same seed (to float rounding). The stream's
first windows are smaller (a quarter of `chunk_frames`, doubling), so that its first audio comes early.

Timings: every phone's symbol, start and end in seconds (the generator's own durations, in frames of one hop),
and every character (ZH, JP) or word (EN) of the normalised text through the front end's `word2ph`, with the
sentence and paragraph pauses as entries of their own. The entries tile the audio: each starts where the last
ended, and the last ends at the audio's end (to one hop).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from synthesis_params import SynthesisParams
from synthesis_plan import Plan, Utterance

if TYPE_CHECKING:
    from infer import PreparedText, Synthesizer

# Latent frames decoded per streamed chunk (the default): ~0.75 s of audio at 44.1 kHz with a hop of 512; the
# overlap (2 × 15 frames for 2.3's decoder) adds ~45 % decoder work.
DEFAULT_CHUNK_FRAMES = 64
# The stream's first windows start at chunk_frames / FIRST_WINDOW_DIVISOR frames and double up to chunk_frames:
# the first audio comes after a quarter of the decoder work (bench/infer.py: 0.9 s instead of 1.3 s for a
# sentence on one thread here), and the larger windows after it are decoded while the first ones play.
FIRST_WINDOW_DIVISOR = 4
PAUSE_SYMBOL = {"sentence": "<sentence pause>", "paragraph": "<paragraph pause>"}


# --------------------------------------------------------------------------------------------------------------
# The decoder's receptive field


def _conv_radius(kernel: int, dilation: int = 1) -> float:
    return (kernel - 1) * dilation / 2


def decoder_receptive_field(model: Any) -> int:
    """Latent frames on each side of a frame that reach its output samples through the HiFi-GAN decoder.

    `model`: the config's model section (`ModelConfig.model`). Summed layer by layer, each radius taken in the
    samples of the rate the layer runs at and converted to frames: conv_pre (kernel 7), per upsampling stage
    the transposed convolution and the widest of the stage's residual blocks (type 1: a dilated and a plain
    convolution per dilation; type 2: the dilated one), then conv_post (kernel 7). Rounded up: a bound.
    """
    frames = _conv_radius(7)  # conv_pre, at the latent's rate
    samples_per_frame = 1
    for rate, kernel in zip(model.upsample_rates, model.upsample_kernel_sizes):
        padding = (kernel - rate) // 2
        # Output j of a transposed conv reads inputs ceil((j + p - k + 1) / r) .. floor((j + p) / r).
        frames += (max(kernel - 1 - padding, padding) + rate - 1) / rate / samples_per_frame
        samples_per_frame *= rate
        widest = 0.0
        for block_kernel, dilations in zip(model.resblock_kernel_sizes, model.resblock_dilation_sizes):
            per_dilation = [_conv_radius(block_kernel, d) for d in dilations]
            if str(model.resblock) == "1":
                per_dilation = [radius + _conv_radius(block_kernel) for radius in per_dilation]
            widest = max(widest, sum(per_dilation))
        frames += widest / samples_per_frame
    frames += _conv_radius(7) / samples_per_frame  # conv_post
    return math.ceil(frames)


def hop_of(model: Any) -> int:
    """Output samples per latent frame."""
    return math.prod(model.upsample_rates)


def first_window(chunk_frames: int) -> int:
    """Frames of a stream's first decoder window (see FIRST_WINDOW_DIVISOR)."""
    return max(1, chunk_frames // FIRST_WINDOW_DIVISOR)


def window_bounds(frames: int, chunk_frames: int, first_frames: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of the decoder windows over `frames` latent frames: `chunk_frames` each (the last: the
    rest), or starting at `first_frames` and doubling up to `chunk_frames`."""
    bounds: list[tuple[int, int]] = []
    start, size = 0, min(first_frames or chunk_frames, chunk_frames)
    while start < frames:
        stop = min(start + size, frames)
        bounds.append((start, stop))
        start, size = stop, min(2 * size, chunk_frames)
    return bounds


def decode_in_windows(
    decoder: torch.nn.Module,
    z: Tensor,
    g: Tensor | None,
    chunk_frames: int,
    overlap: int,
    hop: int,
    first_frames: int | None = None,
) -> Iterator[Tensor]:
    """The decoder's output for latent z [1, c, t] in pieces of `window_bounds` (chunk_frames, first_frames).

    Each window reaches `overlap` frames further on both sides; those samples are cut off again. The decoder's
    layers are shift-equivariant (a frame moves the output by `hop`), so a window starting at frame a gives the
    full output's samples from a · hop on.
    """
    frames = z.shape[-1]
    for start, stop in window_bounds(frames, chunk_frames, first_frames):
        low, high = max(0, start - overlap), min(frames, stop + overlap)
        with torch.no_grad():
            out = decoder(z[:, :, low:high], g=g)[0, 0]  # [(high - low) · hop (+ the last layers' excess)]
        first = (start - low) * hop
        yield out[first : (stop - low) * hop] if stop < frames else out[first:]


# --------------------------------------------------------------------------------------------------------------
# One utterance


@dataclass
class Timings:
    """Phone and word timings of one synthesis, in seconds from the start of the audio."""

    sampling_rate: int
    duration: float = 0.0
    # {"symbol", "start", "end"}; pauses between utterances carry PAUSE_SYMBOL's symbols.
    phones: list[dict[str, Any]] = field(default_factory=list)
    # {"text", "start", "end", "language", "kind"}: kind "word" (a character of ZH/JP, a word of EN), "pad" (the
    # front end's silence around a part, text "") or "sentence pause"/"paragraph pause" (text "").
    words: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class UtteranceLatent:
    z: Tensor  # [1, inter, t_y], masked
    g: Tensor  # [1, gin, 1]
    phone_frames: Tensor  # [t_x] frames per phone (long)


def utterance_latent(net: Any, prepared: PreparedText, speaker_id: int, params: SynthesisParams) -> UtteranceLatent:
    """`SynthesizerTrn.infer` up to the decoder, drawing torch's noise in the same order as it."""
    device = prepared.phones.device
    with torch.no_grad():
        g = net.emb_g(torch.tensor([speaker_id], dtype=torch.long, device=device)).unsqueeze(-1)  # [1, gin, 1]
        prior = net.infer_frame_prior(
            prepared.phones.unsqueeze(0),
            torch.tensor([prepared.phones.numel()], dtype=torch.long, device=device),
            g,
            prepared.tones.unsqueeze(0),
            prepared.lang_ids.unsqueeze(0),
            prepared.bert.unsqueeze(0),
            prepared.ja_bert.unsqueeze(0),
            prepared.en_bert.unsqueeze(0),
            length_scale=params.length_scale,
            noise_scale_w=params.noise_scale_w,
            sdp_ratio=params.sdp_ratio,
        )
        z_p = prior.m_p + torch.randn_like(prior.m_p) * torch.exp(prior.logs_p) * params.noise_scale
        z = net.flow(z_p, prior.y_mask, g=g, reverse=True) * prior.y_mask
    return UtteranceLatent(z, g, prior.attn[0, 0].sum(dim=0).round().long())


def supports_windows(net: Any) -> bool:
    """Whether the generator exposes its pieces (torch); an ONNX graph decodes an utterance in one run."""
    return all(hasattr(net, name) for name in ("infer_frame_prior", "flow", "dec", "emb_g"))


def _checked(audio: np.ndarray) -> np.ndarray:
    if not np.isfinite(audio).all():
        raise RuntimeError("the generator produced non-finite samples (damaged or incomplete weights?)")
    return audio


def _utterance_chunks(
    synth: Synthesizer,
    prepared: PreparedText,
    speaker_id: int,
    params: SynthesisParams,
    chunk_frames: int | None,
    on_frames: Callable[[Tensor], None] | None,
    first_frames: int | None = None,
) -> Iterator[np.ndarray]:
    net = synth.net_g
    if not supports_windows(net):
        if on_frames is not None:
            raise ValueError("timings need the torch generator (a checkpoint or .safetensors export), not .onnx")
        yield synth.infer_prepared(prepared, speaker_id, params)
        return
    latent = utterance_latent(net, prepared, speaker_id, params)
    if on_frames is not None:
        on_frames(latent.phone_frames)
    model = synth.config.model
    frames = latent.z.shape[-1]
    step = frames if chunk_frames is None else chunk_frames
    overlap = decoder_receptive_field(model)
    for piece in decode_in_windows(net.dec, latent.z, latent.g, step, overlap, hop_of(model), first_frames):
        yield _checked(piece.float().cpu().numpy())


# --------------------------------------------------------------------------------------------------------------
# A whole plan


def speak_plan(
    synth: Synthesizer,
    plan: Plan,
    params: SynthesisParams,
    chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
    timings: Timings | None = None,
) -> Iterator[np.ndarray]:
    """Float32 chunks of `plan` spoken as `Synthesizer.render` speaks it (same seeds, same draws, same pauses).

    `chunk_frames` None decodes each utterance in one window; otherwise the first utterance's windows start
    smaller (`first_window`). With `timings`, its phones and words are filled in as the chunks come (the torch
    generator only).
    """
    from infer import seeded_rng

    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    if not plan:
        raise ValueError("the text has nothing to pronounce")
    speaker_ids = {u.speaker: synth.speaker_id(u.speaker) for paragraph in plan for u in paragraph}
    generator = torch.Generator()  # the unused-BERT noise, as in render
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    samples = 0
    with seeded_rng(params.seed, synth.device):
        for paragraph in plan:
            for index, utterance in enumerate(paragraph):
                if samples:
                    kind = "paragraph" if index == 0 else "sentence"
                    pause = params.paragraph_pause if kind == "paragraph" else params.sentence_pause
                    silence = np.zeros(int(round(pause * synth.sampling_rate)), dtype=np.float32)
                    if timings is not None:
                        _add_pause(timings, kind, samples, silence.size)
                    samples += silence.size
                    if silence.size:
                        yield silence
                prepared = synth.prepare_parts(
                    utterance.parts, style_text=params.style_text, style_weight=params.style_weight, generator=generator
                )
                on_frames = None
                if timings is not None:
                    on_frames = functools.partial(_add_utterance, timings, synth, utterance, prepared, offset=samples)
                # Only the stream's start waits on a window; later utterances decode while audio plays.
                first_frames = first_window(chunk_frames) if chunk_frames is not None and not samples else None
                for chunk in _utterance_chunks(
                    synth, prepared, speaker_ids[utterance.speaker], params, chunk_frames, on_frames, first_frames
                ):
                    samples += chunk.size
                    yield chunk
    if timings is not None:
        timings.duration = samples / synth.sampling_rate


def stream(
    synth: Synthesizer,
    text: str,
    speaker: str,
    language: str,
    params: SynthesisParams | None = None,
    chunk_frames: int | None = DEFAULT_CHUNK_FRAMES,
    **changes: Any,
) -> Iterator[np.ndarray]:
    """`synth.synthesize`'s audio as float32 chunks, each yielded as soon as it is decoded."""
    from synthesis_plan import plan_text

    params = SynthesisParams.checked(changes, base=params)
    synth.speaker_id(speaker)
    plan = plan_text(text, speaker, language, params.split)
    return speak_plan(synth, plan, params, chunk_frames)


def synthesize_with_timings(
    synth: Synthesizer, text: str, speaker: str, language: str, params: SynthesisParams | None = None, **changes: Any
) -> tuple[int, np.ndarray, Timings]:
    """`synth.synthesize`'s (sampling rate, waveform) and its `Timings`."""
    from synthesis_plan import plan_text

    params = SynthesisParams.checked(changes, base=params)
    synth.speaker_id(speaker)
    timings = Timings(synth.sampling_rate)
    plan = plan_text(text, speaker, language, params.split)
    audio = np.concatenate(list(speak_plan(synth, plan, params, None, timings)))
    return synth.sampling_rate, audio.astype(np.float32, copy=False), timings


# --------------------------------------------------------------------------------------------------------------
# Timings


def _add_pause(timings: Timings, kind: str, start_sample: int, length: int) -> None:
    rate = timings.sampling_rate
    start, end = start_sample / rate, (start_sample + length) / rate
    timings.phones.append({"symbol": PAUSE_SYMBOL[kind], "start": start, "end": end})
    timings.words.append({"text": "", "start": start, "end": end, "language": None, "kind": f"{kind} pause"})


def _part_units(synth: Synthesizer, text: str, language: str) -> list[tuple[str, str, int]]:
    """(text, kind, phones) of a part's units in the order of its phones (blanks included when the model adds
    them): the leading pad, each character (ZH, JP) or word (EN), the trailing pad."""
    from text.cleaner import _english_tokenizer, clean_text

    bert_dir = synth.bert_dirs.get(language)
    norm_text, _phones, _tones, word2ph = clean_text(text, language, bert_dir=bert_dir)
    add_blank = bool(synth.config["data"].get("add_blank", True))
    counts = [2 * count for count in word2ph] if add_blank else list(word2ph)
    if add_blank:
        counts[0] += 1  # the leading blank
    inner = counts[1:-1]
    labels = _unit_labels(norm_text, language, len(inner), lambda: _english_tokenizer(bert_dir))
    units = [("", "pad", counts[0])]
    position = 0
    for label, size in labels:
        units.append((label, "word", sum(inner[position : position + size])))
        position += size
    units.append(("", "pad", counts[-1]))
    return units


def _unit_labels(norm_text: str, language: str, entries: int, tokenizer: Callable[[], Any]) -> list[tuple[str, int]]:
    """(text, word2ph entries) per unit: the characters of ZH/JP text, the words of EN text (its tokens grouped
    as the English front end groups them)."""
    if language == "EN":
        from text.english import text_to_words

        words = text_to_words(norm_text, tokenizer())
        labels = [("".join(unit.text for unit in word), sum(unit.n_tokens for unit in word)) for word in words]
    else:
        labels = [(character, 1) for character in norm_text]
    if sum(size for _, size in labels) != entries:
        raise RuntimeError(f"word2ph has {entries} entries for {len(labels)} units of {norm_text!r}")
    return labels


def _add_utterance(
    timings: Timings, synth: Synthesizer, utterance: Utterance, prepared: PreparedText, frames: Tensor, offset: int
) -> None:
    from infer import SKIP_END, SKIP_START
    from text.symbols import symbols

    rate, hop = timings.sampling_rate, hop_of(synth.config.model)
    ends = torch.cumsum(frames, 0).tolist()
    starts = [0, *ends[:-1]]

    def seconds(frame: int) -> float:
        return (offset + frame * hop) / rate

    for phone_id, start, end in zip(prepared.phones.tolist(), starts, ends):
        timings.phones.append({"symbol": symbols[phone_id], "start": seconds(start), "end": seconds(end)})
    position = 0
    last = len(utterance.parts) - 1
    for index, (text, language) in enumerate(utterance.parts):
        units = _part_units(synth, text, language)
        # As join_prepared trims: every part but the first loses its leading pad, every part but the last its
        # trailing one (exactly the pads' SKIP_START / SKIP_END phones).
        if index > 0:
            units = _drop_phones(units, SKIP_START, from_start=True)
        if index < last:
            units = _drop_phones(units, SKIP_END, from_start=False)
        for label, kind, count in units:
            stop = position + count
            start_frame = starts[position] if position < len(starts) else ends[-1]
            end_frame = ends[stop - 1] if count else start_frame
            timings.words.append(
                {
                    "text": label,
                    "start": seconds(start_frame),
                    "end": seconds(end_frame),
                    "language": language,
                    "kind": kind,
                }
            )
            position = stop
    if position != len(ends):
        raise RuntimeError(f"the words cover {position} phones of {len(ends)} in {utterance.parts!r}")


def _drop_phones(units: Sequence[tuple[str, str, int]], count: int, from_start: bool) -> list[tuple[str, str, int]]:
    units = list(units)
    index = 0 if from_start else -1
    label, kind, size = units[index]
    if kind != "pad" or size != count:
        raise RuntimeError(f"expected a pad of {count} phones to trim, found {units[index]!r}")
    del units[index]
    return units
