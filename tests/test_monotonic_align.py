"""Monotonic alignment search: golden paths, the literal yardstick DP, brute force, and the torch path."""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import monotonic_align
from monotonic_align.naive import maximum_path_naive


def lengths_mask(t_ys: list[int], t_xs: list[int], max_y: int | None = None, max_x: int | None = None) -> torch.Tensor:
    """[b, T_y, T_x] float mask of every item's t_y x t_x rectangle, like the model's attn_mask."""
    max_y = max_y or max(t_ys)
    max_x = max_x or max(t_xs)
    rows = torch.arange(max_y)[None, :] < torch.tensor(t_ys)[:, None]
    cols = torch.arange(max_x)[None, :] < torch.tensor(t_xs)[:, None]
    return (rows[:, :, None] & cols[:, None, :]).float()


def naive_paths(neg_cent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    t_ys, t_xs = monotonic_align.path_lengths(mask)
    return torch.from_numpy(maximum_path_naive(neg_cent.numpy(), t_ys.numpy(), t_xs.numpy()))


def all_implementations(neg_cent: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "maximum_path": monotonic_align.maximum_path(neg_cent, mask),
        "numba 1 thread": monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=1),
        "numba 2 threads": monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=2),
        "torch": monotonic_align.maximum_path_torch(neg_cent, mask),
        "naive": naive_paths(neg_cent, mask),
    }


def assert_all_equal(neg_cent: torch.Tensor, mask: torch.Tensor, expected: torch.Tensor | None = None) -> torch.Tensor:
    results = all_implementations(neg_cent, mask)
    expected = results["naive"] if expected is None else expected
    for name, path in results.items():
        assert path.dtype == neg_cent.dtype, name
        assert torch.equal(path, expected), f"{name} differs from the expected path"
    return expected


def golden_mas_cases(golden: dict, golden_perturbed: dict) -> dict[str, tuple[torch.Tensor, ...]]:
    commons = golden["commons"]["maximum_path"]
    cases = {"commons": (commons["neg_cent"], commons["mask"], commons["path"])}
    for name, source in (("forward", golden), ("forward_perturbed", golden_perturbed)):
        forward = source["forward"]
        cases[name] = (forward["mas_neg_cent"], forward["mas_mask"], forward["mas_path"])
    return cases


@pytest.mark.parametrize("case", ["commons", "forward", "forward_perturbed"])
def test_golden_paths(golden: dict, golden_perturbed: dict, case: str) -> None:
    neg_cent, mask, path = golden_mas_cases(golden, golden_perturbed)[case]
    assert_all_equal(neg_cent, mask, expected=path)
    if case != "commons":
        # The recorded path is the training forward's attention: so ours reproduces that alignment.
        forward = (golden if case == "forward" else golden_perturbed)["forward"]
        assert torch.equal(forward["attn"].squeeze(1), path)


@pytest.mark.parametrize(
    "t_ys, t_xs",
    [
        ([12, 9, 5], [5, 3, 5]),  # mixed, one item with t_x == t_y
        ([7, 4], [7, 4]),  # t_x == t_y: only the diagonal is possible
        ([6, 1, 9], [1, 1, 1]),  # one token takes every frame; a one-frame item
        ([80, 61, 33, 47], [30, 17, 33, 2]),
        ([40, 40], [39, 1]),
    ],
)
def test_random_costs_match_yardstick(t_ys: list[int], t_xs: list[int]) -> None:
    generator = torch.Generator().manual_seed(sum(t_ys) * 31 + sum(t_xs))
    mask = lengths_mask(t_ys, t_xs)
    neg_cent = torch.randn(mask.shape, generator=generator) * 3.0 - 10.0
    path = assert_all_equal(neg_cent, mask)
    assert_valid_paths(path, t_ys, t_xs)


