"""One batch of behavior events → updated profiles → ranked, explained recommendations.

The stream agent, the in-process evaluation and the benchmark all call this same code. A batch
costs two reads (users, then the items they touched), one encoder call (made by the caller between
:meth:`BehaviorEngine.prepare` and :meth:`BehaviorEngine.apply`), one profile write and two batch
queries (content recall, and new items when the ranker has an item prior), whatever the number of
events.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranking.candidates import PoolTable
from ranking.covisit import CovisitCounter, CovisitIndex, CovisitModel, ItemIds, RowCache
from ranking.diversity import covisit_tail, head_then_tail_many, mmr_many
from ranking.exposure import NewItemExposure
from ranking.profile import (
    Profile,
    ProfileConfig,
    Signal,
    apply_signal,
    event_weight,
    update_recent,
)
from ranking.reasons import Anchor, explain, item_anchor, nearest_anchors, text_anchor
from ranking.scoring import Candidates, Scorer, score_all
from ranking.store import Query, StoredPoint, VectorStore, payload_copy
from ranking.trending import MergedTrending, TrendingCounter

log = logging.getLogger(__name__)

TEXT_TYPES = frozenset({"search", "profile", "review"})


@dataclass(frozen=True)
class EngineConfig:
    profile: ProfileConfig
    items_collection: str = "items"
    users_collection: str = "users"
    state_collection: str = "coldstream_state"
    recs_count: int = 10
    recall_top_n: int = 100
    mmr_lambda: float = 0.8
    cold_item_slots: int = 2
    cold_item_max_age_s: float = 72 * 3600.0
    cold_item_max_count: float = 0.0  # an item is new while its visit count is at most this
    cold_slots_follow_content: bool = True  # more slots when content alone ranks more new items
    # share of the new items content alone would rank in the top k that keep a slot (with
    # follow_content); the evaluation picks it on validation users with simulated new items
    cold_slots_content_frac: float = 1.0
    # which new items fill the slots (and, with follow_content, how many): "content" = cosine
    # with the profile, "recent" = cosine with the mean of the recent items (the last
    # reason_anchors, as content-only recommendation scores), "scorer" = the ranker's scores,
    # "picks" = half "recent", half cosine with the mean of the ranker's top cold_picks_anchor
    # warm picks (new items like those the ranker, co-visitation included, expects next)
    cold_rank_by: str = "content"
    cold_picks_anchor: int = 10
    # "prior" = recent cosine + cold_prior_weight · the scorer's item prior (predicted log
    # visits from content); new_top_n > 0 adds that many new items (created within
    # cold_item_max_age_s) to each pool, found by one query with vector recent + weight · w
    cold_prior_weight: float = 1.0
    new_top_n: int = 25
    trending_half_life_s: float = 24 * 3600.0
    reason_anchors: int = 5
    # co-visitation channel and the popular channel (merged with content recall)
    covisit_top_n: int = 50
    covisit_window: int = 20  # online: pairs with at most this many of the user's recent items
    covisit_recency: float = 0.8  # weight of the t-th most recent item: recency^t
    covisit_max_pairs: int = 200_000  # online pairs kept per partition
    covisit_row_cap: int = 16  # online neighbours kept per item (bounds per-user scoring work)
    # what one online pair counts for: 0 = the snapshot's measured online_pair_scale (1 without
    # a snapshot or with one that has none); any other value replaces it (1 = once)
    covisit_online_pair_scale: float = 0.0
    popular_top_n: int = 25
    # the list after its head (tail_head_frac of it, rounded) is ordered by (1 − w)·the scorer's
    # relevance + w·co-visitation (ranking.diversity.head_then_tail); w = tail_covisit_weight,
    # 0 = the scorer's order throughout
    tail_covisit_weight: float = 0.0
    tail_head_frac: float = 0.75
    # a new item fills a new-item slot in at most this share of the last cold_exposure_window
    # lists (ranking.exposure); 1 = no cap
    cold_exposure_max_share: float = 1.0
    cold_exposure_window: int = 100


@dataclass(frozen=True)
class Interaction:
    """A validated behavior event plus where it came from (partition/offset) and when it arrived."""

    event_id: str
    user_id: str
    type: str
    ts: float
    item_id: str | None = None
    text: str | None = None
    rating: float | None = None
    partition: int | None = None
    offset: int | None = None
    arrival: float = field(default_factory=time.time)

    @property
    def signal_text(self) -> str | None:
        if self.type in TEXT_TYPES and self.text and self.text.strip():
            return self.text
        return None


@dataclass(frozen=True)
class Rejected:
    interaction: Interaction
    reason: str
    message: str


@dataclass(frozen=True)
class Skipped:
    """An event not applied because its profile holds it already: ``replayed_offset`` (a
    redelivery: its offset is at or below the last one applied from its partition) or
    ``duplicate_event`` (a new record repeating an applied event id, or an earlier one of the
    same batch); or because another worker took its user over while the batch ran:
    ``owner_changed`` (see ``BehaviorEngine._moved_away``)."""

    interaction: Interaction
    reason: str


@dataclass(frozen=True)
class RecItem:
    item_id: str
    score: float
    source: str
    reasons: list[str]


@dataclass
class UserRecs:
    user_id: str
    trigger: Interaction
    profile_events: int
    items: list[RecItem]
    ranker: str  # the version of the scorer that ranked ``items``


# what a stored profile says about who applied what: the log its offsets count in and the
# last offset applied from each partition ("", {} for no profile). A worker that applied events
# of a partition moved that partition's offset; a write of events from another partition (a
# user's events keyed otherwise, on two workers) does not count as the partition moving.
# The offsets are the payload's own mapping, not a copy: a mark is taken for every user of
# every batch, and nothing changes a payload once read or written (profiles copy it).
ProfileMark = tuple[str, Mapping[str, int]]
NO_PROFILE: ProfileMark = ("", {})


def profile_mark(payload: Mapping[str, Any]) -> ProfileMark:
    return str(payload.get("offsets_log", "")), payload.get("offsets") or {}


def _moved_on(before: ProfileMark, now: ProfileMark, partitions: Iterable[str]) -> bool:
    """Did a write between the two marks apply events of ``partitions``?"""
    if before[0] and now[0] and before[0] != now[0]:
        return True
    return any(before[1].get(p) != now[1].get(p) for p in partitions)


@dataclass
class Prepared:
    """State gathered by :meth:`BehaviorEngine.prepare`: what ``apply`` needs, nothing more."""

    to_apply: list[Interaction]
    rejected: list[Rejected]
    skipped: list[Skipped]
    profiles: dict[str, Profile]
    items: dict[str, StoredPoint]
    texts: list[tuple[str, str]]  # (event type, text) to encode, in event order
    channels: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # (id, source)
    # the co-visitation view the channels were read from; ``recommend`` reuses its memoized
    # scores (this batch's own pairs count from the next batch on)
    covisit: CovisitIndex | None = None
    # with ``hold_unknown``: every event of the users with an event naming an unknown item
    held: list[Interaction] = field(default_factory=list)
    # users whose events in the batch were all replays (offsets their profile has applied):
    # the last replayed event, which triggers their list again (see ``prepare``)
    relist: dict[str, Interaction] = field(default_factory=dict)
    # replays of events this engine wrote in a step that failed at or after the write (a write
    # that landed but raised, a store call of ``recommend``): applied then, reported as applied
    # now (the failed step reported none), and counted now if that step never got to
    written: list[Interaction] = field(default_factory=list)
    # what each user's stored profile was when the batch first read it, and the worker's
    # ownership count when the batch began (see BehaviorEngine.ownership)
    read_marks: dict[str, ProfileMark] = field(default_factory=dict)
    ownership: int = 0

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(i.user_id for i in self.to_apply))


@dataclass
class BatchOutcome:
    recommendations: list[UserRecs]
    rejected: list[Rejected]
    skipped: list[Skipped]
    applied: int
    held: list[Interaction] = field(default_factory=list)  # see Prepared.held


class BehaviorEngine:
    def __init__(
        self,
        store: VectorStore,
        cfg: EngineConfig,
        scorer: Scorer,
        *,
        covisit: CovisitModel | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.scorer = scorer
        # "now" for item ages and the new-item window: the wall clock in the stream; a replay
        # pins it, so its lists do not depend on how long the run has taken
        self.clock = clock
        self.trending: dict[int, TrendingCounter] = {}
        self.covisit_base = self._scaled(covisit)
        self.covisit: dict[int, CovisitCounter] = {}
        self.item_ids = ItemIds()  # shared by the online counters and every index
        # the log the events' offsets count in (the worker sets the events topic's id): a
        # profile's applied offsets from another log are dropped, not taken for replays
        self.offsets_log = ""
        self._covisit_rows = RowCache()
        self._dirty: set[int] = set()
        # partitions given up at a revocation: a batch of theirs applied after it (one that
        # waited on the encoder or a store outage meanwhile) must not count into a fresh
        # counter, which the next save would write over the new owner's counts
        self._revoked: set[int] = set()
        # (user, event id) of a step's profile write while its lists are not made yet (see
        # Prepared.written): a retry of that step reports them as applied, not replayed; and
        # those whose trending and co-visitation counts are not in yet, with the recent items
        # before them (None: not a visit that pairs). Both are dropped when a new batch starts
        # (begin_batch): a redelivery after that is a replay like any other
        self._unlisted: set[tuple[str, str]] = set()
        self._uncounted: dict[tuple[str, str], tuple[Interaction, list[str] | None]] = {}
        self.exposure = NewItemExposure(cfg.cold_exposure_max_share, cfg.cold_exposure_window)
        # a count that moves whenever this worker's partitions may be moving (the stream sets
        # it to Faust's rebalance count). A batch that saw it move since it began reads the
        # profiles again before its write, and leaves the users another worker wrote since
        # the batch first read them to that worker (``_moved_away``). Both are kept from the
        # batch's start (``begin_batch``) through its retries and its second pass after an
        # unknown-item wait: each of those reads again, and would take a newer owner's write
        # for the base
        self.ownership: Callable[[], int] = lambda: 0
        self._batch_ownership: int | None = None  # None: no batch begun (callers outside the
        self._batch_marks: dict[str, ProfileMark] = {}  # stream): each prepare is its own
        # what this batch's own profile writes leave in the store: a retry finds either that
        # (the write landed) or the first read (it did not); anything else is another writer's
        self._our_marks: dict[str, ProfileMark] = {}

    def begin_batch(self) -> None:
        """A new batch starts: what failed steps of the last one left (see ``_unlisted``) is
        dropped, a redelivery of their events is a replay; the ownership count and the
        profiles' marks are taken afresh (see ``ownership``)."""
        self._unlisted.clear()
        self._uncounted.clear()
        self._batch_ownership = self.ownership()
        self._batch_marks.clear()
        self._our_marks.clear()

    # -- hot swaps (one attribute write each). The worker makes them on the thread that runs
    # ``prepare`` and ``apply``, so a batch is ranked by one scorer and one snapshot throughout.
    def swap_scorer(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def swap_covisit(self, model: CovisitModel | None) -> None:
        """Take a new learned snapshot; the online counts it holds already go
        (``_drop_counted``)."""
        self.covisit_base = self._scaled(model)
        self._drop_counted(list(self.covisit))

    def _drop_counted(self, partitions: Sequence[int]) -> None:
        """Drop the online counts of ``partitions`` that the snapshot in service counted too.

        A retraining cycle trains on a log the worker has been counting since its start; kept,
        those visits and pairs would count twice (online pairs ``online_pair_scale`` times
        over) for as long as the counts live, and they are persisted. The snapshot names the
        time of the latest event it counted (``counted_until``); a counter whose first event
        is not later than that is replaced by an empty one (saved at the next persist, so a
        restart does not bring it back). Its events after that time are lost to co-visitation
        (they are in neither); that is the time between the log's export and the new
        snapshot's arrival. Counts a counter cannot date (saved before session 22) go too.
        While a dated snapshot is in service, events up to its date are not counted online
        (``_covisit``): a backlog behind the export is in the snapshot already.
        """
        until = self._counted_until
        if until is None:
            return
        for part in partitions:
            counter = self.covisit.get(part)
            if counter is None or counter.empty:
                continue
            if counter.since_ts is not None and counter.since_ts > until:
                continue
            log.info(
                "partition %d: online co-visitation counts of events from %s to %s dropped: the "
                "snapshot in service counted events up to %s",
                part,
                _when(counter.since_ts),
                _when(counter.until_ts),
                _when(until),
            )
            self.covisit[part] = CovisitCounter(
                self.cfg.covisit_max_pairs, self.cfg.covisit_row_cap, self.item_ids
            )
            self._dirty.add(part)

    @property
    def _counted_until(self) -> float | None:
        """The date of the snapshot in service (see ``_drop_counted``), if it has one."""
        return self.covisit_base.counted_until if self.covisit_base is not None else None

    def _scaled(self, model: CovisitModel | None) -> CovisitModel | None:
        """``model`` with ``cfg.covisit_online_pair_scale`` in place of its own, when set."""
        scale = self.cfg.covisit_online_pair_scale
        if model is None or scale <= 0 or scale == model.online_pair_scale:
            return model
        return model.with_online_pair_scale(scale)

    def covisit_index(self) -> CovisitIndex:
        return CovisitIndex(
            self.covisit_base,
            self.covisit.values(),
            self.cfg.covisit_recency,
            self.item_ids,
            self._covisit_rows,
        )

    def observe(self, events: Iterable[Interaction]) -> int:
        """Count interactions into trending without touching profiles (warm start from a log).

        Co-visitation pairs need each user's history, so a log warms them through a learned
        snapshot (:meth:`CovisitModel.build`) instead. Returns how many events were counted.
        """
        n = 0
        for e in events:
            if e.item_id is not None:
                self._count(e)
                n += 1
        return n

    # -- step 1: reads ----------------------------------------------------------------------
    def prepare(self, events: Sequence[Interaction], *, hold_unknown: bool = False) -> Prepared:
        """The batch's reads. An event naming an item the store lacks is rejected
        (``unknown_item``), or with ``hold_unknown`` held back with all of its user's events
        of the batch (``Prepared.held``): the caller may wait for the item and prepare them
        again. A user's events stay together and in order, so a held event is never behind an
        applied offset, and the user still gets one list for the batch."""
        user_ids = list(dict.fromkeys(e.user_id for e in events))
        # before the read: a move after it is caught at the write
        ownership = self._batch_ownership
        if ownership is None:
            ownership = self.ownership()
        stored = self.store.retrieve(self.cfg.users_collection, user_ids, with_vectors=True)
        read_marks = {
            uid: profile_mark(p.payload) if (p := stored.get(uid)) else NO_PROFILE
            for uid in user_ids
        }
        if self._batch_ownership is not None:  # the batch's first read of each user counts
            read_marks = {
                uid: self._batch_marks.setdefault(uid, m) for uid, m in read_marks.items()
            }
        profiles = {
            uid: Profile.from_payload(uid, p.vector, p.payload) for uid, p in stored.items()
        }
        for uid in user_ids:
            profiles.setdefault(uid, Profile(uid)).count_offsets_in(self.offsets_log)
        wanted: dict[str, None] = {}
        for e in events:
            if e.item_id is not None:
                wanted[e.item_id] = None
        for uid in user_ids:
            for item_id in profiles[uid].recent_items[-self.cfg.reason_anchors :]:
                wanted[item_id] = None
        # co-visited and popular candidates are fetched in this same read: the channels are
        # computed from the stored recent items plus this batch's items not applied yet (ids
        # only; a replayed item is in the stored ones already)
        index = self.covisit_index()
        applied = [
            profiles[e.user_id].already_applied(e.event_id, e.partition, e.offset) for e in events
        ]
        fresh = [e for e, done in zip(events, applied, strict=True) if not done]
        channels = self._channels(fresh, profiles, index)
        for chan in channels.values():
            for item_id, _ in chan:
                wanted[item_id] = None
        items = self.store.retrieve(self.cfg.items_collection, list(wanted), with_vectors=True)
        to_apply: list[Interaction] = []
        rejected: list[Rejected] = []
        skipped: list[Skipped] = []
        # (user, event id) applied or rejected in this batch: a repeat is per user, as the
        # profile's event ids are (two users' events sharing an id are both applied)
        seen_in_batch: set[tuple[str, str]] = set()
        held: list[Interaction] = []
        written: list[Interaction] = []
        replayed: dict[str, Interaction] = {}
        held_users = (
            {e.user_id for e in fresh if e.item_id is not None and e.item_id not in items}
            if hold_unknown
            else set()
        )
        for e, done in zip(events, applied, strict=True):
            if e.user_id in held_users:
                held.append(e)
                continue
            profile = profiles[e.user_id]
            key = (e.user_id, e.event_id)
            if done or key in seen_in_batch:
                if (
                    e.item_id is not None
                    and e.item_id not in items
                    and key not in seen_in_batch
                    and e.event_id not in profile.event_ids
                ):
                    # a replay of an event rejected the first time (an applied event's item
                    # exists: items are retired, never deleted): its dead letter goes out again
                    seen_in_batch.add(key)
                    rejected.append(Rejected(e, "unknown_item", f"unknown item_id {e.item_id!r}"))
                    continue
                if done and key in self._unlisted and key not in seen_in_batch:
                    seen_in_batch.add(key)  # a repeat of it in this batch is a duplicate
                    written.append(e)
                    replayed[e.user_id] = e
                    continue
                if profile.replays(e.partition, e.offset):
                    skipped.append(Skipped(e, "replayed_offset"))
                    replayed[e.user_id] = e
                else:
                    skipped.append(Skipped(e, "duplicate_event"))
                continue
            seen_in_batch.add(key)
            if e.item_id is not None and e.item_id not in items:
                rejected.append(Rejected(e, "unknown_item", f"unknown item_id {e.item_id!r}"))
                continue
            to_apply.append(e)
        texts = [(e.type, t) for e in to_apply if (t := e.signal_text) is not None]
        # A replay means the process that applied these events may have died before their
        # lists reached the broker (the profile write comes first), or a store call after the
        # write failed and the batch is being retried: the stored profile is listed again, so
        # each such user gets a list at least once, triggered by their last replayed event
        # (consumers drop repeats by trigger_event_id; an earlier trigger's list is not redone)
        applied_users = {e.user_id for e in to_apply}
        relist = {u: e for u, e in replayed.items() if u not in applied_users}
        return Prepared(
            to_apply,
            rejected,
            skipped,
            profiles,
            items,
            texts,
            channels,
            index,
            held=held,
            relist=relist,
            written=written,
            read_marks=read_marks,
            ownership=ownership,
        )

    def _channels(
        self, events: Sequence[Interaction], profiles: Mapping[str, Profile], index: CovisitIndex
    ) -> dict[str, list[tuple[str, str]]]:
        cfg = self.cfg
        if cfg.covisit_top_n <= 0 and cfg.popular_top_n <= 0:
            return {}
        batch_items: dict[str, list[str]] = {}  # every item the batch names: seen, excluded
        # the recent items as ``apply_signal`` will leave them (the windows ``recommend``
        # scores again, from the memo), on copies: the profiles are applied later
        recent: dict[str, list[str]] = {}
        for e in events:
            if e.item_id is None:
                continue
            batch_items.setdefault(e.user_id, []).append(e.item_id)
            mine = recent.get(e.user_id)
            if mine is None:
                mine = recent[e.user_id] = list(profiles[e.user_id].recent_items)
            update_recent(mine, e.item_id, event_weight(cfg.profile, e.type, e.rating), cfg.profile)
        popular = [(i, "trending") for i in index.popular(cfg.popular_top_n)]
        windows = {
            uid: recent.get(uid, profile.recent_items)[-cfg.covisit_window :]
            for uid, profile in profiles.items()
        }
        index.prime(windows.values())  # every user's scores in one pass (the pools read them too)
        out: dict[str, list[tuple[str, str]]] = {}
        for uid, profile in profiles.items():
            seen = set(profile.seen).union(batch_items.get(uid, ()))
            top = index.top(windows[uid], cfg.covisit_top_n, exclude=seen)
            out[uid] = [(i, "covisit") for i in top] + popular
        return out

    # -- step 2: profile updates, write, recall, rank ----------------------------------------
    def apply(self, prep: Prepared, text_vectors: np.ndarray | None) -> BatchOutcome:
        if prep.texts and (text_vectors is None or len(text_vectors) != len(prep.texts)):
            raise ValueError("apply() needs one vector per text returned by prepare()")
        text_iter = iter(text_vectors if text_vectors is not None else ())
        last_event: dict[str, Interaction] = {}
        visits: list[tuple[Interaction, list[str]]] = []  # (event, recent items before it)
        for e in prep.to_apply:
            profile = prep.profiles[e.user_id]
            if e.item_id is not None and event_weight(self.cfg.profile, e.type, e.rating) > 0:
                visits.append((e, profile.recent_items[-self.cfg.covisit_window :]))
            item = prep.items.get(e.item_id) if e.item_id is not None else None
            text = e.signal_text
            vector = next(text_iter) if text is not None else None
            if vector is None and item is not None:
                vector = item.vector
            elif vector is not None and item is not None and item.vector is not None:
                vector = 0.5 * (vector + item.vector)  # a review says something about both
            apply_signal(
                profile,
                Signal(
                    event_id=e.event_id,
                    event_type=e.type,
                    ts=e.ts,
                    vector=vector,
                    item_id=e.item_id,
                    category=_category(item),
                    rating=e.rating,
                    text=text,
                    partition=e.partition,
                    offset=e.offset,
                ),
                self.cfg.profile,
            )
            last_event[e.user_id] = e
        to_apply, skipped, rejected = prep.to_apply, prep.skipped, prep.rejected
        moved = self._moved_away(prep)
        if moved:  # left to the new owner, which also dead-letters their unknown items
            to_apply = [e for e in prep.to_apply if e.user_id not in moved]
            rejected = [r for r in prep.rejected if r.interaction.user_id not in moved]
            skipped = skipped + [
                Skipped(e, "owner_changed")
                for e in (*prep.to_apply, *(r.interaction for r in prep.rejected))
                if e.user_id in moved
            ]
            visits = [(e, recent) for e, recent in visits if e.user_id not in moved]
            for uid in moved:
                last_event.pop(uid, None)
        users = list(last_event)
        if self._batch_ownership is not None:  # what a retry finds if this write lands
            for uid in users:
                written_by_us = prep.profiles[uid]  # its offsets are the payload's below
                self._our_marks[uid] = (written_by_us.offsets_log, written_by_us.offsets)
        # from here the events may be written (a write can land and still raise, a client's
        # timeout): a retry finds them applied and reports them (Prepared.written), and counts
        # them in trending and co-visitation if this step never got to
        keys = {(e.user_id, e.event_id) for e in (*to_apply, *prep.written)}
        self._unlisted |= keys
        recent_of = {id(e): recent for e, recent in visits}
        for e in to_apply:
            if e.item_id is not None:
                self._uncounted[(e.user_id, e.event_id)] = (e, recent_of.get(id(e)))
        self.store.upsert(
            self.cfg.users_collection,
            [
                StoredPoint(uid, prep.profiles[uid].vector, prep.profiles[uid].to_payload())
                for uid in users
            ],
        )
        # after the write: a retried batch must not count twice. Events of an earlier step
        # whose write landed but raised are counted now
        counted = [
            self._uncounted.pop((e.user_id, e.event_id))
            for e in (*prep.written, *to_apply)
            if (e.user_id, e.event_id) in self._uncounted
        ]
        for e, _ in counted:
            self._count(e)
        triggers = {**last_event, **prep.relist}  # relist: users with no event applied here
        ranker = self.scorer.version
        try:
            recs = self.recommend(
                [prep.profiles[u] for u in triggers], prep.items, prep.channels, prep.covisit
            )
            self._unlisted -= keys
        finally:
            # after recommend: the step's index must see fixed counts. Also when it fails: the
            # profiles are written, so a retry skips these events and would never count them
            for e, recent in counted:
                if recent is not None:
                    self._covisit(e, recent)
        out = [
            UserRecs(uid, trigger, prep.profiles[uid].event_count, recs[uid], ranker)
            for uid, trigger in triggers.items()
        ]
        applied = len(to_apply) + len(prep.written)
        return BatchOutcome(out, rejected, skipped, applied, prep.held)

    def _moved_away(self, prep: Prepared) -> set[str]:
        """The users with events to apply (or to dead-letter) in ``prep`` whose stored profile
        another writer moved, for a partition of those events, since the batch first read it;
        asked only when this worker's partitions may have moved since the batch began (else
        none, and no read).

        A batch can outlive its partitions: Faust waits for it before giving them up, but a
        member dropped from the group (a batch past the rebalance timeout, or the embedded
        broker forming a generation without it) learns so only at its next heartbeat, and the
        new owner starts from the last commit, which is before this batch. Writing these
        users would put back profiles older than the new owner's, and its offset guard would
        then skip what it applied. Their events are skipped here (``owner_changed``): the new
        owner applies them. This narrows the race to the time between this read and the
        write; closing it would take a conditional write, which Qdrant does not offer.
        """
        if self.ownership() == prep.ownership:
            return set()
        partitions: dict[str, set[str]] = {}
        for e in (*prep.to_apply, *(r.interaction for r in prep.rejected)):
            partitions.setdefault(e.user_id, set()).add(str(e.partition))
        users = list(partitions)
        if not users:
            return set()
        now = self.store.retrieve(self.cfg.users_collection, users, with_vectors=False)
        moved: set[str] = set()
        for uid in users:
            stored = profile_mark(p.payload) if (p := now.get(uid)) else NO_PROFILE
            if not _moved_on(prep.read_marks.get(uid, NO_PROFILE), stored, partitions[uid]):
                continue  # as the batch first read it: no write since, or ours failed
            ours = self._our_marks.get(uid)
            if ours is not None and not _moved_on(ours, stored, partitions[uid]):
                continue  # this batch's own earlier write, which landed
            moved.add(uid)
        if moved:
            log.warning(
                "%d of the batch's %d users were written by another worker since the batch "
                "read them (its partitions moved in a rebalance): their events are left to it",
                len(moved),
                len(users),
            )
        return moved

    # -- recall → score → diversify → explain ------------------------------------------------
    def recommend(
        self,
        profiles: Sequence[Profile],
        known_items: Mapping[str, StoredPoint],
        channels: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        covisit: CovisitIndex | None = None,
    ) -> dict[str, list[RecItem]]:
        """Lists for ``profiles``; ``channels`` are the co-visited/popular candidates per user
        whose points ``known_items`` holds (from :meth:`prepare`; without them, content only)."""
        cfg = self.cfg
        popularity = MergedTrending(self.trending.values())
        index = covisit if covisit is not None else self.covisit_index()
        with_vec = [p for p in profiles if p.vector is not None]
        queries = [
            Query(
                vector=p.vector,  # type: ignore[arg-type]
                limit=cfg.recall_top_n,
                exclude_ids=p.seen,
                where={"active": True},
                with_vectors=True,
            )
            for p in with_vec
        ]
        out: dict[str, list[RecItem]] = {}
        now = self.clock()
        channels = channels or {}
        # the mean of each user's recent items: the new-item query and the slot order share it
        recent_vecs = {p.user_id: self._recent_vector(p, known_items) for p in with_vec}
        new_queries = self._new_item_queries(with_vec, recent_vecs, now)
        # one store call for both: the embedded store holds the GIL for a whole call while its
        # search threads work, so each call is a wait nothing else in the worker can use
        found = self.store.search(cfg.items_collection, queries + new_queries) if queries else []
        results, new_hits = found[: len(queries)], found[len(queries) :]
        if new_hits:
            known_items = {
                **known_items,
                **{
                    h.id: StoredPoint(h.id, h.vector, payload_copy(h.payload))
                    for hs in new_hits
                    for h in hs
                },
            }
        extras: list[list[tuple[str, str]]] = []
        for n, profile in enumerate(with_vec):
            chans = list(channels.get(profile.user_id, ()))
            if new_hits:
                # a content query (the `recommendations` contract knows content, covisit
                # and trending as sources)
                chans += [(h.id, "content") for h in new_hits[n]]
            extras.append(chans)
        table = PoolTable(_dim(with_vec), known_items, popularity, index)
        for hits in results:
            table.add_hits(hits)
        for chans in extras:
            table.add_extras(chans)
        table.freeze()
        # the pools' co-visitation features: windows after this batch's events, which
        # ``prepare``'s channels mostly scored already (the rest in one pass)
        index.prime(p.recent_items[-cfg.covisit_window :] for p in with_vec)
        pools: list[tuple[Profile, Candidates]] = []
        trending_only = [p for p in profiles if p.vector is None]
        for profile, hits, chans in zip(with_vec, results, extras, strict=True):
            cands = table.pool(profile, hits, chans, now, cfg)
            if cands is None:
                trending_only.append(profile)
            else:
                pools.append((profile, cands))
        users = [p.vector for p, _ in pools if p.vector is not None]  # all of them: with_vec
        scores = score_all(
            self.scorer, users, [c for _, c in pools], [p.categories for p, _ in pools]
        )
        diversified = self._diversify([c for _, c in pools], scores)
        for (profile, cands), score, picks in zip(pools, scores, diversified, strict=True):
            recent_vec = recent_vecs[profile.user_id]
            recent = (
                cands.cosine
                if recent_vec is None
                else (cands.vectors @ recent_vec).astype(np.float32)
            )
            out[profile.user_id] = self._rank(profile, cands, known_items, score, recent, picks)
        out.update(self._trending_lists(trending_only, popularity, known_items))
        return out

    def _new_item_queries(
        self,
        profiles: Sequence[Profile],
        recent_vecs: Mapping[str, np.ndarray | None],
        now: float,
    ) -> list[Query]:
        """Per profile, a query for the new items best by recent cosine + weight · prior."""
        cfg = self.cfg
        prior = getattr(self.scorer, "prior", None)
        if cfg.new_top_n <= 0 or prior is None or not profiles:
            return []
        return [
            Query(
                vector=_or(recent_vecs[p.user_id], p.vector) + cfg.cold_prior_weight * prior.weight,
                limit=cfg.new_top_n,
                exclude_ids=p.seen,
                where={"active": True},
                created_after=now - cfg.cold_item_max_age_s,
                with_vectors=True,
            )
            for p in profiles
        ]

    def _diversify(
        self, pools: Sequence[Candidates], scores: Sequence[np.ndarray]
    ) -> list[list[int]]:
        """Each pool's list before the new-item slots: MMR over its best rows, with the tail
        blend (:func:`head_then_tail_many`) where the pool has co-visitation evidence; all
        lists of the batch in two batched calls."""
        cfg = self.cfg
        picks: list[list[int]] = [[] for _ in pools]
        blended: list[tuple[int, np.ndarray, int, int]] = []  # (pool, tail order, k, head)
        plain: list[tuple[int, np.ndarray, int]] = []  # (pool, best rows, k)
        for n, (cands, score) in enumerate(zip(pools, scores, strict=True)):
            k = min(cfg.recs_count, len(cands.ids))
            head = math.floor(cfg.tail_head_frac * k + 0.5)
            tail = (
                covisit_tail(score, cands.covisit, cfg.tail_covisit_weight)
                if cfg.tail_covisit_weight > 0 and 0 < head < k and cands.covisit is not None
                else None
            )
            if tail is not None:
                blended.append((n, tail, k, head))
            else:
                # MMR over a pool a few times the list size: diversity needs alternatives
                plain.append((n, np.argsort(-score, kind="stable")[: 4 * k], k))
        if blended:
            lists = head_then_tail_many(
                [scores[n] for n, _, _, _ in blended],
                [tail for _, tail, _, _ in blended],
                [pools[n].vectors for n, _, _, _ in blended],
                [k for _, _, k, _ in blended],
                [head for _, _, _, head in blended],
                cfg.mmr_lambda,
            )
            for (n, _, _, _), chosen in zip(blended, lists, strict=True):
                picks[n] = chosen
        if plain:
            lists = mmr_many(
                [scores[n] for n, _, _ in plain],
                [pools[n].vectors for n, _, _ in plain],
                [k for _, _, k in plain],
                cfg.mmr_lambda,
                rows=[best for _, best, _ in plain],
            )
            for (n, best, _), chosen in zip(plain, lists, strict=True):
                picks[n] = [int(best[i]) for i in chosen]
        return picks

    def _rank(
        self,
        profile: Profile,
        cands: Candidates,
        known_items: Mapping[str, StoredPoint],
        scores: np.ndarray,
        recent: np.ndarray,
        picks: list[int],
    ) -> list[RecItem]:
        """``recent``: each candidate's cosine with the user's recent items (see
        _recent_cosine); ``picks``: the pool's diversified list (:meth:`_diversify`)."""
        cfg = self.cfg
        assert profile.vector is not None
        vectors = cands.vectors
        k = min(cfg.recs_count, len(cands.ids))
        slots = cfg.cold_item_slots
        key = self._cold_key(profile, cands, scores, known_items, picks, recent)
        if cfg.cold_slots_follow_content:
            # counted on content (the scorer's own top k holds what it already picked)
            count_key = key if cfg.cold_rank_by in ("content", "recent") else recent
            slots = _cold_slots(cands, k, slots, cfg.cold_slots_content_frac, count_key)
        if self.exposure.enabled:
            picks = _guarantee_cold(picks, cands, slots, key, self.exposure.capped)
            self.exposure.record(cands.ids[i] for i in picks if cands.is_cold[i])
        else:  # no per-candidate cap lookups on the hot path
            picks = _guarantee_cold(picks, cands, slots, key)
        anchors = self._anchors(profile, known_items)
        nearest = nearest_anchors(vectors[picks], anchors)
        out: list[RecItem] = []
        said: dict[tuple[int, str], list[str]] = {}  # a few anchors × channels per list
        for i, anchor in zip(picks, nearest, strict=True):
            source = cands.sources[i] if cands.sources else "content"
            reasons = said.get((id(anchor), source))
            if reasons is None:
                extra = {"covisit": _COVISIT_REASON} if source == "covisit" else None
                reasons = said[(id(anchor), source)] = explain(anchor, source=source, extra=extra)
            out.append(RecItem(cands.ids[i], float(scores[i]), source, list(reasons)))
        return out

    def _cold_key(
        self,
        profile: Profile,
        cands: Candidates,
        scores: np.ndarray,
        known_items: Mapping[str, StoredPoint],
        picks: Sequence[int] = (),
        recent: np.ndarray | None = None,
    ) -> np.ndarray:
        """What orders new items for their slots (see ``EngineConfig.cold_rank_by``).

        ``recent`` is :meth:`_recent_cosine` when the caller has it already.
        """
        how = self.cfg.cold_rank_by
        if how == "scorer":
            return np.asarray(scores, dtype=np.float32)
        if recent is None and how in ("prior", "recent", "picks"):
            recent = self._recent_cosine(profile, cands, known_items)
        if how == "prior":
            assert recent is not None
            prior = getattr(self.scorer, "prior", None)
            if prior is None:
                return recent
            return (recent + self.cfg.cold_prior_weight * prior(cands.vectors)).astype(np.float32)
        if how == "recent":
            assert recent is not None
            return recent
        if how == "picks":
            # half what the user did, half what the ranker (co-visitation included) expects
            # them to like next: new items similar to the ranked warm items
            assert recent is not None
            head = [i for i in picks if not cands.is_cold[i]][: self.cfg.cold_picks_anchor]
            if not head:
                return recent
            mean = cands.vectors[head].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if norm <= 0:
                return recent
            return (0.5 * recent + 0.5 * (cands.vectors @ (mean / norm))).astype(np.float32)
        return cands.cosine

    def _recent_cosine(
        self, profile: Profile, cands: Candidates, known_items: Mapping[str, StoredPoint]
    ) -> np.ndarray:
        """Cosine with the mean of the recent items' vectors (the profile cosine without any)."""
        mean = self._recent_vector(profile, known_items)
        if mean is None:
            return cands.cosine
        return (cands.vectors @ mean).astype(np.float32)

    def _recent_vector(
        self, profile: Profile, known_items: Mapping[str, StoredPoint]
    ) -> np.ndarray | None:
        """The normalized mean of the recent items' vectors (None when none is known)."""
        vecs = [
            point.vector
            for item_id in profile.recent_items[-self.cfg.reason_anchors :]
            if (point := known_items.get(item_id)) is not None and point.vector is not None
        ]
        if vecs:
            mean = np.mean(np.stack(vecs).astype(np.float32), axis=0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                return mean / norm
        return None

    def _trending_lists(
        self,
        profiles: Sequence[Profile],
        popularity: MergedTrending,
        known_items: Mapping[str, StoredPoint],
    ) -> dict[str, list[RecItem]]:
        """The trending lists of users without a pool (no vector yet, or nothing recalled).

        Trending counts events, not the catalog's state: a retired item keeps its count (and
        its later events still count), so each list asks for more than it needs and drops the
        retired ones, asking again with twice the room while retired items leave it short.
        """
        n = self.cfg.recs_count
        retired: dict[str, bool] = {}
        lists: dict[str, list[tuple[str, float]]] = {}
        pending, room = list(profiles), n
        while pending:
            room *= 2
            ranked = {p.user_id: popularity.top(room, exclude=p.seen) for p in pending}
            self._learn_retired({i for r in ranked.values() for i, _ in r}, known_items, retired)
            short = []
            for p in pending:
                kept = [(i, score) for i, score in ranked[p.user_id] if not retired[i]]
                if len(kept) >= n or len(ranked[p.user_id]) < room:  # enough, or all there is
                    lists[p.user_id] = kept[:n]
                else:
                    short.append(p)
            pending = short
        out: dict[str, list[RecItem]] = {}
        for user, kept in lists.items():
            top = max((score for _, score in kept), default=1.0) or 1.0
            out[user] = [RecItem(i, score / top, "trending", ["trending now"]) for i, score in kept]
        return out

    def _learn_retired(
        self, ids: set[str], known_items: Mapping[str, StoredPoint], retired: dict[str, bool]
    ) -> None:
        """Fill ``retired`` for ``ids``: the batch's points first, the store for the rest (an
        id the store does not hold is not known to be retired)."""
        todo = [i for i in ids if i not in retired]
        ask = [i for i in todo if i not in known_items]
        fetched = (
            self.store.retrieve(self.cfg.items_collection, ask, with_vectors=False) if ask else {}
        )
        for i in todo:
            point = known_items.get(i) or fetched.get(i)
            retired[i] = point is not None and point.payload.get("active") is False

    def _anchors(self, profile: Profile, known: Mapping[str, StoredPoint]) -> list[Anchor]:
        anchors: list[Anchor] = []
        for item_id in profile.recent_items[-self.cfg.reason_anchors :]:
            point = known.get(item_id)
            if point is not None and point.vector is not None:
                title = str(point.payload.get("title") or item_id)
                kind = profile.recent_types.get(item_id, "view")
                anchors.append(item_anchor(title, kind, point.vector))
        for t in profile.texts:
            anchors.append(
                text_anchor(str(t["text"]), str(t["type"]), np.asarray(t["vector"], np.float32))
            )
        return anchors

    # -- trending state ---------------------------------------------------------------------
    def _count(self, e: Interaction) -> None:
        part = e.partition if e.partition is not None else 0
        if part in self._revoked:
            return
        counter = self.trending.get(part)
        if counter is None:
            counter = self.trending[part] = TrendingCounter(self.cfg.trending_half_life_s)
        weight = event_weight(self.cfg.profile, e.type, e.rating)
        assert e.item_id is not None
        counter.add(e.item_id, e.ts, max(weight, 0.0))
        self._dirty.add(part)

    def _covisit(self, e: Interaction, recent: Sequence[str]) -> None:
        part = e.partition if e.partition is not None else 0
        if part in self._revoked:
            return
        until = self._counted_until
        if until is not None and e.ts <= until:
            return  # the snapshot counted it (see _drop_counted)
        counter = self.covisit.get(part)
        if counter is None:
            counter = self.covisit[part] = CovisitCounter(
                self.cfg.covisit_max_pairs, self.cfg.covisit_row_cap, self.item_ids
            )
        assert e.item_id is not None
        counter.add(recent, e.item_id, ts=e.ts)
        self._dirty.add(part)

    def load_trending(self, partitions: Iterable[int]) -> None:
        """Take over the trending and online co-visitation counts of ``partitions``."""
        parts = list(partitions)
        keys = [trending_key(p) for p in parts] + [covisit_key(p) for p in parts]
        stored = self.store.retrieve(self.cfg.state_collection, keys, with_vectors=False)
        self._revoked.difference_update(parts)  # once read: a failed read leaves them revoked
        for part in parts:
            # counts that cannot be read (another version's format, damage) are soft state:
            # the partition starts from none, logged, instead of failing every assignment
            point = stored.get(trending_key(part))
            if point is not None:
                try:
                    self.trending[part] = TrendingCounter.from_payload(
                        point.payload, self.cfg.trending_half_life_s
                    )
                except _UNREADABLE as exc:
                    log.error("partition %d: trending counts unreadable (%s); from none", part, exc)
            point = stored.get(covisit_key(part))
            if point is not None:
                try:
                    self.covisit[part] = CovisitCounter.from_payload(
                        point.payload,
                        self.cfg.covisit_max_pairs,
                        self.cfg.covisit_row_cap,
                        self.item_ids,
                    )
                except _UNREADABLE as exc:
                    log.error(
                        "partition %d: co-visitation counts unreadable (%s); from none", part, exc
                    )
        self._drop_counted(parts)

    def drop_trending(self, partitions: Iterable[int]) -> None:
        """Give up ``partitions``' counts (revoked); they count again once loaded."""
        for part in partitions:
            self._revoked.add(part)
            self.trending.pop(part, None)
            self.covisit.pop(part, None)
            self._dirty.discard(part)

    def persist_trending(self) -> int:
        """Write the partitions' counters changed since the last call; returns how many
        partitions were written (trending and co-visitation go in the same upsert)."""
        dirty = [p for p in self._dirty if p in self.trending or p in self.covisit]
        points: list[StoredPoint] = []
        one = np.ones(1, np.float32)
        for p in dirty:
            if p in self.trending:
                points.append(StoredPoint(trending_key(p), one, self.trending[p].to_payload()))
            if p in self.covisit:
                points.append(StoredPoint(covisit_key(p), one, self.covisit[p].to_payload()))
        if points:
            self.store.upsert(self.cfg.state_collection, points)
        self._dirty.clear()
        return len(dirty)


# what stored counts of another version or a damaged payload raise when read
_UNREADABLE = (ValueError, TypeError, KeyError, AttributeError)


def _when(ts: float | None) -> str:
    if ts is None:
        return "(unknown)"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def trending_key(partition: int) -> str:
    """The state-collection point holding one input partition's trending counts."""
    return f"trending/{partition}"


def covisit_key(partition: int) -> str:
    """The state-collection point holding one input partition's online co-visitation counts."""
    return f"covisit/{partition}"


_COVISIT_REASON = "often chosen by people who chose the same items"


def _dim(profiles: Sequence[Profile]) -> int:
    return len(profiles[0].vector) if profiles and profiles[0].vector is not None else 0


def _or(vector: np.ndarray | None, fallback: np.ndarray | None) -> np.ndarray:
    out = vector if vector is not None else fallback
    assert out is not None
    return np.asarray(out, dtype=np.float32)


def _category(item: StoredPoint | None) -> str | None:
    if item is None:
        return None
    value = item.payload.get("category")
    return str(value) if value else None


def _cold_slots(
    cands: Candidates, k: int, minimum: int, frac: float = 1.0, key: np.ndarray | None = None
) -> int:
    """``minimum`` slots for new items, or ``frac`` of those content alone would give them.

    Content alone ranks the pool by ``key`` (default: cosine); with ``frac`` = 1 the hybrid never
    shows fewer new items than content-only recommendation would (rounded half up; ``minimum``
    <= 0 disables the slots).
    """
    if minimum <= 0:
        return 0
    order = cands.cosine if key is None else np.asarray(key)
    top = np.argsort(-order, kind="stable")[:k]
    return max(minimum, math.floor(frac * int(cands.is_cold[top].sum()) + 0.5))


def _guarantee_cold(
    picks: list[int],
    cands: Candidates,
    slots: int,
    order: np.ndarray | None = None,
    capped: Callable[[str], bool] | None = None,
) -> list[int]:
    """Make at least ``slots`` of the list cold items, the best by ``order`` (default: cosine)
    that are not ``capped`` (ranking.exposure: shown in their share of the recent lists).

    A popularity prior ranks never-interacted items last; measured on MovieLens that drove
    new-item recall to 0. Cold items replace the tail of the list, so the head keeps its order.
    """
    have = sum(1 for i in picks if cands.is_cold[i])
    if have >= slots:
        return picks
    chosen = set(picks)
    key = cands.cosine if order is None else order
    by_content = np.argsort(-np.asarray(key), kind="stable")
    extra = [int(i) for i in by_content if cands.is_cold[i] and int(i) not in chosen]
    if capped is not None:  # capped items last: the slots stay filled when all are capped
        extra.sort(key=lambda i: capped(cands.ids[i]))  # stable: each group keeps its order
    extra = extra[: slots - have]
    if not extra:
        return picks
    keep = list(picks)
    for cold in extra:  # the lowest warm pick makes room; the list never grows
        warm = [pos for pos, i in enumerate(keep) if not cands.is_cold[i]]
        if not warm:
            break
        del keep[warm[-1]]
        keep.append(cold)
    return keep
