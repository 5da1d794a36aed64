"""Seconds per training iteration (generator forward, three discriminator steps, generator step).

Times this package's step and a reference-like variant of it (WavLM run twice on the real and three times on the
generated audio, discriminator weight gradients computed during the generator step, as Bert-VITS2 2.3 does)
side by side on the same nets and batch, and prints both figures and their ratio.

    python bench/train_step.py                               # the kit's dev config, batch 2, CPU (+ CUDA)
    python bench/train_step.py --config configs/config.json --slm-model slm/wavlm-base-plus --devices cuda

The batches are synthetic (random phones and BERT features, a gliding tone as audio), so only the model config
matters. Real batches vary in length and, with cuDNN autotuning on (as in training), every new shape is tuned
once; so each round steps through batches of every ``--seconds`` length, both variants alternating batch by batch
(which goes first alternates too), after ``--warmup`` untimed rounds that have seen every shape. Each figure is
the median over ``--steps`` timed rounds of all those iterations.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference-like step (scaffolding)

import reference_like  # noqa: E402

import train_nets  # noqa: E402
import train_runtime  # noqa: E402
import training  # noqa: E402
from config import ModelConfig, load_model_config  # noqa: E402
from data_utils import Batch  # noqa: E402
from mel_processing import spectrogram_torch  # noqa: E402
from text.symbols import symbols  # noqa: E402

KIT_DIR = Path(os.environ.get("BV2_REFERENCE_KIT", Path(__file__).resolve().parents[2] / "shared" / "reference"))


def synthetic_batch(hps: ModelConfig, batch_size: int, seconds: float, generator: torch.Generator) -> Batch:
    """Phones with blanks, random BERT features, and a gliding tone with its linear spectrogram."""
    data = hps.data
    n_samples = int(seconds * data.sampling_rate) // data.hop_length * data.hop_length
    t = torch.arange(n_samples) / data.sampling_rate
    waves = torch.stack([0.4 * torch.sin(2 * torch.pi * (150 + 40 * b + 80 * t) * t) for b in range(batch_size)])
    spec = spectrogram_torch(waves, data.filter_length, data.sampling_rate, data.hop_length, data.win_length)
    n_phones = max(int(seconds * 12) * 2 + 1, 3)
    text = torch.randint(1, len(symbols), (batch_size, n_phones), generator=generator)
    text[:, ::2] = 0  # blanks, as add_blank inserts them
    full = lambda value: torch.full((batch_size,), value, dtype=torch.long)  # noqa: E731
    return Batch(
        text=text,
        text_lengths=full(n_phones),
        spec=spec,
        spec_lengths=full(spec.size(-1)),
        wav=waves.unsqueeze(1),
        wav_lengths=full(n_samples),
        sid=torch.arange(batch_size) % data.n_speakers,
        tone=torch.zeros_like(text),
        language=torch.zeros_like(text),
        bert=0.1 * torch.randn(batch_size, 1024, n_phones, generator=generator),
        ja_bert=torch.zeros(batch_size, 1024, n_phones),
        en_bert=torch.zeros(batch_size, 1024, n_phones),
    )


def step_function(ref_like: bool) -> Callable[..., Any]:
    """``train_step(trainer, batch, hps, rt)`` of the reference-like variant or of this package."""
    return reference_like.train_step if ref_like else training.train_step


def time_steps(
    trainer: train_nets.Trainer, batch: Batch, hps: ModelConfig, rt: train_runtime.Runtime, ref_like: bool, steps: int
) -> list[float]:
    step = step_function(ref_like)
    seconds = []
    for _ in range(steps):
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        start = time.perf_counter()
        step(trainer, batch, hps, rt)
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        seconds.append(time.perf_counter() - start)
    return seconds


VARIANTS = {"ours": False, "reference_like": True}


def compare_steps(
    trainer: train_nets.Trainer,
    batches: Sequence[Batch],
    hps: ModelConfig,
    rt: train_runtime.Runtime,
    warmup_rounds: int,
    rounds: int,
) -> dict[str, dict[str, Any]]:
    """Per variant: seconds of every timed iteration and (CUDA) the peak memory of any of them, in GiB.

    Interleaved batch by batch, the variant going first alternating, so drifting load and clocks affect both
    alike; every batch shape is seen by both variants in the warm-up rounds (cuDNN tunes each shape once).
    """
    on_cuda = rt.device.type == "cuda"
    figures: dict[str, dict[str, Any]] = {name: {"seconds": [], "peak_gib": None} for name in VARIANTS}
    order = list(VARIANTS)
    for round_index in range(warmup_rounds + rounds):
        for batch in batches:
            order.reverse()
            for name in order:
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats(rt.device)
                (seconds,) = time_steps(trainer, batch, hps, rt, VARIANTS[name], 1)
                if round_index < warmup_rounds:
                    continue
                figures[name]["seconds"].append(seconds)
                if on_cuda:
                    peak = torch.cuda.max_memory_allocated(rt.device) / 2**30
                    figures[name]["peak_gib"] = max(peak, figures[name]["peak_gib"] or 0.0)
    return figures


def varied_batches(hps: ModelConfig, batch_size: int, lengths_s: Sequence[float], device: torch.device) -> list[Batch]:
    """One synthetic batch per clip length, on the device."""
    return [
        synthetic_batch(hps, batch_size, seconds, torch.Generator().manual_seed(index)).to(device)
        for index, seconds in enumerate(lengths_s)
    ]


def bench_device(hps: ModelConfig, device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    rt = train_runtime.Runtime(0, 0, 1, device, train_runtime.resolve_amp_dtype(hps.train, device))
    train_runtime.configure_kernels(device, hps.train)  # the kernels train_ms.py uses on this device (cuDNN autotuning)
    torch.manual_seed(hps.train.seed)
    trainer = train_nets.build_trainer(hps, rt)
    trainer.set_train_mode()
    batches = varied_batches(hps, args.batch_size, args.seconds, device)
    figures = compare_steps(trainer, batches, hps, rt, args.warmup, args.steps)
    ours = statistics.median(figures["ours"]["seconds"])
    reference = statistics.median(figures["reference_like"]["seconds"])
    return {"ours_s_per_step": ours, "reference_like_s_per_step": reference, "speedup": reference / ours}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(KIT_DIR / "dev" / "config.json"))
    parser.add_argument(
        "--slm-model",
        default=str(KIT_DIR / "dev" / "tiny-wavlm"),
        help="WavLM folder (overrides model.slm.model of the config)",
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--seconds", type=float, nargs="+", default=[1.2, 1.5, 1.8], help="clip lengths of the synthetic batches"
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))  # as train_ms.main does

    hps = load_model_config(args.config)
    hps.model.slm.model = args.slm_model
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = {}
    for name in devices:
        device = torch.device(name)
        figures = bench_device(hps, device, args)
        results[name] = figures
        print(
            f"{name} ({torch.get_num_threads()} threads, batch {args.batch_size} of {args.seconds} s clips, "
            f"{Path(args.config).name}): "
            f"{figures['ours_s_per_step']:.3f} s/step; reference-like step "
            f"{figures['reference_like_s_per_step']:.3f} s/step; ratio {figures['speedup']:.2f}x"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
