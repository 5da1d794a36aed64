"""A tiny, fully synthetic training setup for the train_ms tests: wavs, BERT features, filelists, configs, and
helpers that run train_ms.py as a user does (``python3 train_ms.py ...`` or through ``tests/probe_run.py``).

Everything is written under a folder the test owns (``tmp_path``); nothing from the network, no BERT model, no
reference kit (the model config is the ``tiny_model_config`` fixture's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import yaml

import train_data

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_SCRIPT = Path(__file__).resolve().parent / "probe_run.py"
SAMPLING_RATE = 22050
ZH_INITIALS = ["b", "ch", "d", "g", "j", "l", "m", "sh", "x", "zh"]
ZH_FINALS = ["a", "ai", "an", "en", "i", "ong", "ou", "u"]
ZH_CHARS = "你好世界今天天气很不错"
# Kana with a consonant-vowel phone pair each, and English words with two of their ARPAbet phones.
JP_KANA = [("か", ("k", "a")), ("に", ("n", "i")), ("す", ("s", "u")), ("て", ("t", "e")), ("の", ("n", "o"))]
EN_WORDS = [("the", ("dh", "ah")), ("boat", ("b", "ow")), ("lake", ("l", "ey")), ("green", ("g", "iy"))]


def _wave(index: int, seconds: float) -> np.ndarray:
    """A gliding tone with a harmonic and a little noise, within ±0.6 (deterministic per index)."""
    rng = np.random.default_rng(1000 + index)
    t = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    f0 = 120 + 15 * index + 60 * t
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLING_RATE
    wave = 0.35 * np.sin(phase) + 0.15 * np.sin(2 * phase) + 0.01 * rng.standard_normal(t.size)
    return (wave * np.hanning(t.size) ** 0.1).astype(np.float32)


def make_dataset(
    folder: Path, n_train: int = 4, n_val: int = 1, n_speakers: int = 4, val_languages: Sequence[str] = ("ZH",)
) -> dict[str, str]:
    """Write n_train + n_val clips (16-bit wav, 0.5-0.85 s), their .bert.pt and the two filelists; the training
    clips are Chinese, the validation clips take ``val_languages`` in turn (ZH, EN or JP phones and text)."""
    wav_dir = folder / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    generator = torch.Generator().manual_seed(7)
    for index in range(n_train + n_val):
        seconds = 0.5 + 0.05 * (index % 8)
        path = wav_dir / f"clip{index:02d}.wav"
        soundfile.write(path, _wave(index, seconds), SAMPLING_RATE, subtype="PCM_16")
        language = "ZH" if index < n_train else val_languages[(index - n_train) % len(val_languages)]
        text, phones, tones, word2ph = _transcript(index, language)
        # After blank insertion the clip has 2n + 1 phones; the BERT features cover those.
        bert = torch.randn(1024, 2 * len(phones) + 1, generator=generator) * 0.1
        torch.save(bert, path.with_suffix(".bert.pt"))
        speaker = f"spk{index % n_speakers}"
        lines.append(
            f"{path}|{speaker}|{language}|{text}|{' '.join(phones)}|{' '.join(map(str, tones))}|"
            + " ".join(map(str, word2ph))
        )
    train_list, val_list = folder / "train.list", folder / "val.list"
    train_list.write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    val_list.write_text("\n".join(lines[n_train:]) + "\n", encoding="utf-8")
    return {"training_files": str(train_list), "validation_files": str(val_list)}


def _transcript(index: int, language: str) -> tuple[str, list[str], list[int], list[int]]:
    """Text, phones, tones and word2ph of clip ``index`` in ``language``, like the front ends: "_" at both ends,
    two phones per character (ZH, JP) or word (EN), and one word2ph entry per unit plus two for [CLS]/[SEP]."""
    n_units = 3 + index % 3
    if language == "ZH":
        units = [ZH_CHARS[(index + k) % len(ZH_CHARS)] for k in range(n_units)]
        pairs = [
            (ZH_INITIALS[(index + k) % len(ZH_INITIALS)], ZH_FINALS[(index + 2 * k) % len(ZH_FINALS)])
            for k in range(n_units)
        ]
        unit_tones = [1 + (index + k) % 5 for k in range(n_units)]
    elif language == "JP":
        units = [JP_KANA[(index + k) % len(JP_KANA)][0] for k in range(n_units)]
        pairs = [JP_KANA[(index + k) % len(JP_KANA)][1] for k in range(n_units)]
        unit_tones = [(index + k) % 2 for k in range(n_units)]
    elif language == "EN":
        units = [EN_WORDS[(index + k) % len(EN_WORDS)][0] for k in range(n_units)]
        pairs = [EN_WORDS[(index + k) % len(EN_WORDS)][1] for k in range(n_units)]
        unit_tones = [1 + (index + k) % 3 for k in range(n_units)]
    else:
        raise ValueError(f"no tiny transcript for language {language!r}")
    phones, tones = ["_"], [0]
    for pair, tone in zip(pairs, unit_tones):
        phones += list(pair)
        tones += [tone] * 2
    phones.append("_")
    tones.append(0)
    separator = " " if language == "EN" else ""
    return separator.join(units), phones, tones, [1] + [2] * n_units + [1]


def tiny_config(model_config: dict, filelists: dict[str, str], **train: Any) -> dict:
    """A copy of ``model_config`` with a shorter segment, the tiny filelists and the given train settings."""
    config = json.loads(json.dumps(model_config))
    config["data"].update(filelists)
    config["train"].update(
        {
            "segment_size": 2048,
            "batch_size": 2,
            "log_interval": 10,
            "eval_interval": 10,
            "epochs": 1000,
            "skip_optimizer": False,
        }
    )
    config["train"].update(train)
    return config


def write_run_files(
    folder: Path, config: dict, keep_ckpts: int = 8, port: int | None = None, **train_ms: Any
) -> dict[str, Path]:
    """config.json and a config.yml (``train_ms`` settings overridden by the keywords) for a run in ``folder``;
    returns the paths and the dataset folder."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    yml = yaml.safe_load((REPO_ROOT / "config.yml").read_text(encoding="utf-8"))
    yml["dataset_path"] = str(folder)
    yml["train_ms"].update({"keep_ckpts": keep_ckpts, "num_workers": 0, "spec_cache": False, **train_ms})
    yml["train_ms"]["env"]["MASTER_PORT"] = port or free_port()
    yml_path = folder / "config.yml"
    yml_path.write_text(yaml.safe_dump(yml), encoding="utf-8")
    return {"config": config_path, "yml": yml_path, "dataset": folder, "model_dir": folder / "models"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "BV2_CONFIG"):
        env.pop(name, None)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"})
    return env


