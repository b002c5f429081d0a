"""Cold-start user profiles, updated one event at a time with no retraining.

The whole update rule is :func:`apply_signal`:  ``u ← normalize(decay(Δt)·u + w(type)·v)``, where
``v`` is the item's vector or the vector of the user's own text (search, review, onboarding).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Rating scale of ``rate`` events: a 5 counts fully, a 1 a fifth (still a positive signal: the
# user chose to watch/buy it; explicit dislikes are a ranking feature, not a profile direction).
RATING_SCALE = 5.0


@dataclass(frozen=True)
class ProfileConfig:
    weights: Mapping[str, float]
    half_life_s: float
    recent_max: int = 20
    seen_max: int = 2000
    texts_max: int = 3
    event_ids_max: int = 64
    categories_max: int = 256  # the strongest kept: a user's affinities stay a bounded dict


@dataclass(frozen=True)
class Signal:
    """What one behavior event contributes: a direction (``vector``) and bookkeeping."""

    event_id: str
    event_type: str
    ts: float
    vector: np.ndarray | None
    item_id: str | None = None
    category: str | None = None
    rating: float | None = None
    text: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass
class Profile:
    user_id: str
    vector: np.ndarray | None = None
    event_count: int = 0
    last_ts: float | None = None
    # the latest event that moved ``vector``; its decay runs from there (an event of weight 0
    # moves ``last_ts`` but not the vector)
    vector_ts: float | None = None
    recent_items: list[str] = field(default_factory=list)
    recent_types: dict[str, str] = field(default_factory=dict)  # item → last event type on it
    seen: list[str] = field(default_factory=list)
    categories: dict[str, float] = field(default_factory=dict)
    texts: list[dict[str, Any]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    # which log the offsets count in (the events topic's id; "" unknown): offsets of another
    # log (a recreated topic, a memory-only broker restarted) say nothing about this one's
    offsets_log: str = ""
    event_ids: list[str] = field(default_factory=list)

    def to_payload(self) -> dict[str, Any]:
        return {
            "event_count": self.event_count,
            "last_ts": self.last_ts,
            "vector_ts": self.vector_ts,
            "recent_items": self.recent_items,
            "recent_types": self.recent_types,
            "seen": self.seen,
            "categories": self.categories,
            "texts": self.texts,
            "offsets": self.offsets,
            "offsets_log": self.offsets_log,
            "event_ids": self.event_ids,
            "has_vector": self.vector is not None,
        }

    @classmethod
    def from_payload(
        cls, user_id: str, vector: np.ndarray | None, payload: Mapping[str, Any]
    ) -> Profile:
        return cls(
            user_id=user_id,
            vector=vector if payload.get("has_vector", vector is not None) else None,
            event_count=int(payload.get("event_count", 0)),
            last_ts=payload.get("last_ts"),
            # profiles written before it existed: every event moved the vector, or none did
            vector_ts=payload.get("vector_ts", payload.get("last_ts")),
            recent_items=list(payload.get("recent_items", [])),
            recent_types={str(k): str(v) for k, v in payload.get("recent_types", {}).items()},
            seen=list(payload.get("seen", [])),
            categories={str(k): float(v) for k, v in payload.get("categories", {}).items()},
            texts=list(payload.get("texts", [])),
            offsets={str(k): int(v) for k, v in payload.get("offsets", {}).items()},
            offsets_log=str(payload.get("offsets_log", "")),
            event_ids=list(payload.get("event_ids", [])),
        )

    def count_offsets_in(self, log: str) -> None:
        """Make ``log`` the one the offsets count in; offsets kept from another are dropped
        (the guard would take that log's new records for replays and skip them).

        An unknown log ("": a worker that could not learn its topic's id, or offsets written
        by one) is taken for the same one, as the worker's warning says: dropping the offsets
        there wiped every profile's replay guard while the broker failed to answer, and
        redeliveries past the last 64 event ids were then applied twice (found by review).
        """
        if not log:
            return
        if self.offsets_log and self.offsets_log != log:
            self.offsets = {}
        self.offsets_log = log

    def already_applied(self, event_id: str, partition: int | None, offset: int | None) -> bool:
        """True for a replay (offset at or below the last applied one) or a duplicate event id."""
        return self.replays(partition, offset) or event_id in self.event_ids

    def replays(self, partition: int | None, offset: int | None) -> bool:
        """True when the event's offset is at or below the last one applied from its partition
        (a redelivery), as opposed to a new record repeating an applied event id."""
        if partition is None or offset is None:
            return False
        last = self.offsets.get(str(partition))
        return last is not None and offset <= last


def decay(dt_s: float, half_life_s: float) -> float:
    """Weight left after ``dt_s`` seconds; events out of order (dt < 0) do not amplify."""
    return math.pow(0.5, max(dt_s, 0.0) / half_life_s)


def event_weight(cfg: ProfileConfig, event_type: str, rating: float | None) -> float:
    weight = float(cfg.weights.get(event_type, 0.0))
    if event_type == "rate" and rating is not None:
        weight *= max(min(rating, RATING_SCALE), 0.0) / RATING_SCALE
    return weight


def normalize(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def apply_signal(profile: Profile, signal: Signal, cfg: ProfileConfig) -> None:
    """Fold one event into ``profile`` in place (the incremental profile update rule)."""
    dt = 0.0 if profile.last_ts is None else signal.ts - profile.last_ts
    keep = decay(dt, cfg.half_life_s)
    weight = event_weight(cfg, signal.event_type, signal.rating)
    if signal.vector is not None and weight > 0:
        v = np.asarray(signal.vector, dtype=np.float32)
        if profile.vector is None:
            profile.vector = normalize(v.copy())
        else:
            since = signal.ts - (profile.vector_ts if profile.vector_ts is not None else signal.ts)
            held = decay(since, cfg.half_life_s)
            profile.vector = normalize(held * profile.vector + weight * v).astype(np.float32)
        profile.vector_ts = (
            signal.ts if profile.vector_ts is None else max(profile.vector_ts, signal.ts)
        )
    if keep < 1.0:  # every event moves last_ts, so every event decays (searches have no category)
        for key in profile.categories:
            profile.categories[key] *= keep
    if signal.category:
        profile.categories[signal.category] = profile.categories.get(signal.category, 0.0) + max(
            weight, 0.0
        )
        if len(profile.categories) > cfg.categories_max:
            strongest = sorted(profile.categories.items(), key=lambda kv: kv[1], reverse=True)
            profile.categories = dict(strongest[: cfg.categories_max])
    if signal.item_id is not None:
        update_recent(profile.recent_items, signal.item_id, weight, cfg)
        if weight > 0:
            profile.recent_types[signal.item_id] = signal.event_type
        if len(profile.recent_types) > len(profile.recent_items):
            recent = set(profile.recent_items)
            profile.recent_types = {k: v for k, v in profile.recent_types.items() if k in recent}
        _push_unique(profile.seen, signal.item_id, cfg.seen_max)
    if signal.text and signal.vector is not None and weight > 0:
        # a reason anchor, unit length: anchors are picked by dot product, and a review's
        # vector (half its text, half its item) is shorter than an item's
        profile.texts.append(
            {
                "type": signal.event_type,
                "text": signal.text[:200],
                "vector": _rounded(normalize(signal.vector)),
            }
        )
        del profile.texts[: -cfg.texts_max]
    profile.event_count += 1
    profile.last_ts = signal.ts if profile.last_ts is None else max(profile.last_ts, signal.ts)
    if signal.partition is not None and signal.offset is not None:
        key = str(signal.partition)
        profile.offsets[key] = max(profile.offsets.get(key, -1), signal.offset)
    profile.event_ids.append(signal.event_id)
    del profile.event_ids[: -cfg.event_ids_max]


def update_recent(recent: list[str], item: str, weight: float, cfg: ProfileConfig) -> None:
    """In place: ``item`` visited with ``weight`` moves to the end of the recent items (the
    oldest go past ``recent_max``). A weight of 0 (a rating of 0) says "not this": no recent
    interest, so no reason anchor ("similar to X you rated"), no part of the recent-items
    vector that orders the new-item slots, no co-visitation window; it takes the item out."""
    if weight > 0:
        _push_unique(recent, item, cfg.recent_max)
    elif item in recent:
        recent.remove(item)


def _push_unique(items: list[str], item: str, limit: int) -> None:
    if item in items:
        items.remove(item)
    items.append(item)
    del items[:-limit]


def _rounded(vector: np.ndarray) -> list[float]:
    return [round(float(x), 5) for x in vector]
