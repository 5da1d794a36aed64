"""The pieces ``train_ms.py`` wires together: where a process runs, the nets with their optimizers and saved
state, one training iteration, the data loaders, resuming, and evaluation.

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
* A non-finite loss or gradient skips that optimizer step on every rank. The ranks agree on it in two small
  all-reduces per iteration: one for the three discriminators' updates (their backward passes all run first),
  one for the generator's update together with the stop request (SIGTERM/SIGINT) of any rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import logging
import math
import os
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler

import commons
import losses
import utils
from config import as_model_config, changed_settings, resolve_device
from data_utils import (
    DEFAULT_BUCKET_BOUNDARIES,
    Batch,
    DistributedBucketSampler,
    TextAudioSpeakerCollate,
    TextAudioSpeakerLoader,
)
from mel_processing import mel_spectrogram_torch, spec_to_mel_torch
from models import (
    DurationDiscriminator,
    MultiPeriodDiscriminator,
    SynthesizerOutput,
    SynthesizerTrn,
    WavLMDiscriminator,
    build_duration_discriminator,
    build_generator,
    build_period_discriminator,
    build_wavlm_discriminator,
)

logger = logging.getLogger(__name__)

# Gradient-norm clipping the reference applies in mixed precision only (discriminator, generator).
AMP_MAX_GRAD_NORM_D = 200.0
AMP_MAX_GRAD_NORM_G = 500.0
# Generous: rank 0 evaluates and writes checkpoints while the other ranks wait in the next collective.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


# ------------------------------------------------------------------------------------------------------ runtime


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank, its device, and the autocast dtype (None = float32)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def any_rank_tensor(self, flags: Tensor) -> list[bool]:
        """Per flag (bool or 0/1, on any device), whether it is true on at least one rank: one all-reduce for all
        of them (a collective) and one host read."""
        if self.distributed:
            # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
            device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            flags = flags.to(device=device, dtype=torch.float32)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [bool(value) for value in flags.tolist()]

    def any_rank(self, flags: Sequence[bool]) -> list[bool]:
        """``any_rank_tensor`` for python flags."""
        return self.any_rank_tensor(torch.tensor([bool(flag) for flag in flags]))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_amp_dtype(train: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype from ``train.bf16_run`` / ``train.fp16_run``; None (float32) on the CPU."""
    bf16 = bool(train.get("bf16_run", False))
    fp16 = bool(train.get("fp16_run", False))
    if bf16 and fp16:
        raise ValueError("train.bf16_run and train.fp16_run are both true; set at most one of them")
    if not (bf16 or fp16):
        return None
    if device.type != "cuda":
        name = "bf16_run" if bf16 else "fp16_run"
        logger.warning("mixed precision (%s) is used on CUDA only; training in float32 on %s", name, device)
        return None
    if bf16 and not torch.cuda.is_bf16_supported():
        raise ValueError("train.bf16_run is true but this GPU has no bfloat16 support; set fp16_run instead")
    return torch.bfloat16 if bf16 else torch.float16


