"""Initialisation is faithful too: seeded like the reference, our nets draw the very same initial weights.

The kit built net_g, net_d, net_dur_disc and net_wd in that order right after torch.manual_seed(1234),
with no other random draw in between. Equal weights prove that every module creates its parameters
and runs its init in the reference's order, so a seeded run starts exactly where the reference's does.
The nets come from the production builders in models.py, the ones train_nets.build_nets calls.
"""

from __future__ import annotations

import torch

import config
import models
import train_nets
from text.symbols import symbols


def _assert_state_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], net: str) -> None:
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"{net}: keys missing from our net: {missing[:5]}"
    for key, value in expected.items():
        assert torch.equal(actual[key], value), f"{net}.{key} differs from the reference's initial value"


def test_seeded_build_reproduces_reference_initial_weights(golden, dev_config):
    torch.manual_seed(1234)
    net_g = models.build_generator(dev_config, for_training=True, n_vocab=len(symbols))
    net_d = models.build_period_discriminator(dev_config)
    net_dur_disc = models.build_duration_discriminator(dev_config)
    net_wd = models.build_wavlm_discriminator(dev_config)

    _assert_state_equal(net_g.state_dict(), golden["weights_g"], "net_g")
    # golden keeps only net_d's small tensors; the large weight_v ones were overwritten after the build.
    _assert_state_equal(net_d.state_dict(), golden["weights_d"], "net_d")
    _assert_state_equal(net_dur_disc.state_dict(), golden["weights_dur"], "net_dur_disc")
    _assert_state_equal(net_wd.state_dict(), golden["weights_wd"], "net_wd")


def test_training_builds_the_nets_in_the_reference_scripts_order(tiny_model_config):
    """The reference train_ms.py draws net_dur_disc first, then net_g, net_d and net_wd: a seeded training run
    starts from the weights those builders give in that order."""
    hps = config.as_model_config(tiny_model_config)
    torch.manual_seed(7)
    net_g, net_d, net_wd, net_dur_disc = train_nets.build_nets(hps)
    torch.manual_seed(7)
    expected = {
        "net_dur_disc": models.build_duration_discriminator(hps),
        "net_g": models.build_generator(hps, for_training=True),
        "net_d": models.build_period_discriminator(hps),
        "net_wd": models.build_wavlm_discriminator(hps),
    }
    built = {"net_dur_disc": net_dur_disc, "net_g": net_g, "net_d": net_d, "net_wd": net_wd}
    for name, net in built.items():
        _assert_state_equal(net.state_dict(), expected[name].state_dict(), name)
