"""Faust's aiokafka transport with the fetch long-poll wait as a setting.

Faust hard-codes ``fetch_max_wait_ms=1500``. Real Kafka answers a fetch as soon as data arrives,
so the value rarely matters there; the embedded broker (Tansu) holds every fetch for the full
wait (measured: 500 ms wait → ~80 ms per message, 10 ms wait → 3–6 ms), which alone would put
event→recommendation latency in seconds. ``COLDSTREAM_KAFKA_FETCH_MAX_WAIT_MS`` sets it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import ConsumerT


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: ClassVar[int] = 1500

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # read by AIOKafkaConsumer.start() when it builds its Fetcher
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


def transport_with_fetch_wait(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A Transport class whose consumers long-poll at most ``fetch_max_wait_ms``."""
    thread = type("ConsumerThread", (_ConsumerThread,), {"fetch_max_wait_ms": fetch_max_wait_ms})

    class FetchWaitConsumer(faust_aiokafka.Consumer):
        def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
            return thread(self, loop=self.loop, beacon=self.beacon)

    class Transport(faust_aiokafka.Transport):
        Consumer: ClassVar[type[ConsumerT]] = FetchWaitConsumer

    return Transport
