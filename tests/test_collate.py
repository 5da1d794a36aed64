"""TextAudioSpeakerCollate against the reference's recorded batch, and its behaviour on synthetic items."""

from __future__ import annotations

import pytest
import torch

from data_utils import Batch, Sample, TextAudioSpeakerCollate

OUTPUT_TO_FIELD = {
    "text_padded": "text",
    "text_lengths": "text_lengths",
    "spec_padded": "spec",
    "spec_lengths": "spec_lengths",
    "wav_padded": "wav",
    "wav_lengths": "wav_lengths",
    "sid": "sid",
    "tone_padded": "tone",
    "language_padded": "language",
    "bert_padded": "bert",
    "ja_bert_padded": "ja_bert",
    "en_bert_padded": "en_bert",
}


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.dtype == expected.dtype, name
    assert actual.shape == expected.shape, name
    if expected.is_floating_point():
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4, msg=name)
    else:
        assert torch.equal(actual, expected), name


def test_matches_reference(golden: dict) -> None:
    recorded = golden["collate"]
    batch = TextAudioSpeakerCollate()([tuple(item) for item in recorded["items"]])
    assert isinstance(batch, Batch)
    assert [OUTPUT_TO_FIELD[name] for name in recorded["output_order"]] == list(Batch._fields)
    for name, field in OUTPUT_TO_FIELD.items():
        _assert_same(getattr(batch, field), recorded["outputs"][name], name)
    # unpacks like the reference's 12-tuple, in the same order
    for position, name in enumerate(recorded["output_order"]):
        _assert_same(tuple(batch)[position], recorded["outputs"][name], name)


@pytest.fixture()
def items() -> list[tuple[torch.Tensor, ...]]:
    """Three items shaped like the kit's recorded ones (text 4/7/5 ids, 6/4/9 frames of 256 samples, speakers
    1/2/3): no kit needed."""
    generator = torch.Generator().manual_seed(0)
    made = []
    for sid, (t_text, t_spec) in enumerate(((4, 6), (7, 4), (5, 9)), start=1):
        bert = [torch.randn(1024, t_text, generator=generator) for _ in range(3)]
        made.append(
            (
                torch.randint(1, 100, (t_text,), generator=generator),
                torch.rand(513, t_spec, generator=generator),
                torch.rand(1, t_spec * 256, generator=generator) - 0.5,
                torch.LongTensor([sid]),
                torch.randint(0, 5, (t_text,), generator=generator),
                torch.zeros(t_text, dtype=torch.long),
                *bert,
            )
        )
    return made


def test_return_ids_and_samples(items) -> None:
    items = [Sample(*item) for item in items]
    batch, ids = TextAudioSpeakerCollate(return_ids=True)(items)
    assert ids.tolist() == [2, 0, 1]
    assert batch.spec_lengths.tolist() == [9, 6, 4]


def test_equal_lengths_keep_input_order(items) -> None:
    item = list(items[0])
    other = list(item)
    other[3] = torch.LongTensor([7])
    batch = TextAudioSpeakerCollate()([tuple(item), tuple(other)])
    assert batch.sid.tolist() == [1, 7]


def test_to_moves_every_tensor(items) -> None:
    batch = TextAudioSpeakerCollate()(items)
    moved = batch.to("cpu", non_blocking=True)
    assert isinstance(moved, Batch)
    moved64 = Batch(*(t.double() if t.is_floating_point() else t for t in moved))
    assert moved64.to(torch.device("cpu")).spec.dtype == torch.float64
    assert all(t.device.type == "cpu" for t in moved)
