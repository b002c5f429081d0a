"""The vector store on qdrant-client: local mode on a directory, or a Qdrant server by URL.

Qdrant point ids must be integers or UUIDs, so a string id maps to a UUIDv5 and the original id
is kept in the payload under ``_id``. All calls are batch calls (one round trip each).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ranking.store import TIE_SLACK, Hit, Query, StoredPoint, StoreUnavailable

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1c2a0e-4f7b-5b8e-9d1a-2c3b4d5e6f70")
_ID_KEY = "_id"
T = TypeVar("T")


@functools.lru_cache(maxsize=1 << 18)
def point_uuid(item_id: str) -> str:
    """Stable Qdrant id for a string id (cached: it is on every read path)."""
    return str(uuid.uuid5(_NAMESPACE, item_id))


class QdrantStore:
    """:class:`ranking.store.VectorStore` over qdrant-client.

    ``path`` opens the embedded local mode (one process at a time holds the directory);
    ``url`` talks to a server or cluster. Connection errors surface as ``StoreUnavailable``.
    """

    def __init__(
        self,
        *,
        url: str = "",
        path: Path | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        observe: Callable[[str, float], None] | None = None,
        tie_slack: int = TIE_SLACK,
    ) -> None:
        self._tie_slack = tie_slack
        if url:
            self._client = QdrantClient(url=url, api_key=api_key or None, timeout=int(timeout_s))
            self.location = url
        else:
            if path is None:
                raise ValueError("QdrantStore needs a url or a local path")
            path.mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=str(path))
            self.location = str(path)
        self._observe = observe
        self._dims: dict[str, int] = {}

    def drop_collection(self, name: str) -> bool:
        """Delete collection ``name`` (scratch runs clean up after themselves); False: absent."""
        self._dims.pop(name, None)
        return bool(self._call("drop_collection", lambda: self._client.delete_collection(name)))

    # -- protocol -----------------------------------------------------------------------
    def ensure_collection(self, name: str, dim: int) -> None:
        def run() -> None:
            created = False
            if not self._client.collection_exists(name):
                try:
                    self._client.create_collection(
                        name,
                        vectors_config=models.VectorParams(
                            size=dim, distance=models.Distance.COSINE
                        ),
                    )
                    created = True
                except UnexpectedResponse as exc:
                    # workers starting together on a fresh server: another one created it
                    # between the check and the create (Qdrant answers 409 Conflict)
                    if exc.status_code != 409:
                        raise
            indexes: tuple[tuple[str, models.PayloadSchemaType], ...] = (
                ("active", models.PayloadSchemaType.BOOL),
                ("created_at", models.PayloadSchemaType.FLOAT),
            )
            if not created:
                info = self._client.get_collection(name)
                if self.location.startswith(("http://", "https://")):
                    # a creator that died before its indexes left none (local mode ignores
                    # payload indexes: there, only at creation, as before)
                    have_indexes = info.payload_schema or {}
                    indexes = tuple(i for i in indexes if i[0] not in have_indexes)
                else:
                    indexes = ()
                params = info.config.params.vectors
                have = params.size if isinstance(params, models.VectorParams) else None
                if have is not None and have != dim:
                    raise ValueError(
                        f"collection {name!r} has dimension {have}, the encoder gives {dim}: "
                        "use another collection name or data dir for another model"
                    )
            for field, schema in indexes:
                self._client.create_payload_index(name, field, field_schema=schema)

        self._call("ensure_collection", run)
        self._dims[name] = dim

    def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        if not points:
            return
        structs = [
            models.PointStruct(
                id=point_uuid(p.id),
                vector=vector_list(p.vector, self._dims.get(collection)),
                payload={**p.payload, _ID_KEY: p.id},
            )
            for p in points
        ]
        self._call("upsert", lambda: self._client.upsert(collection, structs, wait=True))

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, StoredPoint]:
        if not ids:
            return {}
        records = self._call(
            "retrieve",
            lambda: self._client.retrieve(
                collection,
                [point_uuid(i) for i in dict.fromkeys(ids)],
                with_payload=True,
                with_vectors=with_vectors,
            ),
        )
        out: dict[str, StoredPoint] = {}
        for rec in records:
            payload = dict(rec.payload or {})
            sid = str(payload.pop(_ID_KEY, rec.id))
            out[sid] = StoredPoint(sid, parse_vector(rec.vector) if with_vectors else None, payload)
        return out

    def search(self, collection: str, queries: Sequence[Query]) -> list[list[Hit]]:
        if not queries:
            return []
        requests = [
            models.QueryRequest(
                query=finite_list(q.vector),
                filter=_filter(q),
                limit=q.limit + self._tie_slack,  # to order ties: ranking.store.TIE_SLACK
                with_payload=True if q.payload_fields is None else [*q.payload_fields, _ID_KEY],
                with_vector=q.with_vectors,
            )
            for q in queries
        ]
        responses = self._call(
            "search", lambda: self._client.query_batch_points(collection, requests)
        )
        results: list[list[Hit]] = []
        for q, resp in zip(queries, responses, strict=True):
            # equal scores in a fixed order (point id), then the cut: the same twin every time
            ranked = sorted(resp.points, key=lambda sp: (-sp.score, str(sp.id)))[: q.limit]
            hits = []
            for sp in ranked:
                payload = dict(sp.payload or {})
                sid = str(payload.pop(_ID_KEY, sp.id))
                vec = parse_vector(sp.vector) if sp.vector is not None else None
                hits.append(Hit(sid, float(sp.score), payload, vec))
            results.append(hits)
        return results

    def set_payload(self, collection: str, ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        if not ids:
            return
        self._call(
            "set_payload",
            lambda: self._client.set_payload(
                collection, dict(payload), points=[point_uuid(i) for i in ids], wait=True
            ),
        )

    def count(self, collection: str) -> int:
        return int(self._call("count", lambda: self._client.count(collection, exact=True).count))

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # pragma: no cover - closing must never raise
            log.debug("closing qdrant client failed", exc_info=True)

    # -- helpers ------------------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        import time

        start = time.perf_counter()
        try:
            return fn()
        except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(f"vector store {self.location} unavailable: {exc}") from exc
        except UnexpectedResponse as exc:
            # 5xx, and the two 4xx that mean "not now" (timeout, rate limit): an outage, retried
            if exc.status_code is not None and (
                exc.status_code >= 500 or exc.status_code in _BUSY_STATUS
            ):
                raise StoreUnavailable(f"vector store {self.location}: {exc}") from exc
            raise
        finally:
            if self._observe is not None:
                self._observe(operation, time.perf_counter() - start)


_BUSY_STATUS = frozenset({408, 429})


def _filter(q: Query) -> models.Filter | None:
    must: list[models.Condition] = [
        models.FieldCondition(key=key, match=models.MatchValue(value=value))
        for key, value in q.where.items()
    ]
    if q.created_after is not None:
        must.append(models.FieldCondition(key="created_at", range=models.Range(gt=q.created_after)))
    must_not: list[models.Condition] = []
    if q.exclude_ids:
        must_not.append(models.HasIdCondition(has_id=[point_uuid(i) for i in q.exclude_ids]))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def vector_list(vector: np.ndarray | None, dim: int | None) -> list[float]:
    """A point's vector for the client; a point without one gets a fixed unit vector."""
    if vector is None:
        if dim is None:
            raise ValueError("a point without a vector needs a known collection dimension")
        return [1.0] + [0.0] * (dim - 1)  # cosine cannot normalize a zero vector
    return finite_list(vector)


def finite_list(vector: np.ndarray) -> list[float]:
    """A point's or a query's vector for the client, refused when it holds NaN or infinity:
    qdrant-client's local mode refuses one, Edge stores it as all NaN (never found again), so
    bad encoder output fails its batch instead of leaving a point or a profile silently dead."""
    arr = np.asarray(vector, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("vector holds NaN or infinite values")
    return arr.tolist()


def parse_vector(raw: Any) -> np.ndarray | None:
    """A vector as a client returns it (list, or named vectors) → float32 array."""
    if raw is None:
        return None
    if isinstance(raw, dict):  # named vectors: take the default one
        raw = raw.get("", next(iter(raw.values()), None))
    if raw is None:
        return None
    vector = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(vector).all():
        # stored before writes refused them (Edge kept a NaN vector as all NaN): read as no
        # vector, so the point is repaired by its next write instead of failing every query
        log.warning("a stored vector holds NaN or infinite values; read as missing")
        return None
    return vector
