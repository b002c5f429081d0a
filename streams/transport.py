"""Faust's aiokafka transport, with two changes to its consumer.

**The fetch long-poll wait is a setting.** Faust hard-codes ``fetch_max_wait_ms=1500``. Real
Kafka answers a fetch as soon as data arrives, so the value rarely matters there; the embedded
broker (Tansu) holds every fetch for the full wait (measured: 500 ms wait → ~80 ms per message,
10 ms wait → 3–6 ms), which alone would put event→recommendation latency in seconds.
``COLDSTREAM_KAFKA_FETCH_MAX_WAIT_MS`` sets it.

**A delivery that does not wait is not scheduled as tasks.** Faust's consumer hands each fetched
message to the agents' queues with ``wait_first(deliver(message), suspend_flow.wait())`` (mode's
``Service.wait_first``), which makes four tasks per message (the delivery, the flow-suspended,
stopped and crashed waits) and cancels three. The delivery almost never waits: it only puts the
event in a queue with room. :class:`FirstStepInline` runs the delivery's first step inline; when
it finishes there (the common case) no task is made, and when it would wait (a full
queue, flow suspended by a rebalance, a full producer buffer) the rest of it runs under mode's
``wait_first`` exactly as before. An inline hand-over still gives the event loop one turn, as
awaiting the tasks did: Faust's consumer loop yields only every 100 messages, and without that
turn the agent's stream saw none of them until the hundredth (under a backlog, batches closed by
their window at ~120 events of a full queue). Measured on the Faust path alone (40,000 queued
events drained by an agent that does nothing): 80–84 → 47–48 µs of worker CPU per event, in
batches of ~485 events instead of ~265; with an agent that spends 150 ms per batch, 55 against
67–89 µs per event, batches of ~480 either way.
``COLDSTREAM_KAFKA_CONSUMER_INLINE_DELIVERY=false`` turns it off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, ClassVar, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ConsumerT
from mode import Seconds, Service
from mode.services import WaitArgT, WaitResults


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 1500

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher; a private attribute, so
        # an aiokafka that renamed it is refused here instead of silently waiting 1.5 s a fetch
        if not hasattr(consumer, "_fetch_max_wait_ms"):
            raise RuntimeError(
                f"aiokafka {aiokafka.__version__} has no _fetch_max_wait_ms: this version of "
                "streams.transport needs the aiokafka pinned in pyproject.toml"
            )
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class FirstStepInline(Service):
    """``wait_first`` whose first coroutine runs its first step inline (see the module doc).

    The result is the one mode's ``wait_first`` gives: a coroutine that finishes without
    waiting is, there too, finished by its task's first step before any other task runs, and
    the service being stopped or crashed still reports ``stopped``.
    """

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        first = coros[0] if coros else None
        if not isinstance(first, Coroutine):
            return await super().wait_first(*coros, timeout=cast(Any, timeout))
        rest = coros[1:]
        try:
            waiting = first.send(None)
        except StopIteration as done:
            _close(rest)
            # one turn of the loop, as awaiting the tasks gave: without it the caller's loop
            # hands over up to 100 messages before the stream takes any (Faust's consumer
            # yields every 100), and a batch's window closed with ~120 events of a full queue
            await asyncio.sleep(0)
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(rest)
            raise
        resumed = resume(first, waiting)
        results = await super().wait_first(resumed, *rest, timeout=cast(Any, timeout))
        winners = [first if w is resumed else w for w in results.done]
        return WaitResults(winners, results.results, results.stopped)


async def resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """Run ``coro`` on from a step that yielded ``waiting`` (the future it waits for, or None
    for a bare yield), as the event loop's task would have: each time ``waiting`` is done the
    coroutine takes its next step; cancelled, it cancels ``waiting`` and gets the
    ``CancelledError`` thrown in, so its own clean-up runs.
    """
    while True:
        error: BaseException | None = None
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # what a task does with it
                await asyncio.wait([waiting])
        except asyncio.CancelledError as exc:
            if waiting is not None:
                waiting.cancel()
            error = exc
        try:
            waiting = coro.send(None) if error is None else coro.throw(error)
        except StopIteration as done:
            return done.value


def _close(coros: tuple[WaitArgT, ...]) -> None:
    """Close coroutines that will never run (as ``wait_first``'s clean-up cancels them)."""
    for coro in coros:
        if isinstance(coro, Coroutine):
            coro.close()


def transport_with_fetch_wait(
    fetch_max_wait_ms: int, *, inline_delivery: bool = True
) -> type[faust_aiokafka.Transport]:
    """A Transport class whose consumers long-poll at most ``fetch_max_wait_ms`` and, with
    ``inline_delivery``, deliver messages through :class:`FirstStepInline`."""
    thread = type("ConsumerThread", (_ConsumerThread,), {"fetch_max_wait_ms": fetch_max_wait_ms})
    bases: tuple[type, ...] = (
        (FirstStepInline, faust_aiokafka.Consumer)
        if inline_delivery
        else (faust_aiokafka.Consumer,)
    )

    def _new_consumer_thread(self: Any) -> faust_aiokafka.AIOKafkaConsumerThread:
        return thread(self, loop=self.loop, beacon=self.beacon)

    consumer_cls = type(
        "FetchWaitConsumer",
        bases,
        {"_new_consumer_thread": _new_consumer_thread, "__module__": __name__},
    )

    class Transport(faust_aiokafka.Transport):
        Consumer: ClassVar[type[ConsumerT]] = consumer_cls

    return Transport
