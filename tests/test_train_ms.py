"""train_ms.py: the loss terms of one iteration against the reference kit, the step's bookkeeping, and a real
short training run through the command line whose TensorBoard values are checked (learning rate per epoch, the
totals as sums of their terms, finite scalars, evaluation audio, validation metrics and throughput, best.json,
evaluate.py's numbers equal to the trainer's)."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import reference_like as reference_like_step
import soundfile
import torch
from tensorboard.backend.event_processing import event_accumulator
from train_tiny import (
    first_batch,
    make_dataset,
    run_training,
    tiny_config,
    write_run_files,
)

import evaluate
import metrics
import train_ms
import train_nets
import train_runtime
import training
import utils
from config import ModelConfig, TrainConfig, model_config_from_dict
from data_utils import Batch
from models import (
    DurationDiscriminator,
    DurationTerms,
    Latents,
    MultiPeriodDiscriminator,
    SynthesizerOutput,
    WavLMDiscriminator,
)

CPU = train_runtime.Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _close(actual, expected, name: str) -> None:
    actual = torch.as_tensor(actual, dtype=torch.float32)
    expected = torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------ loss terms vs the reference


@pytest.fixture(scope="module")
def golden_trainer(golden: dict, dev_config: dict) -> train_nets.Trainer:
    """The kit's net_d / net_dur_disc / net_wd (eval mode, as the golden values were made) with its tiny WavLM."""
    import kit

    hps = model_config_from_dict(dev_config)
    model = hps.model
    net_d = MultiPeriodDiscriminator(False)
    net_d.load_state_dict(kit.net_d_state_dict(golden))
    hidden = model.hidden_channels
    net_dur = DurationDiscriminator(hidden, hidden, 3, 0.1, gin_channels=model.gin_channels)
    net_dur.load_state_dict(golden["weights_dur"])
    net_wd = WavLMDiscriminator(model.slm.hidden, model.slm.nlayers, model.slm.initial_channel)
    net_wd.load_state_dict(golden["weights_wd"])
    for net in (net_d, net_dur, net_wd):
        net.eval()
    trainer = train_nets.Trainer(
        g=None,
        d=train_nets.Part("D", net_d, None, None),
        wd=train_nets.Part("WD", net_wd, None, None),
        dur=train_nets.Part("DUR", net_dur, None, None),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        state=train_nets.TrainState(),
    )
    trainer.wl = train_nets.build_wavlm_loss(hps, trainer, CPU)
    return trainer


def _golden_pass(
    golden: dict, hps: ModelConfig, trainer: train_nets.Trainer, reference_like: bool
) -> training.GeneratorPass:
    f, i = golden["forward"], golden["inputs"]
    out = SynthesizerOutput(
        f["o"],
        f["l_length"],
        f["attn"],
        f["ids_slice"],
        f["x_mask"],
        f["y_mask"],
        Latents(f["z"], f["z_p"], f["m_p"], f["logs_p"], f["m_q"], f["logs_q"]),
        DurationTerms(f["x"], f["logw"], f["logw_"], f["logw_sdp"]),
        f["g"],
    )
    batch = Batch(
        i["x"],
        i["x_lengths"],
        i["spec"],
        i["spec_lengths"],
        i["y"],
        i["y_lengths"],
        i["sid"],
        i["tone"],
        i["language"],
        i["bert"],
        i["ja_bert"],
        i["en_bert"],
    )
    return training.prepare_pass(out, batch, hps, None if reference_like else trainer.wl)


