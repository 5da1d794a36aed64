"""Checkpoints, logging and plotting helpers shared by training and inference (the model config: config.py).

Checkpoints keep the reference layout (a dict with ``model``, ``iteration``, ``optimizer``, ``learning_rate`` in
that order) so files move both ways between this package and Bert-VITS2 2.3; extra keys (scheduler, scaler,
train state) ride along for an exact resume and are ignored by the reference loader. Files are written
atomically, so a crash mid-save never leaves a truncated ``G_*.pth`` that a resume would pick up.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import pickle
import random
import re
import subprocess
import zipfile
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

import atomic_io

logger = logging.getLogger(__name__)

CLASSIC_CHECKPOINT_KEYS = ("model", "iteration", "optimizer", "learning_rate")
# Net prefixes of the training script's files: G_{step}.pth, D_..., DUR_..., WD_...
CHECKPOINT_PREFIXES = ("G", "D", "DUR", "WD")
_DDP_PREFIX = "module."


# --------------------------------------------------------------------------------------------------------------
# Logging and provenance


def setup_train_log(model_dir: str | os.PathLike[str], rank: int = 0, filename: str = "train.log") -> None:
    """Console logging on every rank (warnings only off rank 0) and ``model_dir/filename`` on rank 0.

    Replaces the root logger's handlers, so calling it again (another run in the same process) never
    duplicates lines.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    if rank == 0:
        os.makedirs(os.fspath(model_dir), exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(os.fspath(model_dir), filename), encoding="utf-8")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


class TrainLogger:
    """``train.log`` and the TensorBoard events of one run; the training loop hands it metrics.

    Only rank 0 writes (the others get a logger whose calls do nothing); the event writers (``model_dir`` for
    training, ``model_dir/eval`` for evaluation, as the reference) open on first use.
    """

    def __init__(self, model_dir: str | os.PathLike[str], rank: int = 0) -> None:
        self.model_dir = os.fspath(model_dir)
        self.enabled = rank == 0
        self._writers: dict[str, Any] = {}
        setup_train_log(self.model_dir, rank)

    def _writer(self, name: str) -> Any:
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter  # heavy import, rank 0 only

            folder = self.model_dir if name == "train" else os.path.join(self.model_dir, name)
            self._writers[name] = SummaryWriter(log_dir=folder)
        return self._writers[name]

    def log_train(
        self,
        step: int,
        epoch: int,
        epoch_fraction: float,
        scalars: Mapping[str, float],
        mels: Mapping[str, Any],
        alignments: Mapping[str, Any],
    ) -> None:
        """One ``Train Epoch`` line in train.log, every scalar, and the mel / attention images ([c, t] arrays)."""
        if not self.enabled:
            return
        logger.info(
            "Train Epoch: %d [%.0f%%] step %d: g %.4f, d %.4f, fm %.4f, mel %.4f, dur %.4f, kl %.4f, lr %.3g",
            epoch,
            100.0 * epoch_fraction,
            step,
            *(scalars.get(tag, float("nan")) for tag in _LOGGED_TERMS),
        )
        if "perf/step_seconds" in scalars:
            logger.info(
                "Perf step %d: %.3f s/step (data wait %.3f s), %.2f clips/s, %.2f audio s/s, peak memory %.2f GB",
                step,
                *(scalars.get(tag, float("nan")) for tag in _PERF_TERMS),
            )
        images = {tag: plot_spectrogram_to_numpy(mel) for tag, mel in mels.items()}
        images.update({tag: plot_alignment_to_numpy(alignment) for tag, alignment in alignments.items()})
        summarize(self._writer("train"), step, scalars=scalars, images=images)

    def log_metrics(self, step: int, scalars: Mapping[str, float]) -> None:
        """The validation metrics (metrics.py): one ``Validation`` line in train.log and TensorBoard scalars."""
        if not self.enabled or not scalars:
            return
        values = ", ".join(f"{tag.split('/', 1)[-1]} {value:.4g}" for tag, value in scalars.items())
        logger.info("Validation step %d: %s", step, values)
        writer = self._writer("train")
        summarize(writer, step, scalars=scalars)
        writer.flush()

    def log_eval(self, step: int, mels: Mapping[str, Any], audios: Mapping[str, Any], sampling_rate: int) -> None:
        """Evaluation mel images ([c, t] arrays) and audio clips ([1, t] or [t], in [-1, 1])."""
        if not self.enabled:
            return
        images = {tag: plot_spectrogram_to_numpy(mel) for tag, mel in mels.items()}
        writer = self._writer("eval")
        summarize(writer, step, images=images, audios=audios, audio_sampling_rate=sampling_rate)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


