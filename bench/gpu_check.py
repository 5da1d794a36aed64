"""The GPU check behind ``bash bench/gpu_check.sh``: one run, one JSON, one printed table, within 9 minutes.

    bash bench/gpu_check.sh [--out gpu_check.json] [--batch-sizes 8 16] [--steps 2] [--budget-s 480] [--skip-tests]

Checks, in order (each named in the JSON and in any failure message); the JSON is rewritten after every section
and every measured row, so a run cut short (the device's time limit) still reports what it measured:

* ``imports``      within the first second, before torch loads: every module the GPU path needs (third-party and
                   this package's, bench and test scaffolding included) is findable; missing third-party ones are
                   installed from ``.gpu-wheels/`` into ``.gpu-site/`` when that folder is there (see below). Then,
                   after torch, this package's modules are imported for real (a renamed name fails here, at once);
* ``environment``  GPU, driver, torch, CUDA, cuDNN, NCCL, Triton (and whether it builds the MAS kernel here),
                   transformers, Python;
* ``pytest_gpu``   ``python3 -m pytest -m gpu tests/test_gpu.py`` (log beside the JSON): fp32/bf16/fp16 steps
                   finite and close, the fp16 GradScaler skipping an injected inf, fp16 MAS scores finite, CUDA
                   MAS equal to the CPU kernel, no host sync in the random draws, DDP with two ranks on one GPU
                   over gloo (and NCCL with one rank), a torchrun run on CUDA killed and resumed, and one
                   restarted by torchrun itself (--max-restarts) after a worker's SIGKILL;
* ``mas``          monotonic alignment search, ms per call at 16 x (200 x 860) and 16 x (300 x 1000): the Triton
                   kernel, the torch fallback, and the numba kernel with its host copies (the reference's way);
* ``train_step``   the official config's training step (configs/config.json, a randomly initialised
                   wavlm-base-plus-shaped WavLM) for fp32, bf16 and fp16 at each batch size: s/step of our step and
                   of the reference-like step (tests/reference_like.py: the reference's redundant WavLM passes and
                   host round trips), interleaved batch by batch over batches of several lengths (cuDNN autotuning
                   as in training), with peak memory;
* ``syncs``        per precision, host syncs per iteration of both steps counted by the CUDA profiler (stream,
                   device and event synchronisations; device-to-host and pageable host-to-device copies) and by
                   torch's sync debug mode.
* ``largest_batch`` for bf16 and fp32, without and with ``train.activation_checkpointing``: the largest batch of
                   the official config (clips of the longest ``--seconds``) whose update fits in the GPU's memory,
                   doubling from 8 until CUDA runs out of memory, with its peak allocated memory.

Sections that would not finish within ``--budget-s`` are skipped and named under ``skipped``.
Exit status: 0 when every check passed, 1 when one failed (its name is printed and stored under ``failed``),
2 when there is no CUDA device (nothing written).

A machine without network (and without librosa/soundfile) gets the wheels from a machine with network:
``python3 bench/gpu_check.py --download-wheels .gpu-wheels --python-version 3.12 --torch-version 2.11.0``
(about 40 MB, scipy being most of it) and carries the folder along; the check installs from it only what is
missing, into ``.gpu-site/``, without touching the machine's environment.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
sys.path.insert(1, str(REPO_ROOT / "tests"))  # the reference-like step (test scaffolding)

logger = logging.getLogger(__name__)

# Modules the GPU path imports beyond torch and numpy, with the distribution that provides each. The ones after
# tensorboard can be carried as wheels (--download-wheels); the first four come with a CUDA torch stack.
REQUIRED_MODULES = {
    "triton": "triton",
    "numba": "numba",
    "transformers": "transformers",
    "tensorboard": "tensorboard",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic_core",
    "annotated_types": "annotated_types",
    "typing_inspection": "typing_inspection",
    "torchaudio": "torchaudio",
    "librosa": "librosa",
    "soundfile": "soundfile",
    "cffi": "cffi",
    "pycparser": "pycparser",
    "scipy": "scipy",
    "lazy_loader": "lazy_loader",
    "decorator": "decorator",
    "joblib": "joblib",
    "msgpack": "msgpack",
    "pooch": "pooch",
    "platformdirs": "platformdirs",
    "requests": "requests",
    "urllib3": "urllib3",
    "certifi": "certifi",
    "charset_normalizer": "charset_normalizer",
    "idna": "idna",
    "soxr": "soxr",
    "audioread": "audioread",
    "pytest": "pytest",
    "pluggy": "pluggy",
    "iniconfig": "iniconfig",
    "pygments": "pygments",
}
CARRYABLE = list(REQUIRED_MODULES.values())[4:]
# This package's modules the checks import (bench and test scaffolding included), checked before torch loads.
PROJECT_MODULES = [
    "training",
    "train_runtime",
    "train_nets",
    "models",
    "monotonic_align",
    "commons",
    "config",
    "train_step",
    "reference_like",
]
MAS_SHAPES = [(200, 860), (300, 1000)]  # (text tokens, frames), batch 16
PRECISIONS = {"fp32": {}, "bf16": {"bf16_run": True}, "fp16": {"fp16_run": True}}
# Host-synchronising CUDA runtime calls, as the profiler names them (cudaDeviceSynchronize is left out: only the
# measurement itself calls it).
SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy")


class CheckFailed(Exception):
    """A named check failed; the message says what to look at."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


