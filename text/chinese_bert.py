"""Phone-level features of the Chinese BERT (hfl/chinese-roberta-wwm-ext-large): one token per character."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from text.bert_features import BertModelSpec, get_bert_feature_with

SPEC = BertModelSpec(
    language="ZH",
    default_dir="bert/chinese-roberta-wwm-ext-large",
    hub_name="hfl/chinese-roberta-wwm-ext-large",
)


def get_bert_feature(
    norm_text: str,
    word2ph: Sequence[int],
    device: str | torch.device = "cpu",
    bert_dir: str | Path | None = None,
    style_text: str | None = None,
    style_weight: float = 0.7,
) -> torch.Tensor:
    """`[1024, sum(word2ph)]` features; `len(word2ph)` must be `len(norm_text) + 2`."""
    return get_bert_feature_with(SPEC, norm_text, word2ph, device, bert_dir, style_text, style_weight)
