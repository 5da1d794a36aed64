"""train_ms.py under real torchrun (gloo, CPU): two local processes, and two single-process "nodes" joined by a
c10d rendezvous. After every step both ranks hold bit-identical generator weights, and they train on disjoint
clips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from train_tiny import REPO_ROOT, free_port, make_dataset, read_jsonl, subprocess_env, tiny_config, write_run_files

N_CLIPS = 4
MAX_STEPS = 2  # 4 clips, 2 ranks x batch 2: 1 batch per epoch, so the run crosses an epoch boundary


def _train_args(files: dict[str, Path], dump: Path) -> list[str]:
    return [
        "train_ms.py",
        "-c",
        str(files["config"]),
        "-m",
        str(files["dataset"]),
        "-y",
        str(files["yml"]),
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--threads",
        "1",
        "--max-steps",
        str(MAX_STEPS),
        "--debug-dump",
        str(dump),
    ]


def _setup(tmp_path: Path, dev_config: dict) -> dict[str, Path]:
    filelists = make_dataset(tmp_path / "data", n_train=N_CLIPS)
    return write_run_files(tmp_path / "run", tiny_config(dev_config, filelists, eval_interval=1000))


def _check_ranks_agree(dump: Path, files: dict[str, Path]) -> None:
    records = {rank: read_jsonl(dump / f"rank{rank}.jsonl") for rank in (0, 1)}
    steps = {rank: [r for r in records[rank] if r["event"] == "step"] for rank in (0, 1)}
    assert [r["step"] for r in steps[0]] == [r["step"] for r in steps[1]] == list(range(1, MAX_STEPS + 1))
    for a, b in zip(steps[0], steps[1]):
        assert a["checksum"] == b["checksum"], f"generator weights differ between ranks after step {a['step']}"
    assert len({r["checksum"] for r in steps[0]}) == MAX_STEPS  # and they did change every step

    for epoch in (1, 2):
        batches = {
            rank: next(r["batches"] for r in records[rank] if r["event"] == "epoch" and r["epoch"] == epoch)
            for rank in (0, 1)
        }
        clips = {rank: [i for batch in batches[rank] for i in batch] for rank in (0, 1)}
        assert not set(clips[0]) & set(clips[1]), f"epoch {epoch}: ranks share clips {clips}"
        assert sorted(clips[0] + clips[1]) == list(range(N_CLIPS))

    checkpoint = torch.load(files["model_dir"] / f"G_{MAX_STEPS}.pth", map_location="cpu", weights_only=True)
    assert checkpoint["train_state"]["world_size"] == 2 and checkpoint["train_state"]["step"] == MAX_STEPS
    assert len(checkpoint["rng_states"]) == 2


def _run(command: list[str], timeout: float = 900) -> None:
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command} exited with {result.returncode}\n{result.stderr[-6000:]}"


def test_torchrun_two_processes(tmp_path, dev_config):
    files = _setup(tmp_path, dev_config)
    dump = tmp_path / "dump"
    _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *_train_args(files, dump)]
    )
    _check_ranks_agree(dump, files)


def test_torchrun_two_nodes_c10d_rendezvous(tmp_path, dev_config):
    files = _setup(tmp_path, dev_config)
    dump = tmp_path / "dump"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            "--rdzv_id=train_ms_test",
            *_train_args(files, dump),
        ]
        log = open(tmp_path / f"node{node_rank}.log", "w", encoding="utf-8")  # noqa: SIM115
        nodes.append(
            (subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT), log)
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
    _check_ranks_agree(dump, files)
