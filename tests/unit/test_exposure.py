"""New-item exposure: each new item's share of the latest lists, and the cap on it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ranking.exposure import NewItemExposure

pytestmark = pytest.mark.unit


def test_an_item_is_capped_once_it_filled_its_share_of_a_window() -> None:
    exposure = NewItemExposure(max_share=0.3, window=10)  # at most 3 of any 10 lists
    assert exposure.limit == 3
    for _ in range(3):
        assert not exposure.capped("a")
        exposure.record(["a"])
    assert exposure.capped("a") and not exposure.capped("b")
    assert exposure.shown("a") == 3


def test_the_cap_lifts_as_the_lists_that_showed_it_leave_the_window() -> None:
    exposure = NewItemExposure(max_share=0.2, window=5)  # 1 of any 5 lists
    exposure.record(["a"])
    for _ in range(4):
        assert exposure.capped("a")
        exposure.record(["b"])
    exposure.record([])  # the list with "a" is now 6 lists back
    assert not exposure.capped("a")
    assert exposure.shown("a") == 0


def test_a_list_counts_an_item_once_and_no_cap_when_the_share_is_one() -> None:
    exposure = NewItemExposure(max_share=0.5, window=4)
    exposure.record(["a", "a", "b"])
    assert exposure.shown("a") == 1 and exposure.shown("b") == 1
    free = NewItemExposure(max_share=1.0, window=4)
    for _ in range(10):
        free.record(["a"])
    assert not free.capped("a") and not free.enabled


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        NewItemExposure(max_share=0.0, window=10)
    with pytest.raises(ValueError):
        NewItemExposure(max_share=0.5, window=0)


@given(
    share=st.floats(min_value=0.05, max_value=0.95),
    window=st.integers(min_value=1, max_value=30),
    lists=st.lists(st.lists(st.sampled_from("abcde"), max_size=3), max_size=120),
)
def test_counts_always_match_the_last_window_of_lists(
    share: float, window: int, lists: list[list[str]]
) -> None:
    exposure = NewItemExposure(max_share=share, window=window)
    for items in lists:
        exposure.record(items)
    recent = lists[-window:]
    for item in "abcde":
        assert exposure.shown(item) == sum(item in set(items) for items in recent)
        assert exposure.capped(item) == (exposure.shown(item) >= exposure.limit)
