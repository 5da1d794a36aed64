"""Clean a transcription list, split it into training and validation lists, and fill in the speaker table.

Input, one utterance per line: ``path/to/clip.wav|speaker|language|text`` (language ZH, JP or EN).

1. clean (g2p) every line with ``text.cleaner.clean_text`` into
   ``wav|speaker|language|norm_text|phones|tones|word2ph`` (the cleaned list); ``--no-clean`` re-uses it;
2. drop repeated audio paths and missing audio files;
3. per (speaker, language) group take ``val_per_lang`` random utterances for validation (fixed seed), then cap
   the validation list at ``max_val_total`` (the surplus goes back to training). The reference groups by
   language only, so a speaker could be missing from validation; grouping by both keeps every voice there;
4. write ``spk2id`` (speakers numbered in order of first appearance), ``n_speakers``, ``training_files``,
   ``validation_files`` and ``version`` into the model config JSON.

Every line that cannot be used is reported as ``file:line: reason`` (the transcription's line), with exit
status 1 — and then nothing is written: the cleaned list, both lists and the model config stay as they were
(``--drop-bad-lines`` writes the usable lines anyway). Every file is written atomically.

Defaults come from the ``preprocess_text`` section of ``config.yml`` (paths relative to ``dataset_path``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import atomic_io
import config
from text.bert_features import add_bert_dir_argument, parse_bert_dirs
from text.symbols import LANGUAGES

logger = logging.getLogger(__name__)

MODEL_VERSION = config.MODEL_CONFIG_VERSION
DEFAULT_SEED = 1234

Cleaner = Callable[[str, str], tuple[str, list[str], list[int], list[int]]]


@dataclass
class Report:
    """Problems found, each as ``file:line: reason``."""

    problems: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.problems.append(f"{where}: {reason}")
        logger.error("%s: %s", where, reason)


def format_cleaned_line(wav: str, speaker: str, language: str, norm_text: str, phones, tones, word2ph) -> str:
    return (
        "|".join(
            [
                wav,
                speaker,
                language,
                norm_text,
                " ".join(phones),
                " ".join(str(t) for t in tones),
                " ".join(str(n) for n in word2ph),
            ]
        )
        + "\n"
    )


def _default_cleaner(bert_dirs: Mapping[str, str] | None = None) -> Cleaner:
    """``text.cleaner.clean_text``; English words follow the tokenizer of the BERT folder given for the language."""
    from text.cleaner import clean_text

    dirs = dict(bert_dirs or {})
    return lambda text, language: clean_text(text, language, bert_dir=dirs.get(language))


Numbered = list[tuple[str, str]]  # (where: "file:line", line)


def clean_transcription(transcription_path: str, report: Report, cleaner: Cleaner | None = None) -> Numbered:
    """The cleaned lines, each with the ``file:line`` of its transcription line. Bad lines go to ``report``."""
    from tqdm import tqdm

    cleaner = cleaner or _default_cleaner()
    with open(transcription_path, encoding="utf-8") as handle:
        lines = handle.readlines()
    cleaned_lines: Numbered = []
    for number, line in enumerate(tqdm(lines, desc="clean text", unit="line"), start=1):
        where = f"{transcription_path}:{number}"
        if not line.strip():
            continue
        cleaned = _clean_line(line, where, report, cleaner)
        if cleaned is not None:
            cleaned_lines.append((where, cleaned))
    return cleaned_lines


def read_cleaned(cleaned_path: str) -> Numbered:
    """A cleaned list written earlier (``--no-clean``), each line with its ``file:line``."""
    with open(cleaned_path, encoding="utf-8") as handle:
        return [(f"{cleaned_path}:{n}", line) for n, line in enumerate(handle, start=1) if line.strip()]


def _clean_line(line: str, where: str, report: Report, cleaner: Cleaner) -> str | None:
    fields = line.rstrip("\r\n").split("|")
    if len(fields) != 4:
        report.add(where, f"expected 4 '|'-separated fields (wav|speaker|language|text), got {len(fields)}")
        return None
    wav, speaker, language, text = fields
    if language not in LANGUAGES:
        report.add(where, f"unknown language {language!r} (expected one of {', '.join(LANGUAGES)})")
        return None
    if not text.strip():
        report.add(where, "empty text")
        return None
    try:
        norm_text, phones, tones, word2ph = cleaner(text, language)
    # A g2p front end can fail in many ways on odd input; the line is reported and skipped, whatever it was.
    except Exception as err:  # noqa: BLE001
        report.add(where, f"text cleaning failed ({type(err).__name__}: {err})")
        return None
    if not phones or len(phones) != len(tones) or sum(word2ph) != len(phones):
        report.add(
            where,
            f"cleaner gave {len(phones)} phones, {len(tones)} tones and sum(word2ph) = {sum(word2ph)}; they must agree",
        )
        return None
    return format_cleaned_line(wav, speaker, language, norm_text, phones, tones, word2ph)


@dataclass(frozen=True)
class Split:
    train: list[str]
    val: list[str]
    spk2id: dict[str, int]


def split_cleaned(
    cleaned: Numbered, val_per_lang: int, max_val_total: int, report: Report, seed: int = DEFAULT_SEED
) -> Split:
    """Group lines by (speaker, language), pick validation lines per group, cap the validation list."""
    groups: dict[tuple[str, str], list[str]] = {}
    spk2id: dict[str, int] = {}
    seen: dict[str, str] = {}
    for where, line in cleaned:
        fields = line.rstrip("\r\n").split("|")
        if len(fields) != 7:
            report.add(where, f"expected 7 '|'-separated fields, got {len(fields)}")
            continue
        wav, speaker, language = fields[:3]
        if wav in seen:
            report.add(where, f"audio {wav} already used at {seen[wav]} (one text per clip)")
            continue
        if not os.path.isfile(wav):
            report.add(where, f"audio file not found: {wav}")
            continue
        seen[wav] = where
        groups.setdefault((speaker, language), []).append(line if line.endswith("\n") else line + "\n")
        spk2id.setdefault(speaker, len(spk2id))

    rng = random.Random(seed)
    train: list[str] = []
    val: list[str] = []
    for key in groups:  # insertion order: deterministic for a given file
        lines = groups[key]
        rng.shuffle(lines)
        val += lines[:val_per_lang]
        train += lines[val_per_lang:]
    rng.shuffle(val)
    if len(val) > max_val_total:
        train += val[max_val_total:]
        val = val[:max_val_total]
    return Split(train, val, spk2id)


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with atomic_io.atomic_write(path) as handle:
        handle.writelines(lines)


def _model_config_with_split(config_path: str, split: Split, train_path: str, val_path: str) -> dict:
    """The model config with the speaker table and filelists filled in; its other keys stay as they are."""
    with open(config_path, encoding="utf-8") as handle:
        model_config = json.load(handle)
    data = model_config.setdefault("data", {})
    data["spk2id"] = split.spk2id
    data["n_speakers"] = len(split.spk2id)
    data["training_files"] = os.path.normpath(train_path).replace("\\", "/")
    data["validation_files"] = os.path.normpath(val_path).replace("\\", "/")
    model_config["version"] = MODEL_VERSION
    config.model_config_from_dict(model_config, config_path)  # never write a config training would refuse
    return model_config


def preprocess(
    transcription_path: str,
    cleaned_path: str,
    train_path: str,
    val_path: str,
    config_path: str,
    val_per_lang: int,
    max_val_total: int,
    clean: bool = True,
    seed: int = DEFAULT_SEED,
    cleaner: Cleaner | None = None,
    bert_dirs: Mapping[str, str] | None = None,
    drop_bad_lines: bool = False,
) -> Report:
    """The whole step; returns the report of unusable lines (empty when everything was used).

    Nothing is written unless every line is usable: a report with problems leaves the cleaned list, both
    lists and the model config as they were (``drop_bad_lines`` writes the usable lines anyway)."""
    report = Report()
    config.load_model_config(config_path)  # a typo in the model config fails now, not after the cleaning
    if clean and not os.path.isfile(transcription_path):
        raise FileNotFoundError(f"transcription list not found: {transcription_path}")
    for target in (cleaned_path, train_path, val_path, config_path):
        atomic_io.check_output_target(target)  # before the (long) cleaning, not after it
    if clean:
        cleaned = clean_transcription(transcription_path, report, cleaner or _default_cleaner(bert_dirs))
    elif not os.path.isfile(cleaned_path):
        raise FileNotFoundError(f"cleaned list {cleaned_path} not found; run without --no-clean first")
    else:
        cleaned = read_cleaned(cleaned_path)
    split = split_cleaned(cleaned, val_per_lang, max_val_total, report, seed)
    if report.problems and not drop_bad_lines:
        logger.error("nothing written: fix the lines above (or pass --drop-bad-lines to train without them)")
        return report
    if not split.train:
        raise ValueError(f"no usable utterance in {transcription_path} (see the errors above)")
    model_config = _model_config_with_split(config_path, split, train_path, val_path)
    if clean:
        _write_lines(cleaned_path, [line for _, line in cleaned])
    _write_lines(train_path, split.train)
    _write_lines(val_path, split.val)
    atomic_io.atomic_write_text(config_path, json.dumps(model_config, indent=2, ensure_ascii=False) + "\n")
    logger.info(
        "%d training and %d validation utterances, %d speaker(s); %s updated",
        len(split.train),
        len(split.val),
        len(split.spk2id),
        config_path,
    )
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Clean transcriptions, split train/val, fill in spk2id.")
    parser.add_argument("--transcription-path", help="wav|speaker|language|text list")
    parser.add_argument("--cleaned-path", help="cleaned list (default: <transcription-path>.cleaned)")
    parser.add_argument("--train-path", help="training list to write")
    parser.add_argument("--val-path", help="validation list to write")
    parser.add_argument("--config-path", help="model config JSON to update")
    parser.add_argument("--val-per-lang", type=int, help="validation utterances per speaker and language")
    parser.add_argument("--max-val-total", type=int, help="upper bound on validation utterances")
    parser.add_argument("--clean", dest="clean", action="store_true", default=None, help="run the text cleaner")
    parser.add_argument("--no-clean", dest="clean", action="store_false", help="re-use the cleaned list")
    # Only the English model's tokenizer matters here (it splits words); pass the folders bert_gen.py will use.
    add_bert_dir_argument(parser)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the train/val split")
    parser.add_argument(
        "--drop-bad-lines",
        action="store_true",
        help="write the lists from the usable lines even if some are reported (default: write nothing)",
    )
    parser.add_argument("--yml", help="global settings file (default: $BV2_CONFIG or ./config.yml)")
    return parser.parse_args(argv)


_ARG_NAMES = (
    "transcription_path",
    "cleaned_path",
    "train_path",
    "val_path",
    "config_path",
    "val_per_lang",
    "max_val_total",
    "clean",
)


# Used when config.yml is absent and these options were not given (the values of the shipped config.yml).
_BUILTIN_DEFAULTS = {"val_per_lang": 4, "max_val_total": 12, "clean": True}


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Command line first, then config.yml; without a config.yml, built-in defaults for the non-path options."""
    if args.transcription_path and not args.cleaned_path:
        args.cleaned_path = args.transcription_path + ".cleaned"
    missing = [name for name in _ARG_NAMES if getattr(args, name) is None]
    if not missing:
        return args
    try:  # config.yml only when a default is needed, so the script also runs without one
        settings = config.load_config(args.yml).preprocess_text
    except FileNotFoundError:
        paths = [name for name in missing if name not in _BUILTIN_DEFAULTS]
        if args.yml or paths:
            raise
        settings = argparse.Namespace(**_BUILTIN_DEFAULTS)
    for name in missing:
        setattr(args, name, getattr(settings, name))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _fill_defaults(_parse_args(argv))
    try:
        report = preprocess(
            args.transcription_path,
            args.cleaned_path,
            args.train_path,
            args.val_path,
            args.config_path,
            args.val_per_lang,
            args.max_val_total,
            clean=args.clean,
            seed=args.seed,
            bert_dirs=parse_bert_dirs(args.bert_dir),
            drop_bad_lines=args.drop_bad_lines,
        )
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    if report.problems:
        logger.error("%d line(s) could not be used (listed above)", len(report.problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
