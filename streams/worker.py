"""Assemble a worker from settings: broker, topics, store, encoder, engine, Faust app."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import faust

from encoders.batcher import MicroBatcher
from encoders.config import EncoderConfig
from encoders.model import TextEncoder, load_encoder
from infra import metrics
from infra.broker import kafka_bootstrap
from infra.edge_store import EdgeStore
from infra.health import HEALTH, LivenessWatchdog
from infra.kafka import client_config, ensure_topics, topic_id
from infra.qdrant_store import QdrantStore
from infra.runtime import configure_gc, use_event_loop
from infra.settings import Settings
from ranking.covisit import CovisitModel
from ranking.engine import BehaviorEngine, EngineConfig
from ranking.profile import ProfileConfig
from ranking.ranker import ArtifactWatcher, RankerScorer, ranker_watcher
from ranking.scoring import BlendScorer
from ranking.store import VectorStore
from streams.agents import register_agents
from streams.app import create_app
from streams.output_producer import OutputProducer, OutputTopic
from streams.pipeline import Pipeline

log = logging.getLogger(__name__)


def encoder_config(settings: Settings) -> EncoderConfig:
    return EncoderConfig(
        model_path=settings.encoder_model_path,
        device=settings.encoder_device,
        dtype=settings.encoder_dtype,
        max_length=settings.encoder_max_length,
        batch_size=settings.encoder_batch_size,
        max_wait_ms=settings.encoder_max_wait_ms,
        queue_size=settings.encoder_queue_size,
        threads=settings.encoder_threads,
        cudnn_attention=settings.encoder_cudnn_attention,
    )


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        profile=ProfileConfig(
            weights=settings.event_weights(),
            half_life_s=settings.profile_half_life_hours * 3600.0,
            recent_max=settings.profile_recent_items,
            seen_max=settings.profile_seen_max,
        ),
        items_collection=settings.items_collection,
        users_collection=settings.users_collection,
        state_collection=settings.state_collection,
        recs_count=settings.recs_count,
        recall_top_n=settings.recall_top_n,
        mmr_lambda=settings.mmr_lambda,
        cold_item_slots=settings.cold_item_slots,
        cold_item_max_age_s=settings.cold_item_max_age_hours * 3600.0,
        trending_half_life_s=settings.trending_half_life_hours * 3600.0,
        covisit_top_n=settings.covisit_top_n,
        covisit_window=settings.covisit_window,
        covisit_recency=settings.covisit_recency,
        covisit_max_pairs=settings.covisit_max_pairs,
        covisit_row_cap=settings.covisit_row_cap,
        covisit_online_pair_scale=settings.covisit_online_pair_scale,
        popular_top_n=settings.popular_top_n,
        cold_item_max_count=settings.cold_item_max_count,
        cold_slots_follow_content=settings.cold_slots_follow_content,
        cold_slots_content_frac=settings.cold_slots_content_frac,
        cold_rank_by=settings.cold_rank_by,
        cold_prior_weight=settings.cold_prior_weight,
        new_top_n=settings.new_items_top_n,
        tail_covisit_weight=settings.tail_covisit_weight,
        tail_head_frac=settings.tail_head_frac,
        cold_exposure_max_share=settings.cold_exposure_max_share,
        cold_exposure_window=settings.cold_exposure_window,
    )


def open_store(settings: Settings) -> VectorStore:
    """The configured store, with each call's latency fed to Prometheus."""

    def observe(operation: str, seconds: float) -> None:
        metrics.STORE_SECONDS.labels(operation=operation).observe(seconds)

    if settings.embedded_qdrant and settings.store_backend == "edge":
        store = EdgeStore(
            settings.edge_path,
            observe=observe,
            exclude_after_max=settings.store_exclude_after_max,
            exclude_slack=settings.store_exclude_slack,
        )
        if settings.store_optimize_on_start and store.exists(settings.items_collection):
            store.optimize(settings.items_collection)  # before Faust starts: it blocks
        return store
    if settings.embedded_qdrant:
        return QdrantStore(path=settings.qdrant_path, observe=observe)
    return QdrantStore(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key.get_secret_value() or None,
        observe=observe,
    )


def build_pipeline(
    settings: Settings, store: VectorStore, encoder: TextEncoder | None = None
) -> Pipeline:
    encoder = encoder or load_encoder(encoder_config(settings))

    def on_batch(size: int, seconds: float) -> None:
        metrics.ENCODER_BATCH_SIZE.observe(size)
        metrics.ENCODER_SECONDS.observe(seconds)
        # a pass went through: the encoder is up, whoever saw it down (a batch whose retry
        # then failed on its own record never gets to say so)
        metrics.dependency_up("encoder")

    batcher = MicroBatcher(
        encoder,
        max_batch=encoder.batch_size,
        max_wait_ms=settings.encoder_max_wait_ms,
        queue_size=settings.encoder_queue_size,
        on_batch=on_batch,
    )
    models = ModelWatchers(settings, dim=encoder.dim, encoder=encoder.name)
    ranker, covisit = models.poll()  # the first poll is the start-up load
    fallback = BlendScorer(settings.popularity_weight, settings.popularity_half_count)
    engine = BehaviorEngine(store, engine_config(settings), ranker or fallback, covisit=covisit)
    return Pipeline(
        settings,
        store,
        batcher,
        engine,
        encoder_name=encoder.name,
        encoder_dim=encoder.dim,
        models=models,
    )


