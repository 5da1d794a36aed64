"""train_ms.py under real torchrun (gloo, CPU): two local processes, and two single-process "nodes" joined by a
c10d rendezvous. After every optimizer step both ranks hold bit-identical weights of all four nets (generator,
multi-period, WavLM and duration discriminators), with identical optimizer moments at the end; the ranks train on
disjoint clips; and a two-rank run SIGKILLed mid-step resumes to the uninterrupted run's exact state.

The runs go through tests/probe_run.py, which watches them with torch's public hooks (optimizer steps,
``torch.load``) and holds them at a named point for the kill.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_tiny import (
    PROBE_SCRIPT,
    REPO_ROOT,
    free_port,
    make_dataset,
    probe_env,
    read_jsonl,
    tiny_config,
    train_args,
    wait_paused,
    write_run_files,
)

N_CLIPS = 4
BATCH = 2
MAX_STEPS = 3  # 4 clips, 2 ranks x batch 2: 1 batch per epoch, so the runs cross two epoch boundaries
EVAL_INTERVAL = 2  # evaluate and save at step 2, then the final save at step 3
NETS = 4  # generator, multi-period, WavLM and duration discriminators: one optimizer each
PREFIXES = ("G", "D", "WD", "DUR")
CLIP = re.compile(r"^clip(\d+)\.bert\.pt$")


def _setup(folder: Path, model_config: dict, filelists: dict[str, str], **train) -> dict[str, Path]:
    config = tiny_config(model_config, filelists, eval_interval=EVAL_INTERVAL, log_interval=1, **train)
    return write_run_files(folder, config)


def _torchrun(*options: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options]


def _run(command: list[str], env: dict[str, str], timeout: float = 900) -> None:
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} exited with {result.returncode}\n{result.stderr[-6000:]}"


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _checkpoint(model_dir: Path, prefix: str, step: int) -> dict:
    return torch.load(model_dir / f"{prefix}_{step}.pth", map_location="cpu", weights_only=True)


def _batches_per_step(records: list[dict], n_train: int) -> list[list[int]]:
    """Each iteration's training clips: the last BATCH training-clip loads before its first optimizer step (the
    dataset check at startup and the evaluation read clips too)."""
    batches, loaded = [], []
    for record in records:
        if record["event"] == "load" and (match := CLIP.match(record["file"])) and int(match[1]) < n_train:
            loaded.append(int(match[1]))
        elif record["event"] == "opt" and record["optimizer"] == 0:
            batches.append(loaded[-BATCH:])
            loaded = []
    return batches


def _check_ranks_agree(probe_dir: Path, files: dict[str, Path]) -> None:
    records = {rank: read_jsonl(probe_dir / f"rank{rank}.jsonl") for rank in (0, 1)}
    steps = {
        rank: [(r["optimizer"], r["numel"], r["checksum"]) for r in records[rank] if r["event"] == "opt"]
        for rank in (0, 1)
    }
    # Every iteration steps the four optimizers in the same order on both ranks, with identical weights after.
    assert len(steps[0]) == NETS * MAX_STEPS, steps[0]
    assert [s[0] for s in steps[0]] == list(range(NETS)) * MAX_STEPS
    for index, (a, b) in enumerate(zip(steps[0], steps[1], strict=True)):
        assert a == b, f"optimizer {a[0]} of step {index // NETS + 1}: the ranks' weights differ"
    for net in range(NETS):
        checksums = [s[2] for s in steps[0] if s[0] == net]
        assert len(set(checksums)) == MAX_STEPS, f"optimizer {net} did not change its weights every step"

    # At the end: the same weights and Adam moments on both ranks, and they are what the checkpoints hold.
    final = {rank: torch.load(probe_dir / f"rank{rank}_final.pt", weights_only=True) for rank in (0, 1)}
    assert len(final[0]) == len(final[1]) == NETS
    for net in range(NETS):
        assert _same(final[0][net]["params"], final[1][net]["params"]), f"optimizer {net}: final weights differ"
        assert _same(final[0][net]["state"], final[1][net]["state"]), f"optimizer {net}: Adam state differs"
    matched = {}
    for prefix in PREFIXES:
        saved = _checkpoint(files["model_dir"], prefix, MAX_STEPS)["optimizer"]
        matched[prefix] = [net for net in range(NETS) if _same(saved, final[0][net]["state"])]
    assert sorted(sum(matched.values(), [])) == list(range(NETS)), f"checkpoint optimizers vs ranks: {matched}"

    for step, (a, b) in enumerate(zip(*(_batches_per_step(records[rank], N_CLIPS) for rank in (0, 1))), start=1):
        assert len(a) == len(b) == BATCH and not set(a) & set(b), f"step {step}: rank clips {a} and {b}"
        assert sorted(a + b) == list(range(N_CLIPS)), f"step {step}: clips {a} + {b} do not cover the epoch"

    g = _checkpoint(files["model_dir"], "G", MAX_STEPS)
    assert g["train_state"]["world_size"] == 2 and g["train_state"]["step"] == MAX_STEPS
    assert len(g["rng_states"]) == 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, str]:
    return make_dataset(tmp_path_factory.mktemp("ddp-data"), n_train=N_CLIPS)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_train_config, dataset) -> dict:
    """An uninterrupted two-rank run of MAX_STEPS steps under torchrun --standalone, watched by the probe."""
    root = tmp_path_factory.mktemp("ddp-straight")
    files = _setup(root / "run", tiny_train_config, dataset)
    probe_dir = root / "probe"
    command = _torchrun(
        "--standalone", "--nproc_per_node=2", str(PROBE_SCRIPT), *train_args(files, "--max-steps", str(MAX_STEPS))
    )
    _run(command, probe_env(probe_dir))
    return {"files": files, "probe_dir": probe_dir}


def test_torchrun_two_processes_keep_all_four_nets_identical(two_process_run):
    _check_ranks_agree(two_process_run["probe_dir"], two_process_run["files"])


def _collectives_per_iteration(records: list[dict]) -> list[list[str]]:
    """The Python-level collectives each ``train_step`` call made, in order."""
    iterations, current = [], None
    for record in records:
        if record["event"] == "iteration":
            if record["edge"] == "start":
                current = []
            else:
                iterations.append(current)
                current = None
        elif record["event"] == "collective" and current is not None:
            current.append(record["name"])
    return iterations


def test_each_iteration_makes_one_collective(two_process_run):
    """The finiteness of every update and the stop request travel in one all-reduce per iteration (DDP's
    gradient buckets aside, which overlap the backward)."""
    for rank in (0, 1):
        records = read_jsonl(two_process_run["probe_dir"] / f"rank{rank}.jsonl")
        iterations = _collectives_per_iteration(records)
        assert iterations == [["all_reduce"]] * MAX_STEPS, f"rank {rank}: {iterations}"


def test_a_nonfinite_loss_on_one_rank_skips_the_same_updates_on_both(tmp_path, tiny_train_config, dataset):
    """Rank 1 alone gets NaN audio in iteration 1: its NaN losses reach rank 0 through DDP's gradient
    all-reduce, so both ranks skip the multi-period, WavLM and generator updates (the duration discriminator
    never sees audio and steps), agree on it, and keep identical weights."""
    files = _setup(tmp_path / "run", tiny_train_config, dataset)
    probe_dir = tmp_path / "probe"
    command = _torchrun("--standalone", "--nproc_per_node=2", str(PROBE_SCRIPT), *train_args(files, "--max-steps", "2"))
    env = probe_env(probe_dir)
    env["BV2_PROBE_POISON"] = "1:1"
    _run(command, env)
    records = {rank: read_jsonl(probe_dir / f"rank{rank}.jsonl") for rank in (0, 1)}
    for rank in (0, 1):
        ends = [r for r in records[rank] if r["event"] == "iteration" and r["edge"] == "end"]
        assert [sorted(r["skipped"]) for r in ends] == [["D", "G", "WD"], []], f"rank {rank}: {ends}"
    steps = {rank: [(r["optimizer"], r["checksum"]) for r in records[rank] if r["event"] == "opt"] for rank in (0, 1)}
    assert len(steps[0]) == 1 + NETS, steps[0]  # iteration 1: the duration discriminator only
    assert steps[0] == steps[1], "the ranks' weights differ after the skipped updates"
    final = {rank: torch.load(probe_dir / f"rank{rank}_final.pt", weights_only=True) for rank in (0, 1)}
    for net in range(NETS):
        assert _same(final[0][net]["params"], final[1][net]["params"]), f"optimizer {net}: final weights differ"
        for param in final[0][net]["params"]:
            assert torch.isfinite(param).all(), f"optimizer {net}: non-finite weights"


@pytest.mark.slow  # two more two-rank torchrun runs (killed, resumed); CI runs it with -m slow
def test_torchrun_two_ranks_resume_after_sigkill(two_process_run, tmp_path, tiny_train_config, dataset):
    """SIGKILL the whole torchrun group (agent and both workers) in the middle of step 3, after the step-2
    checkpoint; a new two-rank torchrun resumes from it and ends bitwise equal to the uninterrupted run."""
    files = _setup(tmp_path / "run", tiny_train_config, dataset)
    probe_dir = tmp_path / "probe"
    command = _torchrun(
        "--standalone", "--nproc_per_node=2", str(PROBE_SCRIPT), *train_args(files, "--max-steps", "1000")
    )
    log = tmp_path / "killed.log"
    with open(log, "w", encoding="utf-8") as handle:
        agent = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=probe_env(probe_dir, pause=f"step:{NETS * EVAL_INTERVAL + 2}"),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    workers = []
    try:
        for rank in (0, 1):
            wait_paused(probe_dir, agent, rank)
            workers.append(json.loads((probe_dir / f"paused.{rank}").read_text(encoding="utf-8"))["pid"])
    finally:
        # torchrun starts each worker in a session of its own: the agent first (so it restarts nothing), then
        # the workers.
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        agent.wait(timeout=120)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    model_dir = files["model_dir"]
    assert sorted(p.name for p in model_dir.glob("G_*.pth")) == [f"G_{EVAL_INTERVAL}.pth"], log.read_text()[-3000:]

    resume = _torchrun(
        "--standalone", "--nproc_per_node=2", "train_ms.py", *train_args(files, "--max-steps", str(MAX_STEPS))
    )
    _run(resume, probe_env(None))
    expected_dir = two_process_run["files"]["model_dir"]
    for prefix in PREFIXES:
        expected, actual = _checkpoint(expected_dir, prefix, MAX_STEPS), _checkpoint(model_dir, prefix, MAX_STEPS)
        expected.pop("config", None), actual.pop("config", None)  # the configs name their own folders
        assert _same(expected, actual), f"{prefix}_{MAX_STEPS}.pth differs from the uninterrupted run's"


@pytest.mark.slow  # a third two-rank run, launched as two nodes; CI runs it with -m slow
def test_torchrun_two_nodes_c10d_rendezvous(tmp_path, tiny_train_config, dataset):
    files = _setup(tmp_path / "run", tiny_train_config, dataset)
    probe_dir = tmp_path / "probe"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for node_rank in (0, 1):
        command = _torchrun(
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            "--rdzv_id=train_ms_test",
            str(PROBE_SCRIPT),
            *train_args(files, "--max-steps", str(MAX_STEPS)),
        )
        log = open(tmp_path / f"node{node_rank}.log", "w", encoding="utf-8")  # noqa: SIM115
        nodes.append(
            (
                subprocess.Popen(
                    command, cwd=REPO_ROOT, env=probe_env(probe_dir), stdout=log, stderr=subprocess.STDOUT
                ),
                log,
            )
        )
    try:
        for process, log in nodes:
            returncode = process.wait(timeout=900)
            log.close()
            assert returncode == 0, (Path(log.name).read_text(encoding="utf-8"))[-6000:]
    finally:
        for process, _ in nodes:
            if process.poll() is None:
                process.kill()
    _check_ranks_agree(probe_dir, files)


# ------------------------------------------------------------------------------------------ torchrun restarts


def _kill_points(rng: random.Random) -> list[str]:
    """Two BV2_PROBE_KILL entries: attempt 0 dies within steps 1-2 or while writing the step-2 checkpoint (so
    the step-3 checkpoint does not exist yet), attempt 1 within its first iteration or its first checkpoint
    write (it resumes from step 0 or 2, so both always come)."""
    points = []
    for attempt, opt_steps in ((0, NETS * EVAL_INTERVAL), (1, NETS)):
        if rng.random() < 0.25:
            points.append(f"{attempt}:0:save:{rng.randint(1, len(PREFIXES))}")  # rank 0 writes the checkpoints
        else:
            points.append(f"{attempt}:{rng.randint(0, 1)}:step:{rng.randint(1, opt_steps)}")
    return points


@pytest.mark.slow
def test_torchrun_restarts_after_two_kills_end_bit_identical(two_process_run, tmp_path, tiny_train_config, dataset):
    """torchrun --max-restarts with the c10d rendezvous: a worker is SIGKILLed at a random point (mid-step, or
    half-way through a checkpoint file), twice; each restarted group joins its own process group, resumes from
    the newest complete checkpoint, and the run exits 0 with every net and optimizer state bitwise equal to the
    uninterrupted run's. The survivors of each kill are gone before the next attempt starts."""
    seed = int(os.environ.get("BV2_RESTART_SEED") or time.time_ns() % 1_000_000)
    kills = _kill_points(random.Random(seed))
    files = _setup(tmp_path / "run", tiny_train_config, dataset)
    probe_dir = tmp_path / "probe"
    command = _torchrun(
        "--nnodes=1",
        "--nproc_per_node=2",
        "--max-restarts=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=train_ms_restarts",
        str(PROBE_SCRIPT),
        *train_args(files, "--max-steps", str(MAX_STEPS)),
    )
    env = probe_env(probe_dir)
    env["BV2_PROBE_KILL"] = ",".join(kills)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    where = f"seed {seed} (BV2_RESTART_SEED), kills {kills}"
    assert result.returncode == 0, f"{where}: exit {result.returncode}\n{result.stderr[-6000:]}"

    records = [r for rank in (0, 1) for r in read_jsonl(probe_dir / f"rank{rank}.jsonl")]
    killed = sorted((r for r in records if r["event"] == "kill"), key=lambda r: r["time"])
    assert [r["attempt"] for r in killed] == [0, 1], where
    starts = {(r["attempt"], r["pid"]): r["time"] for r in records if r["event"] == "start"}
    assert sorted(attempt for attempt, _ in starts) == [0, 0, 1, 1, 2, 2], f"{where}: {starts}"
    for kill in killed:
        restart = min(t for (attempt, _), t in starts.items() if attempt == kill["attempt"] + 1)
        assert restart - kill["time"] < 120, (
            f"{where}: attempt {kill['attempt'] + 1} began only after {restart - kill['time']:.0f} s"
        )

    expected_dir = two_process_run["files"]["model_dir"]
    for prefix in PREFIXES:
        expected, actual = (
            _checkpoint(expected_dir, prefix, MAX_STEPS),
            _checkpoint(files["model_dir"], prefix, MAX_STEPS),
        )
        expected.pop("config", None), actual.pop("config", None)  # the configs name their own folders
        assert _same(expected, actual), f"{where}: {prefix}_{MAX_STEPS}.pth differs from the uninterrupted run's"


