"""Phone-level features of the English BERT (microsoft/deberta-v3-large), one word2ph entry per token."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from text import bert_features
from text.bert_features import BertModelSpec, get_bert_feature_with

SPEC = BertModelSpec(
    language="EN",
    default_dir="bert/deberta-v3-large",
    hub_name="microsoft/deberta-v3-large",
    slow_tokenizer=True,  # the sentencepiece tokenizer, as the reference's DebertaV2Tokenizer
)


def resolve_bert_dir(bert_dir: str | Path | None) -> Path:
    return bert_features.resolve_bert_dir(bert_dir, SPEC)


def get_bert_feature(
    norm_text: str,
    word2ph: Sequence[int],
    device: str | torch.device = "cpu",
    bert_dir: str | Path | None = None,
    style_text: str | None = None,
    style_weight: float = 0.7,
) -> torch.Tensor:
    """`[1024, sum(word2ph)]` features; word2ph must come from english.g2p with the same tokenizer."""
    return get_bert_feature_with(SPEC, norm_text, word2ph, device, bert_dir, style_text, style_weight)
