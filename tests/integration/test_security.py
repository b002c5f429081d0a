"""A broker that demands authentication: a client without valid credentials fails at start.

The embedded broker (Tansu) is started with ``--authentication``. Its shipped build gives no
way to create a user before clients connect (``tansu user create`` itself needs to
authenticate) and its ``--cert``/``--key`` flags are mutually exclusive, so a successful SASL or
TLS session cannot be shown against it; what is shown here is the failure side: the worker
refuses to run instead of running silently without its topics.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from infra.kafka import TopicAdminError, ensure_topics
from infra.settings import Settings
from streams.stack import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


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