@pytest.mark.parametrize("reference_like", [False, True], ids=["efficient", "reference_like"])
def test_iteration_loss_terms_match_reference(golden, golden_trainer, dev_config, reference_like):
    """Every loss term of one iteration equals the reference's (kit: train_step_losses), including the
    element-wise sum of the two duration-discriminator calls, with WavLM run once or as the reference does."""
    hps = model_config_from_dict(dev_config)
    trainer = golden_trainer
    expected = golden["train_step_losses"]
    with torch.no_grad():
        fwd = _golden_pass(golden, hps, trainer, reference_like)
        step = reference_like_step if reference_like else training
        d = step.discriminator_losses(trainer, fwd, CPU)
        g = step.generator_losses(trainer, fwd, hps, CPU)

    for name, actual in (("y_seg", fwd.y), ("mel", fwd.mel), ("y_mel", fwd.y_mel), ("y_hat_mel", fwd.y_hat_mel)):
        _close(actual, expected[name], name)
    _close(d["loss/d/total"], expected["loss_disc"], "loss_disc")
    for k in range(6):
        _close(d[f"loss/d_r/{k}"], expected["losses_disc_r"][k], f"losses_disc_r[{k}]")
        _close(d[f"loss/d_g/{k}"], expected["losses_disc_g"][k], f"losses_disc_g[{k}]")
        _close(g[f"loss/g/{k}"], expected["losses_gen"][k], f"losses_gen[{k}]")
    assert "loss/dur_disc_r/2" not in d  # one entry per batch item (2), not per discriminator call
    _close(d["loss/dur_disc/total"], expected["loss_dur_disc"], "loss_dur_disc")
    for k in range(2):
        _close(d[f"loss/dur_disc_r/{k}"], expected["losses_dur_disc_r"][k], f"losses_dur_disc_r[{k}]")
        _close(d[f"loss/dur_disc_g/{k}"], expected["losses_dur_disc_g"][k], f"losses_dur_disc_g[{k}]")
        _close(g[f"loss/g/dur_gen_{k}"], expected["losses_dur_gen"][k], f"losses_dur_gen[{k}]")
    _close(d["loss/wd/total"], expected["loss_slm"], "loss_slm")
    for tag, key in (
        ("loss/g/dur", "loss_dur"),
        ("loss/g/mel", "loss_mel"),
        ("loss/g/kl", "loss_kl"),
        ("loss/g/fm", "loss_fm"),
        ("loss/g/lm", "loss_lm"),
        ("loss/g/lm_gen", "loss_lm_gen"),
        ("loss/g/dur_gen", "loss_dur_gen"),
        ("loss/g/total", "loss_gen_all"),
    ):
        _close(g[tag], expected[key], key)
    _close(sum(g[f"loss/g/{k}"] for k in range(6)), expected["loss_gen"], "loss_gen")


# ----------------------------------------------------------------------------------- one step, in process


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_train_config) -> dict:
    """A tiny-config trainer, its first batch, and its as-built state (tests restore it before use)."""
    folder = tmp_path_factory.mktemp("tiny")
    hps = model_config_from_dict(tiny_config(tiny_train_config, make_dataset(folder / "data")))
    hps.model_dir = str(folder / "models")
    torch.manual_seed(1)
    trainer = train_nets.build_trainer(hps, CPU)
    return {"trainer": trainer, "hps": hps, "batch": first_batch(hps, CPU), "start": _snapshot(trainer)}


