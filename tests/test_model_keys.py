"""The four nets reproduce the reference state_dict layout (keys, order, shapes, dtypes) and parameter counts,
for the official config and the kit's dev config, so reference checkpoints load with strict=True."""

from __future__ import annotations

import functools
import gc
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from kit import assert_every_entry
from model_nets import state_dict_layout

import models

CONFIGS = {
    "dev": ("dev/config.json", "dev/keys.json"),
    "official": ("official_config.json", "official_keys.json"),
}
BUILDERS = {"net_dur_disc": models.build_duration_discriminator, "net_wd": models.build_wavlm_discriminator}


def _summary(net: torch.nn.Module) -> dict:
    return {
        "state_dict": state_dict_layout(net),
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "num_state_dict_elements": sum(v.numel() for v in net.state_dict().values()),
        "num_parameters_by_child": {
            name: sum(p.numel() for p in child.parameters()) for name, child in net.named_children()
        },
        "num_weight_g": sum(key.endswith(".weight_g") for key in net.state_dict()),
        "num_weight_v": sum(key.endswith(".weight_v") for key in net.state_dict()),
        "num_parametrizations": sum("parametrizations." in key for key in net.state_dict()),
    }


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def layouts(request, kit_dir: Path, symbols_json: dict) -> tuple[dict, dict]:
    """(our summaries, the reference keys file) per config; the nets are built once and dropped again."""
    config_path, keys_path = CONFIGS[request.param]
    config = json.loads((kit_dir / config_path).read_text(encoding="utf-8"))
    reference = json.loads((kit_dir / keys_path).read_text(encoding="utf-8"))
    ours = {}
    for name in ("net_g", "net_dur_disc", "net_wd"):
        if name == "net_g":
            net = models.build_generator(config, for_training=True, n_vocab=len(symbols_json["symbols"]))
        else:
            net = BUILDERS[name](config)
        ours[name] = _summary(net)
        del net
        gc.collect()
    return ours, reference


@pytest.fixture(scope="module")
def net_d_summary(kit_dir: Path) -> dict:
    config = json.loads((kit_dir / "dev/config.json").read_text(encoding="utf-8"))
    net = models.build_period_discriminator(config)
    summary = _summary(net)
    del net
    gc.collect()
    return summary


def _check_layout(actual: list, expected: list) -> None:
    missing = sorted({row[0] for row in expected} - {row[0] for row in actual})
    unexpected = sorted({row[0] for row in actual} - {row[0] for row in expected})
    assert not missing and not unexpected, f"missing {missing[:10]}, unexpected {unexpected[:10]}"
    for position, (ours_row, ref_row) in enumerate(zip(actual, expected)):
        assert ours_row == ref_row, f"entry {position}: ours {ours_row} != reference {ref_row}"
    assert len(actual) == len(expected)


def _check_equal(ours: object, reference: object, published: object = None) -> None:
    assert ours == reference, f"ours {ours} != reference {reference}"
    if published is not None:
        assert ours == published, f"ours {ours} != {published} (the kit README's figure)"


# What each net's entry in keys.json holds, all compared (the test asserts these are every net and every field
# the file has). The MultiPeriodDiscriminator does not depend on the config: built once, compared with both files.
NET_NAMES = ["net_g", "net_d", "net_dur_disc", "net_wd"]
FIELDS = [
    "state_dict",
    "num_state_dict_entries",
    "num_parameters",
    "num_state_dict_elements",
    "num_parameters_by_child",
    "num_weight_g",
    "num_weight_v",
    "num_parametrizations",
]
PUBLISHED = {("net_d", "num_parameters"): 46_747_132, ("net_d", "num_weight_g"): 37}


