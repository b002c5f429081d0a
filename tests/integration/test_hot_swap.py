"""A ranker swapped in while batches run: each list is ranked by one scorer and names it.

The worker's hot reload (``Pipeline.reload_models``) over the behavior agent's batch code, a real
Qdrant Edge store and the real encoder. The scorers are the engine's own blend scorer; the
first one notes the batches it ranks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.settings import Settings
from ranking.candidates import Candidates
from ranking.covisit import CovisitModel
from ranking.scoring import BlendScorer, Scorer
from streams.pipeline import Pipeline
from tests.integration import inprocess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    root: Path = tmp_path_factory.mktemp("hot-swap")
    with inprocess.drama_pipeline(Settings(data_dir=root / "data"), ["a", "b", "c", "d"]) as run:
        yield run


class Noting(BlendScorer):
    """The blend scorer; notes each call, and waits (a few seconds at most) for ``until``."""

    def __init__(self, version: str, until: Any = None) -> None:
        super().__init__(0.5)
        self.version = version
        self.calls = 0
        self.until = until

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray:
        self.calls += 1
        deadline = time.monotonic() + 3.0
        while self.until is not None and not self.until() and time.monotonic() < deadline:
            time.sleep(0.01)
        return super().score(user, cands, category_affinity)


class SlowNewVersion:
    """A model source whose next poll finds ``scorer``; the poll takes a while, and on its way
    out it keeps the event loop busy for a moment (``hold_loop``), as a loaded loop would."""

    def __init__(self, scorer: Scorer, loop: asyncio.AbstractEventLoop) -> None:
        self.scorer: Scorer | None = scorer
        self.loop = loop

    def poll(self) -> tuple[Scorer | None, CovisitModel | None]:
        scorer, self.scorer = self.scorer, None
        if scorer is not None:
            time.sleep(0.3)  # meanwhile the batch's apply is queued behind this poll
            self.loop.call_soon_threadsafe(time.sleep, 0.5)  # the loop is busy as it returns
        return scorer, None


def test_a_batch_is_ranked_by_one_scorer_and_its_lists_name_that_one(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    """Before, the poll ran on the engine's thread but the swap on the event loop: a batch
    whose apply ran right behind the poll was ranked by the old scorer while the loop swapped
    in the new one, and its lists named the new one. The swap now happens on the engine's
    thread, between two engine steps."""
    pipeline, loop = running
    engine = pipeline.engine
    v2 = Noting("v2")
    v1 = Noting("v1", until=lambda: engine.scorer is v2)
    engine.swap_scorer(v1)
    pipeline.models = SlowNewVersion(v2, loop)
    prepare, gate, entered = engine.prepare, threading.Event(), threading.Event()

    def held_prepare(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert gate.wait(10)
        return prepare(*args, **kwargs)

    engine.prepare = held_prepare  # type: ignore[method-assign]

    async def swap_between_prepare_and_apply() -> list[str]:
        _, click = inprocess.click("swap-u1", "a")
        batch = asyncio.ensure_future(pipeline.on_events([click]))
        # the batch's prepare holds the engine's thread (waited for, not slept on)
        assert await asyncio.to_thread(entered.wait, 30)
        reload = asyncio.ensure_future(pipeline.reload_models())  # its poll queues behind
        await asyncio.sleep(0.1)
        gate.set()
        out = await batch
        await reload
        return [r.model.ranker for r in inprocess.recommendations_in(out)]

    try:
        labels = loop.run_until_complete(swap_between_prepare_and_apply())
    finally:
        engine.prepare = prepare  # type: ignore[method-assign]
    ranked_by = [s.version for s in (v1, v2) if s.calls]
    assert len(ranked_by) == 1, f"one batch ranked by {ranked_by}"
    assert labels == ranked_by
    assert engine.scorer is v2
    _, click = inprocess.click("swap-u1", "b")
    later = loop.run_until_complete(pipeline.on_events([click]))
    assert [r.model.ranker for r in inprocess.recommendations_in(later)] == ["v2"]


def test_a_retrained_snapshot_takes_the_online_counts_it_holds_out_of_the_worker(
    tmp_path: Path,
) -> None:
    """The retraining cycle through the worker's own reload: a snapshot file written by
    ``train`` (dated by its log's latest event) is picked up by the model watcher, and the
    online co-visitation counts of events up to its date are dropped, and saved so; events
    after it count online again."""
    settings = Settings(data_dir=tmp_path / "data")
    with inprocess.drama_pipeline(settings, ["a", "b", "c", "d"]) as (pipeline, loop):
        engine = pipeline.engine
        for item in ("a", "b"):
            loop.run_until_complete(pipeline.on_events([inprocess.click("retrain-u1", item)[1]]))
        assert engine.covisit[0].row("a") == {"b": 1.0}
        exported_at = time.time()
        CovisitModel.build([["a", "b"]], window=1, neighbors=5, counted_until=exported_at).save(
            settings.covisit_file
        )
        loop.run_until_complete(pipeline.reload_models())
        assert engine.covisit_base is not None and engine.covisit_base.counted_until == exported_at
        assert engine.covisit[0].empty
        loop.run_until_complete(pipeline.persist_trending())
        other = pipeline.engine.__class__(pipeline.store, engine.cfg, engine.scorer)
        other.load_trending([0])
        assert other.covisit[0].empty  # saved empty: a restart does not bring them back
        time.sleep(0.01)  # the next click is later than the snapshot's date
        for item in ("c", "d"):
            loop.run_until_complete(pipeline.on_events([inprocess.click("retrain-u1", item)[1]]))
        # pairs with the user's recent items: a-b is gone, the later visits count
        assert engine.covisit[0].row("a") == {"c": 1.0, "d": 1.0}