@pytest.mark.parametrize("seed", range(4))
def test_ties_follow_the_reference_rules(seed: int) -> None:
    """Small integer costs make equal sums common: a tie in the backtrack keeps the column."""
    generator = torch.Generator().manual_seed(seed)
    t_ys, t_xs = [15, 12, 9], [6, 12, 4]
    mask = lengths_mask(t_ys, t_xs)
    neg_cent = torch.randint(-2, 2, mask.shape, generator=generator).float()
    assert_all_equal(neg_cent, mask)


def test_all_equal_costs_keep_the_column_while_walking_back() -> None:
    mask = lengths_mask([6], [3])
    path = assert_all_equal(torch.zeros(1, 6, 3), mask)
    # Every backtrack comparison is a tie, so the walk keeps the last token until the diagonal forces a step:
    # the path climbs the diagonal first and then stays on the last token.
    expected_columns = [0, 1, 2, 2, 2, 2]
    assert path[0].argmax(1).tolist() == expected_columns


def test_diagonal_when_lengths_are_equal() -> None:
    neg_cent = torch.randn(2, 5, 5)
    path = assert_all_equal(neg_cent, lengths_mask([5, 3], [5, 3]))
    assert torch.equal(path[0], torch.eye(5))
    assert torch.equal(path[1, :3, :3], torch.eye(3))
    assert path[1].sum() == 3


def test_more_tokens_than_frames_follows_the_reference_walk() -> None:
    """No monotonic path exists; the reference still walks back over the raw costs (row -1 = last padded row)."""
    generator = torch.Generator().manual_seed(5)
    mask = lengths_mask([3, 8], [6, 4], max_y=8, max_x=6)
    neg_cent = torch.randn(mask.shape, generator=generator)
    path = assert_all_equal(neg_cent, mask)
    assert path[0, :3].sum(1).tolist() == [1.0, 1.0, 1.0]
    assert path[0, 2, 5] == 1.0
    assert path[0, 3:].sum() == 0


def test_empty_items_and_tensors() -> None:
    mask = lengths_mask([5, 0], [3, 0], max_y=5, max_x=3)
    path = assert_all_equal(torch.randn(2, 5, 3), mask)
    assert path[1].sum() == 0
    empty = torch.zeros(2, 0, 3)
    assert monotonic_align.maximum_path(empty, empty).shape == (2, 0, 3)
    assert monotonic_align.maximum_path_torch(empty, empty).shape == (2, 0, 3)


def test_brute_force_optimum_on_small_grids() -> None:
    """The path's total equals the best over every monotonic path (independent of the DP formulation)."""
    generator = torch.Generator().manual_seed(11)
    for t_y, t_x in [(1, 1), (4, 1), (5, 2), (6, 3), (7, 4), (6, 6), (8, 5)]:
        neg_cent = torch.randn(1, t_y, t_x, generator=generator)
        mask = lengths_mask([t_y], [t_x])
        path = monotonic_align.maximum_path(neg_cent, mask)
        best = max(
            sum(float(neg_cent[0, y, x]) for y, x in enumerate(columns)) for columns in monotonic_columns(t_y, t_x)
        )
        assert float((path * neg_cent).double().sum()) == pytest.approx(best, abs=1e-4)


def monotonic_columns(t_y: int, t_x: int):
    """Every column sequence from 0 to t_x-1 over t_y rows that stays or steps by one."""
    for steps in itertools.combinations(range(1, t_y), t_x - 1):
        columns, column = [], 0
        for y in range(t_y):
            if y in steps:
                column += 1
            columns.append(column)
        yield columns


def assert_valid_paths(path: torch.Tensor, t_ys: list[int], t_xs: list[int]) -> None:
    for item, (t_y, t_x) in enumerate(zip(t_ys, t_xs)):
        p = path[item]
        assert p.sum() == t_y
        assert p[t_y:].sum() == 0 and p[:, t_x:].sum() == 0
        columns = p[:t_y].argmax(1)
        assert torch.equal(p[:t_y].sum(1), torch.ones(t_y))
        assert columns[0] == 0 and columns[-1] == t_x - 1
        assert set(torch.diff(columns).tolist()) <= {0, 1}