# ------------------------------------------------------------------------------------------------ wheels


def download_wheels(folder: Path, python_version: str, torch_version: str) -> int:
    """pip-download the carryable wheels (no dependencies resolved: the list is complete) for Linux x86_64."""
    folder.mkdir(parents=True, exist_ok=True)
    # The versions installed here (the tested ones; pydantic pins its pydantic_core exactly), torchaudio the GPU
    # machine's torch's.
    specs = [
        f"torchaudio=={torch_version}"
        if dist == "torchaudio"
        else f"{dist}=={_version(dist)}"
        if _version(dist)
        else dist
        for dist in CARRYABLE
    ]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python_version, "-d", str(folder)]
    for tag in platforms:
        command += ["--platform", tag]
    result = subprocess.run(command + specs, check=False)
    size = sum(path.stat().st_size for path in folder.glob("*.whl")) / 2**20
    print(f"{len(list(folder.glob('*.whl')))} wheels, {size:.1f} MiB in {folder}")
    return result.returncode


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def install_missing(wheels: Path, site: Path) -> list[str]:
    """Install the wheels of missing modules from ``wheels`` into ``site`` (put first on the import path)."""
    missing = [module for module in REQUIRED_MODULES if importlib.util.find_spec(module) is None]
    if not missing or not wheels.is_dir():
        return missing
    by_dist = {_normalised(path.name.split("-")[0]): path for path in wheels.glob("*.whl")}
    files = [by_dist[_normalised(REQUIRED_MODULES[m])] for m in missing if _normalised(REQUIRED_MODULES[m]) in by_dist]
    if files:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site)]
            + [str(path) for path in files],
            check=True,
        )
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        importlib.invalidate_caches()
    return [module for module in REQUIRED_MODULES if importlib.util.find_spec(module) is None]


# ------------------------------------------------------------------------------------------------ report file


class Report:
    """The JSON report, rewritten (atomically) whenever a section or a row is added."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {"checks": {}, "failed": {}, "skipped": {}, "out": str(out)}
        self.started = time.perf_counter()

    def put(self, name: str, value: Any) -> None:
        self.data["checks"][name] = value
        self.save()

    def add_row(self, name: str, row: dict[str, Any]) -> None:
        self.data["checks"].setdefault(name, []).append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def fail(self, name: str, error: str) -> None:
        self.data["failed"][name] = error
        self.save()

    def skip(self, name: str, reason: str) -> None:
        self.data["skipped"][name] = reason
        print(f"--- {name}: skipped ({reason})", flush=True)
        self.save()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        from atomic_io import atomic_write_text

        self.data["wall_s"] = round(self.elapsed(), 1)
        atomic_write_text(self.out, json.dumps(self.data, indent=2))


# ------------------------------------------------------------------------------------------------ checks


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_imports_found(wheels: Path, site: Path) -> dict[str, Any]:
    """Before torch loads (well within the first second): every needed module is findable."""
    start = time.perf_counter()
    missing = install_missing(wheels, site)
    if missing:
        dists = sorted({REQUIRED_MODULES[m] for m in missing})
        raise CheckFailed(
            "imports",
            f"missing modules {missing} (distributions {dists}). On a machine with network run "
            f"`python3 bench/gpu_check.py --download-wheels .gpu-wheels --python-version "
            f"{platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}` and carry .gpu-wheels/ here",
        )
    absent = [name for name in PROJECT_MODULES if importlib.util.find_spec(name) is None]
    if absent:
        raise CheckFailed("imports", f"this package's modules not found: {absent} (run from the repository)")
    return {
        "installed_from_wheels": sorted(p.name for p in site.glob("*.dist-info")) if site.is_dir() else [],
        "found_s": round(time.perf_counter() - start, 3),
    }


def import_project_modules() -> float:
    """Import this package's modules for real (after torch): seconds taken."""
    start = time.perf_counter()
    for name in PROJECT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise CheckFailed("imports", f"importing {name}: {type(error).__name__}: {error}") from error
    return round(time.perf_counter() - start, 2)


