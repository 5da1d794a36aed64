"""One training iteration of the nets in ``train_nets.Trainer``, and how it handles non-finite values.

One iteration does what the reference does, in the same order and with the same numbers (``losses.py`` holds
every formula): the generator forward, the duration-, multi-period- and WavLM-discriminator updates, then the
generator update. It differs on purpose in:

* WavLM runs once on the real segment (without gradient) and once on the generated one (with gradient) instead
  of twice and three times; the frozen WavLM gives the same features each time, so the losses are unchanged.
* During the generator step the discriminators are used as frozen functions: no weight gradients are computed
  for them and they are not all-reduced across ranks (the reference computed and synchronised those gradients,
  then threw them away at the next ``zero_grad``).
* ``bf16_run`` uses bf16 autocast without a GradScaler (a scaler is for fp16); ``fp16_run`` uses fp16 autocast
  with a GradScaler; losses and spectrograms are computed in float32. Mixed precision is used on CUDA only.
* A non-finite loss or gradient skips that net's update, on every rank alike (below).
* ``train.grad_accum_steps`` > 1 (``train_update``): each update takes the gradient of several micro-batches as
  one batch. The generator's adversarial terms must use the discriminators after their update, as without
  accumulation, so the generator forward runs twice per micro-batch: without gradient for the discriminator
  step, then again (same random draws) for the generator step.

Non-finite values: one collective per iteration, besides DDP's gradient all-reduce.

1. ``backward`` multiplies a rank's loss by exactly 1, or by NaN when the loss is non-finite (a device-side
   choice, no host read), so a non-finite loss always leaves a non-finite gradient; DDP's gradient all-reduce
   then hands that gradient to every rank. After it, every rank holds the same gradient, finite or not.
2. ``apply_updates`` steps the discriminators right after their backward passes, each unless its gradient
   is non-finite, with no collective (the gradients are identical on every rank): under fp16 the GradScaler
   decides; fused AdamW skips inside its kernel (``found_inf``); otherwise their flags are read in one host read.
3. ``agree_on_iteration`` makes the iteration's one collective (``Runtime.reduce_any``: an all-reduce MAX of a
   small flag vector) and its one host read: per update whether any rank had a non-finite loss or, in float32,
   a non-finite gradient, plus whether any rank was asked to stop (SIGTERM/SIGINT). ``finish_iteration`` steps
   the generator unless its flag is set (under fp16 the GradScaler steps it) and names the skipped updates in
   the metrics and a warning; ``update_nonfinite_streak`` stops training after too many such iterations in a
   row. Under fp16 an overflow the GradScaler skips is its loss-scale search: neither reported nor counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import commons
import losses
from data_utils import Batch
from mel_processing import mel_spectrogram_torch, spec_to_mel_torch
from models import SynthesizerOutput
from train_nets import Part, Trainer, TrainState
from train_runtime import Runtime

logger = logging.getLogger(__name__)

# Gradient-norm clipping the reference applies in mixed precision only (discriminator, generator).
AMP_MAX_GRAD_NORM_D = 200.0
AMP_MAX_GRAD_NORM_G = 500.0


@dataclasses.dataclass
class GeneratorPass:
    """What both steps need from one generator forward; floating tensors in float32."""

    y: Tensor  # [b, 1, segment_size] real segment
    y_hat: Tensor  # [b, 1, segment_size] generated segment
    mel: Tensor  # [b, n_mels, t_spec] mel of the whole real clip (for the image log)
    y_mel: Tensor  # [b, n_mels, segment_frames]
    y_hat_mel: Tensor  # [b, n_mels, segment_frames]
    l_length: Tensor  # [b]
    attn: Tensor  # [b, 1, t_spec, t_x]
    x_mask: Tensor  # [b, 1, t_x]
    z_mask: Tensor  # [b, 1, t_spec]
    z_p: Tensor  # [b, inter, t_spec]
    m_p: Tensor
    logs_p: Tensor
    logs_q: Tensor
    hidden_x: Tensor  # [b, hidden, t_x]
    logw: Tensor  # [b, 1, t_x] duration predictor
    logw_: Tensor  # [b, 1, t_x] MAS target
    logw_sdp: Tensor  # [b, 1, t_x] stochastic duration predictor
    g: Tensor  # [b, gin, 1]
    slm_real: tuple[Tensor, ...] | None = None  # WavLM states of y (no gradient)
    slm_fake: tuple[Tensor, ...] | None = None  # WavLM states of y_hat (with gradient)


def waveform_mel(wave: Tensor, data: Any) -> Tensor:
    """[b, n_mels, frames] mel spectrogram of [b, samples] audio with the model's data settings."""
    return mel_spectrogram_torch(
        wave,
        data.filter_length,
        data.n_mel_channels,
        data.sampling_rate,
        data.hop_length,
        data.win_length,
        data.mel_fmin,
        data.mel_fmax,
    )


