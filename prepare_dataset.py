"""From raw recordings to a checked training set in one command: slice -> transcribe -> resample ->
preprocess_text -> bert_gen -> check_dataset, with the settings of config.yml.

    python3 prepare_dataset.py --raw raw --out Data/mydata --asr-model models/whisper-small --bert-dir bert
    python3 prepare_dataset.py --raw raw --out Data/mydata --asr-model whisper --language JP --bert-dir bert

``--raw`` holds one folder per speaker (``raw/<speaker>/*.wav|flac|ogg|mp3``). Everything is written under
``--out``, laid out as config.yml lays out a dataset (its paths are taken relative to ``dataset_path``)::

    <out>/config.json                       model config (copied from --config-template the first time)
    <out>/sliced/<speaker>/*.wav, slices.csv   slice.py's clips and manifest
    <out>/filelists/esd.list                transcribe.py's list (review it: python3 webui.py --dataset ...)
    <out>/audios/wavs/<speaker>/*.wav       the clips at the model's rate (resample.out_dir), with .bert.pt
    <out>/filelists/transcription.list, train.list, val.list

The run stops at the first stage that reports problems, names them, and says what to fix. Run the same command
again and it resumes at that stage (``prepare_state.json`` records the stages done; ``--redo STAGE`` starts
again from an earlier one, e.g. ``--redo transcribe`` after changing the ASR model). Edits made to esd.list
between runs are kept: transcription never runs again unless asked. At the end it prints the train_ms.py
command to run next.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import atomic_io
import config

logger = logging.getLogger(__name__)

STAGES = ("slice", "transcribe", "resample", "preprocess_text", "bert_gen", "check_dataset")
STATE_NAME = "prepare_state.json"
REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_TEMPLATE = REPO_ROOT / "configs" / "config.json"
PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class Layout:
    """Where every stage reads and writes, under ``--out``."""

    out: Path
    config: Path
    sliced: Path
    esd_list: Path
    wavs: Path
    transcription: Path
    cleaned: Path
    train: Path
    val: Path

    @classmethod
    def from_settings(cls, out: Path, yml: config.Config) -> Layout:
        def under_out(path: str) -> Path:
            """A config.yml path (already joined to dataset_path) moved under ``out``; absolute ones stay."""
            relative = os.path.relpath(path, yml.dataset_path) if yml.dataset_path else path
            return Path(relative) if os.path.isabs(relative) else out / relative

        text = yml.preprocess_text
        transcription = under_out(text.transcription_path)
        cleaned = under_out(text.cleaned_path) if text.cleaned_path else Path(f"{transcription}.cleaned")
        return cls(
            out=out,
            config=under_out(text.config_path),
            sliced=out / "sliced",
            esd_list=transcription.parent / "esd.list",
            wavs=under_out(yml.resample.out_dir),
            transcription=transcription,
            cleaned=cleaned,
            train=under_out(text.train_path),
            val=under_out(text.val_path),
        )


@dataclass(frozen=True)
class SliceOptions:
    """slice.Settings' fields; ``max_seconds`` None: the longest clip the model config's buckets take."""

    min_seconds: float
    max_seconds: float | None
    min_silence: float
    pad: float
    loudness: float


@dataclass(frozen=True)
class Options:
    raw: Path
    asr_model: Path
    bert_dirs: dict[str, str]
    language: str
    device: str
    processes: int
    slice_settings: SliceOptions
    yml: config.Config


Stage = Callable[[Layout, Options], list[str]]


# ---------------------------------------------------------------------------------------------------- the state


def read_state(layout: Layout) -> list[str]:
    path = layout.out / STATE_NAME
    if not path.is_file():
        return []
    try:
        done = json.loads(path.read_text(encoding="utf-8"))["completed"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a prepare_dataset state file ({error}); delete it to start over") from error
    return [stage for stage in STAGES if stage in done]


def write_state(layout: Layout, done: Sequence[str]) -> None:
    atomic_io.atomic_write_text(layout.out / STATE_NAME, json.dumps({"completed": list(done)}, indent=2) + "\n")


def stages_to_run(done: Sequence[str], redo: str | None) -> list[str]:
    """The stages after the last one done in order (or from ``redo``), up to the end."""
    first = 0
    while first < len(STAGES) and STAGES[first] in done:
        first += 1
    if redo is not None:
        first = min(first, STAGES.index(redo))
    return list(STAGES[first:])


# ------------------------------------------------------------------------------------------------------- stages


def longest_clip_seconds(model_config: Path) -> float:
    """The longest clip the training buckets take (check_dataset refuses longer ones), a little under."""
    from data_utils import DEFAULT_BUCKET_BOUNDARIES

    data = config.load_model_config(model_config).data
    seconds = DEFAULT_BUCKET_BOUNDARIES[-1] * data.hop_length / data.sampling_rate
    return math.floor((seconds - 0.05) * 10) / 10


def run_slice(layout: Layout, options: Options) -> list[str]:
    import slice as slicer

    settings = options.slice_settings
    if settings.max_seconds is None:  # not given: as long as the training buckets allow
        settings = replace(settings, max_seconds=longest_clip_seconds(layout.config))
        logger.info("clips up to %g s (the longest training bucket)", settings.max_seconds)
    slicer.slice_all(options.raw, layout.sliced, slicer.Settings(**vars(settings)), options.processes)
    rows = slicer.read_manifest(layout.sliced / slicer.MANIFEST_NAME)
    problems = [f"{options.raw / row.source}: {row.note}" for row in rows if row.status == "failed"]
    if not problems and not any(row.status == "written" for row in rows):
        problems.append(f"no speech found in any recording under {options.raw} (see {layout.sliced / 'slices.csv'})")
    return problems


def run_transcribe(layout: Layout, options: Options) -> list[str]:
    import transcribe

    clips = transcribe.find_clips(layout.sliced)
    recogniser = transcribe.Recogniser(options.asr_model, options.device)
    outcome = transcribe.transcribe_clips(clips, recogniser, options.language)
    report = transcribe.write_outputs(outcome, layout.esd_list)
    if outcome.empty:
        logger.warning("%d clip(s) with no recognised text are left out (listed in %s)", len(outcome.empty), report)
    problems = [f"{clip.path}: unreadable ({reason})" for clip, reason in outcome.unreadable]
    if not problems and not outcome.transcripts:
        problems.append(f"no clip under {layout.sliced} was transcribed (see {report})")
    return problems


def run_resample(layout: Layout, options: Options) -> list[str]:
    import resample

    rate = options.yml.resample.sampling_rate
    model_rate = config.load_model_config(layout.config).data.sampling_rate
    if rate != model_rate:
        return [
            f"resample.sampling_rate of {options.yml.source} is {rate} but data.sampling_rate of {layout.config} "
            f"is {model_rate}: make them equal"
        ]
    resample.resample_all(resample.find_jobs(layout.sliced, layout.wavs, rate), options.processes)
    return write_transcription(layout)


def write_transcription(layout: Layout) -> list[str]:
    """esd.list (the reviewed list of sliced clips) with every path moved to its resampled wav."""
    if not layout.esd_list.is_file():
        return [f"{layout.esd_list} not found: run with --redo transcribe"]
    lines, problems = [], []
    for number, line in enumerate(layout.esd_list.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        path, sep, rest = line.partition("|")
        try:
            wav = layout.wavs / Path(path).relative_to(layout.sliced)
        except ValueError:
            problems.append(f"{layout.esd_list}:{number}: {path} is not a clip under {layout.sliced}")
            continue
        if not wav.is_file():
            problems.append(f"{layout.esd_list}:{number}: {path} has no resampled {wav} (is the clip still there?)")
            continue
        lines.append(f"{wav.as_posix()}{sep}{rest}\n")
    if not problems:
        atomic_io.atomic_write_text(layout.transcription, "".join(lines))
    return problems


def run_preprocess_text(layout: Layout, options: Options) -> list[str]:
    import preprocess_text

    settings = options.yml.preprocess_text
    try:
        report = preprocess_text.preprocess(
            str(layout.transcription),
            str(layout.cleaned),
            str(layout.train),
            str(layout.val),
            str(layout.config),
            settings.val_per_lang,
            settings.max_val_total,
            clean=True,
            bert_dirs=options.bert_dirs,
        )
    except (ValueError, FileNotFoundError) as error:
        return [str(error)]
    return list(report.problems)


def run_bert_gen(layout: Layout, options: Options) -> list[str]:
    import bert_gen

    data = config.load_model_config(layout.config).data
    section = options.yml.bert_gen
    settings = bert_gen.Settings(
        add_blank=data.add_blank,
        device=config.resolve_device(section.device),
        bert_dirs=options.bert_dirs,
        force=False,
    )
    try:
        results = bert_gen.generate(
            bert_gen.read_jobs([str(layout.train), str(layout.val)]), settings, section.num_processes
        )
    except FileNotFoundError as error:  # a BERT folder missing for a language the lists use
        return [str(error)]
    return [f"{r.where}: {r.message}" for r in results if r.status == "error"]


def run_check_dataset(layout: Layout, options: Options) -> list[str]:
    import check_dataset

    hparams = config.load_model_config(layout.config)
    return [str(p) for path in (layout.train, layout.val) for p in check_dataset.check_filelist(path, hparams)]


STAGE_FUNCTIONS: dict[str, Stage] = {
    "slice": run_slice,
    "transcribe": run_transcribe,
    "resample": run_resample,
    "preprocess_text": run_preprocess_text,
    "bert_gen": run_bert_gen,
    "check_dataset": run_check_dataset,
}


# ------------------------------------------------------------------------------------------------------- driver


def prepare(layout: Layout, options: Options, template: Path, redo: str | None = None) -> tuple[str | None, list[str]]:
    """Run the stages not yet done; returns (the stage that reported problems, its problems) or (None, [])."""
    layout.out.mkdir(parents=True, exist_ok=True)
    if not layout.config.is_file():
        layout.config.parent.mkdir(parents=True, exist_ok=True)
        atomic_io.atomic_write_bytes(layout.config, template.read_bytes())
        logger.info("model config %s copied from %s", layout.config, template)
    done = read_state(layout)
    todo = stages_to_run(done, redo)
    done = [stage for stage in STAGES if stage in done and stage not in todo]
    for stage in todo:
        logger.info("stage %d/%d: %s", STAGES.index(stage) + 1, len(STAGES), stage)
        problems = STAGE_FUNCTIONS[stage](layout, options)
        if problems:
            write_state(layout, done)
            return stage, problems
        done.append(stage)
        write_state(layout, done)
    return None, []


def check_arguments(layout: Layout, options: Options, template: Path, redo: str | None) -> None:
    """Raise ``ValueError`` naming the argument for anything that would stop a stage still to run; writes nothing.

    Only what the stages still to run need is checked: a run resumed after transcription needs neither the
    recordings nor the Whisper folder."""
    import slice as slicer
    import transcribe

    if options.processes < 0:
        raise ValueError(f"--processes: give 0 (one per CPU core but one) or more, got {options.processes}")
    model_config = layout.config if layout.config.is_file() else template
    flag = "--config-template" if model_config == template else "--out"
    if not model_config.is_file():
        raise ValueError(f"{flag}: model config template not found: {template}")
    try:
        config.load_model_config(model_config)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None
    targets = [layout.out / STATE_NAME, layout.config, layout.sliced / slicer.MANIFEST_NAME, layout.esd_list]
    targets += [layout.wavs / "clip.wav", layout.transcription, layout.cleaned, layout.train, layout.val]
    for target in targets:  # config.yml may put some of them outside --out
        try:
            atomic_io.check_output_target(target)
        except ValueError as error:
            raise ValueError(f"--out: {error}") from None
    todo = stages_to_run(read_state(layout), redo)
    if "slice" in todo:
        settings = options.slice_settings
        if settings.max_seconds is None:
            settings = replace(settings, max_seconds=longest_clip_seconds(model_config))
        slicer.Settings(**vars(settings))
        slicer.check_folders(options.raw, layout.sliced, "--raw", "--out")
        slicer.sources_or_error(options.raw, layout.sliced, None, "--raw")
    if "transcribe" in todo:
        try:
            config.resolve_device(options.device)
        except ValueError as error:
            raise ValueError(f"--device: {error}") from None
        try:
            transcribe.check_model_folder(options.asr_model)
        except ValueError as error:
            raise ValueError(f"--asr-model: {error}") from None


def train_command(layout: Layout, yml_path: str | None) -> str:
    parts = ["python3", "train_ms.py", "-c", layout.config.as_posix(), "-m", layout.out.as_posix()]
    if yml_path:
        parts += ["-y", yml_path]
    return " ".join(parts)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    import slice as slicer
    from text.bert_features import add_bert_dir_argument

    defaults = slicer.Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True, help="folder of raw recordings, one sub-folder per speaker")
    parser.add_argument("--out", required=True, help="dataset folder to create or resume (e.g. Data/mydata)")
    parser.add_argument("--asr-model", required=True, help="local Whisper folder (see transcribe.py)")
    add_bert_dir_argument(parser)
    parser.add_argument("--language", default="auto", choices=("ZH", "JP", "EN", "auto"), help="language spoken")
    parser.add_argument("--device", default="auto", help="device of the speech recogniser: auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--config-template", default=str(DEFAULT_TEMPLATE), help="model config copied to the dataset the first time"
    )
    parser.add_argument("--yml", help="global settings file (default: $BV2_CONFIG or ./config.yml)")
    parser.add_argument("--processes", type=int, default=0, help="worker processes for slicing and resampling")
    parser.add_argument("--redo", choices=STAGES, help="run again from this stage, even if it was done")
    parser.add_argument("--min-seconds", type=float, default=defaults.min_seconds)
    parser.add_argument(
        "--max-seconds", type=float, help="longest clip (default: the longest the training buckets take, ~11.5 s)"
    )
    parser.add_argument("--min-silence", type=float, default=defaults.min_silence)
    parser.add_argument("--pad", type=float, default=defaults.pad)
    parser.add_argument("--loudness", type=float, default=defaults.loudness, help="clip loudness in LUFS")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace, yml: config.Config) -> Options:
    import slice as slicer
    from text.bert_features import parse_bert_dirs

    settings = SliceOptions(args.min_seconds, args.max_seconds, args.min_silence, args.pad, args.loudness)
    if settings.max_seconds is not None:
        slicer.Settings(**vars(settings))  # a bad combination fails now, not after the first stages
    processes = args.processes or max(1, (os.cpu_count() or 2) - 1)
    return Options(
        Path(args.raw),
        Path(args.asr_model),
        parse_bert_dirs(args.bert_dir),
        args.language,
        args.device,
        processes,
        settings,
        yml,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is a local folder; never reach for the hub
    try:
        yml = config.load_config(args.yml)
        options = _options(args, yml)
        layout = Layout.from_settings(Path(args.out), yml)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    template = Path(args.config_template)
    try:  # every argument before any work: a mistake costs nothing and writes nothing
        check_arguments(layout, options, template, args.redo)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    try:
        stage, problems = prepare(layout, options, template, args.redo)
    except ValueError as error:  # a model folder or device that is not there, a broken state file
        logger.error("%s", error)
        return 2
    if stage is not None:
        for problem in problems[:PROBLEMS_SHOWN]:
            logger.error("%s", problem)
        if len(problems) > PROBLEMS_SHOWN:
            logger.error("... and %d more", len(problems) - PROBLEMS_SHOWN)
        logger.error(
            "stopped at stage %s with %d problem(s); fix them and run the same command again: it resumes there",
            stage,
            len(problems),
        )
        return 1
    command = train_command(layout, args.yml)
    logger.info("dataset ready in %s; train it with:", layout.out)
    print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
