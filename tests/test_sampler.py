"""DistributedBucketSampler against the reference's recorded batches, plus its edge cases."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from kit import assert_every_entry

from data_utils import DistributedBucketSampler

CASES = ("all_buckets", "gap_500_600", "first_empty")


def _fake_dataset(lengths: list[int]) -> SimpleNamespace:
    return SimpleNamespace(lengths=list(lengths))


def _check_equal(ours: object, reference: object) -> None:
    assert ours == reference, f"ours {ours}\n  reference {reference}"


def _check_epoch(sampler: DistributedBucketSampler, epoch: str, batches: list) -> None:
    sampler.set_epoch(int(epoch))
    _check_equal(list(sampler), batches)
    # iterating twice in the same epoch gives the same batches
    assert list(sampler) == batches, "the second iteration of the epoch differs"


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(golden: dict, case: str) -> None:
    """Both ranks' samplers of one recorded case: every field the kit recorded per rank (boundaries after the
    empty buckets are dropped, buckets, per-bucket counts, sizes, length and each epoch's batches); a failure
    lists every differing field of either rank."""
    recorded = golden["sampler"][case]
    boundaries = list(recorded["boundaries_in"])
    checks: dict[str, Callable[[], None]] = {}
    expected_names: set[str] = set()
    for rank in range(recorded["num_replicas"]):
        expected = recorded[f"rank{rank}"]
        sampler = DistributedBucketSampler(
            _fake_dataset(recorded["lengths"]),
            recorded["batch_size"],
            boundaries,
            num_replicas=recorded["num_replicas"],
            rank=rank,
            shuffle=True,
        )
        assert boundaries == list(recorded["boundaries_in"]), "the caller's boundaries list must not change"
        ours = {
            "boundaries_after": sampler.boundaries,
            "buckets": sampler.buckets,
            "num_samples_per_bucket": sampler.num_samples_per_bucket,
            "total_size": sampler.total_size,
            "num_samples": sampler.num_samples,
            "len": len(sampler),
        }
        for name, value in ours.items():
            checks[f"rank{rank}.{name}"] = functools.partial(_check_equal, value, expected[name])
        for epoch, batches in expected["epochs"].items():
            checks[f"rank{rank}.epochs.{epoch}"] = functools.partial(_check_epoch, sampler, epoch, batches)
        expected_names |= {f"rank{rank}.{name}" for name in expected if name != "epochs"}
        expected_names |= {f"rank{rank}.epochs.{epoch}" for epoch in expected["epochs"]}
    assert recorded["num_replicas"] == 2 and {"rank0", "rank1"} <= set(recorded)
    assert_every_entry(checks, expected_names, f"sampler case {case}")


def test_ranks_cover_every_bucketed_item() -> None:
    lengths = [(37 * i) % 900 + 40 for i in range(53)]  # spread over every bucket
    boundaries = [32, 300, 400, 500, 600, 700, 800, 900, 1000]
    samplers = [DistributedBucketSampler(_fake_dataset(lengths), 4, boundaries, 2, r) for r in (0, 1)]
    seen = {i for s in samplers for batch in s for i in batch}
    assert seen == {i for bucket in samplers[0].buckets for i in bucket}


def test_outside_clips_warn_once_with_count(caplog: pytest.LogCaptureFixture) -> None:
    lengths = [10, 20, 50, 60, 70, 80, 2000, 3000, 4000]
    with caplog.at_level(logging.WARNING, logger="data_utils"):
        sampler = DistributedBucketSampler(_fake_dataset(lengths), 2, [32, 100], num_replicas=1, rank=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "5 of 9" in warnings[0].getMessage()
    assert sampler.buckets == [[2, 3, 4, 5]]


def test_no_shuffle_is_in_bucket_order() -> None:
    lengths = [50, 150, 60, 160, 70, 170]
    sampler = DistributedBucketSampler(_fake_dataset(lengths), 2, [0, 100, 200], 1, 0, shuffle=False)
    assert list(sampler) == [[0, 2], [4, 0], [1, 3], [5, 1]]
    assert len(sampler) == 4


def test_dataset_smaller_than_a_batch_repeats_items() -> None:
    sampler = DistributedBucketSampler(_fake_dataset([50]), 4, [0, 100], num_replicas=2, rank=1)
    assert list(sampler) == [[0, 0, 0, 0]]
    assert len(sampler) == 1


def test_every_bucket_empty_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no clip length falls inside"):
        DistributedBucketSampler(_fake_dataset([5000, 6000]), 2, [32, 300, 1000], 1, 0)
    with pytest.raises(ValueError, match="no clip length falls inside"):
        DistributedBucketSampler(_fake_dataset([]), 2, [32, 300], 1, 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"boundaries": [100]}, "boundaries"),
        ({"boundaries": [100, 50]}, "boundaries"),
        ({"num_replicas": 2, "rank": 2}, "rank 2"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"batch_size": 2, "boundaries": [0, 100], "num_replicas": 1, "rank": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        DistributedBucketSampler(_fake_dataset([50]), **args)


def test_defaults_to_single_process_without_distributed() -> None:
    sampler = DistributedBucketSampler(_fake_dataset([50, 60]), 1, [0, 100])
    assert (sampler.num_replicas, sampler.rank) == (1, 0)
