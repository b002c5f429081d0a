"""Thin Faust agents: take a batch, hand it to the pipeline, send what it returns."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, cast

import faust
import mode
from faust.types import EventT

from encoders.batcher import BatcherStopped
from infra import metrics
from infra.health import HEALTH
from infra.settings import Settings
from streams.app import Topics
from streams.lag import update_consumer_lag
from streams.pipeline import BatchPartlySent, Outputs, Pipeline, Record

log = logging.getLogger(__name__)

E = TypeVar("E")  # a stream's event (faust's EventT; anything with an ack in tests)


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


async def send_outputs(out: Outputs, topics: Topics) -> Awaitable[None]:
    """Hand a batch's output to the producer; the awaitable returned completes once the broker
    acknowledged all of it (and then records the event→recommendation latencies).

    It must be awaited before the batch's input events are acked: an input is acked only
    after what it produced is on the broker.
    """
    recommendations, letters = list(out.recommendations), list(out.dead_letters)
    pending = [
        await topics.recommendations.send(key=key, value=value) for key, value in recommendations
    ]
    pending += [await topics.dead_letter.send(key=key, value=value) for key, value in letters]

    async def delivered() -> None:
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                # what the broker took is not sent again: ``out`` keeps only the records it
                # failed, for a resend (a list delivered, then sent again after a later
                # batch's newer list for the same user, would read as the latest one)
                n = len(recommendations)
                out.recommendations = [
                    rec
                    for rec, got in zip(recommendations, results[:n], strict=True)
                    if isinstance(got, BaseException)
                ]
                out.dead_letters = [
                    letter
                    for letter, got in zip(letters, results[n:], strict=True)
                    if isinstance(got, BaseException)
                ]
                raise failed[0]
        # all taken: emptied, so a resend of the batch (another part failed) sends none of it
        # again and does not time its lists twice
        for latency in out.latencies_s:
            metrics.EVENT_TO_REC_SECONDS.observe(latency)
        out.recommendations, out.dead_letters, out.latencies_s = [], [], []

    return delivered()


async def until_delivered(
    delivered: Awaitable[None],
    parts: Sequence[Outputs],
    topics: Topics,
    *,
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
) -> None:
    """Wait for a batch's output; if the broker fails it (after the producer's own retries),
    or a resend cannot even be handed to the producer, send ``parts`` again, backing off,
    until it is taken: each part as :func:`send_outputs` left it, the records the broker
    failed (a part refused when handed over goes whole). Consumers drop repeats.

    Both agents' batches go through it. An exception would end the agent's loop: for the
    items agent, whose batches Faust acks when the next one is asked for (``take_events``),
    Faust acks the batch on the way out, so its events would be committed without their
    outputs; for the behavior agent, the restarted agent's acks could move the commit past
    the failed batch. So a batch waits, unacked, for as long as the broker refuses its output.
    """
    delay = first_delay_s
    failing = False
    try:
        while True:
            try:
                await delivered
                return
            except Exception as exc:
                if not failing:
                    failing = True
                    _resending(+1)
                metrics.OUTPUT_RESENDS.inc()
                log.warning("output not delivered (%s); sending it again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay_s)
                delivered = _resend(parts, topics)
    finally:
        if failing:
            _resending(-1)


_RESENDING = [0]  # batches whose output is being sent again (one event loop: no lock)


def _resending(change: int) -> None:
    """While any batch's output is being sent again, the broker counts as down: readiness
    fails and ``coldstream_dependency_up{dependency="broker"}`` is 0. A batch that waits for
    its output blocks its agent, and only the resend counter said so before."""
    _RESENDING[0] += change
    up = _RESENDING[0] == 0
    metrics.DEPENDENCY_UP.labels(dependency="broker").set(1 if up else 0)
    HEALTH.set_dependency("broker", up)


async def _refused(exc: BaseException) -> None:
    raise exc


async def _resend(parts: Sequence[Outputs], topics: Topics) -> None:
    """``parts`` again (what of them is still undelivered); a send that raises (a full buffer,
    no metadata) raises here, inside :func:`until_delivered`'s loop, once the parts handed
    over before it are delivered or failed: each is left with only what the broker failed
    (not awaited, a part the broker took would go whole again next time)."""
    handed: list[Awaitable[None]] = []
    try:
        for part in parts:
            handed.append(await send_outputs(part, topics))
    except Exception:
        await asyncio.gather(*handed, return_exceptions=True)
        raise
    await all_delivered(handed)


async def all_delivered(parts: Sequence[Awaitable[None]]) -> None:
    """Every part of a batch's output acknowledged; the first failure is raised once every
    part is done (none is left unawaited)."""
    for result in await asyncio.gather(*parts, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class DeferredAcks(Generic[E]):
    """A batch's input events, acked once its outputs are on the broker, while the next batch
    already runs.

    Waiting for the broker's acks before taking the next batch idled the worker for a round
    trip per batch: ~5 ms of the 35-80 ms batches at 500 events/s (docs/performance-history.md). The
    guarantee is kept: an input event is acked only after every output of its batch was
    acknowledged, so the committed offset never passes an event whose recommendations could
    still be lost (Faust commits up to the first offset not acked), and an event redelivered
    after a crash is recognised as applied (the profile keeps applied offsets). At most
    ``in_flight`` batches wait; 0 waits for each batch before the next, as before. A batch
    taken while more events waited (the worker is behind: it closed at its size or time
    bound) waits for its own acks: there the round trip is small beside the batch, and
    overlapping it measured no faster at 2,000 events/s in three earlier rounds, with smaller
    batches. The agents hand it deliveries that send again what the broker fails
    (:func:`until_delivered`), so a batch waits, unacked, while the broker refuses its output;
    a delivery that still fails (it was cancelled) fails the agent at its next batch, and no
    later batch is acked.
    """

    def __init__(self, ack: Callable[[E], Awaitable[Any]], in_flight: int) -> None:
        if in_flight < 0:
            raise ValueError("in_flight must be at least 0")
        self._ack = ack
        self.in_flight = in_flight
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    async def after(
        self, delivered: Awaitable[None], events: Sequence[E], *, wait: bool = False
    ) -> None:
        """Ack ``events`` once ``delivered`` completes; returns when at most ``in_flight``
        batches are still waiting (none with ``wait``)."""
        earlier = self._waiting[-1] if self._waiting else None
        self._waiting.append(asyncio.ensure_future(self._ack_when(delivered, events, earlier)))
        self._raise_failed()
        while len(self._waiting) > (0 if wait else self.in_flight):
            await self._waiting.popleft()

    async def drain(self) -> None:
        """Wait for every batch still waiting (a stop: what was delivered gets acked); the
        first failure is raised after all of them are done (the later ones fail with it)."""
        failed: BaseException | None = None
        while self._waiting:
            try:
                await self._waiting.popleft()
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    async def _ack_when(
        self,
        delivered: Awaitable[None],
        events: Sequence[E],
        earlier: asyncio.Future[None] | None,
    ) -> None:
        """Ack after the outputs are delivered and the batch before was acked: in batch order.
        Faust's commit only stops at a gap of more than one offset past the committed one, so
        a later batch acked around a failed one could move the commit past it."""
        metrics.OUTPUTS_AWAITING_ACKS.inc()
        try:
            await delivered
        finally:
            metrics.OUTPUTS_AWAITING_ACKS.dec()
        if earlier is not None:
            await earlier  # an earlier batch that failed fails this one: nothing acked after it
        for event in events:
            await self._ack(event)

    def _raise_failed(self) -> None:
        for task in list(self._waiting):
            if task.done() and task.exception() is not None:
                self._waiting.remove(task)
                task.result()


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


class BatchHandler(Protocol):
    def __call__(self, records: Sequence[Record], *, retry: bool = False) -> Awaitable[Outputs]: ...


async def guarded(records: Sequence[Record], handle: BatchHandler, pipeline: Pipeline) -> Outputs:
    """Run ``handle`` on the batch; on an unexpected error, retry record by record.

    A record that still fails alone is dead-lettered with the error, so one poison message
    neither kills the agent nor takes the rest of its batch down with it. The records tried
    alone are marked ``retry``: what the failed batch counted already is not counted again.
    """
    todo = list(records)
    try:
        return await handle(records)
    except BatcherStopped:  # the worker is stopping: no record's fault, none dead-lettered
        raise
    except BatchPartlySent as exc:  # what went out early is done: the rest only
        todo = [r for r in records if (r.topic, r.partition, r.offset) not in exc.final]
        log.exception(
            "batch of %d failed after %d records' outputs were sent; retrying the other %d "
            "record by record",
            len(records),
            len(records) - len(todo),
            len(todo),
        )
    except Exception:
        log.exception("batch of %d failed; retrying record by record", len(records))
    merged = Outputs()
    for record in todo:
        try:
            single = await handle([record], retry=True)
        except BatcherStopped:
            raise
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
    ) -> AsyncIterator[tuple[list[EventT], bool]]:
        """Batches, each with whether it closed because nothing else was waiting."""
        if drained:  # the agent acks (DeferredAcks)
            taken = cast(Any, stream).take_ready(
                max_,
                within=within,
                behind_within=settings.batch_behind_within_s or None,
                ack=False,
            )
            async for events in taken:
                yield events, cast(Any, stream).batch_drained
        else:  # Faust acks a batch when the next one is asked for
            async for events in cast(Any, stream).take_events(max_, within=within):
                yield events, False

    async def run_agent(
        name: str,
        stream: faust.StreamT,
        max_: int,
        within: float,
        handle: Callable[..., Awaitable[Outputs]],
        drained: bool = False,
        sends_early: bool = False,
    ) -> None:
        """``sends_early``: ``handle`` takes ``early``, a callback sending part of the batch's
        outputs before the batch ends (``Pipeline.on_events``: before a late-item wait)."""
        await pipeline.start()
        acks = DeferredAcks(stream.ack, settings.output_acks_in_flight) if drained else None

        async def process(events: Sequence[EventT], keeping_up: bool) -> None:
            start = time.perf_counter()
            records = [to_record(e) for e in events]
            parts: list[Outputs] = []
            sent: list[Awaitable[None]] = []

            async def send(part: Outputs) -> None:
                parts.append(part)
                try:
                    sent.append(await send_outputs(part, topics))
                except Exception as exc:
                    # refused before it was even handed over (a full buffer, no metadata): a
                    # failed delivery like any other, sent again by ``until_delivered``; raised
                    # here, it would end the agent with its batch half acked (Faust restarts an
                    # agent on the same stream, and its take generator acks on the way out)
                    sent.append(_refused(exc))

            batch_handle = functools.partial(handle, early=send) if sends_early else handle
            await send(await guarded(records, batch_handle, pipeline))
            # the batch's events are acked once all of its outputs are on the broker; what the
            # broker fails is sent again until it is taken
            delivered = until_delivered(all_delivered(sent), parts, topics)
            metrics.BATCH_SIZE.labels(agent=name).observe(len(records))
            metrics.BATCH_SECONDS.labels(agent=name).observe(time.perf_counter() - start)
            if acks is None:
                # Faust acks the batch when the next one is asked for, even after an exception
                await delivered
            else:
                await acks.after(delivered, events, wait=not keeping_up)

        try:
            async for events, keeping_up in _batches(stream, max_, within, drained):
                await finish_batch(process(events, keeping_up))
        finally:
            if acks is not None:  # a stop: what was delivered gets acked
                await finish_batch(acks.drain())

    # an exception that still escapes an agent crashes the worker (it exits non-zero, and is
    # restarted from the last commit) instead of Faust restarting the agent on the same stream,
    # whose take generators ack on the way out and whose new ack chain knows nothing of the
    # failed batch: the commit could pass events whose outputs never went out
    @app.agent(topics.items, name="items", supervisor_strategy=mode.CrashingSupervisor)
    async def item_agent(stream: faust.StreamT) -> None:
        await run_agent(
            "items",
            stream,
            settings.item_batch_max,
            settings.item_batch_within_s,
            pipeline.on_items,
        )

    @app.agent(topics.events, name="events", supervisor_strategy=mode.CrashingSupervisor)
    async def behavior_agent(stream: faust.StreamT) -> None:
        await run_agent(
            "events",
            stream,
            settings.batch_max_events,
            settings.batch_within_s,
            pipeline.on_events,
            drained=settings.batch_close_when_drained,
            sends_early=True,
        )

    @app.timer(settings.health_beat_every_s)
    async def heartbeat() -> None:
        HEALTH.beat()  # /healthz: the event loop turns

    @app.timer(settings.health_encoder_recheck_s)
    async def recheck_encoder() -> None:
        await pipeline.recheck_encoder()

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

    # Faust counts rebalances as they start (on the consumer's thread, before the revocation
    # waits for the agents): a batch that sees the count move re-reads its profiles before
    # writing them (BehaviorEngine._moved_away)
    pipeline.engine.ownership = lambda: app.rebalancing_count
    # mode's Signal.connect is typed for receivers with a ``signal`` keyword; ours take **kwargs
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    app.on_partitions_revoked.connect(cast(Any, on_revoked))

    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        HEALTH.set_started(False)  # /readyz: the consumer has stopped; the rest is flushing
        HEALTH.begin_shutdown()  # the liveness watchdog leaves a stopping worker alone

    app.on_before_shutdown.connect(cast(Any, on_shutdown))

    _ = (
        heartbeat,
        recheck_encoder,
        item_agent,
        behavior_agent,
        persist_trending,
        reload_models,
        consumer_lag,
    )  # registered on the app by decorators
