"""The agents' outputs (recommendations, dead letters) through librdkafka instead of Faust.

Faust's ``Topic.send`` is Python from end to end: a ``FutureMessage`` and sensors per record,
then aiokafka's accumulator and its sender building every produce request on the event loop.
Under the worker's one GIL that came to ~6% of the GIL's time at 2,000 events/s (``py-spy
record --gil``), time taken from the engine. ``confluent_kafka.Producer.produce`` is one C call
per record; batching, retries and the network run on librdkafka's own threads, outside the GIL.

Each record gets an asyncio future on the agents' loop, as Faust's send gives one: the
contract of :func:`streams.agents.send_outputs` (which records the broker took, which it failed)
is unchanged. librdkafka reports deliveries through callbacks run by ``poll``; a thread of this
class polls and hands the loop each round's results in one ``call_soon_threadsafe``, not one
per record.

Records are partitioned as Faust's producer (aiokafka) and the Java client do: murmur2 of the
key (``murmur2_random``), so a user's lists land in the partition they always did. Idempotence
keeps a partition's records in send order through retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from infra import metrics

log = logging.getLogger(__name__)


class OutputRefused(RuntimeError):
    """The producer would not take a record (its queue full, the record over the size limit,
    the producer closed): a failed delivery to the agents, sent again as the others are."""


class OutputProducer:
    """One librdkafka producer for the worker's output topics, bound to one event loop."""

    def __init__(self, config: Mapping[str, Any], *, poll_s: float = 0.05) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the first send's
        self._poll_s = poll_s
        self._producer = Producer(
            {
                "partitioner": "murmur2_random",  # the Java client's and aiokafka's placement
                "enable.idempotence": True,  # in order per partition, once, through retries
                **config,
            }
        )
        # (future, error or None) of the deliveries one poll reported, resolved on the loop
        self._reported: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="output-producer", daemon=True)
        self._thread.start()

    def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        """Hand one record to librdkafka; the future completes when the broker took it (or
        fails with the broker's error once librdkafka's own retries gave up). Call on the
        event loop that awaits the futures (one loop for the producer's life)."""
        if self._stop.is_set():
            raise OutputRefused("the output producer is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("an OutputProducer serves the one event loop it first sent from")
        future: asyncio.Future[None] = loop.create_future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            with self._lock:
                self._reported.append((future, err))

        try:
            self._producer.produce(topic, value, key, on_delivery=delivered)
        except BufferError as exc:
            raise OutputRefused(f"the producer's queue is full: {exc}") from exc
        except KafkaException as exc:
            raise OutputRefused(str(exc)) from exc
        return future

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(self._poll_s)
            except Exception:  # a callback's error must not end deliveries for good
                log.exception("output producer: poll failed")
            metrics.OUTPUT_RECORDS_QUEUED.set(len(self._producer))
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            reported, self._reported = self._reported, []
        loop = self._loop
        if reported and loop is not None and not loop.is_closed():
            # the loop may close meanwhile: then no one waits for these
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, reported)

    def close(self, timeout_s: float = 5.0) -> int:
        """Deliver what is queued (up to ``timeout_s``) and stop; returns the records left
        undelivered (their input events were never acked: they are consumed again)."""
        left = int(self._producer.flush(timeout_s))
        self._stop.set()
        self._thread.join()
        if left:
            log.warning("output producer closed with %d records undelivered", left)
            self._producer.purge()  # close() would wait for them without a bound
            self._producer.poll(0)  # their callbacks: the futures fail
        self._hand_over()
        metrics.OUTPUT_RECORDS_QUEUED.set(0)
        # the handle goes now, not when the last reference does: until then librdkafka keeps
        # its connections, reconnecting to a broker that went away
        self._producer.close()
        return left


def _settle(reported: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for future, err in reported:
        if future.done():  # its waiter was cancelled
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(KafkaException(err))


class OutputTopic:
    """The part of a Faust topic :func:`streams.agents.send_outputs` uses, on an
    :class:`OutputProducer`."""

    def __init__(self, producer: OutputProducer, name: str) -> None:
        self.producer = producer
        self.name = name

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        return self.producer.send(self.name, key, value)