def prepare_pass(out: SynthesizerOutput, batch: Batch, hps: Any, wl: losses.WavLMLoss | None) -> GeneratorPass:
    """Mels, the real segment and (when ``wl`` is given) the WavLM states, from the synthesizer's output."""
    data = hps.data
    segment_frames = hps.train.segment_size // data.hop_length
    with torch.autocast(device_type=batch.spec.device.type, enabled=False):
        mel = spec_to_mel_torch(
            batch.spec.float(),
            data.filter_length,
            data.n_mel_channels,
            data.sampling_rate,
            data.mel_fmin,
            data.mel_fmax,
        )
        y_mel = commons.slice_segments(mel, out.ids_slice, segment_frames)
        y_hat = out.o.float()  # no copy when already float32
        y_hat_mel = waveform_mel(y_hat.squeeze(1), data)
        y = commons.slice_segments(batch.wav, out.ids_slice * data.hop_length, hps.train.segment_size)
    latents, durations = out.latents, out.durations
    fwd = GeneratorPass(
        y=y,
        y_hat=y_hat,
        mel=mel,
        y_mel=y_mel,
        y_hat_mel=y_hat_mel,
        l_length=out.l_length.float(),
        attn=out.attn,
        x_mask=out.x_mask.float(),
        z_mask=out.y_mask.float(),
        z_p=latents.z_p.float(),
        m_p=latents.m_p.float(),
        logs_p=latents.logs_p.float(),
        logs_q=latents.logs_q.float(),
        hidden_x=durations.x,
        logw=durations.logw,
        logw_=durations.logw_,
        logw_sdp=durations.logw_sdp,
        g=out.g,
    )
    if wl is not None:
        # The frozen, deterministic WavLM gives the same features in both steps: compute them once.
        with torch.no_grad():
            fwd.slm_real = wl.hidden_states(y)
        fwd.slm_fake = wl.hidden_states(fwd.y_hat)
    return fwd


def synthesizer_forward(trainer: Trainer, batch: Batch, rt: Runtime, wrapped: bool = True) -> SynthesizerOutput:
    """The synthesizer's training forward under autocast, with the MAS noise of the current step; through the
    DDP wrapper unless ``wrapped`` is false (a forward whose gradient is never taken)."""
    net_g = trainer.g.raw
    if net_g.use_noise_scaled_mas:
        net_g.current_mas_noise_scale = max(
            net_g.mas_noise_scale_initial - net_g.noise_scale_delta * trainer.state.step, 0.0
        )
    with rt.autocast():
        return (trainer.g.net if wrapped else net_g)(
            batch.text,
            batch.text_lengths,
            batch.spec,
            batch.spec_lengths,
            batch.sid,
            batch.tone,
            batch.language,
            batch.bert,
            batch.ja_bert,
            batch.en_bert,
        )


def generator_forward(trainer: Trainer, batch: Batch, hps: Any, rt: Runtime) -> GeneratorPass:
    """The synthesizer's training forward and everything derived from it, WavLM states included."""
    return prepare_pass(synthesizer_forward(trainer, batch, rt), batch, hps, trainer.wl)


def duration_discriminator_scores(net: nn.Module, fwd: GeneratorPass, detach: bool) -> tuple[Tensor, Tensor]:
    """(real, generated) probabilities of the duration discriminator for the dp and the sdp durations.

    The reference adds the two calls' probabilities element-wise ([b, t_x, 1] + [b, t_x, 1]) rather than
    listing them, so the GAN losses then iterate over the batch dimension. Kept for identical numbers.
    """
    inputs = [fwd.hidden_x, fwd.x_mask, fwd.logw_, fwd.logw, fwd.logw_sdp, fwd.g]
    if detach:
        inputs = [t.detach() for t in inputs]
    hidden_x, x_mask, logw_, logw, logw_sdp, g = inputs
    real_dp, fake_dp = net(hidden_x, x_mask, logw_, logw, g)
    real_sdp, fake_sdp = net(hidden_x, x_mask, logw_, logw_sdp, g)
    return real_dp + real_sdp, fake_dp + fake_sdp


