"""Reference recommenders on the cold-start split: what the streaming system has to beat.

Each one answers `recommend(history, n)` with seen items excluded, the same call shape the full
system can be wrapped in, so `recommend_all` and `evaluate_on_split` score any of them identically.
Ties in score are broken by catalog order, so results never depend on sort internals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from ranking.metrics import evaluate_lists
from ranking.split import Interaction, Split

__all__ = [
    "ContentRecommender",
    "ItemKNNRecommender",
    "PopularityRecommender",
    "RandomRecommender",
    "Recommender",
    "evaluate_on_split",
    "history_items",
    "recommend_all",
]


class Recommender(Protocol):
    def recommend(self, history: Sequence[str], n: int) -> list[str]:
        """Top-n item ids for a user whose item history (time order) is `history`."""
        ...


def history_items(events: Iterable[Interaction]) -> list[str]:
    """Item ids of a user's revealed events in time order; text-only events carry none."""
    return [e.item_id for e in events if e.item_id is not None]


def recommend_all(
    rec: Recommender, revealed: Mapping[str, Sequence[Interaction]], n: int = 20
) -> dict[str, list[str]]:
    return {user: rec.recommend(history_items(events), n) for user, events in revealed.items()}


def evaluate_on_split(
    rec: Recommender, split: Split, reveal_k: int, n: int = 20, k: int = 20
) -> dict[str, float]:
    """Reveal k events per test user, recommend n, score @k against the split's cold set."""
    revealed, targets = split.reveal(reveal_k)
    lists = recommend_all(rec, revealed, n)
    return evaluate_lists(
        lists, targets, k=k, cold_items=split.cold_items, catalog_size=len(split.catalog)
    )