def init_runtime(device: str, train: Any) -> Runtime:
    """Read rank and world size from the environment, pick the device, and join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device(resolve_device(device, local_rank))
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1:
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=PROCESS_GROUP_TIMEOUT)
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Runtime(rank, local_rank, world_size, torch_device, resolve_amp_dtype(train, torch_device))


def configure_kernels(device: torch.device, train: Any = None) -> None:
    """Backend flags, set once per process.

    On the CPU the native convolution kernels replace oneDNN's: the first oneDNN call of a convolution in a
    process can round differently from later calls, so a resumed run would drift from an uninterrupted one.
    The native kernels are deterministic and, for this model on CPU, about as fast (bench/train_step.py).
    On CUDA, as the reference: cuDNN autotuning, TF32 in float32 matmuls and convolutions, and float32 matmul
    precision "medium"; ``train.allow_tf32: false`` keeps float32 math strict instead. The CPU keeps full
    float32 matmuls ("medium" could mean bf16 matmuls on some CPUs).
    """
    if device.type == "cpu":
        torch.backends.mkldnn.enabled = False
        return
    torch.backends.cudnn.benchmark = True
    tf32 = getattr(train, "allow_tf32", None) is not False
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("medium" if tf32 else "highest")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by SIGTERM / SIGINT: the loop finishes the current step, saves and exits.

    Further signals while a checkpoint is written (or once the final save has begun) are only acknowledged, so
    the save completes; a second signal at any other time aborts without saving (nothing is being written then,
    so nothing is corrupted).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saving = False
        self.final = False

    def install(self) -> None:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            logger.warning("received %s: finishing this step, then saving and exiting", name)
        elif self.saving or self.final:
            logger.warning("received %s again: the checkpoint is being written, exiting right after it", name)
        else:
            raise KeyboardInterrupt(f"second signal {name}: stopping without saving")

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def shielded(self, final: bool = False) -> Iterator[None]:
        """Inside the block (a checkpoint write) signals are noted, never raised; after a ``final`` block too."""
        self.saving, self.final = True, self.final or final
        try:
            yield
        finally:
            self.saving = False


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader worker start: Ctrl-C reaches the terminal's whole process group, but only the main process
    decides when to stop (it shuts the workers down on exit); a worker would print a traceback each."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Processes forked inside the block (DataLoader workers) start with SIGINT/SIGTERM blocked until
    ``ignore_stop_signals`` runs; this process gets a signal sent meanwhile when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# -------------------------------------------------------------------------------------------- nets and state


@dataclasses.dataclass
class TrainState:
    """Progress counters, saved in every G_ checkpoint; ``batch_in_epoch`` is the sampler's position."""

    step: int = 0  # iterations completed (the reference's global_step)
    epoch: int = 1  # 1-based, as in the reference
    batch_in_epoch: int = 0  # batches of `epoch` already consumed, so a resume continues mid-epoch
    world_size: int = 1  # number of ranks that consumed those batches
    batch_size: int = 0  # per-rank batch size they were dealt in (0: not recorded)
    nonfinite_streak: int = 0  # consecutive iterations with a skipped optimizer step

    def state_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def load_state_dict(self, data: Mapping[str, Any]) -> None:
        known = {field.name for field in dataclasses.fields(self)}
        for key, value in data.items():
            if key in known:
                setattr(self, key, int(value))


@dataclasses.dataclass
class Part:
    """One trained net with its optimizer and LR schedule, saved as ``<prefix>_<step>.pth``."""

    prefix: str
    net: nn.Module  # DistributedDataParallel-wrapped when distributed
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None

    @property
    def raw(self) -> nn.Module:
        """The bare net (DDP unwrapped): for inference, checkpoints, and calls that must not sync gradients."""
        return self.net.module if isinstance(self.net, DDP) else self.net


@dataclasses.dataclass
class Trainer:
    """The trained nets, the GradScaler, the train state and the frozen WavLM."""

    g: Part
    d: Part
    wd: Part
    dur: Part | None  # the duration discriminator is optional (model.use_duration_discriminator)
    scaler: torch.amp.GradScaler
    state: TrainState
    wl: losses.WavLMLoss | None = None

    def parts(self) -> list[Part]:
        """The trained nets, the generator first and optional ones left out."""
        return [part for part in (self.g, self.d, self.dur, self.wd) if part is not None]

    def set_train_mode(self, mode: bool = True) -> None:
        for part in self.parts():
            part.net.train(mode)


class _WarmupExponential:
    """LR factor after ``e`` completed epochs: a linear ramp over the warm-up epochs times gamma**e.

    A class (not a lambda) so LambdaLR can store it in the checkpoint's scheduler state.
    """

    def __init__(self, gamma: float, warmup_epochs: int) -> None:
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs

    def __call__(self, epochs_done: int) -> float:
        ramp = min(1.0, (epochs_done + 1) / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        return ramp * self.gamma**epochs_done


def make_scheduler(optimizer: torch.optim.Optimizer, train: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """ExponentialLR(lr_decay) stepped per epoch, as the reference; with a warm-up, the same decay times a ramp."""
    warmup_epochs = int(train.get("warmup_epochs", 0))
    if warmup_epochs > 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupExponential(train.lr_decay, warmup_epochs))
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_decay)


def make_optimizer(params: Iterable[nn.Parameter], train: Any) -> torch.optim.AdamW:
    """AdamW with the reference's settings; ``train.fused_adamw`` picks torch's fused kernel (the same update
    within rounding, one kernel for all parameters instead of several per tensor)."""
    fused = bool(getattr(train, "fused_adamw", None))
    optimizer = torch.optim.AdamW(
        params, train.learning_rate, betas=tuple(train.betas), eps=train.eps, fused=True if fused else None
    )
    optimizer.register_load_state_dict_post_hook(functools.partial(_keep_fused_setting, fused=fused))
    return optimizer