class ModelWatchers:
    """The trained ranker and co-visitation snapshot, reloaded when their files change.

    A corrupt or mismatched file is refused with a logged reason and the previous model stays
    in service (ranking/ranker.py, ``ArtifactWatcher``).
    """

    def __init__(self, settings: Settings, *, dim: int, encoder: str) -> None:
        self.ranker = ranker_watcher(settings.ranker_file, expect_dim=dim, expect_encoder=encoder)
        self.covisit = ArtifactWatcher(settings.covisit_file, CovisitModel.load)
        self.enabled = settings.ranker_enabled
        self._mismatch: str | None = None  # the mismatch reported, if any
        self._seen: str | None = None  # the mismatch the last poll saw, if any

    def poll(self) -> tuple[RankerScorer | None, CovisitModel | None]:
        """New objects for the files that changed since the last poll (None otherwise)."""
        ranker = self.ranker.poll() if self.enabled else None
        covisit = self.covisit.poll()
        self._check_pair()
        return ranker, covisit

    def mismatch(self) -> str | None:
        """Why the ranker and the snapshot in service do not belong together, if they don't.

        The ranker learned its co-visitation features from the snapshot ``coldstream train``
        wrote beside it; served with one counted on other data, those features move under it.
        Files without a data hash (written by hand, or by older versions) are not judged.
        """
        ranker = self.ranker.current if self.enabled else None
        covisit = self.covisit.current
        if ranker is None or covisit is None:
            return None
        trained, counted = ranker.meta.data_hash, covisit.data_hash
        if not trained or not counted or trained == counted:
            return None
        return (
            f"the ranker {ranker.version} was trained on data {trained[:12]}, the co-visitation "
            f"snapshot {self.covisit.path} was counted on data {counted[:12]}: its co-visitation "
            "features are not the counts it learned on (`coldstream train` writes both)"
        )

    def _check_pair(self) -> None:
        """Say once when the pair in service stops (or starts again) belonging together.

        A mismatch counts once two polls in a row saw it: ``coldstream train`` writes the
        snapshot, then the ranker, and a poll between the two would flag every retraining.
        """
        now = self.mismatch()
        if now and now == self._seen:  # seen by the poll before too
            if now != self._mismatch:
                log.warning("%s", now)
                metrics.MODEL_DATA_MISMATCH.set(1)
                self._mismatch = now
        elif not now:
            if self._mismatch:
                log.info("the ranker and the co-visitation snapshot come from the same data again")
            metrics.MODEL_DATA_MISMATCH.set(0)
            self._mismatch = None
        self._seen = now


@contextlib.contextmanager
def worker_app(
    settings: Settings, bootstrap: str, store: VectorStore, encoder: TextEncoder | None = None
) -> Iterator[tuple[faust.App, Pipeline]]:
    """A ready-to-run Faust app wired to a pipeline over ``store``; closes what it opened."""
    ensure_topics(settings, bootstrap)
    pipeline = build_pipeline(settings, store, encoder)
    # applied offsets count in this log only (see ranking.profile.Profile.offsets_log)
    events_log = topic_id(settings, bootstrap, settings.topic_events)
    if events_log is None:
        log.warning(
            "the broker gives no topic id: offsets stored in profiles are trusted as they are "
            "(a recreated events topic would have its first records skipped as replays)"
        )
    pipeline.engine.offsets_log = events_log or ""
    app, topics = create_app(settings, bootstrap)
    output: OutputProducer | None = None
    if settings.output_producer == "librdkafka":
        output = OutputProducer(
            client_config(
                settings,
                bootstrap,
                **{
                    "linger.ms": settings.output_linger_ms,
                    # then an output counts as failed and is sent again (until_delivered)
                    "message.timeout.ms": int(settings.producer_request_timeout_s * 1000),
                },
            )
        )
        topics = dataclasses.replace(
            topics,
            recommendations=OutputTopic(output, settings.topic_recommendations),
            dead_letter=OutputTopic(output, settings.topic_dead_letter),
        )
    register_agents(app, topics, pipeline, settings)

    try:
        yield app, pipeline
    finally:
        try:
            if output is not None:
                output.close()
        finally:
            pipeline.close()


def run_worker(settings: Settings) -> int:
    """``coldstream worker``: run until SIGTERM/SIGINT (embedded broker when none is configured).

    Returns the exit status: 0 after a stop, non-zero after a crash (Faust exits 1), so a
    supervisor that restarts on failure restarts it."""
    logging.basicConfig(level=settings.log_level)
    use_event_loop(settings.event_loop)
    status: object = 0
    with kafka_bootstrap(
        settings.kafka_bootstrap,
        port=settings.embedded_broker_port,
        start_timeout_s=settings.embedded_broker_start_timeout_s,
    ) as bootstrap:
        if settings.embedded_kafka:
            print(f"embedded broker: {bootstrap}", flush=True)
        HEALTH.forget()  # the stall clock starts here, not at import
        HEALTH.stall_after_s = settings.health_stall_s
        HEALTH.start_grace_s = settings.health_start_grace_s
        HEALTH.restart_after_down_s = {"encoder": settings.health_encoder_down_s}
        if settings.metrics_port:
            metrics.serve(settings.metrics_host, settings.metrics_port)
        if settings.health_exit_after_s > 0:
            LivenessWatchdog(HEALTH, settings.health_exit_after_s).start()
        store = open_store(settings)
        with worker_app(settings, bootstrap, store) as (app, _pipeline):
            worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
            configure_gc(
                freeze=settings.gc_freeze_at_start, gen0_threshold=settings.gc_gen0_threshold
            )
            try:
                worker.execute_from_commandline()
            except SystemExit as exc:
                status = exc.code
    return status if isinstance(status, int) else (0 if status is None else 1)
