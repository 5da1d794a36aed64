"""Split text whose parts are in different languages and identify each part as ZH, JP or EN ("auto").

The text is cut after punctuation and where Latin letters meet CJK characters; digits, spaces and symbols stay
with the part they follow. Script decides where it can: a part with kana is Japanese, one with Latin letters
only is English. Parts written in Han characters only are Chinese or Japanese, which the script cannot tell;
lingua (lingua-language-detector, restricted to the three languages, its models ship inside the package so it
works offline) decides those by character statistics, and a short Han-only part that lingua finds ambiguous
takes the language of its Japanese neighbours. Neighbouring parts of the same language are merged.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

LANGUAGES = ("ZH", "JP", "EN")
# Sentence and clause punctuation after which the text may change language.
_PUNCTUATION = set('。．，,、！!？?；;：:…「」『』（）()《》〈〉“”"‘’—～~·\n')
# Below this lingua confidence a Han-only part counts as ambiguous and follows its Japanese neighbours.
_AMBIGUOUS_HAN_CONFIDENCE = 0.9

LATIN, CJK, NEUTRAL, PUNCT = "latin", "cjk", "neutral", "punct"


def _is_kana(char: str) -> bool:
    return "\u3040" <= char <= "\u30ff" or "\u31f0" <= char <= "\u31ff" or "\uff66" <= char <= "\uff9d"


def _is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or "\uf900" <= char <= "\ufaff" or char == "々"


def char_class(char: str) -> str:
    """LATIN (a Latin letter), CJK (Han, kana, other non-Latin letters), PUNCT (a break point) or NEUTRAL."""
    if char in _PUNCTUATION:
        return PUNCT
    if char.isalpha():
        if _is_kana(char) or _is_han(char) or char == "ー":
            return CJK
        return LATIN if unicodedata.name(char, "").startswith("LATIN") else CJK
    return NEUTRAL


def split_by_script(text: str) -> list[str]:
    """Pieces of `text` cut after punctuation and at changes between Latin and non-Latin letters."""
    pieces: list[str] = []
    current = ""
    letters: str | None = None  # the letter class of the current piece
    after_punctuation = False
    for char in text:
        kind = char_class(char)
        cut = False
        if kind in (LATIN, CJK):
            cut = (letters is not None and kind != letters) or (after_punctuation and current.strip() != "")
            if cut:
                pieces.append(current)
                current = ""
            letters = kind
            after_punctuation = False
        elif kind == PUNCT:
            after_punctuation = True
        current += char
    if current:
        pieces.append(current)
    return pieces


@functools.lru_cache(maxsize=1)
def _detector() -> Any:
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(Language.CHINESE, Language.JAPANESE, Language.ENGLISH).build()


_LINGUA_CODES = {"CHINESE": "ZH", "JAPANESE": "JP", "ENGLISH": "EN"}


def han_language(text: str) -> tuple[str, float]:
    """ZH or JP for Han-only text by lingua, with lingua's confidence in that answer."""
    values = _detector().compute_language_confidence_values(text)
    scores = {_LINGUA_CODES[value.language.name]: value.value for value in values}
    language = "JP" if scores.get("JP", 0.0) > scores.get("ZH", 0.0) else "ZH"
    return language, scores.get(language, 0.0)


def identify(text: str) -> str | None:
    """ZH, JP or EN for one piece; None when it has no letters (digits, symbols, punctuation only)."""
    classes = {char_class(char) for char in text}
    if any(_is_kana(char) for char in text):
        return "JP"
    if CJK in classes:
        return han_language(text)[0]
    if LATIN in classes:
        return "EN"
    return None


def split_by_language(text: str, default: str = "ZH") -> list[tuple[str, str]]:
    """(part, language) pairs covering `text` in order, neighbours of the same language merged.

    Pieces without letters join the piece before them (the first one the piece after); text without any letter
    is one part in `default`.
    """
    pieces = split_by_script(text)
    labelled: list[list[Any]] = []  # [text, language or None, ambiguous]
    for piece in pieces:
        language = identify(piece)
        ambiguous = False
        if language in ("ZH", "JP") and not any(_is_kana(char) for char in piece):
            ambiguous = han_language(piece)[1] < _AMBIGUOUS_HAN_CONFIDENCE
        labelled.append([piece, language, ambiguous])
    # Ambiguous Han-only pieces next to Japanese pieces are Japanese (kanji compounds between kana sentences).
    # Repeated until stable, so a run of such pieces ("東京、大阪、京都に…") follows the kana at its end.
    changed = True
    while changed:
        changed = False
        for index, item in enumerate(labelled):
            if item[2] and item[1] != "JP":
                neighbours = [labelled[j][1] for j in (index - 1, index + 1) if 0 <= j < len(labelled)]
                if "JP" in neighbours:
                    item[1], changed = "JP", True
    merged: list[list[Any]] = []
    pending = ""  # letterless text before the first lettered piece
    for piece, language, _ in labelled:
        if language is None:
            if merged:
                merged[-1][0] += piece
            else:
                pending += piece
        elif merged and merged[-1][1] == language:
            merged[-1][0] += piece
        else:
            merged.append([pending + piece, language])
            pending = ""
    if not merged:
        return [(text.strip(), default)] if text.strip() else []
    return [(part.strip(), language) for part, language in merged if part.strip()]
