"""Consumer lag per assigned partition, fed to ``coldstream_consumer_lag{topic,partition}``.

Lag is what ``kafka-consumer-groups --describe`` calls LAG: the log-end offset (highwater, the
offset the next produced record will get) minus the group's committed offset (the next offset the
group will read), both per partition. Before the first commit of a partition the consumer's
position stands in for the committed offset.

The highwater is the larger of the consumer's cached one (from its last fetch response, no I/O)
and a fresh ``ListOffsets`` answer: the embedded broker's latest-offset answer can be too low
(DESIGN.md, "Known quirks"), and a partition that was never fetched has no cached value.

Run it from a Faust timer (``streams/agents.py``); it only reads consumer state, so it never
stalls the stream, and a failure is logged and skipped, not raised into the worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import faust
from faust.types import TP

from infra import metrics

log = logging.getLogger(__name__)

# The label sets this process has set, so partitions that were revoked can be dropped.
_reported: set[tuple[str, str]] = set()
# failed measurements in a row: one is a rebalance or a hiccup, a run of them is the broker
_failures_in_a_row = 0
WARN_AFTER_FAILURES = 6


def _as_offset(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        offset = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return offset if offset >= 0 else None


def _committed(consumer: Any, tp: TP) -> int | None:
    """The committed offset Faust tracks for ``tp`` (``None`` before the first commit)."""
    committed: Mapping[TP, int | None] = getattr(consumer, "_committed_offset", {})
    return _as_offset(committed.get(tp))


async def partition_lag(
    app: faust.App, topics: Collection[str] | None = None
) -> dict[tuple[str, int], int]:
    """Lag of each partition assigned to ``app``'s consumer (restricted to ``topics`` if given)."""
    consumer: Any = app.consumer
    assigned = [tp for tp in consumer.assignment() if topics is None or tp.topic in topics]
    if not assigned:
        return {}
    listed: Mapping[TP, int] = await consumer.highwaters(*assigned)
    out: dict[tuple[str, int], int] = {}
    for tp in assigned:
        candidates = [_as_offset(listed.get(tp)), _as_offset(consumer.highwater(tp))]
        known = [c for c in candidates if c is not None]
        if not known:
            continue
        highwater = max(known)
        done = _committed(consumer, tp)
        if done is None:
            done = _as_offset(await consumer.position(tp))
        if done is None:
            continue
        out[(tp.topic, int(tp.partition))] = max(highwater - done, 0)
    return out


async def update_consumer_lag(app: faust.App, topics: Collection[str] | None = None) -> None:
    """Compute :func:`partition_lag` and set the gauge; drops partitions no longer assigned."""
    global _failures_in_a_row
    try:
        lags = await partition_lag(app, topics)
    except Exception as exc:  # consumer not started, rebalance in progress, broker hiccup
        _failures_in_a_row += 1
        if _failures_in_a_row == WARN_AFTER_FAILURES:
            log.warning(
                "consumer lag not measured %d times in a row (%r): the gauge keeps its last "
                "values; coldstream_consumer_lag_updated_timestamp_seconds says since when",
                _failures_in_a_row,
                exc,
            )
        else:
            log.debug("consumer lag not available: %r", exc)
        return
    _failures_in_a_row = 0
    metrics.CONSUMER_LAG_UPDATED.set(time.time())
    current = {(topic, str(partition)) for topic, partition in lags}
    for stale_topic, stale_partition in _reported - current:
        with contextlib.suppress(KeyError):
            metrics.CONSUMER_LAG.remove(stale_topic, stale_partition)
    _reported.clear()
    _reported.update(current)
    for (topic, partition), lag in lags.items():
        metrics.CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(lag)
