"""The engine's co-visitation channel over a real store: online counts, recall, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from infra.qdrant_store import QdrantStore
from infra.settings import Settings
from ranking.covisit import CovisitModel
from ranking.engine import BehaviorEngine, EngineConfig, Interaction
from ranking.profile import ProfileConfig
from ranking.scoring import BlendScorer
from ranking.store import StoredPoint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]
DIM = 8
T0 = 1_700_000_000.0


def _engine(
    store: QdrantStore, covisit: CovisitModel | None = None, **kw: object
) -> BehaviorEngine:
    s = Settings()
    cfg = EngineConfig(
        profile=ProfileConfig(weights=s.event_weights(), half_life_s=72 * 3600.0),
        **{"recs_count": 3, "recall_top_n": 2, "cold_item_slots": 0, "mmr_lambda": 1.0, **kw},  # type: ignore[arg-type]
    )
    store.ensure_collection(cfg.items_collection, DIM)
    store.ensure_collection(cfg.users_collection, DIM)
    store.ensure_collection(cfg.state_collection, 1)
    points = []
    for n in range(DIM):
        v = np.zeros(DIM, np.float32)
        v[n] = 1.0
        if n == DIM - 1:
            v = -np.eye(DIM, dtype=np.float32)[0]  # opposite to i0: content ranks it last
        points.append(StoredPoint(f"i{n}", v, {"title": f"T{n}", "category": "c", "active": True}))
    store.upsert(cfg.items_collection, points)
    return BehaviorEngine(store, cfg, BlendScorer(0.3), covisit=covisit)


_n = iter(range(10**6))


def ev(user: str, item: str, partition: int = 0) -> Interaction:
    n = next(_n)
    return Interaction(f"e{n}", user, "view", T0 + n, item_id=item, partition=partition, offset=n)


def _rated_zero(user: str, item: str) -> Interaction:
    n = next(_n)
    return Interaction(
        f"e{n}", user, "rate", T0 + n, item_id=item, rating=0.0, partition=0, offset=n
    )


def _run(engine: BehaviorEngine, events: list[Interaction]) -> dict[str, list[tuple[str, str]]]:
    out = engine.apply(engine.prepare(events), None)
    return {r.user_id: [(i.item_id, i.source) for i in r.items] for r in out.recommendations}


def test_online_pairs_feed_the_covisit_channel(store: QdrantStore) -> None:
    engine = _engine(store, popular_top_n=0)
    # other users watch i0 then i7 (opposite vectors: content alone would never find i7)
    _run(engine, [ev(f"crowd{k}", "i0") for k in range(3)])
    _run(engine, [ev(f"crowd{k}", "i7") for k in range(3)])
    assert engine.covisit[0].pairs["i0"]["i7"] == 3.0
    recs = _run(engine, [ev("newbie", "i0")])["newbie"]
    assert ("i7", "covisit") in recs
    assert all(src == "content" for item, src in recs if item != "i7")


def test_a_rating_of_zero_opens_no_covisitation_window_in_its_own_batch(
    store: QdrantStore,
) -> None:
    """A rating of 0 says "not this": its item is no recent interest (``apply_signal``), so
    the channel must not read it either, also in the batch that carries it (the channel is
    read before the batch is applied); a view of the item in the same batch afterwards does
    bring it back."""
    engine = _engine(store, popular_top_n=0)
    _run(engine, [ev(f"crowd{k}", "i0") for k in range(3)])
    _run(engine, [ev(f"crowd{k}", "i7") for k in range(3)])
    _run(engine, [ev("newbie", "i1")])
    rate0 = _rated_zero("newbie", "i0")
    recs = _run(engine, [rate0])["newbie"]
    assert ("i7", "covisit") not in recs
    # rated 0, then viewed in the same batch: the view opens the window again
    recs = _run(engine, [_rated_zero("other", "i0"), ev("other", "i0")])["other"]
    assert ("i7", "covisit") in recs


def test_snapshot_channel_and_persisted_online_state(store: QdrantStore) -> None:
    snapshot = CovisitModel.build([["i1", "i6"], ["i1", "i6"], ["i1", "i5"]], window=1, neighbors=5)
    engine = _engine(store, covisit=snapshot, popular_top_n=0)
    recs = _run(engine, [ev("u", "i1", partition=2)])["u"]
    assert ("i6", "covisit") in recs
    assert engine.persist_trending() == 1
    other = BehaviorEngine(store, engine.cfg, BlendScorer(0.3), covisit=snapshot)
    other.load_trending([2])
    assert other.covisit[2].counts == engine.covisit[2].counts
    assert set(other.trending) == {2}
    other.drop_trending([2])
    assert other.covisit == {} and other.trending == {}


def test_popular_channel_fetches_vectors_in_the_same_read(store: QdrantStore) -> None:
    snapshot = CovisitModel.build([["i4", "i3"]] * 5, window=1, neighbors=5)
    engine = _engine(store, covisit=snapshot, covisit_top_n=0, popular_top_n=2)
    prep = engine.prepare([ev("u", "i0")])
    assert {"i3", "i4"} <= set(prep.items)  # fetched with the event's own item
    out = engine.apply(prep, None)
    sources = {i.item_id: i.source for i in out.recommendations[0].items}
    assert sources.get("i3") == "trending" or sources.get("i4") == "trending"


@pytest.mark.parametrize(("setting", "expected"), [(0.0, 4.0), (1.0, 1.0), (2.5, 2.5)])
def test_the_online_pair_scale_setting_replaces_the_snapshots(
    store: QdrantStore, setting: float, expected: float
) -> None:
    """``COLDSTREAM_COVISIT_ONLINE_PAIR_SCALE``: 0 reads online pairs at the scale ``train``
    stored in the snapshot, any other value instead of it, also in a snapshot swapped in."""
    snapshot = CovisitModel.build([["i1", "i2"]], window=2, neighbors=5)
    engine = _engine(store, snapshot.with_online_pair_scale(4.0), covisit_online_pair_scale=setting)
    user = f"crowd-{setting}"
    _run(engine, [ev(user, "i0")])
    _run(engine, [ev(user, "i7")])  # one online pair: i0 → i7
    visits = engine.covisit_index().count("i0") * engine.covisit_index().count("i7")
    score = engine.covisit_index().scores(["i0"])["i7"]
    assert score == pytest.approx(expected / np.sqrt(visits))
    engine.swap_covisit(snapshot.with_online_pair_scale(4.0))
    assert engine.covisit_base is not None
    assert engine.covisit_base.online_pair_scale == expected


def test_online_counts_a_new_snapshot_counted_too_are_dropped_and_stay_dropped(
    store: QdrantStore,
) -> None:
    """A retraining cycle: ``train`` reads a log the worker has been counting. The counts of
    events up to the new snapshot's ``counted_until`` would count twice; they go, on a swap
    and when a partition's saved counts are loaded (another worker's, or after a restart)."""
    engine = _engine(store, popular_top_n=0)
    _run(engine, [ev("crowd", "i0", partition=0), ev("crowd", "i7", partition=0)])
    _run(engine, [ev("later", "i1", partition=1), ev("later", "i2", partition=1)])
    first_1 = engine.covisit[1].since_ts
    assert first_1 is not None and engine.covisit[0].pairs["i0"] == {"i7": 1.0}
    engine.persist_trending()
    # a snapshot counted up to just before partition 1's first event: partition 0's counts
    # are in it, partition 1's are not
    snapshot = CovisitModel.build([["i0", "i7"]], window=1, neighbors=5, counted_until=first_1 - 1)
    engine.swap_covisit(snapshot)
    assert engine.covisit[0].empty and engine.covisit[0].since_ts is None
    assert engine.covisit[1].pairs["i1"] == {"i2": 1.0}
    assert engine.covisit_index().count("i0") == 1.0  # the snapshot's visit, counted once
    assert engine.persist_trending() == 1  # the emptied counts are saved
    other = BehaviorEngine(store, engine.cfg, BlendScorer(0.3), covisit=snapshot)
    other.load_trending([0, 1])
    assert other.covisit[0].empty and other.covisit[1].pairs["i1"] == {"i2": 1.0}
    # counts another worker saved under the old snapshot, of events the new one counted, are
    # dropped when a worker serving the new one loads them
    stale = BehaviorEngine(store, engine.cfg, BlendScorer(0.3))
    early = [
        Interaction(f"old{n}", "crowd2", "view", T0 - 100 + n, item_id=i, partition=2, offset=n)
        for n, i in enumerate(["i0", "i7"])
    ]
    _run(stale, early)
    stale.persist_trending()
    stale.swap_covisit(None)  # no snapshot: nothing to compare with, nothing dropped
    assert not stale.covisit[2].empty
    other.load_trending([2])
    assert other.covisit[2].empty
    # and a later snapshot takes the rest
    newer = CovisitModel.build([["i0", "i7"]], window=1, neighbors=5, counted_until=T0 + 10**7)
    other.swap_covisit(newer)
    assert all(c.empty for c in other.covisit.values())


def test_while_a_dated_snapshot_serves_events_it_counted_are_not_counted_online(
    store: QdrantStore,
) -> None:
    """A backlog behind the log's export (or a replay of old events) is in the snapshot: counted
    online too, it would count twice, and date the counter before the snapshot."""
    snapshot = CovisitModel.build([["i0", "i7"]], window=1, neighbors=5, counted_until=T0 + 10**6)
    engine = _engine(store, snapshot, popular_top_n=0)
    _run(engine, [ev("old", "i0", partition=0), ev("old", "i7", partition=0)])
    assert engine.covisit.get(0) is None or engine.covisit[0].empty
    late = T0 + 10**6 + 1
    after = [
        Interaction(f"n{k}", "new", "view", late + k, item_id=i, partition=0, offset=10**6 + k)
        for k, i in enumerate(["i1", "i2"])
    ]
    _run(engine, after)
    assert engine.covisit[0].pairs["i1"] == {"i2": 1.0} and engine.covisit[0].since_ts == late