def train_command(files: dict[str, Path], *extra: str, probe: bool = False) -> list[str]:
    """``python3 train_ms.py ...`` (or the same arguments through tests/probe_run.py) for a tiny CPU run."""
    script = str(PROBE_SCRIPT) if probe else "train_ms.py"
    return [sys.executable, script, *train_args(files, *extra)]


def train_args(files: dict[str, Path], *extra: str) -> list[str]:
    return [
        "-c",
        str(files["config"]),
        "-m",
        str(files["dataset"]),
        "-y",
        str(files["yml"]),
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--threads",
        "1",
        *extra,
    ]


def probe_env(probe_dir: Path | None, pause: str | None = None) -> dict[str, str]:
    """The environment of a run, watched by tests/probe_run.py when ``probe_dir`` is given."""
    env = subprocess_env()
    if probe_dir is not None:
        env["BV2_PROBE_DIR"] = str(probe_dir)
    if pause is not None:
        env["BV2_PROBE_PAUSE"] = pause
    return env


def run_training(
    files: dict[str, Path], *extra: str, timeout: float = 900, probe_dir: Path | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_command(files, *extra, probe=probe_dir is not None),
        cwd=REPO_ROOT,
        env=probe_env(probe_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"train_ms.py exited with {result.returncode}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def start_training(
    files: dict[str, Path], *extra: str, log_path: Path, probe_dir: Path | None = None, pause: str | None = None
) -> subprocess.Popen:
    """Start a run in its own session (so a signal can reach the whole process group), output to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - the child keeps its own copy
    try:
        return subprocess.Popen(
            train_command(files, *extra, probe=probe_dir is not None),
            cwd=REPO_ROOT,
            env=probe_env(probe_dir, pause),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    finally:
        handle.close()


def wait_paused(probe_dir: Path, process: subprocess.Popen, rank: int = 0, timeout: float = 900) -> str:
    """Wait until the probed run holds at its pause point; returns where (e.g. ``"infer"``)."""
    marker = probe_dir / f"paused.{rank}"
    wait_for(marker.exists, timeout=timeout, process=process, what=f"the pause ({marker})")
    return json.loads(marker.read_text(encoding="utf-8"))["at"]


def release(probe_dir: Path) -> None:
    (probe_dir / "release").touch()


def wait_for(predicate, timeout: float, process: subprocess.Popen | None = None, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"training exited with {process.returncode} before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the run's whole process group (torchrun and its workers alike) and reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    process.wait(timeout=120)


def load_model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_batch(hps: Any, rt: Any, epoch: int = 1) -> Any:
    """The first training batch of ``epoch`` as train_ms.py's loader yields it (no workers)."""

    loader, batches = train_data.build_train_loader(hps, rt, num_workers=0)
    batches.start_epoch(epoch)
    return next(iter(loader))
