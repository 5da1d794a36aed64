"""Piecewise rational-quadratic spline: inversion, log-determinants, tails, gradients, searchsorted."""

from __future__ import annotations

import math

import pytest
import torch

from transforms import piecewise_rational_quadratic_transform, searchsorted

NUM_BINS = 10


def spline_params(shape: tuple[int, ...], seed: int, tails: bool, dtype=torch.float64, scale: float = 2.0):
    generator = torch.Generator().manual_seed(seed)
    n_derivatives = NUM_BINS - 1 if tails else NUM_BINS + 1
    widths = torch.randn(*shape, NUM_BINS, generator=generator, dtype=dtype) * scale
    heights = torch.randn(*shape, NUM_BINS, generator=generator, dtype=dtype) * scale
    derivatives = torch.randn(*shape, n_derivatives, generator=generator, dtype=dtype) * scale
    return widths, heights, derivatives


def linear(x, params, inverse=False, tail_bound=5.0):
    return piecewise_rational_quadratic_transform(x, *params, inverse=inverse, tails="linear", tail_bound=tail_bound)


@pytest.mark.parametrize("seed", range(3))
def test_linear_tails_round_trip_float64(seed: int) -> None:
    params = spline_params((2, 3, 40), seed, tails=True)
    x = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 4
    x[0, 0, :4] = torch.tensor([-5.0, 5.0, -7.0, 9.0], dtype=torch.float64)  # on and beyond the bounds
    y, logabsdet = linear(x, params)
    x_back, logabsdet_back = linear(y, params, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logabsdet + logabsdet_back, torch.zeros_like(x), atol=1e-10, rtol=0)


def test_linear_tails_round_trip_float32() -> None:
    # Moderate parameters, as ConvFlow produces (it scales widths/heights by 1/sqrt(filter_channels)):
    # with extreme ones the slope can reach 1e-5 and float32 inversion loses digits in x (not a bug).
    params = spline_params((4, 100), 7, tails=True, dtype=torch.float32, scale=0.5)
    x = torch.randn(4, 100, generator=torch.Generator().manual_seed(7)) * 4
    y, logabsdet = linear(x, params)
    x_back, logabsdet_back = linear(y, params, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logabsdet + logabsdet_back, torch.zeros_like(x), atol=1e-3, rtol=0)


def test_constrained_spline_round_trip_on_unit_interval() -> None:
    params = spline_params((50,), 3, tails=False)
    x = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y, logabsdet = piecewise_rational_quadratic_transform(x, *params)
    assert ((y >= 0) & (y <= 1)).all()
    assert y[0] == pytest.approx(0.0, abs=1e-12) and y[1] == pytest.approx(1.0, abs=1e-12)
    x_back, logabsdet_back = piecewise_rational_quadratic_transform(y, *params, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(logabsdet + logabsdet_back, torch.zeros_like(x), atol=1e-10, rtol=0)


def test_constrained_spline_rejects_inputs_outside_the_domain() -> None:
    params = spline_params((2,), 0, tails=False)
    with pytest.raises(ValueError, match="not within its domain"):
        piecewise_rational_quadratic_transform(torch.tensor([0.5, 1.5], dtype=torch.float64), *params)


def test_too_many_bins_for_min_width() -> None:
    params = spline_params((2,), 0, tails=True)
    with pytest.raises(ValueError, match="Minimal bin width"):
        piecewise_rational_quadratic_transform(
            torch.zeros(2, dtype=torch.float64), *params, tails="linear", min_bin_width=0.2
        )


def test_unknown_tails() -> None:
    params = spline_params((2,), 0, tails=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        piecewise_rational_quadratic_transform(torch.zeros(2, dtype=torch.float64), *params, tails="circular")


def test_logabsdet_is_the_log_derivative() -> None:
    params = spline_params((200,), 11, tails=True)
    x = torch.linspace(-6, 6, 200, dtype=torch.float64).requires_grad_(True)
    y, logabsdet = linear(x, params)
    (derivative,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(logabsdet, derivative.log(), atol=1e-9, rtol=0)
    assert (derivative > 0).all()  # monotonic


def test_identity_tails_and_continuity_at_the_bounds() -> None:
    params = spline_params((6,), 5, tails=True)
    x = torch.tensor([-9.0, -5.0, -5.0 - 1e-9, 5.0, 5.0 + 1e-9, 7.5], dtype=torch.float64)
    y, logabsdet = linear(x, params)
    assert y[0] == -9.0 and y[5] == 7.5
    assert logabsdet[0] == 0 and logabsdet[5] == 0
    torch.testing.assert_close(y[1:5], x[1:5], atol=1e-8, rtol=0)  # the spline meets the identity at +-B
    # Derivative 1 at the bounds too: the log-derivative is continuous across them.
    torch.testing.assert_close(logabsdet[1:5], torch.zeros(4, dtype=torch.float64), atol=1e-6, rtol=0)


def test_boundary_derivatives_one_and_uniform_bins_give_the_identity() -> None:
    boundary_logit = math.log(math.exp(1 - 1e-3) - 1)
    widths = torch.zeros(30, NUM_BINS, dtype=torch.float64)
    derivatives = torch.full((30, NUM_BINS - 1), boundary_logit, dtype=torch.float64)
    x = torch.linspace(-4.9, 4.9, 30, dtype=torch.float64)
    y, logabsdet = linear(x, (widths, widths.clone(), derivatives))
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logabsdet, torch.zeros_like(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("inverse", [False, True])
def test_gradients_are_finite(inverse: bool) -> None:
    widths, heights, derivatives = (p.float().requires_grad_(True) for p in spline_params((3, 64), 2, tails=True))
    x = torch.cat([torch.linspace(-8, 8, 60), torch.tensor([-5.0, 5.0, 0.0, 4.999])]).repeat(3, 1)
    x.requires_grad_(True)
    y, logabsdet = linear(x, (widths, heights, derivatives), inverse=inverse)
    (y.sum() + logabsdet.sum()).backward()
    for tensor in (x, widths, heights, derivatives):
        assert torch.isfinite(tensor.grad).all()
    outside = x.detach().abs() > 5.0
    assert torch.equal(x.grad[outside], torch.ones(int(outside.sum())))  # identity tails
    assert widths.grad[outside].abs().sum() == 0  # parameters of tail points get no gradient


def test_searchsorted_bins() -> None:
    locations = torch.tensor([0.0, 0.25, 0.5, 1.0])
    inputs = torch.tensor([0.0, 0.1, 0.25, 0.7, 1.0])
    before = locations.clone()
    assert searchsorted(locations, inputs).tolist() == [0, 0, 1, 2, 2]  # the right end is in the last bin
    assert torch.equal(locations, before)  # the eps nudge does not modify the knots
    batched = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.5, 2.0]])
    assert searchsorted(batched, torch.tensor([0.75, 0.75])).tolist() == [0, 1]
