"""What a run saves, and how it continues from it.

``build_registry`` names everything that survives a restart (utils.CheckpointRegistry saves and loads it in one
loop); ``save_training_checkpoint`` writes it. ``restore_or_initialise`` resumes from the newest complete
checkpoint of the model folder (exactly, for files written here; from the step in the file name and the epoch,
for the reference's), or starts from a base model's weights. Settings changed since the checkpoint are found
by ``config.changed_settings`` and reported with what now applies; a changed LR setting re-derives the
schedule; a changed model shape is an error naming the setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

import utils
from config import ModelConfig, as_model_config, changed_settings
from train_nets import Part, Trainer
from train_runtime import Runtime

logger = logging.getLogger(__name__)


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


def save_training_checkpoint(
    trainer: Trainer, hps: Any, rt: Runtime, keep_ckpts: int, best: utils.BestCheckpoints | None = None
) -> None:
    """Write G_/D_/WD_/DUR_<step>.pth on rank 0 (every rank must call it: the RNG states are gathered); the
    ``keep_ckpts`` retention then keeps the newest and the ``best`` sets (rank 0's best.json, rewritten)."""
    registry = build_registry(trainer, hps, rt)
    state = trainer.state
    registry.save(
        hps.model_dir, state.step, state.epoch, hps.train.learning_rate, write=rt.is_main, keep=keep_ckpts, best=best
    )


# Settings whose change on resume is reported with what now applies (train) or checked against the weights.
DRIFT_TRAIN_KEYS = ("learning_rate", "lr_decay", "warmup_epochs", "batch_size", "segment_size")
SCHEDULE_KEYS = ("learning_rate", "lr_decay", "warmup_epochs")
DRIFT_DATA_KEYS = ("n_speakers", "filter_length")  # the nets' shapes depend on these, as on model.*


def _watched(name: str) -> bool:
    section, _, key = name.partition(".")
    if section == "train":
        return key in DRIFT_TRAIN_KEYS
    if section == "data":
        return key in DRIFT_DATA_KEYS
    # model.slm.model is a path: another folder with the same WavLM is no change worth reporting.
    return section == "model" and name != "model.slm.model"


def config_changes(saved: Mapping[str, Any], current: ModelConfig, source: str) -> list[tuple[str, Any, Any]]:
    """(setting, saved value, current value) for the watched train settings, the data shape settings and every
    model setting that differ between a checkpoint's stored config and the current one, through
    ``config.changed_settings`` (defaults compare as defaults). A stored config that no longer validates is
    reported and compared with nothing (a changed model shape then still fails when the weights load)."""
    try:
        changes = changed_settings(saved, current)
    except ValueError as err:
        logger.warning(
            "the config stored with %s is not comparable (%s); changed settings are not reported", source, err
        )
        return []
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


def _report_changes(changes: list[tuple[str, Any, Any]], source: str, epoch: int) -> None:
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
    changes = config_changes(saved_config, as_model_config(hps), g_path) if saved_config else []
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
    _report_changes(changes, g_path, state.epoch)
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
