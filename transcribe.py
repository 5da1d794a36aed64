"""Transcribe sliced clips with a local Whisper folder: the ``path|speaker|LANG|text`` list preprocess_text reads.

Every ``.wav`` under ``--in-dir`` (as ``slice.py`` writes them: ``<in-dir>/<speaker>/<clip>.wav``) is recognised
with the Whisper checkpoint in ``--model`` through transformers, in batches, on the GPU when there is one::

    python3 transcribe.py --in-dir Data/mine/sliced --model models/whisper-small -o Data/mine/esd.list
    python3 transcribe.py --in-dir sliced --model whisper --language auto --device cuda --batch-size 16 -o esd.list

``--language auto`` picks ZH, JP or EN per clip from Whisper's own language token, restricted to those three
(the languages this package trains). A clip the model returns no text for is not listed; it goes to the report
(``<output>.report.txt``) instead. Nothing downloads: a folder that is missing or incomplete is an error that
says what to put there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import atomic_io

logger = logging.getLogger(__name__)

LANGUAGES = {"ZH": "zh", "JP": "ja", "EN": "en"}  # our tag -> Whisper's language code
WHISPER_SECONDS = 30.0  # Whisper's window: longer audio is cut off by its feature extractor
MODEL_FILES_HINT = (
    "a Whisper checkpoint folder as transformers saves it: config.json, model.safetensors (or "
    "pytorch_model.bin), generation_config.json, preprocessor_config.json and the tokenizer (tokenizer.json, "
    "or vocab.json + merges.txt) - for example a local copy of openai/whisper-small"
)


class ModelFolderError(ValueError):
    """The --model folder is missing or lacks a file transformers needs."""


@dataclass(frozen=True)
class Clip:
    path: Path
    speaker: str


@dataclass(frozen=True)
class Transcript:
    clip: Clip
    language: str  # ZH, JP or EN
    text: str


@dataclass
class Outcome:
    transcripts: list[Transcript]
    empty: list[Clip]  # clips the model returned no text for
    unreadable: list[tuple[Clip, str]]


def check_model_folder(folder: Path) -> None:
    """Raise :class:`ModelFolderError` naming the folder and what it must hold."""
    if not folder.is_dir():
        raise ModelFolderError(f"Whisper model folder not found: {folder}; put {MODEL_FILES_HINT} there")
    needed = {
        "config.json": ("config.json",),
        "weights": ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
        "preprocessor_config.json": ("preprocessor_config.json",),
        "tokenizer": ("tokenizer.json", "vocab.json"),
    }
    missing = [name for name, options in needed.items() if not any((folder / o).is_file() for o in options)]
    if missing:
        raise ModelFolderError(f"{folder} lacks {', '.join(missing)}: it must hold {MODEL_FILES_HINT}")
    try:  # transformers would load another model type's weights into a Whisper with only warnings
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ModelFolderError(f"{folder / 'config.json'} is not a model config ({error})") from None
    if model_type != "whisper":
        raise ModelFolderError(f"{folder} holds a {model_type!r} model, not Whisper: it must hold {MODEL_FILES_HINT}")


def find_clips(in_dir: Path, default_speaker: str | None = None) -> list[Clip]:
    """Every .wav under ``in_dir``; the speaker is its first folder (``default_speaker`` for files at the top)."""
    clips = []
    for path in sorted(in_dir.rglob("*.wav")):
        if path.name.startswith("."):  # a writer's temporary file
            continue
        relative = path.relative_to(in_dir)
        speaker = relative.parts[0] if len(relative.parts) > 1 else default_speaker or in_dir.resolve().name
        clips.append(Clip(path, speaker))
    return clips


def read_clip(path: Path, rate: int) -> np.ndarray:
    """Mono float32 at ``rate`` (Whisper's feature extractor wants 16 kHz)."""
    import soundfile

    audio, source_rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if source_rate != rate:
        import librosa

        mono = librosa.resample(mono, orig_sr=source_rate, target_sr=rate, res_type="soxr_hq").astype(np.float32)
    return mono


class Recogniser:
    """A Whisper checkpoint loaded from a local folder, on one device."""

    def __init__(self, folder: Path, device: str = "auto") -> None:
        import torch
        from safetensors import SafetensorError
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        import config

        check_model_folder(folder)
        self.device = torch.device(config.resolve_device(device))
        # fp16 halves the memory and time on a GPU; a CPU computes in fp32.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            self.processor = WhisperProcessor.from_pretrained(folder, local_files_only=True)
            model = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, SafetensorError) as error:  # a damaged file: say which folder, in one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelFolderError(f"cannot load the Whisper model in {folder}: {reason}") from None
        self.model = model.to(self.device, self.dtype).eval()
        self.rate = self.processor.feature_extractor.sampling_rate
        lang_to_id = getattr(self.model.generation_config, "lang_to_id", None) or {}
        self.language_ids = {tag: lang_to_id.get(f"<|{code}|>") for tag, code in LANGUAGES.items()}

    def features(self, audios: Sequence[np.ndarray]):
        inputs = self.processor.feature_extractor(
            list(audios), sampling_rate=self.rate, return_tensors="pt", return_attention_mask=True
        )
        return inputs.input_features.to(self.device, self.dtype), inputs.attention_mask.to(self.device)

    def detect(self, features) -> list[str]:
        """Per clip, the likeliest of ZH/JP/EN: transformers' language detection (Whisper's language token at the
        decoder's first step) over a copy of the generation config that knows only those three."""
        import copy

        known = {f"<|{LANGUAGES[tag]}|>": token for tag, token in self.language_ids.items() if token is not None}
        if not known:
            raise ModelFolderError("the model's generation_config.json has no lang_to_id: it cannot detect a language")
        generation_config = copy.deepcopy(self.model.generation_config)
        generation_config.lang_to_id = known
        tokens = self.model.detect_language(input_features=features, generation_config=generation_config)
        by_token = {token: tag for tag, token in self.language_ids.items()}
        return [by_token[int(token)] for token in tokens.reshape(-1).tolist()]

    def transcribe(self, audios: Sequence[np.ndarray], language: str) -> list[tuple[str, str]]:
        """(LANG, text) per clip; ``language`` is ZH, JP, EN or auto."""
        import torch

        features, mask = self.features(audios)
        tags = self.detect(features) if language == "auto" else [language] * len(audios)
        missing = sorted({t for t in tags if self.language_ids.get(t) is None})
        if missing:
            raise ModelFolderError(f"the model does not know language {missing[0]} (not in its generation config)")
        with torch.no_grad():
            tokens = self.model.generate(
                features, attention_mask=mask, language=[LANGUAGES[t] for t in tags], task="transcribe"
            )
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [(tag, " ".join(text.split())) for tag, text in zip(tags, texts)]