def _keep_fused_setting(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """A loaded state's param groups carry the saving run's ``fused`` flag (None in the reference's): this run's
    setting wins, with the step counts where that kernel expects them (the fused one: on the parameter's device
    as float32; the default one: on the CPU)."""
    for group in optimizer.param_groups:
        group["fused"] = True if fused else None
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and "step" in state:
                device = param.device if fused else torch.device("cpu")
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(device)


def freeze_bert_projections(net_g: SynthesizerTrn, train: Any) -> None:
    """``train.freeze_{ZH,JP,EN}_bert``: keep that language's BERT projection fixed."""
    flags = (("freeze_ZH_bert", "bert_proj"), ("freeze_JP_bert", "ja_bert_proj"), ("freeze_EN_bert", "en_bert_proj"))
    for flag, name in flags:
        if train.get(flag, False):
            logger.info("%s: freezing enc_p.%s", flag, name)
            getattr(net_g.enc_p, name).requires_grad_(False)


def build_nets(
    hps: Any,
) -> tuple[SynthesizerTrn, MultiPeriodDiscriminator, WavLMDiscriminator, DurationDiscriminator | None]:
    """The four nets exactly as the reference training script constructs them (same order of random draws)."""
    net_dur_disc = build_duration_discriminator(hps)
    net_g = build_generator(hps, for_training=True)
    freeze_bert_projections(net_g, hps.train)
    net_d = build_period_discriminator(hps)
    net_wd = build_wavlm_discriminator(hps)
    return net_g, net_d, net_wd, net_dur_disc


def build_trainer(hps: Any, rt: Runtime) -> Trainer:
    """Nets on the device (DDP-wrapped when distributed), one AdamW and LR schedule per net, the GradScaler
    (enabled for fp16 only) and the frozen WavLM."""
    net_g, net_d, net_wd, net_dur_disc = build_nets(hps)
    device_ids = [rt.device.index] if rt.device.type == "cuda" else None

    def part(prefix: str, net: nn.Module) -> Part:
        net.to(rt.device)
        optimizer = make_optimizer((p for p in net.parameters() if p.requires_grad), hps.train)
        # DDP broadcasts rank 0's fresh weights; checkpoints load into the wrapped net's parameters later.
        wrapped = DDP(net, device_ids=device_ids, bucket_cap_mb=512) if rt.distributed else net
        return Part(prefix, wrapped, optimizer, make_scheduler(optimizer, hps.train))

    trainer = Trainer(
        g=part("G", net_g),
        d=part("D", net_d),
        wd=part("WD", net_wd),
        dur=part("DUR", net_dur_disc) if net_dur_disc is not None else None,
        scaler=torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16),
        state=TrainState(world_size=rt.world_size, batch_size=int(hps.train.batch_size)),
    )
    trainer.wl = build_wavlm_loss(hps, trainer, rt)
    return trainer


def build_registry(trainer: Trainer, hps: Any, rt: Runtime) -> utils.CheckpointRegistry:
    """Everything that survives a restart, by name: the nets with their optimizers and LR schedules (G_ first:
    the lead file), the train state (step, epoch, sampler position), the GradScaler, the resolved config, and
    every rank's random generators (last, so a load restores them after everything else)."""
    registry = utils.CheckpointRegistry()
    for part in trainer.parts():
        registry.add_net(part.prefix, part.raw, part.optimizer, part.scheduler)
    registry.add_state("train_state", trainer.state)
    registry.add_state("scaler", trainer.scaler)
    registry.add_state("config", utils.SavedValue(hps.to_dict()))
    registry.add_state("rng_states", utils.RankRNG(rt.rank, rt.world_size, rt.device))
    return registry


def save_training_checkpoint(trainer: Trainer, hps: Any, rt: Runtime, keep_ckpts: int) -> None:
    """Write G_/D_/WD_/DUR_<step>.pth on rank 0 (every rank must call it: the RNG states are gathered)."""
    registry = build_registry(trainer, hps, rt)
    state = trainer.state
    registry.save(hps.model_dir, state.step, state.epoch, hps.train.learning_rate, write=rt.is_main, keep=keep_ckpts)


