"""Issue 7: a rebalance and a store outage lose nothing and apply nothing twice.

Two real Faust apps of one consumer group run in this process over one shared store (the
embedded store is single-process; see tests/integration/inprocess.py). One leaves mid-stream and
the other takes its partitions over; in another test a second one joins mid-stream and takes
partitions away from a member that stays. Separately, the store goes away for 5 s mid-stream.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from encoders.model import TextEncoder, load_encoder
from infra import metrics
from infra.broker import EmbeddedBroker
from infra.edge_store import EdgeStore
from infra.kafka import ensure_topics
from infra.settings import Settings
from ranking.profile import Profile
from ranking.store import StoreUnavailable, VectorStore
from streams import agents
from streams.pipeline import Outputs
from streams.produce import Publisher
from streams.worker import encoder_config
from tests.integration.inprocess import InProcessWorker, running
from tests.integration.test_pipeline import ITEMS, item

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

USERS = 100


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_encoder(encoder_config(Settings()))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Settings, str, EdgeStore]]:
    settings = Settings(
        data_dir=tmp_path / "data", partitions_events=4, partitions_items=1, metrics_port=0
    )
    store = EdgeStore(settings.edge_path)
    with EmbeddedBroker() as broker:
        ensure_topics(settings, broker.bootstrap)
        yield settings, broker.bootstrap, store
    store.close()


def _events(n: int, seed: int, searches: float = 0.0) -> list[dict[str, object]]:
    """``n`` events of ``USERS`` users, a ``searches`` share of them searches (text to encode)."""
    rng = random.Random(seed)
    ids = [spec[0] for spec in ITEMS]
    texts = [spec[3] for spec in ITEMS]
    events: list[dict[str, object]] = []
    for i in range(n):
        payload: dict[str, object] = {
            "event_id": str(uuid.uuid4()),
            "user_id": f"user-{rng.randrange(USERS)}",
            "type": rng.choice(["view", "click", "purchase"]),
            "item_id": rng.choice(ids),
            "ts": 1_700_000_000_000 + i * 1000,
        }
        if searches and rng.random() < searches:
            del payload["item_id"]
            payload.update(type="search", text=rng.choice(texts))
        events.append(payload)
    return events


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _applied() -> float:
    # this process's counter: both in-process workers feed it
    return metrics.REGISTRY.get_sample_value("coldstream_profile_updates_total") or 0.0


def _assert_exact(store: VectorStore, settings: Settings, events: list[dict[str, object]]) -> None:
    expected = Counter(str(e["user_id"]) for e in events)
    stored = store.retrieve(settings.users_collection, list(expected), with_vectors=True)
    counts = {
        uid: Profile.from_payload(uid, p.vector, p.payload).event_count for uid, p in stored.items()
    }
    wrong = {uid: (counts.get(uid), n) for uid, n in expected.items() if counts.get(uid) != n}
    assert not wrong, f"{len(wrong)} users off (have, want): {list(wrong.items())[:5]}"


def _settled(store: VectorStore, settings: Settings, events: list[dict[str, object]]) -> bool:
    expected = Counter(str(e["user_id"]) for e in events)
    stored = store.retrieve(settings.users_collection, list(expected), with_vectors=False)
    total = sum(int(p.payload.get("event_count", 0)) for p in stored.values())
    return total >= len(events)


def _publish_items(settings: Settings, bootstrap: str) -> Publisher:
    publisher = Publisher(settings, bootstrap)
    for spec in ITEMS:
        publisher.item(item(*spec))
    publisher.flush()
    return publisher


def _first_events_applied(
    publisher: Publisher,
    store: EdgeStore,
    settings: Settings,
    events: list[dict[str, object]],
    at_least: int,
) -> None:
    """Once the items are indexed, publish ``events`` and wait until ``at_least`` are applied."""
    _wait(lambda: store.count(settings.items_collection) >= len(ITEMS), 120, "items")
    base = _applied()
    for payload in events:
        publisher.event(payload)
    publisher.flush()
    _wait(lambda: _applied() - base >= at_least, 120, "first events applied")


# This test's timeouts under CPU load (one core kept busy: 2 of 3 runs) were events lost by the
# leaving member, not a rebalance that never completed: Faust's take_events acked the batch the
# leaving member was cancelled in the middle of, its final commit moved past it and the remaining
# member never saw those events (see streams.agents.finish_batch, the fix). It is not rerun on
# a timeout any more (a rerun hid that data loss half the time); the process of its own
# (scripts/test.sh) stays, as it is the test most sensitive to a loaded machine.
@pytest.mark.isolated
def test_rebalance_after_a_member_leaves_keeps_profiles_exact(
    env: tuple[Settings, str, EdgeStore], encoder: TextEncoder
) -> None:
    settings, bootstrap, store = env
    publisher = _publish_items(settings, bootstrap)
    first = InProcessWorker(settings, bootstrap, store, encoder)
    second = InProcessWorker(settings, bootstrap, store, encoder)
    events = _events(4000, seed=3)
    with running(first, second):
        _first_events_applied(publisher, store, settings, events[:2000], at_least=500)
        second.stop()  # leaves the group mid-stream: the first takes its partitions over
        for payload in events[2000:]:
            publisher.event(payload)
        publisher.flush()
        _wait(lambda: _settled(store, settings, events), 120, "all events applied")
        time.sleep(2.0)  # anything applied twice would show up now
    _assert_exact(store, settings, events)


def _publish_paced(
    publisher: Publisher, events: list[dict[str, object]], per_s: float, chunk: int = 25
) -> threading.Thread:
    """Publish ``events`` in the background at about ``per_s`` a second (a stream, not a burst)."""

    def run() -> None:
        for start in range(0, len(events), chunk):
            for payload in events[start : start + chunk]:
                publisher.event(payload)
            publisher.flush()
            time.sleep(chunk / per_s)

    thread = threading.Thread(target=run, name="paced-publisher", daemon=True)
    thread.start()
    return thread


def _join_mid_stream(
    first: InProcessWorker,
    second: InProcessWorker,
    feed: threading.Thread,
    store: EdgeStore,
    settings: Settings,
    events: list[dict[str, object]],
) -> tuple[set[int], set[int]]:
    """``second`` joins ``first``'s group while ``feed`` streams ``events``; profiles end exact.

    Returns the events partitions ``first`` kept and those moved to ``second``.
    """
    topic = settings.topic_events
    with running(second):
        _wait(
            lambda: (
                bool(second.assigned(topic))
                and first.assigned(topic) | second.assigned(topic) == set(range(4))
            ),
            60,
            "partitions moved to the joining member",
        )
        _all_applied_once(feed, store, settings, events)
        kept, moved = first.assigned(topic), second.assigned(topic)
        assert first.error is None and second.error is None
    return kept, moved


def _all_applied_once(
    feed: threading.Thread, store: EdgeStore, settings: Settings, events: list[dict[str, object]]
) -> None:
    """Once ``feed`` has published everything: every event applied, none twice."""
    feed.join(60)
    assert not feed.is_alive(), "the paced publisher did not finish"
    try:
        _wait(lambda: _settled(store, settings, events), 120, "all events applied")
    except TimeoutError:
        _assert_exact(store, settings, events)  # names the users short of events
        raise
    time.sleep(2.0)  # anything applied twice would show up now
    _assert_exact(store, settings, events)


# The counterpart of the test above: here partitions move away from a member that stays alive,
# and the new owner replays them from the last commit (the offset guard skips what was applied).
# At this pace the old owner's batches are short; the test after this one holds one of them
# across the rebalance.
@pytest.mark.isolated
def test_rebalance_after_a_member_joins_keeps_profiles_exact(
    env: tuple[Settings, str, EdgeStore], encoder: TextEncoder
) -> None:
    settings, bootstrap, store = env
    publisher = _publish_items(settings, bootstrap)
    first = InProcessWorker(settings, bootstrap, store, encoder)
    second = InProcessWorker(settings, bootstrap, store, encoder)
    events = _events(4000, seed=4)
    with running(first):
        _first_events_applied(publisher, store, settings, events[:1000], at_least=300)
        # the rest arrives as a stream over ~10 s, during which the second member joins
        feed = _publish_paced(publisher, events[1000:], per_s=300.0)
        kept, moved = _join_mid_stream(first, second, feed, store, settings, events)
    assert moved and kept and not moved & kept, (kept, moved)
    _assert_exact(store, settings, events)  # and still after both left


class HeldEncoder:
    """The shared encoder; once armed, its next forward pass waits for a condition, then more.

    Holding the old owner's encoder keeps its batch in flight across a rebalance: the batch has
    read its users' profiles and waits for its search texts' vectors.
    """

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self._until: Callable[[], bool] | None = None
        self._then_s = 0.0
        self.held = threading.Event()
        self.released_after_condition: bool | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def hold_next_pass(self, until: Callable[[], bool], then_s: float) -> None:
        self._then_s = then_s
        self._until = until

    def encode_ids(self, ids: Any, **kwargs: Any) -> Any:
        until, self._until = self._until, None  # armed by the test before any text is queued
        if until is not None:
            self.held.set()
            deadline = time.monotonic() + 60.0
            while not until() and time.monotonic() < deadline:
                time.sleep(0.05)
            self.released_after_condition = until()
            time.sleep(self._then_s)
        return self.inner.encode_ids(ids, **kwargs)


# README "Scale-out": a batch of the member losing partitions is still in flight when another
# member joins. Its encoder pass (searches need one) is held from before the rebalance until 6 s
# after it began. Unless the revocation waits for that batch (stream_wait_empty), the joining
# member has by then taken the partitions over, replayed them from the last commit and written
# their profiles, and the old batch writes its older copies over them: with the wait off, 12
# users ended short (4 of 4 runs). On the embedded broker the wait holds the handover back only
# because the old member is the group leader here (see the README for a follower).
@pytest.mark.isolated
def test_a_batch_in_flight_when_a_member_joins_is_applied_before_the_handover(
    env: tuple[Settings, str, EdgeStore], encoder: TextEncoder
) -> None:
    settings, bootstrap, store = env
    publisher = _publish_items(settings, bootstrap)
    held = HeldEncoder(encoder)
    first = InProcessWorker(settings, bootstrap, store, held)  # type: ignore[arg-type]
    second = InProcessWorker(settings, bootstrap, store, encoder)
    events = _events(2000, seed=6, searches=0.3)
    with running(first):
        _first_events_applied(publisher, store, settings, events[:500], at_least=200)
        app = first.app
        assert app is not None
        rebalances = app.rebalancing_count  # counts up as a rebalance begins (revocation)
        held.hold_next_pass(lambda: app.rebalancing_count > rebalances, then_s=6.0)
        feed = _publish_paced(publisher, events[500:], per_s=300.0)
        _wait(held.held.is_set, 30, "a batch of the first member held")
        _join_mid_stream(first, second, feed, store, settings, events)
    assert held.released_after_condition, "no rebalance began while the batch was held"


def _owner_changed() -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "coldstream_events_skipped_total", {"reason": "owner_changed"}
        )
        or 0.0
    )


# README "Scale-out": the embedded broker forms a generation about 3 s after a join arrives,
# without a member still waiting for its batch before it rejoins (real Kafka waits for every
# member). Here that member is a follower whose batch is held 8 s past the start of the
# rebalance: its partitions go to the others while the batch is in flight, and the new owners
# replay them from the last commit and write their users. Before the ownership check
# (BehaviorEngine._moved_away) the held batch then wrote its older profiles over theirs (in an
# earlier, uncommitted variant of this test: 9 users short).
@pytest.mark.isolated
def test_a_batch_that_outlives_its_partitions_leaves_the_new_owners_profiles(
    env: tuple[Settings, str, EdgeStore], encoder: TextEncoder
) -> None:
    settings, bootstrap, store = env
    topic = settings.topic_events
    publisher = _publish_items(settings, bootstrap)
    held = HeldEncoder(encoder)
    leader = InProcessWorker(settings, bootstrap, store, encoder)
    follower = InProcessWorker(settings, bootstrap, store, held)  # type: ignore[arg-type]
    joining = InProcessWorker(settings, bootstrap, store, encoder)
    events = _events(2000, seed=7, searches=0.3)
    skipped_before = _owner_changed()
    with running(leader):
        _first_events_applied(publisher, store, settings, events[:300], at_least=100)
        with running(follower):
            _wait(lambda: bool(follower.assigned(topic)), 60, "the follower got partitions")
            app = follower.app
            assert app is not None
            rebalances = app.rebalancing_count
            held.hold_next_pass(lambda: app.rebalancing_count > rebalances, then_s=8.0)
            feed = _publish_paced(publisher, events[300:], per_s=300.0)
            _wait(held.held.is_set, 30, "a batch of the follower held")
            with running(joining):
                _all_applied_once(feed, store, settings, events)
                workers = (leader, follower, joining)
                assert all(w.error is None for w in workers)
    assert held.released_after_condition, "no rebalance began while the batch was held"
    # not asserted: a run where the new owner had not yet written the held batch's users
    # (its write then reads the old one's and skips those events as replays) checks nothing
    # of the ownership check but is right all the same; 0-17 events per run here
    print(f"events left to the new owner: {_owner_changed() - skipped_before:.0f}")


class FlakyStore:
    """The real store behind a switch that makes every call fail as an outage would."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.refused += 1
                raise StoreUnavailable("connection refused (outage)")
            return attr(*args, **kwargs)

        return call


