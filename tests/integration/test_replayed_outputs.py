"""Every applied event's list reaches the output at least once, also when its batch runs again
after the profiles were written: retried after a store error in recall, or redelivered after a
crash. The profile is not applied twice (the offset guard); the list is emitted again.

The behavior agent's batch code (``Pipeline.on_events``) over a real Qdrant Edge store and the
packaged encoder.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from infra import metrics
from infra.settings import Settings
from ranking.store import Hit, Query, StoreUnavailable
from streams.pipeline import Pipeline, Record
from streams.worker import build_pipeline
from tests.integration.inprocess import click, drama_pipeline, next_offset, recommendations_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CATALOG = [f"film-{n}" for n in range(8)]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    root: Path = tmp_path_factory.mktemp("replayed-outputs")
    with drama_pipeline(Settings(data_dir=root / "data"), CATALOG) as running:
        yield running


def _skipped(reason: str = "replayed_offset") -> float:
    value = metrics.REGISTRY.get_sample_value("coldstream_events_skipped_total", {"reason": reason})
    return value or 0.0


def test_a_store_error_after_the_profile_write_still_emits_the_list(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    store = pipeline.engine.store
    real_search = store.search
    searches = 0

    def search_failing_once(collection: str, queries: Sequence[Query]) -> list[list[Hit]]:
        nonlocal searches
        searches += 1
        if searches == 1:  # the profiles are written; recall fails; the batch is retried
            raise StoreUnavailable("connection reset (test)")
        return real_search(collection, queries)

    user = f"u-{uuid.uuid4().hex[:8]}"
    click_id, record = click(user, "film-1")
    store.search = search_failing_once  # type: ignore[method-assign]
    try:
        out = loop.run_until_complete(pipeline.on_events([record]))
    finally:
        del store.search  # the class's method again
    assert searches >= 2
    (rec,) = recommendations_in(out)
    assert rec.trigger_event_id == click_id and rec.user_id == user
    assert rec.profile_events == 1  # applied once, before the error; not again on the retry
    assert rec.items and "film-1" not in [i.item_id for i in rec.items]


def test_a_redelivered_batch_emits_its_lists_again(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    events = [click(a, "film-2"), click(b, "film-3"), click(a, "film-4")]
    batch = [record for _, record in events]
    first = loop.run_until_complete(pipeline.on_events(batch))
    skipped = _skipped()
    again = loop.run_until_complete(pipeline.on_events(batch))  # a crash before the commit
    assert _skipped() == skipped + 3
    expected = [(a, events[2][0], 2), (b, events[1][0], 1)]
    for out in (first, again):
        assert [
            (r.user_id, r.trigger_event_id, r.profile_events) for r in recommendations_in(out)
        ] == expected
    assert again.dead_letters == []


def test_a_producer_retry_is_counted_as_a_duplicate_not_a_replay(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """The same event id in a new record (a producer's retry) is skipped and labelled
    ``duplicate_event``: every stream event has an offset, and the label was once chosen by
    that, so all skips read as replays."""
    pipeline, loop = running
    user = f"d-{uuid.uuid4().hex[:8]}"
    _, record = click(user, "film-6")
    loop.run_until_complete(pipeline.on_events([record]))
    replays, duplicates = _skipped(), _skipped("duplicate_event")
    retry = Record(
        record.topic, record.partition, next_offset(), record.key, record.value, record.timestamp
    )
    out = loop.run_until_complete(pipeline.on_events([retry]))
    assert (_skipped(), _skipped("duplicate_event")) == (replays, duplicates + 1)
    assert recommendations_in(out) == [] and out.dead_letters == []


def test_saving_the_counts_with_the_store_down_keeps_them_for_the_next_save(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """The worker's timer saves trending and co-visitation counts; a store outage there must
    not raise (it would crash the worker), and nothing may be forgotten."""
    pipeline, loop = running
    loop.run_until_complete(pipeline.on_events([click(f"c-{uuid.uuid4().hex[:8]}", "film-5")[1]]))
    store = pipeline.engine.store

    def upsert_down(collection: str, points: object) -> None:
        raise StoreUnavailable("connection refused (test)")

    store.upsert = upsert_down  # type: ignore[method-assign]
    try:
        assert loop.run_until_complete(pipeline.persist_trending()) == 0
    finally:
        del store.upsert
    up = metrics.REGISTRY.get_sample_value("coldstream_dependency_up", {"dependency": "store"})
    assert up == 0.0
    assert loop.run_until_complete(pipeline.persist_trending()) >= 1  # kept, saved now


def test_a_store_down_at_start_up_is_waited_for(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """A worker starting (or taking partitions over) while the store is down waits for it,
    as a batch does, instead of failing its agents."""
    pipeline, loop = running
    store = pipeline.store
    real_ensure = store.ensure_collection
    calls = 0

    def down_once(name: str, dim: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreUnavailable("connection refused (test)")
        real_ensure(name, dim)

    fresh = build_pipeline(pipeline.settings, store, pipeline.batcher.encoder)
    store.ensure_collection = down_once  # type: ignore[method-assign]
    try:
        loop.run_until_complete(fresh.start())
    finally:
        del store.ensure_collection
        loop.run_until_complete(fresh.batcher.stop())
    assert calls == 4  # the failed check, then the three collections


def test_a_revocation_drops_the_counters_on_the_store_thread(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """Every change to the engine's counters runs on the store thread, where a persist the
    timer queued meanwhile reads them: dropped on the event loop, they could change size under
    that persist, whose error stops the app (a timer that raises ends Faust)."""
    pipeline, loop = running
    threads: list[str] = []
    real_drop = pipeline.engine.drop_trending

    def drop(partitions: Iterable[int]) -> None:
        threads.append(threading.current_thread().name)
        real_drop(partitions)

    pipeline.engine.drop_trending = drop  # type: ignore[method-assign]
    try:
        loop.run_until_complete(pipeline.on_partitions_revoked([0]))
    finally:
        del pipeline.engine.drop_trending
        loop.run_until_complete(pipeline.on_partitions_assigned([0]))
    assert len(threads) == 1 and threads[0].startswith("coldstream-store")
    assert 0 in pipeline.engine.trending  # taken back over, from the counts just saved
