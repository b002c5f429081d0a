"""The consumer-lag arithmetic (``streams/lag.py``) over a consumer's state: the highwater is the
larger of the cached and the listed one, the position stands in before the first commit, lag is
never negative, and a revoked partition's series goes. The series' presence through a real
worker and Prometheus is tested in ``tests/integration/test_prometheus.py``."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.types import TP

from infra import metrics
from streams import lag
from streams.lag import partition_lag, update_consumer_lag

pytestmark = pytest.mark.unit


@dataclass
class StateOfAConsumer:
    """The parts of Faust's consumer ``streams.lag`` reads, with given values."""

    assigned: list[TP]
    listed: dict[TP, Any] = field(default_factory=dict)  # ListOffsets answers
    cached: dict[TP, Any] = field(default_factory=dict)  # from the last fetch response
    positions: dict[TP, Any] = field(default_factory=dict)
    _committed_offset: dict[TP, Any] = field(default_factory=dict)

    def assignment(self) -> list[TP]:
        return self.assigned

    async def highwaters(self, *tps: TP) -> dict[TP, Any]:
        return {tp: self.listed.get(tp) for tp in tps}

    def highwater(self, tp: TP) -> Any:
        return self.cached.get(tp)

    async def position(self, tp: TP) -> Any:
        return self.positions.get(tp)


@dataclass
class App:
    consumer: Any


A, B, C, D = (TP("events", n) for n in range(4))
ITEMS = TP("items", 0)


def _lag(consumer: StateOfAConsumer, topics: set[str] | None = None) -> dict[tuple[str, int], int]:
    return asyncio.run(partition_lag(App(consumer), topics))  # type: ignore[arg-type]


def test_lag_is_highwater_minus_committed_with_the_larger_highwater() -> None:
    consumer = StateOfAConsumer(
        [A, B],
        listed={A: 100, B: 7},  # the embedded broker's answer can be too low (B)
        cached={A: 90, B: 12},
        _committed_offset={A: 40, B: 10},
    )
    assert _lag(consumer) == {("events", 0): 60, ("events", 1): 2}


def test_before_the_first_commit_the_position_stands_in() -> None:
    consumer = StateOfAConsumer(
        [A, B, C],
        listed={A: 50, B: 50, C: 50},
        positions={A: 20, B: None},  # B: no position yet either: no figure rather than a guess
        _committed_offset={A: None, C: 45},
    )
    assert _lag(consumer) == {("events", 0): 30, ("events", 2): 5}


def test_a_partition_with_no_highwater_is_left_out_and_lag_never_negative() -> None:
    consumer = StateOfAConsumer(
        [A, B, C],
        listed={A: None, B: -1, C: 5},  # never fetched, and an unknown (-1) answer
        cached={A: None, C: 3},
        _committed_offset={A: 1, B: 1, C: 9},  # committed past a stale highwater
    )
    assert _lag(consumer) == {("events", 2): 0}


def test_only_the_topics_asked_for() -> None:
    consumer = StateOfAConsumer(
        [A, ITEMS], listed={A: 10, ITEMS: 10}, _committed_offset={A: 4, ITEMS: 0}
    )
    assert _lag(consumer, {"events"}) == {("events", 0): 6}
    assert _lag(consumer) == {("events", 0): 6, ("items", 0): 10}


def _gauge(topic: str, partition: int) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "coldstream_consumer_lag", {"topic": topic, "partition": str(partition)}
    )


def test_the_gauge_follows_the_assignment() -> None:
    tps = [TP("lag-test", n) for n in range(2)]
    consumer = StateOfAConsumer(
        list(tps), listed={tp: 10 for tp in tps}, _committed_offset={tp: 3 for tp in tps}
    )
    asyncio.run(update_consumer_lag(App(consumer)))  # type: ignore[arg-type]
    assert (_gauge("lag-test", 0), _gauge("lag-test", 1)) == (7.0, 7.0)
    consumer.assigned = [tps[0]]  # partition 1 revoked: its series goes
    consumer._committed_offset[tps[0]] = 10
    asyncio.run(update_consumer_lag(App(consumer)))  # type: ignore[arg-type]
    assert (_gauge("lag-test", 0), _gauge("lag-test", 1)) == (0.0, None)


def test_a_failing_consumer_leaves_the_gauge_alone() -> None:
    class Broken(StateOfAConsumer):
        async def highwaters(self, *tps: TP) -> dict[TP, Any]:
            raise RuntimeError("rebalance in progress")

    tp = TP("lag-broken", 0)
    ok = StateOfAConsumer([tp], listed={tp: 5}, _committed_offset={tp: 1})
    asyncio.run(update_consumer_lag(App(ok)))  # type: ignore[arg-type]
    measured = metrics.REGISTRY.get_sample_value(
        "coldstream_consumer_lag_updated_timestamp_seconds"
    )
    assert measured is not None and measured > time.time() - 60
    for _ in range(lag.WARN_AFTER_FAILURES):
        asyncio.run(update_consumer_lag(App(Broken([tp]))))  # type: ignore[arg-type]
    assert _gauge("lag-broken", 0) == 4.0
    # the time of the last measurement stays, so an alert can see the lag is stale
    assert (
        metrics.REGISTRY.get_sample_value("coldstream_consumer_lag_updated_timestamp_seconds")
        == measured
    )


def test_a_run_of_failures_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(StateOfAConsumer):
        async def highwaters(self, *tps: TP) -> dict[TP, Any]:
            raise RuntimeError("broker unreachable")

    tp = TP("lag-down", 0)
    asyncio.run(update_consumer_lag(App(StateOfAConsumer([tp], listed={tp: 1}))))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="streams.lag"):
        for _ in range(lag.WARN_AFTER_FAILURES - 1):
            asyncio.run(update_consumer_lag(App(Broken([tp]))))  # type: ignore[arg-type]
        assert not caplog.records  # a rebalance or a hiccup
        asyncio.run(update_consumer_lag(App(Broken([tp]))))  # type: ignore[arg-type]
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "6 times in a row" in caplog.records[0].getMessage()