def discriminator_losses(trainer: Trainer, fwd: GeneratorPass, rt: Runtime) -> dict[str, Any]:
    """The three discriminators' losses on the real and the (detached) generated audio."""
    dur_real = dur_fake = None
    with rt.autocast():
        mpd_real, mpd_fake, _, _ = trainer.d.net(fwd.y, fwd.y_hat.detach(), keep_maps=False)
        if trainer.dur is not None:
            dur_real, dur_fake = duration_discriminator_scores(trainer.dur.net, fwd, detach=True)
    with torch.autocast(device_type=fwd.y.device.type, enabled=False):
        wd_real = trainer.wd.net(losses.stack_wavlm_states(fwd.slm_real))
        wd_fake = trainer.wd.net(losses.stack_wavlm_states(fwd.slm_fake).detach())
    loss_wd = losses.wavlm_discriminator_loss(wd_real, wd_fake)
    return losses.discriminator_step_losses(mpd_real, mpd_fake, loss_wd, dur_real, dur_fake)


@contextlib.contextmanager
def frozen(modules: Iterable[nn.Module | None]) -> Iterator[None]:
    """Parameters of ``modules`` do not require gradients inside the block (restored afterwards)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def judges(trainer: Trainer) -> list[nn.Module]:
    """The discriminators as the generator step uses them: bare nets whose parameters get no gradient there."""
    return [part.raw for part in (trainer.d, trainer.wd, trainer.dur) if part is not None]


def generator_losses(trainer: Trainer, fwd: GeneratorPass, hps: Any, rt: Runtime) -> dict[str, Any]:
    """The generator's loss terms and their sum ``loss/g/total``, judged by the bare discriminators.

    With gradients, call it and the backward inside ``frozen(judges(trainer))``: the judges' parameters get no
    gradient (the reference computed and discarded it), and activation checkpointing, which recomputes a
    discriminator during the backward, must save there what the forward saved."""
    dur = trainer.dur.raw if trainer.dur is not None else None
    dur_fake = None
    with rt.autocast():
        mpd_fake, fm_terms = trainer.d.raw.judge_generated(fwd.y, fwd.y_hat, losses.feature_terms)
        if dur is not None:
            _, dur_fake = duration_discriminator_scores(dur, fwd, detach=False)
    with torch.autocast(device_type=fwd.y.device.type, enabled=False):
        wd_fake = trainer.wd.raw(losses.stack_wavlm_states(fwd.slm_fake))
    return judged_generator_losses(
        fwd,
        hps,
        mpd_fake=mpd_fake,
        loss_fm=losses.summed_feature_terms(fm_terms),
        loss_lm=losses.wavlm_feature_loss(fwd.slm_real, fwd.slm_fake),
        loss_lm_gen=losses.wavlm_generator_loss(wd_fake),
        dur_fake=dur_fake,
    )


def judged_generator_losses(fwd: GeneratorPass, hps: Any, **judged: Any) -> dict[str, Any]:
    """``losses.generator_step_losses`` of this pass and the judges' outputs (``mpd_fake``, ``loss_fm``,
    ``loss_lm``, ``loss_lm_gen``, ``dur_fake``), with the config's loss weights."""
    return losses.generator_step_losses(
        y_mel=fwd.y_mel,
        y_hat_mel=fwd.y_hat_mel,
        l_length=fwd.l_length,
        z_p=fwd.z_p,
        logs_q=fwd.logs_q,
        m_p=fwd.m_p,
        logs_p=fwd.logs_p,
        z_mask=fwd.z_mask,
        c_mel=hps.train.c_mel,
        c_kl=hps.train.c_kl,
        **judged,
    )


@dataclasses.dataclass
class Update:
    """One net's pending update after its backward: device tensors, read by the host only when needed."""

    part: Part
    loss_nonfinite: Tensor  # bool, this rank's loss
    grad_norm: Tensor  # of the (DDP-averaged) gradient, after any clipping's measurement

    @property
    def grad_nonfinite(self) -> Tensor:
        return ~torch.isfinite(self.grad_norm)


