"""Baselines: seen items never come back, and each ranks by what it claims to."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ranking.baselines import (
    ContentRecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    RandomRecommender,
    evaluate_on_split,
    recommend_all,
)
from ranking.datasets import Dataset, ItemRecord
from ranking.split import Interaction, make_split

pytestmark = pytest.mark.unit

CATALOG = ["a", "b", "c", "d", "e", "cold"]


def _train(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "ts": np.arange(len(pairs), dtype=float),
            "type": "view",
            "rating": np.nan,
            "text": None,
        }
    )


TRAIN = _train(
    [
        ("u1", "a"), ("u1", "b"), ("u1", "c"),
        ("u2", "a"), ("u2", "b"),
        ("u3", "a"), ("u3", "d"),
        ("u4", "e"), ("u4", "a"), ("u4", "a"),
    ]
)  # fmt: skip


def test_popularity_ranks_by_counts_and_excludes_seen() -> None:
    rec = PopularityRecommender(TRAIN, CATALOG)
    # Counts: a=5, b=2, then c, d, e tie at 1 (catalog order), cold=0 last.
    assert rec.recommend([], 6) == ["a", "b", "c", "d", "e", "cold"]
    assert rec.recommend(["a", "c"], 3) == ["b", "d", "e"]
    assert rec.counts[CATALOG.index("cold")] == 0


def test_random_is_seeded_and_excludes_seen() -> None:
    r1, r2 = RandomRecommender(CATALOG, seed=7), RandomRecommender(CATALOG, seed=7)
    a, b = r1.recommend(["a", "b"], 10), r2.recommend(["a", "b"], 10)
    assert a == b
    assert sorted(a) == ["c", "cold", "d", "e"]


def test_item_knn_scores_cosine_cooccurrence() -> None:
    rec = ItemKNNRecommender(TRAIN, CATALOG)
    sims = rec.similarities(CATALOG.index("b"))
    # b's users {u1, u2}; a's users {u1, u2, u3, u4} → cos = 2 / sqrt(2 * 4).
    assert sims[CATALOG.index("a")] == pytest.approx(2 / np.sqrt(8))
    assert sims[CATALOG.index("c")] == pytest.approx(1 / np.sqrt(2))
    assert sims[CATALOG.index("cold")] == 0.0
    # From b, a and c tie exactly at 1/sqrt(2): the tie goes to the more visited, a.
    assert rec.recommend(["b"], 2) == ["a", "c"]
    out = rec.recommend(["a", "b"], 10)
    assert "a" not in out and "b" not in out
    assert out[0] == "c"  # sim(a,c) + sim(b,c) is the largest sum


def test_item_knn_fills_what_its_neighbours_leave_with_the_most_visited() -> None:
    """A history that co-occurs with nothing (a new item) scores every item 0: the list is
    training popularity, then catalog order, not catalog order alone."""
    rec = ItemKNNRecommender(TRAIN, list(reversed(CATALOG)))  # catalog order ≠ popularity
    assert rec.recommend(["cold"], 3) == ["a", "b", "e"]  # 4 and 2 users, then a tie of 1s
    # past c's neighbours (b, then a) the zeros go the same way
    assert rec.recommend(["c"], 5) == ["b", "a", "e", "d", "cold"]


def test_content_covers_cold_items_and_excludes_seen() -> None:
    vecs = np.array(
        [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0], [0.95, 0.05]], dtype=np.float32
    )
    rec = ContentRecommender(CATALOG, vecs * 3.0)  # scale must not matter
    assert rec.recommend(["a"], 2) == ["cold", "b"]
    assert rec.recommend([], 3) == []
    assert rec.recommend(["unknown"], 3) == []
    with pytest.raises(ValueError):
        ContentRecommender(CATALOG, vecs[:3])


def test_recommend_all_uses_revealed_item_history() -> None:
    rec = PopularityRecommender(TRAIN, CATALOG)
    revealed = {
        "x": [
            Interaction("x", "a", 1.0, "view", None, None),
            Interaction("x", None, 2.0, "search", None, "space"),
        ]
    }
    assert recommend_all(rec, revealed, n=2) == {"x": ["b", "c"]}


def test_baselines_on_a_split_never_return_revealed_items() -> None:
    rng = np.random.default_rng(0)
    items = [ItemRecord(f"i{j}", "", None, (), None, None, None, None) for j in range(30)]
    rows = [(f"u{u}", f"i{int(rng.integers(30))}", float(t)) for u in range(40) for t in range(10)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    df["type"], df["rating"], df["text"] = "view", np.nan, None
    sp = make_split(Dataset("toy", items, df.sort_values("ts", kind="stable")), seed=0)
    revealed, _ = sp.reveal(3)
    for rec in (
        RandomRecommender(sp.catalog),
        PopularityRecommender(sp.train, sp.catalog),
        ItemKNNRecommender(sp.train, sp.catalog),
        ContentRecommender(sp.catalog, rng.normal(size=(30, 4))),
    ):
        lists = recommend_all(rec, revealed, n=10)
        for user, events in revealed.items():
            assert len(lists[user]) == 10
            assert not {e.item_id for e in events} & set(lists[user])
        metrics = evaluate_on_split(rec, sp, 3, n=10, k=10)
        assert 0.0 <= metrics["recall"] <= 1.0
