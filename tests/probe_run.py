"""Run train_ms.py as its command line does, watched from outside the production code (test scaffolding).

    python tests/probe_run.py <train_ms.py arguments>
    python -m torch.distributed.run --nproc_per_node=2 tests/probe_run.py <train_ms.py arguments>

Only public torch hooks and module attributes are used, so the training code can be refactored freely:

- ``BV2_PROBE_DIR``: each rank appends JSON lines to ``rank<r>.jsonl``: ``{"event": "opt", "optimizer": i,
  "numel", "checksum"}`` after every optimizer step (``i`` numbers the optimizers in the order they first step;
  the checksum hashes the parameters' bytes), and ``{"event": "load", "file"}`` for every ``torch.load`` of a
  file. When the run ends normally each rank also writes ``rank<r>_final.pt``: every optimizer's
  ``state_dict()`` and parameters, in the same order.
- ``BV2_PROBE_PAUSE=PHASE:N[:REGEX]`` holds the process at a known point of the run, writes
  ``paused.<rank>`` and waits until the test creates ``release`` (or kills it). PHASE is
  ``load`` (the N-th ``torch.load`` of a file whose name matches REGEX, before reading it),
  ``save`` (the N-th ``torch.save`` to a name matching REGEX, after writing half of its bytes),
  ``step`` (after the N-th optimizer step of this process, so some nets of an iteration are updated and
  others are not) or ``infer`` (the N-th ``SynthesizerTrn.infer`` call: evaluation).
- Every call of ``training.train_update`` (one update of every net, on ``train.grad_accum_steps`` micro-batches)
  is framed by ``{"event": "iteration", "edge": "start"|"end"}`` (the start names its ``micro_batches``), and
  every ``torch.distributed`` collective called from Python is logged as ``{"event": "collective", "name"}``
  (DDP's gradient buckets are reduced inside its C++ reducer, overlapping the backward, and do not show).
- ``BV2_PROBE_POISON=RANK:N``: rank RANK's N-th iteration gets NaN audio in its first micro-batch.
- ``BV2_PROBE_KILL=ATTEMPT:RANK:PHASE:N[:SIGNAL],...``: in torchrun attempt ATTEMPT (TORCHELASTIC_RESTART_COUNT),
  rank RANK sends itself SIGNAL (KILL by default; STOP leaves a rank stuck instead of gone) at the N-th event
  of PHASE: ``step`` (after its N-th optimizer step) or ``save`` (half-way through its N-th ``torch.save``).
  It first appends ``{"event": "kill", "attempt", "signal", "time"}``. Every process also starts its log with
  ``{"event": "start", "attempt", "pid", "time"}``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import runpy
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


class Probe:
    def __init__(self, folder: Path, pause: str | None) -> None:
        self.folder = folder
        self.rank = int(os.environ.get("RANK", "0"))
        self.log_path = folder / f"rank{self.rank}.jsonl"
        self.optimizers: list[Any] = []
        self.counts: dict[str, int] = {}
        self.pause_phase, self.pause_at, self.pause_pattern = None, 0, None
        self.iterations = 0
        self.attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        self.poison_rank, self.poison_at = -1, 0
        self.kill: tuple[str, int, str] | None = None  # phase, count, signal name
        self.kill_counts: dict[str, int] = {}
        for entry in filter(None, os.environ.get("BV2_PROBE_KILL", "").split(",")):
            attempt, rank, phase, count, *name = entry.split(":")
            if (int(attempt), int(rank)) == (self.attempt, self.rank):
                self.kill = (phase, int(count), name[0] if name else "KILL")
        if poison := os.environ.get("BV2_PROBE_POISON"):
            self.poison_rank, self.poison_at = (int(v) for v in poison.split(":"))
        if pause:
            phase, count, *pattern = pause.split(":", 2)
            self.pause_phase, self.pause_at = phase, int(count)
            self.pause_pattern = re.compile(pattern[0]) if pattern else None

    def write(self, **record: Any) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def reached(self, phase: str, name: str = "") -> bool:
        """Count an event of ``phase``; True when it is the one to pause at."""
        if phase != self.pause_phase or (self.pause_pattern is not None and not self.pause_pattern.search(name)):
            return False
        self.counts[phase] = self.counts.get(phase, 0) + 1
        return self.counts[phase] == self.pause_at

    def doomed(self, phase: str) -> bool:
        """Count an event of ``phase``; True when this process is to signal itself there."""
        if self.kill is None or self.kill[0] != phase:
            return False
        self.kill_counts[phase] = self.kill_counts.get(phase, 0) + 1
        return self.kill_counts[phase] == self.kill[1]

    def die(self) -> None:
        name = self.kill[2]
        self.write(event="kill", attempt=self.attempt, signal=name, time=time.time())
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))

    def hold(self, what: str) -> None:
        (self.folder / f"paused.{self.rank}").write_text(json.dumps({"at": what, "pid": os.getpid()}))
        release = self.folder / "release"
        while not release.exists():
            time.sleep(0.02)

    def install(self) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        import models

        real_load, real_save, real_infer = torch.load, torch.save, models.SynthesizerTrn.infer
        self.real_save = real_save

        def file_name(f: Any) -> str:
            if isinstance(f, (str, os.PathLike)):
                return os.path.basename(os.fspath(f))
            try:  # a file object, possibly from os.fdopen (whose name is the descriptor): ask the kernel
                return os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
            except (AttributeError, OSError, io.UnsupportedOperation):
                return os.path.basename(str(getattr(f, "name", "")))

        def load(f: Any, *args: Any, **kwargs: Any) -> Any:
            name = file_name(f)
            if name:
                self.write(event="load", file=name)
            if self.reached("load", name):
                self.hold(f"load {name}")
            return real_load(f, *args, **kwargs)

        def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            name = file_name(f)
            if self.doomed("save"):
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
                if isinstance(f, (str, os.PathLike)):
                    with open(f, "wb") as handle:
                        handle.write(half)
                else:
                    f.write(half)
                    f.flush()
                self.die()
            if not self.reached("save", name):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            if isinstance(f, (str, os.PathLike)):
                with open(f, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                self.hold(f"save {name}")
                with open(f, "wb") as handle:
                    handle.write(data)
            else:
                f.write(data[: len(data) // 2])
                f.flush()
                self.hold(f"save {name}")
                f.write(data[len(data) // 2 :])
            return None

        def infer(net: Any, *args: Any, **kwargs: Any) -> Any:
            if self.reached("infer"):
                self.hold("infer")
            return real_infer(net, *args, **kwargs)

        def after_step(optimizer: Any, _args: Any, _kwargs: Any) -> None:
            if not any(optimizer is known for known in self.optimizers):
                self.optimizers.append(optimizer)
            index = next(i for i, known in enumerate(self.optimizers) if known is optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            digest = hashlib.sha256()
            for param in params:
                digest.update(param.detach().cpu().contiguous().numpy().tobytes())
            numel = sum(p.numel() for p in params)
            self.write(event="opt", optimizer=index, numel=numel, checksum=digest.hexdigest())
            if self.doomed("step"):
                self.die()
            if self.reached("step"):
                self.hold(f"after optimizer step {self.counts['step']}")

        torch.load, torch.save, models.SynthesizerTrn.infer = load, save, infer
        register_optimizer_step_post_hook(after_step)
        self.watch_iterations()
        self.watch_collectives()

    def watch_iterations(self) -> None:
        import torch

        import training

        real_train_update = training.train_update

        def train_update(trainer: Any, batches: Any, *args: Any, **kwargs: Any) -> Any:
            self.iterations += 1
            if self.rank == self.poison_rank and self.iterations == self.poison_at:
                batches = [batches[0]._replace(wav=torch.full_like(batches[0].wav, float("nan"))), *batches[1:]]
            self.write(event="iteration", edge="start", n=self.iterations, micro_batches=len(batches))
            result = real_train_update(trainer, batches, *args, **kwargs)
            self.write(event="iteration", edge="end", n=self.iterations, skipped=result[0]["skipped"])
            return result

        training.train_update = train_update

    def watch_collectives(self) -> None:
        import torch.distributed as dist

        names = (
            "all_reduce",
            "all_gather",
            "all_gather_object",
            "broadcast",
            "broadcast_object_list",
            "barrier",
            "reduce",
            "gather",
            "gather_object",
            "scatter",
            "all_to_all",
            "reduce_scatter",
        )

        def logged(name: str, real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                self.write(event="collective", name=name)
                return real(*args, **kwargs)

            return call

        for name in names:
            if hasattr(dist, name):
                setattr(dist, name, logged(name, getattr(dist, name)))

    def write_final(self) -> None:
        final = [
            {
                "state": optimizer.state_dict(),
                "params": [p.detach().clone() for group in optimizer.param_groups for p in group["params"]],
            }
            for optimizer in self.optimizers
        ]
        self.real_save(final, self.folder / f"rank{self.rank}_final.pt")


def main(argv: list[str]) -> int:
    sys.path[0] = str(REPO_ROOT)  # the repository's modules, not this folder's
    folder = Path(os.environ["BV2_PROBE_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    probe = Probe(folder, os.environ.get("BV2_PROBE_PAUSE"))
    probe.write(event="start", attempt=probe.attempt, pid=os.getpid(), time=time.time())
    probe.install()
    sys.argv = [str(REPO_ROOT / "train_ms.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    probe.write_final()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