def test_layouts_and_counts_match_reference(layouts, net_d_summary: dict) -> None:
    """Every field of every net's keys.json entry for this config (state_dict rows in order, entry count,
    parameter and element counts, per-child counts, weight-norm key counts); a failure lists every differing
    field of every net."""
    ours, reference = layouts
    ours = {**ours, "net_d": net_d_summary}
    checks: dict[str, Callable[[], None]] = {}
    for net_name in NET_NAMES:
        summary, expected = ours[net_name], reference[net_name]
        checks[f"{net_name}.state_dict"] = functools.partial(
            _check_layout, summary["state_dict"], expected["state_dict"]
        )
        checks[f"{net_name}.num_state_dict_entries"] = functools.partial(
            _check_equal, len(summary["state_dict"]), expected["num_state_dict_entries"]
        )
        for field in FIELDS[2:]:
            published = PUBLISHED.get((net_name, field))
            checks[f"{net_name}.{field}"] = functools.partial(_check_equal, summary[field], expected[field], published)
    nets = [name for name in reference if name.startswith("net_")]
    assert sorted(nets) == sorted(NET_NAMES)
    assert_every_entry(checks, {f"{net}.{field}" for net in nets for field in reference[net]}, "keys.json")


def _config_b(dev_config: dict) -> dict:
    """The kit's held-back config B (residual-coupling flow, ResBlock "2", 16 kHz) as its README describes it."""
    config = json.loads(json.dumps(dev_config))
    config["data"].update(sampling_rate=16000, filter_length=512, hop_length=128, win_length=512, n_speakers=3)
    config["data"]["spk2id"] = {f"spk{i}": i for i in range(3)}  # ids must be < n_speakers (config.py checks)
    config["train"]["segment_size"] = 4096
    config["model"].update(
        inter_channels=24,
        hidden_channels=24,
        filter_channels=48,
        n_heads=3,
        n_layers=3,
        resblock="2",
        resblock_kernel_sizes=[3, 5],
        resblock_dilation_sizes=[[1, 3], [1, 3]],
        upsample_rates=[4, 4, 4, 2],
        upsample_kernel_sizes=[8, 8, 8, 4],
        upsample_initial_channel=48,
        gin_channels=24,
        use_transformer_flow=False,
        n_flow_layer=2,
    )
    config["model"]["slm"].update(hidden=24, nlayers=3, initial_channel=8)
    return config


def test_config_b_parameter_counts(tiny_model_config: dict) -> None:
    """Config B's published parameter counts (the kit README's table, so no kit files are needed) check the
    paths config A does not use."""
    from text.symbols import symbols

    config = _config_b(tiny_model_config)
    net_g = models.build_generator(config, for_training=True, n_vocab=len(symbols))
    assert sum(p.numel() for p in net_g.parameters()) == 598_829
    assert sum(p.numel() for p in models.build_duration_discriminator(config).parameters()) == 18_505
    assert sum(p.numel() for p in models.build_wavlm_discriminator(config).parameters()) == 9_170
    # Residual coupling: still 4 couplings (plus flips); n_flow_layer is the WN depth inside each.
    couplings = [flow for flow in net_g.flow.flows if hasattr(flow, "enc")]
    assert len(couplings) == 4
    assert all(len(flow.enc.in_layers) == 2 for flow in couplings)


def test_config_b_runs_forward_and_infer(tiny_model_config: dict) -> None:
    """Config B trains and speaks: forward gives segment-sized audio, infer whole hops, all finite."""
    from text.symbols import symbols

    config = _config_b(tiny_model_config)
    torch.manual_seed(0)
    net_g = models.build_generator(config, for_training=True, n_vocab=len(symbols)).eval()
    hop, segment = config["data"]["hop_length"], config["train"]["segment_size"]
    b, t_x, t_spec = 2, 15, 52
    x = torch.randint(1, len(symbols), (b, t_x))
    x_lengths = torch.tensor([t_x, 9])
    tone = torch.zeros_like(x)
    language = torch.ones_like(x)
    bert = torch.randn(b, 1024, t_x)
    spec = torch.randn(b, config["data"]["filter_length"] // 2 + 1, t_spec).abs()
    spec_lengths = torch.tensor([t_spec, 38])
    sid = torch.tensor([2, 0])
    with torch.no_grad():
        out = net_g(x, x_lengths, spec, spec_lengths, sid, tone, language, bert, bert, bert)
        o, attn, y_mask, _ = net_g.infer(x, x_lengths, sid, tone, language, bert, bert, bert, noise_scale=0.5)
    assert out[0].shape == (b, 1, segment) and torch.isfinite(out[0]).all()
    assert out[2].shape == (b, 1, t_spec, t_x)
    assert o.shape == (b, 1, y_mask.shape[-1] * hop) and torch.isfinite(o).all()
