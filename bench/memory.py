"""Peak memory and seconds of one training update, per fine-tuning option, side by side in one run.

    python bench/memory.py                                   # demo config, batch 16, segment 8192, CPU
    python bench/memory.py --config configs/config.json --slm-model slm/wavlm-base-plus --device cuda \\
        --batch-size 8 --segment-size 16384

Each variant runs in a fresh process (so a CPU figure is that process's own peak RSS, not an earlier variant's
allocations kept by the allocator), the variants alternating over ``--repeats`` rounds, each process timing
``--steps`` updates after one untimed one on the same synthetic batch (``bench/train_step.synthetic_batch``):

* ``plain``: the reference's update;
* ``checkpointing``: ``train.activation_checkpointing`` (decoder stages, flow couplings and the period/scale
  discriminators recompute their activations in backward; the discriminators keep no feature maps);
* ``accumulation``: ``train.grad_accum_steps`` 2, the same batch as two micro-batches of half the size;
* ``freeze``: ``train.freeze`` of the text encoder, duration predictors and posterior encoder (a fine-tune
  that trains flow and decoder only);
* ``all``: checkpointing, accumulation and the freeze together.

On the CPU the memory is the process's peak resident set (``ru_maxrss``), also given as the growth over the
resident set after building the nets (what the update itself costs); on CUDA, ``max_memory_allocated`` and
``max_memory_reserved`` over the updates. Step time is the median over every timed update of every round.

On the CPU, glibc's allocator keeps most freed blocks inside the process (its mmap threshold rises to 32 MiB
as blocks are freed, and a heap with live blocks above its holes cannot shrink), so the resident set also counts
freed activations the allocator has not handed back: the CUDA caching allocator's "reserved" rather than its
"allocated". ``--allocators`` runs every variant under each of:

* ``glibc``: the allocator as a training process has it;
* ``release``: ``MALLOC_MMAP_THRESHOLD_=1048576``: blocks of 1 MiB and more are mapped on their own and go
  back to the system when freed, so the peak resident set is what the update holds at its peak (plus the
  process's code and small blocks): the CPU's "allocated". Every variant pays the fresh pages' faults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "checkpointing": {"activation_checkpointing": True},
    "accumulation": {"grad_accum_steps": 2},
    "freeze": {"freeze": ["text_encoder", "duration_predictors", "posterior_encoder"]},
    "all": {
        "activation_checkpointing": True,
        "grad_accum_steps": 2,
        "freeze": ["text_encoder", "duration_predictors", "posterior_encoder"],
    },
}
GIB = 2**30
ALLOCATORS: dict[str, dict[str, str]] = {"glibc": {}, "release": {"MALLOC_MMAP_THRESHOLD_": str(2**20)}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.json"))
    parser.add_argument("--slm-model", default=None, help="WavLM folder (default: a tiny random one, as the demo's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--segment-size", type=int, default=8192)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of every synthetic clip")
    parser.add_argument("--steps", type=int, default=2, help="timed updates per process")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all variants")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (CPU)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from " + ", ".join(VARIANTS))
    parser.add_argument(
        "--allocators", default="glibc,release", help="CPU allocator settings, comma-separated, from glibc, release"
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rss_gib() -> float:
    """The resident set now (Linux ``/proc``), in GiB."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB


