"""Shared machinery of the per-language BERT feature modules.

A `BertModelSpec` names a language's default local folder and the hub model that belongs there.
`bert_loader(folder, device)` returns a cached `BertLoader` (tokenizer + encoder on one device);
`phone_level_features` repeats token features by `word2ph`. The reference takes hidden state -3
and keeps the [CLS]/[SEP] positions: they line up with the "_" pads at both ends of the phone
sequence (word2ph entries of 1), so `len(word2ph)` must equal the number of tokens + 2.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from text.symbols import LANGUAGES

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
HIDDEN_STATE_INDEX = -3


@dataclass(frozen=True)
class BertModelSpec:
    language: str
    default_dir: str  # relative to the repository root
    hub_name: str  # the model to save into that folder
    slow_tokenizer: bool = False


def resolve_bert_dir(bert_dir: str | Path | None, spec: BertModelSpec) -> Path:
    """Absolute folder: `bert_dir` as given (relative paths against the repo root) or the default."""
    folder = Path(bert_dir) if bert_dir is not None else Path(spec.default_dir)
    return folder if folder.is_absolute() else REPO_ROOT / folder


def check_bert_dir(folder: Path, spec: BertModelSpec) -> None:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{spec.language} BERT model not found at {folder}: put {spec.hub_name} there, saved with "
            "save_pretrained (config.json, tokenizer files and weights), or pass bert_dir=<folder>"
        )


class BertLoader:
    """A tokenizer and encoder from one local folder, on one device, in eval mode."""

    def __init__(self, folder: Path, device: torch.device, slow_tokenizer: bool) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = folder
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=not slow_tokenizer)
        # The base encoder gives the same hidden states as the masked-LM model the reference loads.
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        logger.info("loaded BERT from %s on %s", folder, device)

    @torch.no_grad()
    def token_features(self, text: str) -> torch.Tensor:
        """Hidden state -3 for every token of `text`, [CLS] and [SEP] included: [n_tokens + 2, hidden]."""
        inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs, output_hidden_states=True)
        return outputs.hidden_states[HIDDEN_STATE_INDEX][0].float().cpu()


@functools.lru_cache(maxsize=8)
def bert_loader(folder: Path, device: str, slow_tokenizer: bool = False) -> BertLoader:
    return BertLoader(folder, torch.device(device), slow_tokenizer)


def phone_level_features(token_features: torch.Tensor, word2ph: Sequence[int], text: str) -> torch.Tensor:
    """Repeat each token's feature word2ph[i] times: [n_tokens + 2, hidden] -> [hidden, sum(word2ph)]."""
    if len(word2ph) != token_features.shape[0]:
        raise ValueError(
            f"len(word2ph) = {len(word2ph)} but the tokenizer gives {token_features.shape[0] - 2} tokens "
            f"+ 2 ([CLS]/[SEP]) for {text!r}; word2ph must have one entry per token plus the two pads "
            "(use the same BERT folder for cleaning and for features)"
        )
    repeats = torch.as_tensor(list(word2ph), dtype=torch.long)
    return torch.repeat_interleave(token_features, repeats, dim=0).T  # [hidden, n_phones]


def check_style_weight(style_weight: float) -> float:
    weight = float(style_weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"style_weight must be within [0, 1], got {style_weight}")
    return weight


def mix_style(features: torch.Tensor, style_token_features: torch.Tensor, style_weight: float) -> torch.Tensor:
    """The reference's style mixing: every phone's feature becomes ``(1 - w) * feature + w * style_mean``.

    ``style_mean`` is the mean over all tokens of the style text, [CLS] and [SEP] included.
    ``features`` is [hidden, n_phones], ``style_token_features`` [n_style_tokens + 2, hidden].
    """
    weight = check_style_weight(style_weight)
    style_mean = style_token_features.mean(dim=0)
    return features * (1.0 - weight) + style_mean.unsqueeze(1) * weight


