"""DistributedBucketSampler against the reference's recorded batches, plus its edge cases."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from data_utils import DistributedBucketSampler

CASES = ("all_buckets", "gap_500_600", "first_empty")


def _fake_dataset(lengths: list[int]) -> SimpleNamespace:
    return SimpleNamespace(lengths=list(lengths))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rank", [0, 1])
def test_matches_reference(golden: dict, case: str, rank: int) -> None:
    recorded = golden["sampler"][case]
    expected = recorded[f"rank{rank}"]
    boundaries = list(recorded["boundaries_in"])
    sampler = DistributedBucketSampler(
        _fake_dataset(recorded["lengths"]),
        recorded["batch_size"],
        boundaries,
        num_replicas=recorded["num_replicas"],
        rank=rank,
        shuffle=True,
    )
    assert boundaries == list(recorded["boundaries_in"]), "the caller's boundaries list must not change"
    assert sampler.boundaries == expected["boundaries_after"]
    assert sampler.buckets == expected["buckets"]
    assert sampler.num_samples_per_bucket == expected["num_samples_per_bucket"]
    assert sampler.total_size == expected["total_size"]
    assert sampler.num_samples == expected["num_samples"]
    assert len(sampler) == expected["len"]
    for epoch, batches in expected["epochs"].items():
        sampler.set_epoch(int(epoch))
        assert list(sampler) == batches, f"epoch {epoch}"
        # iterating twice in the same epoch gives the same batches
        assert list(sampler) == batches


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