def measure_variant(args: argparse.Namespace, slm_dir: str) -> dict[str, Any]:
    """In this (fresh) process: build the nets with the variant's settings and time its updates."""
    import torch
    from train_step import synthetic_batch

    import train_nets
    import train_runtime
    import training
    from config import load_model_config

    if args.threads:
        torch.set_num_threads(args.threads)
    hps = load_model_config(args.config)
    hps.train.segment_size = args.segment_size
    hps.model.slm.model = slm_dir
    for key, value in VARIANTS[args.child].items():
        setattr(hps.train, key, value)
    device = torch.device(args.device)
    rt = train_runtime.Runtime(0, 0, 1, device, train_runtime.resolve_amp_dtype(hps.train, device))
    train_runtime.configure_kernels(device, hps.train)
    torch.manual_seed(hps.train.seed)
    trainer = train_nets.build_trainer(hps, rt)
    trainer.set_train_mode()
    micro = hps.train.accumulation
    batch = synthetic_batch(hps, args.batch_size, args.seconds, torch.Generator().manual_seed(0))
    batches = [type(batch)(*(t.chunk(micro)[i] for t in batch)).to(device) for i in range(micro)]
    built_rss = rss_gib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for index in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        training.train_update(trainer, batches, hps, rt)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index > 0:  # the first update allocates the optimizer state and warms the kernels
            seconds.append(time.perf_counter() - start)
    figures: dict[str, Any] = {"seconds": seconds, "built_rss_gib": built_rss}
    figures["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    if device.type == "cuda":
        figures["cuda_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        figures["cuda_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    return figures


def tiny_wavlm(folder: Path, config: str) -> str:
    """The demo's tiny random WavLM in ``folder``, in the config's slm shape."""
    import train_ms
    from config import load_model_config

    slm = load_model_config(config).model.slm
    train_ms.make_demo_wavlm(folder, slm.hidden, slm.nlayers)
    return str(folder)


def run_variant(args: argparse.Namespace, name: str, slm_dir: str, allocator: str) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", name, "--slm-model", slm_dir]
    for option in ("config", "device", "batch_size", "segment_size", "seconds", "steps", "threads"):
        value = getattr(args, option)
        if value is not None:
            argv += ["--" + option.replace("_", "-"), str(value)]
    env = {**os.environ, **ALLOCATORS[allocator]}
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per variant: median seconds per update and the largest peak of its processes."""
    table = {}
    for name, figures in runs.items():
        row = {
            "seconds": statistics.median(s for f in figures for s in f["seconds"]),
            "peak_rss_gib": max(f["peak_rss_gib"] for f in figures),
            "update_rss_gib": max(f["peak_rss_gib"] - f["built_rss_gib"] for f in figures),
        }
        for key in ("cuda_allocated_gib", "cuda_reserved_gib"):
            if key in figures[0]:
                row[key] = max(f[key] for f in figures)
        table[name] = row
    return table


def print_table(table: dict[str, dict[str, float]], args: argparse.Namespace, allocator: str) -> None:
    memory = "cuda_allocated_gib" if "cuda_allocated_gib" in table["plain"] else "peak_rss_gib"
    print(f"{args.config}, batch {args.batch_size}, segment {args.segment_size}, {args.device}, {args.seconds} s clips")
    if args.device == "cpu":
        print(f"allocator: {allocator} {ALLOCATORS[allocator]}")
    print(f"| variant | s/update | vs plain | {memory} | vs plain | update's own GiB (CPU) |")
    print("|---|---|---|---|---|---|")
    base = table["plain"]
    for name, row in table.items():
        print(
            f"| {name} | {row['seconds']:.2f} | {row['seconds'] / base['seconds'] - 1:+.0%} | {row[memory]:.2f} | "
            f"{row[memory] / base[memory] - 1:+.0%} | {row['update_rss_gib']:.2f} |"
        )


def chosen(listed: str, known: dict[str, Any], what: str) -> list[str]:
    names = [name.strip() for name in listed.split(",")]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_variant(args, args.slm_model)))
        return 0
    names = chosen(args.variants, VARIANTS, "variant")
    if "plain" not in names:
        names.insert(0, "plain")
    allocators = chosen(args.allocators, ALLOCATORS, "allocator") if args.device == "cpu" else ["glibc"]
    tables = {}
    with tempfile.TemporaryDirectory() as scratch:
        slm_dir = args.slm_model or tiny_wavlm(Path(scratch) / "wavlm", args.config)
        for allocator in allocators:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for round_index in range(args.repeats):
                for name in names if round_index % 2 == 0 else reversed(names):
                    runs[name].append(run_variant(args, name, slm_dir, allocator))
                    print(f"{allocator}, round {round_index + 1}: {name} done", file=sys.stderr, flush=True)
            tables[allocator] = {"table": summarise(runs), "runs": runs}
            print_table(tables[allocator]["table"], args, allocator)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "allocators": tables}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
