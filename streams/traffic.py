"""Synthetic shoppers: the one traffic model ``bench`` and ``bench engine`` share.

``concurrency`` browsing sessions at a time, each a random user emitting a geometric number of
click events (mean ``session_mean``) on Zipf-popular items (exponent 0.8 over a shuffled
catalog), interleaved. ``session_mean=1`` makes every event a different user's: the worst case,
since the work per batch (one recall query per user) grows with distinct users, not events.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Sequence


class ShopperTraffic:
    """Deterministic for a seed: the same events (ids included) in the same order."""

    def __init__(
        self,
        item_ids: Sequence[str],
        *,
        users: int = 2000,
        session_mean: float = 5.0,
        concurrency: int = 50,
        seed: int = 0,
    ) -> None:
        if not item_ids:
            raise ValueError("the traffic model needs a catalog")
        self._rng = random.Random(seed)
        self.item_ids = list(item_ids)
        # cumulative once: ``choices`` with plain weights re-sums the catalog per event
        self._cum_weights = list(
            itertools.accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(len(self.item_ids)))
        )
        self._rng.shuffle(self.item_ids)
        self.user_ids = [f"bench-{seed}-{n}" for n in range(users)]
        self.session_mean = session_mean
        self._sessions = [self._new_session() for _ in range(concurrency)]

    def _new_session(self) -> list[str | int]:
        length = 1
        while self._rng.random() > 1.0 / max(self.session_mean, 1.0):
            length += 1
        return [self._rng.choice(self.user_ids), length]

    def next_event(self, ts_ms: int) -> dict[str, object]:
        """The next click, as an ``events`` payload stamped ``ts_ms``."""
        rng = self._rng
        slot = rng.randrange(len(self._sessions))
        session = self._sessions[slot]
        user = str(session[0])
        session[1] = int(session[1]) - 1
        if int(session[1]) <= 0:
            self._sessions[slot] = self._new_session()
        item_id = rng.choices(self.item_ids, cum_weights=self._cum_weights)[0]
        return {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": user,
            "type": "click",
            "item_id": item_id,
            "ts": ts_ms,
        }
