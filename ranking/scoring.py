"""Scoring candidates for one user. Without a trained ranker: cosine blended with popularity."""

from __future__ import annotations

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


class Scorer(Protocol):
    """Anything that turns candidates into relevance scores (higher is better)."""

    version: str

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray: ...


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
