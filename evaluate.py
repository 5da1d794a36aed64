"""Score saved generator checkpoints with the validation metrics the trainer logs (metrics.py).

    python3 evaluate.py -m Data/mydata/models
    python3 evaluate.py -m Data/mydata/models -c Data/mydata/config.json --filelist Data/mydata/filelists/val.list
    python3 evaluate.py -m Data/mydata/models G_1000.pth G_2000.pth --force

Every complete ``G_<step>.pth`` in the folder (or the ones named) is scored on the validation list (default: the
config's ``data.validation_files``) with the same functions, seed and settings as the trainer's evaluation, so a
checkpoint gets the numbers the trainer logged at its step. Results go to ``<folder>/metrics.csv`` (a row per
checkpoint, a column per metric; written atomically), one PNG per metric against the step and ``overview.png``
(every metric in one figure) in ``<folder>/metrics/``, and the best checkpoint per metric is printed.
Checkpoints already in metrics.csv are skipped unless ``--force``, so it can run beside a training run.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import atomic_io
import metrics
import utils

logger = logging.getLogger("evaluate")

CSV_NAME = "metrics.csv"
PLOT_DIR = "metrics"
OVERVIEW_NAME = "overview.png"  # every metric in one figure (README's plot)
OVERVIEW_COLUMNS = 4
KEY_COLUMNS = ("step", "checkpoint")


# ------------------------------------------------------------------------------------------ the table


def read_table(path: Path) -> dict[int, dict[str, float]]:
    """Rows of an existing metrics.csv by step (metric columns as floats; empty cells left out)."""
    if not path.is_file():
        return {}
    rows: dict[int, dict[str, float]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                step = int(row["step"])
                rows[step] = {tag: float(value) for tag, value in row.items() if tag in metrics.METRICS and value}
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{path}:{line}: not a metrics.csv row ({err}); move the file away to rescore"
                ) from err
    return rows


def write_table(path: Path, rows: Mapping[int, Mapping[str, float]]) -> None:
    """metrics.csv: ``step, checkpoint`` and one column per metric present in any row (repr precision)."""
    tags = [tag for tag in metrics.METRICS if any(tag in row for row in rows.values())]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*KEY_COLUMNS, *tags])
    for step in sorted(rows):
        row = rows[step]
        writer.writerow([step, f"G_{step}.pth", *(repr(row[tag]) if tag in row else "" for tag in tags)])
    atomic_io.atomic_write_text(path, buffer.getvalue())


def best_steps(rows: Mapping[int, Mapping[str, float]]) -> dict[str, tuple[int, float]]:
    """Per metric, the step whose value is best in the metric's direction (ties: the earlier step)."""
    best: dict[str, tuple[int, float]] = {}
    for tag in metrics.METRICS:
        scored = [(metrics.metric_badness(tag, row[tag]), step, row[tag]) for step, row in rows.items() if tag in row]
        scored = [entry for entry in scored if math.isfinite(entry[0])]
        if scored:
            _, step, value = min(scored)
            best[tag] = (step, value)
    return best


