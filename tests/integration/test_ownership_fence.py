"""A batch that outlives its partitions does not put older profiles back over the new owner's.

Two engines on one real store play the old and the new owner of a partition: the old one reads
a user's profile, the partition moves (the worker's rebalance count moves), the new owner
applies the same events and more from the last commit, and only then does the old batch get
to its write (``BehaviorEngine._moved_away``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from infra.qdrant_store import QdrantStore
from infra.settings import Settings
from ranking.engine import BehaviorEngine, EngineConfig, Interaction
from ranking.profile import ProfileConfig
from ranking.scoring import BlendScorer
from ranking.store import StoredPoint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]
DIM = 4
T0 = 1_700_000_000.0


def _engine(store: QdrantStore) -> BehaviorEngine:
    s = Settings()
    cfg = EngineConfig(
        profile=ProfileConfig(weights=s.event_weights(), half_life_s=72 * 3600.0),
        recs_count=2,
        cold_item_slots=0,
    )
    for name, dim in ((cfg.items_collection, DIM), (cfg.users_collection, DIM)):
        store.ensure_collection(name, dim)
    store.ensure_collection(cfg.state_collection, 1)
    store.upsert(
        cfg.items_collection,
        [
            StoredPoint(f"i{n}", np.eye(DIM, dtype=np.float32)[n], {"title": f"T{n}"})
            for n in range(DIM)
        ],
    )
    return BehaviorEngine(store, cfg, BlendScorer(0.3))


def ev(user: str, offset: int, item: str) -> Interaction:
    return Interaction(
        f"e{offset}", user, "view", T0 + offset, item_id=item, partition=0, offset=offset
    )


def _stored_count(store: QdrantStore, engine: BehaviorEngine, user: str) -> int:
    point = store.retrieve(engine.cfg.users_collection, [user], with_vectors=False)[user]
    return int(point.payload["event_count"])


@pytest.mark.parametrize("rebalanced", [True, False])
def test_a_batch_whose_user_moved_leaves_the_new_owners_profile(
    store: QdrantStore, rebalanced: bool
) -> None:
    old, new = _engine(store), _engine(store)
    rebalances = 0
    old.ownership = lambda: rebalances
    old.apply(old.prepare([ev("u", 0, "i0"), ev("v", 1, "i0")]), None)  # committed up to here

    batch = [ev("u", 2, "i1"), ev("u", 3, "i2"), ev("v", 4, "i1")]
    prep = old.prepare(batch)  # the old owner reads, then stalls (an encoder, a store outage)
    rebalances += rebalanced  # ... the partition moves: the new owner starts from the commit
    # ... and applies u's events and a later one; it has not reached v's yet
    got = new.apply(new.prepare([ev("u", 2, "i1"), ev("u", 3, "i2"), ev("u", 5, "i3")]), None)
    assert got.applied == 3 and _stored_count(store, new, "u") == 4

    late = old.apply(prep, None)
    if rebalanced:
        # u is left to the new owner; v, which no one else wrote, is written as before
        assert [(s.interaction.offset, s.reason) for s in late.skipped] == [
            (2, "owner_changed"),
            (3, "owner_changed"),
        ]
        assert late.applied == 1
        assert [r.user_id for r in late.recommendations] == ["v"]
        assert _stored_count(store, new, "u") == 4
    else:
        # the race this guards against: without a rebalance seen, the old batch writes over
        assert late.applied == 3 and late.skipped == []
        assert _stored_count(store, new, "u") == 3
    assert _stored_count(store, new, "v") == 2


def test_no_read_again_while_the_ownership_count_stands(store: QdrantStore) -> None:
    engine = _engine(store)
    reads: list[list[str]] = []
    retrieve = store.retrieve

    def counting(collection: str, ids: list[str], *, with_vectors: bool = True):  # type: ignore[no-untyped-def]
        if collection == engine.cfg.users_collection:
            reads.append(list(ids))
        return retrieve(collection, ids, with_vectors=with_vectors)

    store.retrieve = counting  # type: ignore[method-assign]
    engine.apply(engine.prepare([ev("u", 0, "i0")]), None)
    assert reads == [["u"]]  # the batch's own read only


def test_a_retried_batch_still_compares_with_the_count_at_its_start(store: QdrantStore) -> None:
    """A store outage or an unknown-item wait makes a batch prepare again after the count
    moved; that retry must still read the profiles again before its write (found by review:
    each prepare took the count anew, so a retry prepared after the move never checked)."""
    old, new = _engine(store), _engine(store)
    rebalances = 0
    old.ownership = lambda: rebalances
    old.begin_batch()
    old.apply(old.prepare([ev("u", 0, "i0")]), None)
    old.begin_batch()
    batch = [ev("u", 1, "i1"), ev("u", 2, "i2")]
    old.prepare(batch)  # the first attempt; its write then fails (say, a store outage)
    rebalances += 1
    retry = old.prepare(batch)  # the retry reads before the new owner writes
    new.apply(new.prepare([*batch, ev("u", 3, "i3")]), None)
    late = old.apply(retry, None)
    assert [s.reason for s in late.skipped] == ["owner_changed", "owner_changed"]
    assert late.applied == 0 and _stored_count(store, new, "u") == 4


def test_a_write_from_another_partition_is_not_a_move(store: QdrantStore) -> None:
    """Events of one user keyed otherwise reach two workers (counted as miskeyed): the other
    worker's write of its partition's events says nothing about this batch's partition."""
    old, other = _engine(store), _engine(store)
    rebalances = 0
    old.ownership = lambda: rebalances
    prep = old.prepare([ev("u", 0, "i0"), ev("u", 1, "i1")])
    rebalances += 1
    away = Interaction("x9", "u", "view", T0 + 9, item_id="i2", partition=5, offset=9)
    other.apply(other.prepare([away]), None)
    late = old.apply(prep, None)
    assert late.applied == 2 and late.skipped == []


@pytest.mark.parametrize("landed", [False, True])
def test_a_retry_after_its_own_write_failed_or_landed_is_no_move(
    store: QdrantStore, landed: bool
) -> None:
    """A batch whose profile write raised (a store outage; or landed, then raised, a client's
    timeout) is retried after a rebalance this worker came through with its partitions: the
    retry finds the stored profile as first read, or as its own write left it, and applies
    (found by review: the write's own mark was taken for the first read, so a write that
    failed read as another worker's, and the events were skipped and acked, lost)."""
    engine = _engine(store)
    rebalances = 0
    engine.ownership = lambda: rebalances
    engine.begin_batch()
    engine.apply(engine.prepare([ev("u", 0, "i0")]), None)
    engine.begin_batch()
    batch = [ev("u", 1, "i1"), ev("u", 2, "i2"), ev("v", 3, "i1")]  # v: no profile yet
    prep = engine.prepare(batch)
    upsert = store.upsert

    def failing(collection: str, points: Any) -> None:
        if landed:
            upsert(collection, points)
        raise ConnectionError("store down")

    store.upsert = failing  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        engine.apply(prep, None)
    store.upsert = upsert  # type: ignore[method-assign]
    rebalances += 1
    retry = engine.apply(engine.prepare(batch), None)
    assert [s.reason for s in retry.skipped if s.reason == "owner_changed"] == []
    assert retry.applied == 3
    assert _stored_count(store, engine, "u") == 3 and _stored_count(store, engine, "v") == 1
