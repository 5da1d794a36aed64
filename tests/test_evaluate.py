"""evaluate.py on tiny generator checkpoints: the trainer's metric function's numbers, metrics.csv, plots, skips."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import evaluate
import metrics
import utils
from config import load_model_config
from data_utils import TextAudioSpeakerLoader
from models import build_generator
from tests.train_tiny import make_dataset, tiny_config


@pytest.fixture(scope="module")
def scored_folder(tmp_path_factory: pytest.TempPathFactory, tiny_model_config: dict) -> dict:
    """Two generator checkpoints (steps 10 and 20, different random weights), a one-clip validation list, and
    the metrics computed on the nets in memory the way the trainer does."""
    folder = tmp_path_factory.mktemp("evaluate")
    filelists = make_dataset(folder / "data", n_train=1, n_val=1, n_speakers=1)
    config = tiny_config(tiny_model_config, filelists)
    config["data"]["spk2id"] = {"spk0": 0}
    config["data"]["n_speakers"] = 1
    model_dir = folder / "models"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    cfg = load_model_config(model_dir / "config.json")
    dataset = TextAudioSpeakerLoader(filelists["validation_files"], cfg.data)
    scorer = metrics.Scorer(cfg.data.sampling_rate)
    for step, seed in ((10, 1), (20, 2)):
        torch.manual_seed(seed)
        net_g = build_generator(cfg, for_training=True)  # in train mode with weight norm, as in the trainer
        utils.save_checkpoint(net_g, None, 2e-4, 1, model_dir / f"G_{step}.pth")
    expected = metrics.score_validation(net_g, dataset, cfg.data, "cpu", scorer)
    assert net_g.training  # the scoring left the trainer's mode alone
    return {"model_dir": model_dir, "expected": {20: expected}}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_reproduces_the_in_memory_metrics(scored_folder: dict, capsys: pytest.CaptureFixture) -> None:
    model_dir = scored_folder["model_dir"]
    assert evaluate.main(["-m", str(model_dir)]) == 0
    rows = read_csv(model_dir / evaluate.CSV_NAME)
    assert [row["checkpoint"] for row in rows] == ["G_10.pth", "G_20.pth"]
    expected = scored_folder["expected"][20]
    assert {"val/mel_l1", "val/pesq_wb", "val/stoi", "val/dnsmos_ovrl", "val/mcd", "val/duration_ratio"} <= set(
        expected
    )
    for tag, value in expected.items():
        assert float(rows[1][tag]) == pytest.approx(value, abs=1e-4), tag
    assert rows[0]["val/mcd"] != rows[1]["val/mcd"]  # other weights, other numbers
    plots = sorted(path.name for path in (model_dir / evaluate.PLOT_DIR).glob("*.png"))
    assert "val_mcd.png" in plots and "val_dnsmos_ovrl.png" in plots and evaluate.OVERVIEW_NAME in plots
    for name in ("val_mcd.png", evaluate.OVERVIEW_NAME):
        assert (model_dir / evaluate.PLOT_DIR / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    printed = capsys.readouterr().out
    best_mcd = min(rows, key=lambda row: float(row["val/mcd"]))["step"]
    assert f"best val/mcd: G_{best_mcd}.pth" in printed


def test_scored_checkpoints_are_skipped_unless_forced(
    scored_folder: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(scored_folder["model_dir"], model_dir)
    evaluate.write_table(model_dir / evaluate.CSV_NAME, {10: {"val/mcd": 9.0}})
    (model_dir / "G_30.pth").write_bytes(b"PK\x03\x04 truncated")  # a checkpoint being written
    scored: list[int] = []

    def fake_score(net_g, dataset, data, device, scorer, seed=metrics.DEFAULT_SEED) -> dict:
        scored.append(len(scored))
        return {"val/mcd": 1.0 + len(scored)}

    monkeypatch.setattr(metrics, "score_validation", fake_score)
    monkeypatch.setattr(metrics, "Scorer", lambda rate, whisper_dir="": None)
    assert evaluate.main(["-m", str(model_dir)]) == 0
    assert len(scored) == 1  # only G_20: G_10 is in the table, G_30 is incomplete
    table = evaluate.read_table(model_dir / evaluate.CSV_NAME)
    assert sorted(table) == [10, 20] and table[20] == {"val/mcd": 2.0}
    assert evaluate.main(["-m", str(model_dir), "--force", "G_10.pth"]) == 0
    assert evaluate.read_table(model_dir / evaluate.CSV_NAME)[10] == {"val/mcd": 3.0}


def test_clear_errors(tmp_path: Path, scored_folder: dict) -> None:
    with pytest.raises(SystemExit, match="model config .*config.json not found"):
        evaluate.main(["-m", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*G_99.pth"):
        evaluate.checkpoints_to_score(scored_folder["model_dir"], ["G_99.pth"])
    bad = tmp_path / "metrics.csv"
    bad.write_text("step,checkpoint,val/mcd\nten,G_10.pth,1.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics.csv:2: not a metrics.csv row"):
        evaluate.read_table(bad)


def test_best_steps_follow_each_metrics_direction() -> None:
    rows = {
        100: {"val/mcd": 8.0, "val/dnsmos_ovrl": 2.0, "val/duration_ratio": 1.3},
        200: {"val/mcd": 7.0, "val/dnsmos_ovrl": 1.5, "val/duration_ratio": 0.9, "val/f0_rmse": math.nan},
    }
    assert evaluate.best_steps(rows) == {
        "val/dnsmos_ovrl": (100, 2.0),
        "val/mcd": (200, 7.0),
        "val/duration_ratio": (200, 0.9),
    }
