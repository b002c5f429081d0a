"""Bench and demo runs against configured servers use names of their own (streams.stack)."""

from __future__ import annotations

import re

import pytest

from infra.settings import Settings
from streams.stack import scratch_settings

pytestmark = pytest.mark.unit

_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def test_the_embedded_stack_keeps_the_configured_names() -> None:
    base = Settings()
    settings, scratch = scratch_settings(base, "bench")
    assert not scratch
    assert settings.model_dump() == base.model_dump()


def test_a_configured_cluster_gets_topics_and_a_group_of_the_run() -> None:
    base = Settings(kafka_bootstrap="kafka-1:9092")
    settings, scratch = scratch_settings(base, "bench")
    names = [
        settings.topic_events,
        settings.topic_items,
        settings.topic_recommendations,
        settings.topic_dead_letter,
    ]
    assert list(scratch.topics) == names
    production = {base.topic_events, base.topic_items, base.topic_recommendations}
    assert not production & set(names) and base.topic_dead_letter not in names
    assert all(_KAFKA_NAME.match(n) and scratch.run in n for n in names)
    assert settings.kafka_consumer_group != base.kafka_consumer_group
    assert scratch.run in settings.kafka_consumer_group
    # the embedded store is scratch already: its collections keep their names
    assert not scratch.collections
    assert settings.items_collection == base.items_collection


def test_a_configured_qdrant_server_gets_collections_of_the_run() -> None:
    base = Settings(qdrant_url="http://qdrant:6333")
    settings, scratch = scratch_settings(base, "demo")
    names = [settings.items_collection, settings.users_collection, settings.state_collection]
    assert list(scratch.collections) == names
    assert not {base.items_collection, base.users_collection, base.state_collection} & set(names)
    assert all(re.match(r"^[A-Za-z0-9_]+$", n) for n in names)
    assert not scratch.topics and settings.topic_events == base.topic_events


def test_every_run_gets_new_names() -> None:
    base = Settings(kafka_bootstrap="kafka-1:9092", qdrant_url="http://qdrant:6333")
    first = scratch_settings(base, "bench")[1]
    second = scratch_settings(base, "bench")[1]
    assert first.run != second.run
    assert not set(first.topics) & set(second.topics)
    assert not set(first.collections) & set(second.collections)
