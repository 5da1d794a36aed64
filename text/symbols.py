"""Phone inventory, tone counts and language ids of Bert-VITS2 2.3.

The id of a phone is its index in `symbols`: the pad symbol first, then the union of the three
languages' phones in sorted order, then punctuation and the two special symbols. Checkpoints
store embeddings indexed by these ids, so the order must never change.
"""

from __future__ import annotations

punctuation: list[str] = ["!", "?", "…", ",", ".", "'", "-"]
pu_symbols: list[str] = punctuation + ["SP", "UNK"]
pad: str = "_"

# Mandarin: pinyin initials and finals ("opencpop-strict" style; AA/EE/OO mark zero-initial syllables).
zh_symbols: list[str] = [
    "E",
    "En",
    "a",
    "ai",
    "an",
    "ang",
    "ao",
    "b",
    "c",
    "ch",
    "d",
    "e",
    "ei",
    "en",
    "eng",
    "er",
    "f",
    "g",
    "h",
    "i",
    "i0",
    "ia",
    "ian",
    "iang",
    "iao",
    "ie",
    "in",
    "ing",
    "iong",
    "ir",
    "iu",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "ong",
    "ou",
    "p",
    "q",
    "r",
    "s",
    "sh",
    "t",
    "u",
    "ua",
    "uai",
    "uan",
    "uang",
    "ui",
    "un",
    "uo",
    "v",
    "van",
    "ve",
    "vn",
    "w",
    "x",
    "y",
    "z",
    "zh",
    "AA",
    "EE",
    "OO",
]
num_zh_tones: int = 6

# Japanese: OpenJTalk phonemes ("q" is the geminate stop "cl", "N" the moraic nasal).
ja_symbols: list[str] = [
    "N",
    "a",
    "a:",
    "b",
    "by",
    "ch",
    "d",
    "dy",
    "e",
    "e:",
    "f",
    "g",
    "gy",
    "h",
    "hy",
    "i",
    "i:",
    "j",
    "k",
    "ky",
    "m",
    "my",
    "n",
    "ny",
    "o",
    "o:",
    "p",
    "py",
    "q",
    "r",
    "ry",
    "s",
    "sh",
    "t",
    "ts",
    "ty",
    "u",
    "u:",
    "w",
    "y",
    "z",
    "zy",
]
num_ja_tones: int = 2

# English: lower-cased ARPAbet; "V" is ARPAbet V (lower-case "v" already names a Mandarin final).
en_symbols: list[str] = [
    "aa",
    "ae",
    "ah",
    "ao",
    "aw",
    "ay",
    "b",
    "ch",
    "d",
    "dh",
    "eh",
    "er",
    "ey",
    "f",
    "g",
    "hh",
    "ih",
    "iy",
    "jh",
    "k",
    "l",
    "m",
    "n",
    "ng",
    "ow",
    "oy",
    "p",
    "r",
    "s",
    "sh",
    "t",
    "th",
    "uh",
    "uw",
    "V",
    "w",
    "y",
    "z",
    "zh",
]
num_en_tones: int = 4

normal_symbols: list[str] = sorted(set(zh_symbols) | set(ja_symbols) | set(en_symbols))
symbols: list[str] = [pad] + normal_symbols + pu_symbols
sil_phonemes_ids: list[int] = [symbols.index(p) for p in pu_symbols]

num_tones: int = num_zh_tones + num_ja_tones + num_en_tones

# The languages a model speaks, in language-id order: the one list every script and module imports.
LANGUAGES: tuple[str, ...] = ("ZH", "JP", "EN")
language_id_map: dict[str, int] = {language: index for index, language in enumerate(LANGUAGES)}
num_languages: int = len(language_id_map)

# Each language's tones occupy their own slice of the shared tone embedding.
language_tone_start_map: dict[str, int] = {
    "ZH": 0,
    "JP": num_zh_tones,
    "EN": num_zh_tones + num_ja_tones,
}

symbol_to_id: dict[str, int] = {s: i for i, s in enumerate(symbols)}