def batches(items: Sequence[Clip], size: int) -> Iterator[Sequence[Clip]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def transcribe_clips(
    clips: Sequence[Clip], recogniser: Recogniser, language: str, batch_size: int = 8, show_progress: bool = True
) -> Outcome:
    from tqdm import tqdm

    outcome = Outcome([], [], [])
    with tqdm(total=len(clips), desc="transcribe", unit="clip", disable=not show_progress) as bar:
        for batch in batches(clips, batch_size):
            readable, audios = [], []
            for clip in batch:
                try:
                    audio = read_clip(clip.path, recogniser.rate)
                except (RuntimeError, OSError, ValueError) as error:  # soundfile's LibsndfileError is a RuntimeError
                    outcome.unreadable.append((clip, str(error)))
                    continue
                if len(audio) > WHISPER_SECONDS * recogniser.rate:
                    logger.warning("%s: longer than %g s; Whisper hears only its start", clip.path, WHISPER_SECONDS)
                readable.append(clip)
                audios.append(audio)
            if audios:
                for clip, (tag, text) in zip(readable, recogniser.transcribe(audios, language)):
                    if text:
                        outcome.transcripts.append(Transcript(clip, tag, text))
                    else:
                        outcome.empty.append(clip)
            bar.update(len(batch))
    return outcome


def format_line(transcript: Transcript) -> str:
    text = transcript.text.replace("|", " ")  # the list's separator cannot appear in a field
    return f"{transcript.clip.path.as_posix()}|{transcript.clip.speaker}|{transcript.language}|{text}\n"


def report_path(output: Path) -> Path:
    return output.with_name(output.name + ".report.txt")


def write_outputs(outcome: Outcome, output: Path) -> Path:
    """The list, and beside it the report of what was left out; returns the report's path."""
    atomic_io.atomic_write_text(output, "".join(format_line(t) for t in outcome.transcripts))
    report = report_path(output)
    lines = [f"{clip.path.as_posix()}\tno text recognised\n" for clip in outcome.empty]
    lines += [f"{clip.path.as_posix()}\tunreadable: {reason}\n" for clip, reason in outcome.unreadable]
    atomic_io.atomic_write_text(report, "".join(lines))
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-dir", "--in_dir", dest="in_dir", required=True, help="folder of clips (<speaker>/*.wav)")
    parser.add_argument("--model", required=True, help="local Whisper folder (transformers layout)")
    parser.add_argument("--language", default="auto", choices=("ZH", "JP", "EN", "auto"), help="language of the clips")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--speaker", help="speaker of clips directly in --in-dir (default: its folder name)")
    parser.add_argument("-o", "--output", required=True, help="list to write: path|speaker|LANG|text")
    return parser.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> list[Clip]:
    """Every argument, before the model loads; raises ``ValueError`` naming the argument. Returns the clips."""
    import config

    in_dir, output = Path(args.in_dir), Path(args.output)
    if not in_dir.is_dir():
        raise ValueError(f"--in-dir: clip folder not found: {in_dir}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: give 1 or more, got {args.batch_size}")
    for target in (output, report_path(output)):
        try:
            atomic_io.check_output_target(target)
        except ValueError as error:
            raise ValueError(f"-o/--output: {error}") from None
    try:
        config.resolve_device(args.device)
        check_model_folder(Path(args.model))
    except ModelFolderError as error:
        raise ValueError(f"--model: {error}") from None
    except ValueError as error:
        raise ValueError(f"--device: {error}") from None
    clips = find_clips(in_dir, args.speaker)
    if not clips:
        raise ValueError(f"--in-dir: no .wav clips under {in_dir} (slice.py writes them)")
    return clips


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    try:
        clips = check_arguments(args)
        recogniser = Recogniser(Path(args.model), args.device)
        outcome = transcribe_clips(clips, recogniser, args.language, args.batch_size)
    except ModelFolderError as error:  # found only when loading: a damaged file, a language the model lacks
        logger.error("--model: %s", error)
        return 2
    except ValueError as error:
        logger.error("%s", error)
        return 2
    report = write_outputs(outcome, Path(args.output))
    logger.info("%d clip(s) transcribed into %s", len(outcome.transcripts), args.output)
    left_out = len(outcome.empty) + len(outcome.unreadable)
    if left_out:
        logger.warning("%d clip(s) left out (no text or unreadable): see %s", left_out, report)
    return 1 if outcome.unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
