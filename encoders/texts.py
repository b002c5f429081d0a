"""The text each item and each text event is encoded from.

Item and user texts go through the same symmetric encoder (all-MiniLM-L6-v2 was trained on
query/document pairs alike), so user texts are passed through plain: a prefix such as "search:"
would pull every user vector towards every other and away from the items.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

USER_TEXT_EVENTS = frozenset({"search", "review", "profile"})

_SPACE = re.compile(r"\s+")


def _clean(value: str | None) -> str:
    """Collapse whitespace (HTML-ish feeds carry newlines and tabs) and trim trailing stops."""
    if not value:
        return ""
    return _SPACE.sub(" ", value).strip().rstrip(".;,").strip()


def has_text(value: str | None) -> bool:
    """Whether ``value`` leaves any text once cleaned as :func:`item_text` cleans it."""
    return bool(_clean(value))


def item_text(
    title: str | None,
    category: str | None = None,
    tags: Sequence[str] = (),
    brand: str | None = None,
    description: str | None = None,
) -> str:
    """Title first (the model truncates from the end), then category, tags, brand, description.

    Missing fields are skipped and a tag that repeats the category is dropped, so catalogs that
    duplicate the category among the tags do not weigh it twice.
    """
    if isinstance(tags, str):
        tags = [tags]
    parts: list[str] = []
    seen: set[str] = set()
    for value in (_clean(title), _clean(category)):
        if value:
            parts.append(value)
            seen.add(value.casefold())
    kept: list[str] = []
    for tag in (_clean(t) for t in tags if isinstance(t, str)):
        if tag and tag.casefold() not in seen:
            kept.append(tag)
            seen.add(tag.casefold())
    if kept:
        parts.append(", ".join(kept))
    for value in (_clean(brand), _clean(description)):
        if value and value.casefold() not in seen:
            parts.append(value)
            seen.add(value.casefold())
    if not parts:
        raise ValueError("item has no text: title, category, tags, brand and description are empty")
    return ". ".join(parts)


def user_text(event_type: str, text: str) -> str:
    """Text of a search, review or onboarding-profile event, whitespace-normalized."""
    if event_type not in USER_TEXT_EVENTS:
        raise ValueError(
            f"event type {event_type!r} carries no user text; expected one of "
            f"{sorted(USER_TEXT_EVENTS)}"
        )
    cleaned = _SPACE.sub(" ", text or "").strip()
    if not cleaned:
        raise ValueError(f"{event_type} event has empty text")
    return cleaned
