"""Catalog items as stored points: what the recall filter and the reasons need in the payload."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranking.store import StoredPoint


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    title: str
    category: str | None
    tags: tuple[str, ...]
    brand: str | None
    description: str | None
    price: float | None
    created_at: float
    active: bool = True


def item_points(items: Sequence[CatalogItem], vectors: np.ndarray) -> list[StoredPoint]:
    """One point per item; ``active`` and ``created_at`` are indexed filters in the store."""
    if len(items) != len(vectors):
        raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
    return [
        StoredPoint(
            item.item_id,
            vectors[i],
            {
                "title": item.title,
                "category": item.category,
                "tags": list(item.tags),
                "brand": item.brand,
                "price": item.price,
                "created_at": item.created_at,
                "active": item.active,
            },
        )
        for i, item in enumerate(items)
    ]
