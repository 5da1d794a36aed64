"""data.unused_bert in the training loader: noise per (seed, epoch, item), the same in workers; or zeros."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from train_tiny import make_dataset

from data_utils import (
    DistributedBucketSampler,
    EpochIndex,
    TextAudioSpeakerCollate,
    TextAudioSpeakerLoader,
    bert_path_for,
    fill_bert_slots,
    item_noise_generator,
)

DATA = {
    "sampling_rate": 22050,
    "filter_length": 1024,
    "hop_length": 256,
    "win_length": 1024,
    "add_blank": True,
    "spec_cache": False,
    "spk2id": {"spk0": 0, "spk1": 1, "spk2": 2, "spk3": 3},
}


@pytest.fixture(scope="module")
def filelist(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=6, n_val=0)["training_files"]


def test_fill_bert_slots_draws_in_the_reference_order() -> None:
    features = torch.randn(1024, 7)
    bert, ja_bert, en_bert = fill_bert_slots(features, "JP", "randn", torch.Generator().manual_seed(1))
    draws = torch.Generator().manual_seed(1)
    assert torch.equal(ja_bert, features)
    assert torch.equal(bert, torch.randn(1024, 7, generator=draws))  # ZH slot first, then EN
    assert torch.equal(en_bert, torch.randn(1024, 7, generator=draws))
    zeros = fill_bert_slots(features, "EN", "zeros")
    assert torch.equal(zeros[2], features) and not zeros[0].any() and not zeros[1].any()
    with pytest.raises(ValueError, match="unknown language 'KO'"):
        fill_bert_slots(features, "KO", "zeros")


def test_randn_items_are_seeded_by_seed_epoch_and_index(filelist: str) -> None:
    dataset = TextAudioSpeakerLoader(filelist, DATA, seed=42)
    assert dataset.unused_bert == "randn"  # the default, as in the reference
    item = dataset[EpochIndex(2, 5)]
    entry = dataset.audiopaths_sid_text[2]
    assert entry.language == "ZH"
    assert torch.equal(item.bert, torch.load(bert_path_for(entry.wav), weights_only=True))
    expected = torch.randn(item.ja_bert.shape, generator=item_noise_generator(42, 5, 2))
    assert torch.equal(item.ja_bert, expected)
    assert abs(item.en_bert.std().item() - 1.0) < 0.1 and not torch.equal(item.ja_bert, item.en_bert)
    # The same key gives the same noise; another epoch, item or seed gives other noise.
    assert torch.equal(dataset[EpochIndex(2, 5)].en_bert, item.en_bert)
    assert not torch.equal(dataset[EpochIndex(2, 6)].ja_bert, item.ja_bert)
    assert not torch.equal(TextAudioSpeakerLoader(filelist, DATA, seed=43)[EpochIndex(2, 5)].ja_bert, item.ja_bert)
    assert torch.equal(dataset[2].ja_bert, dataset[EpochIndex(2, 0)].ja_bert)  # a plain index is epoch 0
    # all_in_mem keeps the features, not the noise: still fresh per epoch.
    preloaded = TextAudioSpeakerLoader(filelist, DATA, all_in_mem=True, seed=42)
    assert torch.equal(preloaded[EpochIndex(2, 5)].ja_bert, item.ja_bert)
    assert not torch.equal(preloaded[EpochIndex(2, 6)].ja_bert, item.ja_bert)


def test_zeros_regime_and_bad_value(filelist: str) -> None:
    item = TextAudioSpeakerLoader(filelist, dict(DATA, unused_bert="zeros"))[EpochIndex(1, 3)]
    assert item.bert.any() and not item.ja_bert.any() and not item.en_bert.any()
    with pytest.raises(ValueError, match=r"data.unused_bert' must be one of 'randn', 'zeros', got 'Zeros'"):
        TextAudioSpeakerLoader(filelist, dict(DATA, unused_bert="Zeros"))


def _epochs(dataset: TextAudioSpeakerLoader, num_workers: int) -> list[list[torch.Tensor]]:
    sampler = DistributedBucketSampler(dataset, 2, [32, 300], num_replicas=1, rank=0)
    extra = {"persistent_workers": True} if num_workers else {}
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=TextAudioSpeakerCollate(), num_workers=num_workers, **extra
    )
    out = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        out.append([batch.ja_bert for batch in loader])
    return out


def test_noise_is_the_same_in_worker_processes(filelist: str) -> None:
    """The sampler's indices carry the epoch into persistent workers, so they draw what the main process draws."""
    dataset = TextAudioSpeakerLoader(filelist, DATA, seed=7)
    in_main, in_worker = _epochs(dataset, 0), _epochs(dataset, 1)
    for epoch_main, epoch_worker in zip(in_main, in_worker):
        assert len(epoch_main) == len(epoch_worker) == 3
        for a, b in zip(epoch_main, epoch_worker):
            assert torch.equal(a, b)
    assert not torch.equal(in_main[0][0], in_main[1][0])  # epoch 2 draws new noise


def test_epoch_index_behaves_as_its_index() -> None:
    import json
    import pickle

    index = EpochIndex(4, 9)
    copy = pickle.loads(pickle.dumps(index))
    assert copy == 4 and copy.epoch == 9 and hash(copy) == hash(4) and json.dumps([index]) == "[4]"
    assert [1, index] == [1, 4] and Path(str(index)).name == "4"
