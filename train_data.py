"""The data a run trains on, batch by batch, and where in an epoch a resumed run continues.

The bucket sampler deals each rank its batches of an epoch; ``ResumableBatchSampler`` lets the loader start
that epoch after the batches a checkpoint says were consumed (``resume_skip``), so a resumed run sees exactly
the batches an uninterrupted one would. The evaluation loader lives with evaluation (``train_eval.py``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Sampler

from data_utils import (
    DEFAULT_BUCKET_BOUNDARIES,
    DistributedBucketSampler,
    TextAudioSpeakerCollate,
    TextAudioSpeakerLoader,
)
from train_nets import TrainState
from train_runtime import Runtime, ignore_stop_signals

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ResumableBatchSampler(Sampler[list[int]]):
    """The bucket sampler's batches for one epoch, optionally without the first ``skip`` ones (a resume)."""

    def __init__(self, batch_sampler: DistributedBucketSampler) -> None:
        self.batch_sampler = batch_sampler
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def build_train_loader(hps: Any, rt: Runtime, num_workers: int) -> tuple[DataLoader, ResumableBatchSampler]:
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps.data, seed=hps.train.seed)  # unused-BERT noise
    sampler = DistributedBucketSampler(
        dataset,
        hps.train.batch_size,
        list(DEFAULT_BUCKET_BOUNDARIES),
        num_replicas=rt.world_size,
        rank=rt.rank,
        shuffle=True,
    )
    batches = ResumableBatchSampler(sampler)
    extra = {"persistent_workers": True, "prefetch_factor": 4, "worker_init_fn": ignore_stop_signals}
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=TextAudioSpeakerCollate(),
        num_workers=num_workers,
        pin_memory=rt.device.type == "cuda",
        # Its own generator: creating an iterator (each epoch, or on resume mid-epoch) must not draw from the
        # global RNG, or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator(),
        **(extra if num_workers > 0 else {}),
    )
    return loader, batches


def resume_skip(state: TrainState, rt: Runtime, batch_size: int) -> int:
    """Batches of the current epoch to skip on resume: the same share of the epoch's clips when the number of
    ranks or the batch size changed since the checkpoint (they deal other batches)."""
    saved_size = state.batch_size or batch_size
    if state.world_size == rt.world_size and saved_size == batch_size:
        return state.batch_in_epoch
    skip = state.batch_in_epoch * state.world_size * saved_size // (rt.world_size * batch_size)
    logger.warning(
        "resumed with %d ranks x batch %d instead of %d x %d: skipping %d batches of epoch %d",
        rt.world_size,
        batch_size,
        state.world_size,
        saved_size,
        skip,
        state.epoch,
    )
    return skip


def update_groups(batches: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive batches in groups of ``size``, one optimizer update each (``train.grad_accum_steps``); an
    epoch's last group may be shorter."""
    iterator = iter(batches)
    while group := list(itertools.islice(iterator, size)):
        yield group