def _snapshot(trainer: train_nets.Trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {p.prefix: {k: v.clone() for k, v in p.raw.state_dict().items()} for p in trainer.parts()}


def _reset(tiny: dict) -> train_nets.Trainer:
    trainer = tiny["trainer"]
    for part in trainer.parts():
        part.raw.load_state_dict(tiny["start"][part.prefix])
        part.optimizer.state.clear()
        part.optimizer.zero_grad(set_to_none=True)
    trainer.state = train_nets.TrainState()
    trainer.set_train_mode()
    return trainer


@pytest.fixture(scope="module")
def both_variants(tiny) -> dict:
    """One step from the same state and RNG with this package's step and with the reference-like one.

    The duration discriminator's dropout would draw from the RNG at different points in the two variants
    (WavLM draws a layer-drop number per layer even in eval mode), so it runs without dropout here.
    """
    results = {}
    for reference_like in (False, True):
        trainer = _reset(tiny)
        trainer.dur.raw.eval()
        torch.manual_seed(5)
        step = reference_like_step if reference_like else training
        metrics, fwd = step.train_step(trainer, tiny["batch"], tiny["hps"], CPU)
        grads = {
            p.prefix: {n: q.grad is not None and bool(q.grad.abs().sum() > 0) for n, q in p.raw.named_parameters()}
            for p in trainer.parts()
        }
        results[reference_like] = {"metrics": metrics, "state": _snapshot(trainer), "grads": grads, "fwd": fwd}
    return results


def test_efficient_step_equals_reference_like_step(both_variants):
    """Running WavLM twice instead of five times and freezing the discriminators during the generator step
    leaves the losses, the discriminator updates and the generator gradient norm unchanged."""
    fast, ref = both_variants[False], both_variants[True]
    assert fast["metrics"].keys() == ref["metrics"].keys()
    for tag, value in fast["metrics"].items():
        if tag != "skipped":
            torch.testing.assert_close(
                torch.tensor(float(value)), torch.tensor(float(ref["metrics"][tag])), rtol=1e-5, atol=1e-6, msg=tag
            )
    for prefix in ("D", "WD", "DUR"):
        for key, value in fast["state"][prefix].items():
            torch.testing.assert_close(value, ref["state"][prefix][key], rtol=0, atol=1e-7, msg=f"{prefix}.{key}")
    assert fast["metrics"]["skipped"] == ref["metrics"]["skipped"] == []


def test_step_moves_every_parameter_that_has_a_gradient(tiny, both_variants):
    """Every net is updated. The only parameters without a gradient yet are those of a freshly built net's flows
    and stochastic duration predictor (behind zero-initialised output layers) and the projections of the
    two BERT slots this Chinese-only data fills with zeros."""
    result = both_variants[False]
    no_gradient_expected = ("flow.flows.", "sdp.", "enc_p.ja_bert_proj.weight", "enc_p.en_bert_proj.weight")
    for prefix, start in tiny["start"].items():
        without = [n for n, has in result["grads"][prefix].items() if not has]
        unexpected = [n for n in without if prefix != "G" or not n.startswith(no_gradient_expected)]
        assert not unexpected, f"{prefix}: parameters without a gradient: {unexpected[:5]}"
        unchanged = [
            n for n, has in result["grads"][prefix].items() if has and torch.equal(result["state"][prefix][n], start[n])
        ]
        assert not unchanged, f"{prefix}: parameters with a gradient that did not move: {unchanged[:5]}"
    fwd = result["fwd"]
    assert fwd.y.shape == fwd.y_hat.shape == (2, 1, tiny["hps"].train.segment_size)
    assert result["metrics"]["learning_rate"] == 2e-4


def test_mas_noise_scale_follows_the_step(tiny):
    trainer = _reset(tiny)
    trainer.state.step = 1000
    with torch.no_grad():
        training.generator_forward(trainer, tiny["batch"], tiny["hps"], CPU)
    assert trainer.g.raw.current_mas_noise_scale == pytest.approx(0.01 - 2e-6 * 1000)
    trainer.state.step = 10**6
    with torch.no_grad():
        training.generator_forward(trainer, tiny["batch"], tiny["hps"], CPU)
    assert trainer.g.raw.current_mas_noise_scale == 0.0


def test_nonfinite_audio_skips_the_updates_it_poisons(tiny):
    """NaN audio makes the waveform discriminators' and the generator's losses NaN: those updates are skipped
    (the generator's NaN loss even comes with a finite gradient norm). The duration discriminator never sees
    the audio, so its update goes ahead."""
    trainer = _reset(tiny)
    batch = tiny["batch"]
    poisoned = batch._replace(wav=torch.full_like(batch.wav, float("nan")))
    metrics, _ = training.train_step(trainer, poisoned, tiny["hps"], CPU)
    assert sorted(metrics["skipped"]) == ["D", "G", "WD"]
    for part in trainer.parts():
        same = all(torch.equal(v, tiny["start"][part.prefix][k]) for k, v in part.raw.state_dict().items())
        assert same is (part.prefix != "DUR"), part.prefix
        assert all(torch.isfinite(v).all() for v in part.raw.state_dict().values()), part.prefix


def test_frozen_bert_projection_is_not_trained(tiny_train_config):
    hps = model_config_from_dict(
        tiny_config(
            tiny_train_config,
            {"training_files": "t", "validation_files": "v"},
            freeze_ZH_bert=True,
            freeze_EN_bert=True,
        )
    )
    trainer = train_nets.build_trainer(hps, CPU)
    net_g = trainer.g.raw
    optimized = {id(p) for group in trainer.g.optimizer.param_groups for p in group["params"]}
    for name, frozen in (("bert_proj", True), ("ja_bert_proj", False), ("en_bert_proj", True)):
        for param in getattr(net_g.enc_p, name).parameters():
            assert param.requires_grad is not frozen and (id(param) in optimized) is not frozen, name


def test_nonfinite_streak_stops_with_clear_error():
    state = train_nets.TrainState(step=7)
    for _ in range(2):
        training.update_nonfinite_streak(state, ["G"], limit=3, model_dir="m")
    training.update_nonfinite_streak(state, [], limit=3, model_dir="m")
    assert state.nonfinite_streak == 0
    for _ in range(2):
        training.update_nonfinite_streak(state, ["D", "G"], limit=3, model_dir="m")
    with pytest.raises(RuntimeError, match=r"3 iterations in a row had non-finite.*D, G.*learning_rate"):
        training.update_nonfinite_streak(state, ["D", "G"], limit=3, model_dir="m")


def test_warmup_schedule_ramps_then_decays_and_round_trips():
    param = torch.nn.Parameter(torch.zeros(1))
    train = TrainConfig(learning_rate=1.0, betas=[0.8, 0.99], eps=1e-9, lr_decay=0.5, warmup_epochs=3)
    optimizer = train_nets.make_optimizer([param], train)
    scheduler = train_nets.make_scheduler(optimizer, train)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        optimizer.step()  # no gradient, so a no-op; keeps the training loop's optimizer-then-scheduler order
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1 / 3, 2 / 3 * 0.5, 0.25, 0.125, 0.0625])
    again = train_nets.make_optimizer([param], train)
    restored = train_nets.make_scheduler(again, train)
    again.load_state_dict(optimizer.state_dict())
    restored.load_state_dict(scheduler.state_dict())
    again.step()
    restored.step()
    optimizer.step()
    scheduler.step()
    assert again.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    # Without warm-up it is the reference's ExponentialLR.
    plain = TrainConfig(learning_rate=2e-4, betas=[0.8, 0.99], eps=1e-9, lr_decay=0.99995, warmup_epochs=0)
    assert isinstance(
        train_nets.make_scheduler(train_nets.make_optimizer([param], plain), plain),
        torch.optim.lr_scheduler.ExponentialLR,
    )


