"""Split text whose parts are in different languages and identify each part as ZH, JP or EN ("auto").

1. The text is cut after punctuation and where Latin letters meet CJK characters; digits, spaces and symbols
   stay with the piece they are in (so "2024年" or "3 apples" are not torn apart).
2. Each piece with letters is identified by lingua (lingua-language-detector, restricted to Chinese, Japanese
   and English; its models ship inside the package, so it works offline).
3. lingua calls every kana-free Han text Chinese. For such pieces the character repertoires decide when they
   can: a character that only the Japanese standard set JIS X 0208/0212 has (気, 駅, 語: Japanese forms) votes
   JP, one that only the simplified Chinese set GB 2312 has (这, 们, 说) votes ZH. A piece without a majority
   is ambiguous ("東京", "大阪" exist in both) and takes the language of a Japanese neighbour in the same
   sentence ("東京、大阪、京都に行きました。"); otherwise it stays Chinese.
4. Pieces without letters join the piece before them, and neighbouring pieces of one language are merged.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import Any

LANGUAGES = ("ZH", "JP", "EN")
# Punctuation after which the text may change language; the first group also ends a sentence.
_SENTENCE_END = set("。．！!？?；;…\n")
_PUNCTUATION = _SENTENCE_END | set('，,、：:「」『』（）()《》〈〉“”"‘’—～~·')
_LINGUA_CODES = {"CHINESE": "ZH", "JAPANESE": "JP", "ENGLISH": "EN"}

LATIN, CJK, NEUTRAL, PUNCT = "latin", "cjk", "neutral", "punct"


def is_kana(char: str) -> bool:
    return "\u3040" <= char <= "\u30ff" or "\u31f0" <= char <= "\u31ff" or "\uff66" <= char <= "\uff9d"


def is_han(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or "\uf900" <= char <= "\ufaff" or char == "々"


def char_class(char: str) -> str:
    """LATIN (a Latin letter, full-width too), CJK (any other letter), PUNCT (a cut point) or NEUTRAL."""
    if char in _PUNCTUATION:
        return PUNCT
    if char.isalpha():
        return LATIN if "LATIN" in unicodedata.name(char, "") else CJK
    return NEUTRAL


def split_by_script(text: str) -> list[str]:
    """Pieces of `text` (joined, they give it back) cut after punctuation and where the letter script changes."""
    pieces: list[str] = []
    current = ""
    letters: str | None = None  # the letter class of the current piece
    after_punctuation = False
    for char in text:
        kind = char_class(char)
        if kind in (LATIN, CJK):
            script_change = letters is not None and kind != letters
            if current.strip() and (script_change or after_punctuation):
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


def _in_charset(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def han_votes(text: str) -> tuple[int, int]:
    """(ZH votes, JP votes): Han characters only in GB 2312, and only in JIS X 0208/0212 (EUC-JP)."""
    zh = jp = 0
    for char in text:
        if is_han(char):
            in_gb, in_jis = _in_charset(char, "gb2312"), _in_charset(char, "euc_jp")
            zh += in_gb and not in_jis
            jp += in_jis and not in_gb
    return zh, jp


@dataclass
class _Piece:
    text: str
    language: str | None  # None: no letters
    ambiguous: bool = False  # Han only, no majority of either repertoire


def identify(text: str) -> str | None:
    """ZH, JP or EN for one piece (see the module notes); None when it has no letters."""
    return _identify(text).language


def _identify(text: str) -> _Piece:
    if not any(char.isalpha() for char in text):
        return _Piece(text, None)
    detected = _detector().detect_language_of(text)
    language = _LINGUA_CODES.get(detected.name, "ZH") if detected is not None else "ZH"
    if language == "ZH" and not any(is_kana(char) for char in text):
        zh, jp = han_votes(text)
        if jp > zh:
            return _Piece(text, "JP")
        return _Piece(text, "ZH", ambiguous=zh == jp and any(is_han(char) for char in text))
    return _Piece(text, language)


def _ends_sentence(text: str) -> bool:
    stripped = text.rstrip(" \t")
    return bool(stripped) and stripped[-1] in _SENTENCE_END


def split_by_language(text: str, default: str = "ZH") -> list[tuple[str, str]]:
    """(part, language) pairs covering `text` in order, stripped, neighbours of the same language merged.

    Text without any letter is one part in `default`.
    """
    pieces = [_identify(piece) for piece in split_by_script(text)]
    # Ambiguous Han pieces follow a Japanese neighbour in the same sentence; repeated until stable so that a run
    # of them ("東京、大阪、京都に…") follows the kana at its end.
    changed = True
    while changed:
        changed = False
        for index, piece in enumerate(pieces):
            if not piece.ambiguous or piece.language == "JP":
                continue
            before = pieces[index - 1] if index > 0 and not _ends_sentence(pieces[index - 1].text) else None
            after = pieces[index + 1] if index + 1 < len(pieces) and not _ends_sentence(piece.text) else None
            if any(neighbour is not None and neighbour.language == "JP" for neighbour in (before, after)):
                piece.language, changed = "JP", True
    merged: list[list[str]] = []
    pending = ""  # letterless text before the first piece with letters
    for piece in pieces:
        if piece.language is None:
            if merged:
                merged[-1][0] += piece.text
            else:
                pending += piece.text
        elif merged and merged[-1][1] == piece.language:
            merged[-1][0] += piece.text
        else:
            merged.append([pending + piece.text, piece.language])
            pending = ""
    if not merged:
        return [(text.strip(), default)] if text.strip() else []
    return [(part.strip(), language) for part, language in merged if part.strip()]
