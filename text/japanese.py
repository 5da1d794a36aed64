"""Japanese text normalisation and grapheme-to-phoneme conversion with OpenJTalk.

Uses `pyopenjtalk` (the `pyopenjtalk-plus` distribution bundles its dictionary, so nothing is
downloaded). `g2p` follows the reference front end:

* words and readings come from OpenJTalk's text analysis (`run_frontend`); punctuation words
  become punctuation phones;
* each word's katakana reading is converted to OpenJTalk phonemes, lower-cased like the
  reference (so the moraic nasal "N" becomes "n" and devoiced vowels become plain vowels; the
  "N" symbol stays unused, as in reference-trained checkpoints), the geminate "cl" written "q",
  a leading long-vowel mark repeating the previous vowel;
* tones are the pitch accent: from the full-context labels each phoneme gets a mark, +1 where
  the pitch rises (end of the first mora of an accent phrase) and -1 where it falls (end of the
  accent nucleus); within a word the marks are summed and shifted one phone later, and a word
  whose pitch only falls is lifted by one, giving high (1) / low (0) per phone;
* `word2ph` spreads each word's phones over its characters, because the Japanese BERT
  (deberta-v2-large-japanese-char-wwm) has one token per character.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any, NamedTuple

from text.english import distribute_phone
from text.punctuation import map_punctuation
from text.symbols import punctuation, symbols

logger = logging.getLogger(__name__)

_NOT_JAPANESE_OR_PUNCTUATION_RE = re.compile(
    "[^\u3040-\u309f\u30a0-\u30ff\u4e00-\u9fff\u3400-\u4dbf\u3005" + "".join(re.escape(p) for p in punctuation) + "]+"
)
# A reading that starts with one of these is a symbol, not speech.
_MARK_RE = re.compile(
    r"[^A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d]"
)
_NUMBER_WITH_SEPARATOR_RE = re.compile("[0-9]{1,3}(,[0-9]{3})+")
_CURRENCY_RE = re.compile(r"([$¥£€])([0-9.]*[0-9])")
_CURRENCY_NAMES = {"$": "ドル", "¥": "円", "£": "ポンド", "€": "ユーロ"}
_NUMBER_RE = re.compile(r"[0-9]+(\.[0-9]+)?")

_KANJI_DIGITS = "〇一二三四五六七八九"
_SMALL_UNITS = [(1000, "千"), (100, "百"), (10, "十")]
_LARGE_UNITS = ["", "万", "億", "兆", "京"]

_HIRAGANA = "".join(chr(c) for c in range(ord("ぁ"), ord("ゖ") + 1))
_KATAKANA = "".join(chr(c) for c in range(ord("ァ"), ord("ヶ") + 1))
_HIRAGANA_TO_KATAKANA = str.maketrans(_HIRAGANA, _KATAKANA)
_LONG_VOWEL = "ー"


# ------------------------------------------------------------------------------ normalisation
def _four_digit_group(number: int) -> str:
    text = ""
    for value, unit in _SMALL_UNITS:
        digit, number = divmod(number, value)
        if digit:
            text += ("" if digit == 1 else _KANJI_DIGITS[digit]) + unit
    return text + (_KANJI_DIGITS[number] if number else "")


def integer_to_kanji(number: int) -> str:
    """Kanji numeral as read aloud: 1234 -> 千二百三十四, 10000 -> 一万."""
    if number == 0:
        return "零"
    groups = []
    index = 0
    while number:
        number, group = divmod(number, 10000)
        if group:
            if index >= len(_LARGE_UNITS):
                raise ValueError("number too large to read")
            prefix = "一" if group == 1 and index > 0 else _four_digit_group(group)
            groups.append(prefix + _LARGE_UNITS[index])
        index += 1
    return "".join(reversed(groups))


def number_to_kanji(number: str) -> str:
    """Decimal string to kanji: "3.14" -> 三点一四."""
    whole, _, fraction = number.partition(".")
    text = integer_to_kanji(int(whole))
    if fraction:
        text += "点" + "".join(_KANJI_DIGITS[int(d)] for d in fraction)
    return text


def convert_numbers_to_words(text: str) -> str:
    text = _NUMBER_WITH_SEPARATOR_RE.sub(lambda m: m[0].replace(",", ""), text)
    text = _CURRENCY_RE.sub(lambda m: m[2] + _CURRENCY_NAMES.get(m[1], m[1]), text)
    return _NUMBER_RE.sub(lambda m: number_to_kanji(m[0]), text)


def replace_punctuation(text: str) -> str:
    text = map_punctuation(text)
    return _NOT_JAPANESE_OR_PUNCTUATION_RE.sub("", text)


def text_normalize(text: str) -> str:
    """NFKC, numbers to kanji numerals, unified punctuation; only kana, kanji and punctuation kept."""
    text = unicodedata.normalize("NFKC", text)
    text = convert_numbers_to_words(text)
    return replace_punctuation(text).replace("\u3099", "")


# ------------------------------------------------------------------------------ g2p
def _pyopenjtalk() -> Any:
    import pyopenjtalk  # the bundled dictionary of pyopenjtalk-plus: no download

    return pyopenjtalk


class _Word(NamedTuple):
    text: str  # surface text as it is fed to BERT
    reading: str  # katakana reading, or the punctuation mark itself


def _words(norm_text: str) -> tuple[list[_Word], list[dict]]:
    nodes = _pyopenjtalk().run_frontend(norm_text)
    words: list[_Word] = []
    for node in nodes:
        surface = replace_punctuation(unicodedata.normalize("NFKC", node["string"]))
        reading = node["pron"].replace("’", "")
        if reading and _MARK_RE.match(reading):  # a symbol: keep the punctuation itself
            if len(surface) > 1:
                words += [_Word(ch, ch) for ch in surface]
                continue
            if surface not in punctuation:
                surface = ","
            reading = surface
        elif not reading:
            reading = surface
        if surface:
            words.append(_Word(surface, reading.translate(_HIRAGANA_TO_KATAKANA)))
    return words, nodes


def kata2phoneme(reading: str) -> list[str]:
    """OpenJTalk phonemes of a katakana reading; punctuation passes through, "ー" is kept as a marker."""
    reading = reading.strip()
    if reading in punctuation:
        return [reading]
    if reading.startswith(_LONG_VOWEL):
        return [_LONG_VOWEL] + (kata2phoneme(reading[1:]) if reading[1:] else [])
    phonemes = _pyopenjtalk().g2p(reading).lower().replace("cl", "q").split(" ")
    return [p for p in phonemes if p and p != "pau"]


def _resolve_long_vowels(word_phones: list[list[str]]) -> list[list[str]]:
    # A word-initial "ー" lengthens the last vowel of the previous word.
    previous: str | None = None
    for phones in word_phones:
        for index, phone in enumerate(phones):
            if phone == _LONG_VOWEL:
                source = phones[index - 1] if index > 0 else previous
                phones[index] = source[-1] if source else "a"
        if phones:
            previous = phones[-1]
    return word_phones


class _AccentMark(NamedTuple):
    phone: str
    mark: int  # +1 pitch rises after this phone, -1 it falls, 0 unchanged


_LABEL_PHONE_RE = re.compile(r"-([^+]*)\+")
_LABEL_A1_RE = re.compile(r"/A:(-?[0-9]+)\+")
_LABEL_A2_RE = re.compile(r"\+(\d+)\+")


def accent_marks(nodes: list[dict]) -> list[_AccentMark]:
    """Pitch marks per phoneme from OpenJTalk full-context labels (A1 = mora - nucleus, A2 = mora index)."""
    labels = _pyopenjtalk().make_label(nodes)
    marks: list[_AccentMark] = []
    for index, label in enumerate(labels):
        phone = _LABEL_PHONE_RE.search(label).group(1)
        if phone in ("sil", "pau"):
            continue
        a1 = int(_LABEL_A1_RE.search(label).group(1))
        a2 = int(_LABEL_A2_RE.search(label).group(1))
        following = labels[index + 1]
        if _LABEL_PHONE_RE.search(following).group(1) in ("sil", "pau"):
            next_a2 = -1
        else:
            next_a2 = int(_LABEL_A2_RE.search(following).group(1))
        if a1 == 0 and next_a2 == a2 + 1:
            mark = -1  # end of the accent nucleus
        elif a2 == 1 and next_a2 == 2:
            mark = 1  # end of the phrase's first mora
        else:
            mark = 0
        marks.append(_AccentMark(phone.replace("cl", "q").lower(), mark))
    return marks


def align_tones(word_phones: list[list[str]], marks: list[_AccentMark]) -> list[int]:
    """High/low (1/0) per phone: the word's running sum of pitch marks, applied from the next phone."""
    pending = list(marks)
    tones: list[int] = []
    for phones in word_phones:
        running = [0] * len(phones)
        for index, phone in enumerate(phones):
            if not pending:
                break
            if phone == pending[0].phone:
                running[index] = pending.pop(0).mark + (running[index - 1] if index > 0 else 0)
        shifted = [0] + running[:-1]
        if -1 in shifted:  # the word starts high and falls
            shifted = [t + 1 for t in shifted]
        if any(t not in (0, 1) for t in shifted):
            logger.warning("pitch marks outside high/low in %s; clipping", phones)
            shifted = [min(max(t, 0), 1) for t in shifted]
        tones += shifted
    return tones


def g2p(norm_text: str) -> tuple[list[str], list[int], list[int]]:
    """Phones, high/low tones and per-character phone counts (with "_" pads) of normalised text."""
    words, nodes = _words(norm_text)
    word_phones = _resolve_long_vowels([kata2phoneme(w.reading) for w in words])
    for word, phones in zip(words, word_phones):
        unknown = [p for p in phones if p not in symbols]
        if unknown:
            raise ValueError(f"OpenJTalk phones {unknown} of {word.text!r} are not in the symbol table")
    tones = align_tones(word_phones, accent_marks(nodes))
    word2ph: list[int] = []
    for word, phones in zip(words, word_phones):
        word2ph += distribute_phone(len(phones), len(word.text))
    phones = [p for phones in word_phones for p in phones]
    return ["_"] + phones + ["_"], [0] + tones + [0], [1] + word2ph + [1]


def bert_text(norm_text: str) -> str:
    """The text the Japanese BERT sees: the words' surfaces joined (one token per character)."""
    return "".join(word.text for word in _words(norm_text)[0])
