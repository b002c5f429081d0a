"""Issue 2 acceptance: the wire contracts reject bad input with a reason code and a named field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from streams.schemas import (
    DEFAULT_LIMITS,
    RAW_PREVIEW_BYTES,
    BehaviorEvent,
    DeadLetter,
    DeadLetterReason,
    InvalidPayload,
    ItemEvent,
    Limits,
    Recommendation,
    decode,
    json_schemas,
    raw_preview,
)

pytestmark = pytest.mark.unit

TS = "2024-05-01T12:00:00+00:00"
TS_DT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u1",
        "type": "view",
        "item_id": "i9",
        "ts": TS,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def item(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"item_id": "i9", "title": "Toy Story (1995)", "category": "Animation"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def rejected(
    payload: bytes | None, model: type[BaseModel] = BehaviorEvent, **kw: Any
) -> InvalidPayload:
    with pytest.raises(InvalidPayload) as info:
        decode(payload, model, **kw)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err) == err.message
    return err


# --- byte level --------------------------------------------------------------------------


def test_none_is_empty() -> None:
    assert rejected(None).reason == "empty"


@pytest.mark.parametrize("payload", [b"", b"{bad", b'{"event_id": "e"', b"nul", b"{'a': 1}"])
def test_bad_json(payload: bytes) -> None:
    err = rejected(payload)
    assert err.reason == "bad_json"
    assert "Invalid JSON" in err.message


@pytest.mark.parametrize("payload", [b"\xff\xfe", b'{"event_id": "\xc3\x28"}', b"\x80abc"])
def test_bad_utf8(payload: bytes) -> None:
    err = rejected(payload)
    assert err.reason == "bad_utf8"
    assert "UTF-8" in err.message


@pytest.mark.parametrize("payload", [b"[1, 2]", b"null", b"42", b'"text"', b"true"])
def test_non_object_json(payload: bytes) -> None:
    err = rejected(payload)
    assert err.reason == "schema"
    assert "object" in err.message


def test_payload_over_max_bytes() -> None:
    ok = raw(event())
    limits = Limits(max_payload_bytes=len(ok))
    assert decode(ok, BehaviorEvent, limits).event_id == "e-1"
    err = rejected(ok + b" ", limits=limits)
    assert err.reason == "too_large"
    assert str(len(ok) + 1) in err.message


def test_default_max_bytes_checked_before_parsing() -> None:
    huge = b"\xff" * (DEFAULT_LIMITS.max_payload_bytes + 1)  # also bad UTF-8: size wins
    assert rejected(huge).reason == "too_large"


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        json.dumps(event(text=None)).encode()[:-1]
        + b', "deep": '
        + b"[" * 2000
        + b"]" * 2000
        + b"}",
    ],
)
def test_deep_json(payload: bytes) -> None:
    err = rejected(payload)
    assert err.reason == "bad_json"
    assert "recursion" in err.message


# --- schema level ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["event_id", "user_id", "type", "ts"])
def test_missing_field(field: str) -> None:
    err = rejected(raw(event(**{field: ...})))
    assert err.reason == "schema"
    assert err.message.startswith(f"{field}: ")
    assert "required" in err.message.lower()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"type": "rate", "rating": "4.5"}, "rating"),  # no silent coercion of strings
        ({"type": "rate", "rating": True}, "rating"),
        ({"event_id": 5}, "event_id"),
        ({"user_id": ["u1"]}, "user_id"),
        ({"item_id": 9}, "item_id"),
        ({"type": 1}, "type"),
        ({"type": "search", "item_id": ..., "text": 7}, "text"),
        ({"ts": True}, "ts"),
        ({"ts": [2024]}, "ts"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": ""}, "ts"),
        ({"ts": 10**25}, "ts"),
    ],
)
def test_wrong_types(overrides: dict[str, Any], field: str) -> None:
    err = rejected(raw(event(**overrides)))
    assert err.reason == "schema"
    assert err.message.startswith(f"{field}: "), err.message


@pytest.mark.parametrize("kind", ["like", "VIEW", "", "delete"])
def test_unknown_event_type(kind: str) -> None:
    err = rejected(raw(event(type=kind)))
    assert err.reason == "schema"
    assert err.message.startswith("type: ")


def test_text_over_limit() -> None:
    limit = DEFAULT_LIMITS.max_text_chars
    ok = event(type="search", item_id=..., text="x" * limit)
    assert decode(raw(ok), BehaviorEvent).text == "x" * limit
    err = rejected(raw(event(type="search", item_id=..., text="x" * (limit + 1))))
    assert err.reason == "schema"
    assert err.message.startswith("text: ")
    assert str(limit) in err.message


def test_text_limit_comes_from_limits() -> None:
    payload = raw(event(type="review", text="twelve chars"))
    assert decode(payload, BehaviorEvent).text == "twelve chars"
    err = rejected(payload, limits=Limits(max_text_chars=5))
    assert err.message.startswith("text: ")


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
def test_id_over_limit_and_blank(field: str) -> None:
    err = rejected(raw(event(**{field: "x" * 257})))
    assert err.message.startswith(f"{field}: ")
    assert "256" in err.message
    err = rejected(raw(event(**{field: "   "})))
    assert err.message.startswith(f"{field}: ")
    assert "blank" in err.message


@pytest.mark.parametrize("field", ["event_id", "user_id"])
def test_empty_id(field: str) -> None:
    err = rejected(raw(event(**{field: ""})))
    assert err.message.startswith(f"{field}: ")


@pytest.mark.parametrize("kind", ["view", "click", "add_to_cart", "purchase", "rate", "review"])
def test_item_id_required_for_item_events(kind: str) -> None:
    extra: dict[str, Any] = {"rating": 4.0, "text": "good"}
    for missing in (..., None):
        err = rejected(raw(event(type=kind, item_id=missing, **extra)))
        assert err.reason == "schema"
        assert "item_id" in err.message
        assert kind in err.message
    err = rejected(raw(event(type=kind, item_id="", **extra)))
    assert err.message.startswith("item_id: ")


@pytest.mark.parametrize("kind", ["search", "profile"])
def test_text_required_for_text_events(kind: str) -> None:
    for missing in (..., None, "", "  \n\t"):
        err = rejected(raw(event(type=kind, item_id=..., text=missing)))
        assert err.reason == "schema"
        assert "text" in err.message
        assert kind in err.message


def test_rating_required_and_bounded_for_rate() -> None:
    err = rejected(raw(event(type="rate")))
    assert "rating" in err.message
    for bad in (-0.5, 10.5):
        err = rejected(raw(event(type="rate", rating=bad)))
        assert err.message.startswith("rating: ")
    nan = raw(event(type="rate", rating=1.0)).replace(b"1.0", b"NaN")
    assert rejected(nan).message.startswith("rating: ")


def test_too_many_tags_on_items() -> None:
    limit = DEFAULT_LIMITS.max_tags
    assert len(decode(raw(item(tags=["t"] * limit)), ItemEvent).tags) == limit
    err = rejected(raw(item(tags=["t"] * (limit + 1))), ItemEvent)
    assert err.reason == "schema"
    assert err.message.startswith("tags: ")
    assert str(limit) in err.message
    err = rejected(raw(item(tags=["a", "b", "c"])), ItemEvent, limits=Limits(max_tags=2))
    assert err.message.startswith("tags: ")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"price": -1}, "price"),
        ({"price": "12.5"}, "price"),
        ({"tags": "a,b"}, "tags"),
        ({"tags": ["a", 1]}, "tags.1"),
        ({"attributes": {"k": [1]}}, "attributes.k"),
        ({"active": "false"}, "active"),
        ({"title": "x" * 5000}, "title"),
        ({"item_id": ""}, "item_id"),
        ({"category": "c" * 60_000}, "category"),
        ({"brand": "b" * 257}, "brand"),
        ({"tags": ["ok", "t" * 257]}, "tags"),
    ],
)
def test_bad_items(overrides: dict[str, Any], field: str) -> None:
    err = rejected(raw(item(**overrides)), ItemEvent)
    assert err.reason == "schema"
    assert err.message.startswith(f"{field}"), err.message


def test_an_infinite_price_is_refused() -> None:
    """``1e309`` is plain JSON and parses to inf, which passed ``ge=0`` and then failed the
    store write as a ``processing_error`` after a record-by-record rerun (found by review)."""
    err = rejected(b'{"item_id": "i9", "title": "A film", "price": 1e309}', ItemEvent)
    assert (err.reason, err.message.split(":")[0]) == ("schema", "price")


@pytest.mark.parametrize("title", ["...", " ; ", ",", "\t.;,\n"])
def test_a_title_of_stops_only_is_no_text(title: str) -> None:
    """The encoder's text drops trailing stops: such a title left nothing to encode and failed
    the batch (found by review). With a description beside it, the item is fine."""
    err = rejected(raw(item(title=title, category=None)), ItemEvent)
    assert err.reason == "schema" and "needs a title" in err.message
    assert decode(raw(item(title=title, category=None, description="a film")), ItemEvent)


def test_an_event_far_in_the_future_is_refused_an_item_is_not() -> None:
    """A year-9999 event stopped its user's profile decay for good (later events look older).
    An item's ts ahead is a release date (a pre-order): accepted, the pipeline stamps its
    arrival instead."""
    now = datetime.now(UTC)
    for ts in ("9999-12-31T23:59:59+00:00", int((now + timedelta(days=2)).timestamp() * 1000)):
        err = rejected(raw(event(ts=ts)))
        assert err.reason == "schema" and err.message.startswith("ts: "), err.message
        assert decode(raw(item(ts=ts)), ItemEvent).ts is not None
    soon = (now + timedelta(hours=1)).isoformat()  # clocks disagree by minutes, not days
    assert decode(raw(event(ts=soon)), BehaviorEvent)
    assert decode(raw(event(ts=soon)), BehaviorEvent, limits=Limits(max_future_s=7200))
    err = rejected(raw(event(ts=soon)), BehaviorEvent, limits=Limits(max_future_s=60))
    assert "the limit is 60 s" in err.message


def test_active_item_needs_text_but_retired_item_does_not() -> None:
    err = rejected(raw({"item_id": "i1"}), ItemEvent)
    assert "title" in err.message
    retired = decode(raw({"item_id": "i1", "active": False}), ItemEvent)
    assert retired.active is False


def test_every_problem_is_reported() -> None:
    err = rejected(raw({"event_id": 1, "user_id": "u", "type": "nope", "ts": "x"}))
    for field in ("event_id", "type", "ts"):
        assert f"{field}: " in err.message


# --- valid events ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        event(),
        event(type="click"),
        event(type="add_to_cart"),
        event(type="purchase"),
        event(type="rate", rating=4.5),
        event(type="rate", rating=4),
        event(type="review", text="loved it"),
        event(type="review"),
        event(type="search", item_id=..., text="space opera"),
        event(type="profile", item_id=..., text="I like westerns"),
    ],
)
def test_valid_event_round_trips(payload: dict[str, Any]) -> None:
    model = decode(raw(payload), BehaviorEvent)
    assert model.event_id == payload["event_id"]
    assert model.type == payload["type"]
    assert model.item_id == payload.get("item_id")
    assert model.text == payload.get("text")
    assert model.ts == TS_DT
    again = decode(model.model_dump_json().encode(), BehaviorEvent)
    assert again == model


@pytest.mark.parametrize("ts", [1714564800, 1714564800.5, 0, -1])
def test_epoch_seconds_are_refused_with_the_likely_cause(ts: float) -> None:
    """Seconds sent for milliseconds read as January 1970: trending decayed them to nothing
    and the profile's decay ran from 1970. The published schema refuses them too."""
    with pytest.raises(InvalidPayload, match="epoch seconds") as err:
        decode(raw(event(ts=ts)), BehaviorEvent)
    assert err.value.reason == "schema"
    assert not _valid_by_schema("events", event(ts=ts))


