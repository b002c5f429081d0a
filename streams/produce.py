"""Publishing items and events: validated, keyed as the contracts say, with progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from tqdm import tqdm

from infra.kafka import TopicAdminError, client_config, list_topics
from infra.settings import Settings
from streams.pipeline import limits_from
from streams.schemas import BehaviorEvent, InvalidPayload, ItemEvent, decode


@dataclass
class ProduceReport:
    sent: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)
    delivery_error: str = ""  # why sent records may not have reached the broker

    def summary(self) -> str:
        lines = [f"sent {self.sent}, rejected {self.invalid} invalid line(s)"]
        if self.delivery_error:
            lines.append(f"  NOT CONFIRMED by the broker: {self.delivery_error}")
        lines += [f"  {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  … and {len(self.errors) - 20} more")
        return "\n".join(lines)


def make_producer(settings: Settings, bootstrap: str) -> Producer:
    return Producer(
        client_config(
            settings,
            bootstrap,
            **{
                "linger.ms": 5,
                "acks": "all",
                # let oversize payloads reach the worker, which dead-letters them with a reason
                "message.max.bytes": 8 * 1024 * 1024,
            },
        )
    )


class Publisher:
    """Validated, keyed publishing to the ``items`` and ``events`` topics."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.producer = make_producer(settings, bootstrap)
        self.limits = limits_from(settings)
        self.failures: list[str] = []

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(str(err))

    def send_raw(self, topic: str, key: str | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    key=key.encode() if key else None,
                    value=value,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def item(self, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        item = decode(raw, ItemEvent, self.limits)
        self.send_raw(self.settings.topic_items, item.item_id, raw)

    def event(self, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        event = decode(raw, BehaviorEvent, self.limits)
        self.send_raw(self.settings.topic_events, event.user_id, raw)

    def flush(self, timeout_s: float = 30.0) -> None:
        left = self.producer.flush(timeout_s)
        if left:
            raise RuntimeError(f"{left} message(s) not delivered within {timeout_s}s")
        if self.failures:
            raise RuntimeError(f"{len(self.failures)} delivery failure(s): {self.failures[0]}")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark: no JSON
            if line.strip():
                yield number, line.rstrip(b"\r\n")


def produce_file(settings: Settings, bootstrap: str, kind: str, path: Path) -> ProduceReport:
    """Validate each JSONL line and publish the valid ones; report the invalid with line numbers.

    The file is read and the topic looked up before anything is sent: a missing topic would be
    made by the broker's auto-creation with its own partition count, and a broker that cannot
    be reached fails here in one line instead of after the whole file. A delivery the broker
    does not confirm is in the report (``delivery_error``), with what was validated and sent.
    """
    model: type[ItemEvent] | type[BehaviorEvent] = ItemEvent if kind == "items" else BehaviorEvent
    topic = settings.topic_items if kind == "items" else settings.topic_events
    total = sum(1 for _ in _lines(path))
    if topic not in list_topics(settings, bootstrap):
        raise TopicAdminError(f"topic {topic!r} does not exist: run `coldstream topics create`")
    publisher = Publisher(settings, bootstrap)
    report = ProduceReport()
    for number, raw in tqdm(_lines(path), total=total, unit="msg", file=sys.stderr):
        try:
            parsed = decode(raw, model, publisher.limits)
        except InvalidPayload as exc:
            report.invalid += 1
            report.errors.append(f"{path}:{number}: {exc.message}")
            continue
        key = parsed.item_id if isinstance(parsed, ItemEvent) else parsed.user_id
        publisher.send_raw(topic, key, raw)
        report.sent += 1
    try:
        publisher.flush()
    except RuntimeError as exc:
        report.delivery_error = str(exc)
    return report
