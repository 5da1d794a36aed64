"""The punctuation normalisation that the Japanese and English front ends share (the reference uses one map
for both; the Chinese front end has its own)."""

from __future__ import annotations

import re

PUNCTUATION_MAP = {
    "：": ",",
    "；": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": ".",
    "．": ".",
    "…": "...",
    "···": "...",
    "・・・": "...",
    "·": ",",
    "・": ",",
    "、": ",",
    "$": ".",
    "“": "'",
    "”": "'",
    '"': "'",
    "‘": "'",
    "’": "'",
    "（": "'",
    "）": "'",
    "(": "'",
    ")": "'",
    "《": "'",
    "》": "'",
    "【": "'",
    "】": "'",
    "[": "'",
    "]": "'",
    "—": "-",
    "−": "-",
    "～": "-",
    "~": "-",
    "「": "'",
    "」": "'",
}
PUNCTUATION_RE = re.compile("|".join(re.escape(p) for p in PUNCTUATION_MAP))


def map_punctuation(text: str) -> str:
    """Full-width and typographic marks replaced by the ASCII marks the symbol table knows."""
    return PUNCTUATION_RE.sub(lambda m: PUNCTUATION_MAP[m.group()], text)
