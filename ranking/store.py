"""The vector-store seam: what ranking needs from a store, without knowing it is Qdrant.

Implementations live in ``infra/``: Qdrant Edge (the embedded default) and qdrant-client
(local mode or a server). Every call is a batch call: one pass over a stream batch does one
read, one write and one query per collection.

Ownership: a store keeps its own copy of what is written, to one level: the caller may go on
changing the vector and the payload's top-level lists and dicts (a counter decaying its scores
in place), not what they hold. What it hands back may be shared with its cache: vectors may be
read-only, a retrieved payload's top level is the caller's (a search hit's may be read-only),
its nested lists and dicts must not be changed in place (copy them first, as
``Profile.from_payload`` does). Vectors may come back
L2-normalised (cosine collections); non-finite vectors are refused with ``ValueError``.
``where`` matches plain (scalar) payload values only: Edge keeps lists and dicts packed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np


@dataclass
class StoredPoint:
    """One record of a collection: its string id, vector (or None) and JSON payload."""

    id: str
    vector: np.ndarray | None
    payload: dict[str, Any] = field(default_factory=dict)


class Hit(NamedTuple):
    """One search result (a tuple: a frozen dataclass cost ~1 µs per hit, 50 hits per user)."""

    id: str
    score: float
    payload: Mapping[str, Any]
    vector: np.ndarray | None = None


def payload_copy(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A mutable copy of a hit's payload: a store may hand out read-only views of its cache
    (:class:`types.MappingProxyType`), whose ``copy()`` is its dict's, ~8x cheaper than
    ``dict(view)``."""
    if isinstance(payload, (dict, MappingProxyType)):
        return payload.copy()
    return dict(payload)


@dataclass(frozen=True)
class Query:
    """One nearest-neighbour query: cosine top ``limit`` excluding ``exclude_ids``.

    ``where`` holds exact payload matches (e.g. ``{"active": True}``); ``created_after``
    restricts to points whose payload ``created_at`` (epoch seconds) is newer. Asking for a few
    scalar ``payload_fields`` saves decoding whole payloads on a hot path.
    """

    vector: np.ndarray
    limit: int
    exclude_ids: Sequence[str] = ()
    where: Mapping[str, Any] = field(default_factory=dict)
    created_after: float | None = None
    with_vectors: bool = False
    payload_fields: Sequence[str] | None = None  # None = whole payload; else only these keys


#: Hits a store adapter fetches past a query's limit to order equal scores by point id before
#: the cut: items with one vector (a product listed twice) tie exactly, a store returns ties in
#: no fixed order, and which twin made the cut changed from run to run.
TIE_SLACK = 4


class StoreUnavailable(RuntimeError):
    """The store could not be reached; the caller retries the whole batch later."""


@runtime_checkable
class VectorStore(Protocol):
    def ensure_collection(self, name: str, dim: int) -> None: ...

    def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None: ...

    def retrieve(
        self, collection: str, ids: Sequence[str], *, with_vectors: bool = True
    ) -> dict[str, StoredPoint]: ...

    def search(self, collection: str, queries: Sequence[Query]) -> list[list[Hit]]: ...

    def set_payload(
        self, collection: str, ids: Sequence[str], payload: Mapping[str, Any]
    ) -> None: ...

    def count(self, collection: str) -> int: ...

    def close(self) -> None: ...
