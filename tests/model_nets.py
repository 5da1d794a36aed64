"""Test helpers: a seeded random batch for tests that need no reference numbers, the kit's state-dict layout
rows, and a patch that makes torch's random draws return zeros (the kit's "zero-random patch").

Tests build their nets with the production builders (models.build_generator, build_period_discriminator,
build_duration_discriminator, build_wavlm_discriminator), the ones train_nets.build_nets calls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from data_utils import Batch

FLOAT_TOL = {"atol": 1e-4, "rtol": 1e-4}


def random_batch(config: dict, n_vocab: int, text_lengths: list[int], spec_lengths: list[int], seed: int = 0) -> Batch:
    """A padded batch of random phones, BERT features, spectra and waves in the shapes of ``config`` (the kit's
    golden inputs have these shapes; kit-free tests use this instead). Item i is ``text_lengths[i]`` phones
    and ``spec_lengths[i]`` frames long; the first item should be the longest, as the collate sorts them."""
    gen = torch.Generator().manual_seed(seed)
    data = config["data"]
    b, t_x, t_spec = len(text_lengths), max(text_lengths), max(spec_lengths)
    hop, bins = data["hop_length"], data["filter_length"] // 2 + 1
    text_mask = torch.arange(t_x)[None, :] < torch.tensor(text_lengths)[:, None]
    spec_mask = (torch.arange(t_spec)[None, :] < torch.tensor(spec_lengths)[:, None]).unsqueeze(1)
    wave_mask = (torch.arange(t_spec * hop)[None, :] < torch.tensor(spec_lengths)[:, None] * hop).unsqueeze(1)
    phones = torch.randint(1, n_vocab, (b, t_x), generator=gen) * text_mask
    bert = [torch.randn(b, 1024, t_x, generator=gen) * text_mask.unsqueeze(1) for _ in range(3)]
    return Batch(
        phones,
        torch.tensor(text_lengths),
        torch.rand(b, bins, t_spec, generator=gen) * spec_mask,
        torch.tensor(spec_lengths),
        (torch.rand(b, 1, t_spec * hop, generator=gen) - 0.5) * 0.6 * wave_mask,
        torch.tensor(spec_lengths) * hop,
        torch.randint(0, data["n_speakers"], (b,), generator=gen),
        torch.randint(0, 6, (b, t_x), generator=gen) * text_mask,  # ZH tones
        torch.zeros(b, t_x, dtype=torch.long),  # ZH
        *bert,
    )


def state_dict_layout(net: nn.Module) -> list[list]:
    """``[key, shape, dtype]`` rows in state_dict order, in the kit's keys.json format."""
    return [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")] for key, value in net.state_dict().items()
    ]


def _requested_shape(size: tuple, kwargs: dict) -> tuple[int, ...]:
    if "size" in kwargs:
        size = (kwargs["size"],)
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        return tuple(size[0])
    return tuple(size)


def patch_random_to_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace torch.randn/randn_like/rand/rand_like by functions returning zeros (shape, dtype, device kept)."""
    zeros = torch.zeros

    def fresh(*size, dtype=None, device=None, **kwargs):
        return zeros(_requested_shape(size, kwargs), dtype=dtype, device=device)

    def like(tensor, *, dtype=None, device=None, **_kwargs):
        return zeros(tensor.shape, dtype=dtype or tensor.dtype, device=device or tensor.device)

    monkeypatch.setattr(torch, "randn", fresh)
    monkeypatch.setattr(torch, "rand", fresh)
    monkeypatch.setattr(torch, "randn_like", like)
    monkeypatch.setattr(torch, "rand_like", like)


def assert_float_close(actual: torch.Tensor, expected: torch.Tensor, name: str, **tolerance) -> None:
    tol = {**FLOAT_TOL, **tolerance}
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), **tol, msg=lambda m: f"{name}: {m}")


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.equal(actual.to(expected.dtype), expected), f"{name}: differs from the reference"
