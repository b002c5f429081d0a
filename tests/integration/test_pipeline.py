"""Issue 4 acceptance: events → profiles → recommendations through the real stack.

Embedded broker, a real ``coldstream worker`` process, the local Qdrant store and the packaged
MiniLM encoder; payloads are produced and read back with confluent-kafka, as any client would.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import metrics
from infra.settings import Settings
from streams.produce import Publisher
from streams.schemas import DeadLetter, Recommendation
from streams.stack import LocalStack
from streams.tail import output_consumer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ITEMS = [
    ("toy", "Toy Story", "Animation", "toys come to life in a children's bedroom"),
    ("lion", "The Lion King", "Animation", "a lion cub becomes king of the savanna"),
    ("nemo", "Finding Nemo", "Animation", "a clownfish father searches the ocean for his son"),
    ("heat", "Heat", "Crime", "a detective hunts a crew of bank robbers in Los Angeles"),
    ("casino", "Casino", "Crime", "mob money and a Las Vegas casino empire"),
    ("godfather", "The Godfather", "Crime", "the aging patriarch of a mafia dynasty"),
    ("goodfellas", "Goodfellas", "Crime", "the rise and fall of a mob associate"),
    ("alien", "Alien", "Sci-Fi", "a deadly creature stalks the crew of a spaceship"),
    ("matrix", "The Matrix", "Sci-Fi", "a hacker learns reality is a simulation"),
    ("interstellar", "Interstellar", "Sci-Fi", "explorers travel through a wormhole in space"),
    ("titanic", "Titanic", "Romance", "a love story aboard a sinking ocean liner"),
    ("notebook", "The Notebook", "Romance", "a summer romance remembered decades later"),
    ("amelie", "Amelie", "Romance", "a shy waitress in Paris secretly helps others"),
    ("jaws", "Jaws", "Thriller", "a great white shark terrorizes a beach town"),
    ("psycho", "Psycho", "Thriller", "a motel owner with a dark secret"),
    ("seven", "Se7en", "Thriller", "two detectives hunt a serial killer"),
    ("up", "Up", "Animation", "an old man flies his house with balloons"),
    ("heist", "Ocean's Eleven", "Crime", "a crew plans an elaborate casino heist"),
    ("gravity", "Gravity", "Sci-Fi", "astronauts stranded after an accident in orbit"),
    ("casablanca", "Casablanca", "Romance", "old lovers meet again in wartime Morocco"),
]


def item(item_id: str, title: str, category: str, description: str) -> dict[str, object]:
    return {"item_id": item_id, "title": title, "category": category, "description": description}


def event(user: str, kind: str, **fields: object) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "user_id": user,
        "type": kind,
        "ts": int(time.time() * 1000),
        **fields,
    }


class Reader:
    """Collects recommendations and dead letters as they arrive."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.recs = output_consumer(settings, bootstrap, settings.topic_recommendations)
        self.dlq = output_consumer(settings, bootstrap, settings.topic_dead_letter)
        self.by_trigger: dict[str, Recommendation] = {}
        self.by_user: dict[str, list[Recommendation]] = {}
        self.dead: list[DeadLetter] = []

    def poll(self) -> None:
        for consumer, sink in ((self.recs, self._rec), (self.dlq, self._dead)):
            for msg in consumer.consume(500, 0.2):
                value = msg.value()
                if msg.error() is None and value is not None:
                    sink(value)

    def _rec(self, value: bytes) -> None:
        rec = Recommendation.model_validate_json(value)  # every output validates
        self.by_trigger[rec.trigger_event_id] = rec
        self.by_user.setdefault(rec.user_id, []).append(rec)

    def _dead(self, value: bytes) -> None:
        self.dead.append(DeadLetter.model_validate_json(value))

    def rec_for(self, event_id: str, timeout_s: float = 60) -> Recommendation:
        deadline = time.monotonic() + timeout_s
        while event_id not in self.by_trigger:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no recommendation triggered by {event_id}")
            self.poll()
        return self.by_trigger[event_id]

    def close(self) -> None:
        for consumer in (self.recs, self.dlq):
            consumer.close()


