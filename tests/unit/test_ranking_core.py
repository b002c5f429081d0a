"""Trending, MMR, reasons and the batch engine (over a real local Qdrant store, 8-d vectors).

The engine tests open a real ``QdrantStore`` on a temporary directory (through the ``store``
fixture) and use small hand-made vectors, so every expected recommendation can be read off the
geometry. No encoder, no broker.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.qdrant_store import QdrantStore
from infra.settings import Settings
from ranking.diversity import covisit_tail, head_then_tail, head_then_tail_many, mmr, mmr_many
from ranking.engine import (
    BatchOutcome,
    BehaviorEngine,
    EngineConfig,
    Interaction,
    UserRecs,
    _cold_slots,
    _guarantee_cold,
    covisit_key,
    trending_key,
)
from ranking.profile import Profile, ProfileConfig
from ranking.reasons import Anchor, explain, item_anchor, nearest_anchors, text_anchor
from ranking.scoring import BlendScorer, Candidates, ItemPrior
from ranking.store import StoredPoint, StoreUnavailable
from ranking.trending import (
    MergedTrending,
    TrendingCounter,
    merged_scores,
    popularity_of,
    top_items,
)

# Markers per test: the engine tests open a real local Qdrant store (``store`` fixture), which
# the project counts as integration; everything else here is a pure unit test.
unit = pytest.mark.unit
integration = pytest.mark.integration
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

DIM = 8
HOUR = 3600.0
T0 = 1_700_000_000.0


def uvec(*pairs: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for i, x in pairs:
        v[i] = x
    return v / np.linalg.norm(v)


# ==== trending ===============================================================================


@unit
def test_trending_decays_in_event_time() -> None:
    c = TrendingCounter(half_life_s=10.0)
    c.add("a", 0.0)
    assert c.scores == {"a": 1.0}
    c.add("a", 10.0)  # one half-life later: 1·0.5 + 1
    assert c.scores["a"] == pytest.approx(1.5)
    assert c.ref_ts == 10.0
    c.add("b", 0.0, weight=2.0)  # an old event counts less, by the same law
    assert c.scores["b"] == pytest.approx(1.0)
    assert c.ref_ts == 10.0  # and does not move the clock back
    c.add("a", 30.0)
    assert c.scores["a"] == pytest.approx(1.5 * 0.25 + 1.0)
    assert c.scores["b"] == pytest.approx(0.25)


@unit
def test_trending_prunes_to_max_items() -> None:
    c = TrendingCounter(half_life_s=HOUR, max_items=10)
    for n in range(13):
        c.add(f"i{n}", 0.0, weight=float(n + 1))
    assert len(c.scores) <= 12
    for n in range(13, 20):
        c.add(f"i{n}", 0.0, weight=float(n + 1))
    assert len(c.scores) <= 12
    assert "i19" in c.scores and "i0" not in c.scores


@unit
def test_trending_payload_round_trip() -> None:
    c = TrendingCounter(half_life_s=HOUR)
    c.add("a", T0, 2.0)
    c.add("b", T0 + 60, 1.0)
    back = TrendingCounter.from_payload(c.to_payload(), HOUR)
    assert back.ref_ts == c.ref_ts and back.scores == c.scores
    assert TrendingCounter.from_payload({}, HOUR).scores == {}


@unit
def test_merged_scores_brings_counters_to_one_time() -> None:
    c1 = TrendingCounter(half_life_s=10.0)
    c1.add("a", 0.0)
    c2 = TrendingCounter(half_life_s=10.0)
    c2.add("a", 10.0)
    c2.add("b", 10.0, 2.0)
    empty = TrendingCounter(half_life_s=10.0)
    merged = merged_scores([c1, c2, empty], at_ts=10.0)
    assert merged == pytest.approx({"a": 1.5, "b": 2.0})
    later = merged_scores([c1, c2], at_ts=20.0)
    assert later == pytest.approx({"a": 0.25 + 0.5, "b": 1.0})
    # a time before a counter's reference never amplifies it
    assert merged_scores([c2], at_ts=0.0) == pytest.approx({"a": 1.0, "b": 2.0})


@unit
def test_merged_trending_reads_what_a_full_merge_gives() -> None:
    c1 = TrendingCounter(half_life_s=10.0)
    c1.add("a", 0.0)
    c1.add("c", 0.0, 6.0)
    c2 = TrendingCounter(half_life_s=10.0)
    c2.add("a", 10.0)
    c2.add("b", 10.0, 2.0)
    view = MergedTrending([c1, c2, TrendingCounter(half_life_s=10.0)])
    full = merged_scores([c1, c2], at_ts=None)
    for item in ("a", "b", "c"):
        assert view.get(item, 0.0) == pytest.approx(full[item])
    assert view.get("never", -1.0) == -1.0
    assert view.top(2) == [("c", pytest.approx(3.0)), ("b", pytest.approx(2.0))]
    assert [i for i, _ in view.top(5, exclude=["b", "c"])] == ["a"]
    assert MergedTrending([]).get("a", 0.0) == 0.0 and MergedTrending([]).top(3) == []
    assert merged_scores([], at_ts=None) == {}


@unit
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from("abcdef"),
                st.floats(0.0, 100.0),
                st.floats(0.01, 10.0),
            ),
            max_size=8,
        ),
        max_size=4,
    )
)
def test_popularity_of_many_items_is_each_items_own_read(
    partitions: list[list[tuple[str, float, float]]],
) -> None:
    """``popularity_of`` (one pass per partition) gives exactly what ``get`` gives item by item,
    for a merged view and for a plain dict."""
    counters = []
    for adds in partitions:
        c = TrendingCounter(half_life_s=30.0)
        for item, ts, weight in sorted(adds, key=lambda a: a[1]):
            c.add(item, ts, weight)
        counters.append(c)
    view = MergedTrending(counters)
    items = [*"abcdefg", "a"]
    expected = np.array([view.get(i, 0.0) for i in items], np.float32)
    np.testing.assert_array_equal(popularity_of(view, items), expected)
    plain = {"a": 1.5, "c": 0.25}
    np.testing.assert_array_equal(
        popularity_of(plain, items), np.array([plain.get(i, 0.0) for i in items], np.float32)
    )


@unit
def test_merged_scores_without_time_uses_latest_reference() -> None:
    stale = TrendingCounter(half_life_s=HOUR)
    stale.add("old", T0, 3.0)
    fresh = TrendingCounter(half_life_s=HOUR)
    fresh.add("new", T0 + 10 * HOUR, 2.0)
    assert merged_scores([stale, fresh], None) == pytest.approx(
        merged_scores([stale, fresh], T0 + 10 * HOUR)
    )


@unit
def test_top_items_excludes_and_orders() -> None:
    scores = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.5}
    assert top_items(scores, 2) == ["a", "b"]
    assert top_items(scores, 2, exclude=["a"]) == ["b", "c"]
    assert top_items(scores, 3, exclude=["a", "c", "zzz"]) == ["b", "d"]
    assert top_items(scores, 10, exclude=scores) == []
    assert top_items(scores, 0) == []
    assert top_items({}, 5) == []


# ==== diversity ===============================================================================


def _rng_unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@unit
def test_mmr_lambda_one_is_sort_by_relevance() -> None:
    rel = np.array([0.2, 0.9, 0.5, 0.9, 0.1], dtype=np.float32)
    vectors = _rng_unit_rows(5, 4, seed=1)
    assert mmr(rel, vectors, 3, 1.0) == [1, 3, 2]  # ties keep input order
    assert mmr(rel, vectors, 10, 1.0) == [1, 3, 2, 0, 4]


@unit
def test_mmr_avoids_near_duplicate() -> None:
    a = np.array([1.0, 0.0, 0.0])
    twin = np.array([0.999, 0.0447, 0.0])
    other = np.array([0.0, 0.0, 1.0])
    vectors = np.stack([a, twin / np.linalg.norm(twin), other]).astype(np.float32)
    rel = np.array([1.0, 0.99, 0.8], dtype=np.float32)
    assert mmr(rel, vectors, 2, 1.0) == [0, 1]
    assert mmr(rel, vectors, 2, 0.5) == [0, 2]
    assert mmr(rel, vectors, 3, 0.5) == [0, 2, 1]


@unit
def test_mmr_fixed_slots_come_first() -> None:
    rel = np.array([0.1, 0.2, 0.9, 0.8], dtype=np.float32)
    vectors = _rng_unit_rows(4, 4, seed=2)
    assert mmr(rel, vectors, 3, 1.0, fixed=2) == [0, 1, 2]
    assert mmr(rel, vectors, 3, 0.7, fixed=2)[:2] == [0, 1]
    assert mmr(rel, vectors, 1, 0.7, fixed=2) == [0]


def _mmr_by_definition(
    rel: np.ndarray, vectors: np.ndarray, k: int, lam: float, fixed: int
) -> list[int]:
    """The greedy loop one candidate at a time: what the buffered one must match. The
    similarity penalty is never below 0 (negative similarities earn nothing)."""
    picked = list(range(min(fixed, len(rel), k)))
    floor = [0.0]
    while len(picked) < min(k, len(rel)):
        best, best_gain = -1, -np.inf
        for i in range(len(rel)):
            if i in picked:
                continue
            sim = max([*floor, *(float(vectors[i] @ vectors[j]) for j in picked)])
            gain = lam * float(rel[i]) - (1.0 - lam) * sim
            if gain > best_gain + 1e-9:
                best, best_gain = i, gain
        picked.append(best)
    return picked


@unit
@pytest.mark.parametrize("seed", range(20))
def test_mmr_matches_the_greedy_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    vectors = _rng_unit_rows(n, 8, seed=seed)
    rel = rng.random(n).astype(np.float32)
    for lam in (0.3, 0.8):
        for fixed in (0, 2):
            assert mmr(rel, vectors, 10, lam, fixed=fixed) == _mmr_by_definition(
                rel, vectors, 10, lam, fixed
            )


@unit
def test_head_then_tail_keeps_the_head_and_orders_the_tail_by_its_own_score() -> None:
    rel = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=np.float32)
    tail = np.array([0.0, 1.0, 0.0, 0.2, 0.9, 0.5])  # would put row 1 first over the whole list
    vectors = _rng_unit_rows(6, 8, seed=5)
    assert head_then_tail(rel, tail, vectors, 5, 2, 1.0) == [0, 1, 4, 5, 3]
    assert head_then_tail(rel, tail, vectors, 5, 0, 1.0) == [1, 4, 5, 3, 0]
    assert head_then_tail(rel, tail, vectors, 5, 5, 1.0) == [0, 1, 2, 3, 4]


@unit
@pytest.mark.parametrize("seed", range(10))
def test_head_then_tail_with_one_score_is_plain_mmr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rel = rng.random(90)
    vectors = _rng_unit_rows(90, 8, seed=seed)
    pool = [int(i) for i in np.argsort(-rel, kind="stable")][:40]
    plain = [pool[i] for i in mmr(rel[pool], vectors[pool], 10, 0.7)]
    assert head_then_tail(rel, rel, vectors, 10, 4, 0.7) == plain


@unit
def test_covisit_tail_blends_on_the_list_scale() -> None:
    rel = np.array([2.0, 1.0, 0.0])
    assert covisit_tail(rel, np.zeros(3), 0.3) is None  # no evidence: the scorer's order
    assert covisit_tail(rel, np.array([-1.0, 0.0, 0.0]), 0.3) is None
    blended = covisit_tail(rel, np.array([0.0, 0.0, 5.0]), 0.3)
    assert blended is not None
    np.testing.assert_allclose(blended, [0.7, 0.35, 0.3])
    only_rel = covisit_tail(rel, np.array([0.0, 0.0, 5.0]), 0.0)
    assert only_rel is not None
    np.testing.assert_allclose(only_rel, [1.0, 0.5, 0.0])


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    k=st.integers(0, 12),
    lam=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    fixed=st.integers(0, 4),
    seed=st.integers(0, 1000),
)
@unit
def test_mmr_many_picks_what_each_list_picks_alone(
    sizes: list[int], k: int, lam: float, fixed: int, seed: int
) -> None:
    """The batched loop pads lists to the longest: padding must never change a list's picks."""
    rng = np.random.default_rng(seed)
    rels = [rng.random(n).astype(np.float32) for n in sizes]
    vecs = [_rng_unit_rows(n, 6, seed + i) if n else np.zeros((0, 6)) for i, n in enumerate(sizes)]
    fixeds = [min(fixed, n) for n in sizes]
    together = mmr_many(rels, vecs, [k] * len(sizes), lam, fixed=fixeds)
    # one list alone has no padding (and the greedy definition is checked on mmr above)
    alone = [mmr(r, v, k, lam, fixed=f) for r, v, f in zip(rels, vecs, fixeds, strict=True)]
    assert together == alone
    # a selection of rows is the same as the selected pool passed in
    rows = [rng.permutation(n)[: max(n // 2, 0)] for n in sizes]
    selected = mmr_many(rels, vecs, [k] * len(sizes), lam, rows=rows)
    assert selected == mmr_many(
        [r[i] for r, i in zip(rels, rows, strict=True)],
        [v[i] for v, i in zip(vecs, rows, strict=True)],
        [k] * len(sizes),
        lam,
    )


@unit
@pytest.mark.parametrize("seed", range(5))
def test_head_then_tail_many_is_each_list_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [90, 12, 0, 45]
    rels = [rng.random(n) for n in sizes]
    tails = [rng.random(n) for n in sizes]
    vecs = [_rng_unit_rows(n, 8, seed + n) if n else np.zeros((0, 8)) for n in sizes]
    together = head_then_tail_many(rels, tails, vecs, [10] * 4, [7, 7, 7, 3], 0.7)
    alone = [
        head_then_tail(r, t, v, 10, h, 0.7)
        for r, t, v, h in zip(rels, tails, vecs, [7, 7, 7, 3], strict=True)
    ]
    assert together == alone


@unit
def test_mmr_edge_cases() -> None:
    vectors = _rng_unit_rows(3, 4, seed=3)
    rel = np.array([0.3, 0.2, 0.1], dtype=np.float32)
    assert mmr(np.array([], dtype=np.float32), np.zeros((0, 4)), 5, 0.5) == []
    assert mmr(rel, vectors, 0, 0.5) == []
    assert sorted(mmr(rel, vectors, 10, 0.5)) == [0, 1, 2]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 25),
    k=st.integers(1, 30),
    lam=st.floats(0.0, 1.0),
    fixed=st.integers(0, 5),
    seed=st.integers(0, 1000),
)
@unit
def test_mmr_returns_distinct_valid_indices(
    n: int, k: int, lam: float, fixed: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rel = rng.random(n).astype(np.float32)
    picks = mmr(rel, _rng_unit_rows(n, 6, seed), k, lam, fixed=fixed)
    assert len(picks) == min(k, n)
    assert len(set(picks)) == len(picks)
    assert all(0 <= i < n for i in picks)
    assert picks[: min(fixed, k, n)] == list(range(min(fixed, k, n)))


# ==== reasons =================================================================================


@unit
def test_nearest_anchor_explains_each_item() -> None:
    anchors = [
        item_anchor("Toy Story (1995)", "view", uvec((0, 1.0))),
        item_anchor("Heat (1995)", "purchase", uvec((1, 1.0))),
        text_anchor("space opera", "search", uvec((2, 1.0))),
    ]
    items = np.stack([uvec((1, 1.0), (0, 0.3)), uvec((0, 1.0), (1, 0.3)), uvec((2, 1.0))])
    reasons = [explain(a, source="content") for a in nearest_anchors(items, anchors)]
    assert reasons == [
        ["similar to 'Heat (1995)' you bought"],
        ["similar to 'Toy Story (1995)' you viewed"],
        ["matches your search 'space opera'"],
    ]
    assert nearest_anchors(items, []) == [None, None, None]


@unit
def test_explain_channels_and_fallback() -> None:
    anchor = Anchor("because", uvec((0, 1.0)))
    assert explain(anchor, source="trending") == ["because", "trending now"]
    assert explain(None, source="trending") == ["trending now"]
    assert explain(None, source="content") == ["popular with other users"]
    assert explain(None, source="covisit", extra={"c": "watched together"}) == ["watched together"]


@unit
def test_anchor_labels() -> None:
    assert item_anchor("X", "add_to_cart", uvec((0, 1.0))).label == (
        "similar to 'X' you added to your cart"
    )
    assert item_anchor("X", "mystery", uvec((0, 1.0))).label == "similar to 'X' you liked"
    assert text_anchor("westerns", "profile", uvec((0, 1.0))).label == (
        "matches your interest in 'westerns'"
    )
    assert text_anchor("meh", "other", uvec((0, 1.0))).label == "matches 'meh'"
    long = item_anchor("word " * 40, "view", uvec((0, 1.0))).label
    title = long.removeprefix("similar to '").removesuffix("' you viewed")
    assert len(title) == 60 and title.endswith("…")
    assert "  " not in text_anchor("a \n\t b", "search", uvec((0, 1.0))).label


# ==== _guarantee_cold ===========================================================================


def _cands(cosine: Sequence[float], cold: Sequence[int]) -> Candidates:
    """Candidates with the given cosines; ``cold`` is 0/1 per row."""
    n = len(cosine)
    return Candidates(
        ids=[f"c{i}" for i in range(n)],
        vectors=np.eye(n, DIM, dtype=np.float32),
        cosine=np.asarray(cosine, dtype=np.float32),
        popularity=np.where(np.asarray(cold), 0.0, 5.0).astype(np.float32),
        categories=[None] * n,
        is_cold=np.asarray(cold, dtype=bool),
    )


@unit
def test_guarantee_cold_replaces_tail_warm_picks() -> None:
    #            0     1     2     3     4      5      6
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.3, 0.5, 0.1], [0, 0, 0, 0, 1, 1, 1])
    out = _guarantee_cold([0, 1, 2, 3], cands, 2)
    assert out == [0, 1, 5, 4]  # head kept in order; best cold by content first
    assert len(out) == 4


