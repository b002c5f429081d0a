"""The vector store on Qdrant Edge (``qdrant-edge-py``), the embedded engine: one shard each.

Unlike qdrant-client's local mode (brute force in Python, ~120 ms per search at 100k points),
Edge runs Qdrant's own segments, payload indexes and HNSW in-process. Each collection is a shard
directory ``<path>/<collection>`` with a write-ahead log: acknowledged writes survive a hard exit.
Point ids are 64-bit integers hashed from the string id (:func:`point_u64`): the binding builds
a Python ``uuid.UUID`` on every read of a UUID id, which cost twice the Rust search itself. A
shard made before that keeps its UUIDs (as in :mod:`infra.qdrant_store`); a marker file in each
shard says which scheme it uses.

HNSW is built only by :meth:`EdgeStore.optimize`: it blocks and holds the GIL for its whole run
(seconds at 100k points), so it belongs after bulk loads or in a maintenance window, never on the
stream's hot path; ``optimize_every`` opts into running it inline after that many new writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import pydantic_core
import qdrant_edge as qe

from infra.qdrant_store import finite_list, parse_vector, point_uuid, vector_list
from ranking.store import TIE_SLACK, Hit, Query, StoredPoint, StoreUnavailable, payload_copy

log = logging.getLogger(__name__)

_ID_KEY = "_id"
_PACKED_KEY = "_packed"
_CONFIG_FILE = "edge_config.json"
_IDS_FILE = "coldstream_ids.json"  # which point-id scheme a shard uses
T = TypeVar("T")

# Messages of the engine's (untyped) exceptions that mean "cannot reach the data", not "bad call".
_UNAVAILABLE_MARKERS = (
    "WouldBlock",  # another EdgeShard (this or another process) holds the directory's WAL lock
    "not initialized",  # the shard was closed
    "No space left",
    "IO error",
    "Io error",
    "Permission denied",
)


class EdgeStore:
    """:class:`ranking.store.VectorStore` over Qdrant Edge shards under ``path``.

    One process (one ``EdgeStore``) at a time holds the directory; a second opener gets
    ``StoreUnavailable``. Calls may come from several executor threads: the engine's shard is
    thread-safe, a lock guards opening, optimizing and closing shards, and the point cache has
    its own (``_PointCache``). Two threads writing the same point at once may leave the cache
    with either write; the stream never does (each user and item has one owner).
    """

    def __init__(
        self,
        path: Path,
        *,
        observe: Callable[[str, float], None] | None = None,
        optimize_every: int | None = None,
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 64,
        search_ef: int = 128,
        quantize: bool = True,
        cache_size: int = 50_000,
        exclude_after_max: int = 64,
        exclude_slack: int = 8,
        tie_slack: int = TIE_SLACK,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.location = str(path)
        self._observe = observe
        self._optimize_every = optimize_every
        self._hnsw = qe.HnswIndexConfig(
            m=hnsw_m, ef_construct=hnsw_ef_construct, full_scan_threshold=10_000
        )
        # int8 scores, then exact rescoring of the oversampled top: ~4x less memory traffic
        self._quantization = (
            qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            if quantize
            else None
        )
        self._params = qe.SearchParams(
            hnsw_ef=search_ef,
            quantization=qe.QuantizationSearchParams(rescore=True, oversampling=2.0)
            if quantize
            else None,
        )
        self._shards: dict[str, qe.EdgeShard] = {}
        self._dims: dict[str, int] = {}
        self._pending: dict[str, int] = {}  # writes since the last optimize, per collection
        self._lock = threading.RLock()
        self._closed = False
        self._cache_size = cache_size
        self._exclude_after_max = exclude_after_max
        self._exclude_slack = exclude_slack
        self._tie_slack = tie_slack
        self._caches: dict[str, _PointCache] = {}
        # point id → string id (a hash of it, the same in every collection of one scheme):
        # grows with the number of distinct points ever returned by a search, at most the catalog
        self._names: dict[int | uuid.UUID, str] = {}
        self._point_ids: dict[str, Callable[[str], Any]] = {}  # collection → its id scheme

    # -- protocol -----------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        def run() -> None:
            with self._lock:
                if self._closed:  # reopening would take the directory's lock again
                    raise StoreUnavailable(f"vector store {self.location} is closed")
                have = self._dims.get(name)
                if have is None and (self.path / name / _CONFIG_FILE).exists():
                    have = _stored_dim(self.path / name)
                if have is not None and have != dim:
                    raise ValueError(
                        f"collection {name!r} has dimension {have}, the encoder gives {dim}: "
                        "use another collection name or data dir for another model"
                    )
                if name not in self._shards:
                    self._open(name, dim)

        self._call("ensure_collection", run)

    def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        if not points:
            return

        def run() -> None:
            shard = self._shard(collection)
            dim = self._dims.get(collection)
            pid = self._point_ids[collection]
            structs = [
                qe.Point(pid(p.id), vector_list(p.vector, dim), _pack(p.id, p.payload))
                for p in points
            ]
            shard.update(qe.UpdateOperation.upsert_points(structs))

        self._call("upsert", run)
        cache = self._cache_for(collection)
        for p in points:
            cache.put(p.id, p.vector, p.payload)
        self._pending[collection] = self._pending.get(collection, 0) + len(points)
        if self._optimize_every is not None and self._pending[collection] >= self._optimize_every:
            self.optimize(collection)

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, StoredPoint]:
        if not ids:
            return {}
        cache = self._cache_for(collection)
        out: dict[str, StoredPoint] = {}
        missing: list[str] = []
        for sid in dict.fromkeys(ids):
            cached = cache.get(sid)
            if cached is None or (with_vectors and cached[0] is None):
                missing.append(sid)
            else:
                vector = cached[0] if with_vectors else None
                out[sid] = StoredPoint(sid, vector, payload_copy(cached[1]))
        if missing:

            def read() -> Any:
                shard = self._shard(collection)
                pid = self._point_ids[collection]
                return shard.retrieve([pid(i) for i in missing], True, with_vectors)

            since = cache.writes
            records = self._call("retrieve", read)
            fills: list[tuple[str, np.ndarray | None, dict[str, Any]]] = []
            for rec in records:
                payload = _unpack(rec.payload)
                sid = str(payload.pop(_ID_KEY, rec.id))
                vector = parse_vector(rec.vector) if with_vectors else None
                if with_vectors:
                    fills.append((sid, vector, payload))  # the cache keeps the read's objects
                # nested values shared with the cache, as a hit's are (ranking.store)
                out[sid] = StoredPoint(sid, vector, dict(payload))
            if fills:
                cache.fill(fills, since)
        return out

    def search(self, collection: str, queries: Sequence[Query]) -> list[list[Hit]]:
        """One batch query; string ids, payloads and vectors of the hits come from memory.

        The engine returns only point ids and scores: reading even the one ``_id`` payload key
        per hit cost 0.25-0.5 ms per query of 50-100 hits (measured on MovieLens, 40 queries a
        batch), more than the search itself, and converting payloads and vectors ~2.5 ms. Ids
        are hashes of the string id, so a point's name never changes once learned; vectors and
        payloads come from the point cache. Misses cost one retrieve each.
        """
        if not queries:
            return []
        results, short = self._search(collection, queries, self._exclude_slack)
        if short:  # more excluded ids among the nearest than the slack fetched: fetch them all
            again, _ = self._search(
                collection, [queries[i] for i in short], self._exclude_after_max
            )
            for i, hits in zip(short, again, strict=True):
                results[i] = hits
        return results

    def _search(
        self, collection: str, queries: Sequence[Query], slack: int
    ) -> tuple[list[list[Hit]], list[int]]:
        """Hits per query, and which queries came up short because ``slack`` capped their
        over-fetch (a slack of ``exclude_after_max`` fetches every excluded id's place)."""
        # a short exclusion list is cheaper dropped here from an over-fetch than filtered in the
        # engine (40 queries of 50 over 1,682 items: 7.4 ms with a must-not-id filter, 3.6 ms
        # without); with ``limit + len(excluded)`` hits, ``limit`` always remain. Few excluded
        # ids are among a query's nearest (bench traffic: 2.6 on average, at most 9 of lists of
        # up to 64), so the over-fetch is capped at ``slack`` and a query left short is asked
        # again in full
        after = [0 < len(q.exclude_ids) <= self._exclude_after_max for q in queries]
        extra = [
            min(len(q.exclude_ids), slack) if late else 0
            for q, late in zip(queries, after, strict=True)
        ]
        pid = self._point_id(collection)
        # ties at the cut: see ranking.store.TIE_SLACK (fixed while a tie has at most
        # ``tie_slack`` more members than fit)
        ties = self._tie_slack
        requests = [
            qe.QueryRequest(
                limit=q.limit + more + ties,
                query=qe.Query.Nearest(finite_list(q.vector)),
                filter=_filter(q, pid if not late else None),
                with_payload=False,
                with_vector=False,
                params=self._params,
            )
            for q, late, more in zip(queries, after, extra, strict=True)
        ]
        responses = self._call(
            "search",
            lambda: self._shard(collection).query_batch(qe.QueryBatchRequest(requests)),
        )
        # read each ``.id`` once: even an integer id is a conversion in the binding; rows are
        # (-score, id), so a plain tuple sort (no key function per hit) orders equal scores by
        # point id; the engine's order is already by score, which timsort checks in one pass
        found: list[list[tuple[float, Any]]] = [
            sorted([(-sp.score, sp.id) for sp in resp]) for resp in responses
        ]
        names = self._names
        unknown = [pid for rows in found for _, pid in rows if pid not in names]
        if unknown:
            self._learn_names(collection, unknown)
        cache = self._cache_for(collection)
        # point id → (string id, vector, payload view): one lookup per distinct hit
        points: dict[Any, tuple[str, np.ndarray | None, Mapping[str, Any]] | None] = {}
        missing: list[str] = []
        for rows in found:
            for _, pid in rows:
                if pid in points:
                    continue
                sid = names.get(pid)
                if sid is None:  # deleted between the query and the read
                    points[pid] = None
                    continue
                got = cache.get(sid)
                if got is None or got[0] is None:
                    missing.append(sid)
                    points[pid] = None
                else:
                    points[pid] = (sid, got[0], got[1])
        if missing:
            fetched = self.retrieve(collection, missing, with_vectors=True)
            for pid, entry in points.items():
                sid = names.get(pid)
                stored = fetched.get(sid) if entry is None and sid is not None else None
                if stored is not None:
                    points[pid] = (stored.id, stored.vector, MappingProxyType(stored.payload))
        new_tuple = tuple.__new__  # Hit(...) without its Python-level __new__: ~5,800 hits a batch
        results: list[list[Hit]] = []
        short: list[int] = []
        for n, (q, rows, late, more) in enumerate(zip(queries, found, after, extra, strict=True)):
            hits: list[Hit] = []
            fields = q.payload_fields
            with_vectors = q.with_vectors
            excluded = frozenset(q.exclude_ids) if late else frozenset()
            for neg_score, pid in rows:
                point = points[pid]
                if point is None:  # deleted between the query and the read
                    continue
                sid, vector, payload = point
                if sid in excluded:
                    continue
                if len(hits) == q.limit:
                    break
                if fields is not None:
                    payload = {k: payload[k] for k in fields if k in payload}
                hits.append(
                    new_tuple(Hit, (sid, -neg_score, payload, vector if with_vectors else None))
                )
            if (
                len(hits) < q.limit
                and more < len(q.exclude_ids)
                and len(rows) == q.limit + more + ties
            ):
                short.append(n)  # the store had more, and the capped over-fetch was used up
            results.append(hits)
        return results, short

    def _learn_names(self, collection: str, point_ids: Sequence[Any]) -> None:
        """String ids of points first seen in a search, read from their ``_id`` payload key."""
        wanted = list(dict.fromkeys(point_ids))
        records = self._call(
            "retrieve",
            lambda: self._shard(collection).retrieve(
                [u if isinstance(u, int) else str(u) for u in wanted], True, False
            ),
        )
        names = self._names
        for rec in records:  # a point deleted since the query is not found: its hits drop
            names[_point_key(rec.id)] = _hit_id(rec)

    def set_payload(self, collection: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        if not ids:
            return
        pid = self._point_id(collection)
        scalars, nested = _split(payload)
        if nested:  # a nested value would have to merge into the packed blob: read, then write
            current = self.retrieve(collection, ids, with_vectors=False)
            for sid, point in current.items():
                merged = {**point.payload, **payload}
                op = qe.UpdateOperation.set_payload([pid(sid)], _pack(sid, merged))
                self._call("set_payload", lambda op=op: self._shard(collection).update(op))  # type: ignore[misc]
            self._cache_for(collection).merge(ids, payload)
            return
        op = qe.UpdateOperation.set_payload([pid(i) for i in ids], scalars)
        self._call("set_payload", lambda: self._shard(collection).update(op))
        self._cache_for(collection).merge(ids, payload)

    def count(self, collection: str) -> int:
        return int(
            self._call("count", lambda: self._shard(collection).count(qe.CountRequest(exact=True)))
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            shards, self._shards = self._shards, {}
            self._caches = {}  # no answers from memory after the close
        for name, shard in shards.items():
            try:
                shard.flush()
            except Exception:  # pragma: no cover - closing must never raise
                log.debug("flushing edge shard %s failed", name, exc_info=True)
            try:
                shard.close()  # releases the WAL lock, also when the flush failed
            except Exception:  # pragma: no cover - closing must never raise
                log.debug("closing edge shard %s failed", name, exc_info=True)

    def _cache_for(self, collection: str) -> _PointCache:
        cache = self._caches.get(collection)
        if cache is None:
            cache = self._caches.setdefault(collection, _PointCache(self._cache_size))
        return cache

    # -- beyond the protocol ----------------------------------------------------------------
    def exists(self, collection: str) -> bool:
        """Whether the collection's shard was created whole: the engine writes its config
        last, so a first creation cut short (a kill, a full disk) leaves a directory without
        one, which ``ensure_collection`` completes and every other call refuses."""
        return (self.path / collection / _CONFIG_FILE).exists()

    def optimize(self, collection: str | None = None) -> bool:
        """Build HNSW/quantization and merge segments; returns whether anything changed.

        Blocks every thread of the process (the engine keeps the GIL) for its duration.
        """
        names = [collection] if collection is not None else list(self._shards)
        changed = False
        for name in names:

            def run(name: str = name) -> bool:
                with self._lock:
                    return self._shard(name).optimize()

            changed = self._call("optimize", run) or changed
            self._pending[name] = 0
        return changed

    def flush(self) -> None:
        """Persist every shard's pending changes (the WAL already makes writes durable)."""
        for name in list(self._shards):
            self._call("flush", lambda name=name: self._shard(name).flush())  # type: ignore[misc]

    # -- helpers ------------------------------------------------------------------------
    def _open(self, name: str, dim: int) -> qe.EdgeShard:
        shard_path = self.path / name
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=self._hnsw,
            quantization_config=self._quantization,
            payload_memory=qe.Memory.Cached,  # search returns payloads: keep them off the disk path
        )
        ids_file = shard_path / _IDS_FILE
        if (shard_path / _CONFIG_FILE).exists():
            scheme = _read_scheme(ids_file) if ids_file.exists() else None
            shard = qe.EdgeShard.load(str(shard_path), config)
            try:
                if scheme is None:  # a shard from before the marker: its points tell
                    scheme = _detect_scheme(shard)
                    _write_scheme(ids_file, scheme)
            except BaseException:
                shard.close()
                raise
        else:
            scheme = "u64"
            if shard_path.is_dir() and any(p.name != _IDS_FILE for p in shard_path.iterdir()):
                # a first creation cut short (a kill, a full disk): the engine writes its config
                # last, so no write was ever acknowledged here, and it refuses to create over
                # segment data; kept aside, not deleted
                aside = shard_path.with_name(f"{name}.incomplete-{time.time_ns()}")
                shard_path.rename(aside)
                log.warning(
                    "collection %r: %s had no config (a creation cut short); moved to %s, "
                    "created anew",
                    name,
                    shard_path,
                    aside,
                )
            shard_path.mkdir(parents=True, exist_ok=True)
            _write_scheme(ids_file, scheme)  # first: a shard never exists without its marker
            shard = qe.EdgeShard.create(str(shard_path), config)
            try:
                # HNSW sub-graphs per payload value multiply index build time: filter at search
                shard.update(
                    qe.UpdateOperation.create_field_index(
                        "active", qe.BoolIndexParams(enable_hnsw=False)
                    )
                )
                shard.update(
                    qe.UpdateOperation.create_field_index(
                        "created_at", qe.FloatIndexParams(enable_hnsw=False)
                    )
                )
            except BaseException:
                shard.close()
                raise
        self._point_ids[name] = _ID_SCHEMES[scheme]
        self._shards[name] = shard
        self._dims[name] = dim
        return shard

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"vector store {self.location} is closed")
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            shard_path = self.path / name
            if not (shard_path / _CONFIG_FILE).exists():
                raise ValueError(f"collection {name!r} does not exist in {self.location}")
            return self._open(name, _stored_dim(shard_path))

    def _point_id(self, collection: str) -> Callable[[str], Any]:
        """The collection's point-id function (opening its shard if need be)."""
        pid = self._point_ids.get(collection)
        if pid is None:
            self._call("open", lambda: self._shard(collection))
            pid = self._point_ids[collection]
        return pid

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        except (StoreUnavailable, ValueError):
            raise
        except OSError as exc:
            raise StoreUnavailable(f"vector store {self.location} unavailable: {exc}") from exc
        except Exception as exc:
            if "WouldBlock" in str(exc):
                # waited for like any outage: in a rolling restart the old process lets go
                raise StoreUnavailable(
                    f"vector store {self.location} is held by another process (the embedded "
                    "store takes one process per data directory: several workers need a "
                    "Qdrant server, COLDSTREAM_QDRANT_URL)"
                ) from exc
            if any(marker in str(exc) for marker in _UNAVAILABLE_MARKERS):
                raise StoreUnavailable(f"vector store {self.location} unavailable: {exc}") from exc
            if "dimension error" in str(exc):
                raise ValueError(str(exc)) from exc
            raise
        finally:
            if self._observe is not None:
                self._observe(operation, time.perf_counter() - start)


def _stored_dim(shard_path: Path) -> int:
    """The dense vector size recorded in a shard's config (the engine exposes no getter)."""
    config = json.loads((shard_path / _CONFIG_FILE).read_text())
    return int(config["vectors"][""]["size"])


def _split(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    scalars: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, value in payload.items():
        (nested if isinstance(value, (list, dict)) else scalars)[key] = value
    return scalars, nested


def _pack(sid: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars stay filterable fields; lists and dicts travel as one JSON string.

    The binding converts payloads value by value: a profile's 150-id seen list made a 500-point
    upsert cost ~225 ms; as one string it costs a few. pydantic-core's encoder writes the same
    JSON values (NaN too) in ~5 µs per warm profile where ``json.dumps`` took ~19.
    """
    scalars, nested = _split(payload)
    scalars[_ID_KEY] = sid
    if nested:
        scalars[_PACKED_KEY] = pydantic_core.to_json(nested).decode()
    return scalars


def _unpack(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    payload = dict(raw or {})
    packed = payload.pop(_PACKED_KEY, None)
    if packed:
        payload.update(json.loads(packed))
    return payload


@functools.lru_cache(maxsize=1 << 18)
def point_u64(item_id: str) -> int:
    """A string id's point id: its first 64 bits of BLAKE2b (cached: every write path).

    Two ids of a catalog of n share one with probability about n²/2^65 (3·10⁻⁸ at a million
    items); the second write would replace the first point.
    """
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big")


_ID_SCHEMES: dict[str, Callable[[str], Any]] = {"u64": point_u64, "uuid5": point_uuid}


def _read_scheme(ids_file: Path) -> str:
    try:
        scheme = json.loads(ids_file.read_text())["point_ids"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{ids_file}: unreadable point-id marker ({exc!r})") from exc
    if scheme not in _ID_SCHEMES:
        raise ValueError(f"{ids_file}: unknown point-id scheme {scheme!r}")
    return str(scheme)


def _write_scheme(ids_file: Path, scheme: str) -> None:
    """Atomically: a crash leaves the old marker or the new one, never half of one."""
    tmp = ids_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"point_ids": scheme}))
    os.replace(tmp, ids_file)


def _detect_scheme(shard: qe.EdgeShard) -> str:
    """A marker-less shard's scheme, from one of its points (empty: the current scheme).

    Shards made before integer ids have UUIDs; one copied without its marker has integers.
    """
    records, _ = shard.scroll(qe.ScrollRequest(limit=1, with_payload=False, with_vector=False))
    if records and not isinstance(records[0].id, int):
        return "uuid5"
    return "u64"


def _point_key(point_id: Any) -> int | uuid.UUID:
    """A point id as search hits return it (an int, or a UUID for a ``uuid5`` shard)."""
    if isinstance(point_id, (int, uuid.UUID)):
        return point_id
    return uuid.UUID(str(point_id))


def _hit_id(sp: Any) -> str:
    # the string id travels in the payload; the binding's UUID id is only built when it is absent
    payload = sp.payload
    sid = payload.get(_ID_KEY) if payload else None
    return str(sid) if sid is not None else str(sp.id)


def _match_value(value: Any) -> qe.MatchValue:
    # qdrant-edge-py 0.9.0 turns a Python bool into the integer 1/0, which never matches a
    # bool payload; numpy's bool is not an int subclass and converts to a real bool.
    return qe.MatchValue(np.bool_(value) if isinstance(value, bool) else value)  # type: ignore[arg-type]


def _filter(q: Query, point_id: Callable[[str], Any] | None) -> qe.Filter | None:
    """The query's conditions; its excluded ids too when ``point_id`` (their scheme) is given."""
    must: list[qe.FieldCondition | qe.HasIdCondition] = [
        qe.FieldCondition(key, match=_match_value(value)) for key, value in q.where.items()
    ]
    if q.created_after is not None:
        must.append(qe.FieldCondition("created_at", range=qe.RangeFloat(gt=q.created_after)))
    must_not: list[qe.FieldCondition | qe.HasIdCondition] = []
    if q.exclude_ids and point_id is not None:
        must_not.append(qe.HasIdCondition({point_id(i) for i in q.exclude_ids}))
    if not must and not must_not:
        return None
    return qe.Filter(must=list(must) or None, must_not=list(must_not) or None)


class _PointCache:
    """Vectors and payloads of recently read or written points, coherent by construction.

    An Edge shard is held by one process at a time and every write goes through this object,
    so the cache only has to follow its own upserts and payload updates. Bounded: the oldest
    entries go first. Several threads may use one store (in-process workers): writers take a
    lock, and a read's fill is dropped when a write came in since the read began (it could put
    an older copy over the write). Entries are the cache's own: vectors are read-only copies,
    and containers in payloads are copied one level deep (a caller's later change to its list
    or dict, such as a counter decaying its scores in place, must not change what was stored).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._points: dict[str, tuple[np.ndarray | None, MappingProxyType[str, Any]]] = {}
        self._lock = threading.Lock()
        self.writes = 0  # bumped by every write: a read's fill checks it

    def get(self, sid: str) -> tuple[np.ndarray | None, MappingProxyType[str, Any]] | None:
        return self._points.get(sid)

    def put(self, sid: str, vector: np.ndarray | None, payload: Mapping[str, Any]) -> None:
        """A write's copy of the point."""
        with self._lock:
            self.writes += 1
            self._set(sid, _owned_vector(vector, copy=True), _owned_payload(payload))

    def fill(
        self, points: Sequence[tuple[str, np.ndarray | None, dict[str, Any]]], since: int
    ) -> bool:
        """A read's points (fresh objects of the read's own), unless a write came in since
        ``since`` (the value of :attr:`writes` before the read). Returns whether they went in."""
        with self._lock:
            if self.writes != since:
                return False
            for sid, vector, payload in points:
                self._set(sid, _owned_vector(vector, copy=False), payload)
            return True

    def _set(self, sid: str, vector: np.ndarray | None, payload: dict[str, Any]) -> None:
        if self.max_entries <= 0:
            return
        points = self._points
        points.pop(sid, None)
        # a read-only view, made once: search hits share it instead of copying per hit
        points[sid] = (vector, MappingProxyType(payload))
        while len(points) > self.max_entries:
            points.pop(next(iter(points)), None)

    def merge(self, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        with self._lock:
            self.writes += 1
            for sid in ids:
                cached = self._points.get(sid)
                if cached is not None:
                    merged = {**cached[1], **_owned_payload(payload)}
                    self._points[sid] = (cached[0], MappingProxyType(merged))


def _owned_vector(vector: np.ndarray | None, *, copy: bool) -> np.ndarray | None:
    """A read-only float32 array the cache alone holds (``copy``: the caller keeps its own)."""
    if vector is None:
        return None
    out = np.array(vector, dtype=np.float32, copy=True) if copy else vector
    out.setflags(write=False)
    return out


def _owned_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
        for k, v in payload.items()
    }