def test_config_errors_name_the_setting(tiny_model_config):
    config = tiny_config(tiny_model_config, {"training_files": "t", "validation_files": "v"}, segment_size=4000)
    with pytest.raises(ValueError, match=r"train.segment_size \(4000\).*data.hop_length \(256\)"):
        train_ms.validate_hparams(config)
    config = tiny_config(
        tiny_model_config, {"training_files": "t", "validation_files": "v"}, bf16_run=True, fp16_run=True
    )
    with pytest.raises(ValueError, match="bf16_run and train.fp16_run"):
        train_runtime.resolve_amp_dtype(model_config_from_dict(config).train, torch.device("cuda"))
    bf16_only = tiny_config(tiny_model_config, {"training_files": "t", "validation_files": "v"}, bf16_run=True)
    assert train_runtime.resolve_amp_dtype(model_config_from_dict(bf16_only).train, torch.device("cpu")) is None


# ------------------------------------------------------------------------------------- a real training run

SCALAR_TAGS = [
    "loss/g/total",
    "loss/d/total",
    "loss/wd/total",
    "learning_rate",
    "grad_norm_d",
    "grad_norm_g",
    "grad_norm_dur",
    "grad_norm_wd",
    "loss/g/fm",
    "loss/g/mel",
    "loss/g/dur",
    "loss/g/kl",
    "loss/g/lm",
    "loss/g/lm_gen",
    "loss/g/dur_gen",
    "loss/dur_disc/total",
    *[f"loss/g/{i}" for i in range(6)],
    *[f"loss/d_r/{i}" for i in range(6)],
    *[f"loss/d_g/{i}" for i in range(6)],
    *[f"loss/dur_disc_r/{i}" for i in range(2)],
    *[f"loss/dur_disc_g/{i}" for i in range(2)],
]


