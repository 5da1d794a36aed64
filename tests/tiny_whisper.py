"""A tiny, randomly initialised Whisper folder (model, feature extractor, tokenizer), built locally.

It loads through the same transformers classes as a real checkpoint (``WhisperProcessor``,
``WhisperForConditionalGeneration``), so ``transcribe.py``'s loading, feature extraction, language detection and
decoding run for real; what it says is random. Its byte-level BPE vocabulary holds the special tokens Whisper
needs (three languages, the tasks, no-timestamps) and whole English words only, and its generation config
suppresses every other token: the random transcripts are sequences of real words, which the text cleaner and a
tiny English BERT built over the same words accept.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = (
    "the morning train was late again so we walked to station please put green cups on lowest shelf a small "
    "boat drifted slowly across quiet lake she finished book before rain stopped"
).split()
LANGUAGES = ("en", "zh", "ja")
SPECIAL = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    *(f"<|{code}|>" for code in LANGUAGES),
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (byte-level BPE's base vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _bpe(words: tuple[str, ...] | list[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """(vocab, merges, whole-word tokens): each word, with its leading space, merged left to right."""
    vocab: dict[str, int] = {char: i for i, char in enumerate(_byte_alphabet())}
    merges, word_tokens = [], []
    for word in words:
        pieces = ["Ġ"] + list(word)
        prefix = pieces[0]
        for char in pieces[1:]:
            merge = f"{prefix} {char}"
            prefix += char
            if prefix not in vocab:
                vocab[prefix] = len(vocab)
                merges.append(merge)
        word_tokens.append(prefix)
    return vocab, merges, word_tokens


def build_tiny_whisper(folder: Path, seed: int = 0, max_new_tokens: int = 8, speak: bool = True) -> Path:
    """Write the folder; ``speak=False`` suppresses every word, so the model returns nothing for any clip."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges, word_tokens = _bpe(WORDS)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = WhisperTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL[1:])})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL}
    vocab_size = len(tokenizer)

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(config)
    allowed = {tokenizer.convert_tokens_to_ids(t) for t in word_tokens} if speak else set()
    allowed.add(ids["<|endoftext|>"])
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        max_new_tokens=max_new_tokens,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        suppress_tokens=[i for i in range(vocab_size) if i not in allowed],
        begin_suppress_tokens=[ids["<|endoftext|>"]] if speak else [],
    )
    model.save_pretrained(folder)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer)
    processor.save_pretrained(folder)
    return folder


def whisper_folder_stub(folder: Path, model_type: str = "whisper") -> Path:
    """A folder that passes transcribe.check_model_folder without holding a model: for tests that must stop
    before any model loads (``model_type`` other than whisper: a model of another kind)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}), encoding="utf-8")
    for name in ("model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        (folder / name).write_text("{}", encoding="utf-8")
    return folder