# The terms of the reference's console line, in its order.
_PERF_TERMS = (
    "perf/step_seconds",
    "perf/data_wait_seconds",
    "perf/samples_per_second",
    "perf/audio_seconds_per_second",
    "perf/peak_memory_gb",
)
_LOGGED_TERMS = ("loss/g/total", "loss/d/total", "loss/g/fm", "loss/g/mel", "loss/g/dur", "loss/g/kl", "learning_rate")


def check_git_hash(model_dir: str | os.PathLike[str]) -> str | None:
    """Record the source's git commit in ``model_dir/githash``; warn when it differs from the recorded one.

    Returns the current hash, or None when the source is not a git checkout (or git is unavailable).
    """
    source_dir = os.path.dirname(os.path.realpath(__file__))
    current = _git_head(source_dir)
    if current is None:
        logger.warning("%s is not a git repository (or git is unavailable); git hash comparison skipped", source_dir)
        return None
    hash_path = os.path.join(os.fspath(model_dir), "githash")
    if os.path.exists(hash_path):
        with open(hash_path, encoding="utf-8") as handle:
            saved = handle.read().strip()
        if saved != current:
            logger.warning("git hash values are different. %s(saved) != %s(current)", saved[:8], current[:8])
    else:
        atomic_io.atomic_write_text(hash_path, current)
    return current