@unit
def test_guarantee_cold_counts_cold_already_picked() -> None:
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.3, 0.5], [0, 0, 0, 0, 1, 1])
    assert _guarantee_cold([0, 4, 1, 2], cands, 2) == [0, 4, 1, 5]
    assert _guarantee_cold([0, 4, 5, 1], cands, 2) == [0, 4, 5, 1]


@unit
def test_guarantee_cold_no_op_cases() -> None:
    cands = _cands([0.9, 0.8, 0.7], [0, 0, 0])
    assert _guarantee_cold([0, 1], cands, 2) == [0, 1]  # nothing cold to add
    cands = _cands([0.9, 0.8, 0.7], [0, 0, 1])
    assert _guarantee_cold([0, 1], cands, 0) == [0, 1]  # no slots asked


@unit
def test_guarantee_cold_fewer_cold_than_slots() -> None:
    cands = _cands([0.9, 0.8, 0.7, 0.2], [0, 0, 0, 1])
    assert _guarantee_cold([0, 1, 2], cands, 3) == [0, 1, 3]


@unit
def test_guarantee_cold_never_lengthens_the_list() -> None:
    cands = _cands([0.9, 0.5, 0.4], [0, 1, 1])
    assert len(_guarantee_cold([0], cands, 2)) == 1


