"""Train the multi-speaker Bert-VITS2 model, in one process or on several with ``torchrun`` (DDP).

    python train_ms.py -c Data/mydata/config.json -m Data/mydata
    torchrun --nproc_per_node=2 train_ms.py -c Data/mydata/config.json -m Data/mydata
    python train_ms.py --demo

As in the reference, ``-m`` names the dataset folder and checkpoints, ``train.log`` and TensorBoard events go to
``<-m>/<train_ms.model>`` (``models`` by default, see ``config.yml``). Without ``-m`` the folders of ``config.yml``
are used.

This file is the wiring: it reads the settings, builds the runtime, data, nets and logger, and owns the cadence
of training (epochs, logging, evaluation, checkpoints, stopping). The pieces it wires:

* ``train_runtime.py``: rank, device, precision and process group; backend flags; SIGTERM/SIGINT as a stop
  request.
* ``train_nets.py``: the four nets, each with its AdamW and LR schedule, the GradScaler and the train state.
* ``training.py``: one iteration, and how a non-finite loss or gradient skips an update on every rank.
* ``train_data.py``: the training loader and where in an epoch a resumed run continues.
* ``train_resume.py``: what a checkpoint holds, resuming from it, and settings changed since.
* ``train_eval.py``: evaluation on the validation clips.
* ``losses.py`` (every loss formula) and ``utils.py`` (the checkpoint registry's files; ``train.log`` and
  TensorBoard), where the reference keeps them.

Deliberate differences from the reference:

* The iteration is the reference's with fewer WavLM runs and frozen discriminators in the generator step (see
  ``training.py``); ``warmup_epochs`` > 0 ramps the learning rate linearly (the reference ignores it).
* A non-finite loss or gradient skips that optimizer step (on every rank) with a warning, and training stops
  with an error after several such iterations in a row; nothing non-finite reaches a checkpoint.
* Resuming restores everything (weights, optimizers, LR schedules, scaler, step, epoch, position in the epoch,
  random number generators), so an interrupted run continues exactly where it stopped. Reference checkpoints
  (which store only the epoch) resume too. Settings changed since the checkpoint are reported with what now
  applies; a changed model shape is an error naming the setting.
* Checkpoints are written at every ``eval_interval`` steps (not after the very first step) and on exit; SIGTERM
  or SIGINT (Ctrl-C, also with DataLoader workers) finishes the current step, saves and exits with status 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

import atomic_io
import check_dataset
import metrics
import train_data
import train_eval
import train_nets
import train_resume
import train_runtime
import training
import utils
from config import as_model_config, check_trainable, load_model_config
from data_utils import DEFAULT_BUCKET_BOUNDARIES
from train_nets import Trainer
from train_runtime import Runtime, StopRequest

logger = logging.getLogger("train_ms")

DEFAULT_MAX_NONFINITE_STEPS = 5
# What a rank waits for in a training step (named when it waits too long: train_runtime.HangGuard).
STEP_OPERATION = "the training step (DDP's gradient all-reduce, the iteration's agreement)"
DEMO_DATASET_DIR = Path("Data/demo")
DEMO_CONFIG = Path("configs/demo.json")


# ------------------------------------------------------------------------------------------------ settings


def validate_hparams(hps: Any) -> None:
    """Raise ValueError naming the setting to change when the model config cannot train (config.py's checks)."""
    check_trainable(as_model_config(hps))


def resolve_model_dir(dataset_dir: str | None, yml: Any) -> str:
    """``<-m>/<train_ms.model>`` as the reference does; without -m the folder of config.yml."""
    configured = yml.train_ms.model
    if dataset_dir is None or os.path.isabs(configured):
        return configured
    relative = os.path.relpath(configured, yml.dataset_path) if yml.dataset_path else configured
    return os.path.join(dataset_dir, relative)


def swap_resolved_config(hps: Any, model_dir: str) -> dict[str, Any] | None:
    """Write the config this run trains with beside its checkpoints (a checkpoint folder is self-describing);
    return the one that was there before (what a reference checkpoint was trained with), if any."""
    path = os.path.join(model_dir, "config.json")
    previous = None
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as handle:
                previous = json.load(handle)
        except (OSError, ValueError) as err:
            logger.warning("%s is not readable (%s); it is replaced", path, err)
    atomic_io.atomic_write_text(path, json.dumps(hps.to_dict(), indent=2, ensure_ascii=False))
    return previous


def apply_env_defaults(env_defaults: Mapping[str, str]) -> dict[str, str]:
    """Fill in the torch.distributed variables torchrun would set; variables already set win."""
    added = {name: value for name, value in env_defaults.items() if name not in os.environ}
    os.environ.update(added)
    return added


# -------------------------------------------------------------------------------------------------- loop


@dataclasses.dataclass
class RunOptions:
    max_steps: int | None = None
    keep_ckpts: int = 8
    max_nonfinite_steps: int = DEFAULT_MAX_NONFINITE_STEPS


class Trainloop:
    """Owns the cadence: epochs, logging, evaluation, checkpoints, stopping."""

    def __init__(
        self,
        trainer: Trainer,
        hps: Any,
        rt: Runtime,
        options: RunOptions,
        loaders: tuple[DataLoader, train_data.ResumableBatchSampler, DataLoader | None],
        log: utils.TrainLogger,
        stop: StopRequest,
        monitor: metrics.TrainingMonitor,
    ) -> None:
        self.trainer, self.hps, self.rt, self.options, self.log, self.stop = trainer, hps, rt, options, log, stop
        self.monitor = monitor  # throughput and memory (every rank); validation metrics, best checkpoints (rank 0)
        self.loader, self.batches, self.eval_loader = loaders
        self.last_saved_step = trainer.state.step if trainer.state.step > 0 else None
        self.stop_agreed = False  # a stop request of any rank, agreed in the last step's all-reduce

    def run(self) -> None:
        state = self.trainer.state
        while state.epoch <= self.hps.train.epochs and not self._should_stop():
            if self._run_epoch():
                break
        with self.stop.shielded(final=True):  # a second Ctrl-C now must not cut the checkpoint short
            self.save()
            with self.rt.watch("the barrier after the final checkpoint", state.step):
                self.rt.barrier()

    def _run_epoch(self) -> bool:
        """Train the rest of the current epoch; True when training must stop."""
        state, trainer, rt = self.trainer.state, self.trainer, self.rt
        skip = train_data.resume_skip(state, rt, int(self.hps.train.batch_size))
        state.batch_in_epoch, state.world_size, state.batch_size = skip, rt.world_size, int(self.hps.train.batch_size)
        self.batches.start_epoch(state.epoch, skip)
        trainer.set_train_mode()
        progress = self._progress(skip)
        try:
            with train_runtime.stop_signals_blocked():  # the workers start here and must ignore Ctrl-C
                batches = iter(self.loader)
            for group in train_data.update_groups(batches, self.hps.train.accumulation):
                self.monitor.perf.batch_arrived(*group)
                with rt.watch(STEP_OPERATION, state.step + 1):
                    metrics, fwd = training.train_update(
                        trainer,
                        [batch.to(rt.device, non_blocking=True) for batch in group],
                        self.hps,
                        rt,
                        self.stop.requested,
                    )
                state.step += 1
                state.batch_in_epoch += len(group)
                self.stop_agreed = metrics["stop_requested"]
                training.update_nonfinite_streak(
                    state, metrics["skipped"], self.options.max_nonfinite_steps, self.hps.model_dir
                )
                self._after_step(metrics, fwd, progress)
                if self._should_stop():
                    return True
        finally:
            if progress is not None:
                progress.close()
        for part in trainer.parts():
            part.scheduler.step()
        logger.info("====> Epoch: %d", state.epoch)
        state.epoch += 1
        state.batch_in_epoch = 0
        return False

    def _progress(self, skip: int) -> Any:
        """Rank 0's bar for this epoch, counting the run's steps: its it/s and ETA reach to the configured
        epochs (or --max-steps)."""
        if not self.rt.is_main:
            return None
        from tqdm import tqdm

        state = self.trainer.state
        per_update = self.hps.train.accumulation
        this_epoch, each_epoch = -(-len(self.batches) // per_update), -(-len(self.batches.batch_sampler) // per_update)
        total = state.step + this_epoch + (self.hps.train.epochs - state.epoch) * each_epoch
        if self.options.max_steps is not None:
            total = min(total, self.options.max_steps)
        # disable=None: a bar on a terminal, none in log files (the logger reports every log_interval).
        return tqdm(
            total=total, initial=state.step, desc=f"epoch {state.epoch}", unit="step", disable=None, dynamic_ncols=True
        )

    def _after_step(self, metrics: dict[str, Any], fwd: training.GeneratorPass, progress: Any) -> None:
        state, train = self.trainer.state, self.hps.train
        self.monitor.step_finished()
        # Loss values leave the device at log steps only: a read per step would stall the GPU queue.
        if self.rt.is_main and state.step % train.log_interval == 0:
            mels = {"slice/mel_org": fwd.y_mel[0], "slice/mel_gen": fwd.y_hat_mel[0], "all/mel": fwd.mel[0]}
            fraction = state.batch_in_epoch / max(len(self.batches.batch_sampler), 1)
            scalars = training.scalar_values(metrics) | self.monitor.perf_scalars()
            self.log.log_train(state.step, state.epoch, fraction, scalars, mels, {"all/attn": fwd.attn[0, 0]})
            if progress is not None:
                short = {"g": "loss/g/total", "d": "loss/d/total", "mel": "loss/g/mel"}
                progress.set_postfix({k: f"{scalars[tag]:.3f}" for k, tag in short.items()}, refresh=False)
        if progress is not None:
            progress.update(1)
        if state.step % train.eval_interval == 0:
            if self.rt.is_main and self.eval_loader is not None:
                train_eval.evaluate_and_log(self.trainer, self.eval_loader, self.hps, self.rt, self.monitor, self.log)
            self.save()
        self.monitor.waiting_for_batch()

    def _should_stop(self) -> bool:
        # Identical on every rank without a collective: the step's all-reduce agreed on the stop request.
        max_steps = self.options.max_steps
        stop = self.stop_agreed or (not self.rt.distributed and self.stop.requested)
        return stop or (max_steps is not None and self.trainer.state.step >= max_steps)

    def save(self) -> None:
        step = self.trainer.state.step
        if step == 0 or step == self.last_saved_step:
            return
        with self.stop.shielded(), self.rt.watch("the checkpoint (gathering every rank's RNG state)", step):
            train_resume.save_training_checkpoint(
                self.trainer, self.hps, self.rt, self.options.keep_ckpts, self.monitor.best
            )
        self.last_saved_step = step


# -------------------------------------------------------------------------------------------------- main


def run_dataset_check(hps: Any, rt: Runtime) -> None:
    """The dataset checker's fast pass on rank 0, so a broken filelist fails before any net is built.

    The verdict is shared with the other ranks, which would otherwise wait for rank 0 until the timeout.
    """
    error: check_dataset.DatasetError | None = None
    if rt.is_main:
        filelists = [hps.data.training_files]
        if hps.data.get("validation_files") and os.path.isfile(hps.data.validation_files):
            filelists.append(hps.data.validation_files)
        try:
            check_dataset.assert_dataset_ok(filelists, hps, list(DEFAULT_BUCKET_BOUNDARIES), fast=True)
        except check_dataset.DatasetError as err:
            error = err
    with rt.watch("the dataset check (rank 0's verdict)", 0):
        failed = rt.any_rank([error is not None])[0]
    if failed:
        if error is not None:
            raise error
        raise RuntimeError("rank 0 found problems in the dataset (see its log)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", help="model config JSON (default: train_ms.config_path of config.yml)")
    parser.add_argument(
        "-m",
        "--model",
        help="dataset folder; checkpoints go to <model>/<train_ms.model> (default: the folders of config.yml)",
    )
    parser.add_argument("-y", "--yml_config", default=None, help="global settings (default: $BV2_CONFIG or config.yml)")
    parser.add_argument("--demo", action="store_true", help="prepare and train the bundled demo corpus")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--max-steps", type=int, default=None, help="stop (and save) after this many steps")
    parser.add_argument("--seed", type=int, default=None, help="override train.seed")
    parser.add_argument("--num-workers", type=int, default=None, help="override train_ms.num_workers")
    parser.add_argument("--keep-ckpts", type=int, default=None, help="override train_ms.keep_ckpts")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--max-nonfinite-steps",
        type=int,
        default=DEFAULT_MAX_NONFINITE_STEPS,
        help="stop after this many iterations in a row with a non-finite loss",
    )
    return parser.parse_args(argv)


def make_demo_wavlm(folder: Path, hidden: int, layers: int, seed: int = 1111) -> None:
    """A tiny randomly initialised WavLM for the demo (the real one cannot be downloaded here).

    Like the demo's BERT stand-ins it carries no information; it only lets the WavLM losses run. Its shape
    follows the reference kit's tiny WavLM: ``layers - 1`` transformer layers (WavLM reports the embeddings
    as an extra hidden state) and a feature extractor with an overall stride of 320 samples.
    """
    from transformers import WavLMConfig, WavLMModel

    config = WavLMConfig(
        hidden_size=hidden,
        num_hidden_layers=layers - 1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        conv_dim=(16, 16, 16),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_buckets=16,
        max_bucket_distance=64,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        WavLMModel(config).save_pretrained(folder)
    logger.warning("created a random tiny WavLM in %s for the demo (it carries no speech knowledge)", folder)


def prepare_demo(args: argparse.Namespace) -> None:
    """``--demo``: prepare the bundled demo corpus into Data/demo when needed, then train on it."""
    prepared_config = DEMO_DATASET_DIR / "config.json"
    if not (prepared_config.is_file() and (DEMO_DATASET_DIR / "filelists" / "train.list").is_file()):
        from demo import prepare as demo_prepare

        logger.info("preparing the demo corpus in %s (demo/prepare.py)", DEMO_DATASET_DIR)
        if demo_prepare.main(["--out-dir", str(DEMO_DATASET_DIR), "--config", str(DEMO_CONFIG)]) != 0:
            raise RuntimeError(f"demo/prepare.py reported problems; see its log (dataset folder {DEMO_DATASET_DIR})")
    # The prepared copy of configs/demo.json has the speaker table filled in.
    args.config = args.config or str(prepared_config)
    args.model = args.model or str(DEMO_DATASET_DIR)
    slm = load_model_config(args.config).model.slm
    if not Path(slm.model).exists():
        make_demo_wavlm(Path(slm.model), slm.hidden, slm.nlayers)


def main(argv: Sequence[str] | None = None) -> int:
    import config as global_config

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.demo:
        prepare_demo(args)
    yml = global_config.load_config(args.yml_config)
    added = apply_env_defaults(yml.train_ms.env.as_environ())

    hps = load_model_config(args.config or yml.train_ms.config_path)
    check_trainable(hps)
    if args.seed is not None:
        hps.train.seed = args.seed
    hps.model_dir = resolve_model_dir(args.model, yml)
    hps.data.setdefault("spec_cache", yml.train_ms.spec_cache)
    hps.data.setdefault("all_in_mem", yml.train_ms.all_in_mem)
    if args.threads:
        torch.set_num_threads(args.threads)
    # numba (monotonic alignment) otherwise starts a thread per core whose idle spinning starves the training
    # threads, e.g. ~5x slower steps with torchrun's one single-threaded process per core.
    os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))

    rt = train_runtime.init_runtime(args.device, hps.train, yml.train_ms.process_group_timeout)
    os.makedirs(hps.model_dir, exist_ok=True)
    log = utils.TrainLogger(hps.model_dir, rt.rank)
    if added:
        logger.info("environment defaults from %s: %s", yml.source, added)
    train_runtime.configure_kernels(rt.device, hps.train)
    stop = StopRequest()
    stop.install()
    try:
        train_from_config(hps, rt, yml, args, log, stop)
    finally:
        log.close()
    # Not on an error: with a lost peer, destroying the group can block (NCCL); the exit frees it anyway.
    if rt.distributed:
        dist.destroy_process_group()
    return 0


