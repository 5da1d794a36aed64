"""Train the multi-speaker Bert-VITS2 model, in one process or on several with ``torchrun`` (DDP).

    python train_ms.py -c Data/mydata/config.json -m Data/mydata
    torchrun --nproc_per_node=2 train_ms.py -c Data/mydata/config.json -m Data/mydata
    python train_ms.py --demo

As in the reference, ``-m`` names the dataset folder and checkpoints, ``train.log`` and TensorBoard events go to
``<-m>/<train_ms.model>`` (``models`` by default, see ``config.yml``). Without ``-m`` the folders of ``config.yml``
are used.

One iteration does what the reference does, in the same order and with the same numbers: the generator forward,
the duration-, multi-period- and WavLM-discriminator steps, then the generator step. It differs on purpose in:

* WavLM runs once on the real segment (without gradient) and once on the generated one (with gradient) instead
  of twice and three times; the frozen WavLM gives the same features each time, so the losses are unchanged.
* During the generator step the discriminators are used as frozen functions: no weight gradients are computed
  for them and they are not all-reduced across ranks (the reference computed and synchronised those gradients,
  then threw them away at the next ``zero_grad``).
* ``bf16_run`` uses bf16 autocast without a GradScaler (a scaler is for fp16); ``fp16_run`` uses fp16 autocast
  with a GradScaler; losses and spectrograms are computed in float32. Mixed precision is used on CUDA only.
* ``warmup_epochs`` > 0 ramps the learning rate linearly over that many epochs (the reference ignores it).
* A non-finite loss or gradient skips that optimizer step (on every rank) with a warning, and training stops
  with an error after several such iterations in a row; nothing non-finite reaches a checkpoint.
* Resuming restores everything (weights, optimizers, LR schedules, scaler, step, epoch, position in the epoch,
  random number generators), so an interrupted run continues exactly where it stopped. Reference checkpoints
  (which store only the epoch) resume too.
* Checkpoints are written at every ``eval_interval`` steps (not after the very first step) and on exit; SIGTERM
  or SIGINT finishes the current step, saves and exits with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import math
import os
import random
import signal
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Sampler

import check_dataset
import commons
import utils
from config import as_model_config, check_trainable, load_model_config, resolve_device
from data_utils import (
    DEFAULT_BUCKET_BOUNDARIES,
    Batch,
    DistributedBucketSampler,
    TextAudioSpeakerCollate,
    TextAudioSpeakerLoader,
)
from losses import WavLMLoss, discriminator_loss, feature_loss, generator_loss, kl_loss
from mel_processing import mel_spectrogram_torch, spec_to_mel_torch
from models import (
    DurationDiscriminator,
    MultiPeriodDiscriminator,
    SynthesizerTrn,
    WavLMDiscriminator,
    build_generator,
)

logger = logging.getLogger("train_ms")

# Noise-scaled monotonic alignment search (VITS2): the noise starts at this scale and shrinks by DELTA per step.
# Gradient-norm clipping the reference applies in mixed precision only (discriminator, generator).
AMP_MAX_GRAD_NORM_D = 200.0
AMP_MAX_GRAD_NORM_G = 500.0
DEFAULT_MAX_NONFINITE_STEPS = 5
# Generous: rank 0 evaluates and writes checkpoints while the other ranks wait in the next collective.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)
DEMO_DATASET_DIR = Path("Data/demo")
DEMO_CONFIG = Path("configs/demo.json")


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

    def _flag_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_ranks(self, flag: bool) -> bool:
        """True when ``flag`` is true on every rank (a collective: every rank must call it)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self._flag_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0.5)

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on at least one rank (a collective)."""
        return not self.all_ranks(not flag)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def apply_env_defaults(env_defaults: dict[str, str]) -> dict[str, str]:
    """Fill in the torch.distributed variables torchrun would set; variables already set win."""
    added = {name: value for name, value in env_defaults.items() if name not in os.environ}
    os.environ.update(added)
    return added


def resolve_amp_dtype(train: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype from ``train.bf16_run`` / ``train.fp16_run``; None (float32) on the CPU."""
    bf16 = bool(train.get("bf16_run", False))
    fp16 = bool(train.get("fp16_run", False))
    if bf16 and fp16:
        raise ValueError("train.bf16_run and train.fp16_run are both true; set at most one of them")
    if not (bf16 or fp16):
        return None
    if device.type != "cuda":
        logger.warning(
            "mixed precision (%s) is used on CUDA only; training in float32 on %s",
            "bf16_run" if bf16 else "fp16_run",
            device,
        )
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


# ---------------------------------------------------------------------------------------------- train state


@dataclasses.dataclass
class TrainState:
    """Progress counters saved in every G_ checkpoint."""

    step: int = 0  # iterations completed (the reference's global_step)
    epoch: int = 1  # 1-based, as in the reference
    batch_in_epoch: int = 0  # batches of `epoch` already consumed, so a resume continues mid-epoch
    world_size: int = 1  # number of ranks that consumed those batches
    nonfinite_streak: int = 0  # consecutive iterations with a skipped optimizer step

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: int(value) for key, value in data.items() if key in known})


@dataclasses.dataclass
class Part:
    """One trained net with its optimizer and LR schedule, saved as ``<prefix>_<step>.pth``."""

    prefix: str
    net: nn.Module  # DistributedDataParallel-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @property
    def raw(self) -> nn.Module:
        """The bare net (DDP unwrapped): for inference, checkpoints, and calls that must not sync gradients."""
        return self.net.module if isinstance(self.net, DDP) else self.net


@dataclasses.dataclass
class Trainer:
    """Everything that must survive a restart, registered in one place, plus the frozen WavLM loss."""

    g: Part
    d: Part
    wd: Part
    dur: Part | None  # the duration discriminator is optional (model.use_duration_discriminator)
    scaler: torch.amp.GradScaler
    state: TrainState
    wl: WavLMLoss | None = None

    def parts(self) -> list[Part]:
        """The trained nets, the generator first and optional ones left out."""
        return [part for part in (self.g, self.d, self.dur, self.wd) if part is not None]

    def set_train_mode(self, mode: bool = True) -> None:
        for part in self.parts():
            part.net.train(mode)