def build_wavlm_loss(hps: Any, trainer: Trainer, rt: Runtime) -> losses.WavLMLoss:
    return losses.WavLMLoss(hps.model.slm.model, trainer.wd.raw, hps.data.sampling_rate, hps.model.slm.sr).to(rt.device)


# -------------------------------------------------------------------------------------------- one iteration


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


def synthesizer_forward(trainer: Trainer, batch: Batch, rt: Runtime) -> SynthesizerOutput:
    """The synthesizer's training forward under autocast, with the MAS noise of the current step."""
    net_g = trainer.g.raw
    if net_g.use_noise_scaled_mas:
        net_g.current_mas_noise_scale = max(
            net_g.mas_noise_scale_initial - net_g.noise_scale_delta * trainer.state.step, 0.0
        )
    with rt.autocast():
        return trainer.g.net(
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
        mpd_real, mpd_fake, _, _ = trainer.d.net(fwd.y, fwd.y_hat.detach())
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


def generator_losses(trainer: Trainer, fwd: GeneratorPass, hps: Any, rt: Runtime) -> dict[str, Any]:
    """The generator's loss terms and their sum ``loss/g/total``, with the discriminators as frozen judges."""
    dur = trainer.dur.raw if trainer.dur is not None else None
    dur_fake = None
    # The discriminators only judge here; their parameters get no gradient (the reference discarded it).
    with frozen((trainer.d.raw, trainer.wd.raw, dur)):
        with rt.autocast():
            _, mpd_fake, fmap_real, fmap_fake = trainer.d.raw(fwd.y, fwd.y_hat)
            if dur is not None:
                _, dur_fake = duration_discriminator_scores(dur, fwd, detach=False)
        with torch.autocast(device_type=fwd.y.device.type, enabled=False):
            wd_fake = trainer.wd.raw(losses.stack_wavlm_states(fwd.slm_fake))
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
            loss_lm=losses.wavlm_feature_loss(fwd.slm_real, fwd.slm_fake),
            loss_lm_gen=losses.wavlm_generator_loss(wd_fake),
            c_mel=hps.train.c_mel,
            c_kl=hps.train.c_kl,
            dur_fake=dur_fake,
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


def backward(loss: Tensor, part: Part, scaler: torch.amp.GradScaler, max_norm: float | None) -> Update:
    """zero_grad, backward, (optional) norm clipping, all without a host sync.

    A non-finite loss poisons this rank's gradient (the loss times NaN instead of times exactly 1): DDP's
    gradient all-reduce then hands a non-finite gradient to every rank, so all ranks skip the same updates
    without a collective of their own.
    """
    part.optimizer.zero_grad(set_to_none=True)
    loss_nonfinite = ~torch.isfinite(loss.detach())
    poison = torch.where(loss_nonfinite, math.nan, 1.0).to(loss.dtype)
    scaler.scale(loss * poison).backward()
    scaler.unscale_(part.optimizer)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(part.net.parameters(), max_norm=max_norm)
    grad_norm = commons.grad_norm(part.net.parameters())  # measures only, as the reference's clip_grad_value_
    return Update(part, loss_nonfinite, grad_norm)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can skip an update on the device (torch's fused kernels take a ``found_inf``)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups
    )


def apply_updates(trainer: Trainer, updates: Sequence[Update]) -> None:
    """Step each optimizer unless its gradient is non-finite (identical on every rank: DDP averaged it).

    fp16: the GradScaler decides. Fused AdamW: the kernel skips on the device (no host sync). Otherwise the
    flags of all ``updates`` are read in one host sync.
    """
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


def discriminator_step(trainer: Trainer, losses_d: dict[str, Any], rt: Runtime) -> tuple[dict[str, Any], list[Update]]:
    """Update the duration, multi-period and WavLM discriminators on their losses; adds the gradient norms."""
    metrics = dict(losses_d)
    amp_clip = AMP_MAX_GRAD_NORM_D if rt.amp_dtype is not None else None
    plan = [
        (trainer.dur, "loss/dur_disc/total", "grad_norm_dur", None),
        (trainer.d, "loss/d/total", "grad_norm_d", amp_clip),
        (trainer.wd, "loss/wd/total", "grad_norm_wd", None),
    ]
    updates = []
    for part, loss_tag, norm_tag, clip in plan:
        if part is not None:
            updates.append(backward(metrics[loss_tag], part, trainer.scaler, clip))
            metrics[norm_tag] = updates[-1].grad_norm
    apply_updates(trainer, updates)
    return metrics, updates


def generator_backward(trainer: Trainer, losses_g: dict[str, Any], rt: Runtime) -> tuple[dict[str, Any], Update]:
    """The synthesizer's backward on ``loss/g/total``; adds its gradient norm. The update itself waits for the
    iteration's agreement (``finish_iteration``), whose host read decides it."""
    metrics = dict(losses_g)
    amp_clip = AMP_MAX_GRAD_NORM_G if rt.amp_dtype is not None else None
    update = backward(metrics["loss/g/total"], trainer.g, trainer.scaler, amp_clip)
    metrics["grad_norm_g"] = update.grad_norm
    return metrics, update


def agree_on_iteration(
    trainer: Trainer, updates: Sequence[Update], rt: Runtime, stop_requested: bool
) -> tuple[list[bool], bool]:
    """The iteration's one collective (and its one host read): per update whether it is skipped - a non-finite
    loss on any rank, or in float32 a non-finite gradient (fp16: the GradScaler's own business) - and whether any
    rank asked to stop."""
    flags = [u.loss_nonfinite if trainer.scaler.is_enabled() else u.loss_nonfinite | u.grad_nonfinite for u in updates]
    flags.append(flags[0].new_full((), stop_requested))  # a fill on the device, not a blocking host copy
    agreed = rt.any_rank_tensor(torch.stack(flags))
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
        # The flag is the gradient's (identical on every rank), or a loss that poisoned it.
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
    g_metrics, g_update = generator_backward(trainer, generator_losses(trainer, fwd, hps, rt), rt)
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


# ------------------------------------------------------------------------------------------------- data


class ResumableBatchSampler(Sampler[list[int]]):
    """The bucket sampler's batches for one epoch, optionally without the first ``skip`` ones (a resume)."""

    def __init__(self, batch_sampler: DistributedBucketSampler) -> None:
        self.batch_sampler = batch_sampler
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch)
        self.skip = skip

    def epoch_batches(self) -> list[list[int]]:
        return list(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def build_train_loader(hps: Any, rt: Runtime, num_workers: int) -> tuple[DataLoader, ResumableBatchSampler]:
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps.data, seed=hps.train.seed)  # unused-BERT noise
    sampler = DistributedBucketSampler(
        dataset,
        hps.train.batch_size,
        list(DEFAULT_BUCKET_BOUNDARIES),
        num_replicas=rt.world_size,
        rank=rt.rank,
        shuffle=True,
    )
    batches = ResumableBatchSampler(sampler)
    extra = {"persistent_workers": True, "prefetch_factor": 4, "worker_init_fn": ignore_stop_signals}
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=TextAudioSpeakerCollate(),
        num_workers=num_workers,
        pin_memory=rt.device.type == "cuda",
        # Its own generator: creating an iterator (each epoch, or on resume mid-epoch) must not draw from the
        # global RNG, or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator(),
        **(extra if num_workers > 0 else {}),
    )
    return loader, batches


