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


def explain(
    item_vector: np.ndarray | None,
    anchors: Sequence[Anchor],
    *,
    source: str,
    extra: Mapping[str, str] | None = None,
) -> list[str]:
    """The closest anchor's label, plus a channel note for trending/co-visited items."""
    reasons: list[str] = []
    if item_vector is not None and anchors:
        sims = [float(np.dot(item_vector, a.vector)) for a in anchors]
        reasons.append(anchors[int(np.argmax(sims))].label)
    if source == "trending":
        reasons.append("trending now")
    if extra:
        reasons.extend(extra.values())
    return reasons or ["popular with other users"]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
