"""Kafka client configuration and topic administration (confluent-kafka).

Every Kafka client the project creates takes its security options from :func:`client_config`,
so SASL/SSL settings reach all of them the same way.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from infra.settings import Settings

log = logging.getLogger(__name__)


def client_config(settings: Settings, bootstrap: str, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration for ``bootstrap`` with the configured security options."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        conf["sasl.username"] = settings.kafka_sasl_username
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_security_protocol.endswith("SSL"):
        if settings.kafka_ssl_cafile:
            conf["ssl.ca.location"] = settings.kafka_ssl_cafile
        if settings.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = settings.kafka_ssl_certfile
        if settings.kafka_ssl_keyfile:
            conf["ssl.key.location"] = settings.kafka_ssl_keyfile
    conf.update(extra)
    return conf


class TopicAdminError(RuntimeError):
    """A topic could not be created or the cluster could not be reached."""


class _ClientErrors:
    """librdkafka's error callback: keeps the last few errors to name a failure's cause.

    A failed metadata request only says "transport failure"; the reason (a certificate the CA
    did not sign, an authentication failure, a refused connection) reaches this callback.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self.errors: list[str] = []

    def __call__(self, err: KafkaError) -> None:
        text = err.str() if isinstance(err, KafkaError) else str(err)
        if text not in self.errors:
            self.errors = [*self.errors, text][-self.keep :]

    def cause(self) -> str:
        return f" (client errors: {'; '.join(self.errors)})" if self.errors else ""


def _admin(settings: Settings, bootstrap: str) -> tuple[AdminClient, _ClientErrors]:
    errors = _ClientErrors()
    return AdminClient(client_config(settings, bootstrap, error_cb=errors)), errors


def ensure_topics(settings: Settings, bootstrap: str, *, timeout_s: float = 15.0) -> dict[str, int]:
    """Create every coldstream topic with its partition count; existing topics are fine.

    Returns topic → partition count as the cluster reports it. Nothing relies on broker-side
    auto-creation (the embedded broker acknowledges and loses produces to unknown topics).
    """
    admin, errors = _admin(settings, bootstrap)
    wanted = settings.topic_partitions()
    existing = _list(admin, timeout_s, errors)
    missing = [
        NewTopic(name, num_partitions=parts, replication_factor=settings.topic_replication_factor)
        for name, parts in wanted.items()
        if name not in existing
    ]
    if missing:
        futures = admin.create_topics(
            missing, operation_timeout=timeout_s, request_timeout=timeout_s
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                log.info("created topic %s (%d partitions)", name, wanted[name])
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise TopicAdminError(
                    f"cannot create topic {name!r}: {err}{errors.cause()}"
                ) from exc
    existing = _list(admin, timeout_s, errors)
    for name, parts in wanted.items():
        have = existing.get(name)
        if have is None:
            raise TopicAdminError(f"topic {name!r} is missing after creation")
        if have != parts:
            log.warning("topic %s has %d partitions, settings ask for %d", name, have, parts)
    return {name: existing[name] for name in wanted}


def topic_id(
    settings: Settings, bootstrap: str, topic: str, *, timeout_s: float = 15.0
) -> str | None:
    """The topic's id, or None when the broker does not give one.

    Kafka gives every topic an id (since 2.8): a topic deleted and created again under the
    same name gets a new one, as does every topic of a memory-only broker that restarted. Its
    offsets start again from 0 there, so offsets remembered from before mean nothing.
    """
    admin, errors = _admin(settings, bootstrap)
    try:
        described = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[
            topic
        ].result(timeout=timeout_s)
    except Exception as exc:  # an older broker, no rights to describe: the id is unknown
        log.warning("no id for topic %s: %s%s", topic, exc, errors.cause())
        return None
    text = str(getattr(described, "topic_id", None) or "")
    return None if not text.strip("A=") else text  # all zero bits: not known


def delete_topics(
    settings: Settings, bootstrap: str, names: list[str], *, timeout_s: float = 15.0
) -> list[str]:
    """Delete ``names``; returns one line per topic that could not be deleted (none: all gone)."""
    if not names:
        return []
    admin, errors = _admin(settings, bootstrap)
    failed: list[str] = []
    futures = admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s)
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("deleted topic %s", name)
        except KafkaException as exc:
            failed.append(f"topic {name}: {exc.args[0]}{errors.cause()}")
    return failed


def list_topics(settings: Settings, bootstrap: str, *, timeout_s: float = 15.0) -> dict[str, int]:
    """Topic → partition count for every topic on the cluster."""
    admin, errors = _admin(settings, bootstrap)
    return _list(admin, timeout_s, errors)


def _list(admin: AdminClient, timeout_s: float, errors: _ClientErrors) -> dict[str, int]:
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        admin.poll(0)  # serve the error callbacks queued meanwhile
        raise TopicAdminError(f"cannot reach Kafka: {exc.args[0]}{errors.cause()}") from exc
    return {
        name: len(topic.partitions)
        for name, topic in meta.topics.items()
        if not name.startswith("__")
    }
