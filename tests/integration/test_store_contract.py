"""One contract for every VectorStore: qdrant-client local mode and Qdrant Edge must agree."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from infra.edge_store import EdgeStore, point_u64
from infra.qdrant_store import QdrantStore, point_uuid
from ranking.store import Hit, Query, StoredPoint, StoreUnavailable, VectorStore

pytestmark = pytest.mark.integration

DIM = 8
Opener = Callable[[Path], VectorStore]
OPENERS: dict[str, Opener] = {
    "qdrant-local": lambda path: QdrantStore(path=path),
    "edge": lambda path: EdgeStore(path),
    # what Edge holds on disk: its point cache answers most reads, and must not differ
    "edge-uncached": lambda path: EdgeStore(path, cache_size=0),
}


@pytest.fixture(params=sorted(OPENERS))
def opener(request: pytest.FixtureRequest) -> Opener:
    return OPENERS[request.param]


@pytest.fixture
def store(opener: Opener, tmp_path: Path) -> Iterator[VectorStore]:
    s = opener(tmp_path / "store")
    s.ensure_collection("items", DIM)
    yield s
    s.close()


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _items(n: int = 20) -> list[StoredPoint]:
    return [
        StoredPoint(
            f"item-{i}",
            _unit(i),
            {"active": i % 4 != 0, "created_at": float(1000 + i), "category": f"c{i % 3}"},
        )
        for i in range(n)
    ]


def test_upsert_retrieve_round_trip(store: VectorStore) -> None:
    store.upsert("items", _items())
    got = store.retrieve("items", ["item-3", "item-7", "missing", "item-3"])
    assert set(got) == {"item-3", "item-7"}
    p = got["item-3"]
    assert p.id == "item-3"
    assert p.payload == {"active": True, "created_at": 1003.0, "category": "c0"}
    assert p.vector is not None
    np.testing.assert_allclose(p.vector, _unit(3), atol=1e-5)
    assert store.retrieve("items", ["item-3"], with_vectors=False)["item-3"].vector is None


def test_upsert_overwrites_and_count(store: VectorStore) -> None:
    store.upsert("items", _items())
    assert store.count("items") == 20
    store.upsert("items", [StoredPoint("item-1", _unit(99), {"active": False})])
    assert store.count("items") == 20
    assert store.retrieve("items", ["item-1"])["item-1"].payload == {"active": False}


def test_point_without_vector(store: VectorStore) -> None:
    store.ensure_collection("state", 1)
    store.upsert("state", [StoredPoint("trending/0", None, {"counts": {"a": 1.5}})])
    got = store.retrieve("state", ["trending/0"], with_vectors=False)
    assert got["trending/0"].payload == {"counts": {"a": 1.5}}


def test_reopen_from_disk(opener: Opener, tmp_path: Path) -> None:
    first = opener(tmp_path / "store")
    first.ensure_collection("items", DIM)
    first.upsert("items", _items())
    first.close()
    again = opener(tmp_path / "store")
    try:
        again.ensure_collection("items", DIM)
        assert again.count("items") == 20
        assert again.retrieve("items", ["item-5"])["item-5"].payload["category"] == "c2"
        hits = again.search("items", [Query(_unit(5), limit=1)])[0]
        assert [h.id for h in hits] == ["item-5"]
    finally:
        again.close()


def test_search_nearest_first_and_with_vectors(store: VectorStore) -> None:
    store.upsert("items", _items())
    plain, with_vec = store.search(
        "items", [Query(_unit(6), limit=5), Query(_unit(6), limit=5, with_vectors=True)]
    )
    assert plain[0].id == "item-6"
    assert plain[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in plain] == sorted((h.score for h in plain), reverse=True)
    assert plain[0].vector is None
    assert "_id" not in plain[0].payload
    assert with_vec[0].vector is not None
    np.testing.assert_allclose(with_vec[0].vector, _unit(6), atol=1e-5)


def test_exclude_ids_never_returned(store: VectorStore) -> None:
    store.upsert("items", _items())
    excluded = [f"item-{i}" for i in range(0, 20, 2)] + ["never-stored"]
    (hits,) = store.search("items", [Query(_unit(2), limit=20, exclude_ids=excluded)])
    assert {h.id for h in hits} == {f"item-{i}" for i in range(1, 20, 2)}


def test_queries_of_one_call_are_answered_each_as_if_alone(store: VectorStore) -> None:
    """The engine sends a batch's recall and new-item queries in one call (one GIL-holding
    wait of the embedded store, not two): limits, filters and exclusions stay per query."""
    store.upsert("items", _items())
    near_many = [f"item-{i}" for i in range(9)]  # past any over-fetch slack: asked again
    queries = [
        Query(_unit(3), limit=5, exclude_ids=["item-3", "item-5"], where={"active": True}),
        Query(_unit(3), limit=3, where={"active": True}, created_after=1012.0, with_vectors=True),
        Query(_unit(4), limit=2, exclude_ids=near_many),
        Query(_unit(8), limit=20, payload_fields=["category"]),
    ]

    def seen(hits: list[Hit]) -> list[tuple[str, float, dict[str, object], bool]]:
        return [(h.id, round(h.score, 5), dict(h.payload), h.vector is not None) for h in hits]

    together = store.search("items", queries)
    alone = [store.search("items", [q])[0] for q in queries]
    assert [seen(h) for h in together] == [seen(h) for h in alone]
    assert [len(h) for h in together] == [5, 3, 2, 20]
    assert all(h.id not in near_many for h in together[2])


def test_exclusions_still_give_the_next_nearest_up_to_the_limit(store: VectorStore) -> None:
    """Excluded points never take a place: the next nearest fill ``limit`` (with any filter)."""
    points = _items()
    store.upsert("items", points)
    query = _unit(7)
    active = [p for p in points if p.payload["active"]]
    order = sorted(active, key=lambda p: -float(np.dot(p.vector, query)))  # type: ignore[arg-type]
    nearest = [p.id for p in order]
    excluded = nearest[:3]
    (hits,) = store.search(
        "items", [Query(query, limit=4, exclude_ids=excluded, where={"active": True})]
    )
    assert [h.id for h in hits] == nearest[3:7]
    # a long exclusion list goes to the engine as a filter in the Edge store: same contract
    many = nearest[:3] + [f"absent-{i}" for i in range(100)]
    (hits,) = store.search(
        "items", [Query(query, limit=4, exclude_ids=many, where={"active": True})]
    )
    assert [h.id for h in hits] == nearest[3:7]


@pytest.mark.parametrize("slack", [0, 1, 2, 64])
def test_edge_capped_over_fetch_asks_short_queries_again(tmp_path: Path, slack: int) -> None:
    """The Edge store over-fetches at most ``exclude_slack`` hits for excluded ids; a query
    whose excluded ids hold more of its nearest is asked again in full, so every query of a
    batch still gets the next nearest up to its limit."""
    s = EdgeStore(tmp_path / "store", exclude_slack=slack)
    try:
        s.ensure_collection("items", DIM)
        points = _items()
        s.upsert("items", points)
        queries, expected = [], []
        for seed, n_excluded in [(7, 3), (8, 0), (9, 1), (10, 6), (11, 2)]:
            query = _unit(seed)
            order = sorted(points, key=lambda p: -float(np.dot(p.vector, query)))  # type: ignore[arg-type]
            nearest = [p.id for p in order]
            # nearest excluded ones, plus far ones and unknown ids that cost no place
            excluded = nearest[:n_excluded] + nearest[-2:] + ["never-stored"]
            queries.append(Query(query, limit=4, exclude_ids=excluded))
            expected.append(nearest[n_excluded : n_excluded + 4])
        got = s.search("items", queries)
        assert [[h.id for h in hits] for hits in got] == expected
    finally:
        s.close()


def test_tied_hits_are_cut_in_a_fixed_order(opener: Opener, tmp_path: Path) -> None:
    """Items with the same vector tie exactly; which of them makes a query's cut does not
    depend on the order they were written in (nor on the run)."""
    cuts: list[list[str]] = []
    for run, reverse in enumerate((False, True)):
        s = opener(tmp_path / f"store-{run}")
        try:
            s.ensure_collection("items", DIM)
            query = _unit(3)
            for g in range(6):
                # pairs of twins, each pair further from the query
                side = _unit(100 + g) - float(np.dot(_unit(100 + g), query)) * query
                side /= np.linalg.norm(side)
                angle = 0.2 * (g + 1)  # radians from the query: cosine 0.98, 0.92, …
                vector = (np.cos(angle) * query + np.sin(angle) * side).astype(np.float32)
                pair = [f"g{g}-a", f"g{g}-b"]
                # half the pairs written one way round, half the other; the second store
                # gets every pair the other way round
                written = pair[::-1] if (g % 2 == 1) != reverse else pair
                s.upsert("items", [StoredPoint(i, vector, {"active": True}) for i in written])
            for g in range(6):
                # the cut falls between group g's twins: both of each group before it, one of it
                (hits,) = s.search("items", [Query(query, limit=2 * g + 1)])
                got = [h.id for h in hits]
                before = {f"g{n}-{t}" for n in range(g) for t in "ab"}
                assert set(got[:-1]) == before and got[-1].startswith(f"g{g}-"), (g, got)
                cuts.append(got[-1:])
        finally:
            s.close()
    assert cuts[:6] == cuts[6:], "the twin that made the cut depended on the write order"


def test_where_active_filter(store: VectorStore) -> None:
    store.upsert("items", _items())
    (active,) = store.search("items", [Query(_unit(0), limit=20, where={"active": True})])
    assert {h.id for h in active} == {f"item-{i}" for i in range(20) if i % 4 != 0}
    (retired,) = store.search("items", [Query(_unit(0), limit=20, where={"active": False})])
    assert {h.id for h in retired} == {f"item-{i}" for i in range(0, 20, 4)}
    (cat,) = store.search("items", [Query(_unit(0), limit=20, where={"category": "c1"})])
    assert {h.id for h in cat} == {f"item-{i}" for i in range(20) if i % 3 == 1}


def test_created_after_filter(store: VectorStore) -> None:
    store.upsert("items", _items())
    (hits,) = store.search("items", [Query(_unit(0), limit=20, created_after=1015.0)])
    assert {h.id for h in hits} == {f"item-{i}" for i in range(16, 20)}


def test_set_payload_merges(store: VectorStore) -> None:
    store.upsert("items", _items())
    store.set_payload("items", ["item-1", "item-2"], {"active": False, "note": "retired"})
    got = store.retrieve("items", ["item-1", "item-2", "item-3"], with_vectors=False)
    assert got["item-1"].payload == {
        "active": False,
        "created_at": 1001.0,
        "category": "c1",
        "note": "retired",
    }
    assert got["item-3"].payload["active"] is True
    (hits,) = store.search("items", [Query(_unit(1), limit=20, where={"active": True})])
    assert "item-1" not in {h.id for h in hits}


def test_ensure_collection_dim_mismatch(opener: Opener, tmp_path: Path) -> None:
    s = opener(tmp_path / "store")
    try:
        s.ensure_collection("items", DIM)
        s.ensure_collection("items", DIM)  # idempotent
        with pytest.raises(ValueError, match="dimension"):
            s.ensure_collection("items", DIM + 1)
    finally:
        s.close()
    again = opener(tmp_path / "store")
    try:
        with pytest.raises(ValueError, match="dimension"):
            again.ensure_collection("items", DIM * 2)
    finally:
        again.close()


def test_empty_calls_are_no_ops(store: VectorStore) -> None:
    store.upsert("items", [])
    store.set_payload("items", [], {"active": False})
    assert store.retrieve("items", []) == {}
    assert store.search("items", []) == []
    assert store.count("items") == 0


def test_edge_directory_held_by_one_store(tmp_path: Path) -> None:
    from ranking.store import StoreUnavailable

    first = EdgeStore(tmp_path / "store")
    first.ensure_collection("items", DIM)
    second = EdgeStore(tmp_path / "store")
    try:
        # an outage (waited for: in a rolling restart the old process lets go), which says why
        with pytest.raises(StoreUnavailable, match=r"held by another process.*Qdrant server"):
            second.ensure_collection("items", DIM)
    finally:
        second.close()
        first.close()


def test_edge_optimize_keeps_results(tmp_path: Path) -> None:
    s = EdgeStore(tmp_path / "store")
    try:
        s.ensure_collection("items", DIM)
        s.upsert("items", _items())
        before = s.search("items", [Query(_unit(4), limit=5, where={"active": True})])
        s.optimize()
        after = s.search("items", [Query(_unit(4), limit=5, where={"active": True})])
        assert [h.id for h in after[0]] == [h.id for h in before[0]]
        assert s.count("items") == 20
    finally:
        s.close()


def test_payload_fields_limit_what_comes_back(store: VectorStore) -> None:
    points = _items()
    for p in points:
        p.payload["tags"] = ["a", "b"]
    store.upsert("items", points)
    (hits,) = store.search(
        "items", [Query(_unit(1), limit=5, payload_fields=("category",), with_vectors=True)]
    )
    assert hits[0].id == "item-1"
    assert all(set(h.payload) == {"category"} for h in hits)
    assert all(h.vector is not None for h in hits)
    (full,) = store.search("items", [Query(_unit(1), limit=1)])
    assert full[0].payload["tags"] == ["a", "b"]


def test_edge_new_shards_use_integer_point_ids(tmp_path: Path) -> None:
    s = EdgeStore(tmp_path / "store")
    try:
        s.ensure_collection("items", DIM)
        s.upsert("items", _items())
    finally:
        s.close()
    marker = json.loads((tmp_path / "store" / "items" / "coldstream_ids.json").read_text())
    assert marker == {"point_ids": "u64"}
    shard = qe.EdgeShard.load(str(tmp_path / "store" / "items"), None)
    try:
        (record,) = shard.retrieve([point_u64("item-3")], True, False)
        assert record.payload["_id"] == "item-3"
    finally:
        shard.close()


def test_edge_shard_with_uuid_point_ids_keeps_working(tmp_path: Path) -> None:
    """A shard written before integer ids (UUIDs, no marker file) is read and written as is."""
    path = tmp_path / "store" / "items"
    path.parent.mkdir()
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine))
    shard = qe.EdgeShard.create(str(path), config)
    shard.update(
        qe.UpdateOperation.upsert_points(
            [
                qe.Point(point_uuid(p.id), p.vector.tolist(), {**p.payload, "_id": p.id})  # type: ignore[union-attr]
                for p in _items()
            ]
        )
    )
    shard.close()
    s = EdgeStore(tmp_path / "store")
    try:
        s.ensure_collection("items", DIM)
        assert s.retrieve("items", ["item-5"])["item-5"].payload["category"] == "c2"
        (hits,) = s.search("items", [Query(_unit(5), limit=3)])
        assert hits[0].id == "item-5"
        excluded = ["item-5"] + [f"absent-{i}" for i in range(100)]  # long: an engine filter
        (hits,) = s.search("items", [Query(_unit(5), limit=3, exclude_ids=excluded)])
        assert "item-5" not in {h.id for h in hits} and len(hits) == 3
        s.set_payload("items", ["item-5"], {"active": False})
        s.upsert("items", [StoredPoint("item-new", _unit(99), {"active": True})])
        assert s.count("items") == 21
    finally:
        s.close()
    marker = json.loads((path / "coldstream_ids.json").read_text())
    assert marker == {"point_ids": "uuid5"}  # learned from the points, then written down
    again = EdgeStore(tmp_path / "store")
    try:
        again.ensure_collection("items", DIM)
        got = again.retrieve("items", ["item-5", "item-new"])
        assert got["item-5"].payload["active"] is False and "item-new" in got
    finally:
        again.close()


def test_edge_shard_that_lost_its_marker_is_read_by_its_points(tmp_path: Path) -> None:
    s = EdgeStore(tmp_path / "store")
    s.ensure_collection("items", DIM)
    s.upsert("items", _items())
    s.close()
    marker = tmp_path / "store" / "items" / "coldstream_ids.json"
    marker.unlink()
    again = EdgeStore(tmp_path / "store")
    try:
        again.ensure_collection("items", DIM)
        assert again.retrieve("items", ["item-5"])["item-5"].payload["category"] == "c2"
    finally:
        again.close()
    assert json.loads(marker.read_text()) == {"point_ids": "u64"}


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"point_ids": "v9"}', "unknown point-id scheme 'v9'"), ("{", "unreadable point-id marker")],
)
def test_edge_bad_point_id_marker_is_refused(tmp_path: Path, content: str, message: str) -> None:
    s = EdgeStore(tmp_path / "store")
    s.ensure_collection("items", DIM)
    s.upsert("items", _items())
    s.close()
    marker = tmp_path / "store" / "items" / "coldstream_ids.json"
    marker.write_text(content)
    again = EdgeStore(tmp_path / "store")
    try:
        with pytest.raises(ValueError, match=message):
            again.ensure_collection("items", DIM)
        marker.write_text('{"point_ids": "u64"}')  # the refusal left the shard unlocked
        again.ensure_collection("items", DIM)
        assert again.count("items") == 20
    finally:
        again.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_vectors_are_refused(store: VectorStore, bad: float) -> None:
    """Edge stored a NaN vector as all NaN, never found by a search again (and a NaN profile
    would have lost its content recall for good); qdrant-client refused it. Both refuse it."""
    vector = _unit(1)
    vector[2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        store.upsert("items", [StoredPoint("broken", vector, {"active": True})])
    assert store.retrieve("items", ["broken"]) == {}
    store.upsert("items", _items(4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        store.search("items", [Query(vector, limit=2)])


def test_what_a_caller_changes_after_a_write_or_a_read_is_not_stored(store: VectorStore) -> None:
    """The store keeps its own copies: a caller that goes on changing the list, dict or array
    it wrote (a counter decaying its scores in place) changes nothing stored; Edge's cache once
    held the caller's objects. A vector handed back is the caller's to change, or read-only
    (Edge's, shared with its cache). Nested values of a payload handed back are shared with
    Edge's cache and must not be changed (``ranking.store.VectorStore``): copying them on every
    read would cost the hot path more than any caller needs."""
    vector = _unit(5)
    payload = {"active": True, "tags": ["a"], "scores": {"x": 1.0}}
    store.upsert("items", [StoredPoint("p", vector, payload)])
    payload["tags"].append("written-after")  # type: ignore[attr-defined]
    payload["scores"]["x"] = 0.5  # type: ignore[index]
    vector[:] = 0.0
    got = store.retrieve("items", ["p"])["p"]
    assert got.payload == {"active": True, "tags": ["a"], "scores": {"x": 1.0}}
    np.testing.assert_allclose(got.vector, _unit(5), atol=1e-5)  # type: ignore[arg-type]
    assert got.vector is not None
    with contextlib.suppress(ValueError):  # Edge hands out read-only arrays
        got.vector[:] = 0.0
    got.payload["active"] = False  # the top level is the caller's own
    (hit,) = store.search("items", [Query(_unit(5), limit=1, with_vectors=True)])[0]
    again = store.retrieve("items", ["p"])["p"]
    assert again.payload["active"] is True and hit.payload["active"] is True
    np.testing.assert_allclose(again.vector, _unit(5), atol=1e-5)  # type: ignore[arg-type]
    np.testing.assert_allclose(hit.vector, _unit(5), atol=1e-5)  # type: ignore[arg-type]


def test_edge_cache_read_racing_a_write_keeps_the_write(tmp_path: Path) -> None:
    """A read that misses the cache and reads the shard, while another thread writes the same
    point, must not put its older copy over the write (the retired item would look active
    until evicted). Forced: the write lands between the read's shard call and its fill."""
    s = EdgeStore(tmp_path / "store")
    try:
        s.ensure_collection("items", DIM)
        s.upsert("items", [StoredPoint("x", _unit(1), {"active": True})])
        s.close()
        s = EdgeStore(tmp_path / "store")  # an empty cache: the next read goes to the shard
        s.ensure_collection("items", DIM)
        shard = s._shard("items")
        real_retrieve = shard.retrieve

        class Racing:
            """The shard, whose retrieve lets another thread retire the point after reading."""

            def __getattr__(self, name: str) -> object:
                return getattr(shard, name)

            def retrieve(self, *args: object) -> object:
                read = real_retrieve(*args)
                writer = threading.Thread(
                    target=s.set_payload, args=("items", ["x"], {"active": False})
                )
                s._shards["items"] = shard  # the write goes to the real shard
                writer.start()
                writer.join()
                return read

        s._shards["items"] = Racing()  # type: ignore[assignment]
        assert s.retrieve("items", ["x"])["x"].payload["active"] is True  # read before the write
        assert s.retrieve("items", ["x"])["x"].payload["active"] is False
    finally:
        s.close()


def test_edge_cache_survives_writers_on_several_threads(tmp_path: Path) -> None:
    """In-process workers share one store; each has its own store thread. Evictions by two
    writers at once raised KeyError or RuntimeError after the shard write had gone through."""
    import sys

    s = EdgeStore(tmp_path / "store", cache_size=50)
    errors: list[BaseException] = []
    s.ensure_collection("items", DIM)

    def write(start: int) -> None:
        try:
            for n in range(start, start + 300):
                s.upsert("items", [StoredPoint(f"p{n}", _unit(n), {"n": n})])
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches inside the cache's eviction loop
    try:
        threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    try:
        assert errors == []
        assert s.count("items") == 1200
    finally:
        s.close()


def test_edge_half_created_shard_is_completed_not_fatal(tmp_path: Path) -> None:
    """A first creation cut short leaves the directory without the engine's config (it is
    written last); the worker's start-up optimize used to find the directory and crash on it
    at every start. ``exists`` says no, and ``ensure_collection`` completes the shard."""
    s = EdgeStore(tmp_path / "store")
    try:
        (tmp_path / "store" / "items" / "wal").mkdir(parents=True)
        assert not s.exists("items")
        s.ensure_collection("items", DIM)
        assert s.exists("items")
        s.upsert("items", _items(3))
        assert s.count("items") == 3
    finally:
        s.close()
    # cut short later, with segment data written (the engine refuses to create over it): the
    # directory is moved aside, kept, and the collection made anew
    (tmp_path / "store" / "items" / "edge_config.json").unlink()
    s = EdgeStore(tmp_path / "store")
    try:
        assert not s.exists("items")
        s.ensure_collection("items", DIM)
        assert s.exists("items") and s.count("items") == 0
        # both cut-short directories kept: the first (an empty wal/) and this one
        assert len(list((tmp_path / "store").glob("items.incomplete-*"))) == 2
    finally:
        s.close()


def test_edge_store_after_close_refuses_to_reopen(tmp_path: Path) -> None:
    """``ensure_collection`` after ``close`` reopened the shard and took the directory's lock
    again; it refuses now, and nothing is answered from memory."""
    s = EdgeStore(tmp_path / "store")
    s.ensure_collection("items", DIM)
    s.upsert("items", _items(2))
    s.close()
    with pytest.raises(StoreUnavailable):
        s.ensure_collection("items", DIM)
    with pytest.raises(StoreUnavailable):
        s.retrieve("items", ["item-1"])
    other = EdgeStore(tmp_path / "store")  # the directory is free
    try:
        other.ensure_collection("items", DIM)
        assert other.count("items") == 2
    finally:
        other.close()


def test_edge_a_nan_vector_stored_before_the_rule_reads_as_missing(tmp_path: Path) -> None:
    """Edge kept a NaN vector written before writes refused them; read as no vector, so the
    point's next write repairs it, instead of every query built from it failing for good."""
    s = EdgeStore(tmp_path / "store")
    try:
        s.ensure_collection("items", DIM)
        nan = [float("nan")] * DIM
        point = qe.Point(point_u64("old-nan"), nan, {"_id": "old-nan", "active": True})
        s._shard("items").update(qe.UpdateOperation.upsert_points([point]))
    finally:
        s.close()
    s = EdgeStore(tmp_path / "store")  # nothing cached: read from the shard
    try:
        got = s.retrieve("items", ["old-nan"])["old-nan"]
        assert got.vector is None and got.payload == {"active": True}
        s.upsert("items", [StoredPoint("old-nan", _unit(2), {"active": True})])
        assert s.retrieve("items", ["old-nan"])["old-nan"].vector is not None
    finally:
        s.close()
