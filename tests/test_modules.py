"""modules.py: parameter names against the reference key lists, shapes, flow round trips and log-determinants,
weight norm, and the coupling flow / WN stack against golden outputs computed by the reference."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from kit import assert_every_entry
from torch import nn

import modules
from commons import remove_weight_norm, weight_norm

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def net_g_keys(dev_dir: Path) -> list[tuple[str, list[int]]]:
    keys = json.loads((dev_dir / "keys.json").read_text(encoding="utf-8"))
    return [(name, shape) for name, shape, _ in keys["net_g"]["state_dict"]]


def reference_entries(net_g_keys: list[tuple[str, list[int]]], prefix: str) -> list[tuple[str, list[int]]]:
    return [(name[len(prefix) :], shape) for name, shape in net_g_keys if name.startswith(prefix)]


def our_entries(module: nn.Module) -> list[tuple[str, list[int]]]:
    return [(name, list(tensor.shape)) for name, tensor in module.state_dict().items()]


def perturb_(module: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    """Shift every parameter so zero-initialised output layers stop being the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * (torch.rand(p.shape, generator=generator) - 0.5))
    return module


def masks(lengths: list[int]) -> torch.Tensor:
    return (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).float().unsqueeze(1)  # [b, 1, t]


# --- names and shapes as in the reference (dev keys.json) -------------------------------------------------


# One module of each kind, built as SynthesizerTrn builds it for the dev config, and where it sits in net_g.
MODULES_IN_NET_G: dict[str, Callable[[], nn.Module]] = {
    "enc_q.enc.": lambda: modules.WN(32, 5, 1, 16, gin_channels=32),
    "dec.resblocks.0.": lambda: modules.ResBlock1(32, 3, (1, 3, 5)),
    "dec.resblocks.5.": lambda: modules.ResBlock1(16, 11, (1, 3, 5)),
    "sdp.convs.": lambda: modules.DDSConv(32, 3, 3),
    "sdp.flows.0.": lambda: modules.ElementwiseAffine(2),
    "sdp.flows.1.": lambda: modules.ConvFlow(2, 32, 3, n_layers=3),
    "dp.norm_1.": lambda: modules.LayerNorm(256),
    "flow.flows.0.": lambda: modules.TransformerCouplingLayer(
        32, 32, 5, 4, 2, 0.1, 64, mean_only=True, gin_channels=32
    ),
}
EXPECTED_PREFIXES = [
    "enc_q.enc.",
    "dec.resblocks.0.",
    "dec.resblocks.5.",
    "sdp.convs.",
    "sdp.flows.0.",
    "sdp.flows.1.",
    "dp.norm_1.",
    "flow.flows.0.",
]


def _check_entries(build: Callable[[], nn.Module], reference: list[tuple[str, list[int]]]) -> None:
    ours = our_entries(build())
    assert reference, "no reference keys under this prefix"
    assert ours == reference, f"ours {ours}\n  reference {reference}"


def test_state_dict_matches_reference_keys(net_g_keys) -> None:
    """Every module's (name, shape) list in order equals its slice of the dev keys.json; a failure lists every
    differing module with both lists."""
    checks = {
        prefix: functools.partial(_check_entries, build, reference_entries(net_g_keys, prefix))
        for prefix, build in MODULES_IN_NET_G.items()
    }
    assert_every_entry(checks, EXPECTED_PREFIXES, "net_g modules vs dev/keys.json")


def test_resblock2_and_residual_coupling_key_layout() -> None:
    block = modules.ResBlock2(8, 3, (1, 3))
    assert list(block.state_dict()) == [f"convs.{i}.{k}" for i in range(2) for k in ("bias", "weight_g", "weight_v")]
    layer = modules.ResidualCouplingLayer(4, 8, 5, 1, 2, gin_channels=6, mean_only=True)
    names = list(layer.state_dict())
    assert names[:2] == ["pre.weight", "pre.bias"] and names[-2:] == ["post.weight", "post.bias"]
    assert "enc.cond_layer.weight_g" in names and "enc.res_skip_layers.1.weight_v" in names
    assert layer.post.weight.shape == (2, 8, 1)  # mean_only: shift only
    assert modules.ResidualCouplingLayer(4, 8, 5, 1, 2).post.weight.shape == (4, 8, 1)


