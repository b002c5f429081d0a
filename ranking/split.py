"""The cold-start split (DESIGN.md, "Evaluation protocol"), shared by baselines and the full system.

- Cold items: `cold_items_frac` of the items that have interactions, drawn at random
  (`cold_items_by="random"`, the default) or the latest to appear (`"time"`: the items whose first
  interaction comes last, as new releases would). They are removed from ALL training data and
  exist only as catalog items that arrive as item events.
- Test users: a random `test_users_frac` of users; none of their interactions are training data.
- `reveal(k)`: each test user's first k interactions (time order, ties by file order) are replayed
  as events, and the distinct items of all later interactions are the targets.

Revealed interactions are the first k whatever they are, cold items included: a cold item a user
touches early is a legitimate signal (the item event has arrived by then), and filtering would make
the reveal depend on the cold draw. Items already revealed are removed from the targets, because
every recommender excludes seen items and could never hit them. Text-only events (search,
profile; item_id None) count toward k and are revealed, but never become targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, get_args

import numpy as np
import pandas as pd

from ranking.datasets import Dataset

__all__ = ["ColdItemsBy", "Interaction", "Split", "latest_items", "make_split"]

ColdItemsBy = Literal["random", "time"]
COLD_ITEMS_BY: tuple[ColdItemsBy, ...] = get_args(ColdItemsBy)


@dataclass(frozen=True, slots=True)
class Interaction:
    """One revealed event, in the fields the `events` contract carries."""

    user_id: str
    item_id: str | None
    ts: float
    type: str
    rating: float | None
    text: str | None


@dataclass(frozen=True, eq=False)
class Split:
    """A deterministic cold-start split. `train` keeps the dataset's (ts, file order) sort."""

    dataset: Dataset
    seed: int
    cold_items: frozenset[str]
    test_users: tuple[str, ...]
    train: pd.DataFrame
    test: pd.DataFrame = field(repr=False)

    @cached_property
    def catalog(self) -> tuple[str, ...]:
        """Every item id, cold ones included, in dataset order."""
        return tuple(it.item_id for it in self.dataset.items)

    @cached_property
    def warm_items(self) -> frozenset[str]:
        """Catalog items that are not cold: the ones a system may know before evaluation."""
        return frozenset(self.catalog) - self.cold_items

    @cached_property
    def _test_groups(self) -> dict[str, pd.DataFrame]:
        return {str(u): g for u, g in self.test.groupby("user_id", sort=False)}

    def reveal(self, k: int) -> tuple[dict[str, list[Interaction]], dict[str, set[str]]]:
        """First k interactions per test user as events; the rest are targets.

        Users whose targets are empty after the reveal (k or fewer interactions, or only repeats
        of revealed items) are dropped from both dicts, so every returned user is scorable.
        """
        if k < 0:
            raise ValueError("k must be >= 0")
        groups = ((u, self._test_groups[u]) for u in self.test_users if u in self._test_groups)
        return reveal_groups(groups, k)


def reveal_groups(
    groups: Iterable[tuple[str, pd.DataFrame]], k: int
) -> tuple[dict[str, list[Interaction]], dict[str, set[str]]]:
    """Each user's first ``k`` rows as events and the rest (unseen items) as targets.

    Users left with no target are dropped, so every returned user is scorable.
    """
    revealed: dict[str, list[Interaction]] = {}
    targets: dict[str, set[str]] = {}
    for user, g in groups:
        head, tail = g.iloc[:k], g.iloc[k:]
        seen = {str(i) for i in head["item_id"] if pd.notna(i)}
        tgt = {str(i) for i in tail["item_id"] if pd.notna(i)} - seen
        if not tgt:
            continue
        revealed[str(user)] = [
            Interaction(
                user_id=str(user),
                item_id=str(r.item_id) if pd.notna(r.item_id) else None,
                ts=float(r.ts),
                type=str(r.type),
                rating=None if pd.isna(r.rating) else float(r.rating),
                text=str(r.text) if pd.notna(r.text) else None,
            )
            for r in head.itertuples(index=False)
        ]
        targets[str(user)] = tgt
    return revealed, targets


def _draw(ids: list[str], frac: float, rng: np.random.Generator) -> list[str]:
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {frac}")
    n = round(frac * len(ids))
    if n == 0:
        return []
    idx = rng.choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(idx)]


def latest_items(log: pd.DataFrame, frac: float) -> list[str]:
    """The ``frac`` of ``log``'s items whose first interaction comes last.

    ``log`` is in (ts, file order), as datasets and splits keep it, so ties in time go by file
    order. A random draw of "new" items from an old catalog holds out blockbusters that had
    years of history; the latest to appear are the closest a log comes to real new releases.
    """
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {frac}")
    if not log["ts"].is_monotonic_increasing:  # first appearance is read from the row order
        raise ValueError("the log must be sorted by ts (datasets and splits keep it so)")
    order = [str(i) for i in log["item_id"].dropna().drop_duplicates()]
    n = round(frac * len(order))
    return order[len(order) - n :]


def make_split(
    dataset: Dataset,
    *,
    test_users_frac: float = 0.2,
    cold_items_frac: float = 0.1,
    cold_items_by: ColdItemsBy = "random",
    seed: int = 0,
) -> Split:
    """Draw cold items and test users from sorted ids, so the split depends on the seed alone
    (with ``cold_items_by="time"`` the cold items do not depend on it)."""
    if cold_items_by not in COLD_ITEMS_BY:
        raise ValueError(f"cold_items_by must be one of {COLD_ITEMS_BY}, got {cold_items_by!r}")
    df = dataset.interactions
    users = sorted({str(u) for u in df["user_id"]})
    # Independent streams: changing one fraction does not reshuffle the other draw.
    item_rng, user_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if cold_items_by == "time":
        cold = frozenset(latest_items(df, cold_items_frac))
    else:
        interacted = sorted({str(i) for i in df["item_id"].dropna()})
        cold = frozenset(_draw(interacted, cold_items_frac, item_rng))
    test_users = tuple(_draw(users, test_users_frac, user_rng))

    is_test = df["user_id"].isin(set(test_users))
    is_cold = df["item_id"].isin(cold)
    train = df.loc[~is_test & ~is_cold].reset_index(drop=True)
    test = df.loc[is_test].reset_index(drop=True)
    return Split(
        dataset=dataset,
        seed=seed,
        cold_items=cold,
        test_users=test_users,
        train=train,
        test=test,
    )
