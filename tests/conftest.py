"""Shared fixtures for the whole test suite.

- ``settings``: a :class:`infra.settings.Settings` isolated in ``tmp_path`` (no env leakage of the
  data dir; embedded broker and embedded Qdrant, i.e. empty bootstrap and URL).
- ``broker``: one embedded Tansu broker (:class:`infra.broker.EmbeddedBroker`) for the whole
  session, started lazily by the first test that asks for it and stopped at the end. It keeps
  state for the session: tests that share it must use their own topic names or consumer groups.
  A test that stops a broker must start its own instead of using this one.
- ``store_dir``: a fresh empty directory for a local Qdrant store, on tmpfs (``/dev/shm``) when
  there is one. qdrant-client's local mode commits one SQLite transaction per point, i.e. one
  fsync per point: ~19 ms each on this machine's ext4, ~0.5 ms on tmpfs. Persistence across a
  close/reopen is still real (same files); only durability against power loss is not exercised.
- ``store``: a :class:`infra.qdrant_store.QdrantStore` in local mode on ``store_dir``, closed
  after the test.

Tests using ``broker`` or ``store`` must be marked ``pytest.mark.integration``.

Every test starts with no ``COLDSTREAM_*`` variable in its environment (settings read them: a
shell's ``COLDSTREAM_WEIGHT_VIEW=0`` failed 13 tests, and a ``COLDSTREAM_QDRANT_URL`` would point
them at a real service); a test that wants one sets it with ``monkeypatch``. Hypothesis runs
without its per-example deadline: the suite runs on a loaded 2-core machine, and speed targets
belong in the benchmarks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from infra.broker import EmbeddedBroker
from infra.qdrant_store import QdrantStore
from infra.settings import Settings

hypothesis_settings.register_profile("coldstream", deadline=None)
hypothesis_settings.load_profile("coldstream")


def pytest_configure(config: pytest.Config) -> None:
    """Settings come from the tests, not from the shell that runs them: cleared before any
    fixture (module- and session-scoped ones build settings and start workers too), names
    matched as settings read them, whatever their case."""
    for name in list(os.environ):
        if name.upper().startswith("COLDSTREAM_"):
            del os.environ[name]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with ``data_dir`` under ``tmp_path``, the embedded broker and embedded store."""
    return Settings(data_dir=tmp_path / "data", kafka_bootstrap="", qdrant_url="")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A running embedded broker shared by the session (memory only; stopped at the end)."""
    with EmbeddedBroker() as running:
        yield running


_TMPFS = Path("/dev/shm")


@pytest.fixture
def store_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty directory for a local Qdrant store (tmpfs when available), removed afterwards."""
    if _TMPFS.is_dir() and os.access(_TMPFS, os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="coldstream-test-", dir=_TMPFS))
        try:
            yield base / "qdrant"
        finally:
            shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path / "qdrant"


@pytest.fixture
def store(store_dir: Path) -> Iterator[QdrantStore]:
    """A local-mode Qdrant store on ``store_dir``, closed after the test."""
    opened = QdrantStore(path=store_dir)
    try:
        yield opened
    finally:
        opened.close()
