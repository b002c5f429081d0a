"""Trending items: interaction counts with exponential time decay, in event time.

Kept per input partition so that ownership follows the consumer group: a worker that takes a
partition over loads that partition's counts from the store and goes on counting.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, Protocol

import numpy as np


class TrendingCounter:
    """Decayed counts ``c_i(t) = Σ w·0.5^((t - t_event)/half_life)``, stored at a reference time."""

    def __init__(self, half_life_s: float, max_items: int = 50_000) -> None:
        self.half_life_s = half_life_s
        self.max_items = max_items
        self.ref_ts: float | None = None
        self.scores: dict[str, float] = {}

    def add(self, item_id: str, ts: float, weight: float = 1.0) -> None:
        self._advance(ts)
        # an event older than the reference time counts less, by the same law
        assert self.ref_ts is not None
        factor = math.pow(0.5, max(self.ref_ts - ts, 0.0) / self.half_life_s)
        self.scores[item_id] = self.scores.get(item_id, 0.0) + weight * factor
        if len(self.scores) > self.max_items * 1.2:
            self._prune()

    def _advance(self, ts: float) -> None:
        if self.ref_ts is None:
            self.ref_ts = ts
            return
        if ts <= self.ref_ts:
            return
        factor = math.pow(0.5, (ts - self.ref_ts) / self.half_life_s)
        if factor < 0.999:
            for key in self.scores:
                self.scores[key] *= factor
            self.ref_ts = ts

    def _prune(self) -> None:
        keep = heapq.nlargest(self.max_items, self.scores.items(), key=lambda kv: kv[1])
        self.scores = dict(keep)

    def to_payload(self) -> dict[str, Any]:
        return {"ref_ts": self.ref_ts, "scores": dict(self.scores)}  # a snapshot, not the live dict

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], half_life_s: float) -> TrendingCounter:
        counter = cls(half_life_s)
        counter.ref_ts = payload.get("ref_ts")
        counter.scores = {str(k): float(v) for k, v in payload.get("scores", {}).items()}
        return counter


def merged_scores(counters: Iterable[TrendingCounter], at_ts: float | None) -> dict[str, float]:
    """Scores of several partitions' counters brought to one time and summed.

    ``at_ts=None`` means the newest reference time among them, so an idle partition's old
    counts decay to the same moment as a busy one's instead of competing at face value.
    """
    counters = [c for c in counters if c.ref_ts is not None]
    if at_ts is None and counters:
        at_ts = max(c.ref_ts for c in counters if c.ref_ts is not None)
    total: dict[str, float] = {}
    for counter in counters:
        if counter.ref_ts is None:
            continue
        factor = 1.0
        if at_ts is not None and at_ts > counter.ref_ts:
            factor = math.pow(0.5, (at_ts - counter.ref_ts) / counter.half_life_s)
        for item, score in counter.scores.items():
            total[item] = total.get(item, 0.0) + score * factor
    return total


class Popularity(Protocol):
    """What ranking reads of trending: one item's score (a dict or :class:`MergedTrending`)."""

    def get(self, item: str, default: float, /) -> float: ...


class MergedTrending:
    """Several partitions' counters read as one, at the newest reference time among them.

    The same sums as :func:`merged_scores`, computed per item read instead of for the whole
    catalog: a batch reads the popularity of its few thousand candidates, while merging
    every counted item (up to ``max_items`` per partition) each batch grew with the catalog.
    """

    def __init__(self, counters: Iterable[TrendingCounter]) -> None:
        live = [c for c in counters if c.ref_ts is not None]
        at_ts = max((c.ref_ts for c in live if c.ref_ts is not None), default=None)
        self._counters = live
        self._merged: dict[str, float] | None = None  # the whole merge, made once if needed
        self._parts = [
            (
                c.scores,
                math.pow(0.5, (at_ts - c.ref_ts) / c.half_life_s)
                if at_ts is not None and c.ref_ts is not None and at_ts > c.ref_ts
                else 1.0,
            )
            for c in live
        ]

    def get(self, item: str, default: float = 0.0) -> float:
        total = 0.0
        found = False
        for scores, factor in self._parts:
            value = scores.get(item)
            if value is not None:
                total += value * factor
                found = True
        return total if found else default

    def get_many(self, items: Sequence[str]) -> np.ndarray:
        """:meth:`get` of each item (0 when no partition counts it), as float32: one C-level
        pass per partition instead of a Python call per item (a batch's pool table reads a few
        hundred to a few thousand). The same sums, added in the same order."""
        totals = np.zeros(len(items), np.float64)
        for scores, factor in self._parts:
            values = np.fromiter(map(scores.get, items, repeat(0.0)), np.float64, len(items))
            totals += values * factor
        return totals.astype(np.float32)

    def top(self, n: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` most popular items not in ``exclude``, with their scores (whole merge,
        once per view: every trending-only list of a batch reads the same one)."""
        if self._merged is None:
            self._merged = merged_scores(self._counters, None)
        merged = self._merged
        return [(i, merged[i]) for i in top_items(merged, n, exclude)]


def top_items(scores: Mapping[str, float], n: int, exclude: Iterable[str] = ()) -> list[str]:
    excluded = set(exclude)
    ranked = heapq.nlargest(n + len(excluded), scores.items(), key=lambda kv: kv[1])
    return [item for item, _ in ranked if item not in excluded][:n]


def popularity_of(popularity: Popularity, items: Sequence[str]) -> np.ndarray:
    """Each item's popularity as float32 (0 for an unknown item), for any :class:`Popularity`."""
    if isinstance(popularity, MergedTrending):
        return popularity.get_many(items)
    return np.fromiter(map(popularity.get, items, repeat(0.0)), np.float32, len(items))
