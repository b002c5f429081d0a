"""Issue 7 fuzz: a generated mix of valid and malformed events through the real pipeline.

Each malformed payload (bad UTF-8, wrong types, huge fields, deep JSON, missing keys, unknown
item) must produce exactly one dead letter, and each valid one must be applied: the batch code of
the behavior agent (``Pipeline.on_events``) over a real Qdrant Edge store and the real encoder.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import metrics
from infra.settings import Settings
from ranking.catalog import CatalogItem
from streams.pipeline import Pipeline, Record
from streams.schemas import DeadLetter
from tests.integration.inprocess import batch_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ITEM_IDS = [f"fz-{n}" for n in range(12)]


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Pipeline, asyncio.AbstractEventLoop]]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    items = [CatalogItem(i, f"Item {i}", "cat", (), None, None, None, 1.7e9) for i in ITEM_IDS]
    texts = [f"item {i} about topic {n % 3}" for n, i in enumerate(ITEM_IDS)]
    with batch_pipeline(Settings(data_dir=root / "data"), items, texts) as running:
        yield running


def _valid(user: str) -> st.SearchStrategy[dict[str, object]]:
    return st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str),
            "user_id": st.just(user),
            "type": st.sampled_from(["view", "click", "add_to_cart", "purchase"]),
            "item_id": st.sampled_from(ITEM_IDS),
            # 2020-09 to 2026-09: all in the past (a ts over a day ahead is malformed)
            "ts": st.integers(1_600_000_000_000, 1_790_000_000_000),
        }
    )


def _malformed(valid: dict[str, object], kind: str) -> bytes:
    bad = dict(valid)
    if kind == "bad_utf8":
        return b"\xff\xfe" + json.dumps(bad).encode()
    if kind == "wrong_type":
        bad["ts"] = "not a time"
        bad["user_id"] = 12345
    elif kind == "huge_field":
        bad["item_id"] = "x" * 100_000
    elif kind == "deep_json":
        return json.dumps(bad).encode()[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    elif kind == "missing_key":
        bad.pop("event_id")
    elif kind == "unknown_item":
        bad["item_id"] = "no-such-item-" + uuid.uuid4().hex
    elif kind == "not_json":
        return b"{" + json.dumps(bad).encode()
    elif kind == "far_future":
        bad["ts"] = 253_402_300_799_000  # 9999-12-31
    return json.dumps(bad).encode()


KINDS = [
    "bad_utf8",
    "wrong_type",
    "huge_field",
    "deep_json",
    "missing_key",
    "unknown_item",
    "far_future",
]


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[bytes, bool]]:
    user = f"fuzz-{uuid.uuid4().hex[:10]}"
    out: list[tuple[bytes, bool]] = []
    for _ in range(draw(st.integers(1, 25))):
        payload = draw(_valid(user))
        kind = draw(st.sampled_from([None, None, *KINDS, "not_json"]))
        out.append(
            (json.dumps(payload).encode(), True)
            if kind is None
            else (_malformed(payload, kind), False)
        )
    return out


def _applied() -> float:
    return metrics.REGISTRY.get_sample_value("coldstream_profile_updates_total") or 0.0


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=batches())
def test_one_dead_letter_per_malformed_payload_and_every_valid_event_applied(
    running: tuple[Pipeline, asyncio.AbstractEventLoop], batch: list[tuple[bytes, bool]]
) -> None:
    pipeline, loop = running
    records = [
        Record("events", 0, offset, b"k", raw, 1.7e9) for offset, (raw, _ok) in enumerate(batch)
    ]
    before = _applied()
    out = loop.run_until_complete(pipeline.on_events(records))
    malformed = [r for r, (_raw, ok) in zip(records, batch, strict=True) if not ok]
    letters = [DeadLetter.model_validate_json(value) for _key, value in out.dead_letters]
    assert sorted(d.offset for d in letters) == sorted(r.offset for r in malformed)
    assert all(d.reason and d.error for d in letters)
    assert _applied() - before == sum(ok for _raw, ok in batch)
    assert len(out.recommendations) == (1 if any(ok for _raw, ok in batch) else 0)