def test_unknown_fields_are_ignored() -> None:
    model = decode(raw(event(extra_field={"x": 1})), BehaviorEvent)
    assert not hasattr(model, "extra_field")


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (TS, TS_DT),
        ("2024-05-01T12:00:00Z", TS_DT),
        ("2024-05-01T14:00:00+02:00", TS_DT),
        ("2024-05-01T12:00:00", TS_DT),  # naive: taken as UTC
        ("2024-05-01T12:00:00.250000+00:00", TS_DT + timedelta(milliseconds=250)),
        (1714564800000, TS_DT),  # epoch milliseconds
        (1714564800250, TS_DT + timedelta(milliseconds=250)),
        (1714564800000.0, TS_DT),
        (100_000_000_000, datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)),  # the earliest
    ],
)
def test_ts_accepts_iso_and_epoch_ms(ts: Any, expected: datetime) -> None:
    model = decode(raw(event(ts=ts)), BehaviorEvent)
    assert model.ts == expected
    assert model.ts.tzinfo is not None
    assert model.ts_epoch == pytest.approx(expected.timestamp())


def test_ts_keeps_offset() -> None:
    model = decode(raw(event(ts="2024-05-01T14:00:00+02:00")), BehaviorEvent)
    assert model.ts.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


def test_signal_text() -> None:
    assert decode(raw(event(type="review", text="great")), BehaviorEvent).signal_text == "great"
    assert decode(raw(event(type="view", text="ignored")), BehaviorEvent).signal_text is None
    assert decode(raw(event(type="review", text="  ")), BehaviorEvent).signal_text is None


