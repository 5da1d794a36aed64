"""Real-time factor of generator inference on CPU, with the official model size.

    python bench/infer.py [--config configs/config.json] [--seconds 5] [--repeats 3] [--threads N]

What is measured: `SynthesizerTrn.infer` (text encoder, both duration predictors, flow, decoder) for one
utterance of about `--seconds` of audio, built from the official config (random weights, weight norm folded as
infer.py does). What is not: the text front end and BERT. The BERT features are random tensors of the right
shape [1, 1024, T] and the phone ids are random (with blanks), because neither the real BERT models nor a
trained model are available offline. An untrained duration predictor gives about one frame per id, so the
length scale is calibrated once to make the output about `--seconds` long; RTF = compute time / audio time.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import infer  # noqa: E402  (the repository root is put on the path just above)
from models import build_generator  # noqa: E402

logger = logging.getLogger(__name__)

OFFICIAL_CONFIG_CANDIDATES = (
    REPO_ROOT / "configs" / "config.json",
    REPO_ROOT.parent / "shared" / "reference" / "official_config.json",
)
# Spoken Mandarin runs at roughly 4-5 characters a second, i.e. ~9 phones; with blanks ~19 ids per second.
IDS_PER_SECOND = 19


def _find_config(path: str | None) -> Path:
    if path:
        return Path(path)
    for candidate in OFFICIAL_CONFIG_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no official config found; tried {[str(c) for c in OFFICIAL_CONFIG_CANDIDATES]}")


def _config_with_speakers(path: Path, n_speakers: int) -> dict:
    config = json.loads(path.read_text(encoding="utf-8"))
    config["data"]["n_speakers"] = n_speakers
    config["data"]["spk2id"] = {f"spk{i}": i for i in range(n_speakers)}
    return config


def _inputs(n_ids: int, n_vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(1, n_vocab, (1, n_ids), generator=generator)
    x[:, ::2] = 0
    zeros = torch.zeros(1, infer.BERT_FEATURE_DIM, n_ids)
    return {
        "x": x,
        "x_lengths": torch.tensor([n_ids]),
        "sid": torch.tensor([0]),
        "tone": torch.zeros(1, n_ids, dtype=torch.long),
        "language": torch.zeros(1, n_ids, dtype=torch.long),
        "bert": torch.randn(1, infer.BERT_FEATURE_DIM, n_ids, generator=generator),
        "ja_bert": zeros,
        "en_bert": zeros,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="model config (default: configs/config.json, else the kit's)")
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="target audio length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1234)

    config_path = _find_config(args.config)
    config = _config_with_speakers(config_path, args.speakers)
    sampling_rate = config["data"]["sampling_rate"]
    net = build_generator(config, for_training=False)
    infer.fold_weight_norm(net)
    n_params = sum(p.numel() for p in net.parameters())
    inputs = _inputs(max(int(args.seconds * IDS_PER_SECOND), 3), net.enc_p.emb.num_embeddings)
    scales = {"sdp_ratio": 0.2, "noise_scale": 0.6, "noise_scale_w": 0.8}

    def run(length_scale: float) -> tuple[float, float]:
        torch.manual_seed(0)  # the same noise every run, so every run makes the same number of frames
        start = time.perf_counter()
        o, _ = infer.infer_waveform(net, **inputs, **scales, length_scale=length_scale)
        return time.perf_counter() - start, o.shape[-1] / sampling_rate

    # Warm-up, and calibration of the length scale: ceil() of the durations makes the length only roughly
    # proportional to the scale, so a few correction steps are needed.
    length_scale = 1.0
    for _ in range(4):
        _, seconds = run(length_scale)
        if abs(seconds - args.seconds) < 0.05 * args.seconds:
            break
        length_scale *= args.seconds / seconds
    timings, durations = [], []
    for _ in range(args.repeats):
        elapsed, seconds = run(length_scale)
        timings.append(elapsed)
        durations.append(seconds)
    rtfs = [t / d for t, d in zip(timings, durations)]
    print(
        f"config {config_path} ({n_params / 1e6:.1f} M generator parameters, {sampling_rate} Hz), "
        f"{torch.get_num_threads()} CPU thread(s), {inputs['x'].shape[1]} ids, length scale {length_scale:.2f}, "
        f"random weights and random BERT features (front end and BERT not included)"
    )
    print(
        f"audio {statistics.mean(durations):.2f} s, compute {statistics.median(timings):.2f} s (median of "
        f"{args.repeats}); RTF {statistics.median(rtfs):.3f} (min {min(rtfs):.3f}, max {max(rtfs):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
