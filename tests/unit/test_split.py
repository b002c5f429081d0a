"""The cold-start split: deterministic, disjoint, and honest about what is revealed."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from ranking.datasets import Dataset, ItemRecord
from ranking.split import latest_items, make_split

pytestmark = pytest.mark.unit


def _dataset(n_users: int = 30, n_items: int = 40, per_user: int = 8) -> Dataset:
    items = [
        ItemRecord(f"i{j}", f"title {j}", None, (), None, None, None, None) for j in range(n_items)
    ]
    rows = []
    for u in range(n_users):
        for t in range(per_user):
            rows.append(
                {
                    "user_id": f"u{u}",
                    "item_id": f"i{(u * 7 + t * 3) % n_items}",
                    "ts": float(1000 + t * 10 + u % 3),
                    "type": "rate",
                    "rating": 4.0,
                    "text": None,
                }
            )
    df = pd.DataFrame(rows).sort_values("ts", kind="stable").reset_index(drop=True)
    return Dataset(name="toy", items=items, interactions=df)


def test_split_is_deterministic_and_seed_dependent() -> None:
    ds = _dataset()
    a, b = make_split(ds, seed=3), make_split(ds, seed=3)
    assert a.cold_items == b.cold_items
    assert a.test_users == b.test_users
    pd.testing.assert_frame_equal(a.train, b.train)
    assert a.reveal(2) == b.reveal(2)
    c = make_split(ds, seed=4)
    assert (c.cold_items, c.test_users) != (a.cold_items, a.test_users)


def test_split_sizes_and_disjointness() -> None:
    ds = _dataset()
    sp = make_split(ds, test_users_frac=0.2, cold_items_frac=0.1, seed=0)
    assert len(sp.test_users) == 6
    assert len(sp.cold_items) == 4
    assert set(sp.train["user_id"]).isdisjoint(sp.test_users)
    assert set(sp.train["item_id"]).isdisjoint(sp.cold_items)
    assert set(sp.test["user_id"]) == set(sp.test_users)
    assert sp.cold_items <= set(sp.catalog)
    assert sp.warm_items | sp.cold_items == set(sp.catalog)
    # Everything not test-user or cold-item is training data.
    df = ds.interactions
    expected = (~df["user_id"].isin(sp.test_users) & ~df["item_id"].isin(sp.cold_items)).sum()
    assert len(sp.train) == expected


def test_reveal_first_k_in_time_order_rest_are_targets() -> None:
    ds = _dataset()
    sp = make_split(ds, seed=1)
    revealed, targets = sp.reveal(3)
    assert set(revealed) == set(targets) == set(sp.test_users)
    for user, events in revealed.items():
        history = ds.interactions[ds.interactions["user_id"] == user]
        assert [e.item_id for e in events] == list(history["item_id"][:3])
        assert [e.ts for e in events] == sorted(e.ts for e in events)
        assert targets[user] == set(history["item_id"][3:]) - {e.item_id for e in events}
        assert all(e.rating == 4.0 and e.text is None for e in events)


def test_reveal_may_include_cold_items_and_targets_include_them() -> None:
    ds = _dataset()
    sp = make_split(ds, seed=0, cold_items_frac=0.5)
    revealed, targets = sp.reveal(3)
    assert any(e.item_id in sp.cold_items for ev in revealed.values() for e in ev)
    assert any(t & sp.cold_items for t in targets.values())


def test_users_without_targets_are_dropped() -> None:
    ds = _dataset(per_user=4)
    sp = make_split(ds, seed=0)
    revealed, targets = sp.reveal(4)
    assert revealed == {} and targets == {}
    revealed, targets = sp.reveal(0)
    assert all(ev == [] for ev in revealed.values())
    assert len(targets) == len(sp.test_users)


def test_ties_in_ts_keep_file_order() -> None:
    items = [ItemRecord(f"i{j}", "", None, (), None, None, None, None) for j in range(3)]
    df = pd.DataFrame(
        {
            "user_id": ["u"] * 3,
            "item_id": ["i2", "i0", "i1"],
            "ts": [5.0, 5.0, 5.0],
            "type": ["view"] * 3,
            "rating": [math.nan] * 3,
            "text": [None] * 3,
        }
    )
    ds = Dataset("ties", items, df)
    sp = make_split(ds, test_users_frac=1.0, cold_items_frac=0.0)
    revealed, targets = sp.reveal(1)
    assert [e.item_id for e in revealed["u"]] == ["i2"]
    assert revealed["u"][0].rating is None
    assert targets["u"] == {"i0", "i1"}


def test_bad_arguments() -> None:
    ds = _dataset()
    with pytest.raises(ValueError):
        make_split(ds, test_users_frac=1.5)
    with pytest.raises(ValueError):
        make_split(ds).reveal(-1)


def test_time_holds_out_the_items_that_appear_last() -> None:
    items = [ItemRecord(f"i{j}", f"t{j}", None, (), None, None, None, None) for j in range(10)]
    # first appearances: i9 at 1, i8 at 2, ..., i0 at 10
    rows = [
        {"user_id": "u", "item_id": f"i{j}", "ts": float(10 - j), "type": "rate", "rating": 4.0}
        for j in range(10)
    ]
    rows[4]["ts"] = 5.0  # i4 now ties i5 at 5; i5 comes after it in the file, so appears later
    rows += [{"user_id": "v", "item_id": "i9", "ts": 99.0, "type": "rate", "rating": 4.0}]
    df = pd.DataFrame(rows).sort_values("ts", kind="stable").reset_index(drop=True)
    ds = Dataset(name="toy", items=items, interactions=df)
    for seed in (0, 1, 2):  # the seed draws users, not the new items
        sp = make_split(
            ds, test_users_frac=0.5, cold_items_frac=0.3, cold_items_by="time", seed=seed
        )
        assert sp.cold_items == {"i0", "i1", "i2"}  # i9's late repeat does not make it new
    assert latest_items(df, 0.5) == ["i5", "i3", "i2", "i1", "i0"]  # in order of appearance
    assert latest_items(df, 0.0) == []
    with pytest.raises(ValueError, match="sorted by ts"):
        latest_items(df.iloc[::-1], 0.5)
    with pytest.raises(ValueError, match="cold_items_by"):
        make_split(ds, cold_items_by="newest")  # type: ignore[arg-type]
