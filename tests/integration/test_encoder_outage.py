"""A broken encoder is an outage, not a poison record: the batch waits for it and nothing is
dead-lettered; a text the encoder fails on alone is dead-lettered and the rest goes through.

The agents' batch code (``Pipeline`` behind ``streams.agents.guarded``) over a real Qdrant Edge
store and the packaged encoder; only the forward pass is wrapped, to fail on demand as a lost
device or a text the model chokes on would.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoders.batcher import EncoderUnavailable, MicroBatcher
from encoders.model import TextEncoder
from infra import metrics
from infra.health import HEALTH
from infra.settings import Settings
from streams.agents import guarded
from streams.pipeline import Outputs, Pipeline, Record
from streams.schemas import DeadLetter
from tests.integration.inprocess import (
    click,
    drama_pipeline,
    next_offset,
    recommendations_in,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CATALOG = [f"film-{n}" for n in range(8)]


class Device:
    """The real encoder's forward pass, failing while ``broken`` or on texts with ``poison``."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.broken = False
        self.poison = "poisonpill"
        self.failed_passes = 0
        self.gate: threading.Event | None = None  # set: a pass hangs until the event is set

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoder.token_ids(texts)

    def encode_ids(self, ids: Sequence[Sequence[int]], *, batch_size: int | None = None) -> Any:
        if self.gate is not None:
            assert self.gate.wait(60), "the test never released the hung pass"
        texts = self.encoder.tokenizer.batch_decode(ids)
        if self.broken or any(self.poison in t for t in texts):
            self.failed_passes += 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered (test)")
        return self.encoder.encode_ids(ids, batch_size=batch_size)


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop, Device]]:
    root: Path = tmp_path_factory.mktemp("encoder-outage")
    with drama_pipeline(Settings(data_dir=root / "data"), CATALOG) as (pipeline, loop):
        device = Device(pipeline.batcher.encoder)
        pipeline.batcher.encoder = device  # type: ignore[assignment]
        yield pipeline, loop, device
    device.broken = False


def _item(item_id: str, title: str) -> Record:
    value = {"item_id": item_id, "title": title, "category": "drama"}
    return Record("items", 0, next_offset(), item_id.encode(), json.dumps(value).encode(), 1.7e9)


def _search(user: str, text: str) -> Record:
    value = {"event_id": str(uuid.uuid4()), "user_id": user, "type": "search", "text": text}
    value["ts"] = int(time.time() * 1000)  # type: ignore[assignment]
    return Record("events", 0, next_offset(), user.encode(), json.dumps(value).encode(), 1.7e9)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def _broken_for(loop: asyncio.AbstractEventLoop, device: Device, seconds: float) -> None:
    device.broken = True
    loop.call_later(seconds, setattr, device, "broken", False)


