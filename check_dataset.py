"""Check a training filelist before training: every problem, with the ``file:line`` it comes from.

Usage::

    python check_dataset.py                                   # the lists named by the model config of config.yml
    python check_dataset.py Data/demo/filelists/train.list --config Data/demo/config.json
    python check_dataset.py --fast ...                        # headers and shapes only, no audio decoding

Exit status 0 when nothing is wrong, 1 when any problem was found, 2 on a usage error. The checker is strictly
read-only: it never writes, caches or fixes anything.

From Python: :func:`check_filelist` returns a list of :class:`Problem`; :func:`assert_dataset_ok` raises
:class:`DatasetError` listing them (the fast variant a training script calls before it starts).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pickle
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile
import torch

import config
from data_utils import (
    DEFAULT_BUCKET_BOUNDARIES,
    FILELIST_FIELDS,
    FilelistEntry,
    bert_path_for,
    blanked_word2ph,
    frames_from_file_size,
    parse_filelist_line,
)

logger = logging.getLogger(__name__)

__all__ = ["Problem", "DatasetError", "check_filelist", "check_filelist_fast", "assert_dataset_ok", "main"]

# Problem kinds (stable identifiers; tests and scripts may match on them).
MISSING_FILELIST = "missing-filelist"
MALFORMED = "malformed-line"
MISSING_AUDIO = "missing-audio"
UNREADABLE_AUDIO = "unreadable-audio"
SAMPLING_RATE = "wrong-sampling-rate"
NOT_MONO = "not-mono"
EMPTY_AUDIO = "empty-audio"
SILENT_AUDIO = "silent-audio"
TOO_SHORT = "too-short"
TOO_LONG = "too-long"
DUPLICATE = "duplicate-audio"
UNKNOWN_SPEAKER = "unknown-speaker"
UNKNOWN_LANGUAGE = "unknown-language"
UNKNOWN_PHONE = "unknown-phone"
EMPTY_TEXT = "empty-text"
TEXT_LENGTH = "text-length"
TONE_COUNT = "tone-count"
TONE_RANGE = "tone-range"
WORD2PH_VALUE = "word2ph-value"
WORD2PH_COUNT = "word2ph-count"
WORD2PH_SUM = "word2ph-sum"
MISSING_BERT = "missing-bert"
BAD_BERT = "bad-bert"

BERT_DIM = 1024


@dataclass(frozen=True)
class Problem:
    where: str  # "path/to/list:line"
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: [{self.kind}] {self.message}"


class DatasetError(ValueError):
    """Raised by :func:`assert_dataset_ok`; ``problems`` holds everything found."""

    def __init__(self, problems: Sequence[Problem], shown: int = 20):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:shown]]
        if len(self.problems) > shown:
            lines.append(f"... and {len(self.problems) - shown} more")
        super().__init__(
            f"{len(self.problems)} problem(s) in the training data (run check_dataset.py for the full list):\n"
            + "\n".join(lines)
        )


@dataclass(frozen=True)
class _Settings:
    """What the checks need from the model config."""

    sampling_rate: int
    hop_length: int
    add_blank: bool
    min_text_len: int
    max_text_len: int
    spk2id: Mapping[str, int]
    boundaries: tuple[int, ...]


def _settings(hparams: Any, boundaries: Sequence[int] | None) -> _Settings:
    """Accepts the whole model config (ModelConfig or dict) or just its ``data`` section."""
    data = config.as_data_config(hparams)
    if not data.spk2id:
        raise ValueError("model config has no data.spk2id (run preprocess_text.py to fill it in)")
    return _Settings(
        sampling_rate=data.sampling_rate,
        hop_length=data.hop_length,
        add_blank=data.add_blank,
        min_text_len=data.min_text_len,
        max_text_len=data.max_text_len,
        spk2id=dict(data.spk2id),
        boundaries=tuple(boundaries if boundaries is not None else DEFAULT_BUCKET_BOUNDARIES),
    )


# --------------------------------------------------------------------------------------------- text checks


@functools.lru_cache(maxsize=1)
def _symbol_tables() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    from text.symbols import (
        language_id_map,
        num_en_tones,
        num_ja_tones,
        num_zh_tones,
        symbol_to_id,
    )

    return symbol_to_id, dict(language_id_map), {"ZH": num_zh_tones, "JP": num_ja_tones, "EN": num_en_tones}


def _check_text(entry: FilelistEntry, where: str, settings: _Settings) -> Iterable[Problem]:
    symbol_to_id, language_ids, tone_counts = _symbol_tables()
    phones, tones, word2ph = entry.phones, entry.tones, entry.word2ph

    if entry.speaker not in settings.spk2id:
        known = sorted(settings.spk2id)
        yield Problem(where, UNKNOWN_SPEAKER, f"speaker {entry.speaker!r} is not in data.spk2id {known}")
    if entry.language not in language_ids:
        yield Problem(where, UNKNOWN_LANGUAGE, f"language {entry.language!r} is not one of {sorted(language_ids)}")
    if not phones:
        yield Problem(where, EMPTY_TEXT, "no phones")
        return
    if not settings.min_text_len <= len(phones) <= settings.max_text_len:
        yield Problem(
            where,
            TEXT_LENGTH,
            f"{len(phones)} phones, outside [{settings.min_text_len}, {settings.max_text_len}]: the loader skips it",
        )
    unknown = sorted({p for p in phones if p not in symbol_to_id})
    if unknown:
        yield Problem(where, UNKNOWN_PHONE, f"phone(s) not in the symbol table: {' '.join(unknown)}")
    if len(tones) != len(phones):
        yield Problem(where, TONE_COUNT, f"{len(phones)} phones but {len(tones)} tones")
    if entry.language in tone_counts:
        n_tones = tone_counts[entry.language]
        bad = sorted({t for t in tones if not 0 <= t < n_tones})
        if bad:
            yield Problem(where, TONE_RANGE, f"tone(s) {bad} outside [0, {n_tones - 1}] for {entry.language}")
    if any(n < 0 for n in word2ph):
        yield Problem(where, WORD2PH_VALUE, f"negative word2ph entries: {word2ph}")
    if entry.language == "ZH" and len(word2ph) != len(entry.norm_text) + 2:
        # The Chinese BERT gives one vector per character plus [CLS]/[SEP]; bert_gen needs one word2ph each.
        yield Problem(
            where,
            WORD2PH_COUNT,
            f"{len(word2ph)} word2ph entries for {len(entry.norm_text)} characters of text (expected characters + 2)",
        )
    n_loader = 2 * len(phones) + 1 if settings.add_blank else len(phones)
    w2p = blanked_word2ph(word2ph) if settings.add_blank else list(word2ph)
    if sum(w2p) != n_loader:
        yield Problem(
            where,
            WORD2PH_SUM,
            f"sum(word2ph) = {sum(w2p)} but the loader sees {n_loader} phones"
            + (" (both after blank insertion)" if settings.add_blank else ""),
        )


# --------------------------------------------------------------------------------------------- audio checks


def _check_audio(entry: FilelistEntry, where: str, settings: _Settings, fast: bool) -> Iterable[Problem]:
    path = entry.wav
    if not os.path.isfile(path):
        yield Problem(where, MISSING_AUDIO, f"audio file not found: {path}")
        return
    try:
        info = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        yield Problem(where, UNREADABLE_AUDIO, f"cannot read {path}: {err}")
        return
    if info.samplerate != settings.sampling_rate:
        yield Problem(
            where,
            SAMPLING_RATE,
            f"{path}: {info.samplerate} Hz, the config expects {settings.sampling_rate} Hz (run resample.py)",
        )
    if info.channels != 1:
        yield Problem(where, NOT_MONO, f"{path}: {info.channels} channels, training needs mono")
    if info.frames == 0:
        yield Problem(where, EMPTY_AUDIO, f"{path}: no samples")
        return

    frames = frames_from_file_size(path, settings.hop_length)
    low, high = settings.boundaries[0], settings.boundaries[-1]
    if frames <= low:
        yield Problem(where, TOO_SHORT, f"{path}: about {frames} frames, the shortest bucket starts above {low}")
    elif frames > high:
        yield Problem(where, TOO_LONG, f"{path}: about {frames} frames, the longest bucket ends at {high}")

    if not fast:
        yield from _check_samples(path, where)


def _check_samples(path: str, where: str) -> Iterable[Problem]:
    try:
        audio, _ = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        yield Problem(where, UNREADABLE_AUDIO, f"cannot decode {path}: {err}")
        return
    if not np.isfinite(audio).all():
        yield Problem(where, UNREADABLE_AUDIO, f"{path}: contains NaN or infinite samples")
    elif audio.size and float(np.abs(audio).max()) == 0.0:
        yield Problem(where, SILENT_AUDIO, f"{path}: every sample is zero")


# --------------------------------------------------------------------------------------------- BERT checks


def _check_bert(entry: FilelistEntry, where: str, settings: _Settings) -> Iterable[Problem]:
    path = bert_path_for(entry.wav)
    if not path.is_file():
        yield Problem(where, MISSING_BERT, f"{path} not found (run bert_gen.py)")
        return
    try:
        # mmap: only the header and shape are touched, and nothing is written.
        features = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        yield Problem(where, BAD_BERT, f"{path}: cannot load ({err})")
        return
    n_phones = 2 * len(entry.phones) + 1 if settings.add_blank else len(entry.phones)
    shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
    if shape != (BERT_DIM, n_phones):
        found = shape if shape is not None else type(features).__name__
        yield Problem(where, BAD_BERT, f"{path}: shape {found}, expected ({BERT_DIM}, {n_phones}) (re-run bert_gen.py)")


# --------------------------------------------------------------------------------------------- driver


def _check_line(line: str, where: str, settings: _Settings, fast: bool, seen: dict[str, str]) -> list[Problem]:
    try:
        entry = parse_filelist_line(line, where)
    except ValueError as err:
        return [Problem(where, MALFORMED, str(err).removeprefix(f"{where}: "))]
    problems: list[Problem] = []
    key = os.path.normpath(entry.wav)
    if key in seen:
        problems.append(Problem(where, DUPLICATE, f"{entry.wav} is already listed at {seen[key]}"))
    else:
        seen[key] = where
    problems.extend(_check_text(entry, where, settings))
    problems.extend(_check_audio(entry, where, settings, fast))
    problems.extend(_check_bert(entry, where, settings))
    return problems


def check_filelist(
    filelist: str | os.PathLike,
    hparams: Any,
    boundaries: Sequence[int] | None = None,
    fast: bool = False,
) -> list[Problem]:
    """Every problem in one filelist, in line order.

    ``hparams``: the model config (ModelConfig or dict) or its ``data`` section. ``boundaries``: the sampler's
    bucket boundaries in frames (default: the reference training script's). ``fast`` reads only audio headers
    and BERT shapes; the full check also decodes every clip (truncated files, NaNs, all-zero audio).
    """
    settings = _settings(hparams, boundaries)
    problems: list[Problem] = []
    try:
        handle = open(filelist, encoding="utf-8")
    except OSError as err:
        return [Problem(f"{filelist}:0", MISSING_FILELIST, f"cannot open filelist: {err}")]
    seen: dict[str, str] = {}
    with handle:
        lines = list(handle)
    for number, line in enumerate(_progress(lines, str(filelist)), start=1):
        if line.strip():
            problems.extend(_check_line(line, f"{filelist}:{number}", settings, fast, seen))
    return problems


def check_filelist_fast(
    filelist: str | os.PathLike, hparams: Any, boundaries: Sequence[int] | None = None
) -> list[Problem]:
    """:func:`check_filelist` without decoding audio: cheap enough to run before every training start."""
    return check_filelist(filelist, hparams, boundaries, fast=True)


def assert_dataset_ok(
    filelists: Iterable[str | os.PathLike], hparams: Any, boundaries: Sequence[int] | None = None, fast: bool = True
) -> None:
    """Raise :class:`DatasetError` listing the problems of all ``filelists``; silent when they are clean."""
    problems = [p for f in filelists for p in check_filelist(f, hparams, boundaries, fast=fast)]
    if problems:
        raise DatasetError(problems)


def _progress(lines: list[str], name: str) -> Iterable[str]:
    if len(lines) < 200 or not sys.stderr.isatty():
        return lines
    from tqdm import tqdm

    return tqdm(lines, desc=f"checking {os.path.basename(name)}", unit="line")


# --------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Report every problem in Bert-VITS2 training filelists (read-only). "
        f"Line format: {'|'.join(FILELIST_FIELDS)}.",
    )
    parser.add_argument(
        "filelists",
        nargs="*",
        help="filelists to check (default: data.training_files and data.validation_files of the model config)",
    )
    parser.add_argument("-c", "--config", help="model config JSON (default: train_ms.config_path of config.yml)")
    parser.add_argument("--yml", help="global settings file (default: $BV2_CONFIG or ./config.yml)")
    parser.add_argument("--fast", action="store_true", help="headers and shapes only; do not decode the audio")
    parser.add_argument(
        "--boundaries",
        type=int,
        nargs="+",
        default=None,
        help=f"bucket boundaries in frames (default: {' '.join(map(str, DEFAULT_BUCKET_BOUNDARIES))})",
    )
    return parser.parse_args(argv)


def _default_model_config(yml: str | None) -> str:
    return config.load_config(yml).train_ms.config_path


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    config_path = args.config or _default_model_config(args.yml)
    try:
        hparams = config.load_model_config(config_path)
    except (OSError, ValueError) as err:
        logger.error("cannot read the model config %s: %s", config_path, err)
        return 2
    filelists = args.filelists or [f for f in (hparams.data.training_files, hparams.data.validation_files) if f]
    if not filelists:
        logger.error("no filelist given and the model config names none")
        return 2

    problems: list[Problem] = []
    for filelist in filelists:
        found = check_filelist(filelist, hparams, args.boundaries, fast=args.fast)
        for problem in found:
            sys.stdout.write(f"{problem}\n")
        logger.info("%s: %d problem(s)", filelist, len(found))
        problems.extend(found)
    if problems:
        logger.error("%d problem(s) found in %d filelist(s)", len(problems), len(filelists))
        return 1
    logger.info("no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