def add_gradient(loss: Tensor, part: Part, scaler: torch.amp.GradScaler) -> Tensor:
    """Backward of ``loss`` into ``part``'s gradients, poisoned when non-finite (step 1 of the module docstring);
    returns whether it was non-finite, on the device. Gradients add up until ``finish_backward``."""
    loss_nonfinite = ~torch.isfinite(loss.detach())
    poison = torch.where(loss_nonfinite, math.nan, 1.0).to(loss.dtype)
    scaler.scale(loss * poison).backward()
    return loss_nonfinite


def finish_backward(part: Part, scaler: torch.amp.GradScaler, max_norm: float | None, loss_nonfinite: Tensor) -> Update:
    """Unscale the gathered gradient, clip it (mixed precision) and measure its norm, without a host sync."""
    scaler.unscale_(part.optimizer)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(part.net.parameters(), max_norm=max_norm)
    grad_norm = commons.grad_norm(part.net.parameters())  # measures only, as the reference's clip_grad_value_
    return Update(part, loss_nonfinite, grad_norm)


def backward(loss: Tensor, part: Part, scaler: torch.amp.GradScaler, max_norm: float | None) -> Update:
    """zero_grad, backward of the loss, optional norm clipping: one net's gradient for one batch."""
    part.optimizer.zero_grad(set_to_none=True)
    return finish_backward(part, scaler, max_norm, add_gradient(loss, part, scaler))


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can skip an update on the device (torch's fused kernels take a ``found_inf``)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups
    )


def apply_updates(trainer: Trainer, updates: Sequence[Update]) -> None:
    """Step each optimizer unless its gradient is non-finite (step 2 of the module docstring)."""
    if trainer.scaler.is_enabled():
        for update in updates:
            trainer.scaler.step(update.part.optimizer)
        return
    on_host = []
    for update in updates:
        optimizer = update.part.optimizer
        if not skips_on_device(optimizer):
            on_host.append(update)
            continue
        optimizer.found_inf = update.grad_nonfinite.float()  # the attribute torch's fused step reads
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    if on_host:
        for update, bad in zip(on_host, torch.stack([u.grad_nonfinite for u in on_host]).tolist()):
            if not bad:
                update.part.optimizer.step()


def discriminator_plan(trainer: Trainer, rt: Runtime) -> list[tuple[Part, str, str, float | None]]:
    """(net, loss tag, gradient-norm tag, clipping norm) of each discriminator update, in the reference's order."""
    amp_clip = AMP_MAX_GRAD_NORM_D if rt.amp_dtype is not None else None
    plan = [
        (trainer.dur, "loss/dur_disc/total", "grad_norm_dur", None),
        (trainer.d, "loss/d/total", "grad_norm_d", amp_clip),
        (trainer.wd, "loss/wd/total", "grad_norm_wd", None),
    ]
    return [(part, loss_tag, norm_tag, clip) for part, loss_tag, norm_tag, clip in plan if part is not None]


def generator_clip(rt: Runtime) -> float | None:
    return AMP_MAX_GRAD_NORM_G if rt.amp_dtype is not None else None


def discriminator_step(trainer: Trainer, losses_d: dict[str, Any], rt: Runtime) -> tuple[dict[str, Any], list[Update]]:
    """Update the duration, multi-period and WavLM discriminators on their losses; adds the gradient norms."""
    metrics = dict(losses_d)
    updates = []
    for part, loss_tag, norm_tag, clip in discriminator_plan(trainer, rt):
        updates.append(backward(metrics[loss_tag], part, trainer.scaler, clip))
        metrics[norm_tag] = updates[-1].grad_norm
    apply_updates(trainer, updates)
    return metrics, updates


def generator_backward(trainer: Trainer, losses_g: dict[str, Any], rt: Runtime) -> tuple[dict[str, Any], Update]:
    """The synthesizer's backward on ``loss/g/total``; adds its gradient norm. Its update waits for the
    iteration's agreement (``finish_iteration``)."""
    metrics = dict(losses_g)
    update = backward(metrics["loss/g/total"], trainer.g, trainer.scaler, generator_clip(rt))
    metrics["grad_norm_g"] = update.grad_norm
    return metrics, update


def agree_on_iteration(
    trainer: Trainer, updates: Sequence[Update], rt: Runtime, stop_requested: bool
) -> tuple[list[bool], bool]:
    """Per update whether it is skipped, and whether any rank asked to stop (step 3 of the module docstring)."""
    flags = [u.loss_nonfinite if trainer.scaler.is_enabled() else u.loss_nonfinite | u.grad_nonfinite for u in updates]
    flags.append(flags[0].new_full((), stop_requested))  # a fill on the device, not a blocking host copy
    agreed = [bool(value) for value in rt.reduce_any(torch.stack(flags)).tolist()]
    return agreed[:-1], agreed[-1]