def test_store_outage_of_5s_neither_crashes_nor_loses_events(
    env: tuple[Settings, str, EdgeStore], encoder: TextEncoder
) -> None:
    settings, bootstrap, store = env
    flaky = FlakyStore(store)
    publisher = _publish_items(settings, bootstrap)
    worker = InProcessWorker(settings, bootstrap, flaky, encoder)  # type: ignore[arg-type]
    events = _events(3000, seed=5)
    with running(worker):
        _wait(lambda: store.count(settings.items_collection) >= len(ITEMS), 120, "items")
        base = _applied()
        for payload in events[:1500]:
            publisher.event(payload)
        publisher.flush()
        _wait(lambda: _applied() - base >= 300, 120, "first events applied")
        flaky.down.set()
        for payload in events[1500:]:
            publisher.event(payload)
        publisher.flush()
        time.sleep(5.0)
        flaky.down.clear()
        assert flaky.refused > 0, "the outage never reached the worker"
        assert (metrics.REGISTRY.get_sample_value("coldstream_store_errors_total") or 0) > 0
        _wait(lambda: _settled(store, settings, events), 120, "all events applied")
        time.sleep(2.0)
        assert worker.error is None
    _assert_exact(store, settings, events)


@pytest.mark.parametrize("when", ["after_handing_over", "at_handing_over"])
def test_an_output_the_broker_fails_is_sent_again_and_the_agent_goes_on(
    env: tuple[Settings, str, EdgeStore],
    encoder: TextEncoder,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """A batch's lists the broker fails to take (after the producer's own retries), or that
    the producer refuses outright when handed them (a full buffer, no metadata), are sent
    again until taken, and the behavior agent goes on. Before, the first failure failed the
    agent at its next batch and the second escaped the agent at once; Faust restarted it on
    the same stream, and the restarted agent's acks could move the commit past the batch."""
    settings, bootstrap, store = env
    real_send = agents.send_outputs
    failing = {"left": 2}

    async def send_failing_twice(out: Outputs, topics: Any) -> Awaitable[None]:
        if out.recommendations and failing["left"] and when == "at_handing_over":
            failing["left"] -= 1
            raise BufferError("the producer's queue is full (test)")
        delivered = await real_send(out, topics)
        if not out.recommendations or failing["left"] == 0:
            return delivered
        failing["left"] -= 1

        async def refused() -> None:
            await delivered
            raise ConnectionError("the broker did not take the batch (test)")

        return refused()

    monkeypatch.setattr(agents, "send_outputs", send_failing_twice)
    resends = metrics.REGISTRY.get_sample_value("coldstream_output_resends_total") or 0.0
    publisher = _publish_items(settings, bootstrap)
    worker = InProcessWorker(settings, bootstrap, store, encoder)
    events = _events(400, seed=9)
    with running(worker):
        _first_events_applied(publisher, store, settings, events[:200], at_least=50)
        for payload in events[200:]:  # batches after the refused ones
            publisher.event(payload)
        publisher.flush()
        _wait(lambda: _settled(store, settings, events), 120, "all events applied")
        _wait(
            lambda: (
                (metrics.REGISTRY.get_sample_value("coldstream_output_resends_total") or 0.0)
                >= resends + 2
            ),
            60,
            "the refused lists sent again",
        )
        assert failing["left"] == 0 and worker.error is None
    _assert_exact(store, settings, events)