def _top_n(
    scores: np.ndarray, n: int, exclude: np.ndarray, tiebreak: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the n best scores (excluded ones never), ties by ``tiebreak`` (higher first)
    and then by index; O(N) plus a small sort."""
    scores = scores.astype(np.float64, copy=True)
    scores[exclude] = -np.inf
    avail = len(scores) - len(np.unique(exclude))
    n = min(n, avail)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n < len(scores):
        kth = scores[np.argpartition(-scores, n - 1)[n - 1]]
        cand = np.flatnonzero(scores >= kth)  # every item tied with the n-th competes fairly
    else:
        cand = np.arange(len(scores))
    cand = cand[scores[cand] > -np.inf]
    if tiebreak is None:
        order = np.lexsort((cand, -scores[cand]))
    else:
        order = np.lexsort((cand, -tiebreak[cand], -scores[cand]))
    return cand[order][:n]


class _Indexed:
    """Shared catalog index: item id ↔ row, and history → excluded rows."""

    def __init__(self, catalog: Sequence[str]) -> None:
        self.catalog: list[str] = list(catalog)
        self.index: dict[str, int] = {item: i for i, item in enumerate(self.catalog)}
        if len(self.index) != len(self.catalog):
            raise ValueError("catalog has duplicate item ids")

    def _rows(self, history: Sequence[str]) -> np.ndarray:
        rows = {self.index[i] for i in history if i in self.index}
        return np.fromiter(sorted(rows), dtype=np.int64, count=len(rows))

    def _ids(self, rows: np.ndarray) -> list[str]:
        return [self.catalog[i] for i in rows]


class RandomRecommender(_Indexed):
    """Uniform over the whole catalog (cold items included); one seeded stream per instance."""

    def __init__(self, catalog: Sequence[str], seed: int = 0) -> None:
        super().__init__(catalog)
        self._rng = np.random.default_rng(seed)

    def recommend(self, history: Sequence[str], n: int) -> list[str]:
        mask = np.ones(len(self.catalog), dtype=bool)
        mask[self._rows(history)] = False
        cand = np.flatnonzero(mask)
        picked = self._rng.choice(cand, size=min(n, len(cand)), replace=False)
        return self._ids(picked)


def _train_pairs(train: pd.DataFrame, index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item row) pairs of the training log; items outside the catalog dropped."""
    df = train.loc[train["item_id"].notna(), ["user_id", "item_id"]]
    items = df["item_id"].map(index)
    keep = items.notna().to_numpy()
    users = pd.factorize(df["user_id"].to_numpy()[keep])[0].astype(np.int64)
    item_rows = items.to_numpy()[keep].astype(np.int64)
    pairs = np.unique(np.stack([users, item_rows], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


class PopularityRecommender(_Indexed):
    """Most-interacted items in training; cold items count 0 and trail the catalog."""

    def __init__(self, train: pd.DataFrame, catalog: Sequence[str]) -> None:
        super().__init__(catalog)
        rows = train["item_id"].dropna().map(self.index).dropna().to_numpy().astype(np.int64)
        self.counts = np.bincount(rows, minlength=len(self.catalog)).astype(np.float64)
        self._order = np.lexsort((np.arange(len(self.catalog)), -self.counts))

    def recommend(self, history: Sequence[str], n: int) -> list[str]:
        seen = set(self._rows(history).tolist())
        out: list[str] = []
        for row in self._order:
            if len(out) >= n:
                break
            if row not in seen:
                out.append(self.catalog[row])
        return out


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenate CSR rows without a Python loop."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=indices.dtype)
    shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
    return indices[shift + np.arange(total)]


def _csr(keys: np.ndarray, values: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    indptr = np.zeros(n_keys + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n_keys), out=indptr[1:])
    return indptr, values[order]


class ItemKNNRecommender(_Indexed):
    """Item-kNN CF: cosine of binary co-occurrence on training users; score(j) = Σ_i sim(i, j).

    Co-occurrence rows are computed on demand from CSR user/item lists, so memory stays linear in
    the log instead of quadratic in the catalog. Cold items never co-occur, so they score 0.
    Equal scores (the zeros past a history's neighbours included) go by training popularity.
    """

    def __init__(self, train: pd.DataFrame, catalog: Sequence[str]) -> None:
        super().__init__(catalog)
        users, items = _train_pairs(train, self.index)
        n_users = int(users.max()) + 1 if len(users) else 0
        self._u_ptr, self._u_items = _csr(users, items, n_users)
        self._i_ptr, self._i_users = _csr(items, users, len(self.catalog))
        self.item_counts = np.diff(self._i_ptr).astype(np.float64)
        with np.errstate(divide="ignore"):
            inv = 1.0 / np.sqrt(self.item_counts)
        self._inv_sqrt = np.where(self.item_counts > 0, inv, 0.0)

    def similarities(self, row: int) -> np.ndarray:
        """Cosine similarity of catalog row `row` to every catalog item (itself included)."""
        co_users = self._i_users[self._i_ptr[row] : self._i_ptr[row + 1]]
        co = np.bincount(_gather(self._u_ptr, self._u_items, co_users), minlength=len(self.catalog))
        return co * self._inv_sqrt * self._inv_sqrt[row]

    def recommend(self, history: Sequence[str], n: int) -> list[str]:
        rows = self._rows(history)
        scores = np.zeros(len(self.catalog), dtype=np.float64)
        for row in rows:
            scores += self.similarities(int(row))
        # slots its neighbours leave (a history with no co-occurrences: a new item revealed)
        # go to the most visited items, as an item-kNN recommender usually fills them
        return self._ids(_top_n(scores, n, rows, tiebreak=self.item_counts))


class ContentRecommender(_Indexed):
    """Cosine between the normalized mean of the history's vectors and every catalog item's.

    Covers cold items (they have vectors from the item event), which CF cannot. A history with no
    known item gets an empty list: content has nothing to say; a fallback is the caller's choice.
    """

    def __init__(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        super().__init__(item_ids)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.catalog):
            raise ValueError(
                f"vectors shape {vectors.shape} does not match {len(self.catalog)} item ids"
            )
        v = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        self.vectors = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)

    def recommend(self, history: Sequence[str], n: int) -> list[str]:
        rows = self._rows(history)
        if len(rows) == 0:
            return []
        u = self.vectors[rows].mean(axis=0)
        norm = float(np.linalg.norm(u))
        if norm == 0.0:
            return []
        scores = self.vectors @ (u / norm)
        return self._ids(_top_n(scores, n, rows))
