"""An update of a known item: a new version of its text and payload, not a new item.

The items agent's batch code (``Pipeline.on_items``) over a real Qdrant Edge store and the real
encoder.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from streams.pipeline import Pipeline, Record
from tests.integration import inprocess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    root: Path = tmp_path_factory.mktemp("item-updates")
    with inprocess.drama_pipeline(Settings(data_dir=root / "data"), ["old-1"]) as running:
        yield running


def _item(item_id: str, arrival: float, **fields: Any) -> Record:
    value = {"item_id": item_id, "title": f"Film {item_id}", "category": "drama", **fields}
    return Record(
        "items", 0, inprocess.next_offset(), item_id.encode(), json.dumps(value).encode(), arrival
    )


def _stored(pipeline: Pipeline, item_id: str) -> dict[str, Any]:
    name = pipeline.settings.items_collection
    return dict(pipeline.store.retrieve(name, [item_id], with_vectors=False)[item_id].payload)


def test_an_update_keeps_the_first_publication_time(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """Before, every update re-stamped ``created_at`` with its own time: a price change made an
    item of any age "new" for ``cold_item_max_age_hours`` (new-item slots, the new-item query,
    the ranker's age feature). Found by review."""
    pipeline, loop = running
    first = 1.0e9  # published long ago (the record's time: the event has no ts)
    loop.run_until_complete(pipeline.on_items([_item("film-u", first)]))
    assert _stored(pipeline, "film-u")["created_at"] == first
    now = time.time()
    update = _item("film-u", now, price=9.5, description="now with a director's cut")
    stamped = _item("film-v", now, ts=int(now * 1000))  # a new item, in the same batch
    loop.run_until_complete(pipeline.on_items([update, stamped]))
    payload = _stored(pipeline, "film-u")
    assert payload["price"] == 9.5  # the update itself is applied
    assert payload["created_at"] == first
    assert _stored(pipeline, "film-v")["created_at"] == pytest.approx(now, abs=0.01)
    # a retired item published again is the same item, not a new one
    loop.run_until_complete(pipeline.on_items([_item("film-u", now, active=False)]))
    loop.run_until_complete(pipeline.on_items([_item("film-u", time.time())]))
    payload = _stored(pipeline, "film-u")
    assert (payload["active"], payload["created_at"]) == (True, first)


def test_the_earliest_publication_time_wins_and_a_release_date_ahead_counts_from_now(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    arrival = time.time()
    loop.run_until_complete(pipeline.on_items([_item("film-w", arrival)]))  # no ts: arrival
    assert _stored(pipeline, "film-w")["created_at"] == pytest.approx(arrival)
    # a resync carrying the true, earlier publication time corrects it
    loop.run_until_complete(pipeline.on_items([_item("film-w", time.time(), ts=1_600_000_000_000)]))
    assert _stored(pipeline, "film-w")["created_at"] == pytest.approx(1_600_000_000.0)
    # a pre-order announced with its release date three days ahead: new from its arrival
    ahead = int((time.time() + 3 * 86_400) * 1000)
    before = time.time()
    loop.run_until_complete(pipeline.on_items([_item("film-x", before, ts=ahead)]))
    assert before <= _stored(pipeline, "film-x")["created_at"] <= time.time()


def test_versions_in_one_batch_end_as_they_would_one_by_one(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """Before, only a batch's last version of an item counted: its publication time alone (an
    update without ts re-stamped an item as new), and a listing retired in the same batch was
    never stored (its retirement counted as naming an unknown item). Found by review."""
    pipeline, loop = running
    now = time.time()
    loop.run_until_complete(
        pipeline.on_items(
            [_item("film-y", now, ts=1_600_000_000_000), _item("film-y", now, price=3.0)]
        )
    )
    payload = _stored(pipeline, "film-y")
    assert payload["created_at"] == pytest.approx(1_600_000_000.0)
    assert payload["price"] == 3.0
    loop.run_until_complete(
        pipeline.on_items([_item("film-z", now, price=7.0), _item("film-z", now, active=False)])
    )
    payload = _stored(pipeline, "film-z")
    assert (payload["active"], payload["price"]) == (False, 7.0)  # its listing, retired
    # retired, then listed again, in one batch: listed
    loop.run_until_complete(
        pipeline.on_items([_item("film-z", now, active=False), _item("film-z", now, price=8.0)])
    )
    payload = _stored(pipeline, "film-z")
    assert (payload["active"], payload["price"]) == (True, 8.0)


def test_a_producer_clock_ahead_does_not_make_an_item_new_for_longer(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    ahead = time.time() + 30 * 86_400  # the record's timestamp, from a skewed producer
    loop.run_until_complete(pipeline.on_items([_item("film-f", ahead)]))
    assert _stored(pipeline, "film-f")["created_at"] <= time.time()
