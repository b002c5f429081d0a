"""Scoring candidates for one user. Without a trained ranker: cosine blended with popularity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class Candidates:
    """Recall output for one user, aligned arrays (one row per candidate item)."""

    ids: list[str]
    vectors: np.ndarray  # (m, d) unit rows
    cosine: np.ndarray  # (m,)
    popularity: np.ndarray  # (m,) decayed interaction counts
    categories: list[str | None]
    is_cold: np.ndarray  # (m,) bool
    # What the learned ranker reads besides the vectors (zeros when a caller has none):
    counts: np.ndarray | None = None  # (m,) long-term visit counts (snapshot + online)
    covisit: np.ndarray | None = None  # (m,) co-visitation score with the user's recent items
    age_s: np.ndarray | None = None  # (m,) seconds since the item was created (nan = unknown)
    profile_events: int = 0  # events folded into the user's profile so far
    sources: list[str] = field(default_factory=list)  # recall channel per row (content|covisit|…)


@dataclass(frozen=True)
class ItemPrior:
    """An item's expected ``log(1 + visits)`` predicted from its vector alone: ``w·v + b``.

    Fitted by ridge regression on the items of a training log (:meth:`fit`), it ranks items
    nobody has touched yet — new items — by how popular items with such content turned out
    to be. Because it is linear in the vector, "cosine with the user + β·prior" over new items
    is one nearest-neighbour query with the vector ``u + β·w`` (items are unit vectors).
    """

    weight: np.ndarray  # (d,)
    bias: float

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, dtype=np.float32) @ self.weight + self.bias).astype(np.float32)

    @classmethod
    def fit(cls, vectors: np.ndarray, counts: np.ndarray, l2: float = 1.0) -> ItemPrior:
        """Ridge regression of ``log(1 + counts)`` on ``vectors`` (rows with counts > 0 only:
        an item without visits in the log says nothing about its content's appeal)."""
        x = np.asarray(vectors, dtype=np.float64)
        y = np.log1p(np.maximum(np.asarray(counts, dtype=np.float64), 0.0))
        keep = y > 0
        if keep.sum() < 2:
            return cls(np.zeros(x.shape[1], np.float32), float(y[keep].mean() if keep.any() else 0))
        x, y = x[keep], y[keep]
        mean = float(y.mean())
        w = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ (y - mean))
        return cls(w.astype(np.float32), mean)


class Scorer(Protocol):
    """Anything that turns candidates into relevance scores (higher is better)."""

    version: str

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray: ...


def score_all(
    scorer: Scorer,
    users: Sequence[np.ndarray],
    cands: Sequence[Candidates],
    affinities: Sequence[dict[str, float]],
) -> list[np.ndarray]:
    """Scores for a batch's users: one call when the scorer batches (``score_many``)."""
    many = getattr(scorer, "score_many", None)
    if many is not None and cands:
        return list(many(users, cands, affinities))
    return [scorer.score(u, c, a) for u, c, a in zip(users, cands, affinities, strict=True)]


class BlendScorer:
    """``(1−w)·cosine + w·p/(p + h)``: cosine blended with a saturating popularity prior.

    Measured on MovieLens-100K (DESIGN.md): content alone loses to popularity on short texts,
    so a prior helps. The prior saturates (``h`` = the decayed count worth half the prior), so
    one or two early clicks do not outrank content; cold items get their own slots elsewhere.
    """

    def __init__(self, popularity_weight: float, half_count: float = 5.0) -> None:
        self.popularity_weight = popularity_weight
        self.half_count = half_count
        self.version = f"blend-pop{popularity_weight:g}-h{half_count:g}"

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray:
        pop = np.maximum(cands.popularity, 0.0)
        prior = pop / (pop + self.half_count)
        w = self.popularity_weight
        return ((1.0 - w) * cands.cosine + w * prior).astype(np.float32)


def unit_range(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] for one list, best = 1, in the values' own dtype (all equal: zeros)."""
    arr = np.asarray(values)
    if len(arr) == 0:
        return arr.copy()
    lo, hi = float(arr.min()), float(arr.max())
    span = hi - lo if hi > lo else 1.0
    return (arr - lo) / span