def _git_head(source_dir: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    head = result.stdout.strip()
    return head if result.returncode == 0 and head else None


# --------------------------------------------------------------------------------------------------------------
# Checkpoints


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare net inside a DistributedDataParallel (or DataParallel) wrapper."""
    return model.module if isinstance(getattr(model, "module", None), nn.Module) else model


def _strip_ddp_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # A state dict saved from the wrapper instead of the net has every key prefixed with "module.".
    if state_dict and all(key.startswith(_DDP_PREFIX) for key in state_dict):
        return {key[len(_DDP_PREFIX) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def _state_of(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") and callable(obj.state_dict) else obj


def read_checkpoint(checkpoint_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU (tensors and plain data only) and check its layout."""
    path = os.fspath(checkpoint_path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {exc}") from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path}: not a checkpoint: expected a dict with a 'model' state dict")
    return checkpoint


def load_state_dict_checked(
    model: nn.Module, saved: Mapping[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> tuple[list[str], list[str]]:
    """Copy ``saved`` into ``model`` (DDP-wrapped or not, ``module.``-prefixed keys or not).

    Strict: any missing, unexpected or shape-mismatched key raises a RuntimeError listing them all.
    Non-strict: matching keys are loaded, the rest is reported with a warning (missing keys keep their
    current values). Returns ``(missing, unexpected)``.
    """
    net = _unwrap(model)
    saved = _strip_ddp_prefix(saved)
    expected = net.state_dict()
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    mismatched = [key for key in expected if key in saved and _shape(saved[key]) != _shape(expected[key])]
    shape_notes = [f"{key}: checkpoint {_shape(saved[key])} vs model {_shape(expected[key])}" for key in mismatched]
    problems = _key_report(missing, unexpected, shape_notes)
    if problems and strict:
        raise RuntimeError(f"{source} does not match {type(net).__name__}:\n{problems}")
    if problems:
        logger.warning("%s loaded partially into %s:\n%s", source, type(net).__name__, problems)
    loadable = {key: value for key, value in saved.items() if key in expected and key not in mismatched}
    net.load_state_dict(loadable, strict=not problems)
    return missing, unexpected


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _key_report(missing: list[str], unexpected: list[str], mismatched: list[str], limit: int = 20) -> str:
    lines = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            lines.append(f"  {len(keys)} {title}: {shown}")
    return "\n".join(lines)


def load_checkpoint(
    checkpoint_path: str | os.PathLike[str] | Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    skip_optimizer: bool = False,
    *,
    strict: bool = True,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    source: str | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer | None, float, int]:
    """Load weights (and optimizer state unless skipped) from a reference-layout checkpoint.

    ``checkpoint_path`` may also be a dict already returned by ``read_checkpoint`` (to reach extra keys such
    as ``train_state`` without reading a large file twice; ``source`` then names it in messages).
    ``scheduler`` / ``scaler`` are restored from the file's ``scheduler`` / ``scaler`` entries when both are
    present. Returns ``(model, optimizer, learning_rate, iteration)`` like the reference.
    """
    if isinstance(checkpoint_path, Mapping):
        checkpoint, source = checkpoint_path, source or "checkpoint"
    else:
        source = os.fspath(checkpoint_path)
        checkpoint = read_checkpoint(source)
    load_state_dict_checked(model, checkpoint["model"], strict=strict, source=source)
    if optimizer is not None and not skip_optimizer:
        if checkpoint.get("optimizer") is None:
            logger.warning("%s has no optimizer state; the optimizer starts fresh", source)
        else:
            optimizer.load_state_dict(checkpoint["optimizer"])
    for name, target in (("scheduler", scheduler), ("scaler", scaler)):
        if target is not None and checkpoint.get(name) is not None:
            target.load_state_dict(checkpoint[name])
        elif target is not None:
            logger.warning("%s has no %s state; it keeps its current state", source, name)
    iteration = int(checkpoint.get("iteration", 0))
    learning_rate = float(checkpoint.get("learning_rate", 0.0))
    logger.info("Loaded checkpoint '%s' (iteration %d)", source, iteration)
    return model, optimizer, learning_rate, iteration


def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    learning_rate: float,
    iteration: int,
    checkpoint_path: str | os.PathLike[str],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write ``{model, iteration, optimizer, learning_rate, **extra}``.

    ``extra`` values with a ``state_dict()`` method (schedulers, GradScaler) are stored as their state dicts.
    The model is saved without a DDP ``module.`` prefix, as the reference does.
    """
    state: dict[str, Any] = {
        "model": _unwrap(model).state_dict(),
        "iteration": iteration,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "learning_rate": learning_rate,
    }
    for key, value in (extra or {}).items():
        if key in state:
            raise ValueError(f"extra checkpoint key {key!r} would overwrite a reference key {CLASSIC_CHECKPOINT_KEYS}")
        state[key] = _state_of(value)
    path = os.fspath(checkpoint_path)
    logger.info("Saving model and optimizer state at iteration %s to %s", iteration, path)
    atomic_torch_save(state, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through ``atomic_io.atomic_write``: readers see the old file or the complete new one."""
    with atomic_io.atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def is_complete_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Cheap check that a file is a whole torch checkpoint (not truncated by a crash or a full disk).

    torch's zip format ends with the zip central directory; a truncated file loses it. Only the directory
    is read, not the tensors. Files in torch's legacy (non-zip) format are fully loaded instead.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            return False
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as exc:
        logger.debug("%s is not loadable: %s", path, exc)
        return False
    return True


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """Step number in a checkpoint file NAME (``G_1200.pth`` -> 1200); digits in folders are ignored."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    match = re.search(r"(\d+)$", stem)
    return int(match.group(1)) if match else None


def latest_checkpoint_path(dir_path: str | os.PathLike[str], regex: str = "G_*.pth") -> str | None:
    """The complete checkpoint with the highest step among files matching the glob ``regex``, or None.

    (The parameter keeps the reference's name; it is a glob pattern.) Files that fail the completeness check
    are skipped with a warning, so a resume falls back to the previous good checkpoint.
    """
    folder = os.fspath(dir_path)
    candidates = []
    for path in glob.glob(os.path.join(glob.escape(folder), regex)):
        step = checkpoint_step(path)
        if step is not None and os.path.isfile(path):
            candidates.append((step, path))
    for _, path in sorted(candidates, reverse=True):
        if is_complete_checkpoint(path):
            return path
        logger.warning("skipping incomplete checkpoint %s", path)
    return None


def clean_checkpoints(
    path_to_models: str | os.PathLike[str] = "logs/44k/", n_ckpts_to_keep: int = 2, protected: Collection[int] = ()
) -> list[str]:
    """Delete all but the newest ``n_ckpts_to_keep`` checkpoints of each net (G, D, DUR, WD) separately.

    Steps come from the file names; ``*_0.pth`` (the base model) and the ``protected`` steps (the best
    checkpoints, :class:`BestCheckpoints`) are never deleted; 0 keeps everything. Returns the deleted paths.
    """
    if n_ckpts_to_keep < 0:
        raise ValueError(f"n_ckpts_to_keep must be >= 0, got {n_ckpts_to_keep}")
    if n_ckpts_to_keep == 0:
        return []
    folder = os.fspath(path_to_models)
    names = os.listdir(folder)
    deleted = []
    for prefix in CHECKPOINT_PREFIXES:
        # An exact "<prefix>_<digits>.pth" match: "D" must not pick up "DUR_100.pth".
        pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)\.pth$")
        steps = sorted((int(m.group(1)), name) for name in names if (m := pattern.match(name)) and int(m.group(1)) != 0)
        for step, name in steps[:-n_ckpts_to_keep]:
            if step in protected:
                continue
            path = os.path.join(folder, name)
            os.remove(path)
            deleted.append(path)
            logger.info("Free up space by deleting ckpt %s", path)
    return deleted


# --------------------------------------------------------------------------------------------------------------
# Everything that survives a restart: one registry, one save loop, one load loop


class Stateful(Protocol):
    """What the registry saves and restores: anything with ``state_dict()`` and ``load_state_dict()``."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclasses.dataclass
class RegisteredNet:
    """One trained net and its optimizer and LR schedule, saved as ``<prefix>_<step>.pth``."""

    prefix: str
    net: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any | None = None


@dataclasses.dataclass
class LoadReport:
    """What a load found: nets without any file (fresh weights), nets whose LR schedule was not restored."""

    missing: list[str] = dataclasses.field(default_factory=list)
    unscheduled: list[str] = dataclasses.field(default_factory=list)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


class SavedValue:
    """Plain data stored as is in the lead file (e.g. the resolved config); a load keeps the file's in ``loaded``."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.loaded: Any = None

    def state_dict(self) -> Any:
        return self.value

    def load_state_dict(self, state: Any) -> None:
        self.loaded = state


class CheckpointRegistry:
    """Everything a training run needs to continue exactly, registered by name and saved/loaded by one loop.

    Files keep the reference layout: one ``<prefix>_<step>.pth`` per registered net with ``model``,
    ``iteration`` (the epoch), ``optimizer`` and ``learning_rate``, plus the net's LR schedule under
    ``scheduler``. The first registered net's file (``G_``) is the lead file: it also holds every state added
    with ``add_state`` (train state, GradScaler, per-rank RNG, config) and is written last, so a complete
    ``G_<step>.pth`` means its siblings are complete too.
    """

    def __init__(self) -> None:
        self.nets: list[RegisteredNet] = []
        self.states: dict[str, Stateful] = {}

    def add_net(
        self, prefix: str, net: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None
    ) -> None:
        if any(entry.prefix == prefix for entry in self.nets):
            raise ValueError(f"a net with prefix {prefix!r} is already registered")
        self.nets.append(RegisteredNet(prefix, net, optimizer, scheduler))

    def add_state(self, key: str, obj: Stateful) -> None:
        if key in CLASSIC_CHECKPOINT_KEYS or key == "scheduler" or key in self.states:
            raise ValueError(f"checkpoint key {key!r} is taken")
        self.states[key] = obj

    def save(
        self,
        model_dir: str,
        step: int,
        epoch: int,
        learning_rate: float,
        *,
        write: bool = True,
        keep: int = 0,
        best: BestCheckpoints | None = None,
    ) -> list[str]:
        """Write every net's file for ``step`` (atomically, the lead file last); returns the paths written.

        Every rank must call it (a state such as the per-rank RNG gathers from all ranks); only callers with
        ``write`` write. ``keep`` > 0 then deletes all but the newest ``keep`` checkpoints of each net, except
        the ``best`` ones.
        """
        states = {key: obj.state_dict() for key, obj in self.states.items()}
        if not write:
            return []
        lead, *others = self.nets
        paths = []
        for entry in [*reversed(others), lead]:
            extra: dict[str, Any] = {"scheduler": entry.scheduler} if entry.scheduler is not None else {}
            if entry is lead:
                extra.update(states)
            path = checkpoint_file(model_dir, entry.prefix, step)
            # The reference stores the configured learning rate and, under "iteration", the epoch.
            save_checkpoint(entry.net, entry.optimizer, learning_rate, epoch, path, extra=extra)
            paths.append(path)
        if best is not None:
            best.write()  # the new step is complete now: rank it before retention deletes anything
        if keep > 0:
            clean_checkpoints(model_dir, keep, best.protected_steps() if best is not None else ())
            if best is not None:
                best.write()
        return paths

    def load(
        self, lead: Mapping[str, Any], lead_path: str, *, optimizers: bool = True, schedulers: bool = True
    ) -> LoadReport:
        """Restore from ``lead`` (the read lead file) and, per other net, its sibling of the same step, else
        the newest complete one (with a warning). Weights load strictly; the registered states load in their
        registration order from the lead file when it has them (so the RNG, registered last, is restored last).
        """
        model_dir = os.path.dirname(os.fspath(lead_path))
        step = checkpoint_step(lead_path) or 0
        report = LoadReport()
        for entry in self.nets:
            if entry is self.nets[0]:
                checkpoint, source = lead, os.fspath(lead_path)
            else:
                checkpoint, source = _read_sibling(model_dir, entry.prefix, step)
            if checkpoint is None:
                report.missing.append(entry.prefix)
                continue
            with_schedule = schedulers and entry.scheduler is not None and checkpoint.get("scheduler") is not None
            load_checkpoint(
                checkpoint,
                entry.net,
                entry.optimizer,
                skip_optimizer=not optimizers or entry.optimizer is None,
                scheduler=entry.scheduler if with_schedule else None,
                source=source,
            )
            if not with_schedule:
                report.unscheduled.append(entry.prefix)
            report.sources[entry.prefix] = source
        for key, obj in self.states.items():
            if lead.get(key):  # None or empty (e.g. a disabled GradScaler's state): nothing to restore
                obj.load_state_dict(lead[key])
        return report

    def load_weights(self, folder: str) -> list[str]:
        """Weights only, from the newest ``<prefix>_*.pth`` per net in ``folder`` (e.g. a base model to fine-tune).

        Shapes that differ keep their current values, with a warning. Returns the prefixes without a file.
        """
        missing = []
        for entry in self.nets:
            path = latest_checkpoint_path(folder, f"{entry.prefix}_*.pth")
            if path is None:
                missing.append(entry.prefix)
                continue
            load_state_dict_checked(entry.net, read_checkpoint(path)["model"], strict=False, source=path)
            logger.info("loaded weights from %s", path)
        return missing


class BestCheckpoints:
    """The ``keep`` best checkpoints by one validation metric, kept in ``<model_dir>/best.json``.

    ``record`` stores a step's metrics *before* that step's checkpoint is written; a step counts only once its
    ``G_<step>.pth`` is complete (the registry writes it last), and :meth:`CheckpointRegistry.save` rewrites
    the file after the save and before retention deletes anything, so after a kill at any moment the file
    lists as best only complete checkpoints that retention keeps. Written atomically; it lists the best (best
    first) with every metric, and every scored step whose checkpoint exists, so a resumed run, or a changed
    ``best_metric``, ranks them again.
    """

    FILE = "best.json"

    def __init__(self, model_dir: str | os.PathLike[str], metric: str, keep: int) -> None:
        import metrics  # deferred: metrics imports numpy only, but utils stays light for scripts

        metrics.metric_badness(metric, 0.0)  # an unknown metric name is an error here, naming the known ones
        self.model_dir, self.metric, self.keep = os.fspath(model_dir), metric, keep
        self.path = os.path.join(self.model_dir, self.FILE)
        self.scored: dict[int, dict[str, float]] = self._read()
        if self.scored:
            self.write()  # a resumed run: forget steps whose save a kill cut short, rank by today's metric

    def _read(self) -> dict[int, dict[str, float]]:
        if not os.path.isfile(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            return {
                int(entry["step"]): {tag: float(value) for tag, value in entry["metrics"].items() if value is not None}
                for entry in data["scored"]
            }
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{self.path}: not a best-checkpoints file ({err}); move it away to start it anew"
            ) from err

    def _complete(self, step: int) -> bool:
        return is_complete_checkpoint(checkpoint_file(self.model_dir, "G", step))

    def ranked(self) -> list[int]:
        """Steps with a complete checkpoint and a value of the metric, best first (ties: the earlier step)."""
        import metrics

        candidates = [step for step, scores in self.scored.items() if self.metric in scores and self._complete(step)]
        return sorted(
            candidates, key=lambda step: (metrics.metric_badness(self.metric, self.scored[step][self.metric]), step)
        )

    def protected_steps(self) -> set[int]:
        """The steps whose checkpoints retention must keep."""
        return set(self.ranked()[: self.keep]) if self.keep > 0 else set()

    def record(self, step: int, scores: Mapping[str, float]) -> None:
        """Store ``step``'s metrics (call before saving its checkpoint) and rewrite best.json."""
        self.scored[step] = {tag: float(value) for tag, value in scores.items()}
        self.write(pending=step)

    def write(self, pending: int | None = None) -> None:
        """Rewrite best.json atomically: the best (best first) and every scored step whose ``G_`` file exists
        (or is ``pending``, about to be saved); steps whose files are gone are forgotten."""
        self.scored = {
            step: scores
            for step, scores in self.scored.items()
            if step == pending or os.path.isfile(checkpoint_file(self.model_dir, "G", step))
        }
        document = {
            "metric": self.metric,
            "keep": self.keep,
            "best": [self._entry(step) for step in self.ranked()[: self.keep]],
            "scored": [self._entry(step) for step in sorted(self.scored)],
        }
        atomic_io.atomic_write_text(self.path, json.dumps(document, indent=2) + "\n")

    def _entry(self, step: int) -> dict[str, Any]:
        values = {tag: (value if math.isfinite(value) else None) for tag, value in self.scored[step].items()}
        return {"step": step, "checkpoint": f"G_{step}.pth", "metrics": values}


def checkpoint_file(model_dir: str | os.PathLike[str], prefix: str, step: int) -> str:
    """``model_dir/<prefix>_<step>.pth``, the reference's file name."""
    return os.path.join(os.fspath(model_dir), f"{prefix}_{step}.pth")


def _read_sibling(model_dir: str, prefix: str, step: int) -> tuple[dict[str, Any] | None, str | None]:
    """The ``prefix`` checkpoint of the same step, else the newest complete one (with a warning), else None."""
    same_step = checkpoint_file(model_dir, prefix, step)
    if os.path.isfile(same_step) and is_complete_checkpoint(same_step):
        return read_checkpoint(same_step), same_step
    latest = latest_checkpoint_path(model_dir, f"{prefix}_*.pth")
    if latest is None:
        return None, None
    logger.warning("%s is missing or incomplete; using %s instead", same_step, latest)
    return read_checkpoint(latest), latest


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators as plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RankRNG:
    """The random generators of every rank: saved for all ranks in rank order, restored per rank."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    def state_dict(self) -> list[dict[str, Any]]:
        """Every rank's generator states (a collective when distributed: every rank must call it)."""
        local = capture_rng_state(self.device)
        if self.world_size == 1:
            return [local]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, local)
        return gathered

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if len(states) != self.world_size:
            logger.warning(
                "checkpoint was written by %d ranks, now %d: random generators are not restored",
                len(states),
                self.world_size,
            )
            return
        restore_rng_state(states[self.rank], self.device)


# --------------------------------------------------------------------------------------------------------------
# TensorBoard and plots


def summarize(
    writer: Any,
    global_step: int,
    scalars: Mapping[str, Any] | None = None,
    histograms: Mapping[str, Any] | None = None,
    images: Mapping[str, Any] | None = None,
    audios: Mapping[str, Any] | None = None,
    audio_sampling_rate: int = 22050,
) -> None:
    """Write scalars, histograms, HWC images and audio clips to a TensorBoard ``SummaryWriter``."""
    for tag, value in (scalars or {}).items():
        writer.add_scalar(tag, value, global_step)
    for tag, value in (histograms or {}).items():
        writer.add_histogram(tag, value, global_step)
    for tag, value in (images or {}).items():
        writer.add_image(tag, value, global_step, dataformats="HWC")
    for tag, value in (audios or {}).items():
        writer.add_audio(tag, value, global_step, audio_sampling_rate)


def _as_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array)


def _figure(figsize: tuple[float, float]) -> tuple[Any, Any, Any]:
    # The object API with an explicit Agg canvas: no pyplot global state, no backend switch for the process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    canvas = FigureCanvasAgg(figure)
    return figure, canvas, figure.add_subplot()


def _render_rgb(figure: Any, canvas: Any) -> np.ndarray:
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # [h, w, 4] uint8
    return np.ascontiguousarray(rgba[..., :3])


def plot_spectrogram_to_numpy(spectrogram: Any) -> np.ndarray:
    """Render a [channels, frames] spectrogram as a uint8 [h, w, 3] image."""
    figure, canvas, axes = _figure((10, 2))
    image = axes.imshow(_as_numpy(spectrogram), aspect="auto", origin="lower", interpolation="none")
    figure.colorbar(image, ax=axes)
    axes.set_xlabel("Frames")
    axes.set_ylabel("Channels")
    return _render_rgb(figure, canvas)


def plot_alignment_to_numpy(alignment: Any, info: str | None = None) -> np.ndarray:
    """Render a [encoder, decoder] alignment as a uint8 [h, w, 3] image (decoder steps on the x axis)."""
    figure, canvas, axes = _figure((6, 4))
    image = axes.imshow(_as_numpy(alignment).transpose(), aspect="auto", origin="lower", interpolation="none")
    figure.colorbar(image, ax=axes)
    xlabel = "Decoder timestep"
    if info is not None:
        xlabel += "\n\n" + info
    axes.set_xlabel(xlabel)
    axes.set_ylabel("Encoder timestep")
    return _render_rgb(figure, canvas)


# --------------------------------------------------------------------------------------------------------------
# Data files


def load_wav_to_torch(full_path: str | os.PathLike[str]) -> tuple[torch.Tensor, int]:
    """Read a mono audio file as float32 samples on the 16-bit integer scale, and its sampling rate.

    The reference returns raw int16 values and the loader divides by ``max_wav_value`` (32768); returning that
    scale for every input format keeps the division right for float and 24/32-bit files as well.
    """
    import soundfile  # deferred: only data loading needs it

    path = os.fspath(full_path)
    data, sampling_rate = soundfile.read(path, dtype="float32", always_2d=False)
    if data.ndim != 1:
        raise ValueError(f"{path}: expected mono audio, got {data.shape[1]} channels (run resample.py first)")
    return torch.from_numpy(data * np.float32(32768.0)), int(sampling_rate)


def load_filepaths_and_text(filename: str | os.PathLike[str], split: str = "|") -> list[list[str]]:
    """Lines of a file list split on ``split``; blank lines are skipped."""
    with open(os.fspath(filename), encoding="utf-8") as handle:
        return [line.strip().split(split) for line in handle if line.strip()]
