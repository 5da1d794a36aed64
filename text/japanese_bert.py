"""Phone-level features of the Japanese BERT (ku-nlp/deberta-v2-large-japanese-char-wwm), one token per character."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from text.bert_features import BertModelSpec, get_bert_feature_with

SPEC = BertModelSpec(
    language="JP",
    default_dir="bert/deberta-v2-large-japanese-char-wwm",
    hub_name="ku-nlp/deberta-v2-large-japanese-char-wwm",
)


def get_bert_feature(
    norm_text: str,
    word2ph: Sequence[int],
    device: str | torch.device = "cpu",
    bert_dir: str | Path | None = None,
    style_text: str | None = None,
    style_weight: float = 0.7,
) -> torch.Tensor:
    """`[1024, sum(word2ph)]` features of the text as g2p split it into words (see japanese.bert_text).

    A style text is prepared like the main text (normalised, then split into words by the same g2p) so the
    Japanese BERT sees the same kind of input.
    """
    from text.japanese import bert_text, text_normalize

    if style_text:
        style_text = bert_text(text_normalize(style_text))
    return get_bert_feature_with(SPEC, bert_text(norm_text), word2ph, device, bert_dir, style_text, style_weight)
