"""The batcher's decisions of its own: is the worker behind on an event's partition, and how
long may a batch fill?"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from streams.batching import DrainingStream, batch_wait


def _stream(highwater: Any) -> Any:
    def read(tp: object) -> Any:
        if isinstance(highwater, Exception):
            raise highwater
        return highwater

    return SimpleNamespace(app=SimpleNamespace(consumer=SimpleNamespace(highwater=read)))


def _event(offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(tp=("events", 0), offset=offset))


@pytest.mark.parametrize(
    ("highwater", "offset", "behind"),
    [
        (11, 10, False),  # the event is the partition's last record: caught up
        (12, 10, True),  # one more record on the broker
        (500, 10, True),
        (None, 10, False),  # never fetched: not known to be behind
        (RuntimeError("consumer not started"), 10, False),
        (5, 10, False),  # a highwater that lags the records read (the embedded broker's quirk)
    ],
)
def test_behind_means_more_records_past_the_event(
    highwater: Any, offset: int, behind: bool
) -> None:
    assert DrainingStream._more_on_broker(_stream(highwater), _event(offset)) is behind


@pytest.mark.parametrize(
    ("behind", "waiting", "wait"),
    [
        (False, False, 0.005),  # caught up, queue dry: wait for new events only briefly
        (False, True, 0.02),  # events already queued: keep moving them in, up to behind_within
        (True, False, 0.02),  # the broker holds more of the partition
        (True, True, 0.02),
    ],
)
def test_queued_events_keep_a_batch_filling(behind: bool, waiting: bool, wait: float) -> None:
    assert batch_wait(0.005, 0.02, behind=behind, waiting=waiting) == wait


@pytest.mark.parametrize("waiting", [False, True])
def test_without_behind_within_only_the_window_bounds_a_batch(waiting: bool) -> None:
    assert batch_wait(0.005, None, behind=waiting, waiting=waiting) == 0.005