@unit
def test_guarantee_cold_skips_capped_new_items_for_the_next_in_order() -> None:
    #            0     1     2     3      4      5
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.5, 0.3], [0, 0, 0, 1, 1, 1])
    capped = {"c3"}.__contains__  # the best new item had its share of the recent lists
    assert _guarantee_cold([0, 1, 2], cands, 1, capped=capped) == [0, 1, 4]
    assert _guarantee_cold([0, 1, 2], cands, 2, capped=capped) == [0, 4, 5]


@unit
def test_guarantee_cold_falls_back_to_capped_items_rather_than_leave_a_slot_empty() -> None:
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.5], [0, 0, 0, 1, 1])
    capped = {"c3", "c4"}.__contains__
    assert _guarantee_cold([0, 1, 2], cands, 1, capped=capped) == [0, 1, 3]
    only_one = {"c3"}.__contains__
    assert _guarantee_cold([0, 1, 2], cands, 2, capped=only_one) == [0, 4, 3]


@unit
def test_guarantee_cold_keeps_a_capped_item_the_ranker_picked_itself() -> None:
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.5], [0, 0, 0, 1, 1])
    assert _guarantee_cold([0, 3, 1], cands, 1, capped={"c3"}.__contains__) == [0, 3, 1]


@unit
def test_guarantee_cold_follows_a_given_order() -> None:
    #            0     1     2     3      4      5
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.5, 0.3], [0, 0, 0, 0, 1, 1])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 0.1, 0.9], dtype=np.float32)
    assert _guarantee_cold([0, 1, 2, 3], cands, 1) == [0, 1, 2, 4]  # by cosine
    assert _guarantee_cold([0, 1, 2, 3], cands, 1, scores) == [0, 1, 2, 5]  # by the scorer


@unit
def test_cold_slots_minimum_and_content_share() -> None:
    # content's top 4 by cosine holds 3 cold items (rows 0, 2, 3)
    cands = _cands([0.9, 0.8, 0.7, 0.6, 0.5, 0.1], [1, 0, 1, 1, 0, 1])
    assert _cold_slots(cands, 4, 1) == 3
    assert _cold_slots(cands, 4, 1, 1.0) == 3
    assert _cold_slots(cands, 4, 1, 0.5) == 2  # 1.5 rounds half up
    assert _cold_slots(cands, 4, 1, 0.25) == 1  # 0.75 → 1
    assert _cold_slots(cands, 4, 2, 0.1) == 2  # the minimum holds
    assert _cold_slots(cands, 4, 0, 1.0) == 0  # minimum 0 disables the slots
    # another content key (e.g. the mean of the recent items) decides which top k is counted
    key = np.array([0.1, 0.9, 0.2, 0.3, 0.8, 0.7], dtype=np.float32)  # top 4: 1, 4, 5, 3
    assert _cold_slots(cands, 4, 1, 1.0, key) == 2


# ==== BehaviorEngine over a real store ========================================================