def test_item_round_trip_with_defaults() -> None:
    model = decode(
        raw(item(tags=["a"], price=12.5, attributes={"k": "v", "n": 2}, ts=1714564800000)),
        ItemEvent,
    )
    assert model.tags == ["a"]
    assert model.attributes == {"k": "v", "n": 2}
    assert model.ts == TS_DT
    assert model.active is True
    assert decode(raw(item()), ItemEvent).ts is None
    assert decode(model.model_dump_json().encode(), ItemEvent) == model


def test_recommendation_and_dead_letter_are_strict_outputs() -> None:
    rec: dict[str, Any] = {
        "user_id": "u1",
        "trigger_event_id": "e1",
        "generated_at": TS,
        "profile_events": 3,
        "items": [
            {"item_id": "i7", "rank": 1, "score": 0.83, "source": "content", "reasons": ["x"]}
        ],
        "model": {"encoder": "all-MiniLM-L6-v2", "ranker": "v3"},
        "latency_ms": 12.4,
    }
    assert decode(raw(rec), Recommendation).items[0].item_id == "i7"
    bad = dict(rec, items=[dict(rec["items"][0], source="magic")])
    assert rejected(raw(bad), Recommendation).message.startswith("items.0.source")
    assert rejected(raw(dict(rec, surprise=1)), Recommendation).message.startswith("surprise")
    dl = {
        "topic": "events",
        "partition": 0,
        "offset": 3,
        "key": None,
        "raw": "x",
        "error": "e",
        "reason": "bad_json",
        "ts": TS,
    }
    assert decode(raw(dl), DeadLetter).reason == "bad_json"


