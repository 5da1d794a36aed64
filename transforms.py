"""Monotonic piecewise rational-quadratic spline (Durkan et al., 2019, "Neural Spline Flows").

Used by the stochastic duration predictor's ConvFlow. Every element of ``inputs`` gets its own spline with
``num_bins`` bins, parameterised by the last dimension of the unnormalised width / height / derivative
tensors (shapes [..., num_bins], [..., num_bins] and [..., num_bins + 1], or [..., num_bins - 1] with
linear tails, where the two outer knot derivatives are fixed to 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def piecewise_rational_quadratic_transform(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    tails: str | None = None,
    tail_bound: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Apply the spline (or its inverse) element-wise; returns (outputs, log|d outputs / d inputs|).

    tails None: a spline on [0, 1] (inputs must lie inside). tails "linear": a spline on
    [-tail_bound, tail_bound] and the identity outside it.
    """
    if tails is None:
        return rational_quadratic_spline(
            inputs,
            unnormalized_widths,
            unnormalized_heights,
            unnormalized_derivatives,
            inverse=inverse,
            min_bin_width=min_bin_width,
            min_bin_height=min_bin_height,
            min_derivative=min_derivative,
        )
    return unconstrained_rational_quadratic_spline(
        inputs,
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        inverse=inverse,
        tails=tails,
        tail_bound=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )


def searchsorted(bin_locations: Tensor, inputs: Tensor, eps: float = 1e-6) -> Tensor:
    """Index of the bin of each input: the number of knots <= input, minus one.

    The last knot is nudged up by ``eps`` (without touching ``bin_locations``) so an input equal to the
    right end falls into the last bin.
    """
    nudge = torch.zeros_like(bin_locations)
    nudge[..., -1] = eps
    return torch.sum(inputs[..., None] >= bin_locations + nudge, dim=-1) - 1


def unconstrained_rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    tails: str = "linear",
    tail_bound: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """Spline on [-tail_bound, tail_bound] with identity ("linear") tails outside."""
    if tails != "linear":
        raise RuntimeError(f"{tails} tails are not implemented (only 'linear')")
    # Fix the outer knot derivatives to exactly 1 so the spline joins the identity tails smoothly:
    # min_derivative + softplus(c) == 1 for this c.
    boundary_logit = math.log(math.exp(1.0 - min_derivative) - 1.0)
    unnormalized_derivatives = F.pad(unnormalized_derivatives, (1, 1), value=boundary_logit)

    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # Evaluate the spline everywhere on clamped inputs (no data-dependent shapes, no host sync) and keep
    # its result only inside the interval; outside the map is the identity with log-determinant 0.
    clamped = inputs.clamp(-tail_bound, tail_bound)
    spline_outputs, spline_logabsdet = rational_quadratic_spline(
        clamped,
        unnormalized_widths,
        unnormalized_heights,
        unnormalized_derivatives,
        inverse=inverse,
        left=-tail_bound,
        right=tail_bound,
        bottom=-tail_bound,
        top=tail_bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
        check_domain=False,
    )
    outputs = torch.where(inside, spline_outputs, inputs)
    logabsdet = torch.where(inside, spline_logabsdet, torch.zeros_like(spline_logabsdet))
    return outputs, logabsdet


