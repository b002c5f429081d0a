"""Shared fixtures for the whole test suite.

- ``settings``: a :class:`infra.settings.Settings` isolated in ``tmp_path`` (no env leakage of the
  data dir; embedded broker and embedded Qdrant, i.e. empty bootstrap and URL).
- ``broker``: one embedded Tansu broker (:class:`infra.broker.EmbeddedBroker`) for the whole
  session, started lazily by the first test that asks for it and stopped at the end. It keeps
  state for the session: tests that share it must use their own topic names or consumer groups.
  A test that stops a broker must start its own instead of using this one.
- ``store``: a :class:`infra.qdrant_store.QdrantStore` in local mode on a fresh directory,
  closed after the test.

Tests using ``broker`` or ``store`` must be marked ``pytest.mark.integration``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from infra.qdrant_store import QdrantStore
from infra.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with ``data_dir`` under ``tmp_path``, the embedded broker and embedded store."""
    return Settings(data_dir=tmp_path / "data", kafka_bootstrap="", qdrant_url="")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A running embedded broker shared by the session (memory only; stopped at the end)."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QdrantStore]:
    """A local-mode Qdrant store on ``tmp_path/"qdrant"``, closed after the test."""
    opened = QdrantStore(path=tmp_path / "qdrant")
    try:
        yield opened
    finally:
        opened.close()
