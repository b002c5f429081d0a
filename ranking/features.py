"""The ranker's input, built the same way at training time and in the stream.

One row per candidate: ``[u, i, u⊙i, |u−i|, features]`` where ``features`` are the scalars named
in :data:`FEATURES`. A saved ranker records this list; loading refuses a file whose list differs,
so a model is never fed columns it was not trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ranking.scoring import Candidates

FEATURES: tuple[str, ...] = (
    "cosine",  # u·i
    "log_popularity",  # log(1 + long-term visit count) / 10
    "covisit",  # log(1 + 10 · co-visitation score with the recent items)
    "covisit_rel",  # co-visitation score / the list's best (0 when none)
    "category_affinity",  # the user's decayed weight on the item's category / total weight
    "item_age",  # log(1 + days since the item was created) / 10; 0 when unknown
    "profile_events",  # log(1 + events in the profile) / 5 (same for every row of a list)
)


def feature_matrix(cands: Candidates, category_affinity: Mapping[str, float]) -> np.ndarray:
    """(m, len(FEATURES)) float32, in :data:`FEATURES` order."""
    m = len(cands.ids)
    zeros = np.zeros(m, dtype=np.float32)
    counts = cands.counts if cands.counts is not None else zeros
    covisit = cands.covisit if cands.covisit is not None else zeros
    best = float(covisit.max()) if m and float(covisit.max()) > 0 else 1.0
    total = sum(v for v in category_affinity.values() if v > 0) or 1.0
    affinity = np.array(
        [max(category_affinity.get(c, 0.0), 0.0) / total if c else 0.0 for c in cands.categories],
        dtype=np.float32,
    )
    if cands.age_s is not None:
        age = np.where(
            np.isfinite(cands.age_s), np.log1p(np.maximum(cands.age_s, 0.0) / 86400.0) / 10.0, 0.0
        )
    else:
        age = zeros
    out = np.stack(
        [
            cands.cosine.astype(np.float32),
            np.log1p(np.maximum(counts, 0.0)) / 10.0,
            np.log1p(10.0 * np.maximum(covisit, 0.0)),
            np.maximum(covisit, 0.0) / best,
            affinity,
            np.asarray(age, dtype=np.float32),
            np.full(m, math.log1p(max(cands.profile_events, 0)) / 5.0, dtype=np.float32),
        ],
        axis=1,
    )
    return out.astype(np.float32)
