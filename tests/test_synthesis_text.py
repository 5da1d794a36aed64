"""Style text, feature-level joins of parts, mix parsing, long-text planning, "auto" language identification.

Everything runs on tiny random BERTs (text.tiny_bert) and needs neither the reference kit nor a generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from language_id_cases import CASES
from torch import nn

import infer
import synthesis_plan
from text import get_bert
from text.cleaner import clean_text
from text.language_id import split_by_language, split_by_script
from text.tiny_bert import build_tiny_bert

SENTENCES = {
    "ZH": "你好，世界！我们明天去公园玩吧。",
    "JP": "こんにちは、世界！私はコーヒーが好きです。",
    "EN": "Hello, world! It costs four dollars, don't you think?",
}
STYLES = {"ZH": "我今天非常开心！", "JP": "今日はとても嬉しいです！", "EN": "I am so happy today!"}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_bert")
    return {
        lang: build_tiny_bert(root / lang, lang, seed=1, texts=[SENTENCES[lang], STYLES[lang]]) for lang in SENTENCES
    }


def _hidden_minus_3(folder: Path, text: str, slow: bool) -> torch.Tensor:
    """Hidden state -3 of every token of `text`, [CLS]/[SEP] included, computed here with transformers."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=not slow)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-3][0]


@pytest.mark.parametrize("language", ["ZH", "JP", "EN"])
def test_style_text_mixes_every_phone_with_the_style_mean(tiny_dirs: dict[str, Path], language: str) -> None:
    folder, weight = tiny_dirs[language], 0.3
    norm_text, phones, _, word2ph = clean_text(SENTENCES[language], language, bert_dir=folder)
    plain = get_bert(norm_text, word2ph, language, "cpu", bert_dir=folder)
    styled = get_bert(
        norm_text, word2ph, language, "cpu", bert_dir=folder, style_text=STYLES[language], style_weight=weight
    )
    style_input = STYLES[language]
    if language == "JP":  # the Japanese style text is prepared like the main text
        from text.japanese import bert_text, text_normalize

        style_input = bert_text(text_normalize(style_input))
    style_tokens = _hidden_minus_3(folder, style_input, slow=language == "EN")
    assert style_tokens.shape[0] >= 4  # [CLS], some tokens, [SEP]: the mean covers all of them
    mean = style_tokens.sum(dim=0) / style_tokens.shape[0]
    # Hand-written formula, phone by phone: (1 - w) * feature + w * mean.
    for phone in (0, len(phones) // 2, len(phones) - 1):
        expected = plain[:, phone] * (1 - weight) + mean * weight
        torch.testing.assert_close(styled[:, phone], expected, atol=1e-5, rtol=1e-5)
    assert styled.shape == plain.shape == (1024, len(phones))
    # Weight 0 and an empty style text leave the features alone; weight 1 gives the style mean everywhere.
    none = get_bert(norm_text, word2ph, language, "cpu", bert_dir=folder, style_text="", style_weight=0.9)
    zero = get_bert(norm_text, word2ph, language, "cpu", bert_dir=folder, style_text=STYLES[language], style_weight=0.0)
    torch.testing.assert_close(none, plain)
    torch.testing.assert_close(zero, plain)
    full = get_bert(norm_text, word2ph, language, "cpu", bert_dir=folder, style_text=STYLES[language], style_weight=1)
    torch.testing.assert_close(full, mean.unsqueeze(1).expand_as(full), atol=1e-5, rtol=1e-5)


def test_style_weight_outside_unit_interval_is_rejected(tiny_dirs: dict[str, Path]) -> None:
    norm_text, _, _, word2ph = clean_text("你好", "ZH", bert_dir=tiny_dirs["ZH"])
    with pytest.raises(ValueError, match=r"style_weight must be within \[0, 1\], got 1.5"):
        get_bert(norm_text, word2ph, "ZH", "cpu", bert_dir=tiny_dirs["ZH"], style_text="开心", style_weight=1.5)


@pytest.fixture(scope="module")
def make_synthesizer(tiny_dirs: dict[str, Path], tiny_model_config: dict):
    """Synthesizers for text preparation only (no generator), with speakers a and b and a given regime."""

    def make(unused_bert: str | None) -> infer.Synthesizer:
        config = json.loads(json.dumps(tiny_model_config))
        config["data"].update({"spk2id": {"a": 0, "b": 1}, "n_speakers": 2})
        if unused_bert is not None:
            config["data"]["unused_bert"] = unused_bert
        return infer.Synthesizer(nn.Identity(), config, bert_dirs=tiny_dirs)

    return make


@pytest.mark.parametrize("unused_bert", ["zeros", "randn"])
def test_two_parts_join_at_feature_level(make_synthesizer, unused_bert: str) -> None:
    synthesizer = make_synthesizer(unused_bert)
    parts = [("你好，世界", "ZH"), ("hello world", "EN")]
    joined = synthesizer.prepare_parts(parts, generator=torch.Generator().manual_seed(5))
    # The same parts prepared one by one, drawing the noise from the same generator in the same order.
    generator = torch.Generator().manual_seed(5)
    zh = synthesizer.prepare("你好，世界", "ZH", generator=generator)
    en = synthesizer.prepare("hello world", "EN", generator=generator)
    n_zh, n_en = zh.phones.numel(), en.phones.numel()
    assert joined.phones.numel() == (n_zh - 2) + (n_en - 3)
    for name in ("phones", "tones", "lang_ids", "bert", "ja_bert", "en_bert"):
        whole, first, second = getattr(joined, name), getattr(zh, name), getattr(en, name)
        assert torch.equal(whole[..., : n_zh - 2], first[..., : n_zh - 2]), name
        assert torch.equal(whole[..., n_zh - 2 :], second[..., 3:]), name
    # The ZH part drops its trailing pad and blank, the EN part its leading blank, pad and blank.
    from text.symbols import language_id_map, symbol_to_id

    assert zh.phones[-2:].tolist() == [symbol_to_id["_"], 0] and en.phones[:3].tolist() == [0, symbol_to_id["_"], 0]
    assert set(joined.lang_ids[: n_zh - 2].tolist()) == {0, language_id_map["ZH"]}
    assert language_id_map["EN"] in joined.lang_ids[n_zh - 2 :].tolist()
    # The Chinese features sit in the ZH slot of the first part, the English ones in the EN slot of the second.
    if unused_bert == "zeros":
        assert torch.count_nonzero(joined.en_bert[:, : n_zh - 2]) == 0
        assert torch.count_nonzero(joined.bert[:, n_zh - 2 :]) == 0
        assert torch.count_nonzero(joined.ja_bert) == 0
    else:
        assert abs(joined.ja_bert.std().item() - 1.0) < 0.05


def test_synthesizer_reads_unused_bert_regime(make_synthesizer) -> None:
    assert make_synthesizer(None).unused_bert == "randn"  # the reference's configs have no such key
    assert make_synthesizer("zeros").unused_bert == "zeros"
    with pytest.raises(ValueError, match=r"unused_bert.*'noise'"):
        make_synthesizer("noise")


def test_parse_mix() -> None:
    pieces = synthesis_plan.parse_mix("[a]<zh>你好<en>hello world|<jp>こんにちは[b]<EN>bye<ja>さようなら")
    assert pieces == [
        synthesis_plan.MixPiece("a", [("你好", "ZH"), ("hello world", "EN")]),
        synthesis_plan.MixPiece("a", [("こんにちは", "JP")]),
        synthesis_plan.MixPiece("b", [("bye", "EN"), ("さようなら", "JP")]),
    ]
    # Without a speaker tag the default speaker speaks.
    assert synthesis_plan.parse_mix("<zh>你好", "a") == [synthesis_plan.MixPiece("a", [("你好", "ZH")])]


@pytest.mark.parametrize(
    "text, message",
    [
        ("<fr>bonjour", r"unknown language tag <fr> at position 0; use <zh>, <jp> or <en>"),
        ("你好<zh>世界", r"'你好' at position 0 has no language tag before it"),
        ("[a]你好", r"'你好' at position 3 has no language tag before it"),
        ("<zh>你好<en", r"unmatched '<' at position 6"),
        ("[a]<zh>你好[b]", r"speaker tag \[b\] at position 9 has no text"),
        ("[]<zh>你好", r"empty speaker tag \[\] at position 0"),
        ("<zh>  |  <en> ", r"no tagged text to speak"),
        ("<zh>你好", r"no speaker for '你好'"),
    ],
)
def test_malformed_mix_text_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesis_plan.parse_mix(text, default_speaker="a" if "no speaker" not in message else None)


def test_plan_parts_splits_paragraphs_sentences_and_keeps_runs_together() -> None:
    plan = synthesis_plan.plan_parts([("你好。今天", "ZH"), ("hello!", "EN"), ("再见\n\n第二段。", "ZH")], "a")
    assert [[u.parts for u in paragraph] for paragraph in plan] == [
        [(("你好。", "ZH"),), (("今天", "ZH"), ("hello!", "EN")), (("再见", "ZH"),)],
        [(("第二段。", "ZH"),)],
    ]
    whole = synthesis_plan.plan_parts([("你好。今天", "ZH"), ("hello!", "EN")], "a", split=False)
    assert whole == [[synthesis_plan.Utterance("a", (("你好。今天", "ZH"), ("hello!", "EN")))]]


def test_synthesizer_plans_mix_and_auto(make_synthesizer) -> None:
    synthesizer = make_synthesizer("zeros")
    plan = synthesis_plan.plan_text("我喜欢Python。私はコーヒーが好きです。", "a", "AUTO")
    assert [[u.parts for u in paragraph] for paragraph in plan] == [
        [(("我喜欢", "ZH"), ("Python。", "EN")), (("私はコーヒーが好きです。", "JP"),)]
    ]
    plan = synthesis_plan.plan_text("我喜欢Python|私は", "a", "auto", split=False)
    assert plan == [
        [
            synthesis_plan.Utterance("a", (("我喜欢", "ZH"), ("Python", "EN"))),
            synthesis_plan.Utterance("a", (("私は", "JP"),)),
        ]
    ]
    plan = synthesis_plan.plan_text("[b]<zh>你好<en>hello|<jp>こんにちは", "a", "Mix")
    assert plan == [
        [
            synthesis_plan.Utterance("b", (("你好", "ZH"), ("hello", "EN"))),
            synthesis_plan.Utterance("b", (("こんにちは", "JP"),)),
        ]
    ]
    assert synthesizer.languages == ["ZH", "JP", "EN", "mix", "auto"]
    with pytest.raises(ValueError, match="unknown language 'FR'"):
        synthesis_plan.plan_text("bonjour", "a", "FR")


def test_split_by_script_keeps_digits_and_cuts_at_script_changes() -> None:
    assert split_by_script("我买了3个apple，then走了") == ["我买了3个", "apple，", "then", "走了"]
    assert "".join(split_by_script("iPhone 15 Pro很好用。")) == "iPhone 15 Pro很好用。"


def test_auto_language_accuracy_on_clear_cases() -> None:
    """The table's clear cases (see tests/language_id_cases.py); bench/language_id.py prints the figures."""
    clear = [case for case in CASES if case[2]]
    assert len(CASES) >= 30 and len(clear) >= 25
    wrong = [(text, expected, split_by_language(text)) for text, expected, _ in clear]
    wrong = [item for item in wrong if item[1] != item[2]]
    accuracy = 1 - len(wrong) / len(clear)
    print(f"auto language split: {accuracy:.1%} of {len(clear)} clear sentences exact; wrong: {wrong}")
    assert accuracy >= 0.95, wrong
    # Kana always makes Japanese, Latin-only text English, and letterless text the default.
    assert split_by_language("ひらがな") == [("ひらがな", "JP")]
    assert split_by_language("OK") == [("OK", "EN")]
    assert split_by_language("123。") == [("123。", "ZH")]
    assert split_by_language("  ") == []
