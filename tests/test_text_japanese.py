"""Japanese front end with pyopenjtalk-plus (bundled dictionary, no download)."""

from __future__ import annotations

import pytest

from text import cleaned_text_to_sequence, japanese
from text.cleaner import clean_text


def test_text_normalize() -> None:
    assert japanese.text_normalize("こんにちは、世界！") == "こんにちは,世界!"
    assert japanese.text_normalize("1234円と3.5キロ") == "千二百三十四円と三点五キロ"
    assert japanese.text_normalize("１０，０００円「です」…") == "一万円'です'..."
    assert japanese.text_normalize("Hello 世界") == "世界"  # Latin letters are dropped


@pytest.mark.parametrize(
    "number, kanji",
    [
        (0, "零"),
        (7, "七"),
        (10, "十"),
        (11, "十一"),
        (100, "百"),
        (1000, "千"),
        (1999, "千九百九十九"),
        (10000, "一万"),
        (20345, "二万三百四十五"),
        (100000000, "一億"),
        (110000, "十一万"),
    ],
)
def test_integer_to_kanji(number: int, kanji: str) -> None:
    assert japanese.integer_to_kanji(number) == kanji


def test_g2p_greeting() -> None:
    norm_text, phones, tones, word2ph = clean_text("こんにちは、世界！", "JP")
    assert norm_text == "こんにちは,世界!"
    # Lower-cased like the reference: the moraic nasal N is written "n".
    assert phones == ["_", "k", "o", "n", "n", "i", "ch", "i", "w", "a", ",", "s", "e", "k", "a", "i", "!", "_"]
    # こんにちは is flat (rises after the first mora); 世界 is head-high (falls after se).
    assert tones == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0]
    assert word2ph == [1, 2, 2, 2, 2, 1, 1, 3, 2, 1, 1]
    assert len(word2ph) == len(norm_text) + 2
    ids = cleaned_text_to_sequence(phones, tones, "JP")
    assert ids[1][:4] == [6, 6, 6, 7]  # JP tones start at 6
    assert set(ids[2]) == {1}


def test_g2p_long_vowels_and_particles() -> None:
    _, phones, tones, word2ph = clean_text("私はコーヒーが好きです。", "JP")
    assert phones == [
        "_",
        "w",
        "a",
        "t",
        "a",
        "sh",
        "i",
        "w",
        "a",
        "k",
        "o",
        "o",
        "h",
        "i",
        "i",
        "g",
        "a",
        "s",
        "u",
        "k",
        "i",
        "d",
        "e",
        "s",
        "u",
        ".",
        "_",
    ]
    assert set(tones) <= {0, 1}
    assert sum(word2ph) == len(phones) == len(tones)


def test_g2p_geminate_and_moraic_nasal() -> None:
    _, phones, _, _ = clean_text("ちょっと待ってください。", "JP")
    assert phones == [
        "_",
        "ch",
        "o",
        "q",
        "t",
        "o",
        "m",
        "a",
        "q",
        "t",
        "e",
        "k",
        "u",
        "d",
        "a",
        "s",
        "a",
        "i",
        ".",
        "_",
    ]
    _, phones, _, _ = clean_text("東京タワーは本当に高いですね？", "JP")
    assert phones[1:7] == ["t", "o", "o", "ky", "o", "o"]
    assert phones[-4:] == ["n", "e", "?", "_"]
    assert "N" not in phones


def test_bert_text_matches_word2ph() -> None:
    for sentence in ["ええ、そうですね「はい」", "今日はいい天気ですね！", "1234円と3.5キロ、ありがとう…"]:
        norm_text, phones, _, word2ph = clean_text(sentence, "JP")
        assert len(word2ph) == len(japanese.bert_text(norm_text)) + 2
        assert sum(word2ph) == len(phones)
