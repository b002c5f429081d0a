"""Thin Faust agents: take a batch, hand it to the pipeline, send what it returns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from faust.types import EventT

from infra import metrics
from infra.settings import Settings
from streams.app import Topics
from streams.lag import update_consumer_lag
from streams.pipeline import Outputs, Pipeline, Record

log = logging.getLogger(__name__)


def to_record(event: EventT) -> Record:
    """A Faust event → :class:`Record`; the Kafka timestamp marks the event's arrival."""
    message = event.message
    ts = float(message.timestamp or 0.0)
    return Record(
        topic=message.topic,
        partition=int(message.partition),
        offset=int(message.offset),
        key=message.key,
        value=message.value,
        timestamp=ts if ts > 0 else time.time(),
    )


async def send_outputs(out: Outputs, topics: Topics) -> None:
    """Produce a batch's output and wait for the broker's acks before the batch is acked."""
    pending = [
        await topics.recommendations.send(key=key, value=value)
        for key, value in out.recommendations
    ]
    pending += [
        await topics.dead_letter.send(key=key, value=value) for key, value in out.dead_letters
    ]
    if pending:
        await asyncio.gather(*pending)
    for latency in out.latencies_s:
        metrics.EVENT_TO_REC_SECONDS.observe(latency)


async def finish_batch(work: Awaitable[None]) -> None:
    """Run one batch's processing to its end even if the agent is cancelled meanwhile.

    Faust's ``take_events`` (and ``streams.batching.DrainingStream.take_ready``, built on it)
    acks a batch in a ``finally`` around its ``yield``. On a stop it
    yields what it still buffers as one last batch, and ``App.stop`` then cancels the agent's
    task (once, and waits for it): cancelled mid-batch, the batch was acked without being
    applied, the final commit moved past it and the member taking the partition over never saw
    it (the scale-out test's "all events applied" wait timed out one event short). Since
    ``stream_wait_empty`` is on (streams/app.py) ``App.stop`` first waits for the batches it
    tracks, but that wait gives up as soon as the consumer itself is stopping; so the
    cancellation is still held back until the batch is done, then re-raised: what gets acked
    was applied. A stop during a store outage therefore waits for the store (the pipeline
    retries without end); a process killed meanwhile commits nothing and the batch is
    redelivered.
    """
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():  # the batch itself was cancelled (event loop shutting down)
                raise
            if cancelled is None:
                log.info("agent stopped in the middle of a batch: finishing the batch first")
            cancelled = exc
            continue
        break
    if cancelled is not None:
        raise cancelled


async def guarded(
    records: Sequence[Record],
    handle: Callable[[Sequence[Record]], Awaitable[Outputs]],
    pipeline: Pipeline,
) -> Outputs:
    """Run ``handle`` on the batch; on an unexpected error, retry record by record.

    A record that still fails alone is dead-lettered with the error, so one poison message
    neither kills the agent nor takes the rest of its batch down with it.
    """
    try:
        return await handle(records)
    except Exception:
        log.exception("batch of %d failed; retrying record by record", len(records))
    merged = Outputs()
    for record in records:
        try:
            single = await handle([record])
        except Exception as exc:
            log.exception("record %s[%d]@%d failed", record.topic, record.partition, record.offset)
            key, value = pipeline.dead_letter_for(record, "processing_error", repr(exc)[:500])
            merged.dead_letters.append((key, value))
            continue
        merged.recommendations += single.recommendations
        merged.dead_letters += single.dead_letters
        merged.latencies_s += single.latencies_s
    return merged


def register_agents(app: faust.App, topics: Topics, pipeline: Pipeline, settings: Settings) -> None:
    async def _batches(
        stream: faust.StreamT, max_: int, within: float, drained: bool
    ) -> AsyncIterator[list[Record]]:
        if drained:
            taken = cast(Any, stream).take_ready(
                max_, within=within, behind_within=settings.batch_behind_within_s or None
            )
        else:
            taken = cast(Any, stream).take_events(max_, within=within)
        async for events in taken:
            yield [to_record(e) for e in events]

    async def run_agent(
        name: str,
        stream: faust.StreamT,
        max_: int,
        within: float,
        handle: Callable[[Sequence[Record]], Awaitable[Outputs]],
        drained: bool = False,
    ) -> None:
        await pipeline.start()

        async def process(records: Sequence[Record]) -> None:
            start = time.perf_counter()
            out = await guarded(records, handle, pipeline)
            await send_outputs(out, topics)
            metrics.BATCH_SIZE.labels(agent=name).observe(len(records))
            metrics.BATCH_SECONDS.labels(agent=name).observe(time.perf_counter() - start)

        async for records in _batches(stream, max_, within, drained):
            await finish_batch(process(records))

    @app.agent(topics.items, name="items")
    async def item_agent(stream: faust.StreamT) -> None:
        await run_agent(
            "items",
            stream,
            settings.item_batch_max,
            settings.item_batch_within_s,
            pipeline.on_items,
        )

    @app.agent(topics.events, name="events")
    async def behavior_agent(stream: faust.StreamT) -> None:
        await run_agent(
            "events",
            stream,
            settings.batch_max_events,
            settings.batch_within_s,
            pipeline.on_events,
            drained=settings.batch_close_when_drained,
        )

    @app.timer(settings.trending_persist_every_s)
    async def persist_trending() -> None:
        await pipeline.persist_trending()

    @app.timer(settings.ranker_reload_every_s)
    async def reload_models() -> None:
        await pipeline.reload_models()

    @app.timer(settings.lag_interval_s)
    async def consumer_lag() -> None:
        await update_consumer_lag(app, {settings.topic_events, settings.topic_items})

    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        parts = [tp.partition for tp in assigned if tp.topic == settings.topic_events]
        if parts:
            await pipeline.on_partitions_assigned(parts)

    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        parts = [tp.partition for tp in revoked if tp.topic == settings.topic_events]
        if parts:
            await pipeline.on_partitions_revoked(parts)

    # mode's Signal.connect is typed for receivers with a ``signal`` keyword; ours take **kwargs
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_partitions_revoked.connect(cast(Any, on_revoked))

    _ = (
        item_agent,
        behavior_agent,
        persist_trending,
        reload_models,
        consumer_lag,
    )  # registered on the app by decorators