def test_raw_preview() -> None:
    assert raw_preview(None) == ""
    assert raw_preview(b"ok\xff") == "ok\\xff"
    assert len(raw_preview(b"a" * 10_000)) == 4096


def test_json_schemas_cover_every_topic() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"events", "items", "recommendations", "dead-letter"}
    assert {"event_id", "user_id", "type", "ts"} <= set(schemas["events"]["required"])
    json.dumps(schemas)


def _valid_by_schema(topic: str, value: Any) -> bool:
    try:
        jsonschema.validate(value, json_schemas()[topic])
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    [
        event(ts=1714564800000),  # epoch milliseconds: the contract's other form
        event(ts=1714564800000.5),
        event(type="rate", rating=4),
        event(type="search", item_id=..., text="crime movie"),
        event(type="review", text="loved it", rating=5),
    ],
)
def test_the_published_schema_accepts_what_the_worker_accepts(value: dict[str, Any]) -> None:
    decode(json.dumps(value).encode(), BehaviorEvent)
    assert _valid_by_schema("events", value)


@pytest.mark.parametrize(
    "value",
    [
        event(item_id=...),  # an item event without its item
        event(item_id=""),
        event(type="search", item_id=..., text=...),
        event(type="profile", item_id=..., text="   "),
        event(type="rate"),  # no rating
        event(ts=True),
    ],
)
def test_the_published_schema_refuses_the_per_type_violations(value: dict[str, Any]) -> None:
    """The per-type rules live in a model validator, which pydantic's schema does not show:
    a producer validating with the published schema must be refused what the worker refuses."""
    with pytest.raises(InvalidPayload):
        decode(json.dumps(value).encode(), BehaviorEvent)
    assert not _valid_by_schema("events", value)