def build_eval_loader(hps: Any) -> DataLoader | None:
    path = hps.data.get("validation_files")
    if not path or not os.path.isfile(path):
        logger.warning("no validation file (%s): evaluation is skipped", path)
        return None
    dataset = TextAudioSpeakerLoader(path, hps.data)
    if len(dataset) == 0:
        logger.warning("validation file %s has no usable utterance: evaluation is skipped", path)
        return None
    return DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=0,
        drop_last=False,
        collate_fn=TextAudioSpeakerCollate(),
        generator=torch.Generator(),
    )


def resume_skip(state: TrainState, rt: Runtime, batch_size: int) -> int:
    """Batches of the current epoch to skip on resume: the same share of the epoch's clips when the number of
    ranks or the batch size changed since the checkpoint (they deal other batches)."""
    saved_size = state.batch_size or batch_size
    if state.world_size == rt.world_size and saved_size == batch_size:
        return state.batch_in_epoch
    skip = state.batch_in_epoch * state.world_size * saved_size // (rt.world_size * batch_size)
    logger.warning(
        "resumed with %d ranks x batch %d instead of %d x %d: skipping %d batches of epoch %d",
        rt.world_size,
        batch_size,
        state.world_size,
        saved_size,
        skip,
        state.epoch,
    )
    return skip


# ----------------------------------------------------------------------------------------------- resuming

