"""Where a training process runs and how it is told to stop.

``init_runtime`` reads the rank and world size that ``torchrun`` sets, picks the device, joins the process group
and resolves the mixed-precision dtype once; the resulting ``Runtime`` is passed everywhere as flags (an autocast
context that is a no-op in float32, ``is_main``, ``distributed``) and carries the one cross-rank agreement
primitive, ``reduce_any``. ``configure_kernels`` sets the backend flags. ``StopRequest`` turns SIGTERM/SIGINT
into a request the loop honours after the current step (every rank learns of it through the iteration's
agreement, see ``training.py``); DataLoader workers ignore those signals.

Lost ranks. Every distributed operation of the loop runs inside ``Runtime.watch(operation, step)``: a rank that
waits longer than ``train_ms.process_group_timeout`` (a peer is gone or stuck) logs its rank, the step and the
operation and exits, so that ``torchrun --max-restarts`` restarts the group from the newest complete checkpoint
(checkpoint files are written atomically, the lead file last) instead of the run hanging. Each restarted group
joins under a key prefix of its own in torchrun's store (``process_group_store``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from config import resolve_device

logger = logging.getLogger(__name__)

# The exit status of a rank that gave up waiting for the others (HangGuard).
HANG_EXIT_STATUS = 3
# How much later than the HangGuard the process group's own timeout ends a blocked collective (a backstop).
BACKSTOP_MARGIN_S = 60.0


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank, its device, and the autocast dtype (None = float32)."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None = None
    guard: HangGuard | None = dataclasses.field(default=None, compare=False)

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

    def watch(self, operation: str, step: int) -> contextlib.AbstractContextManager:
        """Run a block that waits for the other ranks under the HangGuard (a no-op in a single process)."""
        if self.guard is None:
            return contextlib.nullcontext()
        return self.guard.watch(operation, step)


class HangGuard:
    """Ends this process when one distributed operation outlasts ``timeout`` seconds.

    A rank whose peer is gone or stuck otherwise waits in the collective until the process group's timeout, and
    meanwhile its main thread is inside the backend (with NCCL not even a signal handler runs). This daemon
    thread knows the operation the main thread announced; past the deadline it logs which rank waited, at which
    step and in which operation, and exits with HANG_EXIT_STATUS. An error inside a watched block is logged
    with the same three facts and re-raised.
    """

    def __init__(self, rank: int, timeout: float) -> None:
        self.rank = rank
        self.timeout = timeout
        self._changed = threading.Condition()
        self._current: tuple[str, int, float] | None = None  # operation, step, monotonic start
        threading.Thread(target=self._watch, name="hang-guard", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, operation: str, step: int) -> Iterator[None]:
        with self._changed:
            outer, self._current = self._current, (operation, step, time.monotonic())
            self._changed.notify()
        try:
            yield
        except Exception as err:
            logger.error("rank %d, step %d: %s failed: %s", self.rank, step, operation, err)
            raise
        finally:
            with self._changed:
                self._current = outer  # a nested watch hands the deadline back to the enclosing one
                self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while True:
                current = self._current
                if current is None:
                    self._changed.wait()
                    continue
                left = current[2] + self.timeout - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        operation, step, _ = current
        logger.error(
            "rank %d, step %d: %s did not finish within %g s (train_ms.process_group_timeout): another rank is "
            "gone or stuck. Exiting; torchrun --max-restarts restarts the group from the newest complete checkpoint",
            self.rank,
            step,
            operation,
            self.timeout,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(HANG_EXIT_STATUS)


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
        logger.warning(
            "mixed precision (%s) is used on CUDA only; training in float32 on %s",
            name,
            device,
        )
        return None
    if bf16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError("train.bf16_run is true but this GPU has no bfloat16 support; set fp16_run instead")
    return torch.bfloat16 if bf16 else torch.float16


def process_group_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """The store a restarted worker group can join through, when torchrun hosts it; None: plain ``env://``.

    torchrun's c10d rendezvous (and ``--standalone``) starts one TCPStore in its agent and hands every attempt of
    the worker group the same address (TORCHELASTIC_USE_AGENT_STORE=True); torch's ``env://`` then uses that
    store without a per-attempt prefix. A restarted group so finds the keys of the attempt before it: gloo
    reads a dead rank's address and fails ("connectFullMesh failed ... Connection refused"), or a rank waits on
    a stale key until the timeout. Each attempt (TORCHELASTIC_RESTART_COUNT) gets a prefix of its own here.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")):
        # The agents of several nodes can count their restarts differently (one restarts for a failure, the
        # other for the new membership), and the prefixes would then differ.
        logger.warning(
            "restarts on several nodes: start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node, so "
            "each rendezvous round gets a store of its own"
        )
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"train_ms/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_runtime(device: str, train: Any, timeout: float = 1800.0) -> Runtime:
    """Read rank and world size from the environment, pick the device, and join the process group; ``timeout``
    (seconds) bounds every wait for the other ranks (HangGuard)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = torch.device(resolve_device(device, local_rank))
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    guard = None
    if world_size > 1:
        guard = HangGuard(rank, timeout)
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        backstop = datetime.timedelta(seconds=timeout + BACKSTOP_MARGIN_S)
        with guard.watch("joining the process group", 0):
            store = process_group_store(world_size, backstop)
            if store is None:
                dist.init_process_group(backend=backend, init_method="env://", timeout=backstop)
            else:
                dist.init_process_group(
                    backend=backend,
                    store=store,
                    rank=rank,
                    world_size=world_size,
                    timeout=backstop,
                )
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Runtime(
        rank,
        local_rank,
        world_size,
        torch_device,
        resolve_amp_dtype(train, torch_device),
        guard,
    )


def configure_kernels(device: torch.device, train: Any = None) -> None:
    """Backend flags, set once per process.

    On the CPU the native convolution kernels replace oneDNN's: the first oneDNN call of a convolution in a
    process can round differently from later calls, so a resumed run would drift from an uninterrupted one.
    The native kernels are deterministic and, for this model on CPU, about as fast (bench/train_step.py).
    They replace NNPACK's too, which would take the period discriminators' unstrided convolutions at batch 16
    and up: it keeps a workspace the size of its largest call for the life of the process (1 GiB at the
    demo's batch 16, segment 8192) and is slower there than the native kernels (bench/memory.py).
    On CUDA, as the reference: cuDNN autotuning, TF32 in float32 matmuls and convolutions, and float32 matmul
    precision "medium"; ``train.allow_tf32: false`` keeps float32 math strict instead. The CPU keeps full
    float32 matmuls ("medium" could mean bf16 matmuls on some CPUs).
    """
    if device.type == "cpu":
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)
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
            logger.warning(
                "received %s again: the checkpoint is being written, exiting right after it",
                name,
            )
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