def check_environment() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    import monotonic_align

    props = torch.cuda.get_device_properties(0)
    driver = None
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else None
    nccl = None
    if dist.is_available() and dist.is_nccl_available():
        version = torch.cuda.nccl.version()  # a tuple in recent torch, an int in older ones
        nccl = ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)
    return {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "bf16_native": torch.cuda.is_bf16_supported(including_emulation=False),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "nccl": nccl,
        "triton": _version("triton"),
        "triton_builds_mas_kernel": monotonic_align.triton_usable(torch.device("cuda", 0)),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def check_pytest_gpu(junit: Path, log: Path, timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu``, its output streamed to ``log`` (kept if the run is cut), stopped after ``timeout_s``."""
    # -n 0: one process on the one device (the suite's default spreads test files over every core).
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-q", "-rfEs", "-p", "no:cacheprovider"]
    command += [f"--junitxml={junit}", "tests/test_gpu.py"]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise CheckFailed("pytest_gpu", f"not finished after {timeout_s:.0f} s; see {log}") from None
    seconds = time.perf_counter() - start
    output = log.read_text(encoding="utf-8", errors="replace")
    print(output[-6000:], flush=True)
    summary = (output.strip().splitlines() or [""])[-1]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    if returncode != 0:
        raise CheckFailed("pytest_gpu", f"exit {returncode}: {summary}; failing: {failed}")
    if " skipped" in summary:
        raise CheckFailed("pytest_gpu", f"tests skipped on a CUDA machine: {summary}")
    return {"summary": summary, "seconds": round(seconds, 1)}


def _random_wavlm(folder: Path) -> Path:
    """A wavlm-base-plus-shaped WavLM with random weights (the figures depend on its size, not its weights)."""
    import torch
    from transformers import WavLMConfig, WavLMModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        WavLMModel(WavLMConfig()).save_pretrained(folder)
    return folder


def _hparams(config: dict, folder: Path, name: str, **train: Any) -> Any:
    from config import load_model_config

    config = json.loads(json.dumps(config))
    config["train"].update(train)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return load_model_config(path)


def _bench_trainer(config: dict, folder: Path, name: str, device: Any, **train: Any) -> tuple[Any, Any, Any]:
    """(hps, runtime, trainer in train mode) for one measured setting, with train_ms.py's kernels for the device."""
    import torch

    import train_nets
    import train_runtime

    hps = _hparams(config, folder, name, **train)
    rt = train_runtime.Runtime(0, 0, 1, device, train_runtime.resolve_amp_dtype(hps.train, device))
    train_runtime.configure_kernels(device, hps.train)
    torch.manual_seed(hps.train.seed)
    trainer = train_nets.build_trainer(hps, rt)
    trainer.set_train_mode()
    return hps, rt, trainer


def count_syncs(step: Callable[[], Any], iterations: int) -> dict[str, float]:
    """Host syncs per call of ``step`` (already warm): the CUDA profiler's synchronising runtime calls and
    device-to-host / pageable host-to-device copies, and the syncs torch's sync debug mode reports."""
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            step()
        torch.cuda.synchronize()
    counts = {"sync_calls": 0, "device_to_host_copies": 0, "pageable_host_to_device_copies": 0}
    for event in prof.events():
        name = event.name
        if name in SYNC_CALLS:
            counts["sync_calls"] += 1
        elif name.startswith("Memcpy DtoH"):
            counts["device_to_host_copies"] += 1
        elif name.startswith("Memcpy HtoD") and "Pageable" in name:
            counts["pageable_host_to_device_copies"] += 1
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(iterations):
                step()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    counts["sync_debug_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
    return {name: round(value / iterations, 2) for name, value in counts.items()}


def check_train_step(
    config_path: Path,
    batch_sizes: list[int],
    steps: int,
    warmup: int,
    lengths_s: list[float],
    report: Report | None = None,
    deadline_s: float | None = None,
    device_name: str = "cuda",
    precisions: list[str] | None = None,
) -> list[dict]:
    """Per precision and batch size, s/step (median) and peak memory of our step and the reference-like step,
    interleaved over batches of ``lengths_s`` seconds; per precision, syncs per iteration (CUDA).

    Rows go to ``report`` as measured; a row that would start after ``deadline_s`` (seconds since the report
    started) is skipped. The config's ``model.slm.model`` is used when that folder exists, else a random
    wavlm-base-plus-shaped WavLM. ``device_name``/``precisions`` let the CPU suite run this code on a tiny config.
    """
    import torch
    import train_step as bench

    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        folder = Path(tmp)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not Path(config["model"]["slm"]["model"]).is_dir():
            config["model"]["slm"]["model"] = str(_random_wavlm(folder / "wavlm"))
        for precision in precisions or list(PRECISIONS):
            if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
                if report is not None:
                    report.skip(f"train_step {precision}", "no native bfloat16 on this GPU")
                continue
            hps, rt, trainer = _bench_trainer(config, folder, precision, device, **PRECISIONS[precision])
            for batch_size in batch_sizes:
                name = f"train_step {precision} batch {batch_size}"
                if report is not None and deadline_s is not None and report.elapsed() > deadline_s:
                    report.skip(name, f"the {deadline_s:.0f} s budget is spent")
                    continue
                batches = bench.varied_batches(hps, batch_size, lengths_s, device)
                figures = bench.compare_steps(trainer, batches, hps, rt, warmup, steps)
                row: dict[str, Any] = {"precision": precision, "batch": batch_size, "clip_seconds": lengths_s}
                for variant, measured in figures.items():
                    row[f"{variant}_s_per_step"] = round(statistics.median(measured["seconds"]), 4)
                    peak = measured["peak_gib"]
                    row[f"{variant}_peak_gib"] = round(peak, 2) if peak is not None else None
                row["ratio"] = round(row["reference_like_s_per_step"] / row["ours_s_per_step"], 3)
                rows.append(row)
                if report is not None:
                    report.add_row("train_step", row)
                if on_cuda and batch_size == batch_sizes[0]:
                    syncs = {"precision": precision, "batch": batch_size}
                    for variant, ref_like in bench.VARIANTS.items():
                        step = functools.partial(bench.step_function(ref_like), trainer, batches[0], hps, rt)
                        syncs[variant] = count_syncs(step, iterations=2)
                    if report is not None:
                        report.add_row("syncs", syncs)
                del batches
            del trainer
            if on_cuda:
                torch.cuda.empty_cache()
    return rows


def largest_fitting_batch(
    trainer: Any, hps: Any, rt: Any, seconds: float, start: int, limit: int, deadline: Callable[[], bool]
) -> tuple[int | None, float | None, int]:
    """Doubling from ``start``: the largest batch of ``seconds``-long clips whose training update fits in the
    device's memory (CUDA out-of-memory ends the search), its peak allocated GiB, and the batch tried last."""
    import torch
    import train_step as bench

    import training

    on_cuda = rt.device.type == "cuda"
    fits, peak, batch_size = None, None, start
    while batch_size <= limit and not deadline():
        out_of_memory = False
        try:
            batch = bench.synthetic_batch(hps, batch_size, seconds, torch.Generator().manual_seed(0)).to(rt.device)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(rt.device)
            training.train_update(trainer, [batch], hps, rt)
            if on_cuda:
                torch.cuda.synchronize(rt.device)
            fits = batch_size
            peak = torch.cuda.max_memory_allocated(rt.device) / 2**30 if on_cuda else None
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # the exception's frames hold the update's tensors: freed below, outside it
        batch = None
        for part in trainer.parts():
            part.optimizer.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.empty_cache()
        if out_of_memory:
            break
        batch_size *= 2
    return fits, peak, batch_size


def check_largest_batch(
    config_path: Path,
    seconds: float,
    report: Report | None = None,
    deadline_s: float | None = None,
    device_name: str = "cuda",
    precisions: tuple[str, ...] = ("bf16", "fp32"),
    start: int = 8,
    limit: int = 512,
) -> list[dict]:
    """Per precision, without and with ``train.activation_checkpointing``: the largest batch of the config that
    fits in the device's memory (``largest_fitting_batch``), as rows of the report."""
    import torch

    device = torch.device(device_name)
    rows = []

    def out_of_time() -> bool:
        return report is not None and deadline_s is not None and report.elapsed() > deadline_s

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        folder = Path(tmp)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not Path(config["model"]["slm"]["model"]).is_dir():
            config["model"]["slm"]["model"] = str(_random_wavlm(folder / "wavlm"))
        for precision in precisions:
            if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(False):
                continue
            for checkpointing in (False, True):
                name = f"largest_batch {precision} checkpointing={checkpointing}"
                if out_of_time():
                    if report is not None:
                        report.skip(name, f"the {deadline_s:.0f} s budget is spent")
                    continue
                train = dict(PRECISIONS[precision], activation_checkpointing=checkpointing)
                hps, rt, trainer = _bench_trainer(config, folder, f"{precision}-{checkpointing}", device, **train)
                fits, peak, last = largest_fitting_batch(trainer, hps, rt, seconds, start, limit, out_of_time)
                row = {
                    "precision": precision,
                    "activation_checkpointing": checkpointing,
                    "clip_seconds": seconds,
                    "largest_batch": fits,
                    "peak_gib": round(peak, 2) if peak is not None else None,
                    "tried_up_to": last,
                }
                rows.append(row)
                if report is not None:
                    report.add_row("largest_batch", row)
                del trainer
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    import torch

    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def check_mas(repeats: int, report: Report) -> list[dict]:
    import torch

    import monotonic_align

    device = torch.device("cuda", 0)
    if not monotonic_align.triton_usable(device):
        raise CheckFailed("mas", "Triton cannot build the kernel here: CUDA tensors would take the torch fallback")
    rows = []
    for t_x, t_y in MAS_SHAPES:
        generator = torch.Generator().manual_seed(0)
        neg_cent = (torch.randn(16, t_y, t_x, generator=generator) * 3.0 - 40.0).to(device)
        mask = torch.ones_like(neg_cent)
        paths = {
            "triton": monotonic_align.maximum_path_cuda(neg_cent, mask),
            "torch": monotonic_align.maximum_path_torch(neg_cent, mask),
            "numba_host": monotonic_align.maximum_path_cpu(neg_cent, mask),
        }
        differing = [name for name, path in paths.items() if not torch.equal(path, paths["numba_host"])]
        if differing:
            raise CheckFailed("mas", f"paths differ from the numba kernel at {t_x}x{t_y}: {differing}")
        row = {
            "shape": f"16x({t_x}x{t_y})",
            "triton_ms": _median_ms(lambda: monotonic_align.maximum_path(neg_cent, mask), repeats),
            "torch_ms": _median_ms(lambda: monotonic_align.maximum_path_torch(neg_cent, mask), max(3, repeats // 4)),
            "numba_host_ms": _median_ms(lambda: monotonic_align.maximum_path_cpu(neg_cent, mask), repeats),
        }
        rows.append(row)
        report.add_row("mas", row)
    return rows


# ------------------------------------------------------------------------------------------------ table


def print_table(report: dict[str, Any]) -> None:
    env = report["checks"].get("environment", {})
    print("\n=== GPU check ===")
    print(
        f"{env.get('gpu')} x{env.get('gpu_count')} (driver {env.get('driver')}), torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, NCCL {env.get('nccl')}, triton {env.get('triton')} "
        f"(builds the MAS kernel: {env.get('triton_builds_mas_kernel')}), transformers {env.get('transformers')}"
    )
    tests = report["checks"].get("pytest_gpu")
    if isinstance(tests, dict):
        print(f"pytest -m gpu: {tests['summary']} ({tests['seconds']} s)")
    rows = report["checks"].get("train_step")
    if rows:
        print(
            "\n| precision | batch | ours s/step | reference-like s/step | ratio | ours peak GiB | ref-like peak GiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['precision']} | {r['batch']} | {r['ours_s_per_step']} | {r['reference_like_s_per_step']} | "
                f"{r['ratio']} | {r['ours_peak_gib']} | {r['reference_like_peak_gib']} |"
            )
    rows = report["checks"].get("syncs")
    if rows:
        print(
            "\n| syncs per iteration | batch | ours: sync calls / DtoH / pageable HtoD / debug-mode | reference-like |"
        )
        print("|---|---|---|---|")
        for r in rows:
            cells = [
                " / ".join(str(r[v][k]) for k in ("sync_calls", "device_to_host_copies",
                                                   "pageable_host_to_device_copies", "sync_debug_warnings"))
                for v in ("ours", "reference_like")
            ]  # fmt: skip
            print(f"| {r['precision']} | {r['batch']} | {cells[0]} | {cells[1]} |")
    rows = report["checks"].get("mas")
    if rows:
        print("\n| MAS, B=16 | Triton ms | torch fallback ms | numba + host copies ms |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['shape']} | {r['triton_ms']} | {r['torch_ms']} | {r['numba_host_ms']} |")
    rows = report["checks"].get("largest_batch")
    if rows:
        print("\n| largest batch that fits | activation checkpointing | batch | peak GiB |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['precision']} | {r['activation_checkpointing']} | {r['largest_batch']} | {r['peak_gib']} |")
    for name, reason in report["skipped"].items():
        print(f"\nskipped {name}: {reason}")
    for name, error in report["failed"].items():
        print(f"\nFAILED check {name}: {error}")
    print(f"\nwall time {report.get('wall_s')} s; JSON: {report['out']}", flush=True)


def _run_check(report: Report, name: str, check: Callable[[], Any]) -> bool:
    """Run one check, store its result (or its failure) under its name; whether it passed."""
    print(f"--- {name} ({report.elapsed():.0f} s)", flush=True)
    try:
        result = check()
    except Exception as error:  # every failure is reported under the name of its check, then the next one runs
        traceback.print_exc()
        report.fail(name, str(error))
        return False
    if result is not None:
        report.put(name, result)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON report goes")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "config.json"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=2, help="timed rounds over the batch lengths per figure")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (every shape tuned once)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5.0, 6.5, 8.0], help="clip lengths")
    parser.add_argument("--mas-repeats", type=int, default=20)
    # A training-step row starts only before this many seconds; the longest row (official config, batch 16, with
    # cuDNN tuning its shapes) takes well under a minute, so the run ends within 9 minutes.
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no measurement after this")
    parser.add_argument("--pytest-timeout-s", type=float, default=240.0)
    parser.add_argument("--skip-tests", action="store_true", help="skip pytest -m gpu")
    parser.add_argument("--wheels", default=str(REPO_ROOT / ".gpu-wheels"))
    parser.add_argument("--site", default=str(REPO_ROOT / ".gpu-site"))
    parser.add_argument("--download-wheels", metavar="FOLDER", help="only download the carryable wheels and exit")
    parser.add_argument("--python-version", default=".".join(platform.python_version_tuple()[:2]))
    parser.add_argument("--torch-version", default="2.11.0", help="the GPU machine's torch (torchaudio must match)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.WARNING)
    if args.download_wheels:
        return download_wheels(Path(args.download_wheels), args.python_version, args.torch_version)

    started = time.perf_counter()
    try:
        found = check_imports_found(Path(args.wheels), Path(args.site))
        failure = None
    except CheckFailed as error:
        found, failure = None, str(error)
    print(f"--- imports found in {time.perf_counter() - started:.2f} s: {failure or 'all'}", flush=True)

    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "this check needs an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2

    out = Path(args.out).resolve()
    report = Report(out)
    report.started = started
    if failure is not None:
        report.fail("imports", failure)
    else:
        report.put("imports", found)
        if _run_check(report, "imports", lambda: {**found, "imported_s": import_project_modules()}):
            _run_checks(report, args, out)
    print_table(report.data)
    if report.data["failed"]:
        print(f"gpu_check FAILED: {', '.join(report.data['failed'])}", file=sys.stderr)
        return 1
    return 0


def _run_checks(report: Report, args: argparse.Namespace, out: Path) -> None:
    if not _run_check(report, "environment", check_environment):
        return
    if args.skip_tests:
        report.skip("pytest_gpu", "--skip-tests")
    else:
        timeout = min(args.pytest_timeout_s, args.budget_s - report.elapsed() - 60)
        junit, log = out.with_suffix(".junit.xml"), out.with_suffix(".pytest.log")
        _run_check(report, "pytest_gpu", lambda: check_pytest_gpu(junit, log, timeout))
    _run_check(report, "mas", lambda: check_mas(args.mas_repeats, report) and None)
    if report.elapsed() > args.budget_s:
        report.skip("train_step", f"the {args.budget_s:.0f} s budget is spent")
        return
    _run_check(
        report,
        "train_step",
        lambda: (
            check_train_step(
                Path(args.config), args.batch_sizes, args.steps, args.warmup, args.seconds, report, args.budget_s
            )
            and None
        ),
    )
    if report.elapsed() > args.budget_s:
        report.skip("largest_batch", f"the {args.budget_s:.0f} s budget is spent")
        return
    _run_check(
        report,
        "largest_batch",
        lambda: check_largest_batch(Path(args.config), max(args.seconds), report, args.budget_s) and None,
    )


if __name__ == "__main__":
    sys.exit(main())
