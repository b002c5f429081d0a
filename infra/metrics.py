"""Every Prometheus metric coldstream exports, in one place (names: ``coldstream_*``)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from infra.health import HEALTH, health_app

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# up to the Qdrant client's 10 s timeout: a quantile clamps to the highest finite bucket, and a
# store outage's slow calls are what an operator needs to see
_FAST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

EVENTS_CONSUMED = Counter(
    "coldstream_events_consumed_total",
    "Behavior events consumed, by event type ('invalid' when undecodable)",
    ["type"],
    registry=REGISTRY,
)
EVENTS_MISKEYED = Counter(
    "coldstream_events_miskeyed_total",
    "Behavior events whose Kafka key is not their user_id (none, or another): applied, but "
    "with several workers their user's events can land on two of them, whose profile writes "
    "then overwrite each other",
    registry=REGISTRY,
)
EVENTS_SKIPPED = Counter(
    "coldstream_events_skipped_total",
    "Records not applied, by reason: replayed_offset (a redelivery), duplicate_event (an "
    "applied event id again), retire_unknown_item (an item retirement naming no stored item), "
    "owner_changed (another worker wrote the user's profile while the batch ran: the "
    "partitions moved, and the new owner applies the event)",
    ["reason"],
    registry=REGISTRY,
)
EVENTS_HELD = Counter(
    "coldstream_events_held_total",
    "Events held back for an item not indexed yet (with all of their user's events of the "
    "batch), by outcome: through again after the wait, or dead-lettered as unknown_item",
    ["outcome"],
    registry=REGISTRY,
)
for _outcome in ("retried", "dead_letter"):  # both series exist from the start, at 0
    EVENTS_HELD.labels(outcome=_outcome)
DEAD_LETTERS = Counter(
    "coldstream_dead_letters_total",
    "Records sent to the dead-letter topic, by source topic and reason",
    ["topic", "reason"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "coldstream_batch_size",
    "Records per stream batch, by agent",
    ["agent"],
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "coldstream_batch_duration_seconds",
    "Wall time to process one stream batch and hand its outputs to the producer, by agent "
    "(the broker's acks of those outputs are not included)",
    ["agent"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ENCODER_BATCH_SIZE = Histogram(
    "coldstream_encoder_batch_size",
    "Texts per encoder forward pass",
    buckets=_SIZE_BUCKETS,
    registry=REGISTRY,
)
ENCODER_SECONDS = Histogram(
    "coldstream_encoder_batch_duration_seconds",
    "Wall time of one encoder forward pass",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "coldstream_store_operation_duration_seconds",
    "Vector-store call latency, by operation",
    ["operation"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "coldstream_store_errors_total",
    "Vector-store calls that failed and were retried",
    registry=REGISTRY,
)
ENCODER_ERRORS = Counter(
    "coldstream_encoder_errors_total",
    "Encoder passes that failed along with a probe text, and were retried as an outage",
    registry=REGISTRY,
)
PROFILE_UPDATES = Counter(
    "coldstream_profile_updates_total",
    "Events applied to user profiles",
    registry=REGISTRY,
)
ITEMS_INDEXED = Counter(
    "coldstream_items_indexed_total",
    "Items encoded and upserted into the items collection",
    registry=REGISTRY,
)
ITEMS_RETIRED = Counter(
    "coldstream_items_retired_total",
    "Items retired (active=false)",
    registry=REGISTRY,
)
RECOMMENDATIONS = Counter(
    "coldstream_recommendations_emitted_total",
    "Recommendation events produced, by the source of their first item",
    ["source"],
    registry=REGISTRY,
)
EVENT_TO_REC_SECONDS = Histogram(
    "coldstream_event_to_recommendation_seconds",
    "Time from an event's record timestamp (its producer's create time, or the topic's append "
    "time) to its list being handed to the producer",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RANKER_VERSION = Gauge(
    "coldstream_ranker_info",
    "The ranker in use (value 1 on the active version)",
    ["version"],
    registry=REGISTRY,
)
DEPENDENCY_UP = Gauge(
    "coldstream_dependency_up",
    "1 while a dependency answers, 0 while the worker is retrying against it",
    ["dependency"],
    registry=REGISTRY,
)
MODEL_DATA_MISMATCH = Gauge(
    "coldstream_model_data_mismatch",
    "1 while the ranker and the co-visitation snapshot in service were trained on different "
    "data (their data hashes differ), 0 otherwise",
    registry=REGISTRY,
)
OUTPUT_RESENDS = Counter(
    "coldstream_output_resends_total",
    "Batches whose output the broker failed to take and that were sent again (their input "
    "events stay unacked until it does)",
    registry=REGISTRY,
)
OUTPUTS_AWAITING_ACKS = Gauge(
    "coldstream_output_batches_awaiting_acks",
    "Behavior batches applied and sent whose outputs the broker has not acknowledged yet "
    "(their input events are acked, and so committable, only once it has)",
    registry=REGISTRY,
)
OUTPUT_RECORDS_QUEUED = Gauge(
    "coldstream_output_records_queued",
    "Output records handed to the worker's librdkafka producer and not yet acknowledged or "
    "failed by the broker (COLDSTREAM_OUTPUT_PRODUCER=librdkafka; a full queue refuses sends)",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "coldstream_consumer_lag",
    "Records behind the log end, by topic and partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
CONSUMER_LAG_UPDATED = Gauge(
    "coldstream_consumer_lag_updated_timestamp_seconds",
    "When the lag was last measured (Unix time; 0 until the first measurement): while the "
    "broker cannot answer, the lag keeps its last values, and time() minus this grows",
    registry=REGISTRY,
)


def set_ranker_version(version: str) -> None:
    RANKER_VERSION.clear()
    RANKER_VERSION.labels(version=version).set(1)


_DEPENDENCY_ERRORS = {"store": STORE_ERRORS, "encoder": ENCODER_ERRORS}


def dependency_down(dependency: str, exc: Exception, then: str) -> None:
    """A dependency failed (the worker retries against it): the gauge, the error count,
    readiness and a log line saying what happens next."""
    _DEPENDENCY_ERRORS[dependency].inc()
    DEPENDENCY_UP.labels(dependency=dependency).set(0)
    HEALTH.set_dependency(dependency, False)
    log.warning("%s unavailable (%s); %s", dependency, exc, then)


def dependency_up(dependency: str) -> None:
    """A dependency answered (a call succeeded)."""
    DEPENDENCY_UP.labels(dependency=dependency).set(1)
    HEALTH.set_dependency(dependency, True)


class _HealthCollector(Collector):
    """/healthz and /readyz as series, read at scrape time: a stuck worker's counters only go
    flat, which looks like no traffic, and Prometheus cannot alert on a probe it never calls."""

    def collect(self) -> Iterable[Metric]:
        live, ready = HEALTH.liveness(), HEALTH.readiness()
        yield GaugeMetricFamily(
            "coldstream_live", "1 while /healthz answers 200 (the loop beats)", value=float(live.ok)
        )
        yield GaugeMetricFamily(
            "coldstream_ready",
            "1 while /readyz answers 200 (started, dependencies up)",
            value=float(ready.ok),
        )
        yield GaugeMetricFamily(
            "coldstream_event_loop_beat_age_seconds",
            "Seconds since the event loop's last heartbeat (since the start before the first)",
            value=float(live.detail["loop_beat_age_s"]),
        )


REGISTRY.register(_HealthCollector())


def serve(host: str, port: int) -> WSGIServer:
    """Expose ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (0 = a free port:
    ``server_address`` has the bound one) from a daemon thread; ``shutdown()`` stops it."""
    HEALTH.forget()  # the stall clock starts with the endpoint, not at import
    app = health_app(HEALTH, make_wsgi_app(REGISTRY))
    server = make_server(host, port, app, _server_class(host), handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info(
        "metrics on http://%s:%d/metrics (health: /healthz, /readyz)",
        host,
        server.server_address[1],
    )
    return server


def probe_url(host: str, port: int, path: str) -> str:
    """Where a probe on this machine reaches a server bound to ``host``: a wildcard bind
    (0.0.0.0, ::, empty) answers on loopback; an IPv6 literal goes in brackets."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def _server_class(host: str) -> type[ThreadingWSGIServer]:
    """The threading server for ``host``'s address family (an IPv6 literal needs AF_INET6)."""
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return Server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes every few seconds: not worth a log line each."""


def scrape(url: str, timeout_s: float = 2.0) -> dict[str, float]:
    """Read a ``/metrics`` page into ``{"name{label=value,...}": value}`` (samples summed)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def total(samples: dict[str, float], name: str) -> float:
    """Sum of every sample of ``name`` across its labels."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))