def test_an_item_with_an_epoch_ts_is_valid_by_the_schema() -> None:
    value = item(ts=1714564800000)
    assert decode(json.dumps(value).encode(), ItemEvent).ts == TS_DT
    assert _valid_by_schema("items", value)


def test_dead_letter_reasons_are_a_closed_set() -> None:
    """Every reason a dead letter can carry is in the contract (and its schema's enum); an
    unknown one is refused when the letter is built, not left for consumers to discover."""
    reasons = set(get_args(DeadLetterReason))
    assert set(json_schemas()["dead-letter"]["properties"]["reason"]["enum"]) == reasons
    assert {"empty", "too_large", "bad_utf8", "bad_json", "schema"} < reasons
    assert {"unknown_item", "processing_error"} < reasons  # the engine's and the agent's
    letter = {"topic": "events", "partition": 0, "offset": 1, "key": None, "raw": "x"}
    letter |= {"error": "e", "ts": TS}
    assert DeadLetter.model_validate({**letter, "reason": "schema"}).reason == "schema"
    with pytest.raises(ValidationError):
        DeadLetter.model_validate({**letter, "reason": "invalid_json"})


# --- property: decode never raises anything but InvalidPayload ---------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

field_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        ["view", "click", "rate", "search", "profile", "review", TS, "1714564800000", "", " "]
    )
    | st.lists(st.text(max_size=3), max_size=3)
)

event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": field_values,
        "user_id": field_values,
        "type": field_values,
        "item_id": field_values,
        "text": field_values,
        "rating": field_values,
        "ts": field_values,
        "title": field_values,
        "description": field_values,
        "category": field_values,
        "tags": field_values,
        "price": field_values,
        "attributes": field_values | st.dictionaries(st.text(max_size=3), field_values),
        "active": field_values,
    },
)

MODELS = st.sampled_from([BehaviorEvent, ItemEvent])
SMALL = Limits(max_payload_bytes=256, max_text_chars=10, max_tags=2, max_id_chars=5)


def _decode_or_invalid(payload: bytes | None, model: type[BaseModel], limits: Limits) -> None:
    try:
        result = decode(payload, model, limits)
    except InvalidPayload as err:
        assert err.reason in {"empty", "too_large", "bad_utf8", "bad_json", "schema"}
        assert err.message
    else:
        assert isinstance(result, model)
        # what the worker accepts, a producer validating with the published schema may send
        assert payload is not None
        topic = "events" if model is BehaviorEvent else "items"
        assert _valid_by_schema(topic, json.loads(payload))


common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(
    payload=st.binary(max_size=300), model=MODELS, limits=st.sampled_from([DEFAULT_LIMITS, SMALL])
)
def test_arbitrary_bytes_never_crash(
    payload: bytes, model: type[BaseModel], limits: Limits
) -> None:
    _decode_or_invalid(payload, model, limits)


@common
@given(value=json_values, model=MODELS)
def test_arbitrary_json_never_crashes(value: Any, model: type[BaseModel]) -> None:
    _decode_or_invalid(json.dumps(value).encode(), model, DEFAULT_LIMITS)