def test_input_untouched_dtype_and_layout_handling() -> None:
    generator = torch.Generator().manual_seed(3)
    mask = lengths_mask([9, 6], [4, 3]).bool()
    neg_cent = torch.randn(2, 4, 9, generator=generator, dtype=torch.float64).transpose(1, 2)  # non-contiguous
    neg_cent.requires_grad_(True)
    before = neg_cent.detach().clone()
    expected = naive_paths(neg_cent.detach().float(), mask)
    for path in (monotonic_align.maximum_path(neg_cent, mask), monotonic_align.maximum_path_torch(neg_cent, mask)):
        assert path.dtype == torch.float64 and not path.requires_grad
        assert torch.equal(path.float(), expected)
    assert torch.equal(neg_cent.detach(), before)


def test_threads_share_items_evenly_with_unequal_lengths() -> None:
    """Items are dealt to workers largest first; any count of workers gives the same paths."""
    generator = torch.Generator().manual_seed(8)
    t_ys = [50, 7, 33, 50, 2, 19, 44]
    t_xs = [20, 7, 30, 1, 2, 5, 11]
    mask = lengths_mask(t_ys, t_xs)
    neg_cent = torch.randn(mask.shape, generator=generator)
    expected = naive_paths(neg_cent, mask)
    for n_threads in (1, 2, 3, 16):
        assert torch.equal(monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=n_threads), expected)


def test_yardstick_is_plain_numpy() -> None:
    neg_cent = np.array([[[0.0, -5.0], [-1.0, -2.0], [-3.0, 0.0]]], dtype=np.float32)
    path = maximum_path_naive(neg_cent, np.array([3]), np.array([2]))
    # Columns [0, 0, 1] total -1; the only other monotonic path, [0, 1, 1], totals -2.
    assert path[0].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


# --- The Triton kernel (CUDA), run on the CPU by Triton's interpreter --------------------------------------------


def require_triton(what: str) -> None:
    """Skip without Triton, except under CI (torch's Linux x86_64 wheels bring it), where that is a failure."""
    if importlib.util.find_spec("triton") is None:
        message = "triton is not installed (it comes with torch's Linux x86_64 wheels)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI the Triton kernel must be {what}")
        pytest.skip(message)


_TRITON_RUNNER = """
import sys
import torch
import monotonic_align
cases = torch.load(sys.argv[1], weights_only=True)
paths = [monotonic_align.maximum_path_cuda(neg_cent, mask) for neg_cent, mask in cases]
torch.save(paths, sys.argv[2])
"""


def triton_interpreter_paths(cases: list[tuple[torch.Tensor, torch.Tensor]], tmp_path) -> list[torch.Tensor]:
    """maximum_path_cuda's paths for every (neg_cent, mask), computed in a subprocess with TRITON_INTERPRET=1.

    The interpreter must be chosen before Triton is imported, hence the fresh interpreter process.
    """
    require_triton("tested")
    inputs, outputs = tmp_path / "cases.pt", tmp_path / "paths.pt"
    torch.save(cases, inputs)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _TRITON_RUNNER, str(inputs), str(outputs)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(outputs, weights_only=True)


