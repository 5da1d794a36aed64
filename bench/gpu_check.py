"""The GPU check behind ``bash bench/gpu_check.sh``: one run, one JSON, one printed table.

    bash bench/gpu_check.sh [--out gpu_check.json] [--batch-sizes 8 16] [--steps 5] [--skip-tests]

Checks, in order (each named in the JSON and in any failure message):

* ``environment``  GPU, driver, torch, CUDA, cuDNN, Triton, transformers, Python;
* ``imports``      the modules the GPU path needs beyond torch (librosa, soundfile, torchaudio, ...). Missing ones
                   are installed from ``.gpu-wheels/`` into ``.gpu-site/`` when that folder is there (see below);
* ``pytest_gpu``   ``python3 -m pytest -m gpu tests/test_gpu.py``: fp32/bf16/fp16 steps finite and close, the
                   fp16 GradScaler skipping an injected inf, CUDA MAS equal to the CPU kernel, a torchrun run
                   on CUDA (nccl with two GPUs) killed and resumed;
* ``train_step``   the official config's training step (configs/config.json, a randomly initialised
                   wavlm-base-plus-shaped WavLM) in s/step at each batch size for fp32, bf16 and fp16, with peak
                   memory, side by side with the reference-like step (bench/train_step.py) in the same run;
* ``mas``          monotonic alignment search on CUDA, ms per call at 16 x (200 x 860) and 16 x (300 x 1000):
                   the Triton kernel, the torch fallback and the numba kernel with its host copies.

Exit status: 0 when every check passed, 1 when one failed (its name is printed and stored under ``failed``),
2 when there is no CUDA device.

A machine without network (and without librosa/soundfile) gets the wheels from a machine with network:
``python3 bench/gpu_check.py --download-wheels .gpu-wheels --python-version 3.12 --torch-version 2.11.0``
(about 40 MB, scipy being most of it) and carries the folder along; the check installs from it only what is
missing, into ``.gpu-site/``, without touching the machine's environment.
"""

from __future__ import annotations

import argparse
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

logger = logging.getLogger(__name__)