@pytest.mark.slow  # two two-rank runs of 8 clips; CI runs it with -m slow
def test_torchrun_with_accumulation_and_checkpointing_resumes_after_a_kill(tmp_path, tiny_train_config):
    """grad_accum_steps 2 and activation checkpointing on two ranks: each update takes two micro-batches, the
    ranks hold identical weights after every optimizer step, and a run whose rank 1 is SIGKILLed in step 3
    (after the step-2 checkpoint), restarted by torchrun, ends bitwise equal to an uninterrupted one."""
    data = make_dataset(tmp_path / "data", n_train=2 * N_CLIPS)  # two batches per rank and epoch
    settings = dict(grad_accum_steps=2, activation_checkpointing=True)
    runs = {}
    for name, kill in (("straight", None), ("killed", f"0:1:step:{NETS * EVAL_INTERVAL + 2}")):
        files = _setup(tmp_path / name, tiny_train_config, data, **settings)
        probe_dir = tmp_path / f"{name}-probe"
        command = _torchrun(
            "--nnodes=1",
            "--nproc_per_node=2",
            "--max-restarts=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            f"--rdzv-id=accumulation_{name}",
            str(PROBE_SCRIPT),
            *train_args(files, "--max-steps", str(MAX_STEPS)),
        )
        env = probe_env(probe_dir)
        if kill:
            env["BV2_PROBE_KILL"] = kill
        _run(command, env, timeout=1800)
        runs[name] = files["model_dir"], probe_dir

    _, probe_dir = runs["straight"]
    records = {rank: read_jsonl(probe_dir / f"rank{rank}.jsonl") for rank in (0, 1)}
    for rank in (0, 1):
        starts = [r["micro_batches"] for r in records[rank] if r["event"] == "iteration" and r["edge"] == "start"]
        assert starts == [2] * MAX_STEPS, f"rank {rank}: micro-batches per update {starts}"
    steps = [[(r["optimizer"], r["checksum"]) for r in records[rank] if r["event"] == "opt"] for rank in (0, 1)]
    assert len(steps[0]) == NETS * MAX_STEPS and steps[0] == steps[1], "the ranks' weights differ"

    killed = [r for rank in (0, 1) for r in read_jsonl(runs["killed"][1] / f"rank{rank}.jsonl") if r["event"] == "kill"]
    assert len(killed) == 1, killed
    for prefix in PREFIXES:
        expected, actual = (_checkpoint(runs[name][0], prefix, MAX_STEPS) for name in ("straight", "killed"))
        expected.pop("config", None), actual.pop("config", None)  # the configs name their own folders
        assert _same(expected, actual), f"{prefix}_{MAX_STEPS}.pth differs from the uninterrupted run's"
    state = _checkpoint(runs["killed"][0], "G", MAX_STEPS)["train_state"]
    # Three updates of two micro-batches: the third epoch's two batches were both consumed by update 3.
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (MAX_STEPS, 3, 2), state