def test_wn_layers_shapes() -> None:
    wn = modules.WN(6, 3, 2, 3, gin_channels=5)
    assert wn.cond_layer.weight_v.shape == (2 * 6 * 3, 5, 1)
    assert [layer.dilation[0] for layer in wn.in_layers] == [1, 2, 4]
    assert [layer.out_channels for layer in wn.res_skip_layers] == [12, 12, 6]  # last layer: skip only


# --- shapes and masking -------------------------------------------------------------------------------------


def test_block_shapes_and_masking() -> None:
    torch.manual_seed(0)
    x_mask = masks([11, 7])
    x = torch.randn(2, 8, 11)
    g = torch.randn(2, 5, 1)
    outputs = {
        "WN": modules.WN(8, 5, 1, 3, gin_channels=5)(x, x_mask, g=g),
        "WN no g": modules.WN(8, 3, 2, 2)(x, x_mask),
        "DDSConv": modules.DDSConv(8, 3, 3)(x, x_mask, g=torch.randn(2, 8, 11)),
        "ConvReluNorm": perturb_(modules.ConvReluNorm(8, 16, 8, 5, 3, 0.0), 1)(x, x_mask),
        "ResBlock1": modules.ResBlock1(8, 3, (1, 3, 5))(x, x_mask),
        "ResBlock2": modules.ResBlock2(8, 3, (1, 3))(x, x_mask),
    }
    for name, out in outputs.items():
        assert out.shape == (2, 8, 11), name
        assert torch.isfinite(out).all(), name
        assert out[1, :, 7:].abs().max() == 0, f"{name} leaks into padding"
    assert modules.ResBlock1(8)(x).shape == (2, 8, 11)  # mask is optional
    assert torch.equal(modules.ConvReluNorm(8, 16, 8, 5, 2, 0.0)(x, x_mask), x * x_mask)  # zero proj at init