# Modules the GPU path imports beyond torch and numpy, with the distribution that provides each. The ones after
# tensorboard can be carried as wheels (--download-wheels); the first four come with a CUDA torch stack.
REQUIRED_MODULES = {
    "triton": "triton",
    "numba": "numba",
    "transformers": "transformers",
    "tensorboard": "tensorboard",
    "yaml": "pyyaml",
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
MAS_SHAPES = [(200, 860), (300, 1000)]  # (text tokens, frames), batch 16
PRECISIONS = {"fp32": {}, "bf16": {"bf16_run": True}, "fp16": {"fp16_run": True}}


class CheckFailed(Exception):
    """A named check failed; the message says what to look at."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check


# ------------------------------------------------------------------------------------------------ wheels


def download_wheels(folder: Path, python_version: str, torch_version: str) -> int:
    """pip-download the carryable wheels (no dependencies resolved: the list is complete) for Linux x86_64."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [f"torchaudio=={torch_version}" if dist == "torchaudio" else dist for dist in CARRYABLE]
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


# ------------------------------------------------------------------------------------------------ checks


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_environment() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    driver = None
    if shutil.which("nvidia-smi"):
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else None
    return {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def check_imports(wheels: Path, site: Path) -> dict[str, Any]:
    missing = install_missing(wheels, site)
    if missing:
        dists = sorted({REQUIRED_MODULES[m] for m in missing})
        raise CheckFailed(
            "imports",
            f"missing modules {missing} (distributions {dists}). On a machine with network run "
            f"`python3 bench/gpu_check.py --download-wheels .gpu-wheels --python-version "
            f"{platform.python_version_tuple()[0]}.{platform.python_version_tuple()[1]}` and carry .gpu-wheels/ here",
        )
    return {"installed_from_wheels": sorted(p.name for p in site.glob("*.dist-info")) if site.is_dir() else []}


def check_pytest_gpu(junit: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider"]
    command += [f"--junitxml={junit}", "tests/test_gpu.py"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.M)
    if result.returncode != 0:
        raise CheckFailed("pytest_gpu", f"exit {result.returncode}: {summary}; failing: {failed}")
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


def check_train_step(
    config_path: Path,
    batch_sizes: list[int],
    steps: int,
    warmup: int,
    seconds: float,
    device_name: str = "cuda",
    precisions: list[str] | None = None,
) -> list[dict]:
    """s/step (median) and peak memory of our step and the reference-like step per precision and batch size.

    The config's ``model.slm.model`` is used when that folder exists, else a random wavlm-base-plus-shaped
    WavLM. ``device_name``/``precisions`` let the CPU suite run this code on a tiny config (no memory figures).
    """
    import torch
    import train_step as bench

    import training

    device = torch.device(device_name)
    on_cuda = device.type == "cuda"
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        folder = Path(tmp)
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not Path(config["model"]["slm"]["model"]).is_dir():
            config["model"]["slm"]["model"] = str(_random_wavlm(folder / "wavlm"))
        for precision in precisions or list(PRECISIONS):
            if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
                continue
            hps = _hparams(config, folder, precision, **PRECISIONS[precision])
            rt = training.Runtime(0, 0, 1, device, training.resolve_amp_dtype(hps.train, device))
            training.configure_kernels(device, hps.train)
            torch.manual_seed(hps.train.seed)
            trainer = training.build_trainer(hps, rt)
            trainer.set_train_mode()
            for batch_size in batch_sizes:
                batch = bench.synthetic_batch(hps, batch_size, seconds, torch.Generator().manual_seed(0)).to(device)
                row: dict[str, Any] = {"precision": precision, "batch": batch_size, "seconds_of_audio": seconds}
                for ref_like in (False, True):
                    name = "reference_like" if ref_like else "ours"
                    bench.time_steps(trainer, batch, hps, rt, ref_like, warmup)
                    if on_cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    timings = bench.time_steps(trainer, batch, hps, rt, ref_like, steps)
                    row[f"{name}_s_per_step"] = round(statistics.median(timings), 4)
                    peak = torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None
                    row[f"{name}_peak_gib"] = round(peak, 2) if peak is not None else None
                row["ratio"] = round(row["reference_like_s_per_step"] / row["ours_s_per_step"], 3)
                print(json.dumps(row))
                rows.append(row)
                del batch
            del trainer
            if on_cuda:
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


def check_mas(repeats: int) -> list[dict]:
    import torch

    import monotonic_align

    if not monotonic_align.triton_available():
        raise CheckFailed("mas", "triton is not importable: CUDA tensors would take the torch fallback")
    rows = []
    for t_x, t_y in MAS_SHAPES:
        generator = torch.Generator().manual_seed(0)
        neg_cent = (torch.randn(16, t_y, t_x, generator=generator) * 3.0 - 40.0).cuda()
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
        print(json.dumps(row))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ report


def print_table(report: dict[str, Any]) -> None:
    env = report.get("environment", {})
    print("\n=== GPU check ===")
    print(
        f"{env.get('gpu')} x{env.get('gpu_count')} (driver {env.get('driver')}), torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, triton {env.get('triton')}, "
        f"transformers {env.get('transformers')}"
    )
    tests = report["checks"].get("pytest_gpu")
    if isinstance(tests, dict):
        print(f"pytest -m gpu: {tests['summary']} ({tests['seconds']} s)")
    rows = report["checks"].get("train_step")
    if isinstance(rows, list) and rows:
        print(
            "\n| precision | batch | ours s/step | reference-like s/step | ratio | ours peak GiB | ref-like peak GiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['precision']} | {r['batch']} | {r['ours_s_per_step']} | {r['reference_like_s_per_step']} | "
                f"{r['ratio']} | {r['ours_peak_gib']} | {r['reference_like_peak_gib']} |"
            )
    rows = report["checks"].get("mas")
    if isinstance(rows, list) and rows:
        print("\n| MAS, B=16 | Triton ms | torch fallback ms | numba + host copies ms |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['shape']} | {r['triton_ms']} | {r['torch_ms']} | {r['numba_host_ms']} |")
    for name, error in report["failed"].items():
        print(f"\nFAILED check {name}: {error}")
    print(f"\nwall time {report['wall_s']} s; JSON: {report['out']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON report goes")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "config.json"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per figure (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="clip length of the synthetic batch")
    parser.add_argument("--mas-repeats", type=int, default=20)
    parser.add_argument("--skip-tests", action="store_true", help="skip pytest -m gpu")
    parser.add_argument("--wheels", default=str(REPO_ROOT / ".gpu-wheels"))
    parser.add_argument("--site", default=str(REPO_ROOT / ".gpu-site"))
    parser.add_argument("--download-wheels", metavar="FOLDER", help="only download the carryable wheels and exit")
    parser.add_argument("--python-version", default=".".join(platform.python_version_tuple()[:2]))
    parser.add_argument("--torch-version", default="2.11.0", help="the GPU machine's torch (torchaudio must match)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.download_wheels:
        return download_wheels(Path(args.download_wheels), args.python_version, args.torch_version)

    import torch

    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "this check needs an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2

    started = time.perf_counter()
    out = Path(args.out).resolve()
    report: dict[str, Any] = {"checks": {}, "failed": {}, "out": str(out)}
    checks: list[tuple[str, Callable[[], Any]]] = [
        ("environment", check_environment),
        ("imports", lambda: check_imports(Path(args.wheels), Path(args.site))),
    ]
    if not args.skip_tests:
        checks.append(("pytest_gpu", lambda: check_pytest_gpu(out.with_suffix(".junit.xml"))))
    checks += [
        (
            "train_step",
            lambda: check_train_step(Path(args.config), args.batch_sizes, args.steps, args.warmup, args.seconds),
        ),
        ("mas", lambda: check_mas(args.mas_repeats)),
    ]
    for name, check in checks:
        print(f"--- {name}", flush=True)
        try:
            result = check()
        except Exception as error:  # every failure is reported under the name of its check
            traceback.print_exc()
            report["failed"][name] = str(error)
            if name in ("environment", "imports"):
                break  # nothing after them can run
            continue
        if name == "environment":
            report["environment"] = result
        else:
            report["checks"][name] = result
    report["wall_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    tmp.replace(out)
    print_table(report)
    if report["failed"]:
        print(f"gpu_check FAILED: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
