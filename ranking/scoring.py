"""Scoring candidates for one user. Without a trained ranker: cosine blended with popularity."""

from __future__ import annotations

from dataclasses import dataclass
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


class Scorer(Protocol):
    """Anything that turns candidates into relevance scores (higher is better)."""

    version: str

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray: ...


class BlendScorer:
    """``(1−w)·cosine + w·log-popularity`` with popularity scaled to [0, 1] by the batch max.

    Measured on MovieLens-100K (DESIGN.md): content alone loses to popularity on short texts,
    so a prior helps; cold items get their own slots elsewhere because this prior drowns them.
    """

    def __init__(self, popularity_weight: float) -> None:
        self.popularity_weight = popularity_weight
        self.version = f"blend-pop{popularity_weight:g}"

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray:
        pop = np.log1p(np.maximum(cands.popularity, 0.0))
        top = float(pop.max()) if len(pop) else 0.0
        pop_norm = pop / top if top > 0 else pop
        w = self.popularity_weight
        return ((1.0 - w) * cands.cosine + w * pop_norm).astype(np.float32)
