"""Compute the BERT features of every utterance: ``clip.bert.pt`` [1024, phones] beside each ``clip.wav``.

The phone count is the one the training loader sees (after blank insertion when ``data.add_blank``), and every
file is checked against it; a mismatch names the file and line. Files that already exist with the right shape
are skipped unless ``--force``.

    python bert_gen.py                                        # lists named by the model config of config.yml
    python bert_gen.py --config Data/demo/config.json --bert-dir /models/bert --num-processes 1 --device cpu
    python bert_gen.py --bert-dir ZH=bert/chinese-roberta-wwm-ext-large --bert-dir EN=bert/deberta-v3-large ...

Defaults come from the ``bert_gen`` section of ``config.yml`` (paths relative to ``dataset_path``). Nothing is
downloaded: BERT models are read from local folders (``--bert-dir ROOT`` holding each language's model under its
usual name, ``--bert-dir LANG=DIR`` for one language, or the text package's default location under ``bert/``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import config
from text.bert_features import add_bert_dir_argument, parse_bert_dirs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    where: str  # file:line
    line: str


@dataclass(frozen=True)
class Result:
    where: str
    status: str  # "written", "skipped" or "error"
    message: str = ""


@dataclass(frozen=True)
class Settings:
    add_blank: bool
    device: str
    bert_dirs: Mapping[str, str]
    force: bool


def loader_view(phones: Sequence[str], tones: Sequence[int], language: str, word2ph: Sequence[int], add_blank: bool):
    """(phone count, word2ph) exactly as TextAudioSpeakerLoader.get_text will see them."""
    import commons
    from data_utils import blanked_word2ph
    from text import cleaned_text_to_sequence

    phone_ids, _, _ = cleaned_text_to_sequence(list(phones), list(tones), language)
    if add_blank:
        return len(commons.intersperse(phone_ids, 0)), blanked_word2ph(word2ph)
    return len(phone_ids), list(word2ph)


def _existing_shape(path: Path) -> tuple[int, ...] | None:
    import torch

    try:
        features = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    return tuple(features.shape) if isinstance(features, torch.Tensor) else None


def _save_atomic(tensor, path: Path) -> None:
    import torch

    import atomic_io

    with atomic_io.atomic_write(path, "wb") as handle:
        torch.save(tensor, handle)


def process_line(job: Job, settings: Settings) -> Result:
    """Write (or keep) one utterance's features; every expected failure comes back as an error Result."""
    from data_utils import bert_path_for, parse_filelist_line
    from text import get_bert

    try:
        entry = parse_filelist_line(job.line, job.where)
        n_phones, word2ph = loader_view(entry.phones, entry.tones, entry.language, entry.word2ph, settings.add_blank)
    except ValueError as err:
        return Result(job.where, "error", str(err).removeprefix(f"{job.where}: "))
    if sum(word2ph) != n_phones:
        return Result(
            job.where,
            "error",
            f"sum(word2ph) = {sum(word2ph)} but the loader sees {n_phones} phones; re-clean the text",
        )
    path = bert_path_for(entry.wav)
    if not settings.force and path.is_file():
        shape = _existing_shape(path)
        if shape is not None and len(shape) == 2 and shape[1] == n_phones:
            return Result(job.where, "skipped")
    try:
        features = get_bert(
            entry.norm_text, word2ph, entry.language, settings.device, bert_dir=settings.bert_dirs.get(entry.language)
        )
    except (ValueError, AssertionError, IndexError) as err:
        return Result(job.where, "error", f"{path}: BERT failed ({type(err).__name__}: {err})")
    if features.dim() != 2 or features.shape[-1] != n_phones:
        return Result(
            job.where,
            "error",
            f"{path}: BERT features have shape {tuple(features.shape)} but the loader sees {n_phones} phones",
        )
    _save_atomic(features.detach().float().cpu().contiguous(), path)
    return Result(job.where, "written")


def read_jobs(filelists: Sequence[str]) -> list[Job]:
    jobs = []
    for filelist in filelists:
        with open(filelist, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    jobs.append(Job(f"{filelist}:{number}", line))
    # The same clip in train and val lists: compute once.
    unique: dict[str, Job] = {}
    for job in jobs:
        unique.setdefault(job.line.split("|", 1)[0], job)
    return list(unique.values())


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_job(args: tuple[Job, Settings]) -> Result:
    return process_line(*args)


def generate(
    jobs: Sequence[Job], settings: Settings, num_processes: int = 1, show_progress: bool = True
) -> list[Result]:
    """Process every job (inline for one process, else in spawned workers); results keep the job order."""
    from tqdm import tqdm

    results: list[Result] = []
    bar = tqdm(total=len(jobs), desc="bert_gen", unit="line", disable=not show_progress)
    with bar:
        if num_processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(process_line(job, settings))
                bar.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // num_processes)
            # spawn: forking a process that already holds torch thread pools (or CUDA) is unsafe.
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(num_processes, mp_context=context, initializer=_worker_init, initargs=(threads,))
            with pool:
                for result in pool.map(_run_job, [(job, settings) for job in jobs], chunksize=8):
                    results.append(result)
                    bar.update()
    return results


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write <clip>.bert.pt BERT features beside every clip.")
    parser.add_argument("filelists", nargs="*", help="cleaned filelists (default: the model config's train/val lists)")
    parser.add_argument("-c", "--config", help="model config JSON (default: bert_gen.config_path)")
    parser.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int, help="worker processes")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: bert_gen.device)")
    add_bert_dir_argument(parser)
    parser.add_argument("--force", action="store_true", help="recompute files that already have the right shape")
    parser.add_argument("--yml", help="global settings file (default: $BV2_CONFIG or ./config.yml)")
    return parser.parse_args(argv)


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Command line first, then config.yml; without a config.yml (and with --config), 1 process on "auto"."""
    if args.config and args.num_processes and args.device:
        return args
    try:  # config.yml only when a default is needed, so the script also runs without one
        settings = config.load_config(args.yml).bert_gen
    except FileNotFoundError:
        if args.yml or not args.config:
            raise
        settings = argparse.Namespace(config_path=args.config, num_processes=1, device="auto")
    args.config = args.config or settings.config_path
    args.num_processes = args.num_processes or settings.num_processes
    args.device = args.device or settings.device
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _fill_defaults(_parse_args(argv))
    try:
        data = config.load_model_config(args.config).data
        settings = Settings(
            add_blank=data.add_blank,
            device=config.resolve_device(args.device),
            bert_dirs=parse_bert_dirs(args.bert_dir),
            force=args.force,
        )
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    filelists = args.filelists or [f for f in (data.training_files, data.validation_files) if f]
    missing = [f for f in filelists if not os.path.isfile(f)]
    if missing:
        named = "given" if args.filelists else f"named by {args.config}"
        logger.error("filelist not found (%s): %s", named, ", ".join(missing))
        return 2
    jobs = read_jobs(filelists)
    try:
        results = generate(jobs, settings, args.num_processes)
    except FileNotFoundError as error:  # a BERT folder missing for a language that needs features
        logger.error("%s", error)
        return 2
    errors = [r for r in results if r.status == "error"]
    for result in errors:
        logger.error("%s: %s", result.where, result.message)
    logger.info(
        "%d written, %d up to date, %d error(s)",
        sum(r.status == "written" for r in results),
        sum(r.status == "skipped" for r in results),
        len(errors),
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