ITEMS: dict[str, tuple[np.ndarray, str, bool]] = {
    # id: (vector, category, active)
    "a0": (uvec((0, 1.0)), "A", True),
    "a1": (uvec((0, 1.0), (1, 0.10)), "A", True),
    "a2": (uvec((0, 1.0), (2, 0.20)), "A", True),
    "a3": (uvec((0, 1.0), (3, 0.15)), "A", True),
    "a4": (uvec((0, 1.0), (4, 0.25)), "A", True),
    "a5": (uvec((0, 1.0), (5, 0.30)), "A", True),
    "retired": (uvec((0, 1.0), (1, 0.05)), "A", False),
    "b0": (uvec((6, 1.0)), "B", True),
    "b1": (uvec((7, 1.0)), "B", True),
}


def engine_for(store: QdrantStore, **overrides: Any) -> BehaviorEngine:
    """An engine on ``store`` with the ITEMS catalog loaded (4 recs, no cold slots by default)."""
    s = Settings()
    cfg = EngineConfig(
        profile=ProfileConfig(
            weights=s.event_weights(), half_life_s=72 * HOUR, recent_max=20, seen_max=2000
        ),
        **{"recs_count": 4, "recall_top_n": 50, "cold_item_slots": 0, **overrides},
    )
    store.ensure_collection(cfg.items_collection, DIM)
    store.ensure_collection(cfg.users_collection, DIM)
    store.ensure_collection(cfg.state_collection, 1)
    store.upsert(
        cfg.items_collection,
        [
            StoredPoint(
                item_id,
                vec,
                {"title": f"Title {item_id}", "category": cat, "active": active, "created_at": 0.0},
            )
            for item_id, (vec, cat, active) in ITEMS.items()
        ],
    )
    return BehaviorEngine(store, cfg, BlendScorer(0.3))


_counter = iter(range(1_000_000))


def ev(
    user: str,
    kind: str = "view",
    item: str | None = None,
    *,
    ts: float = T0,
    event_id: str | None = None,
    partition: int | None = 0,
    offset: int | None = None,
    text: str | None = None,
    rating: float | None = None,
) -> Interaction:
    n = next(_counter)
    return Interaction(
        event_id=event_id or f"ev{n}",
        user_id=user,
        type=kind,
        ts=ts,
        item_id=item,
        text=text,
        rating=rating,
        partition=partition,
        offset=n if offset is None else offset,
    )


def run(
    engine: BehaviorEngine, events: list[Interaction], texts: np.ndarray | None = None
) -> BatchOutcome:
    prep = engine.prepare(events)
    return engine.apply(prep, texts)


def recs_of(outcome_recs: list[UserRecs], user: str) -> list[str]:
    (mine,) = [r for r in outcome_recs if r.user_id == user]
    return [i.item_id for i in mine.items]


@integration
def test_prepare_rejects_unknown_items(store: QdrantStore) -> None:
    engine = engine_for(store)
    events = [ev("u1", "view", "ghost"), ev("u1", "view", "a0"), ev("u1", "search", text="x")]
    prep = engine.prepare(events)
    assert [(r.interaction.item_id, r.reason) for r in prep.rejected] == [("ghost", "unknown_item")]
    assert "ghost" in prep.rejected[0].message
    assert [e.item_id for e in prep.to_apply] == ["a0", None]
    assert prep.texts == [("search", "x")]
    assert prep.users == ["u1"]
    assert "a0" in prep.items and "ghost" not in prep.items


@integration
def test_prepare_holds_the_events_of_a_user_with_an_unknown_item(store: QdrantStore) -> None:
    """``hold_unknown``: every event of that user in the batch waits, in order; other users'
    events go ahead, and nothing is rejected."""
    engine = engine_for(store)
    events = [
        ev("u1", "view", "a0"),
        ev("u1", "click", "fresh"),
        ev("u2", "view", "a1"),
        ev("u1", "search", text="later"),
        ev("u3", "view", "a3"),
        ev("u1", "view", "a2"),
        ev("u2", "view", "ghost"),
    ]
    prep = engine.prepare(events, hold_unknown=True)
    assert prep.rejected == []
    assert [(e.user_id, e.item_id) for e in prep.to_apply] == [("u3", "a3")]
    assert [(e.user_id, e.item_id, e.text) for e in prep.held] == [
        ("u1", "a0", None),
        ("u1", "fresh", None),
        ("u2", "a1", None),
        ("u1", None, "later"),
        ("u1", "a2", None),
        ("u2", "ghost", None),
    ]
    assert prep.texts == []  # the held search is encoded when it is applied
    out = engine.apply(prep, None)
    assert out.applied == 1 and out.held == prep.held
    assert [r.user_id for r in out.recommendations] == ["u3"]
    # prepared again without holding: the still unknown ones are rejected, the rest applied
    again = engine.prepare(out.held)
    assert [r.interaction.item_id for r in again.rejected] == ["fresh", "ghost"]
    assert [(e.user_id, e.item_id) for e in again.to_apply] == [
        ("u1", "a0"),
        ("u2", "a1"),
        ("u1", None),
        ("u1", "a2"),
    ]


@integration
def test_prepare_skips_replays_and_duplicates(store: QdrantStore) -> None:
    engine = engine_for(store)
    first = ev("u1", "view", "a0", event_id="e-1", partition=0, offset=5)
    out = run(engine, [first])
    assert out.applied == 1

    replay_same = ev("u1", "view", "a0", event_id="e-1", partition=0, offset=5)
    replay_older = ev("u1", "view", "a1", event_id="e-x", partition=0, offset=3)
    dup_id_new_offset = ev("u1", "view", "a1", event_id="e-1", partition=0, offset=9)
    fresh = ev("u1", "view", "a1", event_id="e-2", partition=0, offset=6)
    same_in_batch = ev("u1", "view", "a2", event_id="e-2", partition=None, offset=None)
    other_partition = ev("u1", "view", "a2", event_id="e-3", partition=1, offset=0)
    prep = engine.prepare(
        [replay_same, replay_older, dup_id_new_offset, fresh, same_in_batch, other_partition]
    )
    # the reason is what the skipped-events metric is labelled with
    assert [(s.interaction, s.reason) for s in prep.skipped] == [
        (replay_same, "replayed_offset"),
        (replay_older, "replayed_offset"),
        (dup_id_new_offset, "duplicate_event"),
        (same_in_batch, "duplicate_event"),
    ]
    assert prep.to_apply == [fresh, other_partition]
    out = engine.apply(prep, None)
    assert out.applied == 2
    assert out.skipped == prep.skipped
    (user,) = store.retrieve("users", ["u1"]).values()
    assert user.payload["event_count"] == 3
    assert user.payload["offsets"] == {"0": 6, "1": 0}
    # a repeat is per user, in a batch as across batches: another user's event with the
    # same id is applied (it used to be skipped when both came in one batch)
    mine = ev("u2", "view", "a0", event_id="shared", partition=0, offset=20)
    theirs = ev("u3", "view", "a1", event_id="shared", partition=0, offset=21)
    again = ev("u3", "view", "a1", event_id="shared", partition=0, offset=22)
    out = run(engine, [mine, theirs, again])
    assert out.applied == 2
    assert [(s.interaction, s.reason) for s in out.skipped] == [(again, "duplicate_event")]


