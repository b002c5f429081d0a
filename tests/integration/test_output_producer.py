"""The worker's librdkafka output producer against the real embedded broker: records arrive
whole, in order, in the partition Faust's producer (aiokafka, murmur2) would pick; a broker that
cannot be reached fails the record's future instead of hanging; a closed producer refuses."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, KafkaException, TopicPartition

from infra import metrics
from infra.broker import EmbeddedBroker
from infra.kafka import client_config, ensure_topics
from infra.settings import Settings
from streams.output_producer import OutputProducer, OutputRefused, OutputTopic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 4  # the recommendations topic's, set below


def _queued() -> float | None:
    return metrics.REGISTRY.get_sample_value("coldstream_output_records_queued")


def _read_all(
    settings: Settings, bootstrap: str, topic: str, n: int
) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of the first ``n`` records of ``topic``, each partition in order."""
    consumer = Consumer(
        client_config(
            settings,
            bootstrap,
            **{"group.id": f"t-{uuid.uuid4().hex}", "enable.auto.commit": False},
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < n and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    got.append((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return got


def test_records_arrive_in_order_in_aiokafkas_partitions(broker: EmbeddedBroker) -> None:
    topic = f"out-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap="", topic_recommendations=topic, partitions_recommendations=PARTITIONS
    )
    ensure_topics(settings, broker.bootstrap)
    producer = OutputProducer(client_config(settings, broker.bootstrap, **{"linger.ms": 1}))
    sink = OutputTopic(producer, topic)
    sent = [(f"user-{n % 23}".encode(), f"list {n}".encode()) for n in range(300)]

    async def send_all() -> None:
        futures = [await sink.send(key=key, value=value) for key, value in sent]
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        assert all(f.done() and f.exception() is None for f in futures)

    try:
        asyncio.run(send_all())
    finally:
        assert producer.close() == 0
    got = _read_all(settings, broker.bootstrap, topic, len(sent))
    assert sorted((k, v) for _, k, v in got) == sorted(sent)
    partitioner = DefaultPartitioner()
    parts = list(range(PARTITIONS))
    for partition, key, _ in got:
        assert partition == partitioner(key, parts, parts)
    for key in {k for k, _ in sent}:  # one key: one partition, in the order sent
        assert [v for _, k, v in got if k == key] == [v for k, v in sent if k == key]


def test_an_unreachable_broker_fails_the_future_and_close_drops_what_waits(
    settings: Settings,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    producer = OutputProducer(
        client_config(settings, f"127.0.0.1:{port}", **{"message.timeout.ms": 1500})
    )

    async def send_and_close() -> None:
        future = producer.send("recommendations", b"k", b"v")
        with pytest.raises(KafkaException):
            await asyncio.wait_for(future, 20)
        # closed while a record still waits: it is dropped, counted, and its future fails
        pending = producer.send("recommendations", b"k", b"w")
        deadline = time.monotonic() + 5
        while _queued() != 1 and time.monotonic() < deadline:  # the poll thread's gauge
            await asyncio.sleep(0.02)
        assert _queued() == 1
        assert producer.close(timeout_s=0.2) == 1
        assert _queued() == 0
        with pytest.raises(KafkaException):
            await asyncio.wait_for(pending, 5)

    asyncio.run(send_and_close())


def test_a_record_the_producer_will_not_take_is_refused_and_a_closed_one_refuses_all(
    broker: EmbeddedBroker, settings: Settings
) -> None:
    producer = OutputProducer(
        client_config(settings, broker.bootstrap, **{"message.max.bytes": 2000})
    )

    async def send(value: bytes) -> None:
        producer.send("recommendations", b"k", value)

    try:
        with pytest.raises(OutputRefused):
            asyncio.run(send(b"x" * 10_000))
    finally:
        producer.close()
    with pytest.raises(OutputRefused, match="closed"):
        asyncio.run(send(b"small"))