def triton_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(21)
    cases = {}
    for t_ys, t_xs in [
        ([12, 9, 5], [5, 3, 5]),
        ([6, 1, 9], [1, 1, 1]),  # length-1 items: one token, one frame
        ([33, 20, 2], [13, 7, 2]),
        ([40, 40], [39, 1]),
        ([150], [140]),  # a row wider than 128 columns: several warps share it
    ]:
        mask = lengths_mask(t_ys, t_xs)
        # Padding carries costs too (as in the model): the kernel must not read them except where the
        # reference's wrap-around walk does.
        cases[f"random {t_ys}x{t_xs}"] = (torch.randn(mask.shape, generator=generator) * 3.0 - 10.0, mask)
    for seed in range(2):
        mask = lengths_mask([15, 12, 9], [6, 12, 4])
        cases[f"ties {seed}"] = (torch.randint(-2, 2, mask.shape, generator=generator).float(), mask)
    mask = lengths_mask([3, 8, 2, 5], [6, 4, 5, 5], max_y=8, max_x=6)  # t_x > t_y: the reference's walk
    cases["more tokens than frames"] = (torch.randn(mask.shape, generator=generator), mask)
    mask = lengths_mask([5, 0, 4], [3, 0, 0], max_y=6, max_x=4)  # empty items, padded beyond every item
    cases["empty items"] = (torch.randn(mask.shape, generator=generator), mask)
    cases["all equal"] = (torch.zeros(1, 6, 3), lengths_mask([6], [3]))
    values = torch.randn(1, 7, 4, generator=generator)
    values[0, 3, 1] = float("nan")
    cases["nan cost"] = (values, lengths_mask([7], [4]))
    return cases


def test_triton_kernel_matches_the_numba_kernel_under_the_interpreter(tmp_path) -> None:
    cases = triton_cases()
    paths = triton_interpreter_paths(list(cases.values()), tmp_path)
    for (name, (neg_cent, mask)), path in zip(cases.items(), paths):
        expected = monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=1)
        assert path.dtype == neg_cent.dtype, name
        assert torch.equal(path, expected), f"Triton path differs from the numba kernel: {name}"
        if name != "nan cost":
            assert torch.equal(path, naive_paths(neg_cent, mask)), name


