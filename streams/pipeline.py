"""What the agents do with a batch of records, with no Faust in sight.

Agents hand over plain :class:`Record` batches and send back what this returns. Blocking store
calls run on one dedicated thread and encoder passes on the batcher's thread, so the event loop
(which also heartbeats the consumer group) never waits on them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import numpy as np
from pydantic_core import to_json

from encoders.batcher import BatcherStopped, EncoderUnavailable, MicroBatcher
from encoders.texts import item_text, user_text
from infra import metrics
from infra.health import HEALTH
from infra.settings import Settings
from ranking.catalog import CatalogItem, item_points
from ranking.covisit import CovisitModel
from ranking.engine import BatchOutcome, BehaviorEngine, Interaction, UserRecs
from ranking.scoring import Scorer
from ranking.store import StoredPoint, StoreUnavailable, VectorStore
from streams.schemas import (
    RAW_PREVIEW_BYTES,
    SOURCES,
    BehaviorEvent,
    DeadLetter,
    InvalidPayload,
    ItemEvent,
    Limits,
    decode,
    error_preview,
    raw_preview,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
# item ids remembered as missing at most (Pipeline._missing): a bound on the memory a stream
# of made-up ids can take; past it the oldest are forgotten (and waited for again)
_MISSING_IDS_KEPT = 100_000


@dataclass(frozen=True)
class Record:
    """One consumed Kafka record; ``timestamp`` (epoch seconds) is when it reached its topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float


class BatchPartlySent(Exception):
    """A batch that failed after part of its output went out early (``on_events``'s
    ``early``): the records of that part are final, and only the others are to be retried
    (again, they would be dead-lettered, listed and counted twice)."""

    def __init__(self, final: set[tuple[str, int, int]]) -> None:
        super().__init__(f"batch failed after {len(final)} of its records were sent")
        self.final = final  # (topic, partition, offset) of each record that is done


@dataclass
class Outputs:
    """What a batch produces: recommendations (key, value) and dead letters (key, value)."""

    recommendations: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    # each list's event→recommendation latency; observed once the part is delivered (then
    # emptied with it: a part delivered, then sent again with the rest of its batch, is timed
    # once)
    latencies_s: list[float] = field(default_factory=list)
    # dead letters by (topic, reason) not counted yet: counted when the outputs are final (a
    # batch that fails is retried record by record, and would count its letters twice)
    uncounted: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_payload_bytes=settings.max_payload_bytes,
        max_text_chars=settings.max_text_chars,
        max_tags=settings.max_tags,
        max_id_chars=settings.max_id_chars,
        max_label_chars=settings.max_label_chars,
        max_future_s=settings.max_future_ts_s,
    )


def _published(item: ItemEvent, record: Record, now: float) -> float:
    """The item's ``ts``, else its arrival, never later than ``now``: a release date ahead (a
    pre-order), or a producer's clock ahead, would keep the item new for ``cold_item_max_age``
    past that time; it is new from now."""
    arrival = min(record.timestamp, now)
    return arrival if item.ts is None else min(item.ts.timestamp(), now)


def recommendation_record(recs: UserRecs, encoder_name: str) -> tuple[bytes, bytes]:
    """The output record (key, value) of the ``recommendations`` contract.

    Serialized straight from plain values: the same bytes as ``Recommendation`` validated and
    dumped (a test holds them equal; NaN and infinity are written as null, as the model writes
    them), in about half the time of building the model. What the model's validation would
    refuse of the engine's values (a source outside the contract, a negative count) is refused
    here; every other field's type the engine fixes.
    """
    if recs.profile_events < 0:
        raise ValueError(f"profile_events is {recs.profile_events}, below 0")
    for item in recs.items:
        if item.source not in SOURCES:
            raise ValueError(f"source {item.source!r} is not one of {sorted(SOURCES)}")
    trigger = recs.trigger
    value = to_json(
        {
            "user_id": recs.user_id,
            "trigger_event_id": trigger.event_id,
            "generated_at": datetime.now(UTC),
            "profile_events": recs.profile_events,
            "items": [
                {
                    "item_id": item.item_id,
                    "rank": rank,
                    "score": round(item.score, 6),
                    "source": item.source,
                    "reasons": item.reasons,
                }
                for rank, item in enumerate(recs.items, start=1)
            ],
            "model": {"encoder": encoder_name, "ranker": recs.ranker},
            "latency_ms": round(max(time.time() - trigger.arrival, 0.0) * 1000.0, 3),
        },
        inf_nan_mode="null",
    )
    return recs.user_id.encode(), value