@pytest.mark.slow
def test_a_stuck_rank_is_an_error_naming_rank_step_and_operation(tmp_path, tiny_train_config, dataset):
    """Rank 1 stops (SIGSTOP: stuck, its connections open) after the duration discriminator's update of step 2;
    rank 0 then waits in the DDP gradient all-reduce of that step until train_ms.process_group_timeout, and
    exits with an error that names its rank, the step and the operation instead of hanging."""
    files = _setup(tmp_path / "run", tiny_train_config, dataset)
    yml = yaml.safe_load(files["yml"].read_text(encoding="utf-8"))
    yml["train_ms"]["process_group_timeout"] = 60
    files["yml"].write_text(yaml.safe_dump(yml), encoding="utf-8")
    probe_dir = tmp_path / "probe"
    command = _torchrun("--standalone", "--nproc_per_node=2", str(PROBE_SCRIPT), *train_args(files, "--max-steps", "3"))
    env = probe_env(probe_dir)
    env["BV2_PROBE_KILL"] = f"0:1:step:{NETS + 1}:STOP"
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    message = "rank 0, step 2: the training step (DDP's gradient all-reduce, the iteration's agreement) did not finish within 60 s"
    assert message in result.stderr, result.stderr[-6000:]
    stopped = next(r for r in read_jsonl(probe_dir / "rank1.jsonl") if r["event"] == "kill")
    assert stopped["signal"] == "STOP"
