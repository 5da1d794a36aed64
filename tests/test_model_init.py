"""Initialisation is faithful too: seeded like the reference, our nets draw the very same initial weights.

The kit built net_g, net_d, net_dur_disc and net_wd in that order right after torch.manual_seed(1234),
with no other random draw in between. Equal weights prove that every module creates its parameters
and runs its init in the reference's order, so a seeded run starts exactly where the reference's does.
"""

from __future__ import annotations

import torch

from tests.model_nets import build_net_d, build_net_dur_disc, build_net_g, build_net_wd
from text.symbols import symbols


def _assert_state_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], net: str) -> None:
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"{net}: keys missing from our net: {missing[:5]}"
    for key, value in expected.items():
        assert torch.equal(actual[key], value), f"{net}.{key} differs from the reference's initial value"


def test_seeded_build_reproduces_reference_initial_weights(golden, dev_config):
    torch.manual_seed(1234)
    net_g = build_net_g(dev_config, len(symbols))
    net_d = build_net_d(dev_config)
    net_dur_disc = build_net_dur_disc(dev_config)
    net_wd = build_net_wd(dev_config)

    _assert_state_equal(net_g.state_dict(), golden["weights_g"], "net_g")
    # golden keeps only net_d's small tensors; the large weight_v ones were overwritten after the build.
    _assert_state_equal(net_d.state_dict(), golden["weights_d"], "net_d")
    _assert_state_equal(net_dur_disc.state_dict(), golden["weights_dur"], "net_dur_disc")
    _assert_state_equal(net_wd.state_dict(), golden["weights_wd"], "net_wd")
