"""The incremental profile rule ``u ← normalize(decay(Δt)·u + w(type)·v)``, checked by hand."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.settings import Settings
from ranking.profile import (
    RATING_SCALE,
    Profile,
    ProfileConfig,
    Signal,
    apply_signal,
    decay,
    event_weight,
    normalize,
)

pytestmark = pytest.mark.unit

HOUR = 3600.0
WEIGHTS = {"view": 1.0, "click": 1.5, "purchase": 4.0, "rate": 2.0, "search": 1.5}
CFG = ProfileConfig(weights=WEIGHTS, half_life_s=HOUR, recent_max=3, seen_max=5, texts_max=2)


def e(i: int, dim: int = 4) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def sig(
    n: int,
    ts: float,
    vector: np.ndarray | None,
    kind: str = "view",
    item: str | None = None,
    **kw: object,
) -> Signal:
    return Signal(f"ev{n}", kind, ts, vector, item_id=item, **kw)  # type: ignore[arg-type]


# --- decay and weights -------------------------------------------------------------------


def test_decay_half_life() -> None:
    assert decay(0.0, HOUR) == 1.0
    assert decay(HOUR, HOUR) == pytest.approx(0.5)
    assert decay(2 * HOUR, HOUR) == pytest.approx(0.25)
    assert decay(HOUR / 2, HOUR) == pytest.approx(1 / math.sqrt(2))


@given(dt=st.floats(min_value=-1e9, max_value=0.0))
def test_decay_never_amplifies(dt: float) -> None:
    assert decay(dt, HOUR) == 1.0


@given(a=st.floats(0, 1e6), b=st.floats(0, 1e6))
def test_decay_is_monotone_and_multiplicative(a: float, b: float) -> None:
    assert 0.0 <= decay(a, HOUR) <= 1.0
    if a <= b:
        assert decay(a, HOUR) >= decay(b, HOUR)
    assert decay(a + b, HOUR) == pytest.approx(
        decay(a, HOUR) * decay(b, HOUR), rel=1e-9, abs=1e-300
    )


def test_event_weight_and_rating_scaling() -> None:
    assert event_weight(CFG, "click", None) == 1.5
    assert event_weight(CFG, "unknown", None) == 0.0
    assert event_weight(CFG, "rate", RATING_SCALE) == pytest.approx(2.0)
    assert event_weight(CFG, "rate", 2.5) == pytest.approx(1.0)
    assert event_weight(CFG, "rate", 1.0) == pytest.approx(2.0 / 5)
    assert event_weight(CFG, "rate", 10.0) == pytest.approx(2.0)  # clamped to the scale
    assert event_weight(CFG, "rate", 0.0) == 0.0
    assert event_weight(CFG, "rate", -3.0) == 0.0
    assert event_weight(CFG, "rate", None) == pytest.approx(2.0)
    assert event_weight(CFG, "view", 1.0) == 1.0  # rating only scales rate events


def test_settings_weights_are_what_the_rule_uses() -> None:
    weights = Settings().event_weights()
    assert set(weights) == {
        "view", "click", "add_to_cart", "purchase", "rate", "search", "review", "profile"
    }  # fmt: skip
    assert all(w > 0 for w in weights.values())


def test_normalize() -> None:
    np.testing.assert_allclose(normalize(np.array([3.0, 4.0])), [0.6, 0.8])
    zero = np.zeros(3)
    np.testing.assert_array_equal(normalize(zero), zero)


# --- the update rule ---------------------------------------------------------------------


def test_first_signal_sets_normalized_vector() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, np.array([3.0, 4.0, 0.0, 0.0]), "purchase", "a"), CFG)
    assert p.vector is not None
    assert p.vector.dtype == np.float32
    np.testing.assert_allclose(p.vector, [0.6, 0.8, 0, 0], atol=1e-6)
    assert p.event_count == 1
    assert p.last_ts == 0.0


def test_rule_against_hand_computation() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 1000.0, e(0), "view", "a"), CFG)
    # one half-life later, a click (w = 1.5) on an orthogonal item:
    # u = normalize(0.5·e0 + 1.5·e1) = (0.5, 1.5) / sqrt(2.5)
    apply_signal(p, sig(2, 1000.0 + HOUR, e(1), "click", "b"), CFG)
    expected = np.array([0.5, 1.5, 0, 0]) / math.sqrt(2.5)
    assert p.vector is not None
    np.testing.assert_allclose(p.vector, expected, atol=1e-6)
    # two half-lives later, a purchase (w = 4) of e2: u ← normalize(0.25·u + 4·e2)
    apply_signal(p, sig(3, 1000.0 + 3 * HOUR, e(2), "purchase", "c"), CFG)
    expected = 0.25 * expected + 4.0 * np.array([0, 0, 1.0, 0])
    np.testing.assert_allclose(p.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert float(np.linalg.norm(p.vector)) == pytest.approx(1.0, abs=1e-6)
    assert p.event_count == 3
    assert p.last_ts == 1000.0 + 3 * HOUR


def test_same_time_events_add_without_decay() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 50.0, e(0), "view", "a"), CFG)
    apply_signal(p, sig(2, 50.0, e(1), "view", "b"), CFG)
    assert p.vector is not None
    np.testing.assert_allclose(p.vector, [1 / math.sqrt(2), 1 / math.sqrt(2), 0, 0], atol=1e-6)


def test_out_of_order_event_does_not_amplify() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 10 * HOUR, e(0), "view", "a"), CFG)
    # an event 5 half-lives in the past: the old profile keeps weight 1, not 2^5
    apply_signal(p, sig(2, 5 * HOUR, e(1), "view", "b"), CFG)
    assert p.vector is not None
    np.testing.assert_allclose(p.vector, [1 / math.sqrt(2), 1 / math.sqrt(2), 0, 0], atol=1e-6)
    assert p.last_ts == 10 * HOUR  # the clock never moves backwards
    # the next in-order event decays from 10 h, not from 5 h
    apply_signal(p, sig(3, 11 * HOUR, e(2), "view", "c"), CFG)
    expected = 0.5 * np.array([1 / math.sqrt(2), 1 / math.sqrt(2), 0, 0]) + np.array([0, 0, 1, 0])
    np.testing.assert_allclose(p.vector, expected / np.linalg.norm(expected), atol=1e-6)


def test_rating_scales_the_step() -> None:
    low = Profile("u1", vector=e(0), last_ts=0.0)
    high = Profile("u1", vector=e(0), last_ts=0.0)
    apply_signal(low, sig(2, 0.0, e(1), "rate", "b", rating=1.0), CFG)
    apply_signal(high, sig(3, 0.0, e(1), "rate", "b", rating=5.0), CFG)
    assert low.vector is not None and high.vector is not None
    # w = 2·1/5 = 0.4 vs w = 2
    np.testing.assert_allclose(low.vector, normalize(np.array([1.0, 0.4, 0, 0])), atol=1e-6)
    np.testing.assert_allclose(high.vector, normalize(np.array([1.0, 2.0, 0, 0])), atol=1e-6)


def test_zero_weight_leaves_vector_but_records_event() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "rate", "a", rating=0.0), CFG)
    assert p.vector is None
    assert p.event_count == 1
    assert p.seen == ["a"]
    apply_signal(p, sig(2, 0.0, e(1), "view", "b"), CFG)
    assert p.vector is not None
    before = p.vector.copy()
    apply_signal(p, sig(3, 0.0, e(2), "unknown_type", "c"), CFG)
    np.testing.assert_array_equal(p.vector, before)
    assert p.event_count == 3


def test_an_item_rated_0_is_seen_but_no_recent_interest() -> None:
    """It anchored reasons ("similar to 'X' you rated") and the recent-items vector although
    it adds nothing to the profile (found by review)."""
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a"), CFG)
    apply_signal(p, sig(2, 1.0, e(1), "rate", "b", rating=0.0), CFG)
    assert (p.recent_items, p.seen) == (["a"], ["a", "b"])
    apply_signal(p, sig(3, 2.0, e(0), "rate", "a", rating=0.0), CFG)  # "not this" after all
    assert (p.recent_items, p.recent_types, p.seen) == ([], {}, ["b", "a"])


def test_signal_without_vector_keeps_bookkeeping() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 5.0, None, "view", "a", partition=1, offset=7), CFG)
    assert p.vector is None
    assert (p.event_count, p.seen, p.offsets, p.event_ids) == (1, ["a"], {"1": 7}, ["ev1"])


def test_category_affinity_decays() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a", category="Drama"), CFG)
    apply_signal(p, sig(2, HOUR, e(1), "purchase", "b", category="Comedy"), CFG)
    assert p.categories == pytest.approx({"Drama": 0.5, "Comedy": 4.0})
    apply_signal(p, sig(3, 2 * HOUR, e(1), "view", "c", category="Drama"), CFG)
    assert p.categories == pytest.approx({"Drama": 1.25, "Comedy": 2.0})


def test_category_affinity_decays_across_an_event_without_a_category() -> None:
    """A search moves ``last_ts`` but has no category: the categories skipped the decay of the
    gap before it (found by review: {Drama: 0.9998, Comedy: 1.0} ten half-lives later)."""
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a", category="Drama"), CFG)
    apply_signal(p, sig(2, 10 * HOUR, e(1), "search", text="space opera"), CFG)
    assert p.categories == pytest.approx({"Drama": 2**-10})
    apply_signal(p, sig(3, 10 * HOUR + 1, e(1), "view", "b", category="Comedy"), CFG)
    assert p.categories["Drama"] == pytest.approx(2**-10, rel=1e-3)
    assert p.categories["Comedy"] == pytest.approx(1.0)


def test_the_vector_decays_across_an_event_of_weight_zero() -> None:
    """A rating of 0 moves ``last_ts`` without moving the vector; the decay of the gap before it
    was lost (found by review: u = (0.707, 0.707) instead of ≈ (0.001, 1))."""
    p, q = Profile("u1"), Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a"), CFG)
    apply_signal(p, sig(2, 10 * HOUR, e(1), "rate", "b", rating=0.0), CFG)
    apply_signal(p, sig(3, 10 * HOUR + 1, e(1), "view", "c"), CFG)
    apply_signal(q, sig(1, 0.0, e(0), "view", "a"), CFG)
    apply_signal(q, sig(3, 10 * HOUR + 1, e(1), "view", "c"), CFG)
    assert p.vector is not None and q.vector is not None
    keep = decay(10 * HOUR + 1, HOUR)
    np.testing.assert_allclose(q.vector, normalize(keep * e(0) + e(1)), rtol=1e-6)
    np.testing.assert_allclose(p.vector, q.vector, rtol=1e-6)
    assert (p.vector_ts, p.last_ts) == (10 * HOUR + 1, 10 * HOUR + 1)


def test_a_stored_profile_without_vector_ts_decays_from_its_last_event() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a"), CFG)
    payload = json.loads(json.dumps(p.to_payload()))
    del payload["vector_ts"]  # written before the field existed
    back = Profile.from_payload("u1", p.vector, payload)
    assert back.vector_ts == 0.0 == back.last_ts


def test_categories_keep_the_strongest_when_over_the_cap() -> None:
    cfg = ProfileConfig(weights=WEIGHTS, half_life_s=HOUR, categories_max=2)
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "purchase", "a", category="Drama"), cfg)
    apply_signal(p, sig(2, 0.0, e(0), "click", "b", category="Comedy"), cfg)
    apply_signal(p, sig(3, 0.0, e(0), "view", "c", category="Horror"), cfg)
    assert p.categories == pytest.approx({"Drama": 4.0, "Comedy": 1.5})
    apply_signal(p, sig(4, 0.0, e(0), "purchase", "d", category="Horror"), cfg)
    assert p.categories == pytest.approx({"Drama": 4.0, "Horror": 4.0})


# --- bounded bookkeeping -----------------------------------------------------------------


def test_seen_and_recent_are_bounded_and_unique() -> None:
    p = Profile("u1")
    for n in range(10):
        apply_signal(p, sig(n, float(n), e(n % 4), "view", f"i{n}"), CFG)
    assert p.recent_items == ["i7", "i8", "i9"]
    assert p.seen == ["i5", "i6", "i7", "i8", "i9"]
    apply_signal(p, sig(10, 10.0, e(0), "view", "i6"), CFG)  # seen again: moves to the end
    assert p.recent_items == ["i8", "i9", "i6"]
    assert p.seen == ["i5", "i7", "i8", "i9", "i6"]
    assert len(set(p.seen)) == len(p.seen)


def test_recent_types_follow_recent_items() -> None:
    p = Profile("u1")
    kinds = ["view", "click", "purchase"]
    for n in range(10):
        apply_signal(p, sig(n, float(n), e(0), kinds[n % 3], f"i{n}"), CFG)
    assert p.recent_types == {"i7": "click", "i8": "purchase", "i9": "view"}
    apply_signal(p, sig(10, 10.0, e(0), "purchase", "i8"), CFG)
    assert p.recent_types["i8"] == "purchase"
    assert set(p.recent_types) == set(p.recent_items)


def test_texts_are_bounded_and_truncated() -> None:
    p = Profile("u1")
    for n in range(4):
        apply_signal(p, sig(n, float(n), e(1), "search", text=f"{n}" + "x" * 300), CFG)
    assert [t["text"][0] for t in p.texts] == ["2", "3"]
    assert all(len(t["text"]) == 200 for t in p.texts)
    assert p.texts[-1]["type"] == "search"
    assert p.texts[-1]["vector"] == [0.0, 1.0, 0.0, 0.0]


def test_event_ids_are_bounded() -> None:
    cfg = ProfileConfig(weights=WEIGHTS, half_life_s=HOUR, event_ids_max=4)
    p = Profile("u1")
    for n in range(6):
        apply_signal(p, sig(n, float(n), e(0), "view", "a"), cfg)
    assert p.event_ids == ["ev2", "ev3", "ev4", "ev5"]


# --- effectively-once ----------------------------------------------------------------------


def test_offsets_track_max_per_partition() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a", partition=0, offset=10), CFG)
    apply_signal(p, sig(2, 0.0, e(0), "view", "a", partition=3, offset=4), CFG)
    apply_signal(p, sig(3, 0.0, e(0), "view", "a", partition=0, offset=8), CFG)
    assert p.offsets == {"0": 10, "3": 4}


def test_already_applied() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a", partition=0, offset=10), CFG)
    assert p.already_applied("new", 0, 10)  # same offset: a replay
    assert p.already_applied("new", 0, 3)  # older offset: a replay
    assert not p.already_applied("new", 0, 11)
    assert not p.already_applied("new", 1, 0)  # another partition has its own offsets
    assert p.already_applied("ev1", None, None)  # duplicate event id, no offset
    assert p.already_applied("ev1", 0, 99)  # duplicate event id at a new offset
    assert not p.already_applied("new", None, None)
    assert not p.already_applied("new", 0, None)


# --- payload round trip --------------------------------------------------------------------


def test_payload_round_trip_through_json() -> None:
    p = Profile("u1")
    apply_signal(p, sig(1, 0.0, e(0), "view", "a", category="Drama", partition=2, offset=5), CFG)
    apply_signal(p, sig(2, 60.0, e(1), "search", text="space opera"), CFG)
    payload = json.loads(json.dumps(p.to_payload()))
    assert payload["has_vector"] is True
    back = Profile.from_payload("u1", p.vector, payload)
    assert back == p


def test_payload_without_vector_stays_without() -> None:
    p = Profile("u2")
    apply_signal(p, sig(1, 0.0, None, "view", "a"), CFG)
    payload = json.loads(json.dumps(p.to_payload()))
    assert payload["has_vector"] is False
    # a store returns some placeholder vector for a point written without one
    back = Profile.from_payload("u2", np.ones(4, np.float32), payload)
    assert back.vector is None
    assert back.seen == ["a"]


def test_from_empty_payload() -> None:
    p = Profile.from_payload("u3", None, {})
    assert p == Profile("u3")


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.floats(0, 100 * HOUR),
            st.sampled_from(sorted(WEIGHTS)),
            st.lists(st.floats(-1, 1), min_size=4, max_size=4),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_profile_vector_is_unit_or_none(steps: list[tuple[float, str, list[float]]]) -> None:
    p = Profile("u")
    for n, (ts, kind, raw) in enumerate(steps):
        v = np.array(raw, dtype=np.float32)
        if np.linalg.norm(v) < 1e-3:
            continue
        apply_signal(p, sig(n, ts, normalize(v), kind, f"i{n}", rating=3.0), CFG)
        assert p.vector is not None
        assert np.all(np.isfinite(p.vector))
        norm = float(np.linalg.norm(p.vector))
        # exactly opposite signals can cancel to ~0 (then normalize leaves it); otherwise unit
        assert norm == pytest.approx(1.0, abs=1e-4) or norm < 1e-3


def test_a_text_anchor_is_unit_length_and_only_for_an_event_that_counts() -> None:
    """A review's vector (half its text, half its item) was stored as it came, shorter than an
    item's, so by dot product it rarely won a reason; and a text event of weight 0 left an
    anchor although it moved nothing. Found by review."""
    p = Profile("u1")
    review = 0.5 * (e(0) + e(1))  # length 0.707
    with_reviews = dataclasses.replace(CFG, weights={**WEIGHTS, "review": 2.0})
    apply_signal(p, sig(1, 0.0, review, "review", "a", text="loved the score"), with_reviews)
    assert np.linalg.norm(p.texts[0]["vector"]) == pytest.approx(1.0, abs=1e-3)
    muted = dataclasses.replace(CFG, weights={**WEIGHTS, "search": 0.0})
    q = Profile("u2")
    apply_signal(q, sig(2, 0.0, e(2), "search", None, text="crime movie"), muted)
    assert q.texts == [] and q.vector is None