@integration
def test_a_replayed_batch_lists_its_users_again(store: QdrantStore) -> None:
    """A redelivered batch applies nothing, but its users' lists go out again: the process
    that applied it may have died before they reached the broker."""
    engine = engine_for(store)
    batch = [
        ev("u1", "view", "a0", event_id="e-1", partition=0, offset=5),
        ev("u2", "view", "a1", event_id="e-2", partition=0, offset=6),
        ev("u1", "click", "a2", event_id="e-3", partition=0, offset=7),
    ]
    first = run(engine, batch)
    assert [(r.user_id, r.trigger.event_id) for r in first.recommendations] == [
        ("u1", "e-3"),
        ("u2", "e-2"),
    ]
    again = run(engine, batch)
    assert again.applied == 0 and [s.interaction for s in again.skipped] == batch
    assert {s.reason for s in again.skipped} == {"replayed_offset"}
    assert [(r.user_id, r.trigger.event_id, r.profile_events) for r in again.recommendations] == [
        ("u1", "e-3", 2),
        ("u2", "e-2", 1),
    ]
    # a new record repeating an applied event id is a duplicate, not a replay: no list
    dup = ev("u1", "view", "a0", event_id="e-1", partition=0, offset=8)
    out = run(engine, [dup])
    assert [(s.interaction, s.reason) for s in out.skipped] == [(dup, "duplicate_event")]
    assert out.recommendations == []
    # a replay beside a new event of the same user: one list, triggered by the new event
    new = ev("u2", "view", "b0", event_id="e-4", partition=0, offset=9)
    out = run(engine, [batch[1], new])
    assert [(r.user_id, r.trigger.event_id) for r in out.recommendations] == [("u2", "e-4")]
    (u2,) = store.retrieve("users", ["u2"]).values()
    assert u2.payload["event_count"] == 2


