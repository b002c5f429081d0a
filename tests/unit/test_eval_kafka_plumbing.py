"""The via-kafka eval's pure parts: engine knobs → worker settings, wire payloads, agreement."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from infra.settings import Settings
from ranking.catalog import CatalogItem
from ranking.engine import EngineConfig, Interaction
from ranking.evaluation import StreamRun, agreement, with_cold_policy
from ranking.scoring import BlendScorer
from streams.eval_kafka import (
    ViaKafkaError,
    behavior_event,
    engine_updates,
    item_event,
    last_events,
    worker_settings,
)
from streams.schemas import DEFAULT_LIMITS, BehaviorEvent, ItemEvent, decode
from streams.worker import engine_config

pytestmark = pytest.mark.unit


def _run(settings: Settings, engine: EngineConfig, scorer: BlendScorer | None = None) -> StreamRun:
    return StreamRun(
        seed=0,
        k=1,
        method="engine-blend",
        scorer=scorer or BlendScorer(settings.popularity_weight, settings.popularity_half_count),
        covisit=None,
        engine=engine,
        trending=None,
        events=[],
        catalog=[],
        vectors=np.zeros((0, 4), np.float32),
        cold_items=frozenset(),
    )


def test_the_evals_engine_knobs_reach_the_worker(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path)
    # what the eval changes: n, the λ and the new-item policy chosen on validation users
    want = with_cold_policy(
        dataclasses.replace(engine_config(base), recs_count=20, mmr_lambda=0.5),
        (2, 0.5, "prior:0.25"),
    )
    want = dataclasses.replace(want, users_collection="users-full-k1", cold_item_max_age_s=7200.0)
    updates = engine_updates(base, want)
    assert updates == {
        "recs_count": 20,
        "mmr_lambda": 0.5,
        "cold_item_slots": 2,
        "cold_slots_content_frac": 0.5,
        "cold_prior_weight": 0.25,
        "cold_item_max_age_hours": 2.0,
    }
    settings, scratch = worker_settings(base, _run(base, want), tmp_path / "run")
    assert settings.recs_count == 20 and settings.cold_rank_by == "prior"
    assert settings.store_optimize_on_start is False and settings.ranker_enabled is False
    assert settings.data_dir == tmp_path / "run" / "data"
    # a fresh embedded broker per run keeps the configured names; a cluster gets the run's own
    assert settings.topic_events == base.topic_events and not scratch
    cluster = base.model_copy(update={"kafka_bootstrap": "kafka-1:9092"})
    on_cluster, on_cluster_scratch = worker_settings(cluster, _run(cluster, want), tmp_path / "run")
    assert on_cluster.topic_events != base.topic_events
    assert on_cluster.kafka_consumer_group.startswith(f"{base.kafka_consumer_group}.eval-")
    assert set(on_cluster_scratch.topics) == set(
        on_cluster.topic_partitions()
    )  # dropped at the end


def test_a_knob_without_a_setting_is_refused(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path)
    want = dataclasses.replace(engine_config(base), reason_anchors=7)
    with pytest.raises(ViaKafkaError, match="reason_anchors=7"):
        engine_updates(base, want)


def test_a_blend_other_than_the_workers_fallback_is_refused(tmp_path: Path) -> None:
    base = Settings(data_dir=tmp_path)
    run = _run(base, engine_config(base), BlendScorer(0.9, 5.0))
    with pytest.raises(ViaKafkaError, match="not the worker's fallback"):
        worker_settings(base, run, tmp_path / "run")


def test_one_worker_batch_is_refused_for_a_replay_in_several(tmp_path: Path) -> None:
    """The lists could not agree: the in-process replay applied the events some at a time."""
    base = Settings(data_dir=tmp_path, eval_kafka_single_batch=True)
    run = dataclasses.replace(_run(base, engine_config(base)), replay_batch=32)
    with pytest.raises(ViaKafkaError, match="--replay-batch 0"):
        worker_settings(base, run, tmp_path / "run")
    worker_settings(base, dataclasses.replace(run, replay_batch=0), tmp_path / "run")


def test_payloads_pass_the_wire_contracts() -> None:
    e = Interaction(
        event_id="eval-u1-0", user_id="u1", type="rate", ts=881250949.0, item_id="i9", rating=4.0
    )
    ev = decode(json.dumps(behavior_event(e)).encode(), BehaviorEvent, DEFAULT_LIMITS)
    assert (ev.event_id, ev.user_id, ev.item_id, ev.rating) == ("eval-u1-0", "u1", "i9", 4.0)
    assert ev.ts_epoch == e.ts  # ISO-8601 to the microsecond
    for early in (5.0, 76204800.25):  # a relative clock, 1972: no epoch-milliseconds bound
        moved = dataclasses.replace(e, ts=early)
        got = decode(json.dumps(behavior_event(moved)).encode(), BehaviorEvent, DEFAULT_LIMITS)
        assert got.ts_epoch == early
    item = CatalogItem("i9", "Toy Story (1995)", "Animation", ("kids",), None, None, None, 0.0)
    parsed = decode(json.dumps(item_event(item)).encode(), ItemEvent, DEFAULT_LIMITS)
    assert parsed.ts is None  # the worker stamps a new item's arrival
    assert (parsed.title, parsed.category, parsed.tags) == (
        "Toy Story (1995)",
        "Animation",
        ["kids"],
    )


def test_the_scored_list_is_triggered_by_each_users_last_event() -> None:
    evs = [
        Interaction(event_id=f"e{n}", user_id=u, type="view", ts=float(n), item_id="i")
        for n, u in enumerate(["a", "b", "a", "c", "b"])
    ]
    assert last_events(evs) == {"a": "e2", "b": "e4", "c": "e3"}


def test_agreement_of_two_paths() -> None:
    ref = {"a": ["1", "2", "3"], "b": ["4", "5"], "c": ["6"]}
    other = {"a": ["1", "2", "3"], "b": ["5", "4"]}
    got = agreement(ref, other, ["a", "b", "c"])
    assert got["identical_lists"] == pytest.approx(1 / 3)
    assert got["same_first_item"] == pytest.approx(1 / 3)
    assert got["mean_overlap"] == pytest.approx((1 + 1 + 0) / 3)


def test_the_eval_command_takes_the_flag() -> None:
    from streams.cli import build_parser

    args = build_parser().parse_args(["eval", "--seeds", "0", "--via-kafka"])
    assert args.via_kafka is True and args.seeds == (0,)
    assert build_parser().parse_args(["eval"]).via_kafka is False
