"""Top-k ranking metrics for the cold-start evaluation, with binary relevance.

Definitions (the ones DESIGN.md's baseline figures were measured with):
- Recall@k = |targets ∩ top-k| / |targets|. Not capped by k, so a user with 100 targets can reach at
  most k/100: absolute values are low on MovieLens, whose test users have ~100 later ratings.
- NDCG@k = DCG@k / IDCG@k with DCG = Σ_{hits at rank r (1-based)} 1 / log2(r + 1) and IDCG the DCG
  of min(|targets|, k) hits at the top, so NDCG can reach 1 whatever the number of targets.
- A target repeated in a list counts once (its first position); empty targets score 0 — the
  aggregator skips such users instead, so they never drag a mean down.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "catalog_coverage",
    "evaluate_lists",
    "hit_rate_at_k",
    "ndcg_at_k",
    "per_user_quality",
    "recall_at_k",
]

# 1 / log2(rank + 1) for ranks 1..N, grown on demand.
_DISCOUNTS = 1.0 / np.log2(np.arange(2, 1026, dtype=np.float64))


def _discounts(n: int) -> np.ndarray:
    if n <= len(_DISCOUNTS):
        return _DISCOUNTS[:n]
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def _hit_ranks(ranked: Sequence[str], targets: Collection[str], k: int) -> list[int]:
    """0-based positions in the top k of the first occurrence of each target."""
    if k < 0:
        raise ValueError("k must be >= 0")
    seen: set[str] = set()
    ranks: list[int] = []
    for pos, item in enumerate(ranked[:k]):
        if item in targets and item not in seen:
            seen.add(item)
            ranks.append(pos)
    return ranks


def recall_at_k(ranked: Sequence[str], targets: Collection[str], k: int) -> float:
    if not targets:
        return 0.0
    return len(_hit_ranks(ranked, targets, k)) / len(targets)


def hit_rate_at_k(ranked: Sequence[str], targets: Collection[str], k: int) -> float:
    return 1.0 if _hit_ranks(ranked, targets, k) else 0.0


def ndcg_at_k(ranked: Sequence[str], targets: Collection[str], k: int) -> float:
    if not targets or k == 0:
        return 0.0
    hits = _hit_ranks(ranked, targets, k)
    if not hits:
        return 0.0
    disc = _discounts(k)
    dcg = float(disc[hits].sum())
    idcg = float(disc[: min(len(targets), k)].sum())
    return dcg / idcg


def catalog_coverage(all_lists: Iterable[Sequence[str]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one list (pass lists already cut to k)."""
    if catalog_size <= 0:
        raise ValueError("catalog_size must be positive")
    distinct: set[str] = set()
    for lst in all_lists:
        distinct.update(lst)
    return len(distinct) / catalog_size


def evaluate_lists(
    lists: Mapping[str, Sequence[str]],
    targets: Mapping[str, Collection[str]],
    k: int = 20,
    cold_items: Collection[str] | None = None,
    catalog_size: int | None = None,
) -> dict[str, float]:
    """Mean metrics over the users in `targets` that have at least one target.

    A user missing from `lists` scores 0 (a system that fails to answer is not excused). Keys:
    recall, ndcg, hit_rate (means over users), coverage (of `catalog_size`, NaN if not given),
    cold_recall (recall on cold targets only, mean over users with at least one cold target; NaN if
    none or `cold_items` is None), users, cold_users, distinct_items, k; and how concentrated the
    exposure of cold items is (NaN without `cold_items`): cold_distinct (cold items shown to
    anyone) and cold_top_share (share of the lists showing the most shown cold item). A policy
    that shows every user the same new item has a cold recall decided by that one item, which a
    mean over users does not reveal.
    """
    recalls: list[float] = []
    ndcgs: list[float] = []
    hits: list[float] = []
    cold_recalls: list[float] = []
    cold = set(cold_items) if cold_items is not None else None
    top_lists: list[Sequence[str]] = []
    for user, tgt in targets.items():
        if not tgt:
            continue
        ranked = list(lists.get(user, ()))[:k]
        top_lists.append(ranked)
        recalls.append(recall_at_k(ranked, tgt, k))
        ndcgs.append(ndcg_at_k(ranked, tgt, k))
        hits.append(hit_rate_at_k(ranked, tgt, k))
        if cold is not None:
            cold_tgt = cold.intersection(tgt)
            if cold_tgt:
                cold_recalls.append(recall_at_k(ranked, cold_tgt, k))

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else math.nan

    distinct = len({i for lst in top_lists for i in lst})
    cold_distinct = cold_top_share = math.nan
    if cold is not None:
        shown = Counter(i for lst in top_lists for i in set(lst) if i in cold)
        cold_distinct = float(len(shown))
        top = shown.most_common(1)[0][1] if shown else 0
        cold_top_share = top / len(top_lists) if top_lists else math.nan
    return {
        "recall": mean(recalls),
        "ndcg": mean(ndcgs),
        "hit_rate": mean(hits),
        "coverage": catalog_coverage(top_lists, catalog_size) if catalog_size else math.nan,
        "cold_recall": mean(cold_recalls),
        "users": float(len(recalls)),
        "cold_users": float(len(cold_recalls)),
        "distinct_items": float(distinct),
        "cold_distinct": cold_distinct,
        "cold_top_share": cold_top_share,
        "k": float(k),
    }


def per_user_metrics(
    lists: Mapping[str, Sequence[str]], targets: Mapping[str, Collection[str]], k: int = 20
) -> dict[str, dict[str, float]]:
    """Recall@k and NDCG@k of every user with at least one target (no list: 0), by metric:
    the per-user terms of :func:`evaluate_lists`' means, for paired comparisons."""
    out: dict[str, dict[str, float]] = {"recall": {}, "ndcg": {}}
    for user, tgt in targets.items():
        if tgt:
            ranked = list(lists.get(user, ()))[:k]
            out["recall"][user] = recall_at_k(ranked, tgt, k)
            out["ndcg"][user] = ndcg_at_k(ranked, tgt, k)
    return out


def per_user_quality(
    lists: Mapping[str, Sequence[str]], targets: Mapping[str, Collection[str]], k: int = 20
) -> dict[str, float]:
    """Recall@k + NDCG@k of every user with at least one target (no list: 0).

    The per-user terms behind :func:`evaluate_lists`' means, for paired comparisons of two
    systems on the same users (their difference's standard error).
    """
    by_metric = per_user_metrics(lists, targets, k)
    return {user: r + by_metric["ndcg"][user] for user, r in by_metric["recall"].items()}
