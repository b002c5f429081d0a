"""The worker serializes its output without pydantic; the bytes must be the contract's own."""

from __future__ import annotations

import json
import math
import time
from typing import get_args

import pytest
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


def _recs(score: float = 0.5, source: str = "content", profile_events: int = 3) -> UserRecs:
    trigger = Interaction(event_id="e1", user_id="u1", type="click", ts=0.0)
    return UserRecs("u1", trigger, profile_events, [RecItem("i1", score, source, [])], "r1")


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_is_written_as_the_model_writes_it(score: float) -> None:
    _, value = recommendation_record(_recs(score), "enc")

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    parsed = json.loads(value, parse_constant=refuse)  # strict JSON: no NaN or Infinity
    assert parsed["items"][0]["score"] is None
    fields = {**parsed, "items": [{**parsed["items"][0], "score": score}]}
    assert Recommendation.model_validate(fields).model_dump_json().encode() == value


def test_what_the_contract_refuses_is_refused() -> None:
    with pytest.raises(ValueError, match="source 'popular'"):
        recommendation_record(_recs(source="popular"), "enc")
    with pytest.raises(ValueError, match="profile_events"):
        recommendation_record(_recs(profile_events=-1), "enc")