def get_bert_feature_with(
    spec: BertModelSpec,
    text: str,
    word2ph: Sequence[int],
    device: str | torch.device,
    bert_dir: str | Path | None,
    style_text: str | None = None,
    style_weight: float = 0.7,
) -> torch.Tensor:
    """Phone-level features of ``text``; a non-empty ``style_text`` pulls them towards its mean feature."""
    folder = resolve_bert_dir(bert_dir, spec)
    check_bert_dir(folder, spec)
    loader = bert_loader(folder, str(torch.device(device)), spec.slow_tokenizer)
    features = phone_level_features(loader.token_features(text), word2ph, text)
    if style_text:  # None or "" means no style, as in the reference
        features = mix_style(features, loader.token_features(style_text), style_weight)
    return features


# Each language's model folder name under a BERT root (the repository's bert/ folder is one).
BERT_MODEL_FOLDERS = {
    "ZH": "chinese-roberta-wwm-ext-large",
    "JP": "deberta-v2-large-japanese-char-wwm",
    "EN": "deberta-v3-large",
}

# The one --bert-dir syntax of every command line (bert_gen, preprocess_text, infer, server).
BERT_DIR_METAVAR = "ROOT|LANG=DIR"
BERT_DIR_HELP = (
    "local BERT models, repeatable: ROOT is a folder holding each language's model under its usual name ("
    + ", ".join(f"{lang}: ROOT/{name}" for lang, name in BERT_MODEL_FOLDERS.items())
    + "); LANG=DIR is the model folder of one language (ZH, JP or EN) and wins over ROOT. "
    "Default: the bert/ folder of the repository"
)


def bert_dir_item(value: str) -> str:
    """argparse ``type`` of ``--bert-dir``: checks one item's syntax, so a typo fails before any work starts."""
    language, sep, folder = value.partition("=")
    if sep and language.upper() in LANGUAGES:
        if not folder:
            raise argparse.ArgumentTypeError(f"{value!r}: the folder after '{language}=' is empty")
    elif sep and language.isalpha() and len(language) <= 3:
        raise argparse.ArgumentTypeError(f"{value!r}: unknown language {language!r}; use one of {', '.join(LANGUAGES)}")
    elif not value:
        raise argparse.ArgumentTypeError("empty --bert-dir value")
    return value


def add_bert_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--bert-dir`` with the shared syntax; read it back with :func:`parse_bert_dirs`."""
    parser.add_argument(
        "--bert-dir", action="append", default=[], type=bert_dir_item, metavar=BERT_DIR_METAVAR, help=BERT_DIR_HELP
    )


def parse_bert_dirs(values: Sequence[str] | None) -> dict[str, str]:
    """``--bert-dir`` values as language -> model folder (languages left out use the default under bert/).

    ``ROOT`` (at most one) gives every language ``ROOT/<its usual folder name>``; ``LANG=DIR`` gives one
    language ``DIR`` and wins over ROOT whatever the order. A ROOT that is itself a model folder (it has a
    config.json) is an error: it would silently be used for no language.
    """
    roots: list[str] = []
    dirs: dict[str, str] = {}
    for value in values or []:
        bert_dir_item(value)  # the same checks when called without argparse
        language, sep, folder = value.partition("=")
        if sep and language.upper() in LANGUAGES:
            dirs[language.upper()] = folder
        else:
            roots.append(value)
    if len(roots) > 1:
        raise ValueError(f"--bert-dir: give at most one ROOT folder, got {', '.join(map(repr, roots))}")
    if roots:
        root = Path(roots[0])
        if (root / "config.json").is_file():
            raise ValueError(
                f"--bert-dir {roots[0]!r} is a model folder, not a ROOT holding "
                f"{', '.join(BERT_MODEL_FOLDERS.values())}: write LANG={roots[0]} (e.g. ZH={roots[0]}) to use it "
                "for one language"
            )
        if not root.is_dir():
            raise ValueError(f"--bert-dir {roots[0]!r}: no such folder")
        for lang in LANGUAGES:
            dirs.setdefault(lang, str(root / BERT_MODEL_FOLDERS[lang]))
    return {lang: dirs[lang] for lang in LANGUAGES if lang in dirs}
