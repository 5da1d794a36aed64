"""Mandarin text normalisation and grapheme-to-phoneme conversion.

`text_normalize` spells out numbers (WeTextProcessing's `tn` normaliser when it is installed,
otherwise `cn2an`, the reference's fallback), maps punctuation onto the shared punctuation set
and drops everything that is neither a CJK character nor punctuation.

`g2p` segments with jieba (with part-of-speech tags), looks up pypinyin initials and strict
finals per word, applies tone sandhi and maps every syllable to two phones: an initial (or a
pseudo-initial AA/EE/OO/y/w for zero-initial syllables) and a final. Tones are 1-5 (5 = neutral),
0 for punctuation and the boundary pads. `word2ph` has one entry per character of the text.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable

from text.symbols import punctuation, zh_symbols

logger = logging.getLogger(__name__)

_PUNCTUATION_MAP = {
    "：": ",",
    "；": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": ".",
    "·": ",",
    "、": ",",
    "...": "…",
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
    "～": "-",
    "~": "-",
    "「": "'",
    "」": "'",
}
_PUNCTUATION_RE = re.compile("|".join(re.escape(p) for p in _PUNCTUATION_MAP))
_NOT_HANZI_OR_PUNCTUATION_RE = re.compile("[^\u4e00-\u9fa5" + "".join(re.escape(p) for p in punctuation) + "]+")
# Sentence pieces end after every punctuation mark; each piece is segmented on its own.
_PIECE_SPLIT_RE = re.compile("(?<=[" + "".join(re.escape(p) for p in punctuation) + r"])\s*")
_LATIN_RE = re.compile("[a-zA-Z]+")

# Interjections whose strict pinyin has no final (syllabic nasals) are read as a similar syllable.
_CHARACTER_REPLACEMENTS = {"嗯": "恩", "呣": "母"}

# Finals spelled differently after an initial ("gui", "liu", "lun").
_CONTRACTED_FINALS = {"uei": "ui", "iou": "iu", "uen": "un"}
# Zero-initial syllables written with y/w: the final as it is spoken after the glide.
_Y_GLIDE_FINALS = {
    "i": "i",
    "in": "in",
    "ing": "ing",
    "ia": "a",
    "ian": "En",
    "iang": "ang",
    "iao": "ao",
    "ie": "E",
    "iou": "ou",
    "iong": "ong",
    "io": "o",
    "v": "v",
    "van": "van",
    "ve": "ve",
    "vn": "vn",
}
_W_GLIDE_FINALS = {
    "u": "u",
    "ua": "a",
    "uai": "ai",
    "uan": "an",
    "uang": "ang",
    "uei": "ei",
    "uen": "en",
    "ueng": "eng",
    "uo": "o",
}
# Other zero-initial syllables (a, o, e, er, ...) get a pseudo-initial from their first vowel.
_OPEN_SYLLABLE_INITIALS = {"a": "AA", "o": "OO", "e": "EE"}
# Syllables without a final in strict pinyin (m, n, ng) have no table entry; read them as "en".
_NASAL_FALLBACK = ("EE", "en")


@functools.lru_cache(maxsize=1)
def _number_normalizer() -> tuple[str, Callable[[str], str]]:
    """The number/date normaliser: WeTextProcessing when importable, cn2an otherwise."""
    try:
        from tn.chinese.normalizer import Normalizer  # optional, as in the reference
    except ImportError:
        import cn2an

        return "cn2an", lambda text: cn2an.transform(text, "an2cn")
    normalizer = Normalizer(remove_interjections=False, remove_erhua=False)
    return "tn", normalizer.normalize


def number_normalizer_name() -> str:
    """'tn' or 'cn2an': which number normaliser `text_normalize` uses in this environment."""
    return _number_normalizer()[0]


def replace_punctuation(text: str) -> str:
    for source, target in _CHARACTER_REPLACEMENTS.items():
        text = text.replace(source, target)
    text = _PUNCTUATION_RE.sub(lambda m: _PUNCTUATION_MAP[m.group()], text)
    return _NOT_HANZI_OR_PUNCTUATION_RE.sub("", text)


def text_normalize(text: str) -> str:
    """Spell out numbers, unify punctuation, keep only hanzi and punctuation."""
    _, normalize_numbers = _number_normalizer()
    return replace_punctuation(normalize_numbers(text))


@functools.lru_cache(maxsize=1)
def _tone_sandhi():
    from text.tone_sandhi import ToneSandhi

    return ToneSandhi()


def syllable_to_phones(initial: str, final: str) -> list[str]:
    """Two phones for a pinyin syllable given its initial and strict final (without tone)."""
    if not final:
        return list(_NASAL_FALLBACK)
    if initial:
        if final == "i" and initial in ("zh", "ch", "sh", "r"):
            return [initial, "ir"]  # retroflex apical vowel: zhi, chi, shi, ri
        if final == "i" and initial in ("z", "c", "s"):
            return [initial, "i0"]  # dental apical vowel: zi, ci, si
        return [initial, _CONTRACTED_FINALS.get(final, final)]
    if final in _Y_GLIDE_FINALS:
        return ["y", _Y_GLIDE_FINALS[final]]
    if final in _W_GLIDE_FINALS:
        return ["w", _W_GLIDE_FINALS[final]]
    if final[0] in _OPEN_SYLLABLE_INITIALS:
        return [_OPEN_SYLLABLE_INITIALS[final[0]], final]
    raise ValueError(f"no phone mapping for the pinyin final {final!r}")


def _word_initials_finals(word: str) -> tuple[list[str], list[str]]:
    from pypinyin import Style, lazy_pinyin

    initials = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS)
    finals = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)
    return initials, finals


def _syllables_to_phones(initials: list[str], finals: list[str], piece: str) -> tuple[list[str], list[int], list[int]]:
    phones: list[str] = []
    tones: list[int] = []
    word2ph: list[int] = []
    for initial, final in zip(initials, finals):
        if initial == final:  # pypinyin echoes non-hanzi: must be one punctuation mark
            if initial not in punctuation:
                raise ValueError(
                    f"unexpected non-hanzi token {initial!r} in {piece!r}; pass text through text_normalize first"
                )
            syllable, tone = [initial], 0
        elif not final:
            logger.warning("syllable without a final in %r; reading it as 'en'", piece)
            syllable, tone = list(_NASAL_FALLBACK), 5
        else:
            tone = int(final[-1])
            syllable = syllable_to_phones(initial, final[:-1])
        unknown = [p for p in syllable if p not in zh_symbols and p not in punctuation]
        if unknown:
            raise ValueError(f"pinyin {initial}{final} in {piece!r} maps to unknown phones {unknown}")
        phones += syllable
        tones += [tone] * len(syllable)
        word2ph.append(len(syllable))
    return phones, tones, word2ph


@functools.cache
def _pos_segmenter() -> Callable[[str], list]:
    """jieba's part-of-speech ``lcut``, with its dictionary-build chatter silenced.

    jieba logs "Building prefix dict ..." at DEBUG through its own stderr handler and again through the root
    logger, so every command that touched Chinese printed each line twice."""
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    return jieba.posseg.lcut


def _piece_g2p(piece: str) -> tuple[list[str], list[int], list[int]]:
    piece = _LATIN_RE.sub("", piece)
    lcut = _pos_segmenter()
    sandhi = _tone_sandhi()
    words = sandhi.pre_merge_for_modify(lcut(piece))
    initials: list[str] = []
    finals: list[str] = []
    for word, pos in words:
        if pos == "eng":
            continue
        word_initials, word_finals = _word_initials_finals(word)
        initials += word_initials
        finals += sandhi.modified_tone(word, pos, word_finals)
    return _syllables_to_phones(initials, finals, piece)


def g2p(text: str) -> tuple[list[str], list[int], list[int]]:
    """Phones, tones and per-character phone counts of normalised text, with "_" pads at both ends."""
    pieces = [p for p in _PIECE_SPLIT_RE.split(text) if p.strip()]
    phones: list[str] = []
    tones: list[int] = []
    word2ph: list[int] = []
    for piece in pieces:
        piece_phones, piece_tones, piece_word2ph = _piece_g2p(piece)
        phones += piece_phones
        tones += piece_tones
        word2ph += piece_word2ph
    if len(word2ph) != len(text):
        raise ValueError(
            f"g2p produced {len(word2ph)} syllables for {len(text)} characters of {text!r}; "
            "pass text through text_normalize first"
        )
    return ["_"] + phones + ["_"], [0] + tones + [0], [1] + word2ph + [1]
