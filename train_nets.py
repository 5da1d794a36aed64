"""The nets a run trains, each with its AdamW and LR schedule (a ``Part``), the GradScaler and the train state:
the ``Trainer`` that ``training.train_step`` updates and ``train_resume`` saves and restores."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import losses
from models import (
    DurationDiscriminator,
    MultiPeriodDiscriminator,
    SynthesizerTrn,
    WavLMDiscriminator,
    build_duration_discriminator,
    build_generator,
    build_period_discriminator,
    build_wavlm_discriminator,
    freeze_parts,
    set_activation_checkpointing,
)
from train_runtime import Runtime

logger = logging.getLogger(__name__)


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
    if hps.train.activation_checkpointing:
        stages = set_activation_checkpointing(True, net_g, net_d)
        logger.info("train.activation_checkpointing: %d stages recompute their activations in backward", stages)

    def part(prefix: str, net: nn.Module, freeze: list[str] | None = None) -> Part:
        net.to(rt.device)
        optimizer = make_optimizer((p for p in net.parameters() if p.requires_grad), hps.train)
        if freeze:
            # After the optimizer is made: frozen parameters stay in its list without gradients, so checkpoints
            # resume with or without the freeze; before DDP, which then leaves them out of its all-reduce.
            logger.info("train.freeze: %s fixed (%d parameter tensors)", ", ".join(freeze), freeze_parts(net, freeze))
        # DDP broadcasts rank 0's fresh weights; checkpoints load into the wrapped net's parameters later.
        wrapped = DDP(net, device_ids=device_ids, bucket_cap_mb=512) if rt.distributed else net
        return Part(prefix, wrapped, optimizer, make_scheduler(optimizer, hps.train))

    trainer = Trainer(
        g=part("G", net_g, hps.train.freeze),
        d=part("D", net_d),
        wd=part("WD", net_wd),
        dur=part("DUR", net_dur_disc) if net_dur_disc is not None else None,
        scaler=torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16),
        state=TrainState(world_size=rt.world_size, batch_size=int(hps.train.batch_size)),
    )
    trainer.wl = build_wavlm_loss(hps, trainer, rt)
    return trainer


def build_wavlm_loss(hps: Any, trainer: Trainer, rt: Runtime) -> losses.WavLMLoss:
    return losses.WavLMLoss(hps.model.slm.model, trainer.wd.raw, hps.data.sampling_rate, hps.model.slm.sr).to(rt.device)
