"""The worker serializes its output without pydantic; the bytes must be the contract's own."""

from __future__ import annotations

import json
import time
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from ranking.engine import Interaction, RecItem, UserRecs
from streams.pipeline import recommendation_record
from streams.schemas import Recommendation, Source

_items = st.lists(
    st.builds(
        RecItem,
        item_id=st.text(min_size=1, max_size=40),
        score=st.floats(allow_nan=False, allow_infinity=False, width=64),
        source=st.sampled_from(get_args(Source)),
        reasons=st.lists(st.text(max_size=80), max_size=3),
    ),
    max_size=25,
)


@given(
    user_id=st.text(min_size=1, max_size=40),
    event_id=st.text(min_size=1, max_size=40),
    profile_events=st.integers(min_value=0, max_value=10**9),
    items=_items,
    ranker=st.text(max_size=30),
    encoder=st.text(max_size=30),
    age_s=st.floats(min_value=-5.0, max_value=1e4),
)
def test_the_record_is_the_validated_model_dumped(
    user_id: str,
    event_id: str,
    profile_events: int,
    items: list[RecItem],
    ranker: str,
    encoder: str,
    age_s: float,
) -> None:
    trigger = Interaction(
        event_id=event_id, user_id=user_id, type="click", ts=0.0, arrival=time.time() - age_s
    )
    recs = UserRecs(user_id, trigger, profile_events, items, ranker)
    key, value = recommendation_record(recs, encoder)
    assert key == user_id.encode()
    rec = Recommendation.model_validate_json(value)  # the contract accepts it
    assert rec.model_dump_json().encode() == value  # and it is what the model itself writes
    assert [i.item_id for i in rec.items] == [i.item_id for i in items]
    assert [i.rank for i in rec.items] == list(range(1, len(items) + 1))
    assert [i.score for i in rec.items] == [round(i.score, 6) for i in items]
    assert rec.latency_ms >= 0  # an arrival stamped ahead of this clock reads as 0, not < 0
    assert json.loads(value)["model"] == {"encoder": encoder, "ranker": ranker}
