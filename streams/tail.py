"""Reading the ``recommendations`` topic: a consumer that validates and pretty-prints."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer

from infra.kafka import client_config
from infra.settings import Settings
from streams.schemas import Recommendation


def output_consumer(
    settings: Settings, bootstrap: str, topic: str, *, from_beginning: bool = True
) -> Consumer:
    """A throwaway-group consumer (never commits) on ``topic``."""
    consumer = Consumer(
        client_config(
            settings,
            bootstrap,
            **{
                "group.id": f"coldstream-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.auto.commit": False,
                "session.timeout.ms": int(settings.effective_session_timeout_s * 1000),
                "fetch.wait.max.ms": settings.effective_fetch_max_wait_ms,
            },
        )
    )
    consumer.subscribe([topic])
    return consumer


def iter_recommendations(
    consumer: Consumer, timeout_s: float = 1.0
) -> Iterator[Recommendation | None]:
    """Validated recommendations as they arrive; ``None`` on each idle poll."""
    while True:
        messages = consumer.consume(500, timeout_s)
        if not messages:
            yield None
        for msg in messages:
            value = msg.value()
            if msg.error() is None and value is not None:
                yield Recommendation.model_validate_json(value)


def format_recommendation(rec: Recommendation) -> str:
    head = (
        f"user {rec.user_id} · {rec.profile_events} event(s) · trigger {rec.trigger_event_id}"
        f" · {rec.latency_ms:.1f} ms · ranker {rec.model.ranker}"
    )
    rows = [
        f"  {item.rank:>2}. {item.item_id:<12} {item.score:6.3f} [{item.source}] "
        + "; ".join(item.reasons)
        for item in rec.items
    ]
    return "\n".join([head, *rows])


def tail(
    settings: Settings, bootstrap: str, *, limit: int = 0, from_beginning: bool = False
) -> None:
    consumer = output_consumer(
        settings, bootstrap, settings.topic_recommendations, from_beginning=from_beginning
    )
    shown = 0
    try:
        for rec in iter_recommendations(consumer):
            if rec is None:
                continue
            print(format_recommendation(rec), flush=True)
            shown += 1
            if limit and shown >= limit:
                return
    except KeyboardInterrupt:
        return
    finally:
        consumer.close()
