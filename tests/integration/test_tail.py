"""``coldstream tail`` reads on past a record that is not a recommendation (another producer's,
or a newer worker's with a field this version does not know): it died of the first one."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from confluent_kafka import Producer

from infra.broker import EmbeddedBroker
from infra.kafka import client_config, ensure_topics
from infra.settings import Settings
from streams.schemas import ModelInfo, Recommendation, RecommendedItem
from streams.tail import iter_recommendations, output_consumer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_record_that_is_no_recommendation_is_reported_and_skipped(
    broker: EmbeddedBroker, settings: Settings
) -> None:
    topic = f"recs-{uuid.uuid4().hex[:8]}"
    cfg = settings.model_copy(update={"topic_recommendations": topic})
    ensure_topics(cfg, broker.bootstrap)
    good = Recommendation(
        user_id="u1",
        trigger_event_id="e1",
        generated_at=datetime.now(UTC),
        profile_events=1,
        items=[RecommendedItem(item_id="i1", rank=1, score=0.5, source="content")],
        model=ModelInfo(encoder="m", ranker="r"),
        latency_ms=1.0,
    )
    producer = Producer(client_config(cfg, broker.bootstrap))
    producer.produce(topic, key=b"u0", value=b'{"hello": 1}', partition=0)
    producer.produce(topic, key=b"u1", value=good.model_dump_json().encode(), partition=0)
    assert producer.flush(10) == 0

    problems: list[str] = []
    reader = output_consumer(cfg, broker.bootstrap, topic)
    try:
        deadline = time.monotonic() + 60
        got = None
        for rec in iter_recommendations(reader, timeout_s=0.5, on_problem=problems.append):
            if rec is not None:
                got = rec
                break
            assert time.monotonic() < deadline, "no recommendation read"
    finally:
        reader.close()
    assert got == good
    assert len(problems) == 1 and problems[0].startswith(
        f"skipped {topic}/0@0: not a recommendation"
    )
