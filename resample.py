"""Resample raw recordings to the training sampling rate: mono, 16-bit PCM wav, same folder layout.

Every audio file under ``--in_dir`` (wav, flac, ogg, mp3) becomes ``<out_dir>/<same relative path>.wav``.
Defaults come from the ``resample`` section of ``config.yml`` (paths relative to ``dataset_path``)::

    python resample.py                                   # as configured
    python resample.py --sr 22050 --in_dir raw --out_dir wavs --processes 2

Outputs newer than their source are skipped unless ``--force``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import atomic_io

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    sampling_rate: int


def find_jobs(in_dir: Path, out_dir: Path, sampling_rate: int, force: bool = False) -> list[Job]:
    """One job per audio file under ``in_dir`` whose output is missing or older than the source."""
    jobs = []
    for source in sorted(in_dir.rglob("*")):
        if not source.is_file() or source.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        target = (out_dir / source.relative_to(in_dir)).with_suffix(".wav")
        if not force and target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
            continue
        jobs.append(Job(source, target, sampling_rate))
    return jobs


def resample_one(job: Job) -> Path:
    """Load at the target rate (librosa mixes down to mono), write 16-bit PCM; returns the output path."""
    import librosa
    import soundfile

    audio, _ = librosa.load(job.source, sr=job.sampling_rate, mono=True)
    job.target.parent.mkdir(parents=True, exist_ok=True)
    # Atomic so an interrupted run never leaves a truncated wav that looks up to date.
    with atomic_io.atomic_path(job.target) as tmp:
        soundfile.write(tmp, audio, job.sampling_rate, subtype="PCM_16", format="WAV")
    return job.target


def resample_all(jobs: Sequence[Job], processes: int = 1, show_progress: bool = True) -> list[Path]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="resample", unit="file", disable=not show_progress)
    written = []
    with bar:
        if processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                written.append(resample_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=processes) as pool:
                for path in pool.map(resample_one, jobs, chunksize=4):
                    written.append(path)
                    bar.update()
    return written


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sr", type=int, help="target sampling rate in Hz (default: resample.sampling_rate)")
    parser.add_argument("--in_dir", "--in-dir", dest="in_dir", help="folder of raw audio (default: resample.in_dir)")
    parser.add_argument("--out_dir", "--out-dir", dest="out_dir", help="output folder (default: resample.out_dir)")
    parser.add_argument("--processes", type=int, default=0, help="worker processes (default: CPU count - 1)")
    parser.add_argument("--force", action="store_true", help="redo files whose output is already up to date")
    parser.add_argument("--yml", help="global settings file (default: $BV2_CONFIG or ./config.yml)")
    return parser.parse_args(argv)


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    if args.sr is not None and args.in_dir and args.out_dir:
        return args
    import config  # only when a default is needed, so the script also runs without config.yml

    settings = config.load_config(args.yml).resample
    args.sr = settings.sampling_rate if args.sr is None else args.sr
    args.in_dir = args.in_dir or settings.in_dir
    args.out_dir = args.out_dir or settings.out_dir
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = _fill_defaults(_parse_args(argv))
    except (FileNotFoundError, ValueError) as error:  # config.yml needed for a default and absent or invalid
        logger.error("%s", error)
        return 2
    in_dir, out_dir = Path(args.in_dir), Path(args.out_dir)
    if not in_dir.is_dir():
        logger.error("--in-dir: input folder not found: %s", in_dir)
        return 2
    if args.sr <= 0:
        logger.error("--sr: the sampling rate must be a positive number of Hz, got %s", args.sr)
        return 2
    try:
        atomic_io.check_output_target(out_dir / "resampled.wav")
    except ValueError as error:
        logger.error("--out-dir: %s", error)
        return 2
    processes = args.processes or max(1, (os.cpu_count() or 2) - 1)
    jobs = find_jobs(in_dir, out_dir, args.sr, force=args.force)
    logger.info("%d file(s) to resample to %d Hz: %s -> %s", len(jobs), args.sr, in_dir, out_dir)
    resample_all(jobs, processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