# ------------------------------------------------------------------------------------------------ config


def validate_hparams(hps: Any) -> None:
    """Raise ValueError naming the setting to change when the model config cannot train (config.py's checks)."""
    check_trainable(as_model_config(hps))


def resolve_model_dir(dataset_dir: str | None, yml: Any) -> str:
    """``<-m>/<train_ms.model>`` as the reference does; without -m the folder of config.yml."""
    configured = yml.train_ms.model
    if dataset_dir is None or os.path.isabs(configured):
        return configured
    relative = os.path.relpath(configured, yml.dataset_path) if yml.dataset_path else configured
    return os.path.join(dataset_dir, relative)


def save_resolved_config(hps: Any, model_dir: str) -> None:
    """The config this run trains with, beside its checkpoints (so a checkpoint folder is self-describing)."""
    path = os.path.join(model_dir, "config.json")
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(hps.to_dict(), handle, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- building


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
    return torch.optim.AdamW(params, train.learning_rate, betas=tuple(train.betas), eps=train.eps)


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
    model, data = hps.model, hps.data
    net_dur_disc = None
    if model.get("use_duration_discriminator", False):
        gin = model.gin_channels if data.n_speakers != 0 else 0
        net_dur_disc = DurationDiscriminator(model.hidden_channels, model.hidden_channels, 3, 0.1, gin_channels=gin)
    net_g = build_generator(hps, for_training=True)
    freeze_bert_projections(net_g, hps.train)
    net_d = MultiPeriodDiscriminator(model.use_spectral_norm)
    net_wd = WavLMDiscriminator(model.slm.hidden, model.slm.nlayers, model.slm.initial_channel)
    return net_g, net_d, net_wd, net_dur_disc


def build_trainer(hps: Any, rt: Runtime) -> Trainer:
    """Nets on the device, one AdamW and LR schedule per net, and the (disabled unless fp16) GradScaler."""
    net_g, net_d, net_wd, net_dur_disc = build_nets(hps)

    def part(prefix: str, net: nn.Module) -> Part:
        net.to(rt.device)
        optimizer = make_optimizer((p for p in net.parameters() if p.requires_grad), hps.train)
        return Part(prefix, net, optimizer, make_scheduler(optimizer, hps.train))

    return Trainer(
        g=part("G", net_g),
        d=part("D", net_d),
        wd=part("WD", net_wd),
        dur=part("DUR", net_dur_disc) if net_dur_disc is not None else None,
        scaler=torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16),
        state=TrainState(world_size=rt.world_size),
    )


def wrap_ddp(trainer: Trainer, rt: Runtime) -> None:
    """Wrap every net in DDP (after loading weights, so every rank starts from the same file)."""
    if not rt.distributed:
        return
    device_ids = [rt.device.index] if rt.device.type == "cuda" else None
    for part in trainer.parts():
        part.net = DDP(part.net, device_ids=device_ids, bucket_cap_mb=512)


def build_wavlm_loss(hps: Any, trainer: Trainer, rt: Runtime) -> WavLMLoss:
    return WavLMLoss(hps.model.slm.model, trainer.wd.net, hps.data.sampling_rate, hps.model.slm.sr).to(rt.device)


# ------------------------------------------------------------------------------------------------ WavLM


def slm_hidden_states(wl: WavLMLoss, wav: Tensor) -> tuple[Tensor, ...]:
    """WavLM layer outputs L x [b, t_slm, c] of waves [b, 1, t], computed in float32 as WavLMLoss does."""
    with torch.autocast(device_type=wav.device.type, enabled=False):
        wav_16 = wl.resample(wav.squeeze(1).float())  # [b, t_16k]
        return tuple(wl.wavlm(input_values=wav_16, output_hidden_states=True).hidden_states)


def slm_embeddings(hidden_states: Sequence[Tensor]) -> Tensor:
    """The WavLM discriminator's input [b, L*c, t_slm] (layer-major channels)."""
    return torch.stack(tuple(hidden_states), dim=1).transpose(-1, -2).flatten(start_dim=1, end_dim=2)


def slm_feature_loss(real_states: Sequence[Tensor], fake_states: Sequence[Tensor]) -> Tensor:
    """Sum over WavLM layers of mean |h(real) - h(generated)| (the reference's loss_lm)."""
    loss: Tensor | float = 0.0
    for real, fake in zip(real_states, fake_states):
        loss = loss + torch.mean(torch.abs(real - fake))
    return loss  # type: ignore[return-value]


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


def _f32(x: Tensor) -> Tensor:
    return x.float()  # no copy when already float32


def prepare_pass(out: Any, batch: Batch, hps: Any, wl: WavLMLoss | None) -> GeneratorPass:
    """Mels, the real segment and (when ``wl`` is given) the WavLM states, from the synthesizer's output."""
    (
        y_hat,
        l_length,
        attn,
        ids_slice,
        x_mask,
        z_mask,
        (_z, z_p, m_p, logs_p, _m_q, logs_q),
        (hidden_x, logw, logw_, logw_sdp),
        g,
    ) = out
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
        y_mel = commons.slice_segments(mel, ids_slice, segment_frames)
        y_hat_mel = mel_spectrogram_torch(
            _f32(y_hat).squeeze(1),
            data.filter_length,
            data.n_mel_channels,
            data.sampling_rate,
            data.hop_length,
            data.win_length,
            data.mel_fmin,
            data.mel_fmax,
        )
        y = commons.slice_segments(batch.wav, ids_slice * data.hop_length, hps.train.segment_size)
    fwd = GeneratorPass(
        y=y,
        y_hat=_f32(y_hat),
        mel=mel,
        y_mel=y_mel,
        y_hat_mel=y_hat_mel,
        l_length=_f32(l_length),
        attn=attn,
        x_mask=_f32(x_mask),
        z_mask=_f32(z_mask),
        z_p=_f32(z_p),
        m_p=_f32(m_p),
        logs_p=_f32(logs_p),
        logs_q=_f32(logs_q),
        hidden_x=hidden_x,
        logw=logw,
        logw_=logw_,
        logw_sdp=logw_sdp,
        g=g,
    )
    if wl is not None:
        # The frozen, deterministic WavLM gives the same features in both steps: compute them once.
        with torch.no_grad():
            fwd.slm_real = slm_hidden_states(wl, y)
        fwd.slm_fake = slm_hidden_states(wl, fwd.y_hat)
    return fwd


