"""A behavior batch closes when nothing more is waiting, not after its window (streams.batching).

A real ``coldstream worker`` with a 10-second batch window: Faust's ``take_events`` holds an event
until the window it arrives in ends (with ``COLDSTREAM_BATCH_CLOSE_WHEN_DRAINED=false`` this test
fails, 6-10 s per event); the worker's batches close as soon as its queue is empty.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.settings import Settings
from streams.produce import Publisher
from streams.schemas import Recommendation
from streams.stack import LocalStack
from streams.tail import output_consumer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WINDOW_S = 10.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root: Path = tmp_path_factory.mktemp("batching")
    settings = Settings(
        data_dir=root / "data", partitions_events=1, partitions_items=1, batch_within_s=WINDOW_S
    )
    with LocalStack(settings, log_dir=root) as running:
        publisher = Publisher(settings, running.bootstrap)
        for n, title in enumerate(["Heat", "Casino", "Alien", "Titanic", "Jaws", "Up"]):
            publisher.item({"item_id": f"i{n}", "title": title, "category": "Film"})
        publisher.flush()
        assert running.worker is not None
        running.worker.wait_for("coldstream_items_indexed_total", 6, timeout_s=180)
        yield running


def test_an_event_is_not_held_for_the_batch_window(stack: LocalStack) -> None:
    publisher = Publisher(stack.settings, stack.bootstrap)
    consumer = output_consumer(
        stack.settings, stack.bootstrap, stack.settings.topic_recommendations
    )
    try:
        latencies: list[float] = []
        for n in range(5):  # the first includes warm-up; each is alone in its batch
            event_id = str(uuid.uuid4())
            sent = time.monotonic()
            publisher.event(
                {
                    "event_id": event_id,
                    "user_id": f"u{n}",
                    "type": "click",
                    "item_id": f"i{n}",
                    "ts": int(time.time() * 1000),
                }
            )
            publisher.flush()
            deadline = sent + 60
            got = None
            while got is None and time.monotonic() < deadline:
                for msg in consumer.consume(100, 0.05):
                    value = msg.value()
                    if msg.error() is None and value is not None:
                        rec = Recommendation.model_validate_json(value)
                        if rec.trigger_event_id == event_id:
                            got = rec
            assert got is not None, f"no recommendation for event {n}"
            latencies.append(time.monotonic() - sent)
        assert max(latencies[1:]) < 1.0, latencies
    finally:
        consumer.close()
