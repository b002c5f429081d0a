"""``coldstream demo``: MovieLens-100K through the real stack, end to end, in a few minutes.

Starts the embedded broker and a worker on a fresh data directory, publishes every movie as an
item event, replays a sample of users' ratings in time order as events, reads the
recommendations back and prints throughput, latency and three users' explained lists.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from infra.settings import Settings
from ranking.datasets import Dataset, ItemRecord, load_movielens_100k
from streams.produce import Publisher
from streams.schemas import Recommendation
from streams.stack import LocalStack, scratch_settings
from streams.tail import output_consumer


def item_payload(item: ItemRecord) -> dict[str, object]:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "category": item.category,
        "tags": list(item.tags),
        "description": item.description,
        "brand": item.brand,
    }


def replay_events(
    dataset: Dataset, users: int, max_events: int, seed: int
) -> list[dict[str, object]]:
    """The time-ordered ratings of ``users`` random users, as ``events`` payloads."""
    inter = dataset.interactions
    all_users = sorted(inter["user_id"].unique())
    chosen = set(random.Random(seed).sample(all_users, min(users, len(all_users))))
    rows = inter[inter["user_id"].isin(chosen)].head(max_events)
    return [
        {
            "event_id": str(uuid.uuid4()),
            "user_id": f"ml-{row.user_id}",
            "type": "rate",
            "item_id": str(row.item_id),
            "rating": float(row.rating),
            "ts": int(float(row.ts) * 1000),
        }
        for row in rows.itertuples(index=False)
    ]


@dataclass
class DemoResult:
    events: int = 0
    burst_events: int = 0
    seconds: float = 0.0
    recommendations: int = 0
    e2e_ms: list[float] = field(default_factory=list)
    worker_ms: list[float] = field(default_factory=list)
    last: dict[str, Recommendation] = field(default_factory=dict)


def run_demo(
    settings: Settings,
    *,
    users: int = 200,
    max_events: int = 20000,
    seed: int = 0,
    rate: float = 500.0,
) -> int:
    dataset = load_movielens_100k()
    events = replay_events(dataset, users, max_events, seed)
    workdir = Path(tempfile.mkdtemp(prefix="coldstream-demo-"))
    settings = settings.model_copy(update={"data_dir": workdir / "data"})
    # on configured servers: topics, a consumer group and collections of the demo's own
    settings, scratch = scratch_settings(settings, "demo")
    say(f"coldstream demo: {len(dataset.items)} movies, {len(events)} events from {users} users")
    say(f"work dir {workdir} (removed at the end)")
    if scratch:
        say(f"on the configured servers under the demo's own names: {scratch.describe()}")
    try:
        with LocalStack(settings, log_dir=workdir, scratch=scratch) as stack:
            assert stack.worker is not None
            say(f"broker {stack.bootstrap}; worker metrics {stack.worker.metrics_url}")
            publisher = Publisher(settings, stack.bootstrap)
            for item in dataset.items:
                publisher.item(item_payload(item))
            publisher.flush()
            _wait_metric(
                stack, "coldstream_items_indexed_total", len(dataset.items), "items indexed"
            )
            result = _replay(stack, settings, publisher, events, rate)
        for line in stack.left_behind:
            say(f"left behind on the servers: {line}")
        _summary(result, dataset)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _wait_metric(stack: LocalStack, name: str, target: int, label: str) -> None:
    assert stack.worker is not None
    with tqdm(total=target, desc=label, unit="it", file=sys.stderr) as bar:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            value = int(stack.worker.wait_for(name, 0, 5))
            bar.update(value - bar.n)
            if value >= target:
                return
            time.sleep(0.2)
    raise TimeoutError(f"{label}: worker did not get through {target} in time")


def _replay(
    stack: LocalStack,
    settings: Settings,
    publisher: Publisher,
    events: list[dict[str, object]],
    rate: float,
) -> DemoResult:
    """Two phases over the same time-ordered events.

    Burst: the first three quarters as fast as possible, timed until every user's last burst
    event has its recommendation (throughput). Paced: the rest at ``rate`` events/s, where
    event→recommendation latency means something (a backlog would only measure queueing).
    """
    consumer = output_consumer(settings, stack.bootstrap, settings.topic_recommendations)
    result = DemoResult(events=len(events))
    split = len(events) * 3 // 4 if rate > 0 else len(events)
    burst, paced = events[:split], events[split:]
    start = time.time()
    _send(consumer, publisher, burst, 0.0, result, "burst", latency=rate <= 0)
    result.seconds = time.time() - start
    result.burst_events = len(burst)
    if paced:
        _send(consumer, publisher, paced, rate, result, f"paced at {rate:g}/s", latency=True)
    consumer.close()
    return result


def _send(
    consumer: object,
    publisher: Publisher,
    events: list[dict[str, object]],
    rate: float,
    result: DemoResult,
    label: str,
    *,
    latency: bool,
) -> None:
    last_event = {str(e["user_id"]): str(e["event_id"]) for e in events}
    pending = set(last_event.values())
    sent_at: dict[str, float] = {}
    start = time.time()
    with tqdm(total=len(events), desc=f"{label}: sent", unit="ev", file=sys.stderr) as bar:
        for i, payload in enumerate(events):
            if rate > 0:
                wait = start + i / rate - time.time()
                if wait > 0:
                    time.sleep(wait)
            sent_at[str(payload["event_id"])] = time.time()
            publisher.event(payload)
            if i % 250 == 249:
                bar.update(250)
                publisher.producer.poll(0)
                _drain(consumer, result, sent_at, pending, timeout_s=0, latency=latency)
        bar.update(len(events) - bar.n)
    publisher.flush()
    with tqdm(total=len(last_event), desc=f"{label}: users done", file=sys.stderr) as bar:
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            _drain(consumer, result, sent_at, pending, timeout_s=0.2, latency=latency)
            bar.update(len(last_event) - len(pending) - bar.n)
    if pending:
        say(f"warning: {len(pending)} users' final events got no recommendation in time")


def _drain(
    consumer: object,
    result: DemoResult,
    sent_at: dict[str, float],
    pending: set[str],
    timeout_s: float,
    *,
    latency: bool,
) -> None:
    from confluent_kafka import Consumer

    assert isinstance(consumer, Consumer)
    for msg in consumer.consume(1000, timeout_s):
        value = msg.value()
        if msg.error() is not None or value is None:
            continue
        rec = Recommendation.model_validate_json(value)
        result.recommendations += 1
        sent = sent_at.get(rec.trigger_event_id)
        if sent is not None and latency:
            # the output record's own timestamp (set when the worker produced it), so the
            # figure does not depend on how often this loop polls
            produced_ms = msg.timestamp()[1]
            result.worker_ms.append(rec.latency_ms)
            result.e2e_ms.append(produced_ms - sent * 1000.0)
        result.last[rec.user_id] = rec
        pending.discard(rec.trigger_event_id)


def _summary(result: DemoResult, dataset: Dataset) -> None:
    titles = {i.item_id: i.title for i in dataset.items}

    def pct(values: list[float], q: float) -> str:
        return f"{np.percentile(values, q):.1f}" if values else "n/a"

    print()
    print("=== coldstream demo summary ===")
    print(f"events replayed            {result.events}")
    print(f"recommendation events      {result.recommendations}")
    print(
        f"throughput (burst)         {result.burst_events / max(result.seconds, 1e-9):.0f}"
        f" events/s  ({result.burst_events} events sent at once, all users' lists in"
        f" {result.seconds:.1f} s)"
    )
    print(
        "latency (paced phase) ms   "
        f"p50 {pct(result.e2e_ms, 50)} · p95 {pct(result.e2e_ms, 95)}"
        f" · p99 {pct(result.e2e_ms, 99)}"
        "  (event sent → recommendation produced)"
    )
    print(
        "  worker-reported ms       "
        f"p50 {pct(result.worker_ms, 50)} · p95 {pct(result.worker_ms, 95)}"
        f" · p99 {pct(result.worker_ms, 99)}  (topic arrival → emit)"
    )
    for rec in sorted(result.last.values(), key=lambda r: r.profile_events)[
        :: max(len(result.last) // 3, 1)
    ][:3]:
        print()
        print(f"user {rec.user_id} after {rec.profile_events} events (ranker {rec.model.ranker}):")
        for item in rec.items:
            reasons = "; ".join(item.reasons)
            print(f"  {item.rank:>2}. {titles.get(item.item_id, item.item_id):<45.45} {reasons}")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