def finish_iteration(
    trainer: Trainer,
    merged: Mapping[str, Any],
    d_updates: Sequence[Update],
    g_update: Update,
    rt: Runtime,
    stop_requested: bool,
) -> dict[str, Any]:
    """Agree on the iteration, step the synthesizer unless skipped, and return the detached metrics with the
    ``skipped`` prefixes, the agreed ``stop_requested`` and the learning rate."""
    updates = [*d_updates, g_update]
    skipped_flags, stop = agree_on_iteration(trainer, updates, rt, stop_requested)
    if trainer.scaler.is_enabled():
        trainer.scaler.step(g_update.part.optimizer)
    elif not skipped_flags[-1]:
        g_update.part.optimizer.step()
    trainer.scaler.update()
    skipped = [u.part.prefix for u, bad in zip(updates, skipped_flags) if bad]
    for prefix in skipped:
        logger.warning("step %d: non-finite %s loss or gradient; update skipped", trainer.state.step + 1, prefix)
    metrics = {tag: value.detach() if isinstance(value, Tensor) else value for tag, value in merged.items()}
    metrics["skipped"], metrics["stop_requested"] = skipped, stop
    metrics["learning_rate"] = trainer.g.optimizer.param_groups[0]["lr"]
    return metrics


def train_step(
    trainer: Trainer, batch: Batch, hps: Any, rt: Runtime, stop_requested: bool = False
) -> tuple[dict[str, Any], GeneratorPass]:
    """One reference iteration: generator forward, discriminator updates, generator update.

    Returns the metrics (loss terms and gradient norms as device tensors, the learning rate, the ``skipped``
    updates and the ``stop_requested`` of any rank) and the forward's tensors (for the image log).
    """
    fwd = generator_forward(trainer, batch, hps, rt)
    d_metrics, d_updates = discriminator_step(trainer, discriminator_losses(trainer, fwd, rt), rt)
    with frozen(judges(trainer)):
        g_metrics, g_update = generator_backward(trainer, generator_losses(trainer, fwd, hps, rt), rt)
    merged = {**d_metrics, **g_metrics}
    return finish_iteration(trainer, merged, d_updates, g_update, rt, stop_requested), fwd


# ------------------------------------------------------------------------------------ gradient accumulation


def device_rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The CPU generator's state and, on CUDA, the device's: what a forward's random draws depend on."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def restore_rng_state(device: torch.device, state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def gradients_kept_local(parts: Sequence[Part], keep: bool) -> Iterator[None]:
    """DDP's ``no_sync`` for ``parts`` when ``keep``: gradients add up on each rank, and the pass that leaves
    the block without it all-reduces their sum. It must hold the forward as well as the backward."""
    with contextlib.ExitStack() as stack:
        if keep:
            for part in parts:
                if isinstance(part.net, torch.nn.parallel.DistributedDataParallel):
                    stack.enter_context(part.net.no_sync())
        yield


def either(first: Tensor | None, second: Tensor) -> Tensor:
    return second if first is None else first | second


def accumulated_discriminator_step(
    trainer: Trainer, batches: Sequence[Batch], hps: Any, rt: Runtime
) -> tuple[dict[str, Any], list[Update], list[tuple[Tensor, Tensor | None]]]:
    """The discriminator updates on the gradient of ``batches`` as one batch; returns the metrics, the updates
    and the random state before each micro-batch's generator forward (for ``accumulated_generator_step``).

    The generator forward runs without gradient here: the generator step needs the discriminators after this
    update, so it recomputes its forward with the same random draws (one extra forward per micro-batch)."""
    plan = discriminator_plan(trainer, rt)
    for part, *_ in plan:
        part.optimizer.zero_grad(set_to_none=True)
    nonfinite: list[Tensor | None] = [None] * len(plan)
    terms, rng_states = [], []
    for index, batch in enumerate(batches):
        rng_states.append(device_rng_state(rt.device))
        with torch.no_grad():
            fwd = prepare_pass(synthesizer_forward(trainer, batch, rt, wrapped=False), batch, hps, trainer.wl)
        with gradients_kept_local([part for part, *_ in plan], keep=index < len(batches) - 1):
            micro = discriminator_losses(trainer, fwd, rt)
            for slot, (part, loss_tag, _, _) in enumerate(plan):
                share = losses.micro_batch_share(micro, loss_tag, len(batches))
                nonfinite[slot] = either(nonfinite[slot], add_gradient(share, part, trainer.scaler))
        terms.append({tag: value.detach() if isinstance(value, Tensor) else value for tag, value in micro.items()})
    metrics = losses.combine_micro_batch_terms(terms)
    updates = []
    for (part, _, norm_tag, clip), bad in zip(plan, nonfinite):
        updates.append(finish_backward(part, trainer.scaler, clip, bad))
        metrics[norm_tag] = updates[-1].grad_norm
    apply_updates(trainer, updates)
    return metrics, updates, rng_states