@common
@given(value=event_like, model=MODELS, limits=st.sampled_from([DEFAULT_LIMITS, SMALL]))
def test_event_shaped_json_never_crashes(
    value: dict[str, Any], model: type[BaseModel], limits: Limits
) -> None:
    payload = json.dumps(value, allow_nan=True).encode()
    _decode_or_invalid(payload, model, limits)


# events of every type, mostly well formed (the shapes above are mostly refused), with the
# optional fields present or not: what decode accepts must pass the published schema
plausible_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=1, max_size=8),
        "user_id": st.text(min_size=1, max_size=8),
        "type": st.sampled_from(sorted(get_args(BehaviorEvent.model_fields["type"].annotation))),
        "ts": st.sampled_from([TS, "2024-05-01T12:00:00", "2024-05-01T12:00:00Z"])
        | st.integers(min_value=0, max_value=1_700_000_000_000)
        | st.floats(min_value=0, max_value=1.7e12),
    },
    optional={
        "item_id": st.text(max_size=8),
        "text": st.text(max_size=12),
        "rating": st.floats(min_value=0, max_value=10) | st.integers(min_value=0, max_value=10),
    },
)


@common
@given(value=plausible_events)
def test_an_event_the_worker_accepts_is_valid_by_the_published_schema(
    value: dict[str, Any],
) -> None:
    _decode_or_invalid(json.dumps(value).encode(), BehaviorEvent, DEFAULT_LIMITS)


@common
@given(value=event_like, cut=st.integers(min_value=0, max_value=400))
def test_truncated_json_never_crashes(value: dict[str, Any], cut: int) -> None:
    payload = json.dumps(value, allow_nan=True).encode()[:cut]
    _decode_or_invalid(payload, BehaviorEvent, DEFAULT_LIMITS)


def test_a_dead_letter_keeps_a_huge_key_to_the_preview_size() -> None:
    """A record with a huge key is still dead-lettered: the letter's ``key`` and its Kafka key
    are cut at the preview size, as ``raw`` is (whole, a 250 KB key made a 1.25 MB letter,
    which the producer refuses as too large)."""
    from streams.pipeline import Record, dead_letter

    key = b"\xff" * 250_000
    record = Record("events", 0, 7, key, b"not json", 1.7e9)
    kafka_key, value = dead_letter(record, "bad_json", "not JSON")
    letter = DeadLetter.model_validate_json(value)
    assert kafka_key == key[:RAW_PREVIEW_BYTES]
    assert letter.key == raw_preview(key) and len(value) < 8 * RAW_PREVIEW_BYTES
    assert letter.offset == 7 and letter.raw == "not json"
    short = Record("events", 0, 8, b"u1", b"{}", 1.7e9)
    assert dead_letter(short, "schema", "x")[0] == b"u1"


@pytest.mark.parametrize(
    "bad",
    [
        {"tags": [1] * 20_000},  # one problem per element, several per union member
        {"attributes": {str(i): None for i in range(4_500)}},
    ],
)
def test_a_record_with_thousands_of_problems_makes_a_small_dead_letter(
    bad: dict[str, Any],
) -> None:
    """A record under the payload limit whose every list element is wrong: pydantic names each,
    and the message made a 1.4 MB letter the producer refuses as too large (resent forever,
    so the items agent stopped for good; found by review). The letter keeps the first
    problems and says how many more there were."""
    from streams.pipeline import Record, dead_letter

    payload = raw(item(**bad))
    assert len(payload) <= DEFAULT_LIMITS.max_payload_bytes
    err = rejected(payload, ItemEvent)
    assert err.reason == "schema" and "more problems" in err.message
    assert err.message.count("; ") == 20 and len(err.message) < 4096
    _, value = dead_letter(Record("items", 0, 1, b"i9", payload, 1.7e9), err.reason, err.message)
    assert len(value) < 4 * RAW_PREVIEW_BYTES
    # whatever raised it, an error text is cut at the preview size, saying how much went
    _, value = dead_letter(Record("items", 0, 2, None, b"{}", 1.7e9), "schema", "x" * 100_000)
    letter = DeadLetter.model_validate_json(value)
    assert letter.error.startswith("x" * 4096) and letter.error.endswith("(95904 more characters)")
