"""commons.py against the reference golden values (dev/golden.pt, section ``commons``) plus edge cases. (Its
maximum_path case is checked with every MAS implementation in test_monotonic_align.test_golden_paths.)"""

from __future__ import annotations

import pytest
import torch

import commons

ATOL = RTOL = 1e-4


def test_generate_path_golden(golden: dict) -> None:
    case = golden["commons"]["generate_path"]
    path = commons.generate_path(case["duration"], case["mask"])
    assert path.dtype == case["path"].dtype
    assert torch.equal(path, case["path"])


def test_generate_path_expands_durations() -> None:
    duration = torch.tensor([[[2.0, 0.0, 3.0]]])
    mask = torch.ones(1, 1, 6, 3)
    path = commons.generate_path(duration, mask)[0, 0]
    expected = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]]).float()
    assert torch.equal(path, expected)


def test_sequence_mask_golden(golden: dict) -> None:
    case = golden["commons"]["sequence_mask"]
    out = commons.sequence_mask(case["length"], case["max_length"])
    assert out.dtype == torch.bool and torch.equal(out, case["out"])
    out_no_max = commons.sequence_mask(case["length"])
    assert torch.equal(out_no_max, case["out_no_max"])


def test_intersperse_golden(golden: dict) -> None:
    case = golden["commons"]["intersperse"]
    assert commons.intersperse(case["lst"], case["item"]) == case["out"]
    assert commons.intersperse([], 0) == [0]


def test_slice_segments_golden(golden: dict) -> None:
    case = golden["commons"]["slice_segments"]
    out = commons.slice_segments(case["x"], case["ids_str"], case["segment_size"])
    assert torch.equal(out, case["out"])


def test_rand_slice_segments_windows_lie_inside_lengths() -> None:
    torch.manual_seed(0)
    x = torch.arange(3 * 2 * 30, dtype=torch.float32).view(3, 2, 30)
    lengths = torch.tensor([30, 12, 8])
    for _ in range(20):
        out, ids = commons.rand_slice_segments(x, lengths, 8)
        assert out.shape == (3, 2, 8) and ids.dtype == torch.long
        assert (ids >= 0).all() and (ids + 8 <= lengths).all()
        assert torch.equal(out, commons.slice_segments(x, ids, 8))
    out, ids = commons.rand_slice_segments(x, segment_size=30)  # no lengths: the full width
    assert torch.equal(ids, torch.zeros(3, dtype=torch.long)) and torch.equal(out, x)


def test_random_windows_come_from_the_cpu_generator_as_in_the_reference() -> None:
    """The start indices are the reference's (torch.rand([b]) on the CPU generator, scaled, truncated), and the
    draw consumes the CPU generator exactly as that expression does: seeds, goldens and exact resumes keep
    their numbers."""
    x = torch.arange(2 * 3 * 50, dtype=torch.float32).view(2, 3, 50)
    lengths = torch.tensor([50, 31])
    torch.manual_seed(7)
    expected = (torch.rand([2]) * (lengths - 8 + 1)).to(dtype=torch.long)
    after_reference = torch.rand(4)
    torch.manual_seed(7)
    _, ids = commons.rand_slice_segments(x, lengths, 8)
    assert torch.equal(ids, expected)
    assert torch.equal(torch.rand(4), after_reference)


@pytest.mark.parametrize("draw", [torch.rand, torch.randn])
def test_host_random_on_the_cpu_is_the_plain_draw(draw) -> None:
    torch.manual_seed(3)
    expected = draw(2, 5)
    torch.manual_seed(3)
    assert torch.equal(commons.host_random(draw, (2, 5), "cpu"), expected)


def test_host_random_for_cuda_draws_into_pinned_memory_and_copies_without_waiting() -> None:
    """A blocking copy from pageable memory waits for the device's whole queue (a host sync per draw); pinned
    memory and a non-blocking copy queue it instead. (test_gpu checks the absence of syncs on a device.)"""
    calls = []

    class DrawnOnHost:
        def to(self, device, non_blocking=False):
            calls.append(("to", device, non_blocking))
            return "on the device"

    def draw(size, pin_memory=False):
        calls.append(("draw", size, pin_memory))
        return DrawnOnHost()

    assert commons.host_random(draw, [3, 2], "cuda:0") == "on the device"
    assert calls == [("draw", (3, 2), True), ("to", torch.device("cuda:0"), True)]


