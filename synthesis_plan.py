"""Planning what a request says: sentences, paragraphs, the mix-tag form and per-part languages.

A request's text becomes a `Plan`: paragraphs of utterances, each utterance one generator pass made of
(text, language) parts that are joined at feature level. Nothing here needs torch or a model, so the server and
the web UI can check a text before it takes a place in a queue.

Languages: "ZH", "JP", "EN"; "mix" (the reference webui's tagged form `[speaker]<zh>你好<en>hello|<jp>…`) and
"auto" (parts split at punctuation and script changes, each identified as ZH, JP or EN).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from synthesis_params import brief
from text.symbols import LANGUAGES

# What a request may give as its language: one language, tagged parts ("mix") or identified parts ("auto").
MIX, AUTO = "mix", "auto"
REQUEST_LANGUAGES = (*LANGUAGES, MIX, AUTO)

# Sentence ends: CJK and ASCII terminators (a "." only when followed by a space or the end, so "3.5" stays whole).
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…\n])|(?<=\.)(?=\s|$)")
_CLAUSE_END = re.compile(r"(?<=[，,、：:])")
_SENTENCE_TERMINATORS = "。！？!?；;….\n"
MAX_SENTENCE_CHARS = 200


def _pack_clauses(sentence: str, max_chars: int) -> list[str]:
    """Split an over-long sentence at commas into pieces of at most about `max_chars` characters."""
    pieces: list[str] = []
    for clause in _CLAUSE_END.split(sentence):
        if pieces and len(pieces[-1]) + len(clause) <= max_chars:
            pieces[-1] += clause
        else:
            pieces.append(clause)
    return pieces


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Sentences of `text` (terminators kept), leaving out pieces with nothing to pronounce.

    A sentence longer than `max_chars` is cut further at commas: BERT sees at most 512 tokens at once.
    """
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        pieces.extend(_pack_clauses(sentence, max_chars) if len(sentence) > max_chars else [sentence])
    stripped = (piece.strip() for piece in pieces)
    return [piece for piece in stripped if any(ch.isalnum() for ch in piece)]


def check_language(language: str) -> str:
    """One of the model's languages "ZH", "JP", "EN" (case-insensitive)."""
    code = str(language).upper()
    if code not in LANGUAGES:
        raise ValueError(f"unknown language {brief(language)}: use one of {', '.join(LANGUAGES)}")
    return code


def check_request_language(language: str) -> str:
    """ "ZH", "JP", "EN", "mix" or "auto" from any capitalisation of them."""
    code = str(language).strip()
    if code.lower() in (MIX, AUTO):
        return code.lower()
    if code.upper() in LANGUAGES:
        return code.upper()
    raise ValueError(f"unknown language {brief(language)}: use one of {', '.join(REQUEST_LANGUAGES)}")


class Utterance(NamedTuple):
    """One generator pass: a speaker and the parts joined at feature level."""

    speaker: str
    parts: tuple[tuple[str, str], ...]  # (text, "ZH" | "JP" | "EN" | "auto")


Plan = list[list[Utterance]]  # paragraphs of utterances


def _ends_sentence(text: str) -> bool:
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in _SENTENCE_TERMINATORS


def plan_parts(
    parts: Sequence[tuple[str, str]], speaker: str, split: bool = True, max_chars: int = MAX_SENTENCE_CHARS
) -> Plan:
    """Group (text, language) parts into paragraphs of utterances.

    Without `split` all parts form one utterance. With it, a line break starts a paragraph and a sentence end
    starts an utterance, also inside a part: "你好。今天|hello" gives the utterances [你好。] and [今天, hello].
    """
    if not split:
        kept = tuple((text.strip(), language) for text, language in parts if text.strip())
        return [[Utterance(speaker, kept)]] if kept else []
    paragraphs: list[list[list[tuple[str, str]]]] = [[]]
    open_utterance = False  # whether the next piece of text continues the last utterance
    for text, language in parts:
        for line_number, line in enumerate(text.split("\n")):
            if line_number > 0:
                open_utterance = False
                if paragraphs[-1]:
                    paragraphs.append([])
            sentences = split_sentences(line, max_chars)
            for index, sentence in enumerate(sentences):
                if open_utterance and index == 0:
                    paragraphs[-1][-1].append((sentence, language))
                else:
                    paragraphs[-1].append([(sentence, language)])
            if sentences:
                open_utterance = not _ends_sentence(line)
            elif _ends_sentence(line):
                open_utterance = False
    return [[Utterance(speaker, tuple(parts)) for parts in paragraph] for paragraph in paragraphs if paragraph]


def join_plans(plans: Iterable[Plan]) -> Plan:
    """Plans spoken one after another: the last paragraph of one and the first of the next run on."""
    joined: Plan = []
    for plan in plans:
        if joined and plan:
            joined[-1].extend(plan[0])
            joined.extend(plan[1:])
        else:
            joined.extend(plan)
    return joined


class MixPiece(NamedTuple):
    speaker: str
    parts: list[tuple[str, str]]