# every test here runs with each of the worker's output producers (streams.output_producer)
@pytest.fixture(scope="module", params=["librdkafka", "faust"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    root: Path = tmp_path_factory.mktemp("pipeline")
    settings = Settings(
        output_producer=request.param,
        data_dir=root / "data",
        partitions_events=2,
        partitions_items=1,
        recs_count=5,
        cold_item_slots=1,
        unknown_item_wait_s=3.0,  # room for the late item below on a busy machine
    )
    with LocalStack(settings, log_dir=root) as running:
        publisher = Publisher(settings, running.bootstrap)
        for spec in ITEMS:
            publisher.item(item(*spec))
        publisher.flush()
        assert running.worker is not None
        running.worker.wait_for("coldstream_items_indexed_total", len(ITEMS), timeout_s=180)
        yield running


@pytest.fixture(scope="module")
def publisher(stack: LocalStack) -> Publisher:
    return Publisher(stack.settings, stack.bootstrap)


@pytest.fixture(scope="module")
def reader(stack: LocalStack) -> Iterator[Reader]:
    r = Reader(stack.settings, stack.bootstrap)
    yield r
    r.close()


def send(publisher: Publisher, payload: dict[str, object]) -> str:
    publisher.event(payload)
    publisher.flush()
    return str(payload["event_id"])


def test_users_get_valid_explained_recommendations_that_follow_their_events(
    publisher: Publisher, reader: Reader
) -> None:
    histories = {
        "alice": ["toy", "lion"],
        "bob": ["heat", "godfather"],
        "carol": ["alien", "matrix"],
    }
    last: dict[str, str] = {}
    for user, items in histories.items():
        for item_id in items:
            last[user] = send(publisher, event(user, "click", item_id=item_id))
    for user, items in histories.items():
        rec = reader.rec_for(last[user])
        ids = [i.item_id for i in rec.items]
        assert ids, f"{user} got an empty list"
        assert not set(ids) & set(items), f"{user} was recommended items they interacted with"
        assert all(i.reasons for i in rec.items)
        assert rec.profile_events == len(items)
        assert [i.rank for i in rec.items] == list(range(1, len(ids) + 1))
    # content works: the crime fan's list leans crime, the animation fan's leans animation
    bob = reader.rec_for(last["bob"])
    crime = {s[0] for s in ITEMS if s[2] == "Crime"}
    assert sum(i.item_id in crime for i in bob.items) >= 2

    before = [i.item_id for i in reader.rec_for(last["alice"]).items]
    newer = send(publisher, event("alice", "purchase", item_id=before[0]))
    after = reader.rec_for(newer)
    assert after.profile_events == 3
    assert before[0] not in [i.item_id for i in after.items]
    assert [i.item_id for i in after.items] != before


def test_brand_new_item_matching_a_search_appears_in_the_next_list(
    stack: LocalStack, publisher: Publisher, reader: Reader
) -> None:
    first = send(publisher, event("dave", "search", text="underwater sea adventure with whales"))
    reader.rec_for(first)
    assert stack.worker is not None
    indexed = metrics.total(stack.worker.metrics(), "coldstream_items_indexed_total")
    publisher.item(
        item(
            "deep-blue",
            "Deep Blue Whales",
            "Documentary",
            "an underwater sea adventure following whales across the ocean",
        )
    )
    publisher.flush()
    stack.worker.wait_for("coldstream_items_indexed_total", indexed + 1, timeout_s=60)
    nxt = send(publisher, event("dave", "search", text="whales in the deep sea"))
    assert "deep-blue" in [i.item_id for i in reader.rec_for(nxt).items]


def test_retired_item_never_recommended_after_retirement(
    stack: LocalStack, publisher: Publisher, reader: Reader
) -> None:
    first = send(publisher, event("erin", "search", text="space travel through a wormhole"))
    target = reader.rec_for(first).items[0].item_id
    assert stack.worker is not None
    retired = metrics.total(stack.worker.metrics(), "coldstream_items_retired_total")
    publisher.item({"item_id": target, "active": False})
    publisher.flush()
    stack.worker.wait_for("coldstream_items_retired_total", retired + 1, timeout_s=60)
    for text in ("space travel through a wormhole", "astronauts exploring space"):
        nxt = send(publisher, event("erin", "search", text=text))
        assert target not in [i.item_id for i in reader.rec_for(nxt).items]


def test_a_click_that_overtakes_its_item_waits_for_it(
    stack: LocalStack, publisher: Publisher, reader: Reader
) -> None:
    """The click is on the broker before its item is: the worker holds it until the item
    agent has indexed the item, then applies it instead of dead-lettering it."""
    assert stack.worker is not None
    held = metrics.total(stack.worker.metrics(), "coldstream_events_held_total")
    consumed = metrics.total(stack.worker.metrics(), "coldstream_events_consumed_total")
    click = send(publisher, event("gina", "click", item_id="late-film"))
    # the item goes out once the worker has taken the click (a fixed 0.3 s sleep raced a slow
    # consumer: the item could be indexed first, and nothing was held); the hold waits 3 s
    stack.worker.wait_for("coldstream_events_consumed_total", consumed + 1, timeout_s=60)
    publisher.item(item("late-film", "Late Film", "Drama", "a film published after its click"))
    publisher.flush()
    rec = reader.rec_for(click)
    assert rec.profile_events == 1
    assert "late-film" not in [i.item_id for i in rec.items]  # seen: the click was applied
    assert metrics.total(stack.worker.metrics(), "coldstream_events_held_total") >= held + 1
    reader.poll()
    assert not [d for d in reader.dead if d.key == "gina"]


def test_bad_input_is_dead_lettered_one_for_one_and_the_worker_goes_on(
    stack: LocalStack, publisher: Publisher, reader: Reader
) -> None:
    topic = stack.settings.topic_events
    bad: dict[str, bytes] = {
        "bad-json": b'{"event_id": "x", "user_id": ',
        "wrong-types": json.dumps(event("frank", "rate", item_id="toy", rating="five")).encode(),
        "unknown-item": json.dumps(event("frank", "click", item_id="no-such-item")).encode(),
        "unknown-type": json.dumps(event("frank", "teleport", item_id="toy")).encode(),
        "huge-text": json.dumps(event("frank", "search", text="x" * 1_000_000)).encode(),
        "bad-utf8": b'{"event_id": "\xff\xfe", "user_id": "frank"}',
    }
    valid = [event("frank", "click", item_id="jaws"), event("frank", "view", item_id="psycho")]
    for i, (key, raw) in enumerate(bad.items()):  # invalid and valid payloads interleaved
        user_key = "frank" if key == "unknown-item" else f"dlq-{key}"
        publisher.send_raw(topic, user_key, raw)
        if i < len(valid):
            publisher.send_raw(topic, "frank", json.dumps(valid[i]).encode())
    publisher.flush()
    last_valid = send(publisher, event("frank", "click", item_id="seven"))
    rec = reader.rec_for(last_valid)
    assert rec.profile_events == 3  # every valid event applied, none of the invalid ones
    deadline = time.monotonic() + 30
    expected = {f"dlq-{k}" for k in bad if k != "unknown-item"} | {"frank"}
    while time.monotonic() < deadline and len(_dlq_keys(reader)) < len(bad):
        reader.poll()
    keys = _dlq_keys(reader)
    assert sorted(keys) == sorted(expected), keys
    reasons = {d.key: d.reason for d in reader.dead if d.key in expected}
    assert reasons["dlq-bad-json"] == "bad_json"
    assert reasons["dlq-huge-text"] == "too_large"
    assert reasons["dlq-bad-utf8"] == "bad_utf8"
    assert reasons["frank"] == "unknown_item"
    assert all(d.topic == topic and d.raw for d in reader.dead)
    assert stack.worker is not None and stack.worker.proc is not None
    assert stack.worker.proc.poll() is None, "the worker died"


def _dlq_keys(reader: Reader) -> list[str | None]:
    return [d.key for d in reader.dead if d.key and (d.key.startswith("dlq-") or d.key == "frank")]
