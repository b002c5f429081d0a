"""Check and time the encoder's GPU path on a machine that has torch and transformers only.

A GPU box often lacks the rest of the stack (broker, Qdrant, Faust, pydantic), so this script
imports nothing beyond ``encoders``. It runs ``run_encoder_bench`` (what ``coldstream bench
encoder`` runs) with the shipped defaults on short and long texts, then times the streaming path
(MicroBatcher) in float32 and the reduced precision, interleaved, with one caller per text and with
callers of 32 texts (the shape of a Faust batch of item events), and the reduced precision with
cuDNN attention on and off.

    python scripts/gpu_encoder_check.py --texts texts.json --out DIR [--model DIR] [--scale 6]

``texts.json`` is a JSON list of item texts; the README's figures used the 1,700 MovieLens texts
that ``coldstream bench encoder --texts 0`` encodes. ``--model`` defaults to the packaged model.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from encoders.bench import (
    STREAM_CALLER_TEXTS,
    format_bench,
    run_encoder_bench,
    time_micro_batched,
)
from encoders.config import EncoderConfig
from encoders.model import (
    TextEncoder,
    configure_cuda_attention,
    dtype_name,
    load_encoder,
    pick_device,
    reduced_dtype,
)

LONG_TEXT_PARTS = 14  # real texts joined into one: ~128 tokens, the default max_length


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _say_medians(rates: dict[str, list[float]]) -> None:
    for key, values in rates.items():
        _say(f"stream {key}: median {statistics.median(values):.0f}/s {[round(v) for v in values]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", required=True, help="JSON list of item texts")
    parser.add_argument("--out", required=True, help="folder for gpu_encoder_check.json")
    parser.add_argument("--model", default="", help="local model directory (default: packaged)")
    parser.add_argument(
        "--scale", type=int, default=6, help="short set = the texts this many times"
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    texts: list[str] = json.loads(Path(args.texts).read_text())
    rng = random.Random(0)
    sets = {
        "short": texts * args.scale,
        "long": [" ".join(rng.sample(texts, LONG_TEXT_PARTS)) for _ in range(len(texts))],
    }
    config = EncoderConfig(model_path=args.model, device=args.device)
    report: dict[str, Any] = {"bench": {}, "stream": {}}
    for name, items in sets.items():
        _say(f"bench on {name} texts")
        bench = run_encoder_bench(items, config, naive_sample=150)
        print(format_bench(bench), flush=True)
        report["bench"][name] = bench

    device = pick_device(args.device)
    reduced = reduced_dtype(device)
    dtypes = ["float32"] + ([dtype_name(reduced)] if reduced is not None else [])
    encoders = [load_encoder(EncoderConfig(args.model, device, dtype)) for dtype in dtypes]
    rates: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        order = encoders if round_ % 2 == 0 else encoders[::-1]  # cancel drift between dtypes
        for name, items in sets.items():
            for per_caller in (1, STREAM_CALLER_TEXTS):
                for encoder in order:
                    key = f"{name} texts, callers of {per_caller}, {encoder.dtype}"
                    seconds, _ = time_micro_batched(encoder, items, config, per_caller)
                    rates.setdefault(key, []).append(len(items) / seconds)
    _say_medians(rates)
    report["stream"] = rates
    if reduced is not None:
        report["cudnn_attention"] = _cudnn_attention_ab(encoders[-1], sets, config, args.rounds)
    out = Path(args.out) / "gpu_encoder_check.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    _say(f"wrote {out}")
    return 0


def _cudnn_attention_ab(
    encoder: TextEncoder, sets: dict[str, list[str]], config: EncoderConfig, rounds: int
) -> dict[str, list[float]]:
    """The streaming path in the reduced precision with cuDNN attention on and off,
    interleaved; each run on a fresh shuffle, so the batcher meets new (texts, tokens) shapes
    as a worker does (cuDNN plans per shape). Torch's switch is process-wide; it is left off."""
    rng = random.Random(1)
    rates: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for on in (False, True) if round_ % 2 == 0 else (True, False):
            configure_cuda_attention(replace(config, cudnn_attention=on))
            for name, items in sets.items():
                for per_caller in (1, STREAM_CALLER_TEXTS):
                    shuffled = rng.sample(items, len(items))
                    seconds, _ = time_micro_batched(encoder, shuffled, config, per_caller)
                    key = (
                        f"{name} texts, callers of {per_caller}, {encoder.dtype},"
                        f" cudnn attention {'on' if on else 'off'}"
                    )
                    rates.setdefault(key, []).append(len(items) / seconds)
    configure_cuda_attention(replace(config, cudnn_attention=False))
    _say_medians(rates)
    return rates


if __name__ == "__main__":
    raise SystemExit(main())
