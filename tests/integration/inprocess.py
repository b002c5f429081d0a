"""Run real Faust workers inside the test process, sharing one store object.

The embedded store is opened by one process at a time, so a test of several workers in one
consumer group runs several Faust apps here, each on its own thread and event loop, all over the
same store (DESIGN.md, "Scale-out and the embedded store"). The apps are the production wiring
(:func:`streams.worker.worker_app`); only the process around them differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import faust

from encoders.model import TextEncoder, load_encoder
from infra.edge_store import EdgeStore
from infra.settings import Settings
from ranking.catalog import CatalogItem, item_points
from ranking.store import VectorStore
from streams.pipeline import Outputs, Pipeline, Record
from streams.schemas import Recommendation
from streams.worker import build_pipeline, encoder_config, worker_app


class InProcessWorker:
    """One Faust app (one consumer-group member) on a background thread."""

    def __init__(
        self, settings: Settings, bootstrap: str, store: VectorStore, encoder: TextEncoder
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.store = store
        self.encoder = encoder
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="inprocess-worker", daemon=True)
        self.error: BaseException | None = None
        self.app: faust.App | None = None

    def start(self) -> InProcessWorker:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("in-process worker did not start")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # surfaced to the test through .error
            self.error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        with worker_app(self.settings, self.bootstrap, _Unclosable(self.store), self.encoder) as (
            app,
            _pipeline,
        ):
            self.app = app
            await app.start()
            self._ready.set()
            await self._stop.wait()
            await app.stop()

    def assigned(self, topic: str) -> set[int]:
        """The partitions of ``topic`` this member holds now (empty before it joined)."""
        if self.app is None:
            return set()
        try:
            assignment = set(self.app.consumer.assignment())
        except Exception:  # consumer not started yet, or stopped
            return set()
        return {tp.partition for tp in assignment if tp.topic == topic}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Leave the group cleanly (the other members take the partitions over)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("in-process worker did not stop")


class _Unclosable:
    """The shared store outlives each worker: ``close`` is the test's job, not a worker's."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def close(self) -> None:
        return None


@contextlib.contextmanager
def running(*workers: InProcessWorker) -> Iterator[tuple[InProcessWorker, ...]]:
    started: list[InProcessWorker] = []
    try:
        for worker in workers:
            started.append(worker.start())
        yield workers
    finally:
        for worker in started:
            with contextlib.suppress(Exception):
                worker.stop()


@contextlib.contextmanager
def batch_pipeline(
    settings: Settings, catalog: Sequence[CatalogItem], texts: Sequence[str]
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    """The agents' batch code (``Pipeline``) without Faust, on its own event loop, over a real
    Qdrant Edge store holding ``catalog`` (encoded from ``texts``) and the packaged encoder."""
    store = EdgeStore(settings.edge_path)
    encoder = load_encoder(encoder_config(settings))
    pipeline = build_pipeline(settings, store, encoder)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(pipeline.start())
    try:
        store.upsert(settings.items_collection, item_points(catalog, encoder.encode(texts)))
        yield pipeline, loop
    finally:
        loop.run_until_complete(pipeline.stop())
        loop.close()


@contextlib.contextmanager
def drama_pipeline(
    settings: Settings, item_ids: Sequence[str]
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    """:func:`batch_pipeline` over a catalog of drama films named ``item_ids``."""
    items = [CatalogItem(i, f"Film {i}", "drama", (), None, None, None, 1.7e9) for i in item_ids]
    texts = [f"a drama film number {n}" for n in range(len(item_ids))]
    with batch_pipeline(settings, items, texts) as running:
        yield running


_offsets = itertools.count()


def next_offset() -> int:
    """Offsets for hand-made records: unique within the test process."""
    return next(_offsets)


def click(user: str, item_id: str) -> tuple[str, Record]:
    """A click on the events topic (partition 0, the next offset): its event id and record."""
    event_id = str(uuid.uuid4())
    value = {"event_id": event_id, "user_id": user, "type": "click", "item_id": item_id}
    value["ts"] = int(time.time() * 1000)  # type: ignore[assignment]
    record = Record("events", 0, next_offset(), user.encode(), json.dumps(value).encode(), 1.7e9)
    return event_id, record


def recommendations_in(out: Outputs) -> list[Recommendation]:
    return [Recommendation.model_validate_json(v) for _, v in out.recommendations]
