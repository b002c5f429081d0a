"""``coldstream bench`` runs end to end and reports consistent figures (no speed assertions:
the targets are measured by the benchmark itself, see README "Performance")."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.broker import EmbeddedBroker
from infra.kafka import client_config, ensure_topics, list_topics
from infra.settings import Settings, get_settings
from streams.bench import format_report, run_bench
from streams.broker_bench import format_broker_report, run_broker_bench
from streams.cli import main
from streams.engine_bench import format_engine_report, run_engine_bench
from streams.traffic import ShopperTraffic

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
    assert 0 < report["catalog_indexed_s"] < 120 and report["items_indexed_per_s"] > 0
    assert report["recommendations"] > 0
    # every event is timed by the list that answers it, not only each list's trigger
    assert 0.9 * report["events_sent"] <= report["latency_samples"] <= report["events_sent"]
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    # read after it was produced
    assert report["latency_ms_received"]["p50"] >= report["latency_ms"]["p50"]
    assert report["drained"] is True and report["send_lag_max_ms"] >= 0
    assert report["dead_letters"] == 0
    # the machine's busy time holds the worker's and this client's (both measured over the run)
    cores = 100 * report["machine_cores"]
    assert 0 < report["client_cpu_percent"] < report["machine_cpu_percent"] <= cores + 5
    assert report["worker_cpu_percent"] < report["machine_cpu_percent"] + 5
    assert 0 <= report["machine_steal_percent"] <= cores
    if Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").exists():
        waits = report["core_wait"]
        # the same time on a core as the processes' CPU figures, read another way
        for name, cpu in (("worker", "worker_cpu_percent"), ("client", "client_cpu_percent")):
            assert waits[name] is not None, name
            assert waits[name]["on_core_percent"] == pytest.approx(report[cpu], abs=10), name
        assert "waiting for a core" in format_report(report)
    assert "events sent / applied" in format_report(report)
    assert "this client (load + reader)" in format_report(report)
    assert "backlog growth" in format_report(report)  # a 4 s run has too few samples for it


def test_bench_on_a_configured_cluster_keeps_off_its_topics(tmp_path: Path) -> None:
    """Against a configured cluster the bench publishes, consumes and groups under names of its
    own, and deletes its topics afterwards: the production topics stay empty."""
    with EmbeddedBroker() as broker:  # stands in for a production cluster
        settings = Settings(
            data_dir=tmp_path / "data",
            kafka_bootstrap=broker.bootstrap,
            kafka_fetch_max_wait_ms=10,  # Tansu holds a fetch for the whole wait
            kafka_session_timeout_s=6.0,
        )
        production = ensure_topics(settings, broker.bootstrap)
        report = run_bench(settings, duration_s=4.0, rate=50.0, users=20, log_dir=tmp_path)
        assert report["events_applied"] == report["events_sent"] > 0
        assert report["recommendations"] > 0
        assert len(report["scratch"]) == 4 and report["scratch_left_behind"] == []
        assert "dropped after the run" in format_report(report)
        assert list_topics(settings, broker.bootstrap) == production
        consumer = Consumer(client_config(settings, broker.bootstrap, **{"group.id": "check"}))
        try:
            for topic, partitions in production.items():
                for p in range(partitions):
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    assert high == 0, f"{topic}[{p}] got {high} records"
        finally:
            consumer.close()


def test_broker_bench_round_trips_every_record() -> None:
    report = run_broker_bench(Settings(), rate=100.0, duration_s=3.0, interval_s=1.0)
    assert report["sent"] >= 250
    assert report["consumed"] == report["sent"]  # flushed and read back before returning
    assert report["series"] and all(row["broker_cpu_percent"] >= 0 for row in report["series"])
    # every record's own send time → its consumption: positive, and far below the run's length
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 3000
    assert any(row["latency_ms_p50"] is not None for row in report["series"])
    assert "broker CPU" in format_broker_report(report)
    assert "produce → consume latency ms: p50" in format_broker_report(report)


def test_engine_bench_times_every_batch_through_the_pipeline(tmp_path: Path) -> None:
    lists = tmp_path / "lists.jsonl"
    report = run_engine_bench(
        Settings(data_dir=tmp_path / "data"),
        batch=30,
        batches=4,
        warmup=1,
        users=40,
        lists_path=lists,
    )
    assert report["batches"] == 4 and report["batch_events"] == 30
    # 40 users in sessions of 5 on average: a batch of 30 events touches several of them
    assert 1 < report["users_per_batch_mean"] <= 30
    ms = report["batch_ms"]
    assert 0 < ms["p50"] <= ms["max"]
    # with 4 batches each tenth is one batch: the drift figures are real batch times
    assert 0 < report["batch_ms_p50_first_tenth"] <= ms["max"]
    assert 0 < report["batch_ms_p50_last_tenth"] <= ms["max"]
    assert report["store_ms_per_batch"]["search"] > 0  # the worker's own store histogram moved
    assert report["ranker"].startswith("blend")
    assert report["cpu_ms_per_batch"] > 0
    assert "events/s" in format_engine_report(report)
    # --lists: one line per list of the timed batches, and the digest is theirs
    lines = lists.read_bytes().splitlines()
    assert len(lines) == round(report["users_per_batch_mean"] * 4)
    user, items = json.loads(lines[0])
    assert user.startswith("bench-") and items and {"item_id", "rank", "score"} <= set(items[0])
    digest = hashlib.sha256(b"".join(lines)).hexdigest()[:16]
    assert report["lists_digest"] == digest


def test_engine_bench_lists_repeat_run_to_run(tmp_path: Path) -> None:
    """Simulated time from a fixed epoch and tied hits in a fixed order: the same lists."""
    digests = [
        run_engine_bench(Settings(data_dir=tmp_path / name), batch=30, batches=3, users=40)[
            "lists_digest"
        ]
        for name in ("a", "b")
    ]
    assert digests[0] == digests[1]


def test_traffic_model_is_deterministic_per_seed() -> None:
    items = [f"i{n}" for n in range(50)]
    first = ShopperTraffic(items, users=10, seed=3)
    again = ShopperTraffic(items, users=10, seed=3)
    other = ShopperTraffic(items, users=10, seed=4)
    a = [first.next_event(n) for n in range(200)]
    assert a == [again.next_event(n) for n in range(200)]
    assert a != [other.next_event(n) for n in range(200)]
    assert len({e["event_id"] for e in a}) == 200
    assert {e["user_id"] for e in a} <= set(first.user_ids)
    assert {e["item_id"] for e in a} <= set(items)
    # Zipf-popular items: the most clicked item takes a clear share of the clicks
    counts = sorted((sum(e["item_id"] == i for e in a) for i in items), reverse=True)
    assert counts[0] >= 200 / 50 * 3


def test_bench_store_command_prints_and_writes_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "store.json"
    assert main(["bench", "store", "--items", "300", "--queries", "20", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(report) and all(line.split()[0] in report for line in printed)
    assert report["n_items"] == 300 and report["backend"] == "edge"
    # searched before and after optimize, and with many of each query's nearest excluded
    for prefix in ("search1_unoptimized", "search1", "search1_seen_near"):
        assert 0 < report[f"{prefix}_p50_ms"] <= report[f"{prefix}_p99_ms"]


def test_bench_engine_command_never_writes_to_a_configured_qdrant_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bench writes a catalog and users: it runs on a scratch store, whatever is set."""
    monkeypatch.setenv("COLDSTREAM_QDRANT_URL", "http://127.0.0.1:9")  # nothing listens there
    get_settings.cache_clear()
    try:
        assert main(["bench", "engine", "--batch", "20", "--batches", "2", "--warmup", "0"]) == 0
    finally:
        get_settings.cache_clear()
    assert "2 batches of 20 events in process" in capsys.readouterr().out