@integration
def test_a_batch_whose_recall_fails_after_the_write_still_counts_once(
    store: QdrantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Profiles are written before recall: when recall fails, the retry skips the events, so
    their trending and co-visitation counts must already be in, and only once."""
    engine = engine_for(store)
    run(engine, [ev("u1", "view", "a0", event_id="e-1", partition=0, offset=1)])
    batch = [ev("u1", "view", "a1", event_id="e-2", partition=0, offset=2)]

    def unavailable(collection: str, queries: object) -> list[list[object]]:
        raise StoreUnavailable("connection reset (test)")

    monkeypatch.setattr(store, "search", unavailable)
    with pytest.raises(StoreUnavailable):
        run(engine, batch)
    monkeypatch.undo()
    again = run(engine, batch)  # the retry: a replay, listed again, counted nowhere
    assert [r.trigger.event_id for r in again.recommendations] == ["e-2"]
    # reported once, by the retry (the failed step reported nothing): applied, not a replay
    assert again.applied == 1 and again.skipped == []
    assert engine.covisit[0].pairs["a0"] == {"a1": 1.0}
    assert engine.covisit[0].count("a1") == 1.0
    redelivered = run(engine, batch)  # once listed, a redelivery is a replay again
    assert redelivered.applied == 0 and [s.reason for s in redelivered.skipped] == [
        "replayed_offset"
    ]


@integration
def test_a_replayed_event_on_an_unknown_item_is_dead_lettered_again(store: QdrantStore) -> None:
    """Its first dead letter may be lost with the crash, like a list: rejected again, not
    skipped as applied (only applied events' ids are in the profile), and never held."""
    engine = engine_for(store)
    batch = [
        ev("u1", "view", "ghost", event_id="e-1", partition=0, offset=1),
        ev("u1", "view", "a0", event_id="e-2", partition=0, offset=2),
    ]
    first = run(engine, batch)
    assert [r.interaction.event_id for r in first.rejected] == ["e-1"] and first.applied == 1
    again = engine.prepare(batch, hold_unknown=True)
    assert again.held == [] and again.to_apply == []
    assert [(r.interaction.event_id, r.reason) for r in again.rejected] == [("e-1", "unknown_item")]
    assert [s.interaction for s in again.skipped] == [batch[1]] and list(again.relist) == ["u1"]


@integration
def test_offsets_of_another_log_are_not_taken_for_replays(store: QdrantStore) -> None:
    """Applied offsets count in one log (the events topic's id): after the topic was made
    again, or a memory-only broker restarted, its offsets start over from 0, and a profile's
    old offsets must not make the new records look like replays."""
    engine = engine_for(store)
    engine.offsets_log = "topic-life-1"
    assert run(engine, [ev("u1", "view", "a0", event_id="e-1", partition=0, offset=5)]).applied
    replay = run(engine, [ev("u1", "view", "a0", event_id="e-1", partition=0, offset=5)])
    assert replay.applied == 0  # the same log: a redelivery, skipped
    engine.offsets_log = "topic-life-2"
    fresh = run(engine, [ev("u1", "click", "a1", event_id="e-2", partition=0, offset=0)])
    assert fresh.applied == 1 and fresh.skipped == []
    stored = store.retrieve("users", ["u1"])["u1"].payload
    assert stored["offsets_log"] == "topic-life-2" and stored["offsets"] == {"0": 0}
    assert stored["event_count"] == 2
    again = run(engine, [ev("u1", "click", "a1", event_id="e-2", partition=0, offset=0)])
    assert again.applied == 0  # and the new log's offsets guard as before


@integration
def test_apply_updates_and_writes_profiles(store: QdrantStore) -> None:
    engine = engine_for(store)
    events = [
        ev("u1", "view", "a0", ts=T0),
        ev("u2", "purchase", "b0", ts=T0),
        ev("u1", "click", "b1", ts=T0 + HOUR),
    ]
    out = run(engine, events)
    assert out.applied == 3 and out.rejected == [] and out.skipped == []
    assert [r.user_id for r in out.recommendations] == ["u1", "u2"]
    by_user = {r.user_id: r for r in out.recommendations}
    assert by_user["u1"].trigger == events[2]
    assert by_user["u1"].profile_events == 2

    stored = store.retrieve("users", ["u1", "u2"])
    u1, u2 = stored["u1"], stored["u2"]
    assert u1.payload["event_count"] == 2
    assert u1.payload["seen"] == ["a0", "b1"]
    assert u1.payload["has_vector"] is True
    keep = 0.5 ** (1 / 72)
    expected = keep * ITEMS["a0"][0] + 1.5 * ITEMS["b1"][0]
    assert u1.vector is not None and u2.vector is not None
    np.testing.assert_allclose(u1.vector, expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_allclose(u2.vector, ITEMS["b0"][0], atol=1e-5)
    assert u1.payload["categories"] == pytest.approx({"A": keep, "B": 1.5})

    # the next batch starts from the stored profile, not from scratch
    out = run(engine, [ev("u1", "view", "a1", ts=T0 + HOUR)])
    assert out.recommendations[0].profile_events == 3


@integration
def test_recommendations_exclude_seen_and_inactive(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=10)
    out = run(engine, [ev("u1", "view", "a0"), ev("u1", "view", "a1")])
    recs = recs_of(out.recommendations, "u1")
    assert recs, "a user with a profile gets recommendations"
    assert not {"a0", "a1", "retired"} & set(recs)
    assert set(recs) == {"a2", "a3", "a4", "a5", "b0", "b1"}
    items = out.recommendations[0].items
    assert all(i.source == "content" for i in items)
    assert all(i.reasons for i in items)
    assert items[0].reasons[0] in {
        "similar to 'Title a0' you viewed",
        "similar to 'Title a1' you viewed",
    }

    # retiring an item takes it out of later lists
    store.set_payload("items", ["a2"], {"active": False})
    out = run(engine, [ev("u1", "view", "a3")])
    recs = recs_of(out.recommendations, "u1")
    assert not {"a0", "a1", "a2", "a3", "retired"} & set(recs)


@integration
def test_reasons_name_the_event_type(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=1, mmr_lambda=1.0)
    out = run(engine, [ev("u1", "purchase", "b0")])
    (rec,) = out.recommendations[0].items
    assert rec.reasons == ["similar to 'Title b0' you bought"]


@integration
def test_recommendations_follow_the_profile(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=2, mmr_lambda=1.0)
    out = run(engine, [ev("u1", "view", "a0")])
    assert recs_of(out.recommendations, "u1") == ["a1", "a3"]  # nearest to e0, by cosine


@integration
def test_text_events_need_their_vectors(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=2, mmr_lambda=1.0)
    prep = engine.prepare([ev("u1", "search", text="space opera", partition=0)])
    with pytest.raises(ValueError):
        engine.apply(prep, None)
    out = engine.apply(prep, np.stack([ITEMS["b0"][0]]))
    recs = out.recommendations[0].items
    assert recs[0].item_id == "b0"
    assert recs[0].reasons == ["matches your search 'space opera'"]
    (user,) = store.retrieve("users", ["u1"]).values()
    assert user.payload["texts"][0]["text"] == "space opera"


@integration
def test_review_blends_text_and_item(store: QdrantStore) -> None:
    engine = engine_for(store)
    out = run(engine, [ev("u1", "review", "a0", text="loved it")], np.stack([ITEMS["b0"][0]]))
    assert out.applied == 1
    (user,) = store.retrieve("users", ["u1"]).values()
    assert user.vector is not None
    expected = ITEMS["a0"][0] + ITEMS["b0"][0]
    np.testing.assert_allclose(user.vector, expected / np.linalg.norm(expected), atol=1e-5)


def _crowd(engine: BehaviorEngine, partition: int = 0, ts: float = T0) -> None:
    """Other users make a1 > a2 > a3 > a4 popular (4, 3, 2, 1 views)."""
    events = []
    for n, item in enumerate(["a1", "a2", "a3", "a4"]):
        for k in range(4 - n):
            events.append(ev(f"crowd{k}", "view", item, partition=partition, ts=ts))
    run(engine, events)


@integration
def test_user_without_vector_gets_trending(store: QdrantStore) -> None:
    engine = engine_for(store)
    _crowd(engine)
    # a rating of 0 has weight 0: the profile gets no vector, but the item is seen
    out = run(engine, [ev("newbie", "rate", "a2", rating=0.0)])
    (recs,) = out.recommendations
    assert [i.item_id for i in recs.items] == ["a1", "a3", "a4"]
    assert all(i.source == "trending" and i.reasons == ["trending now"] for i in recs.items)
    assert recs.items[0].score == pytest.approx(1.0)
    assert [i.score for i in recs.items] == sorted((i.score for i in recs.items), reverse=True)
    (user,) = store.retrieve("users", ["newbie"]).values()
    assert user.payload["has_vector"] is False
    # a brand-new user straight through recommend()
    fresh = engine.recommend([Profile("nobody")], {})
    assert [i.item_id for i in fresh["nobody"]] == ["a1", "a2", "a3", "a4"]


@integration
def test_trending_lists_leave_retired_items_out(store: QdrantStore) -> None:
    """Trending counts events, not the catalog's state: a retired item kept its count and was
    the first item of every trending-only list (found by review)."""
    engine = engine_for(store, recs_count=2)
    _crowd(engine)  # a1 > a2 > a3 > a4
    store.set_payload("items", ["a1", "a3"], {"active": False})
    out = run(engine, [ev("newbie", "rate", "a2", rating=0.0)])  # no vector: trending only
    (recs,) = out.recommendations
    # twice the room (4) held a1, a3, a4: one round more found nothing else to fill with
    assert [i.item_id for i in recs.items] == ["a4"]
    fresh = engine.recommend([Profile("nobody"), Profile("other", seen=["a4"])], {})
    assert [i.item_id for i in fresh["nobody"]] == ["a2", "a4"]
    assert [i.item_id for i in fresh["other"]] == ["a2"]
    assert fresh["nobody"][0].score == pytest.approx(1.0)


@integration
def test_cold_items_get_their_slots(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=4, cold_item_slots=2)
    _crowd(engine)
    out = run(engine, [ev("u1", "view", "a0")])
    recs = recs_of(out.recommendations, "u1")
    popular = set(merged_scores(engine.trending.values(), None))
    cold = [i for i in recs if i not in popular]
    assert len(recs) == 4
    assert len(cold) >= 2
    assert "a5" in cold  # the best cold item by content
    assert "a0" not in recs


@integration
def test_the_exposure_cap_spreads_new_item_slots_over_new_items(store: QdrantStore) -> None:
    # at most 1 of any 2 lists may get a given new item through the slot
    engine = engine_for(
        store,
        recs_count=4,
        cold_item_slots=1,
        cold_exposure_max_share=0.5,
        cold_exposure_window=2,
    )
    _crowd(engine)
    out = run(engine, [ev(f"u{n}", "view", "a0") for n in range(4)])
    new = {"a5", "b0", "b1"}  # never visited before the batch
    shown = [[i for i in recs_of(out.recommendations, f"u{n}") if i in new] for n in range(4)]
    assert all(len(items) == 1 for items in shown)  # the slot stays filled
    # uncapped, a5 (the best new item by content) takes every slot; capped, no new item
    # fills two lists in a row (the crowd's lists before count too)
    slot = [items[0] for items in shown]
    assert "a5" in slot and len(set(slot)) >= 2
    assert all(a != b for a, b in itertools.pairwise(slot))
    assert sum(engine.exposure.shown(i) for i in new) == 2  # the window: the last 2 lists


@integration
def test_without_cold_slots_popular_items_win(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=4, cold_item_slots=0)
    _crowd(engine)
    out = run(engine, [ev("u1", "view", "a0")])
    assert set(recs_of(out.recommendations, "u1")) == {"a1", "a2", "a3", "a4"}


@integration
def test_the_engine_reads_item_ages_from_its_clock(store: QdrantStore) -> None:
    created = time.time()
    for hours_later, is_new in ((1.0, True), (100.0, False)):  # the new-item window is 72 h
        engine = engine_for(store, recs_count=4, cold_item_slots=2)
        engine.clock = lambda h=hours_later: created + h * HOUR
        _crowd(engine)
        store.set_payload("items", ["a4"], {"created_at": created})
        recs = recs_of(run(engine, [ev("u1", "view", "a0")]).recommendations, "u1")
        assert ("a4" in recs) is is_new  # popular a4 gets a new-item slot only while new


@integration
def test_new_items_count_as_cold_even_when_popular(store: QdrantStore) -> None:
    engine = engine_for(store, recs_count=4, cold_item_slots=2)
    _crowd(engine)
    store.set_payload("items", ["a4"], {"created_at": time.time()})
    out = run(engine, [ev("u1", "view", "a0")])
    recs = recs_of(out.recommendations, "u1")
    assert "a4" in recs and "a5" in recs
    assert len(recs) == 4


@integration
def test_trending_persist_and_load(store: QdrantStore) -> None:
    engine = engine_for(store)
    _crowd(engine, partition=3)
    assert engine.persist_trending() == 1
    assert engine.persist_trending() == 0  # nothing changed since
    other = BehaviorEngine(store, engine.cfg, BlendScorer(0.3))
    other.load_trending([3, 7])
    assert set(other.trending) == {3}
    assert other.trending[3].scores == engine.trending[3].scores
    other.drop_trending([3])
    assert other.trending == {}


def test_a_batch_applied_after_its_partition_was_revoked_leaves_its_counts_alone(
    store: QdrantStore,
) -> None:
    """A batch prepared before a revocation and applied after it (it waited on the encoder)
    made a fresh counter for the partition, and the next save wrote it over the saved counts
    the new owner reads. Found by review."""
    engine = engine_for(store)
    items = list(ITEMS)

    def ev(n: int, user: str, item: str) -> Interaction:
        return Interaction(f"r{n}", user, "view", T0 + n, item_id=item, partition=0, offset=n)

    engine.load_trending([0])
    engine.apply(engine.prepare([ev(1, "ru1", items[0]), ev(2, "ru1", items[1])]), None)
    engine.persist_trending()
    saved = store.retrieve(engine.cfg.state_collection, [trending_key(0)], with_vectors=False)
    prep = engine.prepare([ev(3, "ru2", items[2]), ev(4, "ru2", items[3])])
    engine.drop_trending([0])  # revoked while the batch waited
    engine.apply(prep, None)
    assert 0 not in engine.trending and 0 not in engine.covisit
    assert engine.persist_trending() == 0
    again = store.retrieve(engine.cfg.state_collection, [trending_key(0)], with_vectors=False)
    assert again[trending_key(0)].payload == saved[trending_key(0)].payload
    engine.load_trending([0])  # assigned again: it counts again
    engine.apply(engine.prepare([ev(5, "ru3", items[4])]), None)
    assert engine.persist_trending() == 1


@integration
def test_unreadable_stored_counts_start_the_partition_from_none(
    store: QdrantStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Counts written by another version (an unknown format) or damaged are soft state: the
    partition starts from none, logged; before, they raised at every assignment."""
    engine = engine_for(store)
    _crowd(engine, partition=3)
    engine.persist_trending()
    state = engine.cfg.state_collection
    store.upsert(
        state,
        [
            StoredPoint(trending_key(5), np.zeros(1, np.float32), {"scores": "not counts"}),
            StoredPoint(covisit_key(5), np.zeros(1, np.float32), {"format": 99, "items": []}),
        ],
    )
    other = BehaviorEngine(store, engine.cfg, BlendScorer(0.3))
    with caplog.at_level(logging.ERROR, logger="ranking.engine"):
        other.load_trending([3, 5])
    assert set(other.trending) == {3} and 5 not in other.covisit
    assert "trending counts unreadable" in caplog.text and "unknown format 99" in caplog.text


@integration
def test_trending_prefers_fresh_over_stale_across_partitions(store: QdrantStore) -> None:
    engine = engine_for(store)
    # 3 views of a1 on partition 1, ten days ago; 2 views of b0 on partition 0, now
    run(engine, [ev(f"s{k}", "view", "a1", partition=1, ts=T0) for k in range(3)])
    run(engine, [ev(f"f{k}", "view", "b0", partition=0, ts=T0 + 240 * HOUR) for k in range(2)])
    recs = engine.recommend([Profile("nobody")], {})["nobody"]
    assert recs[0].item_id == "b0"


@unit
def test_cold_key_orders_new_items_by_the_chosen_signal(store: QdrantStore) -> None:
    engine = engine_for(store, cold_item_slots=1, cold_rank_by="recent")
    cands = _cands([0.9, 0.1, 0.5], [0, 1, 1])
    profile = Profile("u", vector=uvec((0, 1.0)))
    profile.recent_items = ["a", "b"]
    known = {
        "a": StoredPoint("a", uvec((1, 1.0)), {}),
        "b": StoredPoint("b", uvec((1, 1.0)), {}),
    }
    scores = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    key = engine._cold_key(profile, cands, scores, known)
    assert np.allclose(key, cands.vectors @ uvec((1, 1.0)))  # mean of the recent items
    engine.cfg = dataclasses.replace(engine.cfg, cold_rank_by="scorer")
    assert np.array_equal(engine._cold_key(profile, cands, scores, known), scores)
    engine.cfg = dataclasses.replace(engine.cfg, cold_rank_by="content")
    assert np.array_equal(engine._cold_key(profile, cands, scores, known), cands.cosine)
    engine.cfg = dataclasses.replace(engine.cfg, cold_rank_by="recent")
    profile.recent_items = []  # nothing recent: the profile cosine
    assert np.array_equal(engine._cold_key(profile, cands, scores, {}), cands.cosine)


@unit
def test_cold_key_picks_blends_recent_items_and_the_ranked_warm_items(
    store: QdrantStore,
) -> None:
    engine = engine_for(store, cold_item_slots=1, cold_rank_by="picks", cold_picks_anchor=1)
    cands = _cands([0.9, 0.8, 0.1, 0.5], [0, 0, 1, 1])
    profile = Profile("u", vector=uvec((0, 1.0)))
    profile.recent_items = ["a"]
    known = {"a": StoredPoint("a", uvec((2, 1.0)), {})}
    scores = np.zeros(4, dtype=np.float32)
    key = engine._cold_key(profile, cands, scores, known, [1, 0, 2])
    # recent: cosine with item "a" (row 2's direction); picks: cosine with row 1, the top warm
    expected = 0.5 * (cands.vectors @ uvec((2, 1.0))) + 0.5 * (cands.vectors @ uvec((1, 1.0)))
    assert np.allclose(key, expected)
    assert np.allclose(engine._cold_key(profile, cands, scores, known, []), cands.vectors[:, 2])


class _PriorScorer(BlendScorer):
    """The blend, plus an item prior (what a trained ranker carries) favouring dimension 5."""

    def __init__(self) -> None:
        super().__init__(0.3)
        self.prior = ItemPrior(uvec((5, 1.0)) * 2.0, 1.0)


@unit
def test_cold_key_prior_adds_the_weighted_prior_to_the_recent_cosine(store: QdrantStore) -> None:
    engine = engine_for(store, cold_item_slots=1, cold_rank_by="prior", cold_prior_weight=0.5)
    cands = _cands([0.9, 0.1, 0.5], [0, 1, 1])
    profile = Profile("u", vector=uvec((0, 1.0)))
    profile.recent_items = ["a"]
    known = {"a": StoredPoint("a", uvec((1, 1.0)), {})}
    scores = np.zeros(3, dtype=np.float32)
    recent = cands.vectors @ uvec((1, 1.0))
    # a scorer without a prior: the recent cosine alone
    assert np.allclose(engine._cold_key(profile, cands, scores, known), recent)
    engine.scorer = _PriorScorer()
    prior = cands.vectors @ (uvec((5, 1.0)) * 2.0) + 1.0
    assert np.allclose(engine._cold_key(profile, cands, scores, known), recent + 0.5 * prior)


@integration
def test_new_item_channel_brings_the_prior_s_best_new_item_into_the_pool(
    store: QdrantStore,
) -> None:
    # b1 is far from the user (a0) but new and favoured by the prior; recall_top_n = 1 keeps it
    # out of the content pool, so only the new-item channel can bring it
    engine = engine_for(store, recs_count=3, recall_top_n=1, cold_item_slots=1, new_top_n=1)
    engine.scorer = _PriorScorer()
    engine.scorer.prior = ItemPrior(uvec((7, 1.0)) * 3.0, 0.0)
    engine.cfg = dataclasses.replace(
        engine.cfg, cold_rank_by="prior", cold_slots_follow_content=False
    )
    store.set_payload("items", ["b1"], {"created_at": time.time()})
    out = run(engine, [ev("u1", "view", "a0")])
    assert "b1" in recs_of(out.recommendations, "u1")
    (mine,) = [r for r in out.recommendations if r.user_id == "u1"]
    assert {i.source for i in mine.items} <= {"content", "covisit", "trending"}  # the contract
    # without the channel it cannot appear
    store.ensure_collection("users2", DIM)
    engine.cfg = dataclasses.replace(engine.cfg, new_top_n=0, users_collection="users2")
    out = run(engine, [ev("u2", "view", "a0")])
    assert "b1" not in recs_of(out.recommendations, "u2")


@integration
@pytest.mark.parametrize("batch", [0, 1, 2])
def test_the_eval_replay_applies_events_in_time_ordered_batches(
    store: QdrantStore, batch: int
) -> None:
    """``ranking.evaluation.replay``: batches of ``batch`` events in event-time order (0: one),
    each applied before the next is prepared, and each user's list is the one their last
    event triggered (its items exclude everything the user revealed)."""
    from ranking.evaluation import replay
    from ranking.split import Interaction as Revealed

    engine = engine_for(store)
    taken: list[list[str]] = []
    apply = engine.apply

    def spy(prep: Any, vectors: Any) -> BatchOutcome:
        if taken:  # the earlier batches' events are counted before this one is applied
            assert engine.covisit[0].count("a0") == 1.0
        taken.append([e.item_id or "" for e in prep.to_apply])
        return apply(prep, vectors)

    engine.apply = spy  # type: ignore[method-assign]
    revealed = {
        "u2": [Revealed("u2", "a2", T0 + 2, "view", None, None)],
        "u1": [
            Revealed("u1", "a0", T0, "view", None, None),
            Revealed("u1", "a1", T0 + 1, "view", None, None),
        ],
    }
    lists = replay(engine, revealed, None, batch)
    assert [i for b in taken for i in b] == ["a0", "a1", "a2"]  # event time, across users
    assert [len(b) for b in taken] == {0: [3], 1: [1, 1, 1], 2: [2, 1]}[batch]
    assert set(lists) == {"u1", "u2"}
    assert not {"a0", "a1"} & set(lists["u1"]) and "a2" not in lists["u2"]
    assert len(lists["u1"]) == 4


@integration
def test_online_pairs_are_read_at_the_served_snapshots_scale(store: QdrantStore) -> None:
    """Counted in events, read in the snapshot's units: a new snapshot with another scale
    re-reads the same counts (the engine's row cache follows the swap)."""
    from ranking.covisit import CovisitModel

    engine = engine_for(store)
    snapshot = CovisitModel.build([["b0", "b1"]], window=5, neighbors=5)
    engine.swap_covisit(snapshot.with_online_pair_scale(3.0))
    run(engine, [ev("u1", "view", "a0", offset=1)])
    run(engine, [ev("u1", "view", "a1", offset=2)])
    assert engine.covisit[0].pairs["a0"] == {"a1": 1.0}  # the counter keeps events
    assert engine.covisit[0].count("a1") == 1.0
    scaled = engine.covisit_index().scores(["a0"]).get("a1")
    assert scaled == pytest.approx(3.0)  # 3 · 1 / sqrt(1 · 1)
    engine.swap_covisit(snapshot)  # scale 1: the same counts, read once
    assert engine.covisit_index().scores(["a0"]).get("a1") == pytest.approx(1.0)


@integration
def test_a_worker_that_cannot_name_its_log_keeps_the_stored_offsets(store: QdrantStore) -> None:
    """Without the topic's id (the broker did not answer at start) the offsets are trusted as
    they are, as the worker's warning says, not dropped: a redelivery is still a replay. Once
    the id is known again, offsets written meanwhile are taken as that log's."""
    engine = engine_for(store)
    engine.offsets_log = "topic-life-1"
    assert run(engine, [ev("u1", "view", "a0", event_id="e-1", partition=0, offset=5)]).applied
    engine.offsets_log = ""  # a restart that could not learn the id
    replay = run(engine, [ev("u1", "view", "a0", event_id="e-9", partition=0, offset=5)])
    assert replay.applied == 0 and len(replay.skipped) == 1  # a redelivery, by its offset
    stored = store.retrieve("users", ["u1"])["u1"].payload
    assert stored["offsets_log"] == "topic-life-1" and stored["offsets"] == {"0": 5}
    assert run(engine, [ev("u2", "view", "a0", event_id="e-2", partition=0, offset=6)]).applied
    engine.offsets_log = "topic-life-1"  # known again: u2's offset counts in it
    again = run(engine, [ev("u2", "view", "a0", event_id="e-3", partition=0, offset=6)])
    assert again.applied == 0
    assert run(engine, [ev("u2", "view", "a1", event_id="e-4", partition=0, offset=7)]).applied
    stored = store.retrieve("users", ["u2"])["u2"].payload
    assert stored["offsets_log"] == "topic-life-1" and stored["offsets"] == {"0": 7}


@integration
def test_a_write_that_landed_but_raised_is_applied_and_counted_once_by_its_retry(
    store: QdrantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's timeout can raise after the server applied the write: the retry finds the
    events applied. It reports them as applied and counts them in trending and co-visitation,
    which the failed step never got to (they were replays, counted nowhere; found by review)."""
    engine = engine_for(store)
    run(engine, [ev("u1", "view", "a0", event_id="e-1", partition=0, offset=1)])
    batch = [ev("u1", "view", "a1", event_id="e-2", partition=0, offset=2)]
    real_upsert = store.upsert

    def lands_then_raises(collection: str, points: Any) -> None:
        real_upsert(collection, points)
        if collection == "users":
            raise StoreUnavailable("read timeout (test)")

    monkeypatch.setattr(store, "upsert", lands_then_raises)
    with pytest.raises(StoreUnavailable):
        run(engine, batch)
    monkeypatch.undo()
    assert engine.covisit[0].count("a1") == 0.0  # not counted by the failed step
    again = run(engine, batch)
    assert again.applied == 1 and again.skipped == []
    assert [r.trigger.event_id for r in again.recommendations] == ["e-2"]
    assert engine.covisit[0].pairs["a0"] == {"a1": 1.0} and engine.covisit[0].count("a1") == 1.0
    assert "a1" in engine.trending[0].scores
    run(engine, batch)  # a redelivery now: counted nowhere
    assert engine.covisit[0].count("a1") == 1.0


@integration
def test_records_of_a_failed_batch_retried_one_by_one_are_each_reported_applied(
    store: QdrantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``streams.agents.guarded`` retries a batch that failed for no outage record by record:
    each record's retry reports its own event as applied (the first retry used to forget the
    others' written events, which then read as replays)."""
    engine = engine_for(store)
    batch = [
        ev("u1", "view", "a0", event_id="e-1", partition=0, offset=1),
        ev("u2", "view", "a1", event_id="e-2", partition=0, offset=2),
    ]
    real = engine.recommend

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("a scorer bug (test)")

    monkeypatch.setattr(engine, "recommend", broken)
    with pytest.raises(RuntimeError):
        run(engine, batch)
    monkeypatch.setattr(engine, "recommend", real)
    outcomes = [run(engine, [e]) for e in batch]
    assert [o.applied for o in outcomes] == [1, 1] and all(o.skipped == [] for o in outcomes)
    engine.begin_batch()  # the next batch starts: a redelivery is a replay again
    assert run(engine, batch[:1]).skipped[0].reason == "replayed_offset"
