"""What the worker reports about its store: only calls that reached the store say it is up.

The behavior agent's batch code and the trending timer's (``Pipeline.persist_trending``) over a
real Qdrant Edge store and the real encoder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import metrics
from infra.health import HEALTH
from infra.settings import Settings
from streams.pipeline import Pipeline
from tests.integration import inprocess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    root: Path = tmp_path_factory.mktemp("readiness")
    with inprocess.drama_pipeline(Settings(data_dir=root / "data"), ["a", "b"]) as running:
        yield running


def test_a_save_with_nothing_to_save_does_not_report_a_down_store_up(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """The trending timer reported the store up after every call, also when nothing was
    dirty and the store was not called: during an outage /readyz flapped to 200 every 10 s
    (found by review)."""
    pipeline, loop = running
    _, click = inprocess.click("ready-u1", "a")
    loop.run_until_complete(pipeline.on_events([click]))
    assert loop.run_until_complete(pipeline.persist_trending()) == 1  # a real write
    assert not HEALTH.is_down("store")
    metrics.dependency_down("store", ConnectionError("refused (test)"), "a batch retries")
    try:
        assert loop.run_until_complete(pipeline.persist_trending()) == 0  # nothing dirty
        assert HEALTH.is_down("store")
        assert HEALTH.readiness().detail["dependencies"]["store"] == "down"
        _, click = inprocess.click("ready-u1", "b")
        loop.run_until_complete(pipeline.on_events([click]))
        assert loop.run_until_complete(pipeline.persist_trending()) == 1  # it answered
        assert not HEALTH.is_down("store")
    finally:
        metrics.dependency_up("store")
