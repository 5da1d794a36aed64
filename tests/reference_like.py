"""The reference's redundant iteration, for tests and bench/train_step.py (never used by training).

Bert-VITS2 2.3 runs WavLM twice on the real and three times on the generated audio per iteration (its
``WavLMLoss`` recomputes the features in every term) and computes the discriminators' weight gradients during
the generator step. This variant does exactly that with this package's nets, loss formulas and updates, so a
test can check that the production step gives the same numbers and the bench can time the difference.
"""

from __future__ import annotations

from typing import Any

import losses
import training
from data_utils import Batch
from training import GeneratorPass, Runtime, Trainer


def discriminator_losses(trainer: Trainer, fwd: GeneratorPass, rt: Runtime) -> dict[str, Any]:
    """As ``training.discriminator_losses``, with the WavLM term through the reference's ``wl.discriminator``."""
    dur_real = dur_fake = None
    with rt.autocast():
        mpd_real, mpd_fake, _, _ = trainer.d.net(fwd.y, fwd.y_hat.detach())
        if trainer.dur is not None:
            dur_real, dur_fake = training.duration_discriminator_scores(trainer.dur.net, fwd, detach=True)
    loss_wd = trainer.wl.discriminator(fwd.y.detach(), fwd.y_hat.detach()).mean()
    return losses.discriminator_step_losses(mpd_real, mpd_fake, loss_wd, dur_real, dur_fake)


def generator_losses(trainer: Trainer, fwd: GeneratorPass, hps: Any, rt: Runtime) -> dict[str, Any]:
    """As ``training.generator_losses``, with trainable discriminators and WavLM run per term, as the reference."""
    dur_fake = None
    with rt.autocast():
        _, mpd_fake, fmap_real, fmap_fake = trainer.d.net(fwd.y, fwd.y_hat)
        if trainer.dur is not None:
            _, dur_fake = training.duration_discriminator_scores(trainer.dur.net, fwd, detach=False)
    return losses.generator_step_losses(
        mpd_fake=mpd_fake,
        fmap_real=fmap_real,
        fmap_fake=fmap_fake,
        y_mel=fwd.y_mel,
        y_hat_mel=fwd.y_hat_mel,
        l_length=fwd.l_length,
        z_p=fwd.z_p,
        logs_q=fwd.logs_q,
        m_p=fwd.m_p,
        logs_p=fwd.logs_p,
        z_mask=fwd.z_mask,
        loss_lm=trainer.wl(fwd.y.detach(), fwd.y_hat).mean(),
        loss_lm_gen=trainer.wl.generator(fwd.y_hat),
        c_mel=hps.train.c_mel,
        c_kl=hps.train.c_kl,
        dur_fake=dur_fake,
    )


def train_step(trainer: Trainer, batch: Batch, hps: Any, rt: Runtime) -> tuple[dict[str, Any], GeneratorPass]:
    """One iteration the reference's way, through the production updates; returns what ``training.train_step``
    returns."""
    fwd = training.prepare_pass(training.synthesizer_forward(trainer, batch, rt), batch, hps, wl=None)
    d_metrics, d_updates = training.discriminator_step(trainer, discriminator_losses(trainer, fwd, rt), rt)
    g_metrics, g_update = training.generator_backward(trainer, generator_losses(trainer, fwd, hps, rt), rt)
    return training.finish_iteration(trainer, {**d_metrics, **g_metrics}, d_updates, g_update, rt, False), fwd