def _series(rows: Mapping[int, Mapping[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """Per metric present in any row, its (step, value) points by step."""
    series = {tag: sorted((step, row[tag]) for step, row in rows.items() if tag in row) for tag in metrics.METRICS}
    return {tag: points for tag, points in series.items() if points}


def _draw(axes: Any, tag: str, points: Sequence[tuple[int, float]], small: bool = False) -> None:
    info = metrics.METRICS[tag]
    axes.plot([step for step, _ in points], [value for _, value in points], marker="o", markersize=3 if small else 6)
    better = f"closest to {info.target:g}" if info.better == "target" else f"{info.better} is better"
    if small:
        axes.set_title(f"{tag.removeprefix('val/')} ({info.unit}), {better}", fontsize=8)
        axes.tick_params(labelsize=7)
    else:
        axes.set_xlabel("step")
        axes.set_ylabel(f"{tag} ({info.unit})")
        axes.set_title(f"{tag}: {better}")
    axes.grid(True, alpha=0.3)


def _save(figure: Any, path: Path, dpi: int) -> Path:
    figure.tight_layout()
    with atomic_io.atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    return path


def plot_metrics(folder: Path, rows: Mapping[int, Mapping[str, float]]) -> list[Path]:
    """One PNG per metric (value against step) in ``folder``, and ``overview.png`` with every metric in a grid;
    returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    series = _series(rows)
    written = []
    for tag, points in series.items():
        figure = Figure(figsize=(6, 3.5))
        _draw(figure.subplots(), tag, points)
        written.append(_save(figure, folder / f"{tag.replace('/', '_')}.png", dpi=100))
    if series:
        columns = min(len(series), OVERVIEW_COLUMNS)
        rows_needed = math.ceil(len(series) / columns)
        figure = Figure(figsize=(3.2 * columns, 2.2 * rows_needed))
        grid = figure.subplots(rows_needed, columns, squeeze=False)
        for axes, (tag, points) in zip(grid.flat, series.items()):
            _draw(axes, tag, points, small=True)
        for axes in list(grid.flat)[len(series) :]:
            axes.set_visible(False)
        figure.supxlabel("step", fontsize=8)
        written.append(_save(figure, folder / OVERVIEW_NAME, dpi=72))
    return written


# ------------------------------------------------------------------------------------------ scoring


def checkpoints_to_score(model_dir: Path, named: Sequence[str]) -> list[tuple[int, Path]]:
    """(step, path) of the named checkpoints (names in the folder or paths), else of every ``G_<step>.pth``,
    by step; incomplete files are skipped with a warning, named ones that do not exist are an error."""
    if named:
        paths = [Path(name) if Path(name).exists() else model_dir / name for name in named]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint not found: {', '.join(missing)}")
    else:
        paths = list(model_dir.glob("G_*.pth"))
    found = []
    for path in paths:
        step = utils.checkpoint_step(path)
        if step is None:
            raise ValueError(f"{path}: no step in the file name (expected G_<step>.pth)")
        if not utils.is_complete_checkpoint(path):
            logger.warning("skipping %s: incomplete (still being written, or truncated)", path)
            continue
        found.append((step, path))
    return sorted(found)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model-dir", required=True, help="folder of the G_<step>.pth checkpoints")
    parser.add_argument("-c", "--config", help="model config JSON (default: <model-dir>/config.json)")
    parser.add_argument("--filelist", help="validation filelist (default: the config's data.validation_files)")
    parser.add_argument("checkpoints", nargs="*", help="checkpoints to score (default: every complete G_*.pth)")
    parser.add_argument("--force", action="store_true", help="rescore checkpoints already in metrics.csv")
    parser.add_argument("--device", default="cpu", help="torch device for the generator (default cpu)")
    parser.add_argument("--whisper", default="", help="local Whisper folder: adds val/cer_zh and val/cer_jp")
    parser.add_argument("--seed", type=int, default=metrics.DEFAULT_SEED, help="synthesis seed (the trainer's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from config import load_model_config
    from data_utils import TextAudioSpeakerLoader
    from infer import load_generator
    from train_runtime import configure_kernels

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise SystemExit(f"error: {model_dir} is not a folder (pass the folder of the G_*.pth checkpoints)")
    config_path = Path(args.config) if args.config else model_dir / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"error: model config {config_path} not found (pass it with -c)")
    config = load_model_config(config_path)
    filelist = args.filelist or config.data.validation_files
    if not filelist or not os.path.isfile(filelist):
        raise SystemExit(f"error: validation filelist {filelist!r} not found (pass it with --filelist)")

    table_path = model_dir / CSV_NAME
    rows = read_table(table_path)
    todo = checkpoints_to_score(model_dir, args.checkpoints)
    if not args.force:
        skipped = [step for step, _ in todo if step in rows]
        if skipped:
            logger.info("already scored (use --force to rescore): steps %s", skipped)
        todo = [(step, path) for step, path in todo if step not in rows]

    if torch.device(args.device).type == "cuda":
        configure_kernels(torch.device(args.device), config.train)  # the trainer's TF32 settings
    dataset = TextAudioSpeakerLoader(filelist, config.data)
    scorer = metrics.Scorer(config.data.sampling_rate, whisper_dir=args.whisper) if todo else None
    for step, path in todo:
        net_g, _ = load_generator(path, config_path=config_path, device=args.device, fold_weights=False)
        rows[step] = metrics.score_validation(net_g, dataset, config.data, args.device, scorer, args.seed)
        logger.info("%s: %s", path.name, format_scores(rows[step]))
        write_table(table_path, rows)  # after each checkpoint: an interrupted run keeps what it scored
    if not rows:
        logger.warning("no complete G_*.pth in %s: nothing to score", model_dir)
        return 1
    plot_metrics(model_dir / PLOT_DIR, rows)
    for tag, (step, value) in best_steps(rows).items():
        print(f"best {tag}: G_{step}.pth ({value:.4f})")
    return 0


def format_scores(scores: Mapping[str, float]) -> str:
    """``mcd 7.12, f0_rmse 310.5, ...``: one log line of metric values."""
    return ", ".join(f"{tag.removeprefix('val/')} {value:.4g}" for tag, value in scores.items())


if __name__ == "__main__":
    sys.exit(main())
