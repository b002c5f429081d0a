"""Metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import pytest

from ranking.metrics import (
    catalog_coverage,
    evaluate_lists,
    hit_rate_at_k,
    ndcg_at_k,
    per_user_quality,
    recall_at_k,
)

pytestmark = pytest.mark.unit


def d(rank: int) -> float:
    """Discount of a 1-based rank."""
    return 1.0 / math.log2(rank + 1)


def test_recall_is_hits_over_all_targets() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"b", "d", "x"}, 4) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"b", "d", "x"}, 2) == pytest.approx(1 / 3)
    # Not capped by k: 1 hit in top 1 out of 3 targets is 1/3, not 1/1.
    assert recall_at_k(["b"], {"b", "d", "x"}, 1) == pytest.approx(1 / 3)


def test_empty_targets_and_empty_lists_score_zero() -> None:
    assert recall_at_k(["a"], set(), 5) == 0.0
    assert ndcg_at_k(["a"], set(), 5) == 0.0
    assert hit_rate_at_k(["a"], set(), 5) == 0.0
    assert recall_at_k([], {"a"}, 5) == 0.0
    assert ndcg_at_k([], {"a"}, 5) == 0.0


def test_ndcg_hand_computed() -> None:
    # Hits at ranks 2 and 4 of 4; 3 targets so IDCG has 3 terms.
    got = ndcg_at_k(["a", "b", "c", "d"], {"b", "d", "x"}, 4)
    assert got == pytest.approx((d(2) + d(4)) / (d(1) + d(2) + d(3)))


def test_ndcg_short_target_list_can_reach_one() -> None:
    # One target ranked first: perfect, whatever k is.
    assert ndcg_at_k(["t", "a", "b"], {"t"}, 20) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "t"], {"t"}, 20) == pytest.approx(d(2))


def test_ndcg_ideal_is_capped_by_k() -> None:
    targets = {f"t{i}" for i in range(50)}
    ranked = [f"t{i}" for i in range(20)]
    assert ndcg_at_k(ranked, targets, 20) == pytest.approx(1.0)
    assert recall_at_k(ranked, targets, 20) == pytest.approx(20 / 50)


def test_order_matters_even_when_scores_would_tie() -> None:
    # Metrics see only the order a recommender chose; the earlier position earns more.
    assert ndcg_at_k(["t", "a"], {"t"}, 2) > ndcg_at_k(["a", "t"], {"t"}, 2)
    assert recall_at_k(["t", "a"], {"t"}, 2) == recall_at_k(["a", "t"], {"t"}, 2)


def test_duplicates_in_list_count_once() -> None:
    assert recall_at_k(["t", "t", "u"], {"t", "u"}, 3) == pytest.approx(1.0)
    assert ndcg_at_k(["t", "t"], {"t", "u"}, 2) == pytest.approx(d(1) / (d(1) + d(2)))


def test_hit_rate_and_coverage() -> None:
    assert hit_rate_at_k(["a", "b", "t"], {"t"}, 2) == 0.0
    assert hit_rate_at_k(["a", "b", "t"], {"t"}, 3) == 1.0
    assert catalog_coverage([["a", "b"], ["b", "c"]], 10) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        catalog_coverage([], 0)


def test_evaluate_lists_means_and_cold_recall() -> None:
    lists = {"u1": ["a", "c1", "b"], "u2": ["x", "y"]}
    targets = {"u1": {"a", "c1", "c2", "z"}, "u2": {"y"}, "u3": {"c1"}, "u4": set()}
    got = evaluate_lists(lists, targets, k=2, cold_items={"c1", "c2"}, catalog_size=10)
    # u1: hits a, c1 in top 2 → 2/4; u2: y at rank 2 → 1; u3 missing from lists → 0; u4 skipped.
    assert got["users"] == 3
    assert got["recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert got["hit_rate"] == pytest.approx(2 / 3)
    assert got["ndcg"] == pytest.approx((1.0 + d(2) / d(1) + 0.0) / 3)
    # Cold: u1 has cold targets {c1, c2}, hits c1 → 0.5; u3 has {c1}, no list → 0.
    assert got["cold_users"] == 2
    assert got["cold_recall"] == pytest.approx(0.25)
    # Coverage counts only the top k: a, c1, x, y.
    assert got["coverage"] == pytest.approx(0.4)
    # Exposure of cold items (top k only): c1 in one of the 3 scored lists (u3's is empty).
    assert got["cold_distinct"] == 1
    assert got["cold_top_share"] == pytest.approx(1 / 3)


def test_cold_exposure_counts_each_list_once_and_ignores_unscored_users() -> None:
    lists = {"u1": ["c1", "c1", "c2"], "u2": ["c1", "w"], "u3": ["c2"], "x": ["c1"]}
    targets = {"u1": {"w"}, "u2": {"w"}, "u3": {"w"}}
    got = evaluate_lists(lists, targets, k=20, cold_items={"c1", "c2", "c3"})
    assert got["cold_distinct"] == 2
    # c1 is in 2 of 3 lists (u1 repeats it, "x" has no targets and is not scored)
    assert got["cold_top_share"] == pytest.approx(2 / 3)


def test_evaluate_lists_without_cold_or_catalog_is_nan() -> None:
    got = evaluate_lists({"u": ["a"]}, {"u": {"a"}}, k=20)
    assert got["recall"] == 1.0
    assert math.isnan(got["cold_recall"])
    assert math.isnan(got["coverage"])
    assert math.isnan(got["cold_distinct"])
    assert math.isnan(got["cold_top_share"])


def test_per_user_quality_is_the_terms_of_the_means() -> None:
    lists = {"u1": ["a", "c1", "b"], "u2": ["x", "y"]}
    targets = {"u1": {"a", "c1", "c2", "z"}, "u2": {"y"}, "u3": {"c1"}, "u4": set()}
    got = per_user_quality(lists, targets, k=2)
    assert got.keys() == {"u1", "u2", "u3"}  # no targets: not scored; no list: 0
    assert got["u1"] == pytest.approx(0.5 + 1.0)
    assert got["u2"] == pytest.approx(1.0 + d(2) / d(1))
    assert got["u3"] == 0.0
    means = evaluate_lists(lists, targets, k=2)
    assert sum(got.values()) / len(got) == pytest.approx(means["recall"] + means["ndcg"])
