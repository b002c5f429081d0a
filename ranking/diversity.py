"""Maximal marginal relevance: trade a little relevance for a list that is not ten near-twins."""

from __future__ import annotations

import math

import numpy as np

from ranking.scoring import unit_range


def mmr(
    relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float, *, fixed: int = 0
) -> list[int]:
    """Indices of ``k`` picks maximizing ``lam·rel − (1−lam)·max(0, max sim to already picked)``.

    ``relevance`` should be on a cosine-like scale. ``vectors`` are unit-norm rows. The first
    ``fixed`` rows are taken as-is, in order (guaranteed slots), and count as already picked.
    """
    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    picked = list(range(min(fixed, n, k)))
    if lam >= 1.0 or len(vectors) != n:
        taken = set(picked)
        rest = [int(i) for i in np.argsort(-relevance, kind="stable") if i not in taken]
        return picked + rest[: k - len(picked)]
    # a BLAS product: 54 µs for 80×384 with one BLAS thread, which the worker sets
    # (infra.runtime); einsum took 450 µs and a threaded BLAS 0.3–11 ms on 2 busy cores
    sims = vectors @ vectors.T
    # picked rows leave the race as -inf; the loop reuses its buffers (each step is a few
    # small ufuncs: 154 → 109 µs per list of 20 from 80, the same picks)
    avail = lam * np.asarray(relevance, dtype=np.float64)
    avail[picked] = -np.inf
    penalty = 1.0 - lam
    # the penalty counts similarity only: a dissimilar (negative-cosine) row earns nothing
    max_sim = np.maximum(sims[picked].max(axis=0), 0.0) if picked else np.zeros(n, dtype=np.float32)
    scaled = np.empty(n, dtype=max_sim.dtype)
    gain = np.empty(n, dtype=np.float64)
    want = min(k, n)
    while len(picked) < want:
        np.multiply(max_sim, penalty, out=scaled)
        np.subtract(avail, scaled, out=gain)
        best = int(gain.argmax())
        if not math.isfinite(gain[best]):
            break
        picked.append(best)
        avail[best] = -np.inf
        np.maximum(max_sim, sims[best], out=max_sim)  # sims is symmetric: rows are contiguous
    return picked


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
    (README, "Cold-start evaluation"): blended over the whole list it cost NDCG, over the
    tail only it costs little.
    """
    head_rel = np.asarray(head_rel)
    tail_rel = np.asarray(tail_rel)
    by_head = np.argsort(-head_rel, kind="stable")[: pool_factor * k]
    first = by_head[mmr(head_rel[by_head], vectors[by_head], min(head, k), lam)]
    by_tail = np.argsort(-tail_rel, kind="stable")
    rest = np.ones(len(tail_rel), dtype=bool)
    rest[first] = False
    by_tail = by_tail[rest[by_tail]][: max(pool_factor * k - len(first), 0)]
    order = np.concatenate([first, by_tail])
    picks = mmr(tail_rel[order], vectors[order], k, lam, fixed=len(first))
    return [int(order[i]) for i in picks]
