"""The reference's redundant iteration, for tests and bench/train_step.py (never used by training).

Bert-VITS2 2.3 runs WavLM twice on the real and three times on the generated audio per iteration (its
``WavLMLoss`` recomputes the features in every term) and computes the discriminators' weight gradients during
the generator step. This variant does exactly that with this package's nets, loss formulas and updates, so a
test can check that the production step gives the same numbers and the bench can time the difference.

It also pays the reference's host round trips, which cost little on a CPU and a lot on a GPU (each one waits
for the device's whole queue): the gradient norm of every net read to the host one parameter at a time (its
``clip_grad_value_(parameters, None)``), every discriminator output's real and fake loss read to the host
(its ``discriminator_loss`` keeps them as floats), the monotonic alignment searched by numba on the host (the
scores copied there, the path copied back), and the CPU random draws copied to the device from pageable memory.
Not modelled: the reference's GradScaler, enabled for bf16 too (a few more reads per iteration in bf16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

import commons
import losses
import monotonic_align
import training
from data_utils import Batch
from train_nets import Trainer
from train_runtime import Runtime
from training import GeneratorPass


def per_parameter_grad_norm(parameters: Iterable[Tensor], norm_type: float = 2.0) -> Tensor:
    """The reference's gradient-norm measurement: one norm and one host read per parameter with a gradient.

    Returned as a device scalar (a fill, no copy) because the production step keeps norms on the device."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    total = sum(float(torch.linalg.vector_norm(g, norm_type)) ** norm_type for g in grads)
    device = grads[0].device if grads else torch.device("cpu")
    return torch.full((), total ** (1.0 / norm_type), dtype=torch.float64, device=device)


def pageable_host_random(draw: Callable[..., Tensor], size: Sequence[int], device: torch.device | str) -> Tensor:
    """The reference's CPU draw and plain ``.to(device)`` (from pageable memory: waits for the device's queue)."""
    return draw(tuple(size)).to(device)


def read_every_discriminator_loss(real_scores: Iterable[Tensor], fake_scores: Iterable[Tensor]) -> None:
    """The host reads of the reference's ``discriminator_loss``: each output's real and fake loss as a float."""
    for real, fake in zip(real_scores, fake_scores):
        torch.mean((1 - real.detach().float()) ** 2).item()
        torch.mean(fake.detach().float() ** 2).item()


@contextlib.contextmanager
def reference_host_round_trips() -> Iterator[None]:
    """Within the block, the production code pays the reference's host round trips (the module docstring)."""
    replacements = [
        (commons, "grad_norm", per_parameter_grad_norm),
        (commons, "host_random", pageable_host_random),
        (monotonic_align, "maximum_path", monotonic_align.maximum_path_cpu),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    for module, name, replacement in replacements:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def discriminator_losses(trainer: Trainer, fwd: GeneratorPass, rt: Runtime) -> dict[str, Any]:
    """As ``training.discriminator_losses``, with the WavLM term through the reference's ``wl.discriminator``."""
    dur_real = dur_fake = None
    with rt.autocast():
        mpd_real, mpd_fake, _, _ = trainer.d.net(fwd.y, fwd.y_hat.detach())
        if trainer.dur is not None:
            dur_real, dur_fake = training.duration_discriminator_scores(trainer.dur.net, fwd, detach=True)
    loss_wd = trainer.wl.discriminator(fwd.y.detach(), fwd.y_hat.detach()).mean()
    read_every_discriminator_loss(mpd_real, mpd_fake)
    if dur_real is not None:
        read_every_discriminator_loss(dur_real, dur_fake)
    return losses.discriminator_step_losses(mpd_real, mpd_fake, loss_wd, dur_real, dur_fake)


def generator_losses(trainer: Trainer, fwd: GeneratorPass, hps: Any, rt: Runtime) -> dict[str, Any]:
    """As ``training.generator_losses``, with trainable discriminators and WavLM run per term, as the reference."""
    dur_fake = None
    with rt.autocast():
        _, mpd_fake, fmap_real, fmap_fake = trainer.d.net(fwd.y, fwd.y_hat)
        if trainer.dur is not None:
            _, dur_fake = training.duration_discriminator_scores(trainer.dur.net, fwd, detach=False)
    return training.judged_generator_losses(
        fwd,
        hps,
        mpd_fake=mpd_fake,
        loss_fm=losses.feature_loss(fmap_real, fmap_fake),
        loss_lm=trainer.wl(fwd.y.detach(), fwd.y_hat).mean(),
        loss_lm_gen=trainer.wl.generator(fwd.y_hat),
        dur_fake=dur_fake,
    )


def train_step(trainer: Trainer, batch: Batch, hps: Any, rt: Runtime) -> tuple[dict[str, Any], GeneratorPass]:
    """One iteration the reference's way, through the production updates; returns what ``training.train_step``
    returns."""
    with reference_host_round_trips():
        fwd = training.prepare_pass(training.synthesizer_forward(trainer, batch, rt), batch, hps, wl=None)
        d_metrics, d_updates = training.discriminator_step(trainer, discriminator_losses(trainer, fwd, rt), rt)
        g_metrics, g_update = training.generator_backward(trainer, generator_losses(trainer, fwd, hps, rt), rt)
        return training.finish_iteration(trainer, {**d_metrics, **g_metrics}, d_updates, g_update, rt, False), fwd
