"""Language dispatch of the text front end: normalise, then convert to phones."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from text import cleaned_text_to_sequence

_LANGUAGE_MODULES = {"ZH": "text.chinese", "JP": "text.japanese", "EN": "text.english"}


def _language_module(language: str) -> ModuleType:
    if language not in _LANGUAGE_MODULES:
        raise ValueError(f"unknown language {language!r}; expected one of {sorted(_LANGUAGE_MODULES)}")
    return importlib.import_module(_LANGUAGE_MODULES[language])


def _english_tokenizer(bert_dir: str | Path | None) -> Any | None:
    # English words follow the BERT tokenizer's tokens, so g2p needs the same tokenizer as
    # get_bert. Without a local model folder the regex split (one token per piece) is used.
    from text.english_bert import resolve_bert_dir

    folder = resolve_bert_dir(bert_dir)
    if not folder.is_dir():
        return None
    from text.english import load_tokenizer

    return load_tokenizer(str(folder))


def clean_text(
    text: str, language: str, *, bert_dir: str | Path | None = None
) -> tuple[str, list[str], list[int], list[int]]:
    """`(norm_text, phones, tones, word2ph)` of raw text in language "ZH", "JP" or "EN".

    `bert_dir` only matters for English: the folder of the BERT model whose tokenizer defines
    the words (default `bert/deberta-v3-large`, used when it exists). Pass the same folder as to
    `text.get_bert`.
    """
    module = _language_module(language)
    norm_text = module.text_normalize(text)
    if language == "EN":
        phones, tones, word2ph = module.g2p(norm_text, tokenizer=_english_tokenizer(bert_dir))
    else:
        phones, tones, word2ph = module.g2p(norm_text)
    return norm_text, phones, tones, word2ph


def text_to_sequence(
    text: str, language: str, *, bert_dir: str | Path | None = None
) -> tuple[list[int], list[int], list[int]]:
    """Phone ids, tone ids and language ids of raw text (no blanks inserted)."""
    _, phones, tones, _ = clean_text(text, language, bert_dir=bert_dir)
    return cleaned_text_to_sequence(phones, tones, language)
