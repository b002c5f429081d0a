"""How often each new item filled the latest lists, so new-item slots spread over new items.

A list's new-item slots go to the best new items by the slot order (``EngineConfig.
cold_rank_by``). With an order led by the item prior (popularity predicted from content), that
is the same item for almost every user: the validation-chosen policies on MovieLens showed one
new item in 76–99% of the lists and 2–15 distinct new items in all (content-only: the top one in
15–47%, 37–67 distinct; docs/evaluation-history.md). That is a bet on one item, and it
leaves every other new item without the impressions that would teach the system about it. A cap
on each item's share of the recent lists hands a slot to the next new item in the user's order
once an item has had its share.

The counts are the engine's (one worker's lists), kept in memory only: a soft rule that a
restart or a rebalance resets, which costs at most one window of uneven exposure.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable


class NewItemExposure:
    """New items shown in each of the last ``window`` lists; an item that filled at least
    ``max_share`` of a window's worth of lists is capped until older lists leave the window.

    ``max_share`` >= 1 never caps (the item may be in every list).
    """

    def __init__(self, max_share: float, window: int) -> None:
        if max_share <= 0:
            raise ValueError("max_share must be above 0")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.max_share = max_share
        self.window = window
        self.limit = max(1, math.floor(max_share * window))
        self._lists: collections.deque[tuple[str, ...]] = collections.deque()
        self._shown: collections.Counter[str] = collections.Counter()

    @property
    def enabled(self) -> bool:
        return self.max_share < 1.0

    def capped(self, item_id: str) -> bool:
        return self.enabled and self._shown[item_id] >= self.limit

    def shown(self, item_id: str) -> int:
        """In how many of the window's lists ``item_id`` was a new item."""
        return self._shown[item_id]

    def record(self, new_items: Iterable[str]) -> None:
        """One list emitted, with these new items in it."""
        if not self.enabled:
            return
        items = tuple(dict.fromkeys(new_items))
        self._lists.append(items)
        self._shown.update(items)
        if len(self._lists) > self.window:
            for item in self._lists.popleft():
                self._shown[item] -= 1
                if self._shown[item] <= 0:
                    del self._shown[item]
