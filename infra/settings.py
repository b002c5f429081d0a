"""The one settings object: every knob is an env var with the ``COLDSTREAM_`` prefix.

Empty ``kafka_bootstrap`` means "start the embedded broker"; empty ``qdrant_url`` means
"embedded store under ``data_dir``". Everything else has a default that runs on a laptop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# the embedded broker's consumer timings: it holds a fetch for the whole wait (new data does
# not wake it), and answers a join about half the session timeout after it arrives
EMBEDDED_FETCH_MAX_WAIT_MS = 10
EMBEDDED_SESSION_TIMEOUT_S = 6.0


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "coldstream"


class Settings(BaseSettings):
    """Effective configuration of every coldstream process (worker, CLI, demo, bench, eval)."""

    model_config = SettingsConfigDict(
        env_prefix="COLDSTREAM_", env_file=None, extra="ignore", validate_default=True
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field("", description="host:port list; empty = embedded broker")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="security protocol of every Kafka client the project creates"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (with a SASL_* protocol)"
    )
    kafka_sasl_username: str = Field("", description="SASL user name")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="SASL password (masked by `coldstream config`)"
    )
    kafka_ssl_cafile: str = Field("", description="CA certificate file (PEM) for SSL")
    kafka_ssl_certfile: str = Field("", description="client certificate file (PEM) for SSL")
    kafka_ssl_keyfile: str = Field("", description="client key file (PEM) for SSL")
    kafka_session_timeout_s: float | None = Field(
        None, description="consumer-group session timeout; default 6 s embedded, 30 s otherwise"
    )
    kafka_fetch_max_wait_ms: int | None = Field(
        None, ge=1, description="consumer fetch long-poll; default 10 ms embedded, 500 otherwise"
    )
    kafka_consumer_inline_delivery: bool = Field(
        True,
        description="hand fetched messages to the agents without scheduling tasks when the "
        "hand-over does not wait (streams.transport); false = Faust's own path",
    )
    producer_request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="how long the worker's producer tries to deliver an output before it "
        "counts as failed and the batch's outputs are sent again (their input events stay "
        "unacked meanwhile); Faust's own default is 1200 s",
    )
    output_producer: Literal["librdkafka", "faust"] = Field(
        "librdkafka",
        description="what sends the agents' outputs: a librdkafka producer (one C call per "
        "record, its I/O off the GIL) or Faust's own (aiokafka, in Python on the event loop)",
    )
    output_linger_ms: float = Field(
        1.0,
        ge=0,
        description="with output_producer=librdkafka: how long a record may wait for others "
        "to share its request (librdkafka's linger.ms; Faust's producer waits 1 ms)",
    )
    kafka_consumer_group: str = Field(
        "coldstream",
        description="the workers' consumer group: workers of one group share the partitions",
    )
    embedded_broker_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="the embedded broker a worker or the demo starts: 0 = any free port; "
        "`coldstream broker` listens on it when set, else on 9092",
    )
    embedded_broker_start_timeout_s: float = Field(
        20.0, description="how long to wait for the embedded broker to listen"
    )

    # --- Topics --------------------------------------------------------------------------
    topic_events: str = Field("events", description="behavior events in (key = user_id)")
    topic_items: str = Field("items", description="catalog items in (key = item_id)")
    topic_recommendations: str = Field(
        "recommendations", description="recommendation lists out (key = user_id)"
    )
    topic_dead_letter: str = Field(
        "dead-letter", description="records that cannot be applied, with their reason"
    )
    partitions_events: int = Field(
        4, ge=1, description="partitions of the events topic (the most workers that share the work)"
    )
    partitions_items: int = Field(2, ge=1, description="partitions of the items topic")
    partitions_recommendations: int = Field(
        4, ge=1, description="partitions of the recommendations topic"
    )
    partitions_dead_letter: int = Field(1, ge=1, description="partitions of the dead-letter topic")
    topic_replication_factor: int = Field(
        1, ge=1, description="replication factor of topics `coldstream topics create` makes"
    )

    # --- Vector store --------------------------------------------------------------------
    qdrant_url: str = Field("", description="Qdrant server URL; empty = embedded store")
    qdrant_api_key: SecretStr = Field(
        SecretStr(""), description="Qdrant server API key (masked by `coldstream config`)"
    )
    store_backend: Literal["edge", "qdrant-local"] = Field(
        "edge",
        description="embedded engine when qdrant_url is empty: Qdrant Edge (fast, default) or "
        "qdrant-client local mode",
    )
    store_optimize_on_start: bool = Field(
        True, description="edge: build the items HNSW index at start-up (blocks; never mid-stream)"
    )
    store_exclude_after_max: int = Field(
        64,
        ge=0,
        description="edge: a search excluding at most this many ids asks for that many more "
        "hits and drops them itself (a must-not-id filter doubled the query's cost); longer "
        "exclusion lists go to the engine as a filter",
    )
    store_exclude_slack: int = Field(
        8,
        ge=0,
        description="edge: that over-fetch is at most this many hits; a query whose excluded ids "
        "took more of its nearest is asked again with all of them (bench traffic: 2.6 excluded "
        "among the nearest on average, at most 9)",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="embedded store and Faust data; default $XDG_DATA_HOME/coldstream, else "
        "~/.local/share/coldstream",
    )
    items_collection: str = Field("items", description="the store's collection of catalog items")
    users_collection: str = Field("users", description="the store's collection of user profiles")
    state_collection: str = Field(
        "coldstream_state",
        description="the store's collection of trending and co-visitation counts",
    )

    # --- Encoder -------------------------------------------------------------------------
    encoder_model_path: str = Field(
        "", description="local Hugging Face model directory; empty = packaged all-MiniLM-L6-v2"
    )
    encoder_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when present, else CPU"
    )
    encoder_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto = bf16 on CUDA (fp16 without bf16), bf16 on a CPU that supports it, "
        "else fp32",
    )
    encoder_max_length: int = Field(
        128, ge=8, le=512, description="tokenizer truncation, in tokens"
    )
    encoder_batch_size: int = Field(
        0, ge=0, description="texts per forward pass; 0 = by device: 64 on CPU, 256 on CUDA"
    )
    encoder_max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="the longest a text waits in the micro-batcher for others to share its pass",
    )
    encoder_queue_size: int = Field(
        4096, ge=1, description="texts the micro-batcher queues at most (callers wait beyond it)"
    )
    encoder_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch default")
    encoder_cudnn_attention: bool = Field(
        False,
        description="CUDA: let attention use cuDNN, which builds a plan per new input shape "
        "(~60 ms each on an H200; the micro-batcher's passes vary in shape)",
    )

    numpy_blas_threads: int = Field(
        1,
        ge=0,
        description="numpy's BLAS threads (0 = its default); the ranking math is many tiny "
        "products per user, where waking BLAS threads costs more than the product",
    )

    event_loop: Literal["asyncio", "uvloop"] = Field(
        "uvloop",
        description="the worker's asyncio event loop (Faust's and its consumer thread's); "
        "uvloop is libuv's, with less Python per callback",
    )

    gc_freeze_at_start: bool = Field(
        True,
        description="freeze the objects allocated at start-up (models, libraries) so Python's "
        "full garbage collections skip them: 160 ms → ~5 ms per collection in process",
    )
    gc_gen0_threshold: int = Field(
        10_000,
        ge=0,
        description="allocations between young garbage collections (0 = Python's 700)",
    )

    # --- Stream batching -----------------------------------------------------------------
    batch_max_events: int = Field(512, ge=1, description="behavior events per batch at most")
    batch_within_s: float = Field(
        0.005,
        gt=0,
        description="the longest a batch waits for more events; with batch_close_when_drained "
        "it closes earlier, as soon as no event is waiting (otherwise Faust's take() waits "
        "this long after every batch: `coldstream bench --rate 100`: p99 71 ms at 0.02, "
        "29 ms at 0.005)",
    )
    batch_close_when_drained: bool = Field(
        True,
        description="close a behavior batch as soon as the agent's queue is empty "
        "(streams.batching): no idle wait after the waiting events are taken; "
        "false = Faust's take_events",
    )
    batch_behind_within_s: float = Field(
        0.02,
        ge=0,
        description="with batch_close_when_drained: while events wait in the agent's queue or "
        "the partition has more records on the broker than the agent has taken, a batch keeps "
        "filling for up to this long: "
        "bigger batches when behind (`coldstream bench --rate 2000`: ~1,800 events/s in "
        "batches of ~330 against ~1,590 in ~240 at 0); 0 = close when drained regardless",
    )
    output_acks_in_flight: int = Field(
        4,
        ge=0,
        description="with batch_close_when_drained: behavior batches whose outputs may still "
        "wait for the broker's acks while the next batch runs; their input events are acked "
        "only once every output is (streams.agents.DeferredAcks); a batch taken while more "
        "events waited always waits for its acks; 0 = every batch waits before the next",
    )
    item_batch_max: int = Field(256, ge=1, description="item events per batch at most")
    item_batch_within_s: float = Field(
        0.05,
        gt=0,
        description="the longest an item batch waits for more items (and how often a held "
        "event checks for its item)",
    )
    unknown_item_wait_s: float = Field(
        0.25,
        ge=0,
        description="an event naming an item the store does not have yet (its item event may "
        "still be in the items agent: a click on an item published a moment ago) waits up to "
        "this long for it, checked every item_batch_within_s, with all of its user's events "
        "of the batch; the rest of the batch is applied first and its outputs leave before the "
        "wait. Still unknown then: dead-lettered as unknown_item. 0 = dead-letter at once",
    )
    unknown_item_forget_s: float = Field(
        300.0,
        ge=0,
        description="an item id still unknown after its wait is not waited for again for this "
        "long: its events are dead-lettered at once unless the item is in the store by then "
        "(a client clicking ids that never come would otherwise hold every batch it is in, "
        "and every partition of the worker behind it, for the whole wait). 0 = wait every time",
    )

    # --- Input limits --------------------------------------------------------------------
    max_payload_bytes: int = Field(
        64 * 1024, ge=256, description="a record larger than this is dead-lettered (too_large)"
    )
    max_text_chars: int = Field(
        4096,
        ge=1,
        description="texts (search, review, title, description) longer than this are "
        "dead-lettered (schema)",
    )
    max_tags: int = Field(64, ge=0, description="an item with more tags is dead-lettered (schema)")
    max_id_chars: int = Field(
        256, ge=1, description="ids longer than this are dead-lettered (schema)"
    )
    max_label_chars: int = Field(256, ge=1, description="an item's category, brand and each tag")
    max_future_ts_s: float = Field(
        86_400.0,
        gt=0,
        description="an event whose ts is further ahead of the worker's clock is dead-lettered "
        "(schema): a far-future ts would stop its user's profile decay for good (an item's ts "
        "ahead is a release date: the item counts as published at its arrival)",
    )

    # --- Profiles ------------------------------------------------------------------------
    weight_view: float = Field(1.0, description="profile weight of a view")
    weight_click: float = Field(1.5, description="profile weight of a click")
    weight_add_to_cart: float = Field(2.5, description="profile weight of an add to cart")
    weight_purchase: float = Field(4.0, description="profile weight of a purchase")
    weight_rate: float = Field(
        2.0,
        description="profile weight of a rating of 5 (a rating scales it: rating/5, above 5 "
        "counts as 5)",
    )
    weight_search: float = Field(1.5, description="profile weight of a search text")
    weight_review: float = Field(2.0, description="profile weight of a review")
    weight_profile: float = Field(3.0, description="profile weight of an onboarding/profile text")
    profile_half_life_hours: float = Field(
        72.0, gt=0, description="a profile's older signals weigh half after this long"
    )
    profile_recent_items: int = Field(
        20, ge=1, description="recent items a profile keeps (reason anchors, co-visitation windows)"
    )
    profile_seen_max: int = Field(
        2000, ge=1, description="items a profile remembers as seen (excluded from lists)"
    )

    # --- Recommendations ----------------------------------------------------------------
    recs_count: int = Field(10, ge=1, description="items per emitted list")
    recall_top_n: int = Field(50, ge=1, description="content recall: nearest items per user")
    mmr_lambda: float = Field(
        0.8, ge=0, le=1, description="MMR: 1 = relevance only, lower = more diversity"
    )
    popularity_weight: float = Field(
        0.3,
        ge=0,
        le=1,
        description="without a trained ranker: the popularity prior's weight in the cosine blend",
    )
    popularity_half_count: float = Field(
        5.0, gt=0, description="decayed interaction count at which the prior is worth half"
    )
    cold_item_slots: int = Field(
        1,
        ge=0,
        description="minimum new-item slots (a product choice; `coldstream eval` picks its own "
        "per data set on validation users)",
    )
    cold_item_max_age_hours: float = Field(
        72.0, gt=0, description="an item is new (slot-eligible) for this long after its publication"
    )
    trending_half_life_hours: float = Field(
        24.0, gt=0, description="trending counts weigh half after this long"
    )
    trending_persist_every_s: float = Field(
        10.0, gt=0, description="how often trending and co-visitation counts are saved to the store"
    )

    # --- Worker / metrics ----------------------------------------------------------------
    lag_interval_s: float = Field(5.0, gt=0, description="how often consumer lag is measured")
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="the address to bind; 0.0.0.0 for every interface"
    )
    metrics_port: int = Field(
        9108,
        ge=0,
        le=65535,
        description="serves /metrics, and /healthz and /readyz for orchestrators; 0 = off",
    )
    health_stall_s: float = Field(
        30.0,
        gt=0,
        description="/healthz fails (503) once the event loop has not beaten for this long "
        "(from the start to the first beat: health_start_grace_s)",
    )
    health_start_grace_s: float = Field(
        300.0,
        gt=0,
        description="/healthz allows this long from the start to the first beat: the encoder's "
        "load, the store's optimize (it holds the GIL) and the consumer group's join (up to the "
        "rebalance timeout while other members finish their batches) come first",
    )
    health_beat_every_s: float = Field(1.0, gt=0, description="the event loop's heartbeat")
    health_encoder_down_s: float = Field(
        120.0,
        ge=0,
        description="/healthz fails once the encoder has failed its probe for this long "
        "(a device left in an error state needs a new process); 0 = never",
    )
    health_exit_after_s: float = Field(
        0.0,
        ge=0,
        description="end the process (status 1) once /healthz has failed for this long, for "
        "runtimes that restart an exited container but not an unhealthy one (Docker, "
        "Compose: the image sets 60); 0 = never (Kubernetes restarts on the probe)",
    )
    health_encoder_recheck_s: float = Field(
        5.0,
        gt=0,
        description="while the encoder is reported down, probe it this often (and this often, "
        "look for a hung forward pass)",
    )
    health_encoder_pass_s: float = Field(
        120.0,
        ge=0,
        description="a forward pass running longer reports the encoder down (a hung device "
        "does not raise); liveness then fails after health_encoder_down_s. 0 = never",
    )
    web_enabled: bool = Field(
        False, description="Faust's own web server (the worker's metrics and probes do not need it)"
    )
    web_port: int = Field(6066, ge=0, le=65535, description="Faust's web server port, when enabled")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="log level of every coldstream process"
    )

    @model_validator(mode="after")
    def _beat_within_stall(self) -> Settings:
        if self.health_beat_every_s >= self.health_stall_s:
            raise ValueError(
                f"health_beat_every_s ({self.health_beat_every_s}) must be below health_stall_s "
                f"({self.health_stall_s}): /healthz would fail between beats"
            )
        return self

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap.strip()

    @property
    def embedded_qdrant(self) -> bool:
        return not self.qdrant_url.strip()

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def edge_path(self) -> Path:
        """Qdrant Edge shards; a separate directory, as the on-disk formats differ."""
        return self.data_dir / "edge"

    @property
    def effective_fetch_max_wait_ms(self) -> int:
        """The embedded broker holds a fetch for the whole wait (it is not woken by new data)."""
        if self.kafka_fetch_max_wait_ms is not None:
            return self.kafka_fetch_max_wait_ms
        return EMBEDDED_FETCH_MAX_WAIT_MS if self.embedded_kafka else 500

    @property
    def effective_session_timeout_s(self) -> float:
        if self.kafka_session_timeout_s is not None:
            return self.kafka_session_timeout_s
        return EMBEDDED_SESSION_TIMEOUT_S if self.embedded_kafka else 30.0

    def event_weights(self) -> dict[str, float]:
        """Weight of each behavior type in the profile update rule."""
        return {
            "view": self.weight_view,
            "click": self.weight_click,
            "add_to_cart": self.weight_add_to_cart,
            "purchase": self.weight_purchase,
            "rate": self.weight_rate,
            "search": self.weight_search,
            "review": self.weight_review,
            "profile": self.weight_profile,
        }

    def topic_partitions(self) -> dict[str, int]:
        return {
            self.topic_events: self.partitions_events,
            self.topic_items: self.partitions_items,
            self.topic_recommendations: self.partitions_recommendations,
            self.topic_dead_letter: self.partitions_dead_letter,
        }

    def masked(self) -> dict[str, Any]:
        """Settings as plain data with every secret replaced by ``'***'`` (or '' when unset)."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = "***" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out

    # === Learned ranker, co-visitation, evaluation (issue 5; owned by ranking/) =============
    ranker_path: str = Field(
        "", description="ranker safetensors file; empty = <data_dir>/model/ranker.safetensors"
    )
    covisit_path: str = Field(
        "", description="co-visitation snapshot; empty = <data_dir>/model/covisit.safetensors"
    )
    ranker_enabled: bool = Field(True, description="use the trained ranker when its file loads")
    ranker_reload_every_s: float = Field(
        30.0, gt=0, description="how often the worker checks the ranker/snapshot files"
    )
    covisit_top_n: int = Field(50, ge=0, description="co-visitation recall channel size")
    covisit_window: int = Field(
        20, ge=1, description="online pairs: an event pairs with this many recent items"
    )
    covisit_recency: float = Field(0.8, gt=0, le=1, description="weight per step back in time")
    covisit_max_pairs: int = Field(200_000, ge=1, description="online pairs kept per partition")
    covisit_row_cap: int = Field(
        16,
        ge=1,
        description="online neighbours kept per item: the scoring work per user grows with it "
        "(measured: 64 made a 10-minute soak at 500 events/s fall behind)",
    )
    covisit_online_pair_scale: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="what one online co-visitation pair counts for beside the snapshot's; "
        "0 = the scale `coldstream train` measured and stored in the snapshot, 1 = once",
    )
    covisit_train_window: int = Field(500, ge=1, description="snapshot pairs: max distance")
    covisit_neighbors: int = Field(200, ge=1, description="snapshot neighbors kept per item")
    # 25, not 50 (this and the new-item channel): on validation users of seeds 0-2, pools a
    # quarter smaller and Recall+NDCG@20 (mean over k = 1, 3, 5) +0.002, +0.001, +0.004
    popular_top_n: int = Field(25, ge=0, description="popular recall channel size")
    # the list's tail (its last quarter) ordered by the scorer's relevance blended with
    # co-visitation. Chosen on validation users of seeds 0-2 (trained ranker; weight 0.2/0.3,
    # head 1/2 or 3/4 of the list): mean Recall+NDCG@20 over k 0.5965 → 0.5989, Recall@20
    # +0.001 to +0.007 (docs/evaluation-history.md)
    tail_covisit_weight: float = Field(
        0.3, ge=0, le=1, description="co-visitation's weight in the order of the list's tail"
    )
    tail_head_frac: float = Field(
        0.75, ge=0, le=1, description="share of the list kept in the scorer's order"
    )
    cold_item_max_count: float = Field(
        0.0, ge=0, description="an item stays 'new' (slot-eligible) up to this many visits"
    )
    cold_slots_follow_content: bool = Field(
        True, description="give new items more slots when content alone ranks more of them"
    )
    ranker_hidden: int = Field(
        32, ge=1, description="`coldstream train`: the ranker MLP's hidden width"
    )
    ranker_epochs: int = Field(
        15,
        ge=1,
        description="`coldstream train`: epochs at most (early stopping on validation users)",
    )
    ranker_ensemble: int = Field(
        3, ge=1, le=16, description="rankers fitted under different seeds, relevances averaged"
    )
    ranker_val_frac: float = Field(0.15, gt=0, lt=1, description="validation users (training)")
    ranker_cold_mask_frac: float = Field(
        0.0, ge=0, le=1, description="training: share of candidates shown as new items"
    )
    cold_slots_content_frac: float = Field(
        1.0, ge=0, description="share of content-only's new items in the top k that keep a slot"
    )
    cold_rank_by: Literal["content", "recent", "scorer", "picks", "prior"] = Field(
        "prior", description="what picks new items for their slots (see EngineConfig)"
    )
    cold_prior_weight: float = Field(
        1.0, ge=0, description="'prior' order: weight of the ranker's item prior vs cosine"
    )
    new_items_top_n: int = Field(
        25, ge=0, description="new-item recall channel size (needs a trained ranker's prior)"
    )
    cold_exposure_max_share: float = Field(
        1.0,
        gt=0,
        description="a new item fills a new-item slot in at most this share of the last "
        "cold_exposure_window lists, then the next new item in the user's order does "
        "(ranking.exposure); 1 = no cap",
    )
    cold_exposure_window: int = Field(
        100, ge=1, description="lists the new-item exposure cap counts over"
    )

    # === `coldstream eval --via-kafka` (streams/eval_kafka.py) ==================================
    eval_kafka_ready_timeout_s: float = Field(
        180.0, gt=0, description="via-kafka eval: worker start until the new items are indexed"
    )
    eval_kafka_output_timeout_s: float = Field(
        300.0,
        gt=0,
        description="via-kafka eval: last event sent until every test user's list has arrived",
    )
    eval_kafka_progress_every_s: float = Field(
        5.0, gt=0, description="via-kafka eval: how often waiting prints progress"
    )
    eval_kafka_single_batch: bool = Field(
        False,
        description=(
            "via-kafka eval: the worker takes each run's events as one batch, as the in-process "
            "replay applies them (batch size = the run's event count; the lists then agree)"
        ),
    )

    @property
    def ranker_file(self) -> Path:
        return (
            Path(self.ranker_path)
            if self.ranker_path
            else self.data_dir / "model" / "ranker.safetensors"
        )

    @property
    def covisit_file(self) -> Path:
        return (
            Path(self.covisit_path)
            if self.covisit_path
            else self.data_dir / "model" / "covisit.safetensors"
        )


ENV_PREFIX = "COLDSTREAM_"


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``COLDSTREAM_*`` variables that name no setting: settings ignore them, so a misspelled
    one (``COLDSTREAM_BATCH_SIZE`` for ``COLDSTREAM_ENCODER_BATCH_SIZE``) would change nothing
    without a word. The commands log each one at start."""
    env = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(n for n in env if n.upper().startswith(ENV_PREFIX) and n.upper() not in known)


def reference() -> str:
    """Every setting as a Markdown table (variable, default, meaning): ``docs/settings.md`` is
    this text (a test keeps the two equal), printed by ``coldstream config --reference``."""
    rows = [
        "# Settings",
        "",
        "Every setting is an environment variable with the prefix `COLDSTREAM_` (generated by",
        "`coldstream config --reference` from `infra/settings.py`; `coldstream config` prints the",
        "effective values). A `COLDSTREAM_*` variable that names no setting is ignored, with a",
        "warning in the log of every command.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = "see meaning" if field.default_factory is not None else _shown(field.default)
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "empty"
    if value is None:
        return "see meaning"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    return f"`{value}`"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings read once from the environment."""
    return Settings()
