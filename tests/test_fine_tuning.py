"""Fine-tuning on a small GPU (issue 16): train.freeze, train.grad_accum_steps and
train.activation_checkpointing as settings, and what freezing does to the nets (tiny config, CPU)."""

from __future__ import annotations

import json

import pytest

import config
import models


def _config(tiny_model_config: dict, **train: object) -> config.ModelConfig:
    data = json.loads(json.dumps(tiny_model_config))
    data["train"].update(train)
    return config.model_config_from_dict(data, "tiny.json")


def test_the_settings_default_to_the_reference_and_stay_out_of_saved_configs(tiny_model_config: dict) -> None:
    train = _config(tiny_model_config).train
    assert (train.accumulation, train.activation_checkpointing, train.freeze) == (1, None, None)
    assert not {"grad_accum_steps", "activation_checkpointing", "freeze"} & set(train.to_dict())
    tuned = _config(tiny_model_config, grad_accum_steps=4, activation_checkpointing=True, freeze=["decoder"]).train
    assert (tuned.accumulation, tuned.activation_checkpointing, tuned.freeze) == (4, True, ["decoder"])


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("freeze", ["decoder", "flw"], "text_encoder, duration_predictors, flow, decoder"),
        ("freeze", "decoder", "a list of part names"),
        ("grad_accum_steps", 0, "an integer >= 1"),
        ("activation_checkpointing", "yes", "true, false or null"),
    ],
)
def test_a_bad_value_names_the_setting_and_the_valid_ones(tiny_model_config, setting, value, expected) -> None:
    with pytest.raises(ValueError, match=f"train.{setting}") as caught:
        _config(tiny_model_config, **{setting: value})
    assert expected in str(caught.value)


def test_every_part_name_maps_to_modules_and_freezing_stops_their_gradients(tiny_model_config: dict) -> None:
    net = models.build_generator(_config(tiny_model_config), for_training=True)
    parts = models.freezable_parts(net)
    assert tuple(parts) == config.FREEZE_PARTS
    frozen = models.freeze_parts(net, ["decoder", "bert_projections"])
    assert frozen == sum(1 for m in parts["decoder"] + parts["bert_projections"] for _ in m.parameters())
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("dec.", "enc_p.bert_proj", "enc_p.ja_bert_proj")) for name in trainable)
    assert any(name.startswith("enc_p.encoder") for name in trainable)
    with pytest.raises(ValueError, match="unknown part.*flw.*valid: text_encoder"):
        models.freeze_parts(net, ["flw"])
