"""Batches that close as soon as the stream has nothing more waiting.

Faust's ``Stream.take_events(max_, within)`` moves events from the agent's queue into its buffer
only while it waits for the next batch, and that wait lasts ``within`` unless ``max_`` events
arrive first: every batch ends with an idle wait of most of ``within`` once the events that were
waiting have been taken, and each event pays it.

:meth:`DrainingStream.take_ready` is the same generator with one more way to close a batch:
when the event just added emptied the agent's queue, nothing else is waiting, so the batch is
handed over at once; ``within`` remains the bound while events keep trickling in. Acks (unless
the caller takes them over: ``ack=False``, streams.agents.DeferredAcks), the stop behaviour (the
last buffered events are yielded as a final batch) and the stream's bookkeeping are Faust's.
Measured with ``coldstream bench`` in interleaved pairs (README, "Performance"):
lower latency at 500 events/s in 4 of 4 pairs (median) and 3-6% more events applied at 2,000/s
in 3 of 3. Under a backlog the queue empties at the end of each chunk Faust's consumer
delivers, so an empty queue alone would close batches of only what arrived during the previous
one; while the broker holds more records of the event's partition (the consumer's cached
highwater), the batch keeps filling for up to ``behind_within``
(``COLDSTREAM_BATCH_BEHIND_WITHIN_S``): at 2,000/s batches of ~330 events against ~240, and
~1,800 events/s applied against ~1,590 (two pairs). The same bound holds while events already
wait in the queue (:func:`batch_wait`): under a backlog ~2,500 did when a 5 ms window closed a
batch of ~300, and batches now fill to ``max_``. ``COLDSTREAM_BATCH_CLOSE_WHEN_DRAINED=false``
goes back to ``take_events``.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError
from collections.abc import AsyncGenerator, Sequence
from typing import Any, cast

import faust
from faust.streams import _tracks_buffer_agen
from faust.types import EventT
from mode import Seconds, want_seconds
from mode.utils.aiter import aiter
from mode.utils.futures import notify


class DrainingStream(faust.Stream):
    """The app's stream class (``faust.App(Stream=...)``): Faust's, plus :meth:`take_ready`."""

    #: whether the batch :meth:`take_ready` last handed over closed because nothing else was
    #: waiting (the worker keeps up), rather than at ``max_`` or its time bound (behind)
    batch_drained: bool = False

    @_tracks_buffer_agen
    async def take_ready(
        self,
        max_: int,
        within: Seconds,
        behind_within: Seconds | None = None,
        *,
        ack: bool = True,
    ) -> AsyncGenerator[Sequence[EventT], None]:
        """Faust's ``take_events``, closing a batch early when the agent's queue runs dry.

        With ``behind_within``, an event whose partition has more records on the broker
        (the consumer's cached highwater, no I/O) does not close the batch: the worker is
        behind, so the batch keeps filling, for up to ``behind_within`` or ``max_`` events.
        With ``ack`` false the caller acks each event (:meth:`faust.Stream.ack`) once it is
        done with it, which may be after the next batch was taken.
        """
        buffer: list[Any] = []
        events: list[EventT] = []
        buffer_full = asyncio.Event()
        buffer_consumed = asyncio.Event()
        timeout = want_seconds(within) if within else None
        behind_timeout = want_seconds(behind_within) if behind_within else None
        behind = False  # the last event added had more records behind it on the broker
        drained = False  # the batch closed because nothing else was waiting
        stream_enable_acks: bool = self.enable_acks
        buffer_consuming: asyncio.Future[None] | None = None
        channel_it = aiter(self.channel)
        queue = cast(Any, channel_it).queue

        async def add_to_buffer(value: Any) -> Any:
            try:
                # set while a batch is out: nothing joins the buffer until it is handed back
                nonlocal buffer_consuming, behind, drained
                if buffer_consuming is not None:
                    try:
                        await buffer_consuming
                    finally:
                        buffer_consuming = None
                buffer.append(value)
                event = self.current_event
                if event is None:
                    raise RuntimeError("Take buffer found current_event is None")
                events.append(event)
                drained = False  # as of the last event added
                if len(buffer) >= max_:
                    buffer_full.set()
                    buffer_consumed.clear()
                    await self.wait(cast(Any, buffer_consumed))  # never more than max_
                elif queue.empty():
                    behind = behind_timeout is not None and self._more_on_broker(event)
                    if not behind:
                        drained = True
                        buffer_full.set()  # nothing else is waiting: hand the batch over now
            except CancelledError:  # pragma: no cover
                raise
            except Exception as exc:  # pragma: no cover - Faust's own handling
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)
            return value

        self.enable_acks = False  # this generator acks its events once they are consumed
        self.add_processor(add_to_buffer)
        self._enable_passive(cast(Any, channel_it))
        try:
            while not self.should_stop:
                wait = batch_wait(timeout, behind_timeout, behind=behind, waiting=not queue.empty())
                await self.wait_for_stopped(cast(Any, buffer_full), timeout=cast(Any, wait))
                if buffer:
                    buffer_consuming = self.loop.create_future()
                    try:
                        self.batch_drained = drained
                        yield list(events)
                    finally:
                        buffer.clear()
                        if ack:
                            for event in events:
                                await self.ack(event)
                        events.clear()
                        notify(buffer_consuming)
                        buffer_full.clear()
                        buffer_consumed.set()
                else:
                    buffer_full.clear()  # a timeout, or events the last batch already took
        finally:
            self.enable_acks = stream_enable_acks
            self._processors.remove(add_to_buffer)

    def _more_on_broker(self, event: EventT) -> bool:
        """Whether the event's partition has records past it (cached highwater; False when
        unknown: the embedded broker's can lag, and then the batch closes as usual)."""
        message = event.message
        try:
            highwater = self.app.consumer.highwater(message.tp)
        except Exception:  # no consumer state (yet): not known to be behind
            return False
        return highwater is not None and int(highwater) > int(message.offset) + 1


def batch_wait(
    within: float | None, behind_within: float | None, *, behind: bool, waiting: bool
) -> float | None:
    """How long a batch may fill before it is handed over as it is.

    ``within`` bounds the wait for events still to come. Events already in the agent's queue
    (``waiting``) are no reason to close early: moving them into the batch takes time of its
    own, ~300 events per 5 ms window at 2,000/s while ~2,500 more waited (batches of ~300
    against 512 with this rule; docs/performance-history.md). So while events wait, or the broker
    holds more of the partition (``behind``), the bound is ``behind_within``; the batch still
    closes at ``max_`` events or as soon as the queue runs dry and the worker is not behind.
    ``behind_within`` None turns both off.
    """
    if behind_within is not None and (behind or waiting):
        return behind_within
    return within
