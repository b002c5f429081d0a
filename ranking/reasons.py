"""Human reasons for a recommendation: the nearest thing the user did, in words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

_VERBS = {
    "view": "viewed",
    "click": "clicked",
    "add_to_cart": "added to your cart",
    "purchase": "bought",
    "rate": "rated",
    "review": "reviewed",
}
_TEXT_PHRASES = {
    "search": "matches your search '{}'",
    "profile": "matches your interest in '{}'",
    "review": "matches your review '{}'",
}


@dataclass(frozen=True)
class Anchor:
    """Something the user did that can explain a recommendation."""

    label: str
    vector: np.ndarray


def item_anchor(title: str, event_type: str, vector: np.ndarray) -> Anchor:
    verb = _VERBS.get(event_type, "liked")
    return Anchor(f"similar to '{_short(title)}' you {verb}", vector)


def text_anchor(text: str, event_type: str, vector: np.ndarray) -> Anchor:
    phrase = _TEXT_PHRASES.get(event_type, "matches '{}'")
    return Anchor(phrase.format(_short(text)), vector)


def nearest_anchors(vectors: np.ndarray, anchors: Sequence[Anchor]) -> list[Anchor | None]:
    """For each row of ``vectors`` (unit items), the most similar anchor: one product for all."""
    if not anchors or len(vectors) == 0:
        return [None] * len(vectors)
    matrix = np.stack([a.vector for a in anchors]).astype(np.float32)
    best = (vectors.astype(np.float32, copy=False) @ matrix.T).argmax(axis=1)
    return [anchors[int(j)] for j in best]


def explain(
    anchor: Anchor | None,
    *,
    source: str,
    extra: Mapping[str, str] | None = None,
) -> list[str]:
    """The closest anchor's label, plus a channel note for trending/co-visited items."""
    reasons: list[str] = []
    if anchor is not None:
        reasons.append(anchor.label)
    if source == "trending":
        reasons.append("trending now")
    if extra:
        reasons.extend(extra.values())
    return reasons or ["popular with other users"]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