def dead_letter(record: Record, reason: str, error: str) -> tuple[bytes | None, bytes]:
    letter = DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=None if record.key is None else raw_preview(record.key),
        raw=raw_preview(record.value),
        error=error_preview(error),
        reason=reason,
        ts=datetime.now(UTC),
    )
    # a key past the preview's size is cut there too: a letter carrying a huge key whole could
    # be refused by the broker (too large), and the letter is how bad input is kept
    key = None if record.key is None else record.key[:RAW_PREVIEW_BYTES]
    return key, letter.model_dump_json().encode()


class ModelSource(Protocol):
    def poll(self) -> tuple[Scorer | None, CovisitModel | None]: ...


class Pipeline:
    """The per-batch work of both agents: validate, encode, write, recall, rank, explain."""

    def __init__(
        self,
        settings: Settings,
        store: VectorStore,
        batcher: MicroBatcher,
        engine: BehaviorEngine,
        *,
        encoder_name: str,
        encoder_dim: int,
        models: ModelSource | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.batcher = batcher
        self.engine = engine
        self.encoder_name = encoder_name
        self.encoder_dim = encoder_dim
        self.models = models
        self.limits = limits_from(settings)
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="coldstream-store")
        self._max_backoff_s = 5.0
        self._start_lock = asyncio.Lock()
        self._started = False
        # item ids whose wait ran out (see ``unknown_item_forget_s``), in the order they did:
        # monotonic time then
        self._missing: dict[str, float] = {}
        self._said_miskeyed = False

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Idempotent: both agents call it before their first batch."""
        async with self._start_lock:
            if self._started:
                return
            # a store that is down at start-up (or at a rebalance) is waited for, as in a batch
            await self._retrying(self._start)
            self._started = True
            HEALTH.set_started(True)

    async def _start(self) -> None:
        s = self.settings
        await self._run(lambda: self.store.ensure_collection(s.items_collection, self.encoder_dim))
        await self._run(lambda: self.store.ensure_collection(s.users_collection, self.encoder_dim))
        await self._run(lambda: self.store.ensure_collection(s.state_collection, 1))
        await self.batcher.start()
        metrics.dependency_up("encoder")
        metrics.set_ranker_version(self.engine.scorer.version)

    async def stop(self) -> None:
        """Stop encoding, then :meth:`close` (for callers that own the event loop)."""
        if self._started:
            self._started = False
            await self.batcher.stop()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Persist trending counts and close the store; safe once no batch is running.

        The worker calls it after Faust has stopped its agents and closed its loop: closing the
        store any earlier could fail a batch that is still in flight.
        """
        HEALTH.set_started(False)
        self._store_thread.shutdown(wait=True)
        try:
            self.engine.persist_trending()
        except Exception:  # best effort on the way out: soft state, the counts since the last
            # save are lost (a replay does not count them again); profiles are not affected
            log.warning("could not persist trending counts at shutdown", exc_info=True)
        self.store.close()

    async def on_partitions_assigned(self, partitions: Sequence[int]) -> None:
        await self.start()
        await self._retrying(lambda: self._run(lambda: self.engine.load_trending(partitions)))

    async def on_partitions_revoked(self, partitions: Sequence[int]) -> None:
        # best effort: a rebalance must not wait for the store; the new owner then starts from
        # the counts last saved (soft state: trending and co-visitation, not profiles)
        await self.persist_trending()
        # on the store thread, as every other change to the engine's counters: a persist the
        # timer queued meanwhile runs there and reads them
        await self._run(lambda: self.engine.drop_trending(partitions))

    async def persist_trending(self) -> int:
        """Save the counts changed since the last save; with the store down, log it and keep
        them for the next call (a timer calls this: an exception would crash the worker)."""
        try:
            saved = await self._run(self.engine.persist_trending)
        except StoreUnavailable as exc:
            metrics.dependency_down("store", exc, "trending counts kept for the next save")
            return 0
        if saved:  # nothing to save is no call: it says nothing of a store reported down
            metrics.dependency_up("store")
        return saved

    async def recheck_encoder(self) -> None:
        """While the encoder is reported down, probe it: a batch that saw it fail may have
        been given up (a rebalance) with no text to encode since, and liveness fails on an
        encoder down too long (a timer calls this). A forward pass running past
        ``health_encoder_pass_s`` reports the encoder down; its end brings it back up."""
        if not self._started:
            return
        running, limit = self.batcher.pass_running_s(), self.settings.health_encoder_pass_s
        if limit > 0 and running > limit:
            # a hung device never raises: the pass and every caller behind it wait for good.
            # Reported down, liveness fails after health_encoder_down_s and the process is
            # replaced; a probe would only queue behind the pass
            if not HEALTH.is_down("encoder"):
                metrics.dependency_down(
                    "encoder",
                    TimeoutError(f"one forward pass has run for {running:.0f} s"),
                    "waiting for it; liveness fails if it stays down",
                )
            return
        if not HEALTH.is_down("encoder"):
            return
        try:
            answered = await self.batcher.answers()
        except BatcherStopped:  # stopping: a timer must not raise (Faust stops the app)
            return
        if answered:
            metrics.dependency_up("encoder")

    async def reload_models(self) -> None:
        """Swap in a ranker or co-visitation snapshot whose file changed (hot reload)."""
        if self.models is None:
            return
        models, engine = self.models, self.engine

        def poll_and_swap() -> Scorer | None:
            # on the store thread, between two engine steps: a batch is never ranked by two
            # scorers (nor labelled with the one it was not ranked by)
            ranker, covisit = models.poll()
            if covisit is not None:
                engine.swap_covisit(covisit)
            if ranker is not None:
                engine.swap_scorer(ranker)
            return ranker

        ranker = await self._run(poll_and_swap)
        if ranker is not None:
            metrics.set_ranker_version(ranker.version)

    # -- items --------------------------------------------------------------------------
    async def on_items(self, records: Sequence[Record], *, retry: bool = False) -> Outputs:
        """The batch's dead letters (items produce no other output). ``retry`` as for
        :meth:`on_events` (items count no consumption: nothing differs)."""
        out = Outputs()
        now = time.time()
        # a batch ends where its versions one by one would have: each item as its last
        # version says (active or retired), with the content of its last listing, and the
        # earliest publication time any listed version gave
        last: dict[str, ItemEvent] = {}
        listed: dict[str, ItemEvent] = {}
        published: dict[str, float] = {}
        for record in records:
            try:
                item = decode(record.value, ItemEvent, self.limits)
            except InvalidPayload as exc:
                self._reject(out, record, exc.reason, exc.message)
                continue
            last[item.item_id] = item
            if item.active:  # a retirement sets no publication time, one by one neither
                listed[item.item_id] = item
                when = _published(item, record, now)
                published[item.item_id] = min(published.get(item.item_id, when), when)
        # listed in this batch (retired again or not): indexed; retired only: marked
        to_index = list(listed.values())
        retired = [i for i, item in last.items() if not item.active and i not in listed]
        if to_index:
            texts = [
                item_text(i.title, i.category, i.tags, i.brand, i.description) for i in to_index
            ]
            vectors = await self._retrying(
                lambda: self.batcher.encode_or_diagnose(texts), uses_store=False
            )
            catalog = [
                CatalogItem(
                    item_id=i.item_id,
                    title=i.title,
                    category=i.category,
                    tags=tuple(i.tags),
                    brand=i.brand,
                    description=i.description,
                    price=i.price,
                    created_at=published[i.item_id],
                    active=last[i.item_id].active,
                )
                for i in to_index
            ]
            points = item_points(catalog, vectors)
            await self._retrying(lambda: self._run(lambda: self._index(points)))
            metrics.ITEMS_INDEXED.inc(len(points))
            metrics.ITEMS_RETIRED.inc(sum(1 for i in to_index if not last[i.item_id].active))
        if retired:
            found = await self._retrying(lambda: self._run(lambda: self._retire(retired)))
            metrics.ITEMS_RETIRED.inc(found)
            if found < len(retired):
                metrics.EVENTS_SKIPPED.labels(reason="retire_unknown_item").inc(
                    len(retired) - found
                )
        return self._count_letters(out)

    def _index(self, points: list[StoredPoint]) -> None:
        """Upsert ``points``, each keeping the earliest ``created_at`` it has been given: an
        update (a price change, a catalog resync, a re-listing) does not make an item new
        again, and a later version carrying the true, earlier publication time corrects an
        arrival time stamped on a first version without one."""
        name = self.settings.items_collection
        stored = self.store.retrieve(name, [p.id for p in points], with_vectors=False)
        for point in points:
            first = stored[point.id].payload.get("created_at") if point.id in stored else None
            if isinstance(first, int | float):
                point.payload["created_at"] = min(float(first), point.payload["created_at"])
        self.store.upsert(name, points)

    def _retire(self, item_ids: list[str]) -> int:
        name = self.settings.items_collection
        existing = list(self.store.retrieve(name, item_ids, with_vectors=False))
        self.store.set_payload(name, existing, {"active": False})
        return len(existing)

    # -- behavior events ----------------------------------------------------------------
    async def on_events(
        self,
        records: Sequence[Record],
        early: Callable[[Outputs], Awaitable[None]] | None = None,
        *,
        retry: bool = False,
    ) -> Outputs:
        """The batch's outputs. With ``early``, a batch that waits for late items (a click can
        overtake its item) hands the rest of its outputs to ``early`` before the wait, and
        returns only what the held events produce; the caller acks the batch after both.
        ``retry``: a record of a failed batch tried alone (``streams.agents.guarded``), whose
        consumption was counted with its batch."""
        interactions: list[Interaction] = []
        by_event: dict[int, Record] = {}
        out = Outputs()
        consumed: collections.Counter[str] = collections.Counter()  # one metric update a type
        miskeyed = 0
        for record in records:
            try:
                ev = decode(record.value, BehaviorEvent, self.limits)
            except InvalidPayload as exc:
                consumed["invalid"] += 1
                self._reject(out, record, exc.reason, exc.message)
                continue
            consumed[ev.type] += 1
            if record.key != ev.user_id.encode():
                miskeyed += 1
            inter = Interaction(
                event_id=ev.event_id,
                user_id=ev.user_id,
                type=ev.type,
                ts=ev.ts_epoch,
                item_id=ev.applied_item_id,
                text=ev.text,
                rating=ev.rating,
                partition=record.partition,
                offset=record.offset,
                arrival=record.timestamp,
            )
            by_event[id(inter)] = record
            interactions.append(inter)
        if not retry:  # a record retried alone was counted with its batch
            # what a failed step of the last batch left does not carry over (the records of
            # this one's retries do: they may be those steps' events)
            self.engine.begin_batch()
            for event_type, n in consumed.items():
                metrics.EVENTS_CONSUMED.labels(type=event_type).inc(n)
            if miskeyed:
                self._say_miskeyed(miskeyed)
        if not interactions:
            return self._count_letters(out)

        final: set[tuple[str, int, int]] = set()  # records whose outputs went out early

        async def before_wait(first: BatchOutcome) -> None:
            nonlocal out
            self._add_outcome(out, first, by_event)
            if early is not None:
                await early(self._count_letters(out))
                out = Outputs()
                held = {id(e) for e in first.held}
                open_ = {id(by_event[i]) for i in held}
                final.update(
                    (r.topic, r.partition, r.offset) for r in records if id(r) not in open_
                )

        try:
            outcome = await self._process(interactions, before_wait)
        except Exception as exc:
            if final:
                raise BatchPartlySent(final) from exc
            raise
        self._add_outcome(out, outcome, by_event)
        return self._count_letters(out)

    def _add_outcome(
        self, out: Outputs, outcome: BatchOutcome, by_event: dict[int, Record]
    ) -> None:
        for rej in outcome.rejected:
            self._reject(out, by_event[id(rej.interaction)], rej.reason, rej.message)
        for skipped in outcome.skipped:
            metrics.EVENTS_SKIPPED.labels(reason=skipped.reason).inc()
        metrics.PROFILE_UPDATES.inc(outcome.applied)
        for recs in outcome.recommendations:
            out.recommendations.append(recommendation_record(recs, self.encoder_name))
            metrics.RECOMMENDATIONS.labels(
                source=recs.items[0].source if recs.items else "none"
            ).inc()
            out.latencies_s.append(max(time.time() - recs.trigger.arrival, 0.0))

    async def _process(
        self,
        interactions: list[Interaction],
        before_wait: Callable[[BatchOutcome], Awaitable[None]],
    ) -> BatchOutcome:
        # each pass is retried on its own while a dependency is down: rerunning the first pass
        # after the second failed would list its users again (as replays) and send them twice
        wait_s = self.settings.unknown_item_wait_s
        first = await self._retrying(lambda: self._pass(interactions, hold_unknown=wait_s > 0))
        if not first.held:
            return first
        # a click can overtake its item: the item event may still be in the items agent.
        # The rest of the batch is applied (and its outputs may leave now); the held events
        # wait for their items, then go through again (now rejected if still unknown)
        await before_wait(first)
        wanted = list(dict.fromkeys(e.item_id for e in first.held if e.item_id is not None))
        missing = self._recently_missing()
        waiting = [i for i in wanted if i not in missing]
        if waiting:  # ids whose wait ran out lately are not waited for again
            await self._retrying(lambda: self._wait_for_items(waiting, wait_s))
        second = await self._retrying(lambda: self._pass(first.held, hold_unknown=False))
        unknown = [r for r in second.rejected if r.reason == "unknown_item"]
        now = time.monotonic()
        for r in unknown:
            if r.interaction.item_id is not None:
                missing.pop(r.interaction.item_id, None)  # to the end: the order stays by time
                missing[r.interaction.item_id] = now
        while len(missing) > _MISSING_IDS_KEPT:
            del missing[next(iter(missing))]
        metrics.EVENTS_HELD.labels(outcome="dead_letter").inc(len(unknown))
        moved = sum(1 for k in second.skipped if k.reason == "owner_changed")  # the new owner's
        metrics.EVENTS_HELD.labels(outcome="retried").inc(len(first.held) - len(unknown) - moved)
        return second

    def _say_miskeyed(self, n: int) -> None:
        """Count events not keyed by their user_id; the first time, say why it matters."""
        metrics.EVENTS_MISKEYED.inc(n)
        if not self._said_miskeyed:
            self._said_miskeyed = True
            log.warning(
                "events keyed other than by user_id (the events contract's key): applied, but "
                "with more than one worker a user's events can reach two of them, whose profile "
                "writes overwrite each other; counted in coldstream_events_miskeyed_total"
            )

    def _recently_missing(self) -> dict[str, float]:
        """The ids whose wait ran out less than ``unknown_item_forget_s`` ago (older dropped)."""
        missing = self._missing
        horizon = time.monotonic() - self.settings.unknown_item_forget_s
        while missing and next(iter(missing.values())) <= horizon:
            del missing[next(iter(missing))]
        return missing

    async def _pass(self, interactions: list[Interaction], *, hold_unknown: bool) -> BatchOutcome:
        prep = await self._run(lambda: self.engine.prepare(interactions, hold_unknown=hold_unknown))
        vectors: np.ndarray | None = None
        if prep.texts:
            texts = [user_text(kind, t) for kind, t in prep.texts]
            # inside the batch's retry: an encoder outage reruns the pass (nothing written yet)
            vectors = await self.batcher.encode_or_diagnose(texts)
        return await self._run(lambda: self.engine.apply(prep, vectors))

    async def _wait_for_items(self, item_ids: list[str], wait_s: float) -> None:
        """Return once the store has every one of ``item_ids``, or after ``wait_s``."""
        name = self.settings.items_collection
        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(self.settings.item_batch_within_s, remaining))
            found = await self._run(lambda: self.store.retrieve(name, item_ids, with_vectors=False))
            if len(found) == len(item_ids):
                return

    def _reject(self, out: Outputs, record: Record, reason: str, message: str) -> None:
        out.dead_letters.append(dead_letter(record, reason, message))
        out.uncounted[(record.topic, reason)] += 1

    @staticmethod
    def _count_letters(out: Outputs) -> Outputs:
        """Count ``out``'s dead letters once it is what goes out (see ``Outputs.uncounted``)."""
        for (topic, reason), n in out.uncounted.items():
            metrics.DEAD_LETTERS.labels(topic=topic, reason=reason).inc(n)
        out.uncounted.clear()
        return out

    def dead_letter_for(
        self, record: Record, reason: str, message: str
    ) -> tuple[bytes | None, bytes]:
        metrics.DEAD_LETTERS.labels(topic=record.topic, reason=reason).inc()
        return dead_letter(record, reason, message)

    # -- plumbing -----------------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, fn)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, uses_store: bool = True) -> T:
        """Retry while the store or the encoder is unavailable, backing off up to a cap; never
        give up (the input stays unacked; rejecting it would lose good records)."""
        delay = 0.1
        answered = {"store"} if uses_store else set()  # set to 1 once the attempt succeeds
        while True:
            try:
                result = await attempt()
            except (StoreUnavailable, EncoderUnavailable) as exc:
                dependency = "store" if isinstance(exc, StoreUnavailable) else "encoder"
                answered.add(dependency)
                metrics.dependency_down(dependency, exc, f"retrying in {delay:.1f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
            else:
                for dependency in answered:
                    metrics.dependency_up(dependency)
                return result