def _events(folder: Path) -> event_accumulator.EventAccumulator:
    guidance = {"scalars": 0, "images": 0, "audio": 0}  # 0: keep every event
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance=guidance)
    accumulator.Reload()
    return accumulator


RUN_STEPS = 6  # 4 clips, batch 2, one rank: 2 batches per epoch, so 3 epochs
RUN_EVAL_INTERVAL = 3
RUN_EVALS = [step for step in range(1, RUN_STEPS + 1) if step % RUN_EVAL_INTERVAL == 0]
# The per-interval throughput and memory scalars (metrics.PerfMeter), at every log step.
PERF_TAGS = [
    "perf/step_seconds",
    "perf/data_wait_seconds",
    "perf/samples_per_second",
    "perf/audio_seconds_per_second",
    "perf/peak_memory_gb",
]
EVAL_TIME_TAGS = ["perf/eval_seconds", "perf/eval_share"]
# Every validation metric of a Chinese clip without a Whisper folder (wer_en needs English clips, cer_* Whisper).
VAL_TAGS = [tag for tag in metrics.METRICS if tag not in ("val/wer_en", "val/cer_zh", "val/cer_jp")]


def _evaluation_tag(tag: str) -> bool:
    return tag.startswith("val/") or tag in EVAL_TIME_TAGS


def _epoch_of_step(step: int) -> int:
    return (step + 1) // 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_train_config) -> dict:
    """RUN_STEPS steps through the command line, logging every step and evaluating every RUN_EVAL_INTERVAL."""
    root = tmp_path_factory.mktemp("tiny-run")
    filelists = make_dataset(root / "data")
    config = tiny_config(tiny_train_config, filelists, log_interval=1, eval_interval=RUN_EVAL_INTERVAL)
    files = write_run_files(root / "run", config)
    run_training(files, "--max-steps", str(RUN_STEPS))
    model_dir = files["model_dir"]
    return {
        "files": files,
        "filelists": filelists,
        "config": config,
        "train": _events(model_dir),
        "eval": _events(model_dir / "eval"),
    }


def test_tiny_run_writes_checkpoints_log_and_config(tiny_run):
    model_dir = tiny_run["files"]["model_dir"]
    for prefix in ("G", "D", "WD", "DUR"):
        for step in (RUN_EVAL_INTERVAL, RUN_STEPS):
            assert (model_dir / f"{prefix}_{step}.pth").is_file(), f"{prefix}_{step}.pth missing"
    g = torch.load(model_dir / f"G_{RUN_STEPS}.pth", map_location="cpu", weights_only=True)
    assert list(g)[:4] == list(utils.CLASSIC_CHECKPOINT_KEYS)
    state = g["train_state"]
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (RUN_STEPS, _epoch_of_step(RUN_STEPS), 2)
    assert g["iteration"] == state["epoch"]

    log = (model_dir / "train.log").read_text(encoding="utf-8")
    assert "Train Epoch" in log and f"step {RUN_STEPS}" in log
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    assert saved["train"]["eval_interval"] == RUN_EVAL_INTERVAL
    assert saved["data"]["training_files"] == tiny_run["filelists"]["training_files"]


