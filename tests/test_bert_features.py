"""BERT features through tiny random local models: shapes, hidden state -3, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from text import get_bert
from text.bert_features import REPO_ROOT, bert_loader, resolve_bert_dir
from text.chinese_bert import SPEC as ZH_SPEC
from text.cleaner import clean_text
from text.tiny_bert import build_tiny_bert

SENTENCES = {
    "ZH": "你好，世界！我们明天去公园玩吧。",
    "JP": "こんにちは、世界！私はコーヒーが好きです。",
    "EN": "Hello, world! It costs $4.50, don't you think?",
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_bert")
    return {lang: build_tiny_bert(root / lang, lang, seed=0, texts=[SENTENCES[lang]]) for lang in SENTENCES}


def _reference_features(folder: Path, text: str, word2ph: list[int], slow: bool) -> tuple[torch.Tensor, tuple]:
    # Independent recomputation: hidden state -3 of every token, repeated by word2ph.
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=not slow)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
    token_features = hidden[-3][0]  # [tokens + 2, 1024]
    assert token_features.shape[0] == len(word2ph)
    columns = [token_features[i] for i, n in enumerate(word2ph) for _ in range(n)]
    return torch.stack(columns, dim=1), hidden


@pytest.mark.parametrize("language", ["ZH", "JP", "EN"])
def test_features_shape_and_hidden_state(tiny_dirs: dict[str, Path], language: str) -> None:
    folder = tiny_dirs[language]
    norm_text, phones, _, word2ph = clean_text(SENTENCES[language], language, bert_dir=folder)
    features = get_bert(norm_text, word2ph, language, "cpu", bert_dir=folder)
    assert features.shape == (1024, len(phones))
    assert features.dtype == torch.float32
    if language == "JP":
        from text.japanese import bert_text

        norm_text = bert_text(norm_text)
    expected, hidden = _reference_features(folder, norm_text, word2ph, slow=language == "EN")
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    # Hidden state -3 is neither the embeddings nor the last layer of the 3-layer tiny model.
    assert len(hidden) == 4
    assert not torch.allclose(hidden[-3], hidden[-1]) and not torch.allclose(hidden[-3], hidden[0])
    # [CLS] and [SEP] features sit on the "_" pads at both ends, as in the reference.
    torch.testing.assert_close(features[:, 0], hidden[-3][0][0])
    torch.testing.assert_close(features[:, -1], hidden[-3][0][-1])


def test_loader_is_cached_per_folder_and_device(tiny_dirs: dict[str, Path]) -> None:
    folder = resolve_bert_dir(tiny_dirs["ZH"], ZH_SPEC)
    assert bert_loader(folder, "cpu") is bert_loader(folder, "cpu")


def test_word2ph_length_mismatch_is_reported(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"len\(word2ph\) = 3 but the tokenizer gives 4 tokens"):
        get_bert("你好世界", [1, 2, 1], "ZH", "cpu", bert_dir=tiny_dirs["ZH"])


@pytest.mark.parametrize(
    "language, hub_name",
    [
        ("ZH", "hfl/chinese-roberta-wwm-ext-large"),
        ("JP", "ku-nlp/deberta-v2-large-japanese-char-wwm"),
        ("EN", "microsoft/deberta-v3-large"),
    ],
)
def test_missing_folder_names_path_and_model(tmp_path: Path, language: str, hub_name: str) -> None:
    missing = tmp_path / "no-bert-here"
    with pytest.raises(FileNotFoundError) as error:
        get_bert("x", [1, 1, 1], language, "cpu", bert_dir=missing)
    assert str(missing) in str(error.value)
    assert hub_name in str(error.value) and "save_pretrained" in str(error.value)


def test_relative_bert_dir_is_resolved_against_repo_root(tmp_path: Path) -> None:
    assert resolve_bert_dir("bert/custom", ZH_SPEC) == REPO_ROOT / "bert" / "custom"
    assert resolve_bert_dir(None, ZH_SPEC) == REPO_ROOT / "bert" / "chinese-roberta-wwm-ext-large"
    assert resolve_bert_dir(tmp_path, ZH_SPEC) == tmp_path


def test_tiny_bert_is_seeded(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first = load_file(build_tiny_bert(tmp_path / "a", "EN", seed=3) / "model.safetensors")
    second = load_file(build_tiny_bert(tmp_path / "b", "EN", seed=3) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tiny_bert_rejects_unknown_language(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'KO'"):
        build_tiny_bert(tmp_path, "KO")


# --------------------------------------------------------------------------------------------------------------
# --bert-dir: one syntax, one meaning, in every command line (moved here from test_config.py)


def _bert_dir_values(cli: str, items: list[str]) -> list[str]:
    """Parse ``--bert-dir`` items with the named script's own argument parser."""
    flags = [arg for item in items for arg in ("--bert-dir", item)]
    if cli == "bert_gen":
        import bert_gen

        return bert_gen._parse_args(flags).bert_dir
    if cli == "preprocess_text":
        import preprocess_text

        return preprocess_text._parse_args(flags).bert_dir
    if cli == "infer":
        import infer

        return infer.build_parser().parse_args(["-m", "G.pth", "-t", "x", "-s", "s", "-o", "o.wav", *flags]).bert_dir
    if cli == "webui":
        import webui

        return webui.build_parser().parse_args(flags).bert_dir
    import server

    return server.build_parser().parse_args(flags).bert_dir


CLIS = ["bert_gen", "preprocess_text", "infer", "server", "webui"]


@pytest.mark.parametrize("cli", CLIS)
def test_every_cli_parses_bert_dir_the_same_way(tmp_path, cli):
    from text.bert_features import BERT_MODEL_FOLDERS, parse_bert_dirs

    root = tmp_path / "bert"
    root.mkdir()
    zh = tmp_path / "my-zh"
    values = _bert_dir_values(cli, [f"zh={zh}", str(root)])
    # A ROOT gives every language its usual folder name under it; LANG=DIR wins whatever the order.
    assert parse_bert_dirs(values) == {
        "ZH": str(zh),
        "JP": str(root / BERT_MODEL_FOLDERS["JP"]),
        "EN": str(root / BERT_MODEL_FOLDERS["EN"]),
    }
    assert parse_bert_dirs(_bert_dir_values(cli, [])) == {}
    assert parse_bert_dirs(_bert_dir_values(cli, [f"EN={zh}"])) == {"EN": str(zh)}


@pytest.mark.parametrize("cli", CLIS)
def test_every_cli_rejects_a_bad_bert_dir_item_up_front(cli, capsys):
    with pytest.raises(SystemExit) as info:
        _bert_dir_values(cli, ["KO=bert/korean"])
    assert info.value.code == 2
    assert "unknown language 'KO'" in capsys.readouterr().err


def test_a_model_folder_given_as_root_is_an_error_with_the_fix(tmp_path):
    from text.bert_features import parse_bert_dirs

    model = tmp_path / "tiny-zh"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"is a model folder.*write LANG="):
        parse_bert_dirs([str(model)])
    with pytest.raises(ValueError, match="no such folder"):
        parse_bert_dirs([str(tmp_path / "absent")])
    with pytest.raises(ValueError, match="at most one ROOT"):
        parse_bert_dirs([str(tmp_path), str(tmp_path)])
