"""A batch that outlives its partition's revocation writes nothing for it (streams.pipeline)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest

from infra.settings import Settings
from ranking.engine import BatchOutcome, Interaction, Prepared, Rejected
from streams.pipeline import Pipeline, only_partitions

pytestmark = pytest.mark.unit


def _inter(n: int, partition: int | None, text: str | None = None) -> Interaction:
    return Interaction(
        event_id=f"e{n}",
        user_id=f"u{n}",
        type="search" if text else "view",
        ts=float(n),
        item_id=None if text else "i1",
        text=text,
        partition=partition,
        offset=n,
    )


def _prepared(events: list[Interaction]) -> Prepared:
    return Prepared(
        to_apply=events,
        rejected=[],
        skipped=[],
        profiles={},
        items={},
        texts=[(e.type, t) for e in events if (t := e.signal_text) is not None],
    )


def test_only_partitions_keeps_owned_events_with_their_own_text_vectors() -> None:
    events = [
        _inter(0, 0, "a"),
        _inter(1, 1, "b"),
        _inter(2, 1),
        _inter(3, 0, "c"),
        _inter(4, None, "d"),
    ]
    prep = _prepared(events)
    prep.rejected.append(Rejected(_inter(5, 1), "unknown_item", "x"))
    prep.skipped.append(_inter(6, 1))
    vectors = np.arange(4, dtype=np.float32).reshape(4, 1)  # one row per text: a, b, c, d

    kept, kept_vectors, dropped = only_partitions(prep, vectors, frozenset({0}))

    assert dropped == 2
    assert [e.event_id for e in kept.to_apply] == ["e0", "e3", "e4"]
    assert kept.texts == [("search", "a"), ("search", "c"), ("search", "d")]
    assert kept_vectors is not None and kept_vectors[:, 0].tolist() == [0.0, 2.0, 3.0]
    assert kept.rejected == [] and kept.skipped == []
    same = only_partitions(prep, vectors, frozenset({0, 1}))
    assert same[0] is prep and same[2] == 0
    none_left = only_partitions(prep, vectors, frozenset())
    assert [e.event_id for e in none_left[0].to_apply] == ["e4"]


class _Engine:
    def __init__(self, events: list[Interaction]) -> None:
        self.events = events
        self.applied: list[str] = []
        self.scorer = type("S", (), {"version": "test"})()

    def prepare(self, interactions: Sequence[Interaction]) -> Prepared:
        return _prepared(self.events)

    def apply(self, prep: Prepared, vectors: np.ndarray | None) -> BatchOutcome:
        self.applied += [e.event_id for e in prep.to_apply]
        return BatchOutcome([], prep.rejected, prep.skipped, len(prep.to_apply))

    def load_trending(self, partitions: Sequence[int]) -> None: ...
    def persist_trending(self) -> int:
        return 0

    def drop_trending(self, partitions: Sequence[int]) -> None: ...


class _Batcher:
    """Encodes only once ``release`` is set: the batch is in flight meanwhile."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        await self.release.wait()
        return np.ones((len(texts), 2), dtype=np.float32)


class _Store:
    def ensure_collection(self, *args: Any) -> None: ...
    def close(self) -> None: ...


def test_a_batch_in_flight_when_its_partition_is_revoked_leaves_it_to_the_new_owner() -> None:
    events = [_inter(0, 0, "a"), _inter(1, 1, "b"), _inter(2, 0)]
    engine, batcher = _Engine(events), _Batcher()
    pipeline = Pipeline(
        Settings(),
        cast(Any, _Store()),
        cast(Any, batcher),
        cast(Any, engine),
        encoder_name="test",
        encoder_dim=2,
    )

    async def main() -> None:
        await pipeline.on_partitions_assigned([0, 1])
        batch = asyncio.create_task(pipeline._process([_inter(0, 0)]))
        await batcher.entered.wait()  # profiles read, texts encoding: the batch is in flight
        await pipeline.on_partitions_revoked([0])  # the rebalance moves partition 0 away
        batcher.release.set()
        outcome = await batch
        assert outcome.applied == 1
        await pipeline.on_partitions_assigned([1])

    asyncio.run(main())
    pipeline._store_thread.shutdown(wait=True)
    assert engine.applied == ["e1"]


def test_a_pipeline_outside_a_consumer_group_applies_every_partition() -> None:
    events = [_inter(0, 0), _inter(1, 3)]
    engine = _Engine(events)
    pipeline = Pipeline(
        Settings(),
        cast(Any, _Store()),
        cast(Any, _Batcher()),
        cast(Any, engine),
        encoder_name="test",
        encoder_dim=2,
    )
    asyncio.run(pipeline._process(events))
    pipeline._store_thread.shutdown(wait=True)
    assert engine.applied == ["e0", "e1"]
