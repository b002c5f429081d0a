"""`coldstream bench broker`: the Kafka broker alone, at a fixed rate, over time.

Separates the broker's limits from coldstream's: one confluent-kafka producer sends fixed-size
behavior events to ``<events topic>-broker-bench`` (a topic and group of their own) at ``rate``
records/s and one consumer reads them back. Every ``interval_s`` it records what was sent and
consumed, the produce→consume latency of its records and, for the embedded broker, that
process's CPU and RSS. On this machine it showed the embedded Tansu broker's CPU climbing with its
retained log until consumption stopped (README, "Soak"), and it gives the end-to-end bench's
floor: an event and its recommendation cross the broker twice.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import psutil
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from infra.broker import EmbeddedBroker
from infra.kafka import client_config, list_topics
from infra.settings import Settings
from streams.bench import cpu_seconds, percentiles


def run_broker_bench(
    settings: Settings, *, rate: float, duration_s: float, interval_s: float = 15.0
) -> dict[str, Any]:
    """One bounded run; returns JSON-able figures with a time series."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be > 0")
    broker = EmbeddedBroker().start() if settings.embedded_kafka else None
    try:
        bootstrap = broker.bootstrap if broker else settings.kafka_bootstrap
        topic = _bench_topic(settings, bootstrap)
        proc = psutil.Process(broker.pid) if broker and broker.pid else None
        consumed = [0]
        latencies_ms: list[float] = []  # appended by the reader thread only
        stop = threading.Event()

        group = f"{settings.kafka_consumer_group}-broker-bench-{uuid.uuid4().hex[:8]}"

        def consume() -> None:
            consumer = Consumer(
                client_config(
                    settings,
                    bootstrap,
                    **{
                        "group.id": group,
                        "auto.offset.reset": "latest",
                        "fetch.wait.max.ms": settings.effective_fetch_max_wait_ms,
                        "session.timeout.ms": int(settings.effective_session_timeout_s * 1000),
                    },
                )
            )
            consumer.subscribe([topic])
            try:
                while not stop.is_set():
                    # a short timeout: consume() holds a partial batch for its whole timeout,
                    # which would count as broker latency
                    for msg in consumer.consume(500, 0.005):
                        if msg.error() is None:
                            latencies_ms.append(1000.0 * (time.time() - _sent_at(msg.value())))
                            consumed[0] += 1
            finally:
                consumer.close()

        reader = threading.Thread(target=consume, name="broker-bench-reader", daemon=True)
        reader.start()
        producer = Producer(client_config(settings, bootstrap, **{"linger.ms": 5}))
        time.sleep(2 * settings.effective_session_timeout_s)  # let the reader join its group
        series: list[dict[str, float | None]] = []
        seen_latencies = 0
        sent = 0
        start = last = time.time()
        cpu_last = cpu_seconds(proc)
        while (now := time.time()) - start < duration_s:
            due = int((now - start) * rate)
            while sent < due:
                producer.produce(topic, _event(sent), key=str(sent % 2000).encode())
                sent += 1
            producer.poll(0)
            time.sleep(0.002)
            if now - last >= interval_s:
                cpu = cpu_seconds(proc)
                chunk = latencies_ms[seen_latencies:]  # the reader may append meanwhile
                seen_latencies += len(chunk)
                window = percentiles(chunk)
                series.append(
                    {
                        "t_s": round(now - start, 1),
                        "sent": sent,
                        "consumed": consumed[0],
                        "lag": sent - consumed[0],
                        "latency_ms_p50": window["p50"],
                        "latency_ms_p99": window["p99"],
                        "broker_cpu_percent": round(100.0 * (cpu - cpu_last) / (now - last), 1),
                        "broker_rss_mb": round(proc.memory_info().rss / 2**20, 1) if proc else 0.0,
                    }
                )
                cpu_last, last = cpu, now
        producer.flush(30)
        deadline = time.time() + 10.0  # let the reader catch up (bounded: it may not)
        while consumed[0] < sent and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        reader.join(10)
        return {
            "broker": "embedded Tansu" if broker else bootstrap,
            "rate_per_s": rate,
            "duration_s": duration_s,
            "sent": sent,
            "consumed": consumed[0],
            "latency_ms": percentiles(latencies_ms),
            "series": series,
        }
    finally:
        if broker is not None:
            broker.stop()


def _event(n: int) -> bytes:
    """A behavior event the size of the bench's, stamped with its send time (``ts``, ms)."""
    return json.dumps(
        {"event_id": str(uuid.uuid4()), "user_id": f"bench-{n % 2000}", "type": "click",
         "item_id": f"i{n % 1682}", "ts": round(time.time() * 1000.0, 3)}
    ).encode()  # fmt: skip


def _sent_at(value: bytes | None) -> float:
    return float(json.loads(value or b"{}").get("ts", 0.0)) / 1000.0


def _bench_topic(settings: Settings, bootstrap: str) -> str:
    """A topic of its own (never the live ``events`` topic: a worker would consume the load)."""
    name = f"{settings.topic_events}-broker-bench"
    admin = AdminClient(client_config(settings, bootstrap))
    if name not in list_topics(settings, bootstrap):
        new = NewTopic(
            name,
            num_partitions=settings.partitions_events,
            replication_factor=settings.topic_replication_factor,
        )
        for future in admin.create_topics([new], request_timeout=15).values():
            future.result(timeout=15)
    return name


def format_broker_report(report: dict[str, Any]) -> str:
    lines = [
        f"coldstream bench broker — {report['broker']}, {report['rate_per_s']:g} records/s "
        f"for {report['duration_s']:g} s: sent {report['sent']}, consumed {report['consumed']}",
        "    t s       sent   consumed      lag  latency p50/p99 ms  broker CPU %  broker RSS MB",
    ]
    for row in report["series"]:
        lines.append(
            f"{row['t_s']:7.0f} {row['sent']:10.0f} {row['consumed']:10.0f} {row['lag']:8.0f}"
            f" {_ms(row['latency_ms_p50']):>8}/{_ms(row['latency_ms_p99']):<9}"
            f" {row['broker_cpu_percent']:13.1f} {row['broker_rss_mb']:14.1f}"
        )
    lat = report["latency_ms"]
    lines.append(
        f"produce → consume latency ms: p50 {_ms(lat['p50'])} · p95 {_ms(lat['p95'])} · "
        f"p99 {_ms(lat['p99'])} · max {_ms(lat['max'])} (one hop; the end-to-end bench crosses "
        "the broker twice)"
    )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