def test_layer_norm_normalises_channels() -> None:
    norm = modules.LayerNorm(6)
    with torch.no_grad():
        norm.gamma.fill_(2.0)
        norm.beta.fill_(0.5)
    y = norm(torch.randn(3, 6, 4) * 5 + 1)
    torch.testing.assert_close(y.mean(1), torch.full((3, 4), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.full((3, 4), 4.0), atol=1e-3, rtol=0)


# --- flows ----------------------------------------------------------------------------------------------------


# name -> (builder, channels, takes g). ConvFlow's g would be added to its hidden state ([b, filter, t]).
FLOW_CASES = {
    "ResidualCouplingLayer": (lambda: modules.ResidualCouplingLayer(4, 8, 5, 1, 3, gin_channels=6), 4, True),
    "ResidualCouplingLayer mean_only": (lambda: modules.ResidualCouplingLayer(4, 8, 3, 2, 2, mean_only=True), 4, False),
    "TransformerCouplingLayer": (
        lambda: modules.TransformerCouplingLayer(4, 8, 3, 3, 2, 0.0, 16, mean_only=False, gin_channels=6),
        4,
        True,
    ),
    "ConvFlow": (lambda: modules.ConvFlow(2, 8, 3, n_layers=3, tail_bound=2.0), 2, False),
    "ElementwiseAffine": (lambda: modules.ElementwiseAffine(3), 3, False),
    "Flip": (lambda: modules.Flip(), 3, False),
}


@pytest.mark.parametrize("name", list(FLOW_CASES))
def test_flow_round_trip(name: str) -> None:
    build, channels, takes_g = FLOW_CASES[name]
    flow = perturb_(build(), seed=7, scale=0.6).eval()
    torch.manual_seed(1)
    x_mask = masks([9, 6])
    x = torch.randn(2, channels, 9) * 2.0 * x_mask  # beyond ConvFlow's tail bound too
    g = torch.randn(2, 6, 1) if takes_g else None
    y, logdet = flow(x, x_mask, g=g, reverse=False)
    assert y.shape == x.shape and logdet.shape == (2,)
    if name != "Flip":
        assert not torch.allclose(y, x, atol=1e-3), "perturbed flow should not be the identity"
    x_back = flow(y, x_mask, g=g, reverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)


def test_log_flow_round_trip_and_logdet() -> None:
    x_mask = masks([5, 3])
    x = torch.rand(2, 2, 5) * 3 + 0.1
    y, logdet = modules.Log()(x, x_mask)
    torch.testing.assert_close(y, torch.log(x) * x_mask)
    torch.testing.assert_close(logdet, -(torch.log(x) * x_mask).sum([1, 2]))
    torch.testing.assert_close(modules.Log()(y, x_mask, reverse=True), x * x_mask)


@pytest.mark.parametrize("name", ["ResidualCouplingLayer", "TransformerCouplingLayer", "ConvFlow", "ElementwiseAffine"])
def test_flow_logdet_is_log_abs_jacobian_determinant(name: str) -> None:
    build, channels, takes_g = FLOW_CASES[name]
    flow = perturb_(build(), seed=3, scale=0.6).double().eval()
    torch.manual_seed(2)
    t = 4
    x_mask = torch.ones(1, 1, t, dtype=torch.float64)
    x = torch.randn(1, channels, t, dtype=torch.float64) * 1.5
    g = torch.randn(1, 6, 1, dtype=torch.float64) if takes_g else None

    def forward(flat: torch.Tensor) -> torch.Tensor:
        return flow(flat.view(1, channels, t), x_mask, g=g)[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(forward, x.reshape(-1))
    _, logdet = flow(x, x_mask, g=g)
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jacobian).logabsdet, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize(
    "build",
    [
        lambda: modules.ResidualCouplingLayer(4, 8, 5, 1, 2, gin_channels=6),
        lambda: modules.TransformerCouplingLayer(4, 8, 3, 3, 2, 0.0, 16, mean_only=True, gin_channels=6),
        lambda: modules.ElementwiseAffine(4),
    ],
)
def test_fresh_affine_flows_are_the_identity(build) -> None:
    """Zero-initialised output layers (reference behaviour): a new flow starts as the identity map."""
    x_mask = masks([6, 4])
    x = torch.randn(2, 4, 6) * x_mask
    y, logdet = build().eval()(x, x_mask, g=torch.randn(2, 6, 1))
    torch.testing.assert_close(y, x, atol=0, rtol=0)
    assert torch.equal(logdet, torch.zeros(2))


def test_fresh_conv_flow_is_a_fixed_spline() -> None:
    flow = modules.ConvFlow(2, 8, 3, n_layers=3)
    assert flow.proj.weight.abs().sum() == 0 and flow.proj.bias.abs().sum() == 0
    x = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [-6.0, -1.0, 0.0, 2.25]]])
    with torch.no_grad():
        y, _ = flow(x, torch.ones(1, 1, 4))
    assert y[0, 1, 0] == -6.0  # outside the tail bound (5): identity
    assert float(y[0, 1, 2]) == pytest.approx(0.0, abs=1e-6)  # symmetric bins map the centre to itself
    assert 2.0 < float(y[0, 1, 3]) < 2.25 - 1e-3  # within its bin [2, 3], but not the identity


def test_conv_flow_gradients_are_finite() -> None:
    flow = perturb_(modules.ConvFlow(2, 8, 3, n_layers=3), seed=5, scale=1.0)
    x_mask = masks([7, 5])
    x = (torch.randn(2, 2, 7) * 4).requires_grad_(True)
    g = torch.randn(2, 8, 7)
    y, logdet = flow(x, x_mask, g=g)
    (y.sum() + logdet.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters())


# --- weight norm ----------------------------------------------------------------------------------------------


