"""SASL/SSL settings reach every Kafka client the project builds; secrets never print."""

from __future__ import annotations

import json

import faust
import pytest

from infra.kafka import client_config
from infra.settings import Settings
from streams.app import broker_credentials
from streams.cli import main

pytestmark = pytest.mark.unit

SECRET = "pa55-word-never-shown"


def sasl_settings(**extra: object) -> Settings:
    return Settings(
        kafka_bootstrap="broker:9093",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc-coldstream",
        kafka_sasl_password=SECRET,
        **extra,
    )


def test_confluent_clients_get_sasl_settings() -> None:
    conf = client_config(sasl_settings(), "broker:9093", **{"group.id": "g"})
    assert conf["security.protocol"] == "SASL_PLAINTEXT"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "svc-coldstream"
    assert conf["sasl.password"] == SECRET
    assert conf["group.id"] == "g"


def test_confluent_clients_get_ssl_files() -> None:
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile="/etc/ca.pem",
        kafka_ssl_certfile="/etc/client.pem",
        kafka_ssl_keyfile="/etc/client.key",
    )
    conf = client_config(settings, "b:9093")
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["ssl.certificate.location"] == "/etc/client.pem"
    assert conf["ssl.key.location"] == "/etc/client.key"
    assert "sasl.username" not in conf


def test_plaintext_has_no_security_keys() -> None:
    conf = client_config(Settings(), "b:9092")
    assert conf["security.protocol"] == "PLAINTEXT"
    assert not [k for k in conf if k.startswith(("sasl.", "ssl."))]


def test_faust_gets_the_same_sasl_credentials() -> None:
    creds = broker_credentials(sasl_settings())
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.username == "svc-coldstream"
    assert creds.password == SECRET
    assert str(creds.mechanism.value) == "SCRAM-SHA-512"
    assert broker_credentials(Settings()) is None


def test_secrets_are_masked_in_config_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from infra import settings as settings_module

    monkeypatch.setenv("COLDSTREAM_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("COLDSTREAM_QDRANT_API_KEY", "qdrant-" + SECRET)
    settings_module.get_settings.cache_clear()
    try:
        assert main(["config"]) == 0
    finally:
        settings_module.get_settings.cache_clear()
    out = capsys.readouterr().out
    assert SECRET not in out
    shown = json.loads(out)
    assert shown["kafka_sasl_password"] == "***"
    assert shown["qdrant_api_key"] == "***"
