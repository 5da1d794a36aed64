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
    norm_text: str, word2ph: Sequence[int], device: str | torch.device = "cpu", bert_dir: str | Path | None = None
) -> torch.Tensor:
    """`[1024, sum(word2ph)]` features of the text as g2p split it into words (see japanese.bert_text)."""
    from text.japanese import bert_text

    return get_bert_feature_with(SPEC, bert_text(norm_text), word2ph, device, bert_dir)