def _knots(unnormalized: Tensor, min_size: float, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Bin edges [..., num_bins + 1] spanning [low, high] exactly, and bin sizes [..., num_bins]."""
    num_bins = unnormalized.shape[-1]
    sizes = min_size + (1 - min_size * num_bins) * torch.softmax(unnormalized, dim=-1)
    edges = F.pad(torch.cumsum(sizes, dim=-1), (1, 0), value=0.0)
    edges = (high - low) * edges + low
    # Pin the ends: the cumulative sum does not land exactly on 1 in floating point.
    low_end = torch.full_like(edges[..., :1], low)
    high_end = torch.full_like(edges[..., :1], high)
    edges = torch.cat([low_end, edges[..., 1:-1], high_end], dim=-1)
    return edges, edges[..., 1:] - edges[..., :-1]


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    unnormalized_derivatives: Tensor,
    inverse: bool = False,
    left: float = 0.0,
    right: float = 1.0,
    bottom: float = 0.0,
    top: float = 1.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    check_domain: bool = True,
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline from [left, right] onto [bottom, top] (or back, if inverse)."""
    if (
        check_domain
        and inputs.numel() > 0
        and (torch.min(inputs) < (bottom if inverse else left) or torch.max(inputs) > (top if inverse else right))
    ):
        raise ValueError("Input to a transform is not within its domain")
    num_bins = unnormalized_widths.shape[-1]
    if min_bin_width * num_bins > 1.0:
        raise ValueError("Minimal bin width too large for the number of bins")
    if min_bin_height * num_bins > 1.0:
        raise ValueError("Minimal bin height too large for the number of bins")

    cumwidths, widths = _knots(unnormalized_widths, min_bin_width, left, right)
    cumheights, heights = _knots(unnormalized_heights, min_bin_height, bottom, top)
    derivatives = min_derivative + F.softplus(unnormalized_derivatives)  # [..., num_bins + 1], > 0

    bin_idx = searchsorted(cumheights if inverse else cumwidths, inputs)[..., None]

    def at_bin(table: Tensor) -> Tensor:
        return table.gather(-1, bin_idx)[..., 0]

    x_k = at_bin(cumwidths)
    w_k = at_bin(widths)
    y_k = at_bin(cumheights)
    h_k = at_bin(heights)
    slope = h_k / w_k  # the bin's secant slope (s_k in the paper)
    d_k = at_bin(derivatives)
    d_k1 = at_bin(derivatives[..., 1:])
    curvature = d_k + d_k1 - 2 * slope

    if inverse:
        # Solve y = y_k + h_k (s t^2 + d_k t (1-t)) / (s + curvature t (1-t)) for t: a t^2 + b t + c = 0,
        # using the root form that stays accurate when a is small.
        dy = inputs - y_k
        a = dy * curvature + h_k * (slope - d_k)
        b = h_k * d_k - dy * curvature
        c = -slope * dy
        discriminant = b.pow(2) - 4 * a * c
        if check_domain:
            assert (discriminant >= 0).all(), "negative discriminant in the inverse spline"
        t = (2 * c) / (-b - torch.sqrt(discriminant))
        outputs = t * w_k + x_k
        logabsdet = _log_derivative(t, slope, d_k, d_k1, curvature)
        return outputs, -logabsdet

    t = (inputs - x_k) / w_k
    t_one_minus_t = t * (1 - t)
    numerator = h_k * (slope * t.pow(2) + d_k * t_one_minus_t)
    denominator = slope + curvature * t_one_minus_t
    outputs = y_k + numerator / denominator
    return outputs, _log_derivative(t, slope, d_k, d_k1, curvature)


def _log_derivative(t: Tensor, slope: Tensor, d_k: Tensor, d_k1: Tensor, curvature: Tensor) -> Tensor:
    """log dy/dx of the forward spline at the relative position t within the bin."""
    t_one_minus_t = t * (1 - t)
    denominator = slope + curvature * t_one_minus_t
    derivative_numerator = slope.pow(2) * (d_k1 * t.pow(2) + 2 * slope * t_one_minus_t + d_k * (1 - t).pow(2))
    return torch.log(derivative_numerator) - 2 * torch.log(denominator)


__all__ = [
    "piecewise_rational_quadratic_transform",
    "rational_quadratic_spline",
    "searchsorted",
    "unconstrained_rational_quadratic_spline",
    "DEFAULT_MIN_BIN_WIDTH",
    "DEFAULT_MIN_BIN_HEIGHT",
    "DEFAULT_MIN_DERIVATIVE",
]
