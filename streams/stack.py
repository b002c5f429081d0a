"""A whole local stack for the demo, the benchmark and the integration tests.

Broker (embedded unless ``COLDSTREAM_KAFKA_BOOTSTRAP`` is set), topics, and a real
``coldstream worker`` child process; readiness and progress are read from the worker's own
Prometheus endpoint, as an operator would.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from infra import metrics
from infra.broker import EmbeddedBroker, free_port
from infra.kafka import delete_topics, ensure_topics
from infra.settings import Settings

log = logging.getLogger(__name__)


class WorkerProcess:
    """``python -m streams.cli worker`` as a child, configured through ``COLDSTREAM_*`` env vars."""

    def __init__(self, settings: Settings, bootstrap: str, *, log_path: Path | None = None) -> None:
        self.metrics_port = free_port()
        # pin the profile-dependent defaults: the child sees a bootstrap address and would
        # otherwise take the cluster defaults even when the broker is the embedded one
        pinned = settings.model_copy(
            update={
                "kafka_session_timeout_s": settings.effective_session_timeout_s,
                "kafka_fetch_max_wait_ms": settings.effective_fetch_max_wait_ms,
            }
        )
        self.env = {
            **os.environ,
            **settings_env(pinned),
            "COLDSTREAM_KAFKA_BOOTSTRAP": bootstrap,
            "COLDSTREAM_METRICS_PORT": str(self.metrics_port),
            "COLDSTREAM_METRICS_HOST": "127.0.0.1",
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def metrics(self) -> dict[str, float]:
        """The worker's samples; none while it does not answer, or dies mid-answer (a cut-off
        page is an HTTPException, not an OSError: it escaped a wait on a dying worker)."""
        try:
            return metrics.scrape(self.metrics_url)
        except (OSError, http.client.HTTPException):
            return {}

    def wait_ready(self, timeout_s: float) -> None:
        """Until ``/readyz`` would answer 200 (its ``coldstream_ready`` series): the loop beats,
        the pipeline has started (at its first assignment) and every dependency answers."""
        self.wait_for("coldstream_ready", 1, timeout_s)

    def wait_for(self, name: str, at_least: float, timeout_s: float) -> float:
        """Poll the worker's metric ``name`` (summed over labels) until it reaches ``at_least``."""
        deadline = time.monotonic() + timeout_s
        value = 0.0
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with code {self.proc.returncode}{self._tail()}")
            value = metrics.total(self.metrics(), name)
            if value >= at_least:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{name} reached {value}, not {at_least}, in {timeout_s}s{self._tail()}")

    def _tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return (
                "\n--- worker log (tail) ---\n" + self.log_path.read_text(errors="replace")[-3000:]
            )
        return ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if the worker has not exited in ``timeout_s``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        return proc.returncode

    def kill(self) -> None:
        """``kill -9``: no shutdown hooks, no flush (the crash test)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"COLDSTREAM_{name.upper()}"] = str(raw).lower() if isinstance(raw, bool) else str(raw)
    return env


class LocalStack:
    """Broker + topics + one worker; everything started here is stopped on exit.

    ``scratch`` (from :func:`scratch_settings`) names the run's own topics and collections on
    configured servers, dropped on exit; what could not be dropped is in ``left_behind``.
    """

    def __init__(
        self, settings: Settings, *, log_dir: Path | None = None, scratch: Scratch | None = None
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.scratch = scratch
        self.left_behind: list[str] = []
        self.broker: EmbeddedBroker | None = None
        self.worker: WorkerProcess | None = None
        self.bootstrap = settings.kafka_bootstrap

    def __enter__(self) -> LocalStack:
        try:
            if self.settings.embedded_kafka:
                self.broker = EmbeddedBroker(
                    self.settings.embedded_broker_port,
                    start_timeout_s=self.settings.embedded_broker_start_timeout_s,
                ).start()
                self.bootstrap = self.broker.bootstrap
            ensure_topics(self.settings, self.bootstrap)
            self.worker = self.new_worker().start()
        except BaseException:
            self.close()
            raise
        return self

    def new_worker(self) -> WorkerProcess:
        log_path = self.log_dir / "worker.log" if self.log_dir else None
        return WorkerProcess(self.settings, self.bootstrap, log_path=log_path)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.scratch:
            scratch, self.scratch = self.scratch, None
            self.left_behind = drop_scratch(self.settings, self.bootstrap, scratch)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class Scratch:
    """Topics and collections a bench, demo or eval run made for itself on configured servers."""

    run: str = ""
    topics: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.topics or self.collections)

    def describe(self) -> str:
        return ", ".join([*self.topics, *self.collections])


def scratch_settings(settings: Settings, tag: str) -> tuple[Settings, Scratch]:
    """``settings`` with names of the run's own wherever a server is configured.

    The bench and the demo publish a synthetic catalog and shoppers and run a worker of their
    own. Against a configured Kafka cluster that worker would join the production consumer
    group (taking partitions from the real workers) and the catalog would land in the real
    ``items`` topic; against a Qdrant server, in the real collections. So each such run gets
    topics, a consumer group and collections suffixed with ``<tag>-<random hex>``, dropped when
    it ends (:func:`drop_scratch`). The embedded stack is a fresh broker and a temporary data
    directory already, and keeps the configured names.
    """
    run = f"{tag}-{secrets.token_hex(4)}"
    update: dict[str, str] = {}
    topics: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    if not settings.embedded_kafka:
        topic_fields = ("topic_events", "topic_items", "topic_recommendations", "topic_dead_letter")
        update |= {f: f"{getattr(settings, f)}.{run}" for f in topic_fields}
        update["kafka_consumer_group"] = f"{settings.kafka_consumer_group}.{run}"
        topics = tuple(update[f] for f in topic_fields)
    if not settings.embedded_qdrant:
        store_fields = ("items_collection", "users_collection", "state_collection")
        suffix = run.replace("-", "_")
        update |= {f: f"{getattr(settings, f)}_{suffix}" for f in store_fields}
        collections = tuple(update[f] for f in store_fields)
    return settings.model_copy(update=update), Scratch(run, topics, collections)


def drop_scratch(settings: Settings, bootstrap: str, scratch: Scratch) -> list[str]:
    """Delete a run's scratch topics and collections; one line per one left behind.

    Best effort: the run's figures are already measured, so a failure here is reported (and
    logged with the names to delete by hand) instead of raised.
    """
    failed: list[str] = []
    if scratch.topics:
        try:
            failed += delete_topics(settings, bootstrap, list(scratch.topics))
        except Exception as exc:  # the cluster went away meanwhile
            failed += [f"topics {', '.join(scratch.topics)}: {exc}"]
    if scratch.collections:
        from infra.qdrant_store import QdrantStore

        try:
            store = QdrantStore(
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key.get_secret_value() or None,
            )
            try:
                for name in scratch.collections:
                    store.drop_collection(name)
            finally:
                store.close()
        except Exception as exc:
            failed += [f"collections {', '.join(scratch.collections)}: {exc}"]
    for line in failed:
        log.warning("scratch run %s left behind %s", scratch.run, line)
    return failed
