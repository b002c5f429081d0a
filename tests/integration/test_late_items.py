"""A click can overtake its item: the event waits for an item the store does not have yet.

The behavior agent's batch code (``Pipeline.on_events``) over a real Qdrant Edge store and the
real encoder, with the items agent's code (``Pipeline.on_items``) indexing the item meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from infra import metrics
from infra.settings import Settings
from ranking.store import Query, StoreUnavailable
from streams.pipeline import Outputs, Pipeline, Record
from streams.schemas import DeadLetter
from tests.integration import inprocess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WAIT_S = 1.0
CATALOG = [f"old-{n}" for n in range(8)]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    root: Path = tmp_path_factory.mktemp("late-items")
    settings = Settings(data_dir=root / "data", unknown_item_wait_s=WAIT_S)
    with inprocess.drama_pipeline(settings, CATALOG) as running:
        yield running


_event = inprocess.click


def _item(item_id: str) -> Record:
    value = {"item_id": item_id, "title": f"Film {item_id}", "category": "drama"}
    return Record(
        "items", 0, inprocess.next_offset(), item_id.encode(), json.dumps(value).encode(), 1.7e9
    )


_recs = inprocess.recommendations_in


def _triggers(out: Outputs) -> list[str]:
    return [rec.trigger_event_id for rec in _recs(out)]


def _held(outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value("coldstream_events_held_total", {"outcome": outcome})
    return value or 0.0


def test_a_click_on_an_item_still_being_indexed_is_applied(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    user = f"u-{uuid.uuid4().hex[:8]}"
    _first, before = _event(user, "old-1")
    click, on_new = _event(user, "brand-new")
    other, other_user = _event(f"o-{uuid.uuid4().hex[:8]}", "old-2")
    retried = _held("retried")

    async def publish_item_soon() -> Outputs:
        await asyncio.sleep(0.1)  # the item agent is a moment behind the events agent
        return await pipeline.on_items([_item("brand-new")])

    async def both() -> tuple[Outputs, Outputs]:
        events = asyncio.ensure_future(pipeline.on_events([before, on_new, other_user]))
        indexed = await publish_item_soon()
        return await events, indexed

    out, indexed = loop.run_until_complete(both())
    assert indexed.dead_letters == []
    assert out.dead_letters == []
    # the other user's list first; this user's after the wait, one for the batch
    assert _triggers(out) == [other, click]
    (last,) = [rec for rec in _recs(out) if rec.trigger_event_id == click]
    assert last.profile_events == 2 and "brand-new" not in [i.item_id for i in last.items]
    assert _held("retried") == retried + 2  # the click and the user's event before it


def test_the_rest_of_the_batch_leaves_before_the_wait(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """With ``early`` (the agent's sender), the lists of users with nothing held go out before
    the wait; only the held user's list waits for the item."""
    pipeline, loop = running
    click, on_new = _event(f"u-{uuid.uuid4().hex[:8]}", "brand-new-2")
    other, other_user = _event(f"o-{uuid.uuid4().hex[:8]}", "old-5")
    _bad, garbage = _event(f"g-{uuid.uuid4().hex[:8]}", "old-6")
    garbage = Record(garbage.topic, 0, garbage.offset, garbage.key, b"not json", 1.7e9)
    early: list[tuple[float, Outputs]] = []

    async def send_early(out: Outputs) -> None:
        early.append((time.monotonic(), out))

    async def both() -> tuple[Outputs, float]:
        events = asyncio.ensure_future(
            pipeline.on_events([on_new, other_user, garbage], early=send_early)
        )
        # the item agent is behind: the item comes once the other lists have gone out (a
        # fixed sleep raced a slow first pass on a loaded machine)
        deadline = time.monotonic() + 30
        while not early and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        indexed_at = time.monotonic()
        await pipeline.on_items([_item("brand-new-2")])
        return await events, indexed_at

    out, indexed_at = loop.run_until_complete(both())
    ((sent_at, first),) = early
    assert sent_at < indexed_at  # before the wait ended, not after it
    assert _triggers(first) == [other]
    assert [DeadLetter.model_validate_json(v).reason for _, v in first.dead_letters] == ["bad_json"]
    assert _triggers(out) == [click] and out.dead_letters == []


def test_a_store_error_after_the_wait_does_not_send_the_early_lists_twice(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """The pass after the wait fails once (the store drops the connection in its recall): only
    that pass runs again. Rerunning the whole batch listed the users of the first pass again,
    as replays, and sent their lists a second time."""
    pipeline, loop = running
    click, on_new = _event(f"u-{uuid.uuid4().hex[:8]}", "brand-new-3")
    other, other_user = _event(f"o-{uuid.uuid4().hex[:8]}", "old-3")
    store = pipeline.engine.store
    real_search = store.search
    searches = 0
    indexed = False  # set once the item is in: the next search is the held user's pass

    def search_failing_after_the_wait(collection: str, queries: Sequence[Query]) -> Any:
        nonlocal searches, indexed
        searches += 1
        if indexed:
            indexed = False  # once
            raise StoreUnavailable("connection reset (test)")
        return real_search(collection, queries)

    early: list[Outputs] = []

    async def send_early(out: Outputs) -> None:
        early.append(out)

    async def both() -> Outputs:
        events = asyncio.ensure_future(pipeline.on_events([on_new, other_user], early=send_early))
        await asyncio.sleep(0.2)
        nonlocal indexed
        await pipeline.on_items([_item("brand-new-3")])
        indexed = True
        return await events

    store.search = search_failing_after_the_wait  # type: ignore[method-assign]
    try:
        out = loop.run_until_complete(both())
    finally:
        del store.search  # the class's method again
    assert searches >= 3
    assert [t for part in early for t in _triggers(part)] == [other]
    assert _triggers(out) == [click]  # not [other, click]: the other user's list went early
    assert _recs(out)[0].profile_events == 1


def test_an_item_that_never_comes_is_dead_lettered_after_the_wait(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    user = f"u-{uuid.uuid4().hex[:8]}"
    _ghost_id, ghost = _event(user, "never-published")
    later, after = _event(user, "old-3")  # held behind the ghost, then applied in order
    dead = _held("dead_letter")
    began = time.monotonic()
    out = loop.run_until_complete(pipeline.on_events([ghost, after]))
    assert time.monotonic() - began >= WAIT_S
    (letter,) = [DeadLetter.model_validate_json(v) for _, v in out.dead_letters]
    assert letter.reason == "unknown_item" and letter.offset == ghost.offset
    assert _triggers(out) == [later]
    assert _held("dead_letter") == dead + 1


def test_without_a_wait_the_unknown_item_is_dead_lettered_at_once(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    settings = pipeline.settings
    pipeline.settings = settings.model_copy(update={"unknown_item_wait_s": 0.0})
    try:
        user = f"u-{uuid.uuid4().hex[:8]}"
        _ghost_id, ghost = _event(user, "never-published-either")
        later, after = _event(user, "old-4")
        held = _held("retried") + _held("dead_letter")
        out = loop.run_until_complete(pipeline.on_events([ghost, after]))
    finally:
        pipeline.settings = settings
    assert [DeadLetter.model_validate_json(v).reason for _, v in out.dead_letters] == [
        "unknown_item"
    ]
    assert _triggers(out) == [later]
    assert _held("retried") + _held("dead_letter") == held


def test_a_search_carrying_an_item_id_applies_its_text_and_waits_for_nothing(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """A search's ``item_id`` (the page it came from) is not what it is about: an id the
    catalog lacks was held for the wait, then dead-lettered as unknown_item, and a known one
    was marked seen and counted as a visit (found by review). The text is what applies."""
    pipeline, loop = running
    user = f"s-{uuid.uuid4().hex[:8]}"
    retried = _held("retried") + _held("dead_lettered")
    searches = []
    for page in ("ctx-page-42", "old-3"):
        value = {
            "event_id": str(uuid.uuid4()),
            "user_id": user,
            "type": "search",
            "text": "a drama film",
            "item_id": page,
            "ts": int(time.time() * 1000),
        }
        searches.append(
            Record(
                "events", 0, inprocess.next_offset(), user.encode(), json.dumps(value).encode(), 0
            )
        )
    started = time.perf_counter()
    out = loop.run_until_complete(pipeline.on_events(searches))
    assert time.perf_counter() - started < WAIT_S  # not held for the unknown id
    assert out.dead_letters == [] and _held("retried") + _held("dead_lettered") == retried
    (rec,) = _recs(out)
    assert rec.profile_events == 2
    stored = pipeline.store.retrieve(pipeline.engine.cfg.users_collection, [user])[user]
    assert stored.payload["recent_items"] == [] and "old-3" not in stored.payload["seen"]


def test_an_id_whose_wait_ran_out_is_not_waited_for_again_until_it_comes(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """Clicks on an id that never comes held every batch they were in for the whole wait, each
    time (found by review): after one wait runs out, the id's events are dead-lettered at once;
    once the item is in the store, they are applied as any other."""
    pipeline, loop = running
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"

    def timed(record: Record) -> tuple[float, Outputs]:
        started = time.perf_counter()
        out = loop.run_until_complete(pipeline.on_events([record]))
        return time.perf_counter() - started, out

    waited, out = timed(_event(f"g1-{uuid.uuid4().hex[:6]}", ghost)[1])
    assert waited >= WAIT_S and [_reason(v) for _, v in out.dead_letters] == ["unknown_item"]
    waited, out = timed(_event(f"g2-{uuid.uuid4().hex[:6]}", ghost)[1])
    assert waited < WAIT_S / 2 and [_reason(v) for _, v in out.dead_letters] == ["unknown_item"]
    loop.run_until_complete(pipeline.on_items([_item(ghost)]))
    waited, out = timed(_event(f"g3-{uuid.uuid4().hex[:6]}", ghost)[1])
    assert out.dead_letters == [] and len(_recs(out)) == 1


def _reason(value: bytes) -> str:
    return DeadLetter.model_validate_json(value).reason


def test_events_not_keyed_by_their_user_are_applied_and_counted(
    running: tuple[Pipeline, asyncio.AbstractEventLoop], caplog: pytest.LogCaptureFixture
) -> None:
    """The contract keys events by user_id; one keyed otherwise (or not at all) is applied, as
    one worker owns every partition it reads, but counted and said once: with several workers
    its user's profile could be written by two of them."""
    pipeline, loop = running
    pipeline._said_miskeyed = False  # said once per worker: this test's worker says it here

    def counted() -> float:
        return metrics.REGISTRY.get_sample_value("coldstream_events_miskeyed_total") or 0.0

    user = f"k-{uuid.uuid4().hex[:6]}"
    _, keyed = _event(user, "old-1")
    before = counted()
    loop.run_until_complete(pipeline.on_events([keyed]))
    assert counted() == before  # keyed by its user
    records = [
        dataclasses.replace(_event(user, "old-2")[1], key=None),
        dataclasses.replace(_event(user, "old-3")[1], key=b"session-9"),
    ]
    with caplog.at_level("WARNING", logger="streams.pipeline"):
        out = loop.run_until_complete(pipeline.on_events(records))
        loop.run_until_complete(
            pipeline.on_events([dataclasses.replace(_event(user, "old-4")[1], key=None)])
        )
    assert counted() == before + 3 and out.dead_letters == []
    assert [r.profile_events for r in _recs(out)] == [3]
    said = [r for r in caplog.records if "coldstream_events_miskeyed_total" in r.getMessage()]
    assert len(said) == 1  # once, not per batch


def test_a_batch_failing_after_its_early_part_went_out_retries_only_the_rest(
    running: tuple[Pipeline, asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part of a batch sent before the wait is final: when the wait then fails (no
    outage), only the held records are retried alone; before, every record was, and the
    early part's letters and lists went out (and were counted) twice (found by review)."""
    import functools

    from streams.agents import guarded

    pipeline, loop = running
    bad = Record("events", 0, inprocess.next_offset(), b"x", b"{not json", 1.7e9)
    _, listed = _event(f"e1-{uuid.uuid4().hex[:6]}", "old-1")
    _, held = _event(f"e2-{uuid.uuid4().hex[:6]}", f"never-{uuid.uuid4().hex[:6]}")
    real_wait = pipeline._wait_for_items
    fails = {"left": 1}

    async def wait_once_broken(item_ids: list[str], wait_s: float) -> None:
        if fails["left"]:
            fails["left"] -= 1
            raise RuntimeError("a bug in the wait (test)")
        await real_wait(item_ids, wait_s)

    monkeypatch.setattr(pipeline, "_wait_for_items", wait_once_broken)
    sent: list[Outputs] = []

    async def early(out: Outputs) -> None:
        sent.append(out)

    letters = metrics.REGISTRY.get_sample_value(
        "coldstream_dead_letters_total", {"topic": "events", "reason": "bad_json"}
    )
    handle = functools.partial(pipeline.on_events, early=early)
    out = loop.run_until_complete(guarded([bad, listed, held], handle, pipeline))
    every = [*sent, out]
    reasons = [_reason(v) for o in every for _, v in o.dead_letters]
    assert sorted(reasons) == ["bad_json", "unknown_item"]  # each once
    assert len([r for o in every for r in _recs(o)]) == 1  # the listed user, once
    assert (
        metrics.REGISTRY.get_sample_value(
            "coldstream_dead_letters_total", {"topic": "events", "reason": "bad_json"}
        )
        == (letters or 0.0) + 1
    )