def test_weight_norm_old_style_keys_without_warning() -> None:
    conv = nn.Conv1d(3, 5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weight_norm(conv)
    assert list(conv.state_dict()) == ["bias", "weight_g", "weight_v"]
    assert conv.weight_g.shape == (5, 1, 1)
    norm = conv.weight_v.norm(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(conv.weight, conv.weight_g * conv.weight_v / norm)
    x = torch.randn(2, 3, 10)
    before = conv(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_weight_norm(conv)
    assert list(conv.state_dict()) == ["bias", "weight"]
    torch.testing.assert_close(conv(x), before)


@pytest.mark.parametrize(
    "build, channels",
    [
        (lambda: modules.ResBlock1(6, 3, (1, 3, 5)), 6),
        (lambda: modules.ResBlock2(6, 3, (1, 3)), 6),
        (lambda: modules.WN(6, 3, 1, 3, gin_channels=4), 6),
    ],
)
def test_remove_weight_norm_keeps_outputs(build, channels: int) -> None:
    block = perturb_(build(), seed=11).eval()
    x_mask = masks([10, 8])
    x = torch.randn(2, channels, 10)
    kwargs = {"g": torch.randn(2, 4, 1)} if isinstance(block, modules.WN) else {}
    before = block(x, x_mask, **kwargs)
    block.remove_weight_norm()
    names = list(block.state_dict())
    assert not any(name.endswith(("weight_g", "weight_v")) for name in names)
    torch.testing.assert_close(block(x, x_mask, **kwargs), before, atol=1e-6, rtol=1e-5)


# --- golden: reference outputs through our modules --------------------------------------------------------------


def _flow_checks(data: dict) -> dict[str, Callable[[], None]]:
    """z_p = flow(z): 4 x (TransformerCouplingLayer + Flip) with the dev config; and back again."""
    flows = nn.ModuleList()
    for _ in range(4):
        flows.append(modules.TransformerCouplingLayer(32, 32, 5, 4, 2, 0.1, 64, mean_only=True, gin_channels=32))
        flows.append(modules.Flip())
    prefix = "flow.flows."
    flows.load_state_dict({k[len(prefix) :]: v for k, v in data["weights_g"].items() if k.startswith(prefix)})
    flows.eval()
    forward = data["forward"]
    y_mask, g = forward["y_mask"], forward["g"]
    with torch.no_grad():
        z_p = forward["z"]
        for flow in flows:
            z_p, _ = flow(z_p, y_mask, g=g)
        z = z_p  # from our z_p, so the round trip is checked on its own
        for flow in reversed(flows):
            z = flow(z, y_mask, g=g, reverse=True)
    return {
        "flow: z_p": lambda: torch.testing.assert_close(z_p, forward["z_p"], atol=ATOL, rtol=RTOL),
        "flow reversed: z": lambda: torch.testing.assert_close(z, forward["z"], atol=ATOL, rtol=RTOL),
    }


def _posterior_checks(data: dict) -> dict[str, Callable[[], None]]:
    """m_q, logs_q = split(proj(WN(pre(spec)))) with the posterior encoder's weights (kernel 5, 16 layers); the
    reference's weight_g / weight_v tensors load into the WN stack strictly."""
    weights = {k[len("enc_q.") :]: v for k, v in data["weights_g"].items() if k.startswith("enc_q.")}
    pre = nn.Conv1d(513, 32, 1)
    wn = modules.WN(32, 5, 1, 16, gin_channels=32)
    proj = nn.Conv1d(32, 64, 1)
    for name, module in (("pre", pre), ("enc", wn), ("proj", proj)):
        module.load_state_dict({k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")})
    forward = data["forward"]
    y_mask = forward["y_mask"]
    with torch.no_grad():
        h = pre(data["inputs"]["spec"]) * y_mask
        h = wn.eval()(h, y_mask, g=forward["g"])
        m_q, logs_q = torch.split(proj(h) * y_mask, 32, dim=1)
    return {
        "posterior: m_q": lambda: torch.testing.assert_close(m_q, forward["m_q"], atol=ATOL, rtol=RTOL),
        "posterior: logs_q": lambda: torch.testing.assert_close(logs_q, forward["logs_q"], atol=ATOL, rtol=RTOL),
    }


FORWARD_ENTRIES = ["flow: z_p", "flow reversed: z", "posterior: m_q", "posterior: logs_q"]


@pytest.mark.parametrize("which", ["golden", "golden_perturbed"])
def test_flow_and_posterior_stack_match_reference_forward(which: str, request: pytest.FixtureRequest) -> None:
    """Two slices of the reference's training forward through our modules alone: the coupling flow (and its
    inverse) and the posterior encoder's WN stack. A failure lists every differing tensor."""
    data = request.getfixturevalue(which)
    checks = {**_flow_checks(data), **_posterior_checks(data)}
    assert_every_entry(checks, FORWARD_ENTRIES, f"{which} forward through modules")
