"""Reading the ``recommendations`` topic: a consumer that validates and pretty-prints."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import Consumer, KafkaError
from pydantic import ValidationError

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
    consumer: Consumer,
    timeout_s: float = 1.0,
    *,
    on_problem: Callable[[str], None] | None = None,
) -> Iterator[Recommendation | None]:
    """Validated recommendations as they arrive; ``None`` on each idle poll.

    A record that is not a valid recommendation (another producer's, or a newer worker's
    with fields this version does not know) and a consumer error are reported to
    ``on_problem`` and skipped: a reader must not die of one record.
    """
    say = on_problem or (lambda _msg: None)
    while True:
        messages = consumer.consume(500, timeout_s)
        if not messages:
            yield None
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    say(f"consumer error: {err}")
                continue
            value = msg.value()
            if value is None:
                continue
            try:
                yield Recommendation.model_validate_json(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "record"
                say(
                    f"skipped {msg.topic()}/{msg.partition()}@{msg.offset()}: not a "
                    f"recommendation ({where}: {first['msg']})"
                )


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


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def tail(
    settings: Settings, bootstrap: str, *, limit: int = 0, from_beginning: bool = False
) -> None:
    consumer = output_consumer(
        settings, bootstrap, settings.topic_recommendations, from_beginning=from_beginning
    )
    shown = 0
    try:
        for rec in iter_recommendations(consumer, on_problem=_to_stderr):
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
