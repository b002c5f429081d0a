"""``coldstream eval --via-kafka``: the evaluation's test replays through the broker and a worker.

The in-process evaluation (:mod:`ranking.evaluation`) calls the engine the behavior agent runs;
this path sends the same events through the same deployment an operator runs, so that what is
scored is what the ``recommendations`` topic carries. For each :class:`StreamRun` (one seed, k
and engine method) it starts a fresh stack (:class:`streams.stack.LocalStack`: the embedded
broker, or ``COLDSTREAM_KAFKA_BOOTSTRAP``, plus a real ``coldstream worker`` child process
configured only through ``COLDSTREAM_*`` variables) on a fresh embedded store, and:

1. carries every engine knob of the run to the worker through settings, and refuses to run when
   one has no setting (:func:`worker_settings` checks the child's own parse of its environment);
   the run's ranker and co-visitation snapshot go to files the worker loads at start;
2. before the worker opens the store (the embedded store is opened by one process at a time),
   writes into it the warm catalog — the eval's own vectors and payloads, as the in-process
   store holds them — and the trending counts the in-process replay starts from, where the
   worker's ``load_trending`` reads them when it is assigned the events partitions;
3. publishes the held-out items as item events (the worker encodes, stamps and indexes them, as
   any new item) and waits until they are indexed;
4. publishes the revealed events in event-time order, keyed by user, and reads the
   recommendations topic until, for every user, the list triggered by their last revealed event
   (``trigger_event_id``) has arrived. Bounded in time: a dead worker, a refused model or a
   missing list fails the run with the worker log's tail.

Why the trending counts are written, not the training events sent: the in-process replay starts
from counts computed in one pass over the training log, with no profiles and no online
co-visitation pairs for the training users. Sending the ~64k training events through the worker
would also build those (and cost minutes per run on the embedded broker), so the worker would
start from a different state; writing the same counter into the state collection reproduces the
in-process start exactly (checked by reading it back through ``load_trending``).

What cannot match exactly (``via_kafka`` in the result measures it per k and method): the worker
takes events in several batches (``COLDSTREAM_BATCH_MAX_EVENTS``/``BATCH_WITHIN_S``) while the
in-process replay applies them as one (or ``--replay-batch`` at a time in event-time order, which
the worker's batches, cut per fetch across partitions, do not reproduce either), so a user's list
sees the trending counts and online co-visitation pairs of earlier batches only; the worker
encodes the new items itself (other micro-batches, so vectors equal to ~1e-5); the new items'
arrival stamps (and so the ranker's item-age feature) differ by the seconds between the two
replays; trending is summed over the events partitions instead of kept in one counter (the same
sums, up to rounding).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer

from infra import metrics
from infra.settings import Settings
from ranking.catalog import CatalogItem, item_points
from ranking.engine import BehaviorEngine, EngineConfig, Interaction, trending_key
from ranking.evaluation import StreamResult, StreamRun
from ranking.ranker import RankerScorer, save_ranker
from ranking.scoring import BlendScorer
from ranking.store import StoredPoint
from ranking.trending import merged_scores
from streams.produce import Publisher
from streams.schemas import InvalidPayload, Recommendation
from streams.stack import LocalStack, Scratch, WorkerProcess, scratch_settings, settings_env
from streams.tail import output_consumer
from streams.worker import engine_config, open_store

PATH = "via-kafka"

# EngineConfig fields carried by a setting of the same value, and those the settings hold in hours
_SAME: dict[str, str] = {
    "items_collection": "items_collection",
    "state_collection": "state_collection",
    "recs_count": "recs_count",
    "recall_top_n": "recall_top_n",
    "mmr_lambda": "mmr_lambda",
    "cold_item_slots": "cold_item_slots",
    "cold_item_max_count": "cold_item_max_count",
    "cold_slots_follow_content": "cold_slots_follow_content",
    "cold_slots_content_frac": "cold_slots_content_frac",
    "cold_rank_by": "cold_rank_by",
    "cold_prior_weight": "cold_prior_weight",
    "new_top_n": "new_items_top_n",
    "covisit_top_n": "covisit_top_n",
    "covisit_window": "covisit_window",
    "covisit_recency": "covisit_recency",
    "covisit_max_pairs": "covisit_max_pairs",
    "covisit_row_cap": "covisit_row_cap",
    "covisit_online_pair_scale": "covisit_online_pair_scale",
    "popular_top_n": "popular_top_n",
    "tail_covisit_weight": "tail_covisit_weight",
    "tail_head_frac": "tail_head_frac",
    "cold_exposure_max_share": "cold_exposure_max_share",
    "cold_exposure_window": "cold_exposure_window",
}
_HOURS: dict[str, str] = {
    "cold_item_max_age_s": "cold_item_max_age_hours",
    "trending_half_life_s": "trending_half_life_hours",
}
# the one field that is the run's own: each worker gets a fresh store
_PER_RUN = frozenset({"users_collection"})


class ViaKafkaError(RuntimeError):
    """The run could not be carried to, or completed by, the worker; the message says why."""


# ------------------------------------------------------------------- settings for the worker


def engine_updates(base: Settings, want: EngineConfig) -> dict[str, Any]:
    """Settings changes that make the worker's engine configuration ``want``.

    Only fields that differ from what ``base`` gives are set, so unchanged values are carried
    bit for bit. A differing field with no setting is an error naming it: the worker would
    silently run another configuration.
    """
    have = engine_config(base)
    updates: dict[str, Any] = {}
    missing: list[str] = []
    for f in dataclasses.fields(EngineConfig):
        if f.name in _PER_RUN:
            continue
        value, current = getattr(want, f.name), getattr(have, f.name)
        if value == current:
            continue
        if f.name in _SAME:
            updates[_SAME[f.name]] = value
        elif f.name in _HOURS:
            updates[_HOURS[f.name]] = value / 3600.0
        else:
            missing.append(f"{f.name}={value!r} (the worker would use {current!r})")
    if missing:
        raise ViaKafkaError("no setting carries to the worker: " + "; ".join(missing))
    return updates


def single_batch_window(settings: Settings) -> float:
    """The batch window with ``eval_kafka_single_batch``: half the output timeout."""
    return settings.eval_kafka_output_timeout_s / 2


def worker_settings(base: Settings, run: StreamRun, run_dir: Path) -> tuple[Settings, Scratch]:
    """The worker's settings for ``run``: its engine configuration, model files, a fresh store
    under ``run_dir``, and on a configured cluster topics and a consumer group of its own (the
    returned :class:`Scratch`, dropped when the run's stack closes).

    Checked the way the child will see them: parsed back from the ``COLDSTREAM_*`` variables it
    gets, the engine configuration must equal the run's (its users collection aside).
    """
    ranked = isinstance(run.scorer, RankerScorer)
    if not ranked:
        if not isinstance(run.scorer, BlendScorer):
            raise ViaKafkaError(f"{run.tag}: no file carries a {type(run.scorer).__name__}")
        fallback = (base.popularity_weight, base.popularity_half_count)
        if (run.scorer.popularity_weight, run.scorer.half_count) != fallback:
            raise ViaKafkaError(
                f"{run.tag}: the eval's blend {run.scorer.version} is not the worker's fallback "
                f"(COLDSTREAM_POPULARITY_WEIGHT/POPULARITY_HALF_COUNT = {fallback})"
            )
    if base.eval_kafka_single_batch and run.replay_batch > 0:
        raise ViaKafkaError(
            f"{run.tag}: COLDSTREAM_EVAL_KAFKA_SINGLE_BATCH takes the events as one batch, but the "
            f"in-process replay took them {run.replay_batch} at a time (use --replay-batch 0)"
        )
    model_dir = run_dir / "model"
    # Faust's take_events yields when its buffer holds batch_max_events, or at a tick every
    # batch_within_s counted from the agent's start, whatever is buffered then. A batch size
    # of exactly the run's events yields the burst whole; a long window keeps a tick from
    # splitting it (half the output timeout: a burst that somehow falls short is still taken).
    # The worker's default batching closes a batch whenever its queue runs dry, which could
    # cut the burst where the consumer's fetches do: take_events here.
    single = (
        {
            "batch_max_events": max(1, len(run.events)),
            "batch_within_s": single_batch_window(base),
            "batch_close_when_drained": False,
        }
        if base.eval_kafka_single_batch
        else {}
    )
    settings = base.model_copy(
        update={
            **engine_updates(base, run.engine),
            **single,
            "data_dir": run_dir / "data",
            "qdrant_url": "",  # the in-process eval's store is embedded too
            # the in-process store is never optimized (no HNSW index); neither is this one
            "store_optimize_on_start": False,
            "ranker_enabled": ranked,
            "ranker_path": str(model_dir / "ranker.safetensors"),
            "covisit_path": str(model_dir / "covisit.safetensors"),
        }
    )
    # on a configured cluster: topics and a group of its own, which no other worker reads and
    # the stack drops when it closes; the embedded broker is a fresh one per run anyway
    settings, scratch = scratch_settings(settings, "eval")
    child = Settings.model_validate(
        {k.removeprefix("COLDSTREAM_").lower(): v for k, v in settings_env(settings).items()}
    )
    got = dataclasses.replace(engine_config(child), users_collection=run.engine.users_collection)
    if got != run.engine:
        diff = [
            f"{f.name}: {getattr(got, f.name)!r} != {getattr(run.engine, f.name)!r}"
            for f in dataclasses.fields(EngineConfig)
            if getattr(got, f.name) != getattr(run.engine, f.name)
        ]
        raise ViaKafkaError(f"{run.tag}: the worker would parse another engine: {diff}")
    return settings, scratch


# ------------------------------------------------------------------- the worker's starting state


def save_models(settings: Settings, run: StreamRun) -> None:
    """The run's ranker and co-visitation snapshot, where the worker's settings point."""
    if isinstance(run.scorer, RankerScorer):
        save_ranker(settings.ranker_file, run.scorer)
    if run.covisit is not None:
        run.covisit.save(settings.covisit_file)


def seed_store(settings: Settings, run: StreamRun) -> int:
    """Write the warm catalog and the warm trending counts into the worker's (closed) store.

    Returns the number of catalog points written. The trending counter is read back through
    :meth:`BehaviorEngine.load_trending`, the call the worker makes, so a change of the
    engine's state format fails here rather than starting the worker from nothing.
    """
    dim = int(run.vectors.shape[1])
    warm = [n for n, item in enumerate(run.catalog) if item.item_id not in run.cold_items]
    points = item_points([run.catalog[n] for n in warm], run.vectors[warm])
    store = open_store(settings)
    try:
        store.ensure_collection(settings.items_collection, dim)
        store.ensure_collection(settings.users_collection, dim)
        store.ensure_collection(settings.state_collection, 1)
        store.upsert(settings.items_collection, points)
        want: dict[str, float] = {}
        if run.trending is not None:
            # partition 0 holds the warm start, as in the in-process replay (every event is
            # partition 0 there)
            key = trending_key(0)
            payload = run.trending.to_payload()
            store.upsert(
                settings.state_collection, [StoredPoint(key, np.ones(1, np.float32), payload)]
            )
            want = merged_scores([run.trending], None)
        probe = BehaviorEngine(store, engine_config(settings), run.scorer)
        probe.load_trending(range(settings.partitions_events))
        got = merged_scores(probe.trending.values(), None)
        if got != want:
            raise ViaKafkaError(
                f"{run.tag}: trending counts read back through load_trending differ from those "
                f"written ({len(got)} vs {len(want)} items)"
            )
    finally:
        store.close()
    return len(points)


# ------------------------------------------------------------------- wire payloads


def item_event(item: CatalogItem) -> dict[str, Any]:
    """A new item as its publisher sends it: no ``ts``, so the worker stamps its arrival (the
    in-process eval stamps the held-out items "created now" too)."""
    payload: dict[str, Any] = {"item_id": item.item_id, "title": item.title}
    if item.tags:
        payload["tags"] = list(item.tags)
    for key in ("description", "category", "brand", "price"):
        value = getattr(item, key)
        if value is not None:
            payload[key] = value
    return payload


def behavior_event(e: Interaction) -> dict[str, Any]:
    """An ``events`` payload; ``ts`` as ISO-8601 UTC to the microsecond: a data file's time may
    lie before 1973, which the contract refuses as epoch milliseconds (likely seconds)."""
    payload: dict[str, Any] = {
        "event_id": e.event_id,
        "user_id": e.user_id,
        "type": e.type,
        "ts": datetime.fromtimestamp(e.ts, UTC).isoformat(),
    }
    if e.item_id is not None:
        payload["item_id"] = e.item_id
    if e.text is not None:
        payload["text"] = e.text
    if e.rating is not None:
        payload["rating"] = float(e.rating)
    return payload


def last_events(events: Sequence[Interaction]) -> dict[str, str]:
    """Each user's last event id in send order: the trigger of the list that is scored."""
    return {e.user_id: e.event_id for e in events}


# ------------------------------------------------------------------- one run


class KafkaReplay:
    """:class:`ranking.evaluation.StreamReplay` through the broker and a worker process."""

    path = PATH

    def __init__(
        self,
        settings: Settings,
        *,
        progress: Callable[[str], None] = lambda _m: None,
        work_root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.progress = progress
        shm = Path("/dev/shm")
        self.work_root = work_root or (shm if shm.is_dir() else None)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "broker": "embedded (Tansu)" if s.embedded_kafka else s.kafka_bootstrap,
            "worker": "a `coldstream worker` child process per k and method, fresh store",
            "store": f"embedded {s.store_backend}, not optimized (no HNSW index, as in process)",
            "partitions_events": s.partitions_events,
            "batch_max_events": "the run's event count"
            if s.eval_kafka_single_batch
            else s.batch_max_events,
            "batch_within_s": single_batch_window(s)
            if s.eval_kafka_single_batch
            else s.batch_within_s,
            "warm_catalog": "written into the store before the worker starts (eval's vectors)",
            "new_items": "item events, encoded and indexed by the worker before any event",
            "trending_start": "the training log's counts, written into the state collection",
            "scored_list": "per user, the recommendation whose trigger is their last event",
        }

    def __call__(self, run: StreamRun) -> StreamResult:
        run_dir = Path(tempfile.mkdtemp(prefix="coldstream-viakafka-", dir=self.work_root))
        try:
            return self._run(run, run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(self, run: StreamRun, run_dir: Path) -> StreamResult:
        t0 = time.perf_counter()
        settings, scratch = worker_settings(self.settings, run, run_dir)
        save_models(settings, run)
        warm = seed_store(settings, run)
        cold = [item for item in run.catalog if item.item_id in run.cold_items]
        expected = last_events(run.events)
        self.progress(
            f"{run.tag} via kafka: {warm} items and the trending counts in the store; starting "
            f"the broker and a worker ({len(cold)} new items, {len(run.events)} events from "
            f"{len(expected)} users to send)"
        )
        with LocalStack(settings, log_dir=run_dir, scratch=scratch) as stack:
            worker = stack.worker
            assert worker is not None
            consumer = output_consumer(settings, stack.bootstrap, settings.topic_recommendations)
            publisher = Publisher(settings, stack.bootstrap)
            try:
                start_s = self._start(run, settings, worker, publisher, cold)
                self.progress(
                    f"{run.tag} via kafka: worker ready with ranker {run.scorer.version!r}, "
                    f"{len(cold)} new items indexed ({start_s:.1f}s)"
                )
                t_send = time.perf_counter()
                for e in run.events:
                    _publish(publisher.event, behavior_event(e), f"{run.tag}: event {e.event_id}")
                publisher.flush()
                lists, received = self._collect(run, settings, worker, consumer, expected)
                replay_s = time.perf_counter() - t_send
                samples = worker.metrics()
            finally:
                consumer.close()
                publisher.producer.close()  # before the broker stops: no disconnect noise
        info = _worker_figures(samples)
        info |= {
            "events": len(run.events),
            "recommendations_received": received,
            "worker_start_s": round(start_s, 1),
            "replay_s": round(replay_s, 1),
            "seconds": round(time.perf_counter() - t0, 1),
            **self._new_item_vectors(settings, run, cold),
        }
        self.progress(
            f"{run.tag} via kafka: {len(lists)} lists in {replay_s:.1f}s over "
            f"{info['event_batches']:.0f} worker batch(es) ({info['seconds']:.0f}s in all)"
        )
        return StreamResult(lists=lists, info=info)

    def _start(
        self,
        run: StreamRun,
        settings: Settings,
        worker: WorkerProcess,
        publisher: Publisher,
        cold: Sequence[CatalogItem],
    ) -> float:
        """Send the new items, wait until they are indexed; the worker must run our ranker."""
        t0 = time.perf_counter()
        for item in cold:
            _publish(publisher.item, item_event(item), f"{run.tag}: new item {item.item_id}")
        publisher.flush()
        timeout = settings.eval_kafka_ready_timeout_s
        try:
            # the ranker gauge is set when the pipeline starts, before any batch
            worker.wait_for("coldstream_ranker_info", 1, timeout)
            if cold:
                worker.wait_for("coldstream_items_indexed_total", len(cold), timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise ViaKafkaError(f"{run.tag}: the worker did not get ready: {exc}") from exc
        running = [
            key.partition("version=")[2].rstrip("}")
            for key, value in worker.metrics().items()
            if key.startswith("coldstream_ranker_info{") and value == 1
        ]
        if running != [run.scorer.version]:
            raise ViaKafkaError(
                f"{run.tag}: the worker ranks with {running}, not {run.scorer.version!r} "
                f"(model file refused?){_log_tail(worker)}"
            )
        if "keeping the previous model" in _log(worker):
            raise ViaKafkaError(f"{run.tag}: the worker refused a model file{_log_tail(worker)}")
        return time.perf_counter() - t0

    def _collect(
        self,
        run: StreamRun,
        settings: Settings,
        worker: WorkerProcess,
        consumer: Consumer,
        expected: Mapping[str, str],
    ) -> tuple[dict[str, list[str]], int]:
        """Read recommendations until each user's list for their last event is in."""
        lists: dict[str, list[str]] = {}
        received = 0
        deadline = time.monotonic() + settings.eval_kafka_output_timeout_s
        next_report = time.monotonic() + settings.eval_kafka_progress_every_s
        while len(lists) < len(expected):
            if worker.proc is None or worker.proc.poll() is not None:
                code = None if worker.proc is None else worker.proc.returncode
                raise ViaKafkaError(f"{run.tag}: the worker exited ({code}){_log_tail(worker)}")
            for msg in consumer.consume(500, 0.2):
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                rec = Recommendation.model_validate_json(value)
                received += 1
                if rec.model.ranker != run.scorer.version:
                    raise ViaKafkaError(
                        f"{run.tag}: a list ranked by {rec.model.ranker!r}, not "
                        f"{run.scorer.version!r}{_log_tail(worker)}"
                    )
                if expected.get(rec.user_id) == rec.trigger_event_id:
                    ranked = sorted(rec.items, key=lambda i: i.rank)
                    lists[rec.user_id] = [i.item_id for i in ranked]
            now = time.monotonic()
            if now >= next_report or now >= deadline:
                samples = worker.metrics()
                dead = metrics.total(samples, "coldstream_dead_letters_total")
                if dead:
                    raise ViaKafkaError(
                        f"{run.tag}: the worker dead-lettered {dead:.0f} record(s) (topic "
                        f"{settings.topic_dead_letter}); their users' last lists would be "
                        f"missing{_log_tail(worker)}"
                    )
                applied = metrics.total(samples, "coldstream_profile_updates_total")
                self.progress(
                    f"{run.tag} via kafka: {applied:.0f}/{len(run.events)} events applied, "
                    f"lists for {len(lists)}/{len(expected)} users"
                )
                next_report = now + settings.eval_kafka_progress_every_s
                if now >= deadline and len(lists) < len(expected):
                    missing = sorted(set(expected) - set(lists))
                    raise ViaKafkaError(
                        f"{run.tag}: no list for {len(missing)} user(s) (e.g. {missing[:5]}) "
                        f"{settings.eval_kafka_output_timeout_s:g}s after the last event "
                        f"(COLDSTREAM_EVAL_KAFKA_OUTPUT_TIMEOUT_S){_log_tail(worker)}"
                    )
        return lists, received

    def _new_item_vectors(
        self, settings: Settings, run: StreamRun, cold: Sequence[CatalogItem]
    ) -> dict[str, Any]:
        """How close the worker's vectors for the new items are to the eval's (the worker has
        stopped, so its store can be opened)."""
        if not cold:
            return {}
        row = {item.item_id: n for n, item in enumerate(run.catalog)}
        store = open_store(settings)
        try:
            stored = store.retrieve(settings.items_collection, [i.item_id for i in cold])
        finally:
            store.close()
        cosines = [
            float(np.dot(point.vector, run.vectors[row[item_id]]))
            / float(np.linalg.norm(point.vector) * np.linalg.norm(run.vectors[row[item_id]]))
            for item_id, point in stored.items()
            if point.vector is not None
        ]
        return {
            "new_items_indexed": len(cosines),
            "new_item_vectors_min_cosine": round(min(cosines), 6) if cosines else None,
        }


def _publish(send: Callable[[dict[str, Any]], None], payload: dict[str, Any], what: str) -> None:
    """Validated publishing: a record the wire contract refuses could not reach the worker."""
    try:
        send(payload)
    except InvalidPayload as exc:
        raise ViaKafkaError(f"{what} breaks the wire contract: {exc.message}") from exc


def _worker_figures(samples: Mapping[str, float]) -> dict[str, float]:
    """The worker's own account of the run, from its Prometheus endpoint."""
    batches = samples.get("coldstream_batch_size_count{agent=events}", 0.0)
    events = samples.get("coldstream_batch_size_sum{agent=events}", 0.0)
    return {
        "event_batches": batches,
        "mean_batch_events": round(events / batches, 1) if batches else 0.0,
        "events_applied": metrics.total(dict(samples), "coldstream_profile_updates_total"),
        "events_skipped": metrics.total(dict(samples), "coldstream_events_skipped_total"),
        "dead_letters": metrics.total(dict(samples), "coldstream_dead_letters_total"),
    }


def _log(worker: WorkerProcess) -> str:
    path = worker.log_path
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def _log_tail(worker: WorkerProcess, chars: int = 3000) -> str:
    return f"\n--- worker log (tail) ---\n{_log(worker)[-chars:]}"


def format_agreement(result: Mapping[str, Any]) -> str:
    """Per seed, k and engine method: the figures of both paths and how alike their lists are."""
    key = PATH.replace("-", "_")
    lines = [
        f"{'seed':>4} {'k':>2}  {'method':<13}{'Recall in-proc → kafka':>26}"
        f"{'NDCG in-proc → kafka':>26}{'identical lists':>17}{'overlap':>9}{'batches':>9}"
    ]
    for s in result["per_seed"]:
        for k, methods in s.get(key, {}).items():
            for method, info in methods.items():
                ours = s["results"][k][method]
                ref, agree = info["in_process"], info["agreement"]
                lines.append(
                    f"{s['seed']:>4} {k:>2}  {method:<13}"
                    f"{ref['recall']:>16.4f} → {ours['recall']:.4f}"
                    f"{ref['ndcg']:>16.4f} → {ours['ndcg']:.4f}"
                    f"{agree['identical_lists']:>17.3f}{agree['mean_overlap']:>9.3f}"
                    f"{info['event_batches']:>9.0f}"
                )
    return "\n".join(lines) + "\n"