_MIX_TOKEN = re.compile(r"\[([^\[\]<>]*)\]|<([^<>\[\]]*)>")
_MIX_STRAY = re.compile(r"[<>\[\]]")
_MIX_LANGUAGE_TAGS = {"ZH": "ZH", "JP": "JP", "JA": "JP", "EN": "EN"}
MIX_FORMAT_HINT = "write mix text as [speaker]<zh>你好<en>hello|<jp>こんにちは (the speaker tag is optional)"


def parse_mix(text: str, default_speaker: str | None = None) -> list[MixPiece]:
    """Pieces of the reference webui's mix form, each a speaker and its (text, language) parts.

    `[name]` switches the speaker (`default_speaker` until the first one), `<zh>`, `<jp>` (or `<ja>`) and `<en>`
    switch the language of the text that follows, `|` ends a piece. Malformed text raises ValueError naming the
    problem and its character position.
    """
    pieces: list[MixPiece] = []
    current: list[tuple[str, str]] = []
    speaker = default_speaker
    speaker_tag: tuple[str, int] | None = None  # the last [name] and where, until text follows it
    language: str | None = None

    def close_piece() -> None:
        nonlocal current
        if current:
            if speaker is None:
                raise ValueError(f"mix text: no speaker for {current[0][0]!r}; start with [speaker] or pass one")
            pieces.append(MixPiece(speaker, current))
            current = []

    def add_text(chunk: str, where: int) -> None:
        nonlocal speaker_tag
        stray = _MIX_STRAY.search(chunk)
        if stray:
            raise ValueError(
                f"mix text: unmatched {stray.group()!r} at position {where + stray.start()}; {MIX_FORMAT_HINT}"
            )
        if language is None:
            if chunk.strip(" |\t\r\n"):
                raise ValueError(
                    f"mix text: {chunk.strip()[:20]!r} at position {where} has no language tag before it; "
                    + MIX_FORMAT_HINT
                )
            return
        for index, segment in enumerate(chunk.split("|")):
            if index > 0:
                close_piece()
            if segment.strip():
                current.append((segment.strip(), language))
                speaker_tag = None

    position = 0
    for match in _MIX_TOKEN.finditer(text):
        add_text(text[position : match.start()], position)
        position = match.end()
        if match.group(1) is not None:
            if speaker_tag is not None:
                raise ValueError(f"mix text: speaker tag [{speaker_tag[0]}] at position {speaker_tag[1]} has no text")
            name = match.group(1).strip()
            if not name:
                raise ValueError(f"mix text: empty speaker tag [] at position {match.start()}")
            close_piece()
            speaker, speaker_tag, language = name, (name, match.start()), None
        else:
            tag = match.group(2).strip().upper()
            if tag not in _MIX_LANGUAGE_TAGS:
                raise ValueError(
                    f"mix text: unknown language tag <{match.group(2)}> at position {match.start()}; "
                    "use <zh>, <jp> or <en>"
                )
            language = _MIX_LANGUAGE_TAGS[tag]
    add_text(text[position:], position)
    if speaker_tag is not None:
        raise ValueError(f"mix text: speaker tag [{speaker_tag[0]}] at position {speaker_tag[1]} has no text")
    close_piece()
    if not pieces:
        raise ValueError(f"mix text has no tagged text to speak; {MIX_FORMAT_HINT}")
    return pieces


def expand_auto(parts: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Parts with language "auto" replaced by their language-identified sub-parts."""
    from text.language_id import split_by_language

    expanded: list[tuple[str, str]] = []
    for text, language in parts:
        expanded.extend(split_by_language(text) if language == AUTO else [(text, language)])
    return expanded


def resolve_auto(plan: Plan) -> Plan:
    """The plan with every "auto" part replaced by its identified parts; emptied utterances and paragraphs go."""
    resolved = [[Utterance(u.speaker, tuple(expand_auto(u.parts))) for u in paragraph] for paragraph in plan]
    return [[u for u in paragraph if u.parts] for paragraph in resolved if any(u.parts for u in paragraph)]


def plan_text(text: str, speaker: str, language: str, split: bool = True) -> Plan:
    """The paragraphs of utterances that speak `text` in `language` ("ZH", "JP", "EN", "mix" or "auto").

    For "mix", `speaker` is the voice until the first [speaker] tag; "|" ends a piece in "mix" and "auto" text
    (as in the reference webui). "auto" parts are identified here.
    """
    code = check_request_language(language)
    if code == MIX:
        plan = join_plans(plan_parts(piece.parts, piece.speaker, split) for piece in parse_mix(text, speaker))
    elif code == AUTO:
        plan = join_plans(plan_parts([(piece, AUTO)], speaker, split) for piece in text.split("|"))
    else:
        plan = plan_parts([(text, code)], speaker, split)
    return resolve_auto(plan)


def plan_given_parts(parts: Sequence[tuple[str, str]], speaker: str, split: bool = True) -> Plan:
    """The plan for an explicit list of (text, language) parts, language "ZH", "JP", "EN" or "auto" per part."""
    checked: list[tuple[str, str]] = []
    for index, item in enumerate(parts):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"part {index}: expected a (text, language) pair, got {item!r}")
        code = check_request_language(item[1])
        if code == MIX:
            raise ValueError(f"part {index}: language 'mix' is for tagged text; give each part its language")
        checked.append((item[0], code))
    return resolve_auto(plan_parts(checked, speaker, split))
