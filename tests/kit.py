"""Helpers that rebuild reference-kit values which the kit describes but does not ship."""

from __future__ import annotations

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64_uniform(seed: int, key_index: int, n: int) -> np.ndarray:
    """Values in [-0.5, 0.5) from the kit's SplitMix64 recipe (README, golden.pt section)."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) * np.uint64(1 << 48) + np.uint64(key_index) * np.uint64(1 << 32)
        x = x + np.arange(n, dtype=np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    top24 = (x >> np.uint64(40)).astype(np.float64)
    return (top24 * 2.0**-24 - 0.5).astype(np.float32)


def net_d_state_dict(golden: dict, seed: int = 1234) -> dict[str, torch.Tensor]:
    """The MultiPeriodDiscriminator weights the golden outputs were computed with."""
    state = dict(golden["weights_d"])
    for key, spec in golden["weights_d_generated"].items():
        shape = tuple(spec["shape"])
        n = int(np.prod(shape))
        values = torch.from_numpy(splitmix64_uniform(seed, int(spec["key_index"]), n)).reshape(shape)
        state[key] = values
    order = golden["weights_d_key_order"]
    return {key: state[key] for key in order}
