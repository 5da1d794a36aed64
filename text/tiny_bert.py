"""Tiny, randomly initialised BERT folders that stand in for the real BERT models.

`build_tiny_bert(folder, language)` writes a transformers folder (config, weights, tokenizer)
that `text.get_bert(..., bert_dir=folder)` loads like the real model. Hidden size is 1024, so
the features have the real width, but the encoder has only three layers and random weights: the
features carry no linguistic information. Tests and the demo corpus use it; the demo says so.

The tokenizers split the way each language's g2p counts tokens:
* ZH: BertTokenizer, one token per character (CJK characters and punctuation are split apart);
* JP: BertJapaneseTokenizer with the "character" sub-word tokenizer, like the real
  deberta-v2-large-japanese-char-wwm;
* EN: lower-cased BertTokenizer over whole words (no "##" pieces), so every basic-tokenizer
  piece is one token, as english.g2p assumes without a sentencepiece model.
Characters/words outside the vocabulary become one [UNK] token each, which keeps the counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from text.english import basic_split
from text.symbols import punctuation

HIDDEN_SIZE = 1024
_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Always in the vocabulary, so a few common sentences tokenise without [UNK].
_BUILTIN_TEXT = {
    "ZH": "你好世界今天是一个好天气我们去公园玩吧他说不要走然后就离开了这是测试的句子",
    "JP": "こんにちは世界私はコーヒーが好きです東京タワーは本当に高いですねありがとうございます",
    "EN": "hello world this is a test sentence the quick brown fox jumps over lazy dog it costs "
    "dollars cents and i you we they she he said",
}


def _vocabulary(language: str, texts: Iterable[str]) -> list[str]:
    corpus = [_BUILTIN_TEXT[language], *texts]
    if language == "EN":
        entries = {piece.lower() for text in corpus for piece in basic_split(text)}
    else:
        entries = {char for text in corpus for char in text if not char.isspace()}
    entries -= set(_SPECIAL_TOKENS)
    extra_punctuation = [p for p in punctuation if p not in entries]
    return _SPECIAL_TOKENS + extra_punctuation + sorted(entries)


def _save_tokenizer(folder: Path, language: str, vocab: list[str]) -> None:
    from transformers import BertJapaneseTokenizer, BertTokenizer

    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if language == "JP":
        tokenizer = BertJapaneseTokenizer(
            str(vocab_file),
            do_lower_case=False,
            word_tokenizer_type="basic",
            subword_tokenizer_type="character",
        )
    else:
        tokenizer = BertTokenizer(str(vocab_file), do_lower_case=language == "EN")
    tokenizer.save_pretrained(folder)


def build_tiny_bert(folder: str | Path, language: str, seed: int = 0, texts: Iterable[str] = ()) -> Path:
    """Write a tiny random BERT for `language` ("ZH", "JP", "EN") into `folder` and return it.

    `texts` adds their characters (ZH/JP) or words (EN) to the vocabulary.
    """
    from transformers import BertConfig, BertModel

    if language not in _BUILTIN_TEXT:
        raise ValueError(f"unknown language {language!r}; expected one of {sorted(_BUILTIN_TEXT)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocabulary(language, texts)
    _save_tokenizer(folder, language, vocab)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(folder)
    return folder