def accumulated_generator_step(
    trainer: Trainer,
    batches: Sequence[Batch],
    hps: Any,
    rt: Runtime,
    rng_states: Sequence[tuple[Tensor, Tensor | None]],
) -> tuple[dict[str, Any], Update, GeneratorPass]:
    """The synthesizer's backward on the gradient of ``batches`` as one batch, judged by the updated
    discriminators; each forward replays the random draws of the discriminator step's."""
    trainer.g.optimizer.zero_grad(set_to_none=True)
    nonfinite: Tensor | None = None
    terms = []
    for index, (batch, rng_state) in enumerate(zip(batches, rng_states)):
        restore_rng_state(rt.device, rng_state)
        with gradients_kept_local([trainer.g], keep=index < len(batches) - 1), frozen(judges(trainer)):
            fwd = generator_forward(trainer, batch, hps, rt)
            micro = generator_losses(trainer, fwd, hps, rt)
            share = losses.micro_batch_share(micro, "loss/g/total", len(batches))
            nonfinite = either(nonfinite, add_gradient(share, trainer.g, trainer.scaler))
        terms.append({tag: value.detach() for tag, value in micro.items()})
    metrics = losses.combine_micro_batch_terms(terms)
    update = finish_backward(trainer.g, trainer.scaler, generator_clip(rt), nonfinite)
    metrics["grad_norm_g"] = update.grad_norm
    return metrics, update, fwd


def train_update(
    trainer: Trainer, batches: Sequence[Batch], hps: Any, rt: Runtime, stop_requested: bool = False
) -> tuple[dict[str, Any], GeneratorPass]:
    """One optimizer update of every net on ``batches`` (``train.grad_accum_steps`` micro-batches): their
    gradients add up to the gradient of one batch made of all of them (``losses.micro_batch_share``). One
    micro-batch is ``train_step``. Under DDP only the last micro-batch's backward all-reduces; the iteration
    still makes one collective of its own. Returns the metrics (combined over the micro-batches) and the last
    micro-batch's forward."""
    if len(batches) == 1:
        return train_step(trainer, batches[0], hps, rt, stop_requested)
    d_metrics, d_updates, rng_states = accumulated_discriminator_step(trainer, batches, hps, rt)
    g_metrics, g_update, fwd = accumulated_generator_step(trainer, batches, hps, rt, rng_states)
    merged = {**d_metrics, **g_metrics}
    return finish_iteration(trainer, merged, d_updates, g_update, rt, stop_requested), fwd


def update_nonfinite_streak(state: TrainState, skipped: Sequence[str], limit: int, model_dir: str) -> None:
    """Count iterations in a row with a skipped update; raise after ``limit`` of them."""
    if not skipped:
        state.nonfinite_streak = 0
        return
    state.nonfinite_streak += 1
    if state.nonfinite_streak >= limit:
        raise RuntimeError(
            f"{state.nonfinite_streak} iterations in a row had non-finite losses or gradients (last at step "
            f"{state.step}: {', '.join(skipped)}); stopping. The last checkpoint in {model_dir} holds finite "
            f"weights: lower train.learning_rate or check the data (audio, BERT features) before resuming"
        )


def scalar_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are numbers, as floats (for TensorBoard): the device tensors in one host read."""
    numbers = {tag: value for tag, value in metrics.items() if tag not in ("skipped", "stop_requested")}
    tensors = {tag: value for tag, value in numbers.items() if isinstance(value, Tensor)}
    values = {tag: float(value) for tag, value in numbers.items() if not isinstance(value, Tensor)}
    if tensors:
        device = next(iter(tensors.values())).device
        stacked = torch.stack([value.detach().double().reshape(()).to(device) for value in tensors.values()])
        values.update(zip(tensors, stacked.tolist()))
    return {tag: values[tag] for tag in numbers}
