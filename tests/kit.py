"""Helpers for the reference-kit tests: values the kit describes but does not ship, and one comparison of many
entries that reports every mismatch at once."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

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


def assert_every_entry(checks: Mapping[str, Callable[[], object]], expected: Collection[str], what: str) -> None:
    """Run the check of every named entry and fail once, listing every entry that failed with its message.

    ``expected`` is the set of names that must be compared (e.g. every term the kit ships), so an entry cannot
    silently drop out of the comparison. Checks raise AssertionError (``torch.testing.assert_close`` and plain
    asserts); a failure report therefore carries the mismatch figures and tolerances of each failing entry.
    """
    compared, wanted = set(checks), set(expected)
    assert compared == wanted, (
        f"{what}: compared entries differ from the expected set: "
        f"missing {sorted(wanted - compared)}, unexpected {sorted(compared - wanted)}"
    )
    failures = []
    for name, check in checks.items():
        try:
            check()
        except AssertionError as error:
            failures.append(f"--- {name}: {error}")
    assert not failures, f"{what}: {len(failures)} of {len(checks)} entries differ\n" + "\n".join(failures)