def train_from_config(
    hps: Any, rt: Runtime, yml: Any, args: argparse.Namespace, log: utils.TrainLogger, stop: StopRequest
) -> None:
    """Build data, nets and state, then run the training loop."""
    previous_config = None
    if rt.is_main:
        precision = rt.amp_dtype or torch.float32
        logger.info("training on %d rank(s), device %s, precision %s", rt.world_size, rt.device, precision)
        logger.info("model folder %s; config: %s", hps.model_dir, json.dumps(hps.to_dict(), ensure_ascii=False))
        previous_config = swap_resolved_config(hps, hps.model_dir)
        utils.check_git_hash(hps.model_dir)
    run_dataset_check(hps, rt)
    # The reference seeds torch only; seeding numpy and random too makes a whole run reproducible.
    torch.manual_seed(hps.train.seed)
    np.random.seed(hps.train.seed)
    random.seed(hps.train.seed)

    workers = args.num_workers
    if workers is None:
        workers = min(yml.train_ms.num_workers, max((os.cpu_count() or 1) - 1, 0))
    loader, batches = train_data.build_train_loader(hps, rt, workers)
    eval_loader = train_eval.build_eval_loader(hps) if rt.is_main else None

    trainer = train_nets.build_trainer(hps, rt)
    base_dir = yml.train_ms.base.model_dir if yml.train_ms.base.use_base_model else None
    train_resume.restore_or_initialise(trainer, hps, rt, base_dir, previous_config)

    options = RunOptions(
        max_steps=args.max_steps,
        keep_ckpts=args.keep_ckpts if args.keep_ckpts is not None else yml.train_ms.keep_ckpts,
        max_nonfinite_steps=args.max_nonfinite_steps,
    )
    monitor = train_eval.build_monitor(hps, rt, yml.train_ms)
    Trainloop(trainer, hps, rt, options, (loader, batches, eval_loader), log, stop, monitor).run()
    if stop.requested:
        logger.info("stopped by signal at step %d; checkpoint saved", trainer.state.step)


if __name__ == "__main__":
    sys.exit(main())
