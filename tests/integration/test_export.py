"""``coldstream export`` through a real broker: the topics become a log ``train`` reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from infra.broker import EmbeddedBroker
from infra.kafka import client_config, ensure_topics
from infra.settings import Settings
from ranking.datasets import load_generic
from ranking.training import TrainConfig, build_covisit, user_sequences
from streams.export import ExportError, export_log
from streams.produce import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
T0 = 1_700_000_000


def _event(event_id: str, user: str, kind: str, at: int, **extra: object) -> dict[str, object]:
    return {"event_id": event_id, "user_id": user, "type": kind, "ts": (T0 + at) * 1000, **extra}


def test_export_writes_what_the_worker_could_apply_and_train_reads_it(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    env = {
        "COLDSTREAM_KAFKA_BOOTSTRAP": broker.bootstrap,
        "COLDSTREAM_TOPIC_ITEMS": f"items-{run}",
        "COLDSTREAM_TOPIC_EVENTS": f"events-{run}",
        "COLDSTREAM_TOPIC_RECOMMENDATIONS": f"recs-{run}",
        "COLDSTREAM_TOPIC_DEAD_LETTER": f"dlq-{run}",
    }
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        topic_items=env["COLDSTREAM_TOPIC_ITEMS"],
        topic_events=env["COLDSTREAM_TOPIC_EVENTS"],
        topic_recommendations=env["COLDSTREAM_TOPIC_RECOMMENDATIONS"],
        topic_dead_letter=env["COLDSTREAM_TOPIC_DEAD_LETTER"],
    )
    ensure_topics(settings, broker.bootstrap)
    pub = Publisher(settings, broker.bootstrap)
    pub.item({"item_id": "i1", "title": "Heat", "category": "crime", "tags": ["heist"]})
    pub.item({"item_id": "i2", "title": "Old title"})
    pub.item({"item_id": "i2", "title": "Alien", "price": 9.5})  # the latest record wins
    pub.item({"item_id": "i3", "title": "Brazil"})
    pub.item({"item_id": "i3", "active": False})  # retired: its content stays in the log
    pub.item({"item_id": "i4", "active": False})  # never had content: not exported
    pub.send_raw(settings.topic_items, "bad", b"{not json")
    pub.event(_event("e1", "u1", "view", 1, item_id="i1"))
    pub.event(_event("e2", "u1", "rate", 2, item_id="i2", rating=4.0))
    pub.event(_event("e2", "u1", "rate", 2, item_id="i2", rating=4.0))  # a producer's retry
    pub.event(_event("e3", "u2", "search", 3, text="space horror"))
    pub.event(_event("e4", "u2", "click", 4, item_id="i9"))  # no such item in the topic
    pub.event(_event("e5", "u2", "view", 5, item_id="i3"))
    pub.send_raw(settings.topic_events, "u3", b'{"event_id": "e6"}')  # invalid
    pub.flush()

    out = tmp_path / "export"
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "export", "--out", str(out), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    assert "items: 3 from 7 record(s) (1 invalid, 1 never with content)" in done.stdout
    assert (
        "interactions: 4 from 7 record(s) (1 invalid, 1 repeated event ids, "
        "1 naming an item not exported)"
    ) in done.stdout
    assert "item_id 'i9' is not in the items topic" in done.stdout

    rows = [json.loads(line) for line in (out / "interactions.jsonl").read_text().splitlines()]
    assert [(r["user_id"], r["type"], r.get("item_id")) for r in rows] == [
        ("u1", "view", "i1"),
        ("u1", "rate", "i2"),
        ("u2", "search", None),
        ("u2", "view", "i3"),
    ]
    assert rows[1]["rating"] == 4.0 and rows[2]["text"] == "space horror"
    data = load_generic(out / "items.jsonl", out / "interactions.jsonl")
    titles = {i.item_id: i.title for i in data.items}
    assert titles == {"i1": "Heat", "i2": "Alien", "i3": "Brazil"}
    assert data.interactions["ts"].tolist() == [T0 + 1, T0 + 2, T0 + 3, T0 + 5]
    # the snapshot train would write is dated by the latest exported event
    seqs = user_sequences(data.interactions)
    assert build_covisit(seqs, sorted(seqs), TrainConfig()).counted_until == T0 + 5

    # records arriving after an export wait for the next; the embedded mode is refused
    unset = {k: v for k, v in os.environ.items() if k != "COLDSTREAM_KAFKA_BOOTSTRAP"}
    refused = subprocess.run(
        [sys.executable, "-m", "streams.cli", "export", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=unset,
    )
    assert refused.returncode == 2 and "COLDSTREAM_KAFKA_BOOTSTRAP" in refused.stderr


def _topics(broker: EmbeddedBroker) -> Settings:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        topic_items=f"items-{run}",
        topic_events=f"events-{run}",
        topic_recommendations=f"recs-{run}",
        topic_dead_letter=f"dlq-{run}",
    )
    ensure_topics(settings, broker.bootstrap)
    return settings


def test_an_export_of_a_live_topic_ends_at_the_end_it_had_at_the_start(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Records keep arriving while the export reads (the running stream's topic): it stops at
    each partition's end at its start, and does not wait for the topic to go quiet (found by
    review: it ran until its timeout). One record per batch, so the embedded broker's high
    watermark is right, as Kafka's is."""
    settings = _topics(broker)
    producer = Producer(
        client_config(settings, broker.bootstrap, **{"linger.ms": 0, "batch.num.messages": 1})
    )

    def send(topic: str, key: str, payload: dict[str, object]) -> None:
        producer.produce(topic, key=key.encode(), value=json.dumps(payload).encode())

    for n in range(5):
        send(settings.topic_items, f"i{n}", {"item_id": f"i{n}", "title": f"Film {n}"})
    for n in range(40):
        user = f"u{n % 7}"
        send(settings.topic_events, user, _event(f"e{n}", user, "view", n, item_id=f"i{n % 5}"))
    assert producer.flush(30) == 0
    stop = threading.Event()

    def keep_sending() -> None:
        n = 1000
        while not stop.is_set():
            send(settings.topic_events, "late", _event(f"e{n}", "late", "view", n, item_id="i0"))
            producer.flush(5)
            n += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=keep_sending, daemon=True)
    feeder.start()
    try:
        time.sleep(0.5)  # the topic is live before the export starts
        started = time.monotonic()
        report = export_log(settings, broker.bootstrap, tmp_path, timeout_s=60, progress=False)
        took = time.monotonic() - started
    finally:
        stop.set()
        feeder.join(10)
    assert took < 20, f"the export took {took:.1f} s on a live topic"
    users = {r["user_id"] for r in map(json.loads, (tmp_path / "interactions.jsonl").open())}
    assert report.items == 5 and report.interactions >= 40
    # exactly the records below each partition's end at the start (one per batch here, so
    # the embedded broker's ends are right): nothing the feeder sent meanwhile
    ends = report.ranges[settings.topic_events].values()
    assert report.event_records == sum(high - low for low, high in ends)
    assert report.interactions == report.event_records
    assert users >= {f"u{k}" for k in range(7)}


def test_nothing_to_train_on_is_an_error_and_leaves_the_last_export(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = _topics(broker)
    (tmp_path / "items.jsonl").write_text("kept\n")
    with pytest.raises(ExportError, match="nothing to train on"):
        export_log(settings, broker.bootstrap, tmp_path, timeout_s=30, progress=False)
    assert (tmp_path / "items.jsonl").read_text() == "kept\n"
    assert not list(tmp_path.glob("*.tmp"))