def generator_forward(
    trainer: Trainer, batch: Batch, hps: Any, rt: Runtime, reference_like: bool = False
) -> GeneratorPass:
    """The synthesizer's training forward (under autocast) and everything derived from it."""
    net_g = trainer.g.raw
    if net_g.use_noise_scaled_mas:
        net_g.current_mas_noise_scale = max(
            net_g.mas_noise_scale_initial - net_g.noise_scale_delta * trainer.state.step, 0.0
        )
    with rt.autocast():
        out = trainer.g.net(
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
    return prepare_pass(out, batch, hps, None if reference_like else trainer.wl)


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


def _indexed(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    return {f"{prefix}/{i}": value for i, value in enumerate(values)}


def discriminator_losses(
    trainer: Trainer, fwd: GeneratorPass, rt: Runtime, reference_like: bool = False
) -> dict[str, Any]:
    """The three discriminators' losses on the real and the (detached) generated audio, with the reference's
    TensorBoard names."""
    with rt.autocast():
        y_d_real, y_d_fake, _, _ = trainer.d.net(fwd.y, fwd.y_hat.detach())
    loss_disc, losses_disc_r, losses_disc_g = discriminator_loss(y_d_real, y_d_fake)
    losses: dict[str, Any] = {
        "loss/d/total": loss_disc,
        **_indexed("loss/d_r", losses_disc_r),
        **_indexed("loss/d_g", losses_disc_g),
    }
    if trainer.dur is not None:
        with rt.autocast():
            dur_real, dur_fake = duration_discriminator_scores(trainer.dur.net, fwd, detach=True)
        loss_dur_disc, losses_dur_r, losses_dur_g = discriminator_loss(dur_real, dur_fake)
        losses.update(
            {
                "loss/dur_disc/total": loss_dur_disc,
                **_indexed("loss/dur_disc_r", losses_dur_r),
                **_indexed("loss/dur_disc_g", losses_dur_g),
            }
        )
    if reference_like:
        losses["loss/wd/total"] = trainer.wl.discriminator(fwd.y.detach(), fwd.y_hat.detach()).mean()
    else:
        with torch.autocast(device_type=fwd.y.device.type, enabled=False):
            d_real = trainer.wd.net(slm_embeddings(fwd.slm_real)).float()
            d_fake = trainer.wd.net(slm_embeddings(fwd.slm_fake).detach()).float()
        losses["loss/wd/total"] = torch.mean((1 - d_real) ** 2) + torch.mean(d_fake**2)
    return losses


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


def generator_losses(
    trainer: Trainer, fwd: GeneratorPass, hps: Any, rt: Runtime, reference_like: bool = False
) -> dict[str, Any]:
    """The generator's loss terms, their sum ``loss/g/total`` and the per-discriminator terms."""
    train = hps.train
    # The discriminators only judge here; their parameters get no gradient (and the reference discarded it).
    freeze = () if reference_like else (trainer.d.raw, trainer.wd.raw, trainer.dur.raw if trainer.dur else None)
    d_net = trainer.d.net if reference_like else trainer.d.raw
    with frozen(freeze):
        with rt.autocast():
            _, y_d_fake, fmap_real, fmap_fake = d_net(fwd.y, fwd.y_hat)
            if trainer.dur is not None:
                dur_net = trainer.dur.net if reference_like else trainer.dur.raw
                _, dur_fake = duration_discriminator_scores(dur_net, fwd, detach=False)
        loss_dur = torch.sum(fwd.l_length.float())
        loss_mel = F.l1_loss(fwd.y_mel, fwd.y_hat_mel) * train.c_mel
        loss_kl = kl_loss(fwd.z_p, fwd.logs_q, fwd.m_p, fwd.logs_p, fwd.z_mask) * train.c_kl
        loss_fm = feature_loss(fmap_real, fmap_fake)
        loss_gen, losses_gen = generator_loss(y_d_fake)
        if reference_like:
            loss_lm = trainer.wl(fwd.y.detach(), fwd.y_hat).mean()
            loss_lm_gen = trainer.wl.generator(fwd.y_hat)
        else:
            loss_lm = slm_feature_loss(fwd.slm_real, fwd.slm_fake)
            with torch.autocast(device_type=fwd.y.device.type, enabled=False):
                loss_lm_gen = torch.mean((1 - trainer.wd.raw(slm_embeddings(fwd.slm_fake)).float()) ** 2)
        loss_gen_all = loss_gen + loss_fm + loss_mel + loss_dur + loss_kl + loss_lm + loss_lm_gen
        losses: dict[str, Any] = {
            "loss/g/fm": loss_fm,
            "loss/g/mel": loss_mel,
            "loss/g/dur": loss_dur,
            "loss/g/kl": loss_kl,
            "loss/g/lm": loss_lm,
            "loss/g/lm_gen": loss_lm_gen,
            **_indexed("loss/g", losses_gen),
        }
        if trainer.dur is not None:
            loss_dur_gen, losses_dur_gen = generator_loss(dur_fake)
            loss_gen_all = loss_gen_all + loss_dur_gen
            losses.update(
                {"loss/g/dur_gen": loss_dur_gen, **{f"loss/g/dur_gen_{i}": v for i, v in enumerate(losses_dur_gen)}}
            )
    losses["loss/g/total"] = loss_gen_all
    return losses


def apply_gradients(
    loss: Tensor, part: Part, trainer: Trainer, rt: Runtime, max_norm: float | None = None
) -> tuple[float, bool]:
    """zero_grad, backward, (optional) norm clipping, then the optimizer step unless the loss or the gradient
    is not finite on some rank. Returns (gradient norm, whether the step was applied)."""
    scaler = trainer.scaler
    part.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(part.optimizer)
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(part.net.parameters(), max_norm=max_norm)
    grad_norm = commons.clip_grad_value_(part.net.parameters(), None)  # measures only, as the reference
    # With fp16 an overflowing gradient is the scaler's business (it skips the step and lowers the scale).
    finite = math.isfinite(float(loss.detach())) and (scaler.is_enabled() or math.isfinite(grad_norm))
    # Decided together: DDP ranks must keep identical weights.
    if rt.all_ranks(finite):
        scaler.step(part.optimizer)
        return grad_norm, True
    logger.warning(
        "step %d: non-finite %s loss or gradient (loss %s, grad norm %s); skipping this update",
        trainer.state.step + 1,
        part.prefix,
        float(loss.detach()),
        grad_norm,
    )
    return grad_norm, False


def discriminator_step(
    trainer: Trainer, fwd: GeneratorPass, rt: Runtime, reference_like: bool = False
) -> dict[str, Any]:
    """Update the duration, multi-period and WavLM discriminators; return their losses and gradient norms."""
    metrics = discriminator_losses(trainer, fwd, rt, reference_like)
    amp_clip = AMP_MAX_GRAD_NORM_D if rt.amp_dtype is not None else None
    skipped = []
    if trainer.dur is not None:
        metrics["grad_norm_dur"], ok = apply_gradients(metrics["loss/dur_disc/total"], trainer.dur, trainer, rt)
        skipped += [] if ok else ["DUR"]
    metrics["grad_norm_d"], ok = apply_gradients(metrics["loss/d/total"], trainer.d, trainer, rt, amp_clip)
    skipped += [] if ok else ["D"]
    metrics["grad_norm_wd"], ok = apply_gradients(metrics["loss/wd/total"], trainer.wd, trainer, rt)
    skipped += [] if ok else ["WD"]
    metrics["skipped"] = skipped
    return metrics


def generator_step(
    trainer: Trainer, fwd: GeneratorPass, hps: Any, rt: Runtime, reference_like: bool = False
) -> dict[str, Any]:
    """Update the synthesizer on its summed loss; return the loss terms and the gradient norm."""
    metrics = generator_losses(trainer, fwd, hps, rt, reference_like)
    amp_clip = AMP_MAX_GRAD_NORM_G if rt.amp_dtype is not None else None
    metrics["grad_norm_g"], ok = apply_gradients(metrics["loss/g/total"], trainer.g, trainer, rt, amp_clip)
    trainer.scaler.update()
    metrics["skipped"] = [] if ok else ["G"]
    return metrics


def train_step(
    trainer: Trainer, batch: Batch, hps: Any, rt: Runtime, reference_like: bool = False
) -> tuple[dict[str, Any], GeneratorPass]:
    """One reference iteration: generator forward, discriminator steps, generator step."""
    fwd = generator_forward(trainer, batch, hps, rt, reference_like)
    d_metrics = discriminator_step(trainer, fwd, rt, reference_like)
    g_metrics = generator_step(trainer, fwd, hps, rt, reference_like)
    merged = {**d_metrics, **g_metrics}
    metrics = {tag: value.detach() if isinstance(value, Tensor) else value for tag, value in merged.items()}
    metrics["skipped"] = d_metrics["skipped"] + g_metrics["skipped"]
    metrics["learning_rate"] = trainer.g.optimizer.param_groups[0]["lr"]
    return metrics, fwd


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
    dataset = TextAudioSpeakerLoader(hps.data.training_files, hps.data)
    sampler = DistributedBucketSampler(
        dataset,
        hps.train.batch_size,
        list(DEFAULT_BUCKET_BOUNDARIES),
        num_replicas=rt.world_size,
        rank=rt.rank,
        shuffle=True,
    )
    batches = ResumableBatchSampler(sampler)
    extra = {"persistent_workers": True, "prefetch_factor": 4} if num_workers > 0 else {}
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=TextAudioSpeakerCollate(),
        num_workers=num_workers,
        pin_memory=rt.device.type == "cuda",
        # Its own generator: creating an iterator (each epoch, or on resume mid-epoch) must not draw from the
        # global RNG, or a resumed run would diverge from an uninterrupted one.
        generator=torch.Generator(),
        **extra,
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


# -------------------------------------------------------------------------------------- RNG and checkpoints


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators as plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def gather_rng_states(rt: Runtime) -> list[dict[str, Any]]:
    """Every rank's generator states, in rank order (a collective)."""
    local = capture_rng_state(rt.device)
    if not rt.distributed:
        return [local]
    gathered: list[Any] = [None] * rt.world_size
    dist.all_gather_object(gathered, local)
    return gathered


def checkpoint_path(model_dir: str, prefix: str, step: int) -> str:
    return os.path.join(model_dir, f"{prefix}_{step}.pth")


def save_training_checkpoint(trainer: Trainer, hps: Any, rt: Runtime, keep_ckpts: int) -> None:
    """Write G_/D_/WD_/DUR_<step>.pth (rank 0; every rank must call it for the RNG gather).

    G_ is written last: a complete G_<step>.pth means its siblings are complete too.
    """
    rng_states = gather_rng_states(rt)
    if not rt.is_main:
        return
    state = trainer.state
    for part in reversed(trainer.parts()):
        extra: dict[str, Any] = {"scheduler": part.scheduler}
        if part is trainer.g:
            extra.update(
                train_state=state.to_dict(), scaler=trainer.scaler, rng_states=rng_states, config=hps.to_dict()
            )
        # The reference stores the constant configured learning rate and, under "iteration", the epoch.
        utils.save_checkpoint(
            part.net,
            part.optimizer,
            hps.train.learning_rate,
            state.epoch,
            checkpoint_path(hps.model_dir, part.prefix, state.step),
            extra=extra,
        )
    if keep_ckpts > 0:
        utils.clean_checkpoints(path_to_models=hps.model_dir, n_ckpts_to_keep=keep_ckpts)


def _read_sibling(model_dir: str, prefix: str, step: int) -> tuple[dict[str, Any] | None, str | None]:
    """The ``prefix`` checkpoint of the same step, else the newest complete one (with a warning), else None."""
    same_step = checkpoint_path(model_dir, prefix, step)
    if os.path.isfile(same_step) and utils.is_complete_checkpoint(same_step):
        return utils.read_checkpoint(same_step), same_step
    latest = utils.latest_checkpoint_path(model_dir, f"{prefix}_*.pth")
    if latest is None:
        return None, None
    logger.warning("%s is missing or incomplete; using %s instead", same_step, latest)
    return utils.read_checkpoint(latest), latest


def fast_forward_schedule(part: Part, epochs_done: int) -> None:
    """Put a part's LR schedule where it is after ``epochs_done`` epochs (for checkpoints without scheduler)."""
    scheduler = part.scheduler
    for group in part.optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    scheduler.base_lrs = [group["initial_lr"] for group in part.optimizer.param_groups]
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        factors = [fn(epochs_done) for fn in scheduler.lr_lambdas]
    else:
        factors = [scheduler.gamma**epochs_done] * len(scheduler.base_lrs)
    for group, base, factor in zip(part.optimizer.param_groups, scheduler.base_lrs, factors):
        group["lr"] = base * factor
    scheduler.last_epoch = epochs_done
    scheduler._last_lr = [group["lr"] for group in part.optimizer.param_groups]  # what get_last_lr() reports


def resume(trainer: Trainer, g_path: str, hps: Any, rt: Runtime) -> list[dict[str, Any]] | None:
    """Continue from ``g_path`` and its siblings. Returns the saved per-rank RNG states (None for reference files)."""
    step = utils.checkpoint_step(g_path) or 0
    g_ckpt = utils.read_checkpoint(g_path)
    exact = "train_state" in g_ckpt  # written by this script; reference files hold the 4 classic keys only
    if exact:
        trainer.state = TrainState.from_dict(g_ckpt["train_state"])
    else:
        # A reference checkpoint: the step comes from the file name, "iteration" is the epoch it was saved in.
        trainer.state = TrainState(step=step, epoch=max(int(g_ckpt.get("iteration", 1)), 1), world_size=rt.world_size)
    skip_optimizer = not exact and bool(hps.train.get("skip_optimizer", False))
    for part in trainer.parts():
        ckpt, source = (g_ckpt, g_path) if part is trainer.g else _read_sibling(hps.model_dir, part.prefix, step)
        if ckpt is None:
            logger.warning(
                "no %s_*.pth in %s: the %s net starts from fresh weights", part.prefix, hps.model_dir, part.prefix
            )
            fast_forward_schedule(part, trainer.state.epoch - 1)
            continue
        utils.load_state_dict_checked(part.raw, ckpt["model"], strict=True, source=source)
        if exact:
            part.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler") is not None:
                part.scheduler.load_state_dict(ckpt["scheduler"])
            else:
                fast_forward_schedule(part, trainer.state.epoch - 1)
        else:
            if not skip_optimizer and ckpt.get("optimizer") is not None:
                part.optimizer.load_state_dict(ckpt["optimizer"])
            fast_forward_schedule(part, trainer.state.epoch - 1)
    state = trainer.state
    if exact:
        if g_ckpt.get("scaler"):
            trainer.scaler.load_state_dict(g_ckpt["scaler"])
        logger.info(
            "resuming from %s: step %d, epoch %d, batch %d of the epoch",
            g_path,
            state.step,
            state.epoch,
            state.batch_in_epoch,
        )
        return g_ckpt.get("rng_states")
    logger.info(
        "resuming from reference checkpoint %s: step %d, epoch %d (optimizer state %s)",
        g_path,
        state.step,
        state.epoch,
        "not loaded: train.skip_optimizer" if skip_optimizer else "loaded",
    )
    return None


def load_base_model(trainer: Trainer, base_dir: str) -> None:
    """Fine-tuning: weights only from the base model folder (never written to); step 0, fresh optimizers.

    Shapes that differ (e.g. another number of speakers) keep their fresh values, with a warning.
    """
    for part in trainer.parts():
        path = utils.latest_checkpoint_path(base_dir, f"{part.prefix}_*.pth")
        if path is None:
            logger.warning(
                "base model %s has no %s_*.pth; the %s net starts from fresh weights",
                base_dir,
                part.prefix,
                part.prefix,
            )
            continue
        utils.load_state_dict_checked(part.raw, utils.read_checkpoint(path)["model"], strict=False, source=path)
        logger.info("fine-tuning from base weights %s", path)


def restore_or_initialise(trainer: Trainer, hps: Any, rt: Runtime, base_dir: str | None) -> list[dict[str, Any]] | None:
    """Resume from the model folder when it has a G_ checkpoint; else start from the base model, if any."""
    g_path = utils.latest_checkpoint_path(hps.model_dir, "G_*.pth")
    if g_path is not None:
        return resume(trainer, g_path, hps, rt)
    if base_dir:
        if os.path.realpath(base_dir) == os.path.realpath(hps.model_dir):
            raise ValueError(f"train_ms.base.model_dir ({base_dir}) must differ from the model folder")
        load_base_model(trainer, base_dir)
    return None


def apply_rng_states(rng_states: list[dict[str, Any]] | None, rt: Runtime) -> None:
    if rng_states is None:
        return
    if len(rng_states) != rt.world_size:
        logger.warning(
            "checkpoint was written by %d ranks, now %d: random generators are not restored",
            len(rng_states),
            rt.world_size,
        )
        return
    restore_rng_state(rng_states[rt.rank], rt.device)


# ----------------------------------------------------------------------------------------- evaluation & logs


def _image(array: Tensor) -> np.ndarray:
    return utils.plot_spectrogram_to_numpy(array.detach().float().cpu().numpy())


def training_images(fwd: GeneratorPass) -> dict[str, np.ndarray]:
    return {
        "slice/mel_org": _image(fwd.y_mel[0]),
        "slice/mel_gen": _image(fwd.y_hat_mel[0]),
        "all/mel": _image(fwd.mel[0]),
        "all/attn": utils.plot_alignment_to_numpy(fwd.attn[0, 0].detach().float().cpu().numpy()),
    }


def scalar_values(metrics: dict[str, Any]) -> dict[str, float]:
    return {tag: float(value) for tag, value in metrics.items() if tag != "skipped"}


@torch.no_grad()
def evaluate(trainer: Trainer, loader: DataLoader, hps: Any, rt: Runtime, writer: Any) -> None:
    """Synthesize every validation clip with and without the stochastic duration predictor (rank 0)."""
    net_g = trainer.g.raw
    data = hps.data
    net_g.eval()
    images: dict[str, np.ndarray] = {}
    audios: dict[str, Tensor] = {}
    try:
        for index, batch in enumerate(loader):
            batch = batch.to(rt.device)
            mel = spec_to_mel_torch(
                batch.spec, data.filter_length, data.n_mel_channels, data.sampling_rate, data.mel_fmin, data.mel_fmax
            )
            images[f"gt/mel_{index}"] = _image(mel[0])
            audios[f"gt/audio_{index}"] = batch.wav[0, :, : batch.wav_lengths[0]].float().cpu()
            for use_sdp in (True, False):
                y_hat, _attn, mask, *_ = net_g.infer(
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
                y_hat_length = int(mask.sum([1, 2]).long()[0]) * data.hop_length
                y_hat_mel = mel_spectrogram_torch(
                    y_hat.squeeze(1).float(),
                    data.filter_length,
                    data.n_mel_channels,
                    data.sampling_rate,
                    data.hop_length,
                    data.win_length,
                    data.mel_fmin,
                    data.mel_fmax,
                )
                images[f"gen/mel_{index}"] = _image(y_hat_mel[0])
                audios[f"gen/audio_{index}_{use_sdp}"] = y_hat[0, :, :y_hat_length].float().cpu()
    finally:
        trainer.g.net.train()
    utils.summarize(
        writer=writer,
        global_step=trainer.state.step,
        images=images,
        audios=audios,
        audio_sampling_rate=data.sampling_rate,
    )
    writer.flush()


def param_checksum(net: nn.Module) -> str:
    """A hash of every parameter's bytes (for checking that DDP ranks hold identical weights)."""
    digest = hashlib.sha256()
    for name, param in net.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class DebugDump:
    """JSON lines per rank (``--debug-dump DIR``): each epoch's batches and each step's generator checksum."""

    def __init__(self, folder: str | None, rank: int) -> None:
        self.path = os.path.join(folder, f"rank{rank}.jsonl") if folder else None
        if self.path:
            os.makedirs(folder, exist_ok=True)

    def write(self, **record: Any) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class StopRequest:
    """Set by SIGTERM / SIGINT; the loop finishes the current step, saves and exits. A second signal aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signum}: stopping without saving")
        self.signum = signum
        logger.warning("received %s: finishing this step, then saving and exiting", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None


# -------------------------------------------------------------------------------------------------- loop


@dataclasses.dataclass
class RunOptions:
    max_steps: int | None = None
    keep_ckpts: int = 8
    max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS
    debug_dump: str | None = None
    reference_like: bool = False


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


class Trainloop:
    """Owns the cadence: epochs, logging, evaluation, checkpoints, stopping."""

    def __init__(
        self,
        trainer: Trainer,
        hps: Any,
        rt: Runtime,
        options: RunOptions,
        loader: DataLoader,
        batches: ResumableBatchSampler,
        eval_loader: DataLoader | None,
        stop: StopRequest,
    ) -> None:
        self.trainer, self.hps, self.rt, self.options = trainer, hps, rt, options
        self.loader, self.batches, self.eval_loader, self.stop = loader, batches, eval_loader, stop
        self.last_saved_step = trainer.state.step if trainer.state.step > 0 else None
        self.debug = DebugDump(options.debug_dump, rt.rank)
        self.writer = self.writer_eval = None
        if rt.is_main:
            from torch.utils.tensorboard import SummaryWriter  # only rank 0 writes events

            self.writer = SummaryWriter(log_dir=hps.model_dir)
            self.writer_eval = SummaryWriter(log_dir=os.path.join(hps.model_dir, "eval"))

    def run(self) -> None:
        state = self.trainer.state
        try:
            while state.epoch <= self.hps.train.epochs and not self._should_stop():
                if self._run_epoch():
                    break
            self.save()
        finally:
            for writer in (self.writer, self.writer_eval):
                if writer is not None:
                    writer.close()
        self.rt.barrier()

    def _resume_skip(self) -> int:
        state = self.trainer.state
        if state.world_size == self.rt.world_size:
            return state.batch_in_epoch
        # Another world size deals other batches; skip the same share of the epoch.
        skip = state.batch_in_epoch * state.world_size // self.rt.world_size
        logger.warning(
            "resumed with %d ranks instead of %d: skipping %d batches of epoch %d",
            self.rt.world_size,
            state.world_size,
            skip,
            state.epoch,
        )
        return skip

    def _run_epoch(self) -> bool:
        """Train the rest of the current epoch; True when training must stop."""
        state, trainer = self.trainer.state, self.trainer
        skip = self._resume_skip()
        state.batch_in_epoch, state.world_size = skip, self.rt.world_size
        self.batches.start_epoch(state.epoch, skip)
        if self.debug.path:
            self.debug.write(
                event="epoch", epoch=state.epoch, rank=self.rt.rank, skip=skip, batches=self.batches.epoch_batches()
            )
        trainer.set_train_mode()
        progress = self._progress(skip)
        for batch in self.loader:
            metrics, fwd = train_step(
                trainer, batch.to(self.rt.device, non_blocking=True), self.hps, self.rt, self.options.reference_like
            )
            state.step += 1
            state.batch_in_epoch += 1
            self._track_nonfinite(metrics)
            self._after_step(metrics, fwd, progress)
            if self._should_stop():
                if progress is not None:
                    progress.close()
                return True
        if progress is not None:
            progress.close()
        for part in trainer.parts():
            part.scheduler.step()
        logger.info("====> Epoch: %d", state.epoch)
        state.epoch += 1
        state.batch_in_epoch = 0
        return False

    def _progress(self, skip: int) -> Any:
        if not self.rt.is_main:
            return None
        from tqdm import tqdm

        # disable=None: a bar on a terminal, none in log files (the logger reports every log_interval).
        return tqdm(
            total=len(self.batches) + skip,
            initial=skip,
            desc=f"epoch {self.trainer.state.epoch}",
            disable=None,
            dynamic_ncols=True,
        )

    def _track_nonfinite(self, metrics: dict[str, Any]) -> None:
        update_nonfinite_streak(
            self.trainer.state, metrics["skipped"], self.options.max_nonfinite_steps, self.hps.model_dir
        )

    def _after_step(self, metrics: dict[str, Any], fwd: GeneratorPass, progress: Any) -> None:
        state, hps = self.trainer.state, self.hps
        if progress is not None:
            progress.set_postfix(
                {
                    "g": f"{float(metrics['loss/g/total']):.3f}",
                    "d": f"{float(metrics['loss/d/total']):.3f}",
                    "mel": f"{float(metrics['loss/g/mel']):.3f}",
                },
                refresh=False,
            )
            progress.update(1)
        if self.debug.path:
            self.debug.write(
                event="step",
                step=state.step,
                rank=self.rt.rank,
                checksum=param_checksum(self.trainer.g.raw),
                lr=metrics["learning_rate"],
            )
        if self.rt.is_main and state.step % hps.train.log_interval == 0:
            self._log(metrics, fwd)
        if state.step % hps.train.eval_interval == 0:
            if self.rt.is_main and self.eval_loader is not None:
                evaluate(self.trainer, self.eval_loader, hps, self.rt, self.writer_eval)
            self.save()

    def _log(self, metrics: dict[str, Any], fwd: GeneratorPass) -> None:
        state = self.trainer.state
        scalars = scalar_values(metrics)
        done = 100.0 * state.batch_in_epoch / max(len(self.batches.batch_sampler), 1)
        logger.info(
            "Train Epoch: %d [%.0f%%] step %d: g %.4f, d %.4f, fm %.4f, mel %.4f, dur %.4f, kl %.4f, lr %.3g",
            state.epoch,
            done,
            state.step,
            scalars["loss/g/total"],
            scalars["loss/d/total"],
            scalars["loss/g/fm"],
            scalars["loss/g/mel"],
            scalars["loss/g/dur"],
            scalars["loss/g/kl"],
            scalars["learning_rate"],
        )
        utils.summarize(writer=self.writer, global_step=state.step, scalars=scalars, images=training_images(fwd))

    def _should_stop(self) -> bool:
        max_steps = self.options.max_steps
        local = self.stop.requested or (max_steps is not None and self.trainer.state.step >= max_steps)
        return self.rt.any_rank(local)

    def save(self) -> None:
        step = self.trainer.state.step
        if step == 0 or step == self.last_saved_step:
            return
        save_training_checkpoint(self.trainer, self.hps, self.rt, self.options.keep_ckpts)
        self.last_saved_step = step


# -------------------------------------------------------------------------------------------------- main


def run_dataset_check(hps: Any, rt: Runtime) -> None:
    """The dataset checker's fast pass on rank 0, so a broken filelist fails before any net is built.

    The verdict is shared with the other ranks, which would otherwise wait for rank 0 until the timeout.
    """
    error: check_dataset.DatasetError | None = None
    if rt.is_main:
        filelists = [hps.data.training_files]
        if hps.data.get("validation_files") and os.path.isfile(hps.data.validation_files):
            filelists.append(hps.data.validation_files)
        try:
            check_dataset.assert_dataset_ok(filelists, hps, list(DEFAULT_BUCKET_BOUNDARIES), fast=True)
        except check_dataset.DatasetError as err:
            error = err
    if not rt.all_ranks(error is None):
        if error is not None:
            raise error
        raise RuntimeError("rank 0 found problems in the dataset (see its log)")


def configure_kernels(device: torch.device) -> None:
    """Backend flags, set once per process.

    On the CPU the native convolution kernels replace oneDNN's: the first oneDNN call of a convolution in a
    process can round differently from later calls, so a resumed run would drift from an uninterrupted one.
    The native kernels are deterministic and, for this model on CPU, about as fast (bench/train_step.py).
    """
    if device.type == "cpu":
        torch.backends.mkldnn.enabled = False
    else:
        torch.backends.cudnn.benchmark = True


def setup_logging(model_dir: str, rt: Runtime) -> None:
    """Console logging on every rank (warnings only off rank 0) and ``model_dir/train.log`` on rank 0."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # replaces main()'s early console handler
        root.removeHandler(handler)
    root.setLevel(logging.INFO if rt.is_main else logging.WARNING)
    fmt = logging.Formatter(f"%(asctime)s [rank {rt.rank}] %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    if rt.is_main:
        file_handler = logging.FileHandler(os.path.join(model_dir, "train.log"), encoding="utf-8")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="model config JSON (default: train_ms.config_path of config.yml)")
    parser.add_argument(
        "-m",
        "--model",
        help="dataset folder; checkpoints go to <model>/<train_ms.model> (default: the folders of config.yml)",
    )
    parser.add_argument("-y", "--yml_config", default=None, help="global settings (default: $BV2_CONFIG or config.yml)")
    parser.add_argument("--demo", action="store_true", help="prepare and train the bundled demo corpus")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--max-steps", type=int, default=None, help="stop (and save) after this many steps")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed")
    parser.add_argument("--num-workers", type=int, default=None, help="override train_ms.num_workers")
    parser.add_argument("--keep-ckpts", type=int, default=None, help="override train_ms.keep_ckpts")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--max-nonfinite-steps",
        type=int,
        default=DEFAULT_MAX_NONFINITE_STEPS,
        help="stop after this many iterations in a row with a non-finite loss",
    )
    parser.add_argument("--debug-dump", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_demo_wavlm(folder: Path, hidden: int, layers: int, seed: int = 1111) -> None:
    """A tiny randomly initialised WavLM for the demo (the real one cannot be downloaded here).

    Like the demo's BERT stand-ins it carries no information; it only lets the WavLM losses run. Its shape
    follows the reference kit's tiny WavLM: ``layers - 1`` transformer layers (WavLM reports the embeddings
    as an extra hidden state) and a feature extractor with an overall stride of 320 samples.
    """
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(
        hidden_size=hidden,
        num_hidden_layers=layers - 1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_buckets=16,
        max_bucket_distance=64,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        WavLMModel(config).save_pretrained(folder)
    logger.warning("created a random tiny WavLM in %s for the demo (it carries no speech knowledge)", folder)


def prepare_demo(args: argparse.Namespace) -> None:
    """``--demo``: prepare the bundled demo corpus into Data/demo when needed, then train on it."""
    prepared_config = DEMO_DATASET_DIR / "config.json"
    if not (prepared_config.is_file() and (DEMO_DATASET_DIR / "filelists" / "train.list").is_file()):
        from demo import prepare as demo_prepare

        logger.info("preparing the demo corpus in %s (demo/prepare.py)", DEMO_DATASET_DIR)
        if demo_prepare.main(["--out-dir", str(DEMO_DATASET_DIR), "--config", str(DEMO_CONFIG)]) != 0:
            raise RuntimeError(f"demo/prepare.py reported problems; see its log (dataset folder {DEMO_DATASET_DIR})")
    # The prepared copy of configs/demo.json has the speaker table filled in.
    args.config = args.config or str(prepared_config)
    args.model = args.model or str(DEMO_DATASET_DIR)
    slm = load_model_config(args.config).model.slm
    if not Path(slm.model).exists():
        make_demo_wavlm(Path(slm.model), slm.hidden, slm.nlayers)


def main(argv: Sequence[str] | None = None) -> int:
    import config as global_config

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.demo:
        prepare_demo(args)
    yml = global_config.load_config(args.yml_config)
    added = apply_env_defaults(yml.train_ms.env.as_environ())

    hps = load_model_config(args.config or yml.train_ms.config_path)
    check_trainable(hps)
    if args.seed is not None:
        hps.train.seed = args.seed
    hps.model_dir = resolve_model_dir(args.model, yml)
    hps.data.setdefault("spec_cache", yml.train_ms.spec_cache)
    hps.data.setdefault("all_in_mem", yml.train_ms.all_in_mem)
    if args.threads:
        torch.set_num_threads(args.threads)
    # numba (monotonic alignment) otherwise starts a thread per core whose idle spinning starves the training
    # threads, e.g. ~5x slower steps with torchrun's one single-threaded process per core.
    os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))

    rt = init_runtime(args.device, hps.train)
    os.makedirs(hps.model_dir, exist_ok=True)
    setup_logging(hps.model_dir, rt)
    if added:
        logger.info("environment defaults from %s: %s", yml.source, added)
    configure_kernels(rt.device)
    stop = StopRequest()
    stop.install()
    try:
        train_from_config(hps, rt, yml, args, stop)
    finally:
        if rt.distributed:
            dist.destroy_process_group()
    return 0


def train_from_config(hps: Any, rt: Runtime, yml: Any, args: argparse.Namespace, stop: StopRequest) -> None:
    """Build data, nets and state, then run the training loop."""
    if rt.is_main:
        logger.info(
            "training on %d rank(s), device %s, precision %s; model folder %s",
            rt.world_size,
            rt.device,
            rt.amp_dtype or torch.float32,
            hps.model_dir,
        )
        logger.info("config: %s", json.dumps(hps.to_dict(), ensure_ascii=False))
        save_resolved_config(hps, hps.model_dir)
        utils.check_git_hash(hps.model_dir)
    run_dataset_check(hps, rt)
    # The reference seeds torch only; seeding numpy and random too makes a whole run reproducible.
    torch.manual_seed(hps.train.seed)
    np.random.seed(hps.train.seed)
    random.seed(hps.train.seed)

    num_workers = (
        args.num_workers
        if args.num_workers is not None
        else min(yml.train_ms.num_workers, max((os.cpu_count() or 1) - 1, 0))
    )
    loader, batches = build_train_loader(hps, rt, num_workers)
    eval_loader = build_eval_loader(hps) if rt.is_main else None

    trainer = build_trainer(hps, rt)
    base_dir = yml.train_ms.base.model_dir if yml.train_ms.base.use_base_model else None
    rng_states = restore_or_initialise(trainer, hps, rt, base_dir)
    wrap_ddp(trainer, rt)
    trainer.wl = build_wavlm_loss(hps, trainer, rt)
    apply_rng_states(rng_states, rt)

    options = RunOptions(
        max_steps=args.max_steps,
        keep_ckpts=args.keep_ckpts if args.keep_ckpts is not None else yml.train_ms.keep_ckpts,
        max_nonfinite_steps=args.max_nonfinite_steps,
        debug_dump=args.debug_dump,
    )
    Trainloop(trainer, hps, rt, options, loader, batches, eval_loader, stop).run()
    if stop.requested:
        logger.info("stopped by signal at step %d; checkpoint saved", trainer.state.step)


if __name__ == "__main__":
    sys.exit(main())