# Settings whose change on resume is reported with what now applies (train) or checked against the weights.
DRIFT_TRAIN_KEYS = ("learning_rate", "lr_decay", "warmup_epochs", "batch_size", "segment_size")
SCHEDULE_KEYS = ("learning_rate", "lr_decay", "warmup_epochs")
DRIFT_DATA_KEYS = ("n_speakers", "filter_length")  # the nets' shapes depend on these, as on model.*
_DEFAULTS = {"train.warmup_epochs": 0}


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, inner in value.items() for k, v in _flatten(f"{prefix}{key}.", inner).items()}
    return {prefix[:-1]: value}


def _raw_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    old, new = (_flatten("", config) for config in (saved, current))
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = (_DEFAULTS.get(name) if flat.get(name) is None else flat[name] for flat in (old, new))
        if before != after:
            changes.append((name, before, after))
    return changes


def _watched(name: str) -> bool:
    section, _, key = name.partition(".")
    if section == "train":
        return key in DRIFT_TRAIN_KEYS
    if section == "data":
        return key in DRIFT_DATA_KEYS
    # model.slm.model is a path: another folder with the same WavLM is no change worth reporting.
    return section == "model" and name != "model.slm.model"


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, saved value, current value) for the watched train settings, data shape settings and every
    model setting that differ between a checkpoint's config and the current one (defaults compare as defaults
    through config.changed_settings when both are complete model configs)."""
    try:
        changes = changed_settings(saved, as_model_config(current))
    except ValueError:  # not a complete model config (an old or partial one): compare the values as stored
        changes = _raw_changes(saved, current)
    return [change for change in changes if _watched(change[0])]


def fast_forward_schedule(part: Part, epochs_done: int, learning_rate: float) -> None:
    """Put a part's LR schedule where the current settings have it after ``epochs_done`` epochs (checkpoints
    without a schedule, or whose schedule settings changed)."""
    scheduler = part.scheduler
    for group in part.optimizer.param_groups:
        group["initial_lr"] = learning_rate
    scheduler.base_lrs = [group["initial_lr"] for group in part.optimizer.param_groups]
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        factors = [fn(epochs_done) for fn in scheduler.lr_lambdas]
    else:
        factors = [scheduler.gamma**epochs_done] * len(scheduler.base_lrs)
    for group, base, factor in zip(part.optimizer.param_groups, scheduler.base_lrs, factors):
        group["lr"] = base * factor
    scheduler.last_epoch = epochs_done
    scheduler._last_lr = [group["lr"] for group in part.optimizer.param_groups]  # what get_last_lr() reports


def _report_changes(changes: list[tuple[str, Any, Any]], source: str, hps: Any, epoch: int) -> None:
    for name, before, after in changes:
        if name.startswith("train.") and name[len("train.") :] in SCHEDULE_KEYS:
            consequence = f"the LR schedule follows the new settings from epoch {epoch} on"
        elif name == "train.batch_size":
            consequence = f"batches of {after} from now on; epoch {epoch} continues at the same share of its clips"
        elif name == "train.segment_size":
            consequence = f"training segments of {after} samples from now on"
        else:
            consequence = f"{after!r} applies from now on"
        logger.warning("%s changed since %s: %r -> %r; %s", name, source, before, after, consequence)


def resume(
    trainer: Trainer, g_path: str, hps: Any, rt: Runtime, previous_config: Mapping[str, Any] | None = None
) -> None:
    """Continue from ``g_path`` and its siblings through the checkpoint registry.

    Files written here restore exactly; reference files (the 4 classic keys only) give the step from the file
    name and the epoch from "iteration". Settings changed since the checkpoint (its stored config, else
    ``previous_config``) are reported; a changed LR setting re-derives the schedule; a changed model shape is
    an error naming the setting.
    """
    g_ckpt = utils.read_checkpoint(g_path)
    exact = "train_state" in g_ckpt
    saved_config = g_ckpt.get("config") or previous_config
    changes = config_changes(saved_config, hps.to_dict()) if saved_config else []
    schedule_changed = any(name[len("train.") :] in SCHEDULE_KEYS for name, _, _ in changes)
    skip_optimizer = not exact and hps.train.skip_optimizer
    try:
        report = build_registry(trainer, hps, rt).load(
            g_ckpt, g_path, optimizers=not skip_optimizer, schedulers=exact and not schedule_changed
        )
    except RuntimeError as err:
        shape = [f"{name} ({before!r} there, {after!r} now)" for name, before, after in changes if "train." not in name]
        if not shape:
            raise
        raise ValueError(
            f"{g_path} was trained with other model settings: {', '.join(shape)}; its weights do not fit the "
            f"nets these settings build. Restore those settings, or train into a new model folder (fine-tune "
            f"from this one with train_ms.base)"
        ) from err
    state = trainer.state
    if not exact:
        # A reference checkpoint: the step comes from the file name, "iteration" is the epoch it was saved in.
        state.step = utils.checkpoint_step(g_path) or 0
        state.epoch = max(int(g_ckpt.get("iteration", 1)), 1)
    _report_changes(changes, g_path, hps, state.epoch)
    for part in trainer.parts():
        if part.prefix in report.missing:
            logger.warning(
                "no %s_*.pth in %s: the %s net starts from fresh weights", part.prefix, hps.model_dir, part.prefix
            )
        if part.prefix in report.missing or part.prefix in report.unscheduled:
            fast_forward_schedule(part, state.epoch - 1, hps.train.learning_rate)
    if schedule_changed:
        logger.warning("learning rate now %.6g (epoch %d)", trainer.g.optimizer.param_groups[0]["lr"], state.epoch)
    logger.info(
        "resuming from %s%s: step %d, epoch %d, batch %d of the epoch%s",
        "reference checkpoint " if not exact else "",
        g_path,
        state.step,
        state.epoch,
        state.batch_in_epoch,
        "" if exact else f" (optimizer state {'not loaded: train.skip_optimizer' if skip_optimizer else 'loaded'})",
    )


def restore_or_initialise(
    trainer: Trainer, hps: Any, rt: Runtime, base_dir: str | None, previous_config: Mapping[str, Any] | None = None
) -> bool:
    """Resume from the model folder when it has a G_ checkpoint (True); else start from the base model, if any."""
    g_path = utils.latest_checkpoint_path(hps.model_dir, "G_*.pth")
    if g_path is not None:
        resume(trainer, g_path, hps, rt, previous_config)
        return True
    if base_dir:
        if os.path.realpath(base_dir) == os.path.realpath(hps.model_dir):
            raise ValueError(f"train_ms.base.model_dir ({base_dir}) must differ from the model folder")
        # Fine-tuning: weights only (the base folder is never written to); step 0, fresh optimizers.
        for prefix in build_registry(trainer, hps, rt).load_weights(base_dir):
            logger.warning(
                "base model %s has no %s_*.pth; the %s net starts from fresh weights", base_dir, prefix, prefix
            )
    return False


# ---------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    trainer: Trainer, loader: DataLoader, hps: Any, rt: Runtime
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Synthesize every validation clip with and without the stochastic duration predictor.

    Returns the mel spectrograms ([n_mels, t]) and the audio clips ([1, t]) to log, by TensorBoard tag.
    """
    net_g = trainer.g.raw
    data = hps.data
    net_g.eval()
    mels: dict[str, Tensor] = {}
    audios: dict[str, Tensor] = {}
    try:
        for index, batch in enumerate(loader):
            batch = batch.to(rt.device)
            mel = spec_to_mel_torch(
                batch.spec, data.filter_length, data.n_mel_channels, data.sampling_rate, data.mel_fmin, data.mel_fmax
            )
            mels[f"gt/mel_{index}"] = mel[0].cpu()
            audios[f"gt/audio_{index}"] = batch.wav[0, :, : batch.wav_lengths[0]].float().cpu()
            for use_sdp in (True, False):
                out = net_g.infer(
                    batch.text,
                    batch.text_lengths,
                    batch.sid,
                    batch.tone,
                    batch.language,
                    batch.bert,
                    batch.ja_bert,
                    batch.en_bert,
                    y=batch.spec,
                    max_len=1000,
                    sdp_ratio=1.0 if use_sdp else 0.0,
                )
                y_hat_length = int(out.y_mask.sum([1, 2]).long()[0]) * data.hop_length
                y_hat_mel = waveform_mel(out.o.squeeze(1).float(), data)
                mels[f"gen/mel_{index}"] = y_hat_mel[0].cpu()
                audios[f"gen/audio_{index}_{use_sdp}"] = out.o[0, :, :y_hat_length].float().cpu()
    finally:
        trainer.g.net.train()
    return mels, audios
