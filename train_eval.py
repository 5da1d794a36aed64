"""Evaluation during training, on rank 0 at each ``eval_interval``: every validation clip synthesized with and
without the stochastic duration predictor (TensorBoard images and audio, as the reference), and the voice-quality
metrics of metrics.py (``val/...`` scalars and one ``Validation`` line of train.log) that rank the best
checkpoints. ``build_monitor`` makes the loop's metrics.TrainingMonitor (also its throughput and memory meter)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

import metrics
import utils
from data_utils import TextAudioSpeakerCollate, TextAudioSpeakerLoader
from mel_processing import spec_to_mel_torch
from train_nets import Trainer
from train_runtime import Runtime
from training import waveform_mel

logger = logging.getLogger(__name__)


def build_eval_loader(hps: Any) -> DataLoader | None:
    path = hps.data.get("validation_files")
    if not path or not os.path.isfile(path):
        logger.warning("no validation file (%s): evaluation is skipped", path)
        return None
    dataset = TextAudioSpeakerLoader(path, hps.data)
    if len(dataset) == 0:
        logger.warning("validation file %s has no usable utterance: evaluation is skipped", path)
        return None
    return DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=0,
        drop_last=False,
        collate_fn=TextAudioSpeakerCollate(),
        generator=torch.Generator(),
    )


@torch.no_grad()
def evaluate(
    trainer: Trainer, loader: DataLoader, hps: Any, rt: Runtime
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Synthesize every validation clip with and without the stochastic duration predictor.

    Returns the mel spectrograms ([n_mels, t]) and the audio clips ([1, t]) to log, by TensorBoard tag.
    """
    net_g = trainer.g.raw
    data = hps.data
    net_g.eval()
    mels: dict[str, Tensor] = {}
    audios: dict[str, Tensor] = {}
    try:
        for index, batch in enumerate(loader):
            batch = batch.to(rt.device)
            mel = spec_to_mel_torch(
                batch.spec, data.filter_length, data.n_mel_channels, data.sampling_rate, data.mel_fmin, data.mel_fmax
            )
            mels[f"gt/mel_{index}"] = mel[0].cpu()
            audios[f"gt/audio_{index}"] = batch.wav[0, :, : batch.wav_lengths[0]].float().cpu()
            for use_sdp in (True, False):
                out = net_g.infer(
                    batch.text,
                    batch.text_lengths,
                    batch.sid,
                    batch.tone,
                    batch.language,
                    batch.bert,
                    batch.ja_bert,
                    batch.en_bert,
                    y=batch.spec,
                    max_len=1000,
                    sdp_ratio=1.0 if use_sdp else 0.0,
                )
                y_hat_length = int(out.y_mask.sum([1, 2]).long()[0]) * data.hop_length
                y_hat_mel = waveform_mel(out.o.squeeze(1).float(), data)
                mels[f"gen/mel_{index}"] = y_hat_mel[0].cpu()
                audios[f"gen/audio_{index}_{use_sdp}"] = out.o[0, :, :y_hat_length].float().cpu()
    finally:
        trainer.g.net.train()
    return mels, audios


def build_monitor(hps: Any, rt: Runtime, settings: Any) -> metrics.TrainingMonitor:
    """The loop's monitor from config.yml's ``train_ms`` section (``eval_metrics``, ``eval_whisper``,
    ``keep_best``, ``best_metric``)."""
    return metrics.TrainingMonitor(
        hps.model_dir,
        rt.device,
        rt.world_size,
        hps.data.sampling_rate,
        rt.is_main,
        keep_best=settings.keep_best,
        best_metric=settings.best_metric,
        whisper_dir=settings.eval_whisper,
        score=settings.eval_metrics,
    )


def evaluate_and_log(
    trainer: Trainer,
    loader: DataLoader,
    hps: Any,
    rt: Runtime,
    monitor: metrics.TrainingMonitor,
    log: utils.TrainLogger,
) -> dict[str, float]:
    """Rank 0's evaluation at this step: images and audio, then the metrics (recorded for the best checkpoints,
    so call it before saving the step), logged with the evaluation's time; returns the logged scalars."""
    step = trainer.state.step
    with monitor.evaluation() as timing:
        mels, audios = evaluate(trainer, loader, hps, rt)
        log.log_eval(step, mels, audios, hps.data.sampling_rate)
        scores = monitor.validate(trainer.g.raw, loader.dataset, hps.data, step)
    scores.update(timing)
    log.log_metrics(step, scores)
    return scores
