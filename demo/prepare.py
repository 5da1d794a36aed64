"""Turn the committed demo corpus into a ready-to-train dataset folder, offline.

Steps (each is the project's own command-line tool, called in-process):

1. copy the model config template (``configs/demo.json`` or ``--config``) to ``<out>/config.json``;
2. ``resample.py``: ``demo/raw/**.flac`` -> ``<out>/wavs/**.wav`` at the config's sampling rate;
3. write ``<out>/filelists/transcription.list`` with the wav paths;
4. build one tiny random BERT per language (``text.tiny_bert``) under ``<out>/bert/`` — before cleaning,
   because English words are split by the BERT tokenizer;
5. ``preprocess_text.py``: clean, split train/val, fill in spk2id;
6. ``bert_gen.py``: ``<clip>.bert.pt`` beside every wav;
7. ``check_dataset.py`` on both lists: exit status 1 if anything is wrong.

    python demo/prepare.py                      # -> Data/demo (the path configs/demo.json trains from)
    python demo/prepare.py --out-dir /tmp/demo

The BERT features come from tiny random models and carry no linguistic information (see demo/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
REPO_ROOT = DEMO_DIR.parent
if str(REPO_ROOT) not in sys.path:  # run as `python demo/prepare.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import atomic_io  # noqa: E402 - needs the repository on sys.path

logger = logging.getLogger("demo.prepare")

TINY_BERT_SEED = 0


def read_transcription(path: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 4:
            raise ValueError(f"{path}:{number}: expected raw_path|speaker|language|text, got {len(fields)} fields")
        rows.append((fields[0], fields[1], fields[2], fields[3]))
    return rows


def write_wav_transcription(rows, wav_dir: Path, target: Path) -> None:
    """The transcription with each raw path replaced by its resampled wav."""
    lines = [
        f"{(wav_dir / raw).with_suffix('.wav').as_posix()}|{speaker}|{language}|{text}\n"
        for raw, speaker, language, text in rows
    ]
    atomic_io.atomic_write_text(target, "".join(lines))


def write_config_copy(template: Path, target: Path, train: Path, val: Path) -> None:
    """The template with its filelists pointing into the dataset folder from the start, so that the copy never
    names another dataset's lists (preprocess_text rewrites them the same way when it succeeds)."""
    model_config = json.loads(template.read_text(encoding="utf-8"))
    data = model_config.setdefault("data", {})
    data["training_files"] = train.as_posix()
    data["validation_files"] = val.as_posix()
    atomic_io.atomic_write_text(target, json.dumps(model_config, indent=2, ensure_ascii=False) + "\n")


def build_tiny_berts(rows, bert_root: Path) -> dict[str, str]:
    from text.tiny_bert import build_tiny_bert

    dirs = {}
    for language in sorted({row[2] for row in rows}):
        texts = [row[3] for row in rows if row[2] == language]
        folder = bert_root / f"tiny-{language.lower()}"
        build_tiny_bert(folder, language, seed=TINY_BERT_SEED, texts=texts)
        dirs[language] = str(folder)
    return dirs


def prepare(
    out_dir: Path,
    config_template: Path,
    raw_dir: Path = DEMO_DIR / "raw",
    transcription: Path = DEMO_DIR / "transcription.list",
    processes: int = 1,
    val_per_lang: int = 1,
    max_val_total: int = 8,
    show_progress: bool = True,
) -> int:
    """Run every step into ``out_dir``; returns the number of problems the checker found (0 = ready)."""
    import bert_gen
    import check_dataset
    import config
    import preprocess_text
    import resample

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / "config.json"
    lists = out_dir / "filelists"
    train, val = lists / "train.list", lists / "val.list"
    write_config_copy(config_template, config_path, train, val)
    data = config.load_model_config(config_path).data

    wav_dir = out_dir / "wavs"
    jobs = resample.find_jobs(raw_dir, wav_dir, data.sampling_rate)
    resample.resample_all(jobs, processes, show_progress=show_progress)

    rows = read_transcription(transcription)
    write_wav_transcription(rows, wav_dir, lists / "transcription.list")

    bert_dirs = build_tiny_berts(rows, out_dir / "bert")

    report = preprocess_text.preprocess(
        str(lists / "transcription.list"),
        str(lists / "transcription.list.cleaned"),
        str(train),
        str(val),
        str(config_path),
        val_per_lang,
        max_val_total,
        clean=True,
        bert_dirs=bert_dirs,
    )
    settings = bert_gen.Settings(add_blank=data.add_blank, device="cpu", bert_dirs=bert_dirs, force=False)
    results = bert_gen.generate(bert_gen.read_jobs([str(train), str(val)]), settings, processes, show_progress)
    for result in results:
        if result.status == "error":
            logger.error("%s: %s", result.where, result.message)

    hparams = config.load_model_config(config_path)  # now with the speaker table preprocess_text wrote
    problems = [p for f in (train, val) for p in check_dataset.check_filelist(f, hparams)]
    for problem in problems:
        logger.error("%s", problem)
    failures = len(report.problems) + sum(r.status == "error" for r in results) + len(problems)
    if failures == 0:
        logger.info("demo dataset ready in %s (model config %s)", out_dir, config_path)
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description="Prepare the demo corpus for training (offline).")
    parser.add_argument("--out-dir", type=Path, default=Path("Data/demo"), help="dataset folder to create")
    parser.add_argument(
        "--config", type=Path, default=REPO_ROOT / "configs" / "demo.json", help="model config template"
    )
    parser.add_argument("--raw-dir", type=Path, default=DEMO_DIR / "raw", help="the corpus audio")
    parser.add_argument("--transcription", type=Path, default=DEMO_DIR / "transcription.list")
    parser.add_argument("--processes", type=int, default=1, help="worker processes for resample and bert_gen")
    parser.add_argument("--val-per-lang", type=int, default=1, help="validation clips per speaker and language")
    parser.add_argument("--max-val-total", type=int, default=8)
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"model config template not found: {args.config} (pass one with --config)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny BERTs are local; never reach for the hub
    failures = prepare(
        args.out_dir,
        args.config,
        args.raw_dir,
        args.transcription,
        args.processes,
        args.val_per_lang,
        args.max_val_total,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