def _scalars(events: event_accumulator.EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def test_tiny_run_logs_every_scalar_at_every_step_and_all_are_finite(tiny_run):
    train = tiny_run["train"]
    tags = train.Tags()["scalars"]
    missing = [tag for tag in SCALAR_TAGS + PERF_TAGS if tag not in tags]
    assert not missing, f"scalar tags missing: {missing}"
    for tag in [tag for tag in tags if not _evaluation_tag(tag)]:
        values = _scalars(train, tag)
        assert sorted(values) == list(range(1, RUN_STEPS + 1)), f"{tag}: steps {sorted(values)}"
        assert all(math.isfinite(v) for v in values.values()), f"{tag}: {values}"
    assert {"slice/mel_org", "slice/mel_gen", "all/mel", "all/attn"} <= set(train.Tags()["images"])


def test_tiny_run_learning_rate_decays_once_per_epoch(tiny_run):
    """learning_rate at every step is lr * lr_decay ** (epoch - 1) (float32 in the event file)."""
    train_settings = tiny_run["config"]["train"]
    lr, decay = train_settings["learning_rate"], train_settings["lr_decay"]
    for step, value in _scalars(tiny_run["train"], "learning_rate").items():
        expected = lr * decay ** (_epoch_of_step(step) - 1)
        assert value == pytest.approx(expected, rel=1e-6), f"step {step}: {value} vs {expected}"


def test_tiny_run_totals_are_the_sums_of_their_terms(tiny_run):
    """loss/g/total is the sum of the generator's terms; the discriminators' totals sum their per-scale terms."""
    train = tiny_run["train"]
    scalars = {tag: _scalars(train, tag) for tag in train.Tags()["scalars"]}
    g_terms = ["fm", "mel", "dur", "kl", "lm", "lm_gen", "dur_gen", *map(str, range(6))]
    sums = {
        "loss/g/total": [f"loss/g/{term}" for term in g_terms],
        "loss/g/dur_gen": ["loss/g/dur_gen_0", "loss/g/dur_gen_1"],
        "loss/d/total": [f"loss/d_{kind}/{i}" for kind in ("r", "g") for i in range(6)],
        "loss/dur_disc/total": [f"loss/dur_disc_{kind}/{i}" for kind in ("r", "g") for i in range(2)],
    }
    for total, terms in sums.items():
        for step in range(1, RUN_STEPS + 1):
            parts = sum(scalars[term][step] for term in terms)
            assert scalars[total][step] == pytest.approx(parts, rel=1e-5, abs=1e-5), f"{total} at step {step}"


def _decoded(event) -> tuple[np.ndarray, int]:
    samples, rate = soundfile.read(io.BytesIO(event.encoded_audio_string), dtype="float32")
    return samples, rate


def test_tiny_run_evaluation_audio_has_the_expected_length_and_is_not_silent(tiny_run):
    """At each evaluation: the ground truth is the validation clip itself, and both syntheses (with and without
    the stochastic duration predictor) are finite, not silent, and whole frames long."""
    evaluation = tiny_run["eval"]
    hop = tiny_run["config"]["data"]["hop_length"]
    sampling_rate = tiny_run["config"]["data"]["sampling_rate"]
    assert {"gen/mel_0", "gt/mel_0"} <= set(evaluation.Tags()["images"])
    clip_path = Path(tiny_run["filelists"]["validation_files"]).read_text(encoding="utf-8").split("|")[0]
    clip, clip_rate = soundfile.read(clip_path, dtype="float32")
    assert clip_rate == sampling_rate
    evals = [step for step in range(1, RUN_STEPS + 1) if step % RUN_EVAL_INTERVAL == 0]
    for tag in ("gt/audio_0", "gen/audio_0_True", "gen/audio_0_False"):
        events = evaluation.Audio(tag)
        assert [e.step for e in events] == evals, tag
        for event in events:
            samples, rate = _decoded(event)
            assert rate == sampling_rate and samples.ndim == 1, tag
            assert np.isfinite(samples).all() and np.abs(samples).max() > 1e-3 and samples.std() > 1e-4, tag
            if tag == "gt/audio_0":
                # The clip's samples (16-bit in both files), cut to whole frames at most.
                assert len(clip) - hop < len(samples) <= len(clip), (len(samples), len(clip))
                np.testing.assert_allclose(samples, clip[: len(samples)], atol=2 / 32768)
            else:
                assert len(samples) % hop == 0 and hop <= len(samples) <= 1000 * hop, (tag, len(samples))


@pytest.mark.slow
def test_longer_run_lowers_the_mel_loss(tmp_path, tiny_train_config):
    """80 steps on the four tiny clips: the mel reconstruction loss of the last steps is clearly below that of
    the first ones."""
    filelists = make_dataset(tmp_path / "data")
    config = tiny_config(tiny_train_config, filelists, log_interval=1, eval_interval=1000)
    files = write_run_files(tmp_path / "run", config)
    run_training(files, "--max-steps", "80", timeout=3600)
    mel = [event.value for event in _events(files["model_dir"]).Scalars("loss/g/mel")]
    assert len(mel) == 80
    first, last = sum(mel[:10]) / 10, sum(mel[-10:]) / 10
    assert last < 0.8 * first, f"mel loss {first:.2f} -> {last:.2f}"


def test_tiny_run_logs_validation_metrics_and_throughput(tiny_run):
    """val/... at every evaluation (train.log's Validation line too) with the evaluation's time; perf/... at every
    log step with plausible values."""
    train = tiny_run["train"]
    tags = set(train.Tags()["scalars"])
    assert not set(VAL_TAGS) - tags, f"validation tags missing: {sorted(set(VAL_TAGS) - tags)}"
    for tag in sorted(tag for tag in tags if _evaluation_tag(tag)):
        values = _scalars(train, tag)
        # f0_rmse needs frames voiced in both clips, which an untrained voice may not have at every evaluation.
        assert set(values) <= set(RUN_EVALS) and (values.keys() == set(RUN_EVALS) or tag == "val/f0_rmse"), tag
        assert all(math.isfinite(v) for v in values.values()), f"{tag}: {values}"
    for tag in EVAL_TIME_TAGS:
        assert sorted(_scalars(train, tag)) == RUN_EVALS, tag
    assert all(0 < share <= 1 for share in _scalars(train, "perf/eval_share").values())

    perf = {tag: _scalars(train, tag) for tag in PERF_TAGS}
    for step in range(1, RUN_STEPS + 1):
        assert 0 <= perf["perf/data_wait_seconds"][step] < perf["perf/step_seconds"][step], step
        clips_per_second = 2 / perf["perf/step_seconds"][step]  # batch 2, one rank, one step per interval
        assert perf["perf/samples_per_second"][step] == pytest.approx(clips_per_second, rel=1e-3), step
        # The tiny clips are 0.5-0.85 s long.
        assert 0.5 <= perf["perf/audio_seconds_per_second"][step] / perf["perf/samples_per_second"][step] <= 0.85
        assert 0.05 < perf["perf/peak_memory_gb"][step] < 64, step
    log = (tiny_run["files"]["model_dir"] / "train.log").read_text(encoding="utf-8")
    for step in RUN_EVALS:
        assert f"Validation step {step}: mel_l1 " in log and "eval_seconds" in log, step
    assert f"Perf step {RUN_STEPS}: " in log


def _best_document(tiny_run) -> dict:
    return json.loads((tiny_run["files"]["model_dir"] / utils.BestCheckpoints.FILE).read_text(encoding="utf-8"))


def test_tiny_run_best_json_names_complete_sets_ranked_by_the_metric(tiny_run):
    model_dir = tiny_run["files"]["model_dir"]
    document = _best_document(tiny_run)
    assert (document["metric"], document["keep"]) == ("val/dnsmos_ovrl", 3)  # config.yml's defaults
    assert [entry["step"] for entry in document["scored"]] == RUN_EVALS
    logged = {step: value for step, value in _scalars(tiny_run["train"], "val/dnsmos_ovrl").items()}
    ranked = sorted(RUN_EVALS, key=lambda step: (-logged[step], step))
    assert [entry["step"] for entry in document["best"]] == ranked
    for entry in document["best"]:
        for prefix in utils.CHECKPOINT_PREFIXES:
            assert utils.is_complete_checkpoint(model_dir / f"{prefix}_{entry['step']}.pth"), (prefix, entry)
        # The trainer's values at full precision (TensorBoard keeps float32).
        assert entry["metrics"]["val/dnsmos_ovrl"] == pytest.approx(logged[entry["step"]], rel=1e-6)


def test_evaluate_reproduces_the_trainers_numbers(tiny_run, tmp_path):
    """evaluate.py on copies of the run's generator checkpoints gives the numbers the trainer logged (best.json
    holds them at full precision) to 1e-4."""
    model_dir = tiny_run["files"]["model_dir"]
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(model_dir / "config.json", folder)
    for step in RUN_EVALS:
        shutil.copy(model_dir / f"G_{step}.pth", folder)
    assert evaluate.main(["-m", str(folder)]) == 0
    table = evaluate.read_table(folder / evaluate.CSV_NAME)
    trainer = {entry["step"]: entry["metrics"] for entry in _best_document(tiny_run)["scored"]}
    assert sorted(table) == RUN_EVALS
    for step in RUN_EVALS:
        logged = {tag: value for tag, value in trainer[step].items() if value is not None}
        assert table[step].keys() == logged.keys(), step
        for tag, value in logged.items():
            assert table[step][tag] == pytest.approx(value, abs=1e-4), (step, tag)


@pytest.mark.slow
def test_a_run_with_every_language_and_whisper_logs_every_validation_tag(tmp_path, tiny_train_config):
    """Chinese, English and Japanese validation clips and a local (tiny, random) Whisper: two evaluations log
    every val/ tag of metrics.py, wer_en through pocketsphinx and cer_zh/cer_jp through Whisper included, and
    evaluate.py with the same Whisper reproduces them."""
    from tiny_whisper import build_tiny_whisper

    whisper = build_tiny_whisper(tmp_path / "whisper")
    filelists = make_dataset(tmp_path / "data", n_val=3, val_languages=("ZH", "EN", "JP"))
    config = tiny_config(tiny_train_config, filelists, log_interval=1, eval_interval=2)
    files = write_run_files(tmp_path / "run", config, eval_whisper=str(whisper))
    run_training(files, "--max-steps", "4", timeout=3600)
    train = _events(files["model_dir"])
    logged = {tag: _scalars(train, tag) for tag in train.Tags()["scalars"] if tag.startswith("val/")}
    assert sorted(logged) == sorted(metrics.METRICS)
    assert all(sorted(values) == [2, 4] for tag, values in logged.items() if tag != "val/f0_rmse"), logged
    assert evaluate.main(["-m", str(files["model_dir"]), "--whisper", str(whisper)]) == 0
    table = evaluate.read_table(files["model_dir"] / evaluate.CSV_NAME)
    for tag, values in logged.items():
        for step, value in values.items():
            assert table[step][tag] == pytest.approx(value, rel=1e-6, abs=1e-4), (step, tag)  # float32 events


@pytest.mark.parametrize(
    ("max_steps", "accumulation", "total"), [(None, 1, 3 * 10), (25, 1, 25), (None, 2, 14 + 3 + 5)]
)
def test_progress_bar_counts_the_runs_steps_to_the_configured_epochs(max_steps, accumulation, total):
    """Resumed at step 14 (epoch 2, 4 of its 10 batches done) of 3 epochs: the bar starts at 14 and ends at
    the run's last step, so its rate and ETA are the run's (with 2 micro-batches per update: 3 updates left in
    this epoch, 5 in the next)."""
    from types import SimpleNamespace

    state = train_nets.TrainState(step=14, epoch=2, batch_in_epoch=4)
    loop = train_ms.Trainloop.__new__(train_ms.Trainloop)  # only what _progress reads
    loop.trainer = SimpleNamespace(state=state)
    loop.hps = SimpleNamespace(train=SimpleNamespace(epochs=3, accumulation=accumulation))
    loop.rt = SimpleNamespace(is_main=True)
    loop.options = train_ms.RunOptions(max_steps=max_steps)
    loop.batches = type("Batches", (), {"batch_sampler": range(10), "__len__": lambda self: 10 - 4})()
    bar = loop._progress(skip=4)
    try:
        assert (bar.n, bar.total) == (14, total)
    finally:
        bar.close()
