"""A ranker swapped in while a batch is being ranked: the batch keeps the scorer it started with.

The worker's hot reload (``Pipeline.reload_models``) over the behavior agent's batch code, a real
Qdrant Edge store and the real encoder. The scorers are the engine's own blend scorer; the first
one holds its batch inside ``score`` until the test has asked for the swap.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

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


class HeldScorer(BlendScorer):
    """The blend scorer, holding the first batch it scores until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__(0.5)
        self.version = "v1"
        self.scoring = threading.Event()
        self.release = threading.Event()

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray:
        self.scoring.set()
        assert self.release.wait(30), "the test never released the batch"
        return super().score(user, cands, category_affinity)


class NewVersion:
    """A model source whose next poll finds a new ranker file (``ModelSource``)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer: Scorer | None = scorer

    def poll(self) -> tuple[Scorer | None, CovisitModel | None]:
        scorer, self.scorer = self.scorer, None
        return scorer, None


def test_a_swap_waits_for_the_batch_being_ranked_and_labels_follow_the_scorer(
    running: tuple[Pipeline, asyncio.AbstractEventLoop],
) -> None:
    pipeline, loop = running
    held = HeldScorer()
    v2 = BlendScorer(0.5)
    v2.version = "v2"
    pipeline.engine.swap_scorer(held)
    pipeline.models = NewVersion(v2)

    async def swap_during_the_batch() -> tuple[list[str], list[str], bool]:
        _, first = inprocess.click("swap-u1", "a")
        batch = asyncio.ensure_future(pipeline.on_events([first]))
        await asyncio.to_thread(held.scoring.wait, 30)  # the batch is inside `score` now
        reload = asyncio.ensure_future(pipeline.reload_models())
        await asyncio.sleep(0.3)
        swapped_early = reload.done() or pipeline.engine.scorer is v2
        held.release.set()
        out = await batch
        await reload
        _, second = inprocess.click("swap-u1", "b")
        later = await pipeline.on_events([second])
        labels = [r.model.ranker for r in inprocess.recommendations_in(out)]
        later_labels = [r.model.ranker for r in inprocess.recommendations_in(later)]
        return labels, later_labels, swapped_early

    labels, later_labels, swapped_early = loop.run_until_complete(swap_during_the_batch())
    assert not swapped_early  # the swap waited for the batch on the engine's thread
    assert labels == ["v1"]  # ranked by v1, labelled v1
    assert later_labels == ["v2"]
    assert pipeline.engine.scorer is v2
