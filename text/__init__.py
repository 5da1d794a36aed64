"""Text front end: symbols, cleaners and BERT features for ZH/JP/EN.

Importing this package is free of side effects: dictionaries, segmenters and BERT models are
loaded on first use by the language modules, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from text.symbols import language_id_map, language_tone_start_map, symbol_to_id

if TYPE_CHECKING:
    import torch

__all__ = ["cleaned_text_to_sequence", "get_bert"]

_BERT_MODULES = {"ZH": "text.chinese_bert", "JP": "text.japanese_bert", "EN": "text.english_bert"}


def _check_language(language: str, known: Sequence[str]) -> None:
    if language not in known:
        raise ValueError(f"unknown language {language!r}; expected one of {sorted(known)}")


def cleaned_text_to_sequence(
    cleaned_text: Sequence[str], tones: Sequence[int], language: str
) -> tuple[list[int], list[int], list[int]]:
    """Map phones to symbol ids, shift tones into the language's tone range, repeat the language id.

    Returns `(phone_ids, tone_ids, language_ids)`, all of length `len(cleaned_text)`.
    """
    _check_language(language, language_id_map)
    if len(cleaned_text) != len(tones):
        raise ValueError(f"{len(cleaned_text)} phones but {len(tones)} tones")
    unknown = [p for p in cleaned_text if p not in symbol_to_id]
    if unknown:
        raise ValueError(f"phones not in the symbol table: {sorted(set(unknown))}")
    phone_ids = [symbol_to_id[p] for p in cleaned_text]
    tone_start = language_tone_start_map[language]
    tone_ids = [int(t) + tone_start for t in tones]
    lang_ids = [language_id_map[language]] * len(phone_ids)
    return phone_ids, tone_ids, lang_ids


def get_bert(
    norm_text: str,
    word2ph: Sequence[int],
    language: str,
    device: str | torch.device,
    bert_dir: str | None = None,
    style_text: str | None = None,
    style_weight: float = 0.7,
) -> torch.Tensor:
    """BERT features of `norm_text` expanded to phone level: a `[1024, sum(word2ph)]` tensor.

    `bert_dir` is the local transformers folder of the language's BERT model; None uses the
    reference's default location under `bert/` in the repository root. A non-empty `style_text`
    (in the same language) mixes every phone's feature with the mean feature of the style text:
    `(1 - style_weight) * feature + style_weight * mean`, as Bert-VITS2 2.3 does.
    """
    import importlib

    _check_language(language, _BERT_MODULES)
    module = importlib.import_module(_BERT_MODULES[language])
    return module.get_bert_feature(
        norm_text, word2ph, device, bert_dir=bert_dir, style_text=style_text, style_weight=style_weight
    )