def test_clip_grad_value_golden(golden: dict) -> None:
    case = golden["commons"]["clip_grad_value"]

    def params_with_grads() -> list[torch.nn.Parameter]:
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in case["grads"]]
        for p, g in zip(params, case["grads"]):
            p.grad = g.clone()
        extra = torch.nn.Parameter(torch.ones(3))  # grad None: skipped
        return [*params, extra]

    params = params_with_grads()
    total = commons.clip_grad_value_(params, None)
    assert isinstance(total, float)
    assert total == pytest.approx(case["total_norm_none"], rel=RTOL)
    for p, g in zip(params, case["grads"]):
        assert torch.equal(p.grad, g)  # clip None only measures

    params = params_with_grads()
    total = commons.clip_grad_value_(iter(params), 0.5)  # any iterable, e.g. model.parameters()
    assert total == pytest.approx(case["total_norm_clip05"], rel=RTOL)
    for p, expected in zip(params, case["grads_after_clip05"]):
        torch.testing.assert_close(p.grad, expected, atol=ATOL, rtol=RTOL)
    assert params[-1].grad is None


def test_clip_grad_value_edge_cases() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    assert commons.clip_grad_value_([p], 1.0) == 0.0  # no gradients at all
    p.grad = torch.tensor([3.0, -4.0, 0.0, 0.0])
    assert commons.clip_grad_value_(p, None) == pytest.approx(5.0)  # a single tensor
    assert commons.clip_grad_value_(p, None, norm_type=1) == pytest.approx(7.0)
    assert commons.clip_grad_value_(p, 2.0, norm_type=float("inf")) == pytest.approx(4.0)
    assert torch.equal(p.grad, torch.tensor([2.0, -2.0, 0.0, 0.0]))


def test_kl_divergence_golden(golden: dict) -> None:
    case = golden["commons"]["kl_divergence"]
    out = commons.kl_divergence(case["m_p"], case["logs_p"], case["m_q"], case["logs_q"])
    torch.testing.assert_close(out, case["out"], atol=ATOL, rtol=RTOL)


def test_kl_divergence_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    m_p, logs_p, m_q, logs_q = torch.randn(4, 2, 3, 5, dtype=torch.float64)
    p = torch.distributions.Normal(m_p, logs_p.exp())
    q = torch.distributions.Normal(m_q, logs_q.exp())
    expected = torch.distributions.kl_divergence(p, q)
    torch.testing.assert_close(commons.kl_divergence(m_p, logs_p, m_q, logs_q), expected)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_fused_add_tanh_sigmoid_multiply_golden(golden: dict, as_tensor: bool) -> None:
    case = golden["commons"]["fused_add_tanh_sigmoid_multiply"]
    n_channels = torch.IntTensor([case["n_channels"]]) if as_tensor else case["n_channels"]
    out = commons.fused_add_tanh_sigmoid_multiply(case["a"], case["b"], n_channels)
    torch.testing.assert_close(out, case["out"], atol=ATOL, rtol=RTOL)


def test_get_padding_and_convert_pad_shape_golden(golden: dict) -> None:
    case = golden["commons"]["get_padding"]
    assert commons.get_padding(5) == case["k5d1"]
    assert commons.get_padding(3, 3) == case["k3d3"]
    assert commons.get_padding(7, 5) == case["k7d5"]
    pad = golden["commons"]["convert_pad_shape"]
    assert commons.convert_pad_shape(pad["inp"]) == pad["out"]


def test_subsequent_mask_is_causal() -> None:
    mask = commons.subsequent_mask(4)
    assert mask.shape == (1, 1, 4, 4)
    assert torch.equal(mask[0, 0], torch.tril(torch.ones(4, 4)))


def test_init_weights_redraws_plain_convs_only() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(64, 64, 3)
    linear = torch.nn.Linear(4, 4)
    before = linear.weight.detach().clone()
    conv.apply(commons.init_weights)
    linear.apply(commons.init_weights)
    assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.equal(linear.weight, before)


def test_init_weights_on_weight_norm_only_advances_the_generator() -> None:
    """Reference behaviour: the draw lands on the derived weight, which is recomputed from g and v."""
    torch.manual_seed(0)
    conv = commons.weight_norm(torch.nn.Conv1d(4, 4, 3))
    g, v = conv.weight_g.detach().clone(), conv.weight_v.detach().clone()
    state = torch.get_rng_state()
    conv.apply(commons.init_weights)
    assert not torch.equal(torch.get_rng_state(), state)
    assert torch.equal(conv.weight_g, g) and torch.equal(conv.weight_v, v)
