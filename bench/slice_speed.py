"""Slicing speed: seconds of audio sliced per second of wall time, and the VAD model choice behind it.

Run from the repo root:  python3 bench/slice_speed.py [--minutes 5] [--processes 1 2]

Builds long recordings from the demo corpus (every clip of a speaker in turn, 0.4-2 s silences over a noise
floor, one file per speaker), then times ``slice.slice_all`` end to end (read, VAD, split, loudness, write) with
each number of processes. Beside it, on the same audio and in the same run, the speech probabilities alone
through silero-vad's two bundled models, ONNX (what slice.py uses) and TorchScript, taking turns, as CPU time:
on a shared machine wall time follows the neighbours' load more than our code.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import slice as slicer  # noqa: E402

DEMO_RAW = REPO_ROOT / "demo" / "raw"


def build_recordings(raw: Path, minutes: float, seed: int = 0) -> float:
    """One long file per demo speaker, repeating its clips until ``minutes`` in all; returns the seconds."""
    rng = np.random.default_rng(seed)
    speakers = sorted(p for p in DEMO_RAW.iterdir() if p.is_dir())
    per_speaker = minutes * 60 / len(speakers)
    total = 0.0
    for folder in speakers:
        clips = [soundfile.read(f, dtype="float32") for f in sorted(folder.glob("*.flac"))]
        rate = clips[0][1]
        parts, length, i = [], 0, 0
        while length < per_speaker * rate:
            audio = clips[i % len(clips)][0]
            silence = np.zeros(int(rng.uniform(0.4, 2.0) * rate), dtype=np.float32)
            parts += [audio, silence]
            length += len(audio) + len(silence)
            i += 1
        recording = np.concatenate(parts)
        recording += rng.standard_normal(len(recording)).astype(np.float32) * 10 ** (-55 / 20)
        (raw / folder.name).mkdir(parents=True)
        soundfile.write(raw / folder.name / "long.flac", recording, rate)
        total += len(recording) / rate
    return total


def time_slicing(raw: Path, work: Path, processes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one slice_all run; the CPU figure is only meaningful for one
    process (it is the one a busy shared machine distorts least)."""
    out = work / f"out-{processes}"
    wall, cpu = time.perf_counter(), time.process_time()
    slicer.slice_all(raw, out, slicer.Settings(), processes=processes, show_progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    shutil.rmtree(out)
    return wall, cpu


def time_vad_models(raw: Path, rounds: int) -> dict[str, float]:
    """Least CPU seconds over ``rounds`` (the models taking turns) to compute every file's speech probabilities."""
    import torch

    silero = slicer._silero()
    audio16k = []
    for path in sorted(raw.rglob("*.flac")):
        audio, rate = soundfile.read(path, dtype="float32")
        audio16k.append(torch.from_numpy(slicer.resample(audio, rate, slicer.VAD_RATE)))
    models = {"onnx": silero.load_silero_vad(onnx=True), "torchscript": silero.load_silero_vad(onnx=False)}
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            start = time.process_time()
            with torch.no_grad():
                for audio in audio16k:
                    model.audio_forward(audio, slicer.VAD_RATE)
            best[name] = min(best[name], time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="audio to build and slice")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="turns of each VAD model (the least is kept)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_recordings(work / "warm-up", 0.2)
        time_slicing(work / "warm-up", work, 1)  # imports and the model load are not what is measured
        seconds = build_recordings(work / "raw", args.minutes)
        print(f"audio: {seconds:.0f} s in {len(list((work / 'raw').rglob('*.flac')))} files")
        for processes in args.processes:
            wall, cpu = time_slicing(work / "raw", work, processes)
            line = f"slice.py, {processes} process(es): {wall:.1f} s wall -> {seconds / wall:.1f} s of audio per second"
            if processes == 1:
                line += f"; {cpu:.1f} s CPU -> {seconds / cpu:.1f} s of audio per CPU second"
            print(line)
        vad = time_vad_models(work / "raw", args.rounds)
        print(
            f"VAD alone, 1 thread, least CPU of {args.rounds}: ONNX {seconds / vad['onnx']:.1f} s/s, TorchScript "
            f"{seconds / vad['torchscript']:.1f} s/s (TorchScript / ONNX CPU time: {vad['torchscript'] / vad['onnx']:.2f})"
        )


if __name__ == "__main__":
    main()
