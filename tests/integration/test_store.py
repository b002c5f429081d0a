"""Issue 2 acceptance: the Qdrant store (local mode) persists, filters and excludes as promised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from httpx import Headers
from qdrant_client.http.exceptions import UnexpectedResponse

from infra.qdrant_store import QdrantStore, point_uuid
from ranking.store import Query, StoredPoint, StoreUnavailable, VectorStore

pytestmark = [
    pytest.mark.integration,
    # local mode warns that payload indexes are a no-op there; they matter on a server
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

DIM = 384
N = 1_000


def _unit_vectors(n: int, dim: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _points(vectors: np.ndarray) -> list[StoredPoint]:
    return [
        StoredPoint(f"item-{i}", vectors[i], {"active": i % 5 != 0, "n": i, "created_at": float(i)})
        for i in range(len(vectors))
    ]


def test_store_satisfies_protocol(store: QdrantStore) -> None:
    assert isinstance(store, VectorStore)


def test_point_uuid_is_stable_and_distinct() -> None:
    assert point_uuid("a") == point_uuid("a")
    assert point_uuid("a") != point_uuid("b")


def test_thousand_vectors_survive_close_and_reopen(store_dir: Path) -> None:
    path = store_dir
    vectors = _unit_vectors(N, DIM)
    first = QdrantStore(path=path)
    try:
        first.ensure_collection("items", DIM)
        first.upsert("items", _points(vectors))
        assert first.count("items") == N
    finally:
        first.close()

    second = QdrantStore(path=path)
    try:
        second.ensure_collection("items", DIM)  # existing, same dimension: fine
        assert second.count("items") == N
        ids = [f"item-{i}" for i in range(N)]
        got = second.retrieve("items", ids)
        assert set(got) == set(ids)
        for i, sid in enumerate(ids):
            point = got[sid]
            assert point.id == sid
            assert point.vector is not None and point.vector.shape == (DIM,)
            np.testing.assert_allclose(point.vector, vectors[i], atol=1e-5)
            assert point.payload["n"] == i
            assert "_id" not in point.payload  # the id key is internal
        # each point is its own nearest neighbour
        sample = [0, 1, 499, 998, 999]
        hits = second.search("items", [Query(vectors[i], limit=1) for i in sample])
        assert [h[0].id for h in hits] == [f"item-{i}" for i in sample]
        assert all(h[0].score == pytest.approx(1.0, abs=1e-4) for h in hits)
    finally:
        second.close()


def test_retrieve_without_vectors_and_unknown_ids(store: QdrantStore) -> None:
    vectors = _unit_vectors(10, DIM)
    store.ensure_collection("items", DIM)
    store.upsert("items", _points(vectors))
    got = store.retrieve("items", ["item-3", "nope", "item-3"], with_vectors=False)
    assert list(got) == ["item-3"]
    assert got["item-3"].vector is None
    assert store.retrieve("items", []) == {}


def test_upsert_replaces_and_empty_calls_are_noops(store: QdrantStore) -> None:
    store.ensure_collection("items", 4)
    store.upsert("items", [])
    store.upsert("items", [StoredPoint("a", np.array([1, 0, 0, 0], np.float32), {"v": 1})])
    store.upsert("items", [StoredPoint("a", np.array([0, 1, 0, 0], np.float32), {"v": 2})])
    assert store.count("items") == 1
    point = store.retrieve("items", ["a"])["a"]
    assert point.payload == {"v": 2}
    assert point.vector is not None
    np.testing.assert_allclose(point.vector, [0, 1, 0, 0], atol=1e-6)
    assert store.search("items", []) == []
    store.set_payload("items", [], {"v": 3})


def test_exclude_ids_never_returned(store: QdrantStore) -> None:
    vectors = _unit_vectors(200, DIM, seed=3)
    store.ensure_collection("items", DIM)
    store.upsert("items", _points(vectors))
    excluded = [f"item-{i}" for i in range(0, 200, 3)]
    queries = [Query(vectors[i], limit=50, exclude_ids=excluded) for i in range(0, 200, 3)]
    for hits in store.search("items", queries):
        assert len(hits) == 50
        assert not {h.id for h in hits} & set(excluded)
    # without the exclusion the query's own point comes first
    (plain,) = store.search("items", [Query(vectors[0], limit=1)])
    assert plain[0].id == "item-0"


def test_where_active_filters_inactive(store: QdrantStore) -> None:
    vectors = _unit_vectors(100, DIM, seed=5)
    store.ensure_collection("items", DIM)
    store.upsert("items", _points(vectors))  # every 5th point is inactive
    (hits,) = store.search("items", [Query(vectors[0], limit=100, where={"active": True})])
    assert len(hits) == 80
    assert all(h.payload["active"] is True for h in hits)
    assert "item-0" not in {h.id for h in hits}


def test_created_after_filter(store: QdrantStore) -> None:
    vectors = _unit_vectors(50, DIM, seed=9)
    store.ensure_collection("items", DIM)
    store.upsert("items", _points(vectors))
    (hits,) = store.search("items", [Query(vectors[0], limit=50, created_after=39.0)])
    assert sorted(h.id for h in hits) == sorted(f"item-{i}" for i in range(40, 50))


def test_search_with_vectors_returns_them(store: QdrantStore) -> None:
    vectors = _unit_vectors(5, DIM, seed=11)
    store.ensure_collection("items", DIM)
    store.upsert("items", _points(vectors))
    (hits,) = store.search("items", [Query(vectors[2], limit=5, with_vectors=True)])
    assert hits[0].id == "item-2"
    for hit in hits:
        assert hit.vector is not None
        np.testing.assert_allclose(hit.vector, vectors[int(hit.id.split("-")[1])], atol=1e-5)
    (bare,) = store.search("items", [Query(vectors[2], limit=5)])
    assert all(h.vector is None for h in bare)


def test_set_payload_retires_item(store: QdrantStore) -> None:
    vectors = _unit_vectors(10, DIM, seed=13)
    store.ensure_collection("items", DIM)
    store.upsert("items", [StoredPoint(f"x{i}", vectors[i], {"active": True}) for i in range(10)])
    store.set_payload("items", ["x1", "x2"], {"active": False, "note": "retired"})
    got = store.retrieve("items", ["x1", "x2", "x3"], with_vectors=True)
    assert got["x1"].payload == {"active": False, "note": "retired"}
    assert got["x2"].payload["active"] is False
    assert got["x3"].payload == {"active": True}
    # the vector is untouched by a payload update
    assert got["x1"].vector is not None
    np.testing.assert_allclose(got["x1"].vector, vectors[1], atol=1e-5)
    (hits,) = store.search("items", [Query(vectors[1], limit=10, where={"active": True})])
    assert {h.id for h in hits} == {f"x{i}" for i in range(10)} - {"x1", "x2"}


def test_point_without_vector_uses_placeholder(store: QdrantStore) -> None:
    store.ensure_collection("users", 8)
    store.upsert("users", [StoredPoint("u1", None, {"has_vector": False})])
    point = store.retrieve("users", ["u1"])["u1"]
    assert point.payload == {"has_vector": False}
    assert point.vector is not None and point.vector.shape == (8,)


def test_ensure_collection_with_other_dim_raises(store: QdrantStore) -> None:
    store.ensure_collection("items", DIM)
    store.ensure_collection("items", DIM)  # idempotent
    with pytest.raises(ValueError, match=r"dimension 384.*768"):
        store.ensure_collection("items", 768)


def test_needs_url_or_path() -> None:
    with pytest.raises(ValueError):
        QdrantStore()


def test_a_server_that_is_not_there_is_an_outage() -> None:
    """The production path, built for real against a port nobody listens on: the client's own
    connection error must come out as ``StoreUnavailable`` (waited out by the worker), whatever
    exception type this qdrant-client version raises for it."""
    from infra.broker import free_port

    with pytest.raises(StoreUnavailable, match=r"refused|unavailable"):
        store = QdrantStore(url=f"http://127.0.0.1:{free_port()}")
        store.ensure_collection("items", 4)


def test_drop_collection_removes_it_and_reports_an_absent_one(store: QdrantStore) -> None:
    store.ensure_collection("scratch_bench_1", 4)
    store.upsert("scratch_bench_1", [StoredPoint("a", np.ones(4, np.float32) / 2.0, {})])
    assert store.drop_collection("scratch_bench_1") is True
    assert store.drop_collection("scratch_bench_1") is False
    store.ensure_collection("scratch_bench_1", 4)  # a fresh, empty one can be made again
    assert store.count("scratch_bench_1") == 0


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_busy_and_failing_servers_are_outages_other_errors_are_not(
    store: QdrantStore, status: int
) -> None:
    """A server that times a request out or rate-limits it is "not now": retried as an outage
    (``StoreUnavailable``), not taken for a bad batch; a 4xx like 400 is a real error."""

    def answer(code: int) -> None:
        raise UnexpectedResponse(code, "busy", b"{}", Headers())

    with pytest.raises(StoreUnavailable):
        store._call("search", lambda: answer(status))
    with pytest.raises(UnexpectedResponse):
        store._call("search", lambda: answer(400))


def test_a_collection_another_worker_created_first_is_taken_as_it_is(
    store: QdrantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers starting together on a fresh server: both see no collection, one creates it,
    the other's create gets 409 Conflict, which crashed that worker's start (found by
    review). The conflict now means "it exists": its vector size is still checked."""
    store.ensure_collection("raced", 4)  # the other worker's

    def conflict(name: str, **_: object) -> None:
        raise UnexpectedResponse(409, "Conflict", b'{"status": {"error": "exists"}}', Headers())

    monkeypatch.setattr(store._client, "collection_exists", lambda name: False)
    monkeypatch.setattr(store._client, "create_collection", conflict)
    store.ensure_collection("raced", 4)
    with pytest.raises(ValueError, match="has dimension 4, the encoder gives 5"):
        store.ensure_collection("raced", 5)
    monkeypatch.setattr(
        store._client,
        "create_collection",
        lambda name, **_: (_ for _ in ()).throw(
            UnexpectedResponse(400, "Bad Request", b"{}", Headers())
        ),
    )
    with pytest.raises(UnexpectedResponse):  # any other refusal is still an error
        store.ensure_collection("raced", 4)