def test_items_wait_for_a_broken_encoder_instead_of_being_dead_lettered(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    pipeline, loop, device = running
    records = [_item(f"new-{n}", f"A new drama film {n}") for n in range(3)]
    errors_before = _sample("coldstream_encoder_errors_total")
    passes_before = device.failed_passes
    down: list[float] = []

    async def batch() -> Any:
        _broken_for(loop, device, 0.8)
        task = asyncio.ensure_future(guarded(records, pipeline.on_items, pipeline))
        await asyncio.sleep(0.3)  # mid-outage
        down.append(_sample("coldstream_dependency_up", {"dependency": "encoder"}))
        return await task

    out = loop.run_until_complete(batch())

    assert out.dead_letters == []
    assert device.failed_passes - passes_before >= 4  # the pass and its probe, twice at least
    assert _sample("coldstream_encoder_errors_total") > errors_before
    assert down == [0.0]
    assert _sample("coldstream_dependency_up", {"dependency": "encoder"}) == 1.0
    stored = pipeline.store.retrieve(
        pipeline.settings.items_collection, [f"new-{n}" for n in range(3)], with_vectors=True
    )
    assert len(stored) == 3
    reference = device.encoder.encode(["A new drama film 0"])[0]
    vector = stored["new-0"].vector
    assert vector is not None
    assert float(np.dot(np.asarray(vector), reference)) > 0.95  # a real vector, not a filler


def test_a_search_waits_for_a_broken_encoder_and_gets_its_list(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    pipeline, loop, device = running
    record = _search("searcher", "a quiet drama about a family")
    passes_before = device.failed_passes

    async def batch() -> Any:
        _broken_for(loop, device, 0.5)
        return await guarded([record], pipeline.on_events, pipeline)

    out = loop.run_until_complete(batch())

    assert device.failed_passes - passes_before >= 2  # the outage did hit this batch
    assert _sample("coldstream_dependency_up", {"dependency": "encoder"}) == 1.0
    assert out.dead_letters == []
    [rec] = recommendations_in(out)
    assert rec.user_id == "searcher" and rec.profile_events == 1 and rec.items


def test_a_text_the_encoder_fails_on_alone_is_dead_lettered_and_the_rest_goes_through(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    pipeline, loop, device = running
    records = [
        _item("good-1", "A good drama film"),
        _item("bad-1", f"A film the model chokes on {device.poison}"),
        _item("good-2", "Another good drama film"),
    ]
    errors_before = _sample("coldstream_encoder_errors_total")

    out = loop.run_until_complete(guarded(records, pipeline.on_items, pipeline))

    [(key, value)] = out.dead_letters
    letter = DeadLetter.model_validate_json(value)
    assert key == b"bad-1" and letter.reason == "processing_error" and "CUDA" in letter.error
    assert letter.offset == records[1].offset
    found = pipeline.store.retrieve(
        pipeline.settings.items_collection, ["good-1", "bad-1", "good-2"], with_vectors=False
    )
    assert sorted(found) == ["good-1", "good-2"]
    assert _sample("coldstream_encoder_errors_total") == errors_before  # not an outage


def test_a_behavior_batch_with_one_poison_text_dead_letters_only_it(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    """The behavior agent's path (``on_events`` with the ``early`` hand-off, as the agent calls
    it): a batch of several users' events fails on one search the model chokes on, is retried
    record by record, and only that record is dead-lettered; every other event is applied
    once and every user listed (the README's "only the record that still fails")."""
    pipeline, loop, device = running
    a, b = f"pa-{uuid.uuid4().hex[:6]}", f"pb-{uuid.uuid4().hex[:6]}"
    records = [
        click(a, "film-1")[1],
        _search(b, "a quiet drama about a family"),
        _search(a, f"films with {device.poison}"),
        click(b, "film-2")[1],
    ]
    sent_early: list[Outputs] = []

    async def early(out: Outputs) -> None:
        sent_early.append(out)

    handle = functools.partial(pipeline.on_events, early=early)
    out = loop.run_until_complete(guarded(records, handle, pipeline))

    [(key, value)] = out.dead_letters + [d for o in sent_early for d in o.dead_letters]
    letter = DeadLetter.model_validate_json(value)
    assert key == a.encode() and letter.reason == "processing_error"
    assert letter.offset == records[2].offset
    lists = recommendations_in(out) + [r for o in sent_early for r in recommendations_in(o)]
    last = {r.user_id: r.profile_events for r in lists}
    assert last == {a: 1, b: 2}  # each applied once: a's click, b's search and click
    stored = pipeline.store.retrieve(pipeline.settings.users_collection, [a, b])
    assert {u: p.payload["event_count"] for u, p in stored.items()} == {a: 1, b: 2}


def test_an_outage_that_ends_on_a_bad_text_leaves_the_encoder_up(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    """The batch's last attempt fails on its own record, not on the encoder: the record is
    dead-lettered, the rest indexed, and the encoder is reported up again (the retry that saw
    it down never succeeds, so it cannot be the one to say so)."""
    pipeline, loop, device = running
    records = [_item("after-1", "A drama after the outage"), _item("after-bad", device.poison)]

    async def batch() -> Any:
        _broken_for(loop, device, 1.5)
        task = asyncio.ensure_future(guarded(records, pipeline.on_items, pipeline))
        deadline = time.monotonic() + 1.2
        while not HEALTH.is_down("encoder") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # until the probe has failed too
        assert _sample("coldstream_dependency_up", {"dependency": "encoder"}) == 0.0
        assert HEALTH.readiness().detail["dependencies"]["encoder"] == "down"
        return await task

    out = loop.run_until_complete(batch())

    [(key, _)] = out.dead_letters
    assert key == b"after-bad"
    assert _sample("coldstream_dependency_up", {"dependency": "encoder"}) == 1.0
    assert HEALTH.readiness().detail["dependencies"]["encoder"] == "up"


def test_an_encoder_reported_down_with_nothing_to_encode_is_probed_back_up(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    """A batch that saw the encoder down may be given up (a rebalance) and only clicks follow:
    the timer's probe finds the encoder again, or liveness would restart a healthy worker."""
    pipeline, loop, device = running
    metrics.dependency_down("encoder", RuntimeError("lost (test)"), "a batch given up")
    device.broken = True
    try:
        loop.run_until_complete(pipeline.recheck_encoder())
        assert HEALTH.is_down("encoder")  # still broken: stays down
    finally:
        device.broken = False
    loop.run_until_complete(pipeline.recheck_encoder())
    assert not HEALTH.is_down("encoder")
    assert _sample("coldstream_dependency_up", {"dependency": "encoder"}) == 1.0


def test_a_hung_forward_pass_reports_the_encoder_down_until_it_ends(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    """A device that hangs instead of failing never raises: the pass and every caller behind it
    waited for good while /healthz stayed green, so nothing replaced the worker (found by
    review). Past ``health_encoder_pass_s`` the timer now reports the encoder down, without a
    probe (it would queue behind the pass); the pass's end brings it back up."""
    pipeline, loop, device = running
    settings = pipeline.settings
    pipeline.settings = settings.model_copy(update={"health_encoder_pass_s": 0.3})
    gate = device.gate = threading.Event()

    async def scenario() -> tuple[bool, bool, float, dict[str, Any], Any]:
        batch = asyncio.ensure_future(pipeline.on_items([_item("hung-1", "A hung film")]))
        await asyncio.sleep(0.1)
        await pipeline.recheck_encoder()
        early = HEALTH.is_down("encoder")
        await asyncio.sleep(0.4)
        await asyncio.wait_for(pipeline.recheck_encoder(), 5)  # returns: no probe behind it
        hung, running_s = HEALTH.is_down("encoder"), pipeline.batcher.pass_running_s()
        live = HEALTH.liveness().detail
        gate.set()
        return early, hung, running_s, live, await batch

    try:
        early, hung, running_s, live, out = loop.run_until_complete(
            asyncio.wait_for(scenario(), 60)
        )
    finally:
        gate.set()
        device.gate = None
        pipeline.settings = settings
    assert not early  # 0.1 s into the pass: not yet
    assert hung and running_s > 0.3
    assert "encoder" in live["down_for_s"]  # liveness fails once down for health_encoder_down_s
    assert not out.dead_letters  # the item waited and was indexed
    assert pipeline.batcher.pass_running_s() == 0.0
    assert not HEALTH.is_down("encoder")  # the pass that ended reported the encoder up


def test_the_probe_tells_a_broken_encoder_from_a_bad_text(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    pipeline, loop, device = running
    batcher: MicroBatcher = pipeline.batcher

    async def diagnose(text: str) -> BaseException | None:
        try:
            await batcher.encode_or_diagnose([text])
        except Exception as exc:
            return exc
        return None

    assert loop.run_until_complete(diagnose("a drama")) is None
    bad = loop.run_until_complete(diagnose(f"poisoned {device.poison}"))
    assert isinstance(bad, RuntimeError) and not isinstance(bad, EncoderUnavailable)
    device.broken = True
    try:
        broken = loop.run_until_complete(diagnose("a drama"))
    finally:
        device.broken = False
    assert isinstance(broken, EncoderUnavailable)
    assert "CUDA" in str(broken)


def test_a_batch_retried_record_by_record_counts_each_record_once(
    running: tuple[Pipeline, asyncio.AbstractEventLoop, Device],
) -> None:
    """The batch attempt had counted its events and its letters before it failed, and the
    records tried alone counted them again: 3 events read 6 consumed, 1 letter read 2
    (found by review)."""
    pipeline, loop, device = running
    a, b = f"ma-{uuid.uuid4().hex[:6]}", f"mb-{uuid.uuid4().hex[:6]}"
    bad = Record("events", 0, next_offset(), b"x", b"{not json", 1.7e9)
    records = [bad, click(a, "film-1")[1], _search(a, f"films with {device.poison}")]
    records.append(click(b, "film-2")[1])
    names = {
        "click": ("coldstream_events_consumed_total", {"type": "click"}),
        "search": ("coldstream_events_consumed_total", {"type": "search"}),
        "invalid": ("coldstream_events_consumed_total", {"type": "invalid"}),
        "bad_json": ("coldstream_dead_letters_total", {"topic": "events", "reason": "bad_json"}),
        "poison": (
            "coldstream_dead_letters_total",
            {"topic": "events", "reason": "processing_error"},
        ),
        "updates": ("coldstream_profile_updates_total", {}),
    }
    before = {k: _sample(*v) for k, v in names.items()}
    out = loop.run_until_complete(guarded(records, pipeline.on_events, pipeline))
    moved = {k: _sample(*v) - before[k] for k, v in names.items()}
    assert moved == {
        "click": 2,
        "search": 1,
        "invalid": 1,
        "bad_json": 1,
        "poison": 1,
        "updates": 2,
    }
    assert len(out.dead_letters) == 2
