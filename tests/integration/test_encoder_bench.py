"""The bench's report shape on a tiny input; speed itself is judged by running the bench."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoders.bench import format_bench, run_encoder_bench
from encoders.config import EncoderConfig
from encoders.texts import item_text

pytestmark = pytest.mark.integration


def test_bench_report_is_json_and_complete() -> None:
    texts = [item_text(f"Movie {i} (199{i % 10})", "Drama", ["Drama", "War"]) for i in range(24)]
    messages: list[str] = []
    report = run_encoder_bench(
        texts,
        EncoderConfig(max_length=32, batch_size=8),
        naive_sample=4,
        repeats=1,
        progress=messages.append,
    )
    json.dumps(report)
    assert report["texts"] == 24
    assert report["naive_sample"] == 4
    modes = {(r["dtype"], r["mode"]) for r in report["results"]}
    assert ("float32", "one_at_a_time_padded") in modes
    for ratio in report["ratios"]:
        dtype = ratio["optimized"].split()[0]
        assert (dtype, "micro_batched") in modes
        assert (dtype, "micro_batched_by_32") in modes
        assert ratio["optimized_vs_naive"] > 0
        if ratio["device"] == "cpu":  # the CPU target is judged on the streaming path
            assert ratio["throughput_judged"] == f"{dtype} micro_batched batch 8"
    for check in report["agreement"]:
        assert check["alone_vs_batched_min_cosine"] >= 0.999
        assert check.get("vs_float32_min_cosine", 1.0) >= 0.999
        assert check["micro_by_batch_vs_batched_min_cosine"] >= 0.999
    table = format_bench(report)
    assert "one_at_a_time_padded" in table
    assert "vs naive" in table
    assert messages


def test_gpu_check_script_runs_on_cpu(tmp_path: Path) -> None:
    """scripts/gpu_encoder_check.py on tiny input: it must still work when the next GPU is lent."""
    texts = [item_text(f"Movie {i} (199{i % 10})", "Drama", ["Drama", "War"]) for i in range(20)]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = Path(__file__).resolve().parents[2] / "scripts" / "gpu_encoder_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--texts", str(tmp_path / "texts.json"), "--out",
         str(tmp_path), "--device", "cpu", "--scale", "1", "--rounds", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_encoder_check.json").read_text())
    assert set(report["bench"]) == {"short", "long"}
    assert report["bench"]["long"]["tokens_mean"] > report["bench"]["short"]["tokens_mean"]
    assert any(key.startswith("short texts, callers of 32, float32") for key in report["stream"])
    assert all(rate > 0 for rates in report["stream"].values() for rate in rates)
    # the reduced precision (bf16 on this CPU kind) is also timed with cuDNN attention on/off
    reduced = any("float16" in key for key in report["stream"])
    assert ("cudnn_attention" in report) == reduced
    ab = report.get("cudnn_attention", {})
    assert all(rate > 0 for rates in ab.values() for rate in rates)
    assert not reduced or len(ab) == 8  # 2 text sets x 2 caller sizes x on/off


def test_auto_precision_that_fails_its_check_is_benched_as_the_worker_would_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With dtype auto the worker falls back to float32 when the reduced precision fails its
    check against float32; the bench judges that instead of stopping with the load error."""
    import encoders.model as model

    monkeypatch.setattr(model, "_verify_precision", lambda enc, dtype: "bfloat16 broke (test)")
    monkeypatch.setattr("encoders.bench.reduced_dtype", lambda device: torch.bfloat16)
    monkeypatch.setattr("encoders.bench.pick_dtype", lambda device, requested: torch.bfloat16)
    texts = [item_text(f"Movie {i}", "Drama", ["Drama"]) for i in range(12)]
    report = run_encoder_bench(
        texts, EncoderConfig(max_length=32, batch_size=8, device="cpu"), naive_sample=2, repeats=1
    )
    assert {r["dtype"] for r in report["results"]} == {"float32"}
    (ratio,) = report["ratios"]
    assert ratio["optimized"] == "float32 micro_batched"
    assert list(report["precision_fallbacks"]) == ["cpu"]
    assert "bfloat16 broke" in report["precision_fallbacks"]["cpu"]
    assert "reduced precision refused" in format_bench(report)
    with pytest.raises(model.EncoderLoadError, match="bfloat16 broke"):  # asked for by name
        run_encoder_bench(
            texts,
            EncoderConfig(max_length=32, batch_size=8, device="cpu", dtype="bfloat16"),
            naive_sample=2,
            repeats=1,
        )
