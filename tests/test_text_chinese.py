"""Chinese front end against the reference's text_golden.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import text.chinese
from text import cleaned_text_to_sequence
from text.chinese import g2p, number_normalizer_name, syllable_to_phones, text_normalize
from text.cleaner import clean_text
from text.tone_sandhi import ToneSandhi


@pytest.fixture(scope="module")
def text_golden(dev_dir: Path) -> dict:
    return json.loads((dev_dir / "text_golden.json").read_text(encoding="utf-8"))


def _normalizer_column(text_golden: dict) -> list[dict]:
    # The reference's primary normaliser is WeTextProcessing; without it, cn2an (our default).
    return text_golden["ZH" if number_normalizer_name() == "tn" else "ZH_cn2an_fallback"]


def test_clean_text_matches_golden(text_golden: dict) -> None:
    for entry in _normalizer_column(text_golden):
        norm_text, phones, tones, word2ph = clean_text(entry["text"], "ZH")
        assert norm_text == entry["norm_text"]
        assert phones == entry["phones"], entry["text"]
        assert tones == entry["tones"], entry["text"]
        assert word2ph == entry["word2ph"], entry["text"]
        ids = cleaned_text_to_sequence(phones, tones, "ZH")
        assert ids == (entry["phone_ids"], entry["tone_ids"], entry["lang_ids"])


@pytest.mark.parametrize("column", ["ZH", "ZH_cn2an_fallback"])
def test_g2p_matches_golden_for_both_normalisers(text_golden: dict, column: str) -> None:
    # g2p is the same code behind both normalisers, so it must reproduce both columns.
    for entry in text_golden[column]:
        phones, tones, word2ph = g2p(entry["norm_text"])
        assert (phones, tones, word2ph) == (entry["phones"], entry["tones"], entry["word2ph"])
        assert len(word2ph) == len(entry["norm_text"]) + 2
        assert sum(word2ph) == len(phones)


def test_cn2an_normaliser_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cn2an fallback runs whether or not WeTextProcessing is installed: hide it for this test.
    for name in ("tn", "tn.chinese", "tn.chinese.normalizer"):
        monkeypatch.setitem(sys.modules, name, None)
    text.chinese._number_normalizer.cache_clear()
    try:
        assert number_normalizer_name() == "cn2an"
        assert text_normalize("温度是-3.5度。") == "温度是负三点五度."
        assert text_normalize("提高了25%～") == "提高了百分之二十五-"
        assert text_normalize("我用iPhone拍照（很好）") == "我用拍照'很好'"
    finally:
        text.chinese._number_normalizer.cache_clear()


@pytest.mark.parametrize(
    "initial, final, phones",
    [
        ("", "ie", ["y", "E"]),
        ("", "ian", ["y", "En"]),
        ("", "iou", ["y", "ou"]),
        ("", "van", ["y", "van"]),
        ("", "uei", ["w", "ei"]),
        ("", "ueng", ["w", "eng"]),
        ("", "er", ["EE", "er"]),
        ("", "a", ["AA", "a"]),
        ("", "ou", ["OO", "ou"]),
        ("zh", "i", ["zh", "ir"]),
        ("c", "i", ["c", "i0"]),
        ("g", "uei", ["g", "ui"]),
        ("l", "iou", ["l", "iu"]),
        ("d", "uen", ["d", "un"]),
        ("j", "v", ["j", "v"]),
        ("n", "ve", ["n", "ve"]),
    ],
)
def test_syllable_to_phones(initial: str, final: str, phones: list[str]) -> None:
    assert syllable_to_phones(initial, final) == phones


@pytest.mark.parametrize(
    "word, pos, finals, expected",
    [
        ("不怕", "v", ["u4", "a4"], ["u2", "a4"]),  # 不 before tone 4
        ("看不懂", "v", ["an4", "u4", "ong3"], ["an4", "u5", "ong3"]),  # infix 不
        ("一天", "m", ["i1", "ian1"], ["i4", "ian1"]),  # 一 before non-4
        ("一段", "m", ["i1", "uan4"], ["i2", "uan4"]),  # 一 before 4
        ("第一", "m", ["i4", "i1"], ["i4", "i1"]),  # ordinal keeps yi1
        ("看一看", "v", ["an4", "i1", "an4"], ["an4", "i5", "an4"]),
        ("你好", "l", ["i3", "ao3"], ["i2", "ao3"]),  # 3-3 sandhi
        ("奶奶", "n", ["ai3", "ai3"], ["ai3", "ai5"]),  # reduplication neutral (then no 3-3)
        ("桌子", "n", ["uo1", "i3"], ["uo1", "i5"]),  # -子 neutral
        ("东西", "n", ["ong1", "i1"], ["ong1", "i5"]),  # must-neutral word
        ("男子", "n", ["an2", "i3"], ["an2", "i3"]),  # must-not-neutral word
    ],
)
def test_tone_sandhi_rules(word: str, pos: str, finals: list[str], expected: list[str]) -> None:
    assert ToneSandhi().modified_tone(word, pos, finals) == expected


def test_pre_merge() -> None:
    sandhi = ToneSandhi()
    assert sandhi.pre_merge_for_modify([("听", "v"), ("一", "m"), ("听", "v")]) == [["听一听", "v"]]
    assert sandhi.pre_merge_for_modify([("不", "d"), ("好", "a")]) == [["不好", "a"]]
    assert sandhi.pre_merge_for_modify([("一", "m"), ("本书", "n")]) == [["一本书", "m"]]
    assert sandhi.pre_merge_for_modify([("花", "n"), ("儿", "n")]) == [["花儿", "n"]]


def test_g2p_rejects_unnormalised_text() -> None:
    with pytest.raises(ValueError, match="text_normalize"):
        g2p("我有3个")