def test_cpu_tensors_never_take_the_triton_path(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("CPU tensors must use the numba kernel")

    monkeypatch.setattr(monotonic_align, "maximum_path_cuda", fail)
    mask = lengths_mask([5], [3])
    assert monotonic_align.maximum_path(torch.randn(1, 5, 3), mask).sum() == 5


@pytest.mark.parametrize("capability, block_x", [(80, 256), (90, 1024)])
def test_triton_kernel_compiles_for_cuda_without_a_gpu(capability: int, block_x: int) -> None:
    """Ahead-of-time compilation down to a cubin (Triton ships its ptxas): catches what only the compiler rejects,
    which the interpreter test does not see (e.g. non-constexpr globals, loop-carried types, barriers)."""
    require_triton("compiled")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from monotonic_align.triton_kernel import _mas_kernel

    signature = {
        "values_ptr": "*fp32",
        "t_ys_ptr": "*i32",
        "t_xs_ptr": "*i32",
        "path_ptr": "*fp32",
        "decisions_ptr": "*i8",
        "row_ptr": "*fp32",
        "max_y": "i32",
        "max_x": "i32",
        "BLOCK_X": "constexpr",
    }
    source = ASTSource(fn=_mas_kernel, signature=signature, constexprs={"BLOCK_X": block_x})
    kernel = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
    assert len(kernel.asm["cubin"]) > 0
    assert "bar.sync" in kernel.asm["ptx"]  # the barriers around the shifted read of the previous row
    # The backtrack reads decisions other threads stored (int8 stores in the forward loop, int8 loads after it):
    # a barrier must come between the last store and the first load, or the last row's decisions can be stale.
    lines = kernel.asm["ttir"].splitlines()
    last_store = max(i for i, line in enumerate(lines) if "tt.store" in line and "!tt.ptr<i8>" in line)
    first_load = min(i for i, line in enumerate(lines) if "tt.load" in line and "!tt.ptr<i8>" in line)
    assert last_store < first_load
    assert any("gpu.barrier" in line for line in lines[last_store:first_load]), "no barrier before the backtrack"


@pytest.fixture
def fresh_triton_verdict():
    """``triton_usable`` remembers its verdict per device for the process: forget it around the test."""
    monotonic_align.triton_usable.cache_clear()
    yield
    monotonic_align.triton_usable.cache_clear()


def launch_failures() -> dict[str, Exception]:
    """What Triton raises when it cannot build or launch a kernel (runtime/build.py, backends/nvidia/compiler.py)."""
    from triton.runtime.errors import OutOfResources

    return {
        "no C compiler": RuntimeError(
            "Failed to find C compiler. Please specify via CC environment variable or set triton.knobs.build.impl."
        ),
        "no Python headers": subprocess.CalledProcessError(1, ["gcc", "main.c", "-I/usr/include/python3.11"]),
        "GPU too old": OutOfResources(232448, 101376, "shared memory"),
    }


@pytest.mark.parametrize("failure", ["no C compiler", "no Python headers", "GPU too old"])
def test_cuda_path_falls_back_to_the_torch_kernel_when_triton_cannot_launch(
    failure: str, monkeypatch, caplog, fresh_triton_verdict
) -> None:
    require_triton("tested")
    from monotonic_align import triton_kernel

    attempts = []

    def failing_launch(*args, **kwargs):
        attempts.append(args)
        raise launch_failures()[failure]

    monkeypatch.setattr(triton_kernel, "launch_mas_kernel", failing_launch)
    generator = torch.Generator().manual_seed(4)
    mask = lengths_mask([12, 9, 5], [5, 3, 5])
    neg_cent = torch.randn(mask.shape, generator=generator)
    with caplog.at_level(logging.WARNING, logger="monotonic_align"):
        paths = [monotonic_align.maximum_path_cuda(neg_cent, mask) for _ in range(3)]
    expected = naive_paths(neg_cent, mask)
    assert all(torch.equal(path, expected) for path in paths)
    assert len(attempts) == 1, "Triton is tried once per device, not at every step"
    warnings = [record.getMessage() for record in caplog.records if "torch kernel" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(launch_failures()[failure]) in warnings[0] and "C compiler (gcc)" in warnings[0]


def test_a_specialisation_that_cannot_build_falls_back_for_that_call(monkeypatch, caplog, fresh_triton_verdict) -> None:
    """The probe built, a later shape does not (e.g. out of resources): that call takes the torch kernel."""
    require_triton("tested")
    from monotonic_align import triton_kernel

    def probe_only(values, *args, **kwargs):
        if values.shape != (1, 2, 2):
            raise launch_failures()["GPU too old"]

    monkeypatch.setattr(triton_kernel, "launch_mas_kernel", probe_only)
    mask = lengths_mask([7, 4], [3, 4])
    neg_cent = torch.randn(mask.shape, generator=torch.Generator().manual_seed(5))
    with caplog.at_level(logging.WARNING, logger="monotonic_align"):
        path = monotonic_align.maximum_path_cuda(neg_cent, mask)
    assert torch.equal(path, naive_paths(neg_cent, mask))
    assert any("out of resource" in record.getMessage() for record in caplog.records)


def test_errors_that_are_not_a_launch_failure_propagate(monkeypatch, fresh_triton_verdict) -> None:
    require_triton("tested")
    from monotonic_align import triton_kernel

    def wrong_argument(*args, **kwargs):
        raise TypeError("launch_mas_kernel() got an unexpected keyword argument")

    monkeypatch.setattr(triton_kernel, "launch_mas_kernel", wrong_argument)
    mask = lengths_mask([5], [3])
    with pytest.raises(TypeError, match="unexpected keyword"):
        monotonic_align.maximum_path_cuda(torch.randn(mask.shape), mask)


def test_a_triton_that_is_found_but_does_not_import_falls_back(monkeypatch, caplog, fresh_triton_verdict) -> None:
    require_triton("tested")
    monkeypatch.setitem(sys.modules, "monotonic_align.triton_kernel", None)  # the import raises ImportError
    mask = lengths_mask([6, 4], [3, 4])
    neg_cent = torch.randn(mask.shape, generator=torch.Generator().manual_seed(6))
    with caplog.at_level(logging.WARNING, logger="monotonic_align"):
        path = monotonic_align.maximum_path_cuda(neg_cent, mask)
    assert torch.equal(path, naive_paths(neg_cent, mask))
    assert any("ImportError" in record.getMessage() or "import" in record.getMessage() for record in caplog.records)
