"""Evaluation plumbing: event order, validation reveal, summaries, target checks, table and plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ranking.datasets import Dataset, ItemRecord
from ranking.evaluation import (
    EvalConfig,
    _events,
    acceptance_scope,
    check_targets,
    choose_cold_policy,
    format_table,
    plot,
    reveal,
    simulated_new_items,
    summarize,
)
from ranking.split import Interaction as Revealed
from ranking.split import make_split

pytestmark = pytest.mark.unit


def _r(user: str, item: str, ts: float) -> Revealed:
    return Revealed(user_id=user, item_id=item, ts=ts, type="rate", rating=4.0, text=None)


def test_events_are_time_ordered_with_fresh_offsets() -> None:
    evs = _events({"b": [_r("b", "x", 5.0)], "a": [_r("a", "y", 1.0), _r("a", "z", 7.0)]})
    assert [(e.user_id, e.item_id) for e in evs] == [("a", "y"), ("b", "x"), ("a", "z")]
    assert [e.offset for e in evs] == [0, 1, 2]
    assert len({e.event_id for e in evs}) == 3
    assert all(e.partition == 0 for e in evs)


def test_reveal_matches_split_semantics() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "v", "v"],
            "item_id": ["a", "b", "a", "c", "c"],
            "ts": [1.0, 2.0, 3.0, 1.0, 2.0],
            "type": ["rate"] * 5,
            "rating": [5.0] * 5,
            "text": [None] * 5,
        }
    )
    revealed, targets = reveal(df, 1)
    assert [e.item_id for e in revealed["u"]] == ["a"]
    assert targets == {"u": {"b"}}  # a repeats a revealed item; v has nothing left to find


def _seed(seed: int, full: float) -> dict[str, object]:
    base = {"recall": 0.1, "ndcg": 0.4, "hit_rate": 1.0, "coverage": 0.01, "cold_recall": 0.0}
    content = {**base, "recall": 0.03, "cold_recall": 0.02}
    return {
        "seed": seed,
        "results": {
            "1": {
                "full": {**base, "recall": full, "ndcg": 0.5, "cold_recall": 0.03},
                "popularity": base,
                "item-knn": base,
                "content": content,
            }
        },
    }


def test_summary_and_target_checks(tmp_path: Path) -> None:
    per_seed = [_seed(0, 0.2), _seed(1, 0.05)]
    summary = summarize(per_seed, [1])
    assert summary["1"]["full"]["recall"]["mean"] == pytest.approx(0.125)
    assert summary["1"]["full"]["recall"]["std"] == pytest.approx(0.075)
    failures = check_targets(summary, per_seed)
    assert len(failures) == 2 and all("seed 1" in f and "recall" in f for f in failures)
    # met targets on a narrower run than the acceptance's decide nothing
    assert acceptance_scope((1, 3, 5), (0, 1, 2), 20) == []
    narrow = acceptance_scope((3,), (2, 2), 10)
    assert len(narrow) == 3 and "k = 1, 3, 5" in narrow[0] and "this run: 1" in narrow[1]
    table = format_table(summary)
    assert "Recall@20" in table and "0.1250 ± 0.0750" in table
    assert "exposure" not in table  # no exposure figures in these results
    for s, (distinct, top) in zip(per_seed, [(2.0, 0.9), (4.0, 0.5)], strict=True):
        s["results"]["1"]["full"].update(cold_distinct=distinct, cold_top_share=top)
    exposure = format_table(summarize(per_seed, [1])).split("new-item exposure")[1]
    assert "full 3.0 · 0.70" in exposure and "content" not in exposure
    plot(summary, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


Policy = tuple[int, float, str]


def _validator(
    table: dict[Policy, list[tuple[float, float, float]]],
) -> Callable[[Policy], list[dict[str, float]]]:
    """Validation figures per policy from (recall, ndcg, cold recall) rows, one per (draw, k)."""

    def validate(pol: Policy) -> list[dict[str, float]]:
        return [{"recall": r, "ndcg": n, "cold_recall": c} for r, n, c in table[pol]]

    return validate


def test_choose_cold_policy_best_quality_among_feasible() -> None:
    table = {
        (1, 0.5, "content"): [(0.30, 0.40, 0.01), (0.31, 0.41, 0.02)],  # fails k=1
        (1, 1.0, "content"): [(0.20, 0.30, 0.05), (0.21, 0.31, 0.06)],
        (1, 0.75, "scorer"): [(0.25, 0.35, 0.03), (0.26, 0.36, 0.04)],
    }
    validate = _validator(table)

    pol, info = choose_cold_policy(list(table), validate, [0.03, 0.02])
    assert pol == (1, 0.75, "scorer")
    assert info["1/0.5/content"]["ok"] == 0.0
    assert info["1/0.75/scorer"]["ok"] == 1.0


def test_choose_cold_policy_falls_back_to_closest_to_the_bar() -> None:
    table = {
        (1, 0.5, "content"): [(0.30, 0.40, 0.0)],
        (2, 1.0, "content"): [(0.20, 0.30, 0.01)],
    }
    validate = _validator(table)

    pol, _ = choose_cold_policy(list(table), validate, [0.05])
    assert pol == (2, 1.0, "content")
    with pytest.raises(ValueError):
        choose_cold_policy([], validate, [0.05])


def test_with_cold_policy_reads_the_prior_weight() -> None:
    from ranking.engine import EngineConfig
    from ranking.evaluation import with_cold_policy
    from ranking.profile import ProfileConfig

    base = EngineConfig(profile=ProfileConfig(weights={}, half_life_s=1.0))
    cfg = with_cold_policy(base, (2, 0.0, "prior:0.25"))
    assert (cfg.cold_item_slots, cfg.cold_slots_content_frac) == (2, 0.0)
    assert (cfg.cold_rank_by, cfg.cold_prior_weight) == ("prior", 0.25)
    cfg = with_cold_policy(base, (1, 1.0, "recent"))
    assert (cfg.cold_rank_by, cfg.cold_prior_weight) == ("recent", base.cold_prior_weight)


def test_new_item_draws_are_the_whole_set_then_seeded_halves() -> None:
    from ranking.evaluation import new_item_draws

    items = {f"i{j}" for j in range(41)}
    draws = new_item_draws(items, 3, 0.5, seed=7)
    assert draws[0] == frozenset(items) and len(draws) == 4
    assert all(len(d) == 20 and d < frozenset(items) for d in draws[1:])
    assert len(set(draws[1:])) == 3  # distinct subsets
    assert new_item_draws(items, 3, 0.5, seed=7) == draws  # the seed fixes them
    assert new_item_draws(items, 3, 0.5, seed=8) != draws
    assert new_item_draws(set(), 3, 0.5, seed=7) == [frozenset()]
    assert new_item_draws(items, 0, 0.5, seed=7) == [frozenset(items)]


def test_a_policy_must_clear_content_on_every_draw() -> None:
    # two draws × one k: the bold policy wins draw 0 by far and loses draw 1; the steady one
    # clears both, so it is chosen despite its lower quality
    table = {
        (1, 0.0, "prior:1"): [(0.30, 0.40, 0.20), (0.30, 0.40, 0.00)],
        (1, 1.0, "recent"): [(0.25, 0.35, 0.05), (0.25, 0.35, 0.04)],
    }
    validate = _validator(table)

    pol, info = choose_cold_policy(list(table), validate, [0.03, 0.03])
    assert pol == (1, 1.0, "recent")
    assert info["1/0/prior:1"]["ok"] == 0.0


def test_paired_gap_and_user_means_by_hand() -> None:
    from ranking.evaluation import paired_gap, user_means

    # u1 has targets in both runs, u2 in one: each user's mean over their own runs
    assert user_means([{"u1": 0.2, "u2": 0.4}, {"u1": 0.4}]) == pytest.approx(
        {"u1": 0.3, "u2": 0.4}
    )
    best = {"a": 1.0, "b": 0.5, "c": 0.0, "only_best": 9.0}
    other = {"a": 0.5, "b": 0.5, "c": 0.0}
    gap, se = paired_gap(best, other)
    # differences 0.5, 0, 0: mean 1/6, sample sd sqrt(1/12), se = sd / sqrt(3)
    assert gap == pytest.approx(1 / 6)
    assert se == pytest.approx(math.sqrt(1 / 12) / math.sqrt(3))
    assert all(math.isnan(x) for x in paired_gap({"a": 1.0}, {"a": 0.0}))


def _users(base: float, noise: list[float]) -> dict[str, float]:
    return {f"u{j}": base + e for j, e in enumerate(noise)}


def test_a_policy_tied_within_noise_with_a_larger_cold_margin_wins() -> None:
    # "bet" is better by 0.002 on average, but per user the difference swings ±0.2: within
    # one standard error, so the policy with the larger margin over content is chosen
    table = {
        (1, 0.0, "prior:1"): [(0.301, 0.401, 0.04)],
        (1, 1.0, "prior:1"): [(0.300, 0.400, 0.09)],
    }
    swings = [0.2, -0.2, 0.2, -0.2, 0.2, -0.2, 0.2, -0.2, 0.012, 0.0]
    users = {
        (1, 0.0, "prior:1"): _users(0.702, [0.0] * 10),
        (1, 1.0, "prior:1"): _users(0.700, swings),
    }
    validate = _validator(table)

    pol, info = choose_cold_policy(
        list(table), validate, [0.03], per_user=users.__getitem__, noise_se=1.0
    )
    assert pol == (1, 1.0, "prior:1")
    assert info["1/1/prior:1"]["tied_with_best"] == 1.0
    assert info["1/1/prior:1"]["gap"] == pytest.approx(0.0008)
    # without the rule, the best Recall+NDCG alone
    assert choose_cold_policy(list(table), validate, [0.03])[0] == (1, 0.0, "prior:1")
    assert choose_cold_policy(
        list(table), validate, [0.03], per_user=users.__getitem__, noise_se=0.0
    )[0] == (1, 0.0, "prior:1")


def test_a_policy_clearly_worse_is_not_tied_whatever_its_margin() -> None:
    # every user loses 0.05 or 0.06 under "hedge": far beyond one standard error
    table = {
        (1, 0.0, "prior:1"): [(0.33, 0.43, 0.04)],
        (1, 1.0, "recent"): [(0.30, 0.40, 0.20)],
    }
    users = {
        (1, 0.0, "prior:1"): _users(0.76, [0.0] * 10),
        (1, 1.0, "recent"): _users(0.70, [0.0, 0.01] * 5),
    }
    pol, info = choose_cold_policy(
        list(table), _validator(table), [0.03], per_user=users.__getitem__, noise_se=1.0
    )
    assert pol == (1, 0.0, "prior:1")
    assert info["1/1/recent"]["tied_with_best"] == 0.0
    assert info["1/0/prior:1"]["tied_with_best"] == 1.0


def test_paired_gaps_to_the_baselines_are_per_user_on_the_same_users() -> None:
    """Hand-computed: two users, full finds both targets, popularity one of them."""
    from ranking.evaluation import paired_with_baselines

    targets = {"u1": {"a"}, "u2": {"b"}, "nobody": set()}
    lists = {
        "full": {"u1": ["a", "x"], "u2": ["b", "y"]},
        "popularity": {"u1": ["a", "x"], "u2": ["y", "z"]},  # u2 missed
    }
    got = paired_with_baselines(lists, targets, 20)
    assert set(got) == {"popularity"}  # only the baselines given
    recall = got["popularity"]["recall"]
    assert recall["gap"] == pytest.approx(0.5)  # per-user gaps 0 and 1
    assert recall["se"] == pytest.approx(0.5)  # std (ddof 1) 0.7071 / sqrt(2)
    assert got["popularity"]["ndcg"]["gap"] == pytest.approx(0.5)


def test_validation_new_items_are_drawn_as_the_real_ones_were() -> None:
    items = [ItemRecord(f"i{j}", f"t{j}", None, (), None, None, None, None) for j in range(20)]
    rows = [  # user u{j % 4} meets item i{j} at time j: i19 is the last to appear
        {"user_id": f"u{j % 4}", "item_id": f"i{j}", "ts": float(j), "type": "rate", "rating": 4.0}
        for j in range(20)
    ]
    ds = Dataset("toy", items, pd.DataFrame(rows))
    by_time = EvalConfig(test_users_frac=0.25, cold_items_frac=0.1, cold_items_by="time")
    split = make_split(ds, test_users_frac=0.25, cold_items_frac=0.1, cold_items_by="time")
    assert split.cold_items == {"i18", "i19"}
    warm_order = [i for i in (f"i{j}" for j in range(20)) if i in set(split.train["item_id"])]
    rng = np.random.default_rng(0)  # not drawn from by the time rule
    # the latest warm items of the training log (the test user's items are not in it)
    assert simulated_new_items(split, by_time, rng) == set(
        warm_order[-round(0.1 * len(warm_order)) :]
    )
    # at random: the draw the evaluation made before the time rule existed, draw for draw
    at_random = simulated_new_items(split, EvalConfig(cold_items_frac=0.1), rng)
    again = np.random.default_rng(0)
    warm = sorted({str(i) for i in split.train["item_id"].dropna()})
    assert at_random == set(again.choice(warm, round(0.1 * len(warm)), replace=False))
