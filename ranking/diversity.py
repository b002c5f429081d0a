"""Maximal marginal relevance: trade a little relevance for a list that is not ten near-twins."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ranking.scoring import unit_range


def mmr(
    relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float, *, fixed: int = 0
) -> list[int]:
    """Indices of ``k`` picks maximizing ``lam·rel − (1−lam)·max(0, max sim to already picked)``.

    ``relevance`` should be on a cosine-like scale. ``vectors`` are unit-norm rows. The first
    ``fixed`` rows are taken as-is, in order (guaranteed slots), and count as already picked.
    """
    return mmr_many([relevance], [vectors], [k], lam, fixed=[fixed])[0]


def mmr_many(
    relevances: Sequence[np.ndarray],
    vectors: Sequence[np.ndarray],
    ks: Sequence[int],
    lam: float,
    *,
    fixed: Sequence[int] | None = None,
    rows: Sequence[np.ndarray] | None = None,
) -> list[list[int]]:
    """:func:`mmr` over many lists at once (one per user of a batch), the same picks.

    ``rows`` (optional, per list) selects and orders the rows of a list's relevance and
    vectors that make its pool; picks are then positions in ``rows``. It saves the caller a
    copy of the pool's vectors (they are gathered once, into the batch's buffer).

    The greedy loop runs once for the whole batch, each step a few ufuncs over a
    (lists × longest pool) array: one list at a time it cost ~60 µs of small ufuncs per list,
    twice per list with the tail blend (~12 ms of a 120 ms batch of 111 users).
    """
    n_lists = len(relevances)
    fixed = list(fixed) if fixed is not None else [0] * n_lists
    selections: Sequence[np.ndarray | None] = rows if rows is not None else [None] * n_lists
    pools: list[np.ndarray] = []  # each list's relevance, in pool order
    out: list[list[int]] = [[] for _ in range(n_lists)]
    greedy: list[int] = []  # the lists that need the loop
    for u, (rel, vecs, k, f, sel) in enumerate(
        zip(relevances, vectors, ks, fixed, selections, strict=True)
    ):
        same_length = len(vecs) == len(rel)
        rel = np.asarray(rel) if sel is None else np.asarray(rel)[sel]
        pools.append(rel)
        n = len(rel)
        if n == 0 or k <= 0:
            continue
        picked = list(range(min(f, n, k)))
        if lam >= 1.0 or not same_length:
            taken = set(picked)
            rest = [int(i) for i in np.argsort(-rel, kind="stable") if i not in taken]
            out[u] = picked + rest[: k - len(picked)]
        elif len(picked) < min(k, n):
            out[u] = picked
            greedy.append(u)
        else:
            out[u] = picked
    if greedy:
        _greedy(
            [pools[u] for u in greedy],
            [vectors[u] for u in greedy],
            [selections[u] for u in greedy],
            [min(ks[u], len(pools[u])) for u in greedy],
            lam,
            [out[u] for u in greedy],
        )
    return out


def _greedy(
    relevances: Sequence[np.ndarray],
    vectors: Sequence[np.ndarray],
    selections: Sequence[np.ndarray | None],
    wants: Sequence[int],
    lam: float,
    picks: Sequence[list[int]],
) -> None:
    """Extend each of ``picks`` (its first rows, taken as fixed) to ``want`` rows, in place.

    Pools are padded to the longest: a padded row is a zero vector with relevance −inf, so it
    never wins and adds nothing to a penalty. Only the similarities to picked rows are ever
    read, so they are computed as rows get picked (one batched product per step) instead of
    the full pool × pool matrix: ~4× fewer multiply-adds for 10 picks from 40.
    """
    n_lists = len(relevances)
    width = max(len(r) for r in relevances)
    dim = vectors[0].shape[1]
    dtype = np.result_type(*(v.dtype for v in vectors))
    stacked = np.zeros((n_lists, width, dim), dtype=dtype)
    avail = np.full((n_lists, width), -np.inf, dtype=np.float64)
    for u, (rel, vecs, sel) in enumerate(zip(relevances, vectors, selections, strict=True)):
        if sel is None:
            stacked[u, : len(vecs)] = vecs
        else:  # gathered straight into the buffer ("clip": no buffered copy; rows are valid)
            np.take(vecs, sel, axis=0, out=stacked[u, : len(sel)], mode="clip")
        avail[u, : len(rel)] = lam * np.asarray(rel, dtype=np.float64)
    max_sim = np.zeros((n_lists, width), dtype=dtype)
    n_fixed = max(len(p) for p in picks)
    if n_fixed:
        fixed_sims = np.matmul(stacked, stacked[:, :n_fixed].transpose(0, 2, 1))
        for u, picked in enumerate(picks):
            if picked:
                assert picked == list(range(len(picked))), "fixed picks are the first rows"
                avail[u, : len(picked)] = -np.inf
                # the penalty counts similarity only: a dissimilar (negative) row earns 0
                max_sim[u] = np.maximum(fixed_sims[u, :, : len(picked)].max(axis=1), 0.0)
    penalty = dtype.type(1.0 - lam)
    rows = np.flatnonzero([len(p) < w for p, w in zip(picks, wants, strict=True)])
    while len(rows):
        gain = avail[rows] - max_sim[rows] * penalty
        best = gain.argmax(axis=1)
        ok = np.isfinite(gain[np.arange(len(rows)), best])
        rows, best = rows[ok], best[ok]
        avail[rows, best] = -np.inf
        block = stacked if len(rows) == n_lists else stacked[rows]
        sims = np.matmul(block, stacked[rows, best][:, :, None])[:, :, 0]
        max_sim[rows] = np.maximum(max_sim[rows], sims)
        still = np.ones(len(rows), dtype=bool)
        for i, (u, b) in enumerate(zip(rows.tolist(), best.tolist(), strict=True)):
            picks[u].append(b)
            still[i] = len(picks[u]) < wants[u]
        rows = rows[still]


def covisit_tail(relevance: np.ndarray, covisit: np.ndarray, weight: float) -> np.ndarray | None:
    """The order of a list's tail: ``(1 − w)·relevance + w·co-visitation``, both on [0, 1].

    Co-visitation enters as ``log1p(10·score)`` scaled to the list (item-kNN's evidence, with
    diminishing returns); None when no candidate has any, so the tail keeps the ranker's order.
    """
    co = np.log1p(10.0 * np.maximum(np.asarray(covisit, dtype=np.float64), 0.0))
    if not len(co) or float(co.max()) <= 0.0:
        return None
    rel = unit_range(np.asarray(relevance, dtype=np.float64))
    return (1.0 - weight) * rel + weight * unit_range(co)


def head_then_tail(
    head_rel: np.ndarray,
    tail_rel: np.ndarray,
    vectors: np.ndarray,
    k: int,
    head: int,
    lam: float,
    *,
    pool_factor: int = 4,
) -> list[int]:
    """``k`` picks: the first ``head`` by ``head_rel``, the rest by ``tail_rel``; each part
    through :func:`mmr` over its best ``pool_factor·k`` rows, the tail diversified against the
    head too.

    Why: on validation users the learned ranker's head is its strength (NDCG@20 well above
    item-kNN's) while co-visitation evidence, item-kNN's signal, recalls more in the tail
    (docs/evaluation-history.md): blended over the whole list it cost NDCG, over the
    tail only it costs little.
    """
    return head_then_tail_many(
        [head_rel], [tail_rel], [vectors], [k], [head], lam, pool_factor=pool_factor
    )[0]


def head_then_tail_many(
    head_rels: Sequence[np.ndarray],
    tail_rels: Sequence[np.ndarray],
    vectors: Sequence[np.ndarray],
    ks: Sequence[int],
    heads: Sequence[int],
    lam: float,
    *,
    pool_factor: int = 4,
) -> list[list[int]]:
    """:func:`head_then_tail` for many lists: two batched :func:`mmr_many` calls."""
    head_rels = [np.asarray(r) for r in head_rels]
    tail_rels = [np.asarray(r) for r in tail_rels]
    by_heads = [
        np.argsort(-r, kind="stable")[: pool_factor * k] for r, k in zip(head_rels, ks, strict=True)
    ]
    firsts_at = mmr_many(
        head_rels,
        vectors,
        [min(h, k) for h, k in zip(heads, ks, strict=True)],
        lam,
        rows=by_heads,
    )
    orders: list[np.ndarray] = []
    for tail_rel, by_head, at, k in zip(tail_rels, by_heads, firsts_at, ks, strict=True):
        first = by_head[np.asarray(at, dtype=np.intp)]
        by_tail = np.argsort(-tail_rel, kind="stable")
        rest = np.ones(len(tail_rel), dtype=bool)
        rest[first] = False
        by_tail = by_tail[rest[by_tail]][: max(pool_factor * k - len(first), 0)]
        orders.append(np.concatenate([first, by_tail]))
    # the head's picks open each tail order: fixed, counted as already picked
    picks = mmr_many(tail_rels, vectors, ks, lam, fixed=[len(a) for a in firsts_at], rows=orders)
    return [[int(o[i]) for i in p] for o, p in zip(orders, picks, strict=True)]
