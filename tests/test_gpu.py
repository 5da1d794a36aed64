"""Checks that need a CUDA device: ``python3 -m pytest -m gpu`` (bench/gpu_check.sh runs them).

Excluded from the default suite: without ``gpu`` in the ``-m`` expression, or without a CUDA device, every test
here skips with the reason. They cover what the CPU suite cannot: the bf16 and fp16 training steps against
fp32, the fp16 GradScaler's skipped update, fp16 MAS scores, the Triton MAS kernel on a real device, random
draws without host syncs, DDP with two ranks on one GPU (gloo; NCCL cannot put two ranks on one GPU, so it is
checked with one rank) and a torchrun run on CUDA (nccl with two or more GPUs) that is killed and resumes.

Run as a script by torchrun (``python -m torch.distributed.run ... tests/test_gpu.py ddp-worker CONFIG OUT``),
this file is one rank of the two-ranks-on-one-GPU check.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # when torchrun runs this file as a script

import commons  # noqa: E402
import monotonic_align  # noqa: E402

PRECISIONS = {"fp32": {}, "bf16": {"bf16_run": True}, "fp16": {"fp16_run": True}}
# First-step losses of bf16/fp16 against fp32 on the same weights, batch and random draws. Half precision
# changes single values at the 1e-3 level and means of many by less; these bounds catch a broken path (a loss
# off by a factor, a term in the wrong dtype) without flagging rounding.
LOSS_RTOL = {"loss/g/mel": 0.05, "loss/g/kl": 0.1, "loss/g/total": 0.1, "loss/d/total": 0.1}

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True, scope="module")
def _gpu_selected_and_present(request: pytest.FixtureRequest) -> None:
    """Before any other fixture of this module (autouse, module scope): skip unless selected and present."""
    if "gpu" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("GPU checks run only when selected: python3 -m pytest -m gpu (or bash bench/gpu_check.sh)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


def cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


# --------------------------------------------------------------------------------------------------- MAS


def lengths_mask(t_ys: list[int], t_xs: list[int], max_y: int, max_x: int) -> torch.Tensor:
    rows = torch.arange(max_y)[None, :] < torch.tensor(t_ys)[:, None]
    cols = torch.arange(max_x)[None, :] < torch.tensor(t_xs)[:, None]
    return (rows[:, :, None] & cols[:, None, :]).float()


@pytest.mark.parametrize(
    "t_ys, t_xs, max_y, max_x",
    [
        ([860] * 16, [200] * 16, 860, 200),  # training size
        ([1000, 990, 700, 300], [300, 299, 120, 300], 1000, 300),  # unequal lengths, t_x == t_y, padding
        ([5, 1, 9, 3], [7, 1, 1, 3], 12, 8),  # t_x > t_y (the reference's walk), length-1 items, padding
        ([40, 0], [20, 0], 40, 20),  # an empty item
    ],
)
def test_cuda_mas_equals_the_cpu_kernel(t_ys: list[int], t_xs: list[int], max_y: int, max_x: int) -> None:
    assert monotonic_align.triton_usable(cuda()), "Triton cannot build the kernel here: the torch fallback would run"
    generator = torch.Generator().manual_seed(sum(t_ys) + sum(t_xs))
    mask = lengths_mask(t_ys, t_xs, max_y, max_x)
    neg_cent = torch.randn(mask.shape, generator=generator) * 3.0 - 40.0
    expected = monotonic_align.maximum_path_cpu(neg_cent, mask, n_threads=1)
    on_device = monotonic_align.maximum_path(neg_cent.to(cuda()), mask.to(cuda()))
    assert on_device.device.type == "cuda"
    assert torch.equal(on_device.cpu(), expected), "Triton kernel differs from the numba kernel"
    fallback = monotonic_align.maximum_path_torch(neg_cent.to(cuda()), mask.to(cuda()))
    assert torch.equal(fallback.cpu(), expected), "torch fallback differs from the numba kernel"


def test_fp16_mas_scores_stay_finite() -> None:
    """Log standard deviations near -6 over 192 channels overflow float16; the scores leave autocast."""
    import models

    generator = torch.Generator().manual_seed(0)
    z_p = (3.0 * torch.randn(4, 192, 300, generator=generator)).to(cuda())
    m_p = torch.randn(4, 192, 80, generator=generator).to(cuda())
    logs_p = (-6.0 + 0.5 * torch.randn(4, 192, 80, generator=generator)).to(cuda())
    expected = models.mas_log_likelihood(z_p, m_p, logs_p)
    with torch.autocast("cuda", dtype=torch.float16):
        scores = models.mas_log_likelihood(z_p, m_p, logs_p)
        half = models.mas_log_likelihood(z_p.half(), m_p.half(), logs_p.half())
    assert scores.dtype == torch.float32 and torch.equal(scores, expected)
    assert torch.isfinite(expected).all() and torch.isfinite(half).all()


def test_random_draws_and_mas_make_no_host_sync() -> None:
    """The reference's CPU draws reach the device from pinned memory, and MAS stays on the device: nothing in
    them waits for the GPU queue (torch's sync debug mode raises on every synchronising call)."""
    device = cuda()
    x = torch.randn(2, 4, 100, device=device)
    lengths = torch.tensor([100, 60], device=device)
    neg_cent = torch.randn(2, 50, 20, device=device)
    mask = torch.ones_like(neg_cent)
    assert monotonic_align.triton_usable(device)
    monotonic_align.maximum_path(neg_cent, mask)  # built outside the check
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            torch.rand(4).to(device)  # the reference's pageable copy: the mode catches it
        commons.host_random(torch.randn, (2, 2, 17), device)
        _, ids = commons.rand_slice_segments(x, lengths, 8)
        path = monotonic_align.maximum_path(neg_cent, mask)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert ids.device == path.device == device
    assert bool((ids >= 0).all()) and bool((ids <= lengths - 8).all())


# -------------------------------------------------------------------------------------------- training step


def tiny_hparams(config: dict, tmp_path: Path, **train: object):
    """The model config ``config`` with ``train`` overrides, loaded the way train_ms.py loads its config file."""
    from config import load_model_config

    config = json.loads(json.dumps(config))
    config["train"].update(train)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.json')))}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return load_model_config(path)


def build(hps, seed: int = 1234):
    """Trainer (nets, optimizers, scaler) on the GPU with the precision of ``hps``, from seeded weights."""
    import train_nets
    import train_runtime

    device = cuda()
    rt = train_runtime.Runtime(0, 0, 1, device, train_runtime.resolve_amp_dtype(hps.train, device))
    train_runtime.configure_kernels(device, hps.train)
    torch.manual_seed(seed)
    trainer = train_nets.build_trainer(hps, rt)
    trainer.set_train_mode()
    return trainer, rt


def gpu_batch(hps, batch_size: int = 2, seconds: float = 1.0, seed: int = 0):
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from train_step import synthetic_batch

    return synthetic_batch(hps, batch_size, seconds, torch.Generator().manual_seed(seed)).to(cuda())


@pytest.fixture(scope="module")
def gpu_config(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny dev-shaped model config with a tiny WavLM built locally (no reference kit needed)."""
    from conftest import CONFIGS_DIR, build_tiny_wavlm

    config = json.loads((CONFIGS_DIR / "tiny.json").read_text(encoding="utf-8"))
    config["model"]["slm"]["model"] = str(build_tiny_wavlm(tmp_path_factory.mktemp("tiny-wavlm")))
    config["train"]["segment_size"] = 4096
    return config


def test_fp32_bf16_fp16_steps_are_finite_and_close(gpu_config: dict, tmp_path: Path) -> None:
    import training

    first_losses = {}
    for name, flags in PRECISIONS.items():
        if name == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            continue  # emulated bf16 (V100, T4) is refused by training
        hps = tiny_hparams(gpu_config, tmp_path, **flags)
        trainer, rt = build(hps)
        batch = gpu_batch(hps)
        torch.manual_seed(0)  # the same slices, dropout masks and MAS noise in every precision
        for step in range(3):
            metrics, _ = training.train_step(trainer, batch, hps, rt)
            values = training.scalar_values(metrics)
            bad = {tag: value for tag, value in values.items() if not math.isfinite(value)}
            assert not bad, f"{name} step {step + 1}: non-finite {bad}"
            assert metrics["skipped"] == [] or name == "fp16", f"{name}: updates skipped {metrics['skipped']}"
            if step == 0:
                first_losses[name] = values
    for name in first_losses.keys() - {"fp32"}:
        for tag, rtol in LOSS_RTOL.items():
            reference, value = first_losses["fp32"][tag], first_losses[name][tag]
            assert value == pytest.approx(reference, rel=rtol), f"{name} {tag}: {value} vs fp32 {reference}"


def test_fp16_grad_scaler_skips_an_injected_inf(gpu_config: dict, tmp_path: Path) -> None:
    import training

    hps = tiny_hparams(gpu_config, tmp_path, fp16_run=True)
    trainer, rt = build(hps)
    assert trainer.scaler.is_enabled()
    batch = gpu_batch(hps)
    training.train_step(trainer, batch, hps, rt)  # the optimizers have state from here on
    net_g = trainer.g.raw
    before = {name: p.detach().clone() for name, p in net_g.named_parameters()}
    scale = trainer.scaler.get_scale()
    victim = next(p for p in net_g.parameters() if p.requires_grad)
    hook = victim.register_hook(lambda grad: torch.full_like(grad, math.inf))
    try:
        training.train_step(trainer, batch, hps, rt)
    finally:
        hook.remove()
    assert trainer.scaler.get_scale() == scale * trainer.scaler.get_backoff_factor()
    changed = [name for name, p in net_g.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert changed == [], f"the generator moved although its gradient held an inf: {changed[:5]}"
    training.train_step(trainer, batch, hps, rt)
    assert any(not torch.equal(p.detach(), before[name]) for name, p in net_g.named_parameters()), (
        "the step after the skipped one did not update the generator"
    )


# ------------------------------------------------------------------------------------------------ torchrun


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (torchrun's workers), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def test_torchrun_on_cuda_is_killed_and_resumes(gpu_config: dict, tmp_path: Path) -> None:
    """20 steps through torchrun (nccl when two GPUs are there), SIGKILLed after the step-10 checkpoint and
    resumed to step 20; no DDP gradient-layout warning on the way."""
    from train_tiny import make_dataset, tiny_config, write_run_files

    nproc = min(2, torch.cuda.device_count())
    filelists = make_dataset(tmp_path / "data")
    config = tiny_config(gpu_config, filelists, eval_interval=10, log_interval=5)
    files = write_run_files(tmp_path / "run", config)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "train_ms.py",
        "-c",
        str(files["config"]),
        "-m",
        str(files["dataset"]),
        "-y",
        str(files["yml"]),
        "--device",
        "cuda",
        "--num-workers",
        "0",
        "--max-steps",
        "20",
    ]
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    model_dir = files["model_dir"]
    first_log = tmp_path / "first.log"
    with open(first_log, "w", encoding="utf-8") as handle:
        agent = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not (model_dir / "G_10.pth").exists():
            assert agent.poll() is None, f"the run ended before step 10:\n{first_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no G_10.pth after 300 s:\n{first_log.read_text()[-4000:]}"
            time.sleep(0.05)
    finally:
        workers = _children(agent.pid)
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        agent.wait(timeout=120)
    assert not (model_dir / "G_20.pth").exists()

    resumed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = first_log.read_text() + resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-6000:]
    assert (model_dir / "G_20.pth").exists(), output[-6000:]
    weights = torch.load(model_dir / "G_20.pth", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())
    assert "Grad strides do not match" not in output


def test_torchrun_on_cuda_restarts_after_a_kill(gpu_config: dict, tmp_path: Path) -> None:
    """torchrun --max-restarts with the c10d rendezvous on CUDA (nccl when two GPUs are there): the last rank
    SIGKILLs itself after its 12th optimizer step (step 3, after the step-2 checkpoint); torchrun restarts the
    group, which resumes and ends at step 4 with finite weights (tests/test_train_ddp.py checks the same on the
    CPU bit for bit)."""
    from train_tiny import (
        PROBE_SCRIPT,
        free_port,
        make_dataset,
        probe_env,
        read_jsonl,
        tiny_config,
        train_args,
        write_run_files,
    )

    nproc = min(2, torch.cuda.device_count())
    filelists = make_dataset(tmp_path / "data")
    config = tiny_config(gpu_config, filelists, eval_interval=2, log_interval=1)
    files = write_run_files(tmp_path / "run", config)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={nproc}",
        "--max-restarts=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=gpu_restart",
        str(PROBE_SCRIPT),
        *train_args(files, "--max-steps", "4"),
    ]
    command[command.index("--device") + 1] = "cuda"  # train_args names the CPU
    probe_dir = tmp_path / "probe"
    env = {**probe_env(probe_dir), "BV2_PROBE_KILL": f"0:{nproc - 1}:step:12"}
    env = {key: value for key, value in env.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    records = [r for rank in range(nproc) for r in read_jsonl(probe_dir / f"rank{rank}.jsonl")]
    assert [r["attempt"] for r in records if r["event"] == "kill"] == [0], records[-5:]
    assert sorted({r["attempt"] for r in records if r["event"] == "start"}) == [0, 1]
    weights = torch.load(files["model_dir"] / "G_4.pth", map_location="cpu", weights_only=False)["model"]
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


# ------------------------------------------------------------------------------------- DDP on one GPU


def _torchrun_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def test_ddp_with_two_ranks_on_one_gpu(gpu_config: dict, tmp_path: Path) -> None:
    """Two torchrun ranks share the one GPU over gloo: DDP on CUDA tensors (rank 0's weights broadcast, gradients
    averaged), the iteration's one collective, three steps; both ranks end with the same finite weights. NCCL
    refuses two ranks on one GPU, so each rank also builds a one-rank NCCL group and reduces on the GPU."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(gpu_config), encoding="utf-8")
    result = tmp_path / "ddp.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(Path(__file__).resolve()), "ddp-worker", str(config), str(result)]
    run = subprocess.run(command, cwd=REPO_ROOT, env=_torchrun_env(), capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "Grad strides do not match" not in output
    report = json.loads(result.read_text(encoding="utf-8"))
    assert report["world_size"] == 2 and report["ranks_equal"], report
    assert report["weights_finite"] and all(math.isfinite(loss) for loss in report["losses"]), report
    assert report["moved"], "the weights did not change in three steps"
    assert report["nccl_one_rank_sum"] in (None, [1.0, 1.0, 1.0]), report
    if torch.distributed.is_nccl_available():
        assert report["nccl_one_rank_sum"] == [1.0, 1.0, 1.0]


def ddp_worker(config_path: str, result_path: str) -> None:
    """One rank of ``test_ddp_with_two_ranks_on_one_gpu``: gloo, every rank on cuda:0, its own seed and batch."""
    import torch.distributed as dist

    import train_nets
    import train_runtime
    import training
    from config import load_model_config

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    hps = load_model_config(config_path)
    rt = train_runtime.Runtime(rank, 0, world_size, device, train_runtime.resolve_amp_dtype(hps.train, device))
    train_runtime.configure_kernels(device, hps.train)
    torch.manual_seed(1234 + rank)  # different weights on each rank: DDP must start them from rank 0's
    trainer = train_nets.build_trainer(hps, rt)
    trainer.set_train_mode()
    start = _flat_weights(trainer)
    batch = gpu_batch(hps, seed=rank)  # different data on each rank: DDP must average the gradients
    losses = []
    for _ in range(3):
        metrics, _ = training.train_step(trainer, batch, hps, rt)
        losses.append(training.scalar_values(metrics)["loss/g/total"])
    weights = _flat_weights(trainer)
    gathered = [torch.empty_like(weights) for _ in range(world_size)]
    dist.all_gather(gathered, weights)
    nccl_sum = None
    if dist.is_nccl_available():
        nccl = dist.new_group([0], backend="nccl")  # every rank takes part in creating it
        if rank == 0:
            value = torch.ones(3, device=device)
            dist.all_reduce(value, group=nccl)
            nccl_sum = value.tolist()
    if rank == 0:
        report = {
            "world_size": world_size,
            "losses": losses,
            "ranks_equal": all(torch.equal(gathered[0], other) for other in gathered),
            "weights_finite": bool(torch.isfinite(weights).all()),
            "moved": not torch.equal(start, weights),
            "nccl_one_rank_sum": nccl_sum,
        }
        Path(result_path).write_text(json.dumps(report), encoding="utf-8")
    dist.barrier()
    dist.destroy_process_group()


def _flat_weights(trainer) -> torch.Tensor:
    """Every trained parameter of every net, flattened, on the CPU (for gloo's all_gather)."""
    return torch.cat([p.detach().double().flatten().cpu() for part in trainer.parts() for p in part.raw.parameters()])


if __name__ == "__main__":
    if sys.argv[1:2] != ["ddp-worker"] or len(sys.argv) != 4:
        sys.exit("usage: python -m torch.distributed.run --nproc_per_node=2 tests/test_gpu.py ddp-worker CONFIG OUT")
    ddp_worker(sys.argv[2], sys.argv[3])
