"""Where a training process runs and how it is told to stop.

``init_runtime`` reads the rank and world size that ``torchrun`` sets, picks the device, joins the process group
and resolves the mixed-precision dtype once; the resulting ``Runtime`` is passed everywhere as flags (an autocast
context that is a no-op in float32, ``is_main``, ``distributed``) and carries the one cross-rank agreement
primitive, ``reduce_any``. ``configure_kernels`` sets the backend flags. ``StopRequest`` turns SIGTERM/SIGINT
into a request the loop honours after the current step (every rank learns of it through the iteration's
agreement, see ``training.py``); DataLoader workers ignore those signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from config import resolve_device

logger = logging.getLogger(__name__)

# Generous: rank 0 evaluates and writes checkpoints while the other ranks wait in the next collective.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


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

    def reduce_any(self, flags: Tensor) -> Tensor:
        """Per flag (bool or 0/1, on any device), whether it is true on at least one rank: one all-reduce (MAX)
        of them all, the result left on the device for the caller to read when it decides."""
        if not self.distributed:
            return flags
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flags = flags.to(device=device, dtype=torch.float32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags

    def any_rank(self, flags: Sequence[bool]) -> list[bool]:
        """``reduce_any`` for python flags, read back."""
        agreed = self.reduce_any(torch.tensor([bool(flag) for flag in flags]))
        return [bool(value) for value in agreed.tolist()]

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
    if bf16 and not torch.cuda.is_bf16_supported(including_emulation=False):
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
