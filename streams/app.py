"""The Faust application and its topics: the only place that configures Faust.

Faust keeps no state here (``memory://`` store, no tables): profiles and trending counts live in
the vector store, so a restarted or rebalanced worker loses nothing (DESIGN.md, "State").
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import faust
from faust.types import TopicT

from infra.settings import Settings
from streams.batching import DrainingStream
from streams.transport import transport_with_fetch_wait


class OutputSink(Protocol):
    """Where an output topic's records go: a Faust topic, or
    ``streams.output_producer.OutputTopic`` (the default, librdkafka). ``send`` hands a record
    over and returns what completes once the broker took it."""

    async def send(self, *, key: bytes | None, value: bytes) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Topics:
    events: TopicT
    items: TopicT
    recommendations: OutputSink
    dead_letter: OutputSink


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust (aiokafka) credentials from the same settings every other Kafka client uses."""
    protocol = settings.kafka_security_protocol
    context: ssl.SSLContext | None = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(
                settings.kafka_ssl_certfile, keyfile=settings.kafka_ssl_keyfile or None
            )
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: Settings, bootstrap: str) -> tuple[faust.App, Topics]:
    session_timeout = settings.effective_session_timeout_s
    app = faust.App(
        settings.kafka_consumer_group,
        broker=[f"kafka://{host}" for host in bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=settings.web_enabled,
        web_bind="127.0.0.1",
        web_port=settings.web_port,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(session_timeout / 6.0, 0.5),
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_allow_declare=False,  # the project creates topics itself (infra.kafka)
        key_serializer="raw",
        value_serializer="raw",
        producer_linger=0.001,
        # how long the producer tries before an output counts as failed and is sent again
        # (streams.agents.until_delivered); Faust's default is 20 minutes
        producer_request_timeout=settings.producer_request_timeout_s,
        # A revocation (and a stop) waits until every event the agents took, the batch
        # take_ready still buffers included, is applied and acked: a batch that read profiles
        # before the new owner wrote them would put older copies back over its updates (README,
        # "Scale-out"). The broker waits for that up to its rebalance timeout (Faust's
        # broker_rebalance_timeout, 60 s; heartbeats go on meanwhile), then drops the member.
        stream_wait_empty=True,
        Stream=DrainingStream,  # Faust's stream plus take_ready (streams.batching)
    )

    def topic(name: str) -> TopicT:
        return app.topic(name, key_type=bytes, value_type=bytes, allow_empty=True)

    topics = Topics(
        events=topic(settings.topic_events),
        items=topic(settings.topic_items),
        recommendations=topic(settings.topic_recommendations),
        dead_letter=topic(settings.topic_dead_letter),
    )
    fetch_wait = settings.effective_fetch_max_wait_ms
    transport_cls = transport_with_fetch_wait(
        fetch_wait, inline_delivery=settings.kafka_consumer_inline_delivery
    )
    app._new_transport = lambda: transport_cls(app.conf.broker_consumer, app)  # type: ignore[method-assign]
    return app, topics
