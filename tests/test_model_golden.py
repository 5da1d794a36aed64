"""Our nets, loaded with the kit's weights, reproduce the reference outputs (golden.pt, golden_perturbed.pt).

Floats within atol = rtol = 1e-4 (README tolerances), integer and 0/1 tensors exactly.
"""

from __future__ import annotations

import pytest
import torch
from kit import net_d_state_dict
from model_nets import (
    assert_exact,
    assert_float_close,
    patch_random_to_zeros,
)

import models
import monotonic_align

GOLDEN_SETS = ["golden", "golden_perturbed"]
INFER_CASES = ["sdp0", "sdp1", "ls13"]
TEXT_INPUTS = ("x", "x_lengths", "sid", "tone", "language", "bert", "ja_bert", "en_bert")


@pytest.fixture(scope="module")
def net_g(dev_config: dict, symbols_json: dict):
    net = models.build_generator(dev_config, for_training=True, n_vocab=len(symbols_json["symbols"]))
    return net.eval()


@pytest.fixture(scope="module")
def net_dur_disc(dev_config: dict):
    return models.build_duration_discriminator(dev_config).eval()


@pytest.fixture(scope="module")
def net_d(dev_config: dict, golden: dict):
    net = models.build_period_discriminator(dev_config)
    net.load_state_dict(net_d_state_dict(golden), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def net_wd(dev_config: dict, golden: dict):
    net = models.build_wavlm_discriminator(dev_config)
    net.load_state_dict(golden["weights_wd"], strict=True)
    return net.eval()


@pytest.fixture(params=GOLDEN_SETS)
def reference(request) -> dict:
    """golden.pt or golden_perturbed.pt (same inputs, perturbed generator / duration-discriminator weights)."""
    return request.getfixturevalue(request.param)


def _load_strict(net: torch.nn.Module, weights: dict) -> None:
    result = net.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


class _Recorder:
    """Forward hooks that keep every output of the given submodules, in call order."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: dict[str, list] = {name: [] for name in modules}
        self._handles = [
            module.register_forward_hook(lambda _m, _i, output, name=name: self.calls[name].append(output))
            for name, module in modules.items()
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@pytest.mark.parametrize("case", INFER_CASES)
def test_infer_matches_reference(net_g, reference: dict, case: str) -> None:
    _load_strict(net_g, reference["weights_g"])
    expected = reference["infer"][case]
    inputs = {name: reference["inputs"][name] for name in TEXT_INPUTS}
    recorder = _Recorder({"enc_p": net_g.enc_p, "dp": net_g.dp, "sdp": net_g.sdp})
    try:
        with torch.no_grad():
            o, attn, y_mask, (z, z_p, m_p, logs_p) = net_g.infer(**inputs, **expected["params"])
    finally:
        recorder.remove()

    assert_exact(attn, expected["attn"], "attn")
    assert_exact(y_mask, expected["y_mask"], "y_mask")
    assert_exact(y_mask.sum([1, 2]).long(), expected["y_lengths"], "y_lengths")
    for name, actual in {"o": o, "z": z, "z_p": z_p, "m_p": m_p, "logs_p": logs_p}.items():
        assert_float_close(actual, expected[name], name)

    # Both duration predictors run once per call whatever sdp_ratio is; the text encoder runs once.
    assert [len(recorder.calls[name]) for name in ("enc_p", "dp", "sdp")] == [1, 1, 1]
    enc_x, enc_m_p, enc_logs_p, enc_x_mask = recorder.calls["enc_p"][0]
    assert_float_close(enc_x, expected["enc_p_x"], "enc_p_x")
    assert_float_close(enc_m_p, expected["enc_p_m_p"], "enc_p_m_p")
    assert_float_close(enc_logs_p, expected["enc_p_logs_p"], "enc_p_logs_p")
    assert_exact(enc_x_mask, expected["enc_p_x_mask"], "enc_p_x_mask")
    assert_float_close(recorder.calls["dp"][0], expected["dp_logw"], "dp_logw")
    assert_float_close(recorder.calls["sdp"][0], expected["sdp_logw"], "sdp_logw")


def test_training_forward_matches_reference(net_g, reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    _load_strict(net_g, reference["weights_g"])
    expected = reference["forward"]
    assert net_g.current_mas_noise_scale == expected["current_mas_noise_scale"]
    inputs = reference["inputs"]

    mas_calls = []
    original_maximum_path = monotonic_align.maximum_path

    def recording_maximum_path(neg_cent, mask):
        path = original_maximum_path(neg_cent, mask)
        mas_calls.append((neg_cent.clone(), mask.clone(), path.clone()))
        return path

    monkeypatch.setattr(monotonic_align, "maximum_path", recording_maximum_path)
    patch_random_to_zeros(monkeypatch)
    recorder = _Recorder({"enc_p": net_g.enc_p, "sdp": net_g.sdp})
    try:
        with torch.no_grad():
            output = net_g(
                inputs["x"],
                inputs["x_lengths"],
                inputs["spec"],
                inputs["spec_lengths"],
                inputs["sid"],
                inputs["tone"],
                inputs["language"],
                inputs["bert"],
                inputs["ja_bert"],
                inputs["en_bert"],
            )
    finally:
        recorder.remove()

    o, l_length, attn, ids_slice, x_mask, y_mask, latents, durations, g = output
    z, z_p, m_p, logs_p, m_q, logs_q = latents
    x, logw, logw_, logw_sdp = durations
    assert output.latents.z is z and output.durations.logw_sdp is logw_sdp  # named access agrees with unpacking

    for name, actual in {"attn": attn, "ids_slice": ids_slice, "x_mask": x_mask, "y_mask": y_mask}.items():
        assert_exact(actual, expected[name], name)
    floats = {
        "o": o,
        "l_length": l_length,
        "z": z,
        "z_p": z_p,
        "m_p": m_p,
        "logs_p": logs_p,
        "m_q": m_q,
        "logs_q": logs_q,
        "x": x,
        "logw": logw,
        "logw_": logw_,
        "logw_sdp": logw_sdp,
        "g": g,
    }
    for name, actual in floats.items():
        assert_float_close(actual, expected[name], name)

    assert len(mas_calls) == 1
    neg_cent, mask, path = mas_calls[0]
    assert_float_close(neg_cent, expected["mas_neg_cent"], "mas_neg_cent")  # values up to ~300: rtol dominates
    assert_exact(mask, expected["mas_mask"], "mas_mask")
    assert_exact(path, expected["mas_path"], "mas_path")

    enc_m_p, enc_logs_p = recorder.calls["enc_p"][0][1:3]
    assert_float_close(enc_m_p, expected["enc_p_m_p"], "enc_p_m_p")
    assert_float_close(enc_logs_p, expected["enc_p_logs_p"], "enc_p_logs_p")
    assert len(recorder.calls["sdp"]) == 2  # forward (nll) then reverse (sample)
    assert_float_close(recorder.calls["sdp"][0], expected["sdp_forward_nll"], "sdp_forward_nll")
    assert_float_close(recorder.calls["sdp"][1], expected["sdp_reverse_logw"], "sdp_reverse_logw")


def test_duration_discriminator_matches_reference(net_dur_disc, reference: dict) -> None:
    _load_strict(net_dur_disc, reference["weights_dur"])
    expected = reference["dur_disc"]
    inputs = expected["inputs"]
    with torch.no_grad():
        dur_r_prob, dur_hat_prob = net_dur_disc(
            inputs["x"], inputs["x_mask"], inputs["dur_r"], inputs["dur_hat"], inputs["g"]
        )
        dur_r_prob_2, dur_hat_prob_sdp = net_dur_disc(
            inputs["x"], inputs["x_mask"], inputs["dur_r"], inputs["dur_hat_sdp"], inputs["g"]
        )
    assert_float_close(dur_r_prob, expected["dur_r_prob"], "dur_r_prob")
    assert_float_close(dur_hat_prob, expected["dur_hat_prob"], "dur_hat_prob")
    assert_float_close(dur_r_prob_2, expected["dur_r_prob_sdpcall"], "dur_r_prob_sdpcall")
    assert_float_close(dur_hat_prob_sdp, expected["dur_hat_prob_sdp"], "dur_hat_prob_sdp")


def _assert_fmap_stats(fmap: torch.Tensor, stats: dict, name: str) -> None:
    assert list(fmap.shape) == list(stats["shape"]), name
    flat = fmap.detach().double().flatten()
    abs_sum = float(flat.abs().sum())
    # Sums over up to 10^5 elements: compare against the magnitude of the sum of absolute values.
    assert abs(abs_sum - stats["abs_sum"]) <= 1e-4 * stats["abs_sum"] + 1e-4, f"{name}: abs_sum"
    assert abs(float(flat.sum()) - stats["sum"]) <= 1e-4 * stats["abs_sum"] + 1e-4, f"{name}: sum"
    assert abs(float((flat**2).sum()) - stats["sq_sum"]) <= 1e-4 * stats["sq_sum"] + 1e-4, f"{name}: sq_sum"
    assert float(flat.min()) == pytest.approx(stats["min"], rel=1e-4, abs=1e-4), f"{name}: min"
    assert float(flat.max()) == pytest.approx(stats["max"], rel=1e-4, abs=1e-4), f"{name}: max"
    assert_float_close(flat[:16].float(), torch.as_tensor(stats["first16"]).float().flatten(), f"{name}: first16")
    assert_float_close(flat[-16:].float(), torch.as_tensor(stats["last16"]).float().flatten(), f"{name}: last16")


def test_multi_period_discriminator_segment_matches_reference(net_d, golden: dict) -> None:
    expected = golden["mpd_seg"]
    with torch.no_grad():
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = net_d(expected["y"], expected["y_hat"])
    assert len(y_d_rs) == len(y_d_gs) == 6
    for i in range(6):
        assert_float_close(y_d_rs[i], expected["y_d_rs"][i], f"y_d_rs[{i}]")
        assert_float_close(y_d_gs[i], expected["y_d_gs"][i], f"y_d_gs[{i}]")
        sides = (("r", fmap_rs, expected["fmap_rs_stats"]), ("g", fmap_gs, expected["fmap_gs_stats"]))
        for side, fmaps, stats in sides:
            assert len(fmaps[i]) == len(stats[i])
            for layer, (fmap, layer_stats) in enumerate(zip(fmaps[i], stats[i])):
                _assert_fmap_stats(fmap, layer_stats, f"fmap_{side}s[{i}][{layer}]")


def test_multi_period_discriminator_short_input_matches_reference(net_d, golden: dict) -> None:
    """256 samples: every period needs reflect padding and all feature maps are compared in full."""
    expected = golden["mpd_short"]
    with torch.no_grad():
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = net_d(expected["y"], expected["y_hat"])
    for i in range(6):
        assert_float_close(y_d_rs[i], expected["y_d_rs"][i], f"y_d_rs[{i}]")
        assert_float_close(y_d_gs[i], expected["y_d_gs"][i], f"y_d_gs[{i}]")
        for side, ours, theirs in (("r", fmap_rs, expected["fmap_rs"]), ("g", fmap_gs, expected["fmap_gs"])):
            assert len(ours[i]) == len(theirs[i]) == (7 if i == 0 else 6)
            for layer, (fmap, ref) in enumerate(zip(ours[i], theirs[i])):
                assert_float_close(fmap, ref, f"fmap_{side}s[{i}][{layer}]")


def test_wavlm_discriminator_matches_reference(net_wd, golden: dict) -> None:
    with torch.no_grad():
        output = net_wd(golden["wd"]["input"])
    assert_float_close(output, golden["wd"]["output"], "wd output")
