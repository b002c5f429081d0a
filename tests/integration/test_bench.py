"""``coldstream bench`` runs end to end and reports consistent figures (no speed assertions:
the targets are measured by the benchmark itself, see README "Performance")."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from streams.bench import format_report, run_bench
from streams.broker_bench import format_broker_report, run_broker_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_bench_short_open_loop_run(tmp_path: Path) -> None:
    report = run_bench(
        Settings(data_dir=tmp_path / "data"),
        duration_s=4.0,
        rate=100.0,
        users=40,
        log_dir=tmp_path,
    )
    assert 300 <= report["events_sent"] <= 401
    assert report["events_applied"] == report["events_sent"]
    assert report["recommendations"] > 0
    assert report["latency_samples"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["dead_letters"] == 0
    assert "events sent / applied" in format_report(report)


def test_broker_bench_round_trips_every_record() -> None:
    report = run_broker_bench(Settings(), rate=100.0, duration_s=3.0, interval_s=1.0)
    assert report["sent"] >= 250
    assert report["consumed"] == report["sent"]  # flushed and read back before returning
    assert report["series"] and all(row["broker_cpu_percent"] >= 0 for row in report["series"])
    assert "broker CPU" in format_broker_report(report)
