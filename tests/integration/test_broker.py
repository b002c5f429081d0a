"""Issue 2 acceptance: the embedded broker, topic creation, a 1,000-event round trip, clean stop.

Everything goes through the project's own code: ``EmbeddedBroker`` starts the broker,
``ensure_topics`` creates the topics, ``client_config`` configures the confluent-kafka clients and
``streams.schemas.decode`` validates what comes back.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psutil
import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from infra.broker import BrokerError, EmbeddedBroker, kafka_bootstrap
from infra.kafka import client_config, ensure_topics, list_topics, topic_id
from infra.settings import Settings
from streams.schemas import BehaviorEvent, decode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

N_EVENTS = 1_000
TYPES = ["view", "click", "add_to_cart", "purchase", "rate", "search", "review", "profile"]


def _event(n: int) -> dict[str, object]:
    """A valid ``events`` payload of every type in turn; ts alternates ISO-8601 and epoch ms."""
    kind = TYPES[n % len(TYPES)]
    ts = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    event: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "user_id": f"u{n % 37}",
        "type": kind,
        "ts": ts.isoformat() if n % 2 else int(ts.timestamp() * 1000),
    }
    if kind not in {"search", "profile"}:
        event["item_id"] = f"i{n % 101}"
    if kind in {"search", "profile", "review"}:
        event["text"] = f"space opera number {n}"
    if kind == "rate":
        event["rating"] = float(n % 6)
    return event


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` names a process (a zombie counts as gone: it runs nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _consume(
    settings: Settings, bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0
) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        client_config(
            settings,
            bootstrap,
            **{
                "group.id": f"test-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                # the embedded broker waits half the session timeout on a group join
                "session.timeout.ms": 6000,
            },
        )
    )
    got: list[tuple[bytes | None, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    continue
                value = msg.value()
                assert value is not None
                got.append((msg.key(), value))
    finally:
        consumer.close()
    return got


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker this test owns (and may stop); stopped afterwards in any case."""
    broker = EmbeddedBroker()
    try:
        yield broker.start()
    finally:
        broker.stop()


def test_topics_round_trip_and_clean_stop(own_broker: EmbeddedBroker, settings: Settings) -> None:
    assert own_broker.is_running()
    pid = own_broker.pid
    assert pid is not None and _pid_alive(pid)

    created = ensure_topics(settings, own_broker.bootstrap)
    wanted = settings.topic_partitions()
    assert created == wanted
    assert set(wanted) == {"events", "items", "recommendations", "dead-letter"}
    # idempotent: a second call finds them and changes nothing
    assert ensure_topics(settings, own_broker.bootstrap) == wanted
    on_cluster = list_topics(settings, own_broker.bootstrap)
    for name, parts in wanted.items():
        assert on_cluster[name] == parts

    sent = [_event(n) for n in range(N_EVENTS)]
    producer = Producer(client_config(settings, own_broker.bootstrap, **{"linger.ms": 5}))
    failures: list[object] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    for ev in sent:
        producer.produce(
            settings.topic_events,
            key=str(ev["user_id"]).encode(),
            value=json.dumps(ev).encode(),
            on_delivery=on_delivery,
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert failures == []

    received = _consume(settings, own_broker.bootstrap, settings.topic_events, N_EVENTS)
    assert len(received) == N_EVENTS
    decoded = [decode(value, BehaviorEvent) for _key, value in received]
    assert {e.event_id for e in decoded} == {str(ev["event_id"]) for ev in sent}
    for (key, _value), event in zip(received, decoded, strict=True):
        assert key == event.user_id.encode()
        assert event.ts.tzinfo is not None

    del producer  # close its connection: Tansu drains open client connections on SIGTERM
    own_broker.stop()
    assert not own_broker.is_running()
    assert own_broker.pid is None
    assert not _pid_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone too
    own_broker.stop()  # stopping twice is harmless


def test_stop_kills_broker_with_connected_client(settings: Settings) -> None:
    """A client still connected keeps Tansu from exiting on SIGTERM: stop() escalates to SIGKILL."""
    broker = EmbeddedBroker().start()
    try:
        pid = broker.pid
        assert pid is not None
        ensure_topics(settings, broker.bootstrap)
        producer = Producer(client_config(settings, broker.bootstrap))
        producer.produce(settings.topic_events, key=b"u1", value=json.dumps(_event(0)).encode())
        assert producer.flush(10) == 0
        broker.stop(timeout_s=0.5)
        assert not _pid_alive(pid)
        assert not broker.is_running()
    finally:
        broker.stop()


def test_per_user_order_within_partition(broker: EmbeddedBroker, settings: Settings) -> None:
    """Keyed by user_id, each user's events come back in the order they were produced."""
    topic = f"order-{uuid.uuid4().hex[:8]}"
    cfg = settings.model_copy(update={"topic_events": topic})
    ensure_topics(cfg, broker.bootstrap)
    producer = Producer(client_config(cfg, broker.bootstrap))
    for n in range(200):
        ev = _event(n)
        ev["event_id"] = f"{ev['user_id']}:{n:04d}"
        producer.produce(topic, key=str(ev["user_id"]).encode(), value=json.dumps(ev).encode())
    assert producer.flush(30) == 0
    received = [decode(v, BehaviorEvent) for _k, v in _consume(cfg, broker.bootstrap, topic, 200)]
    assert len(received) == 200
    per_user: dict[str, list[str]] = {}
    for event in received:
        per_user.setdefault(event.user_id, []).append(event.event_id)
    for ids in per_user.values():
        assert ids == sorted(ids)


def test_broker_on_used_port_raises(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(broker.port).start()


def test_broker_on_port_held_by_other_listener_raises() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        second = EmbeddedBroker(port)
        with pytest.raises(BrokerError):
            second.start()
        assert not second.is_running()
        assert second.pid is None


def test_kafka_bootstrap_passes_configured_address_through() -> None:
    with kafka_bootstrap("kafka-1:9092,kafka-2:9092") as bootstrap:
        assert bootstrap == "kafka-1:9092,kafka-2:9092"


def test_kafka_bootstrap_starts_and_stops_embedded_broker() -> None:
    with kafka_bootstrap("") as bootstrap:
        host, port = bootstrap.rsplit(":", 1)
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    with (
        pytest.raises(OSError),
        socket.create_connection((host, int(port)), timeout=2),
    ):
        pass


def test_a_topic_id_names_one_life_of_a_topic(broker: EmbeddedBroker, settings: Settings) -> None:
    """The events topic's id is the log the profiles' applied offsets count in: a broker
    started again (memory only: its topics start over from offset 0) gives new ids."""
    ensure_topics(settings, broker.bootstrap)
    first = topic_id(settings, broker.bootstrap, settings.topic_events)
    assert first and first == topic_id(settings, broker.bootstrap, settings.topic_events)
    assert first != topic_id(settings, broker.bootstrap, settings.topic_items)
    with EmbeddedBroker() as restarted:
        ensure_topics(settings, restarted.bootstrap)
        again = topic_id(settings, restarted.bootstrap, settings.topic_events)
    assert again and again != first
    assert topic_id(settings, broker.bootstrap, "no-such-topic", timeout_s=5) is None
