"""Cold-start replay evaluation (DESIGN.md, "Evaluation protocol") through the stream's own engine.

Per seed: draw the split (:func:`ranking.split.make_split`); train the ranker and the
co-visitation snapshot on the training users only (:func:`ranking.training.train`, early-stopped on
a validation slice of those training users); load every catalog item into a fresh vector store
(cold items included: they arrive as item events, with vectors but no interactions); warm the
engine's trending counts from the training log; then, for each k, replay every test user's first k
interactions as events through :meth:`BehaviorEngine.prepare` / :meth:`BehaviorEngine.apply` —
the calls the behavior agent makes — and score the lists it emits. Baselines run on the same split
and the same revealed events. Nothing here looks at a test user's targets except the scoring.

Choices are made per seed on validation users (training users kept out of the fit), never on test
users: MMR's λ and the new-item slot policy (:func:`choose_cold_policy`: slot count, order, and
the item prior's weight). For the latter a share of the warm training items is held out of the
fit as simulated new items, so the validation users' later interactions include new items, as
the test users' do; the real held-out items are retired while validating, so that, as at test
time, the only new items are ones a user can go on to touch. A policy is replayed with all the
simulated new items and with random halves of them (:func:`new_item_draws`), and must clear
content-only's new-item recall on every one: which items happen to be new moves that recall a
lot. The baselines are scored on the validation users too (``val_baselines`` in the result),
the bar the choices are judged against.

Two paths replay the test users (the result's ``path``): in process (the default), or through a
:class:`StreamReplay` that the caller supplies (``coldstream eval --via-kafka``: the broker and a
real worker, ``streams/eval_kafka.py``). The second gets, per k and engine method, everything the
in-process replay used (:class:`StreamRun`); its lists are the ones scored, and the in-process
lists of the same run are kept beside them (``via_kafka`` per seed) so that the two paths can be
compared user by user. Choices on validation users are made in process either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from ranking.baselines import (
    ContentRecommender,
    ItemKNNRecommender,
    PopularityRecommender,
    RandomRecommender,
    Recommender,
    recommend_all,
)
from ranking.catalog import CatalogItem, item_points
from ranking.covisit import CovisitModel
from ranking.datasets import Dataset
from ranking.engine import BehaviorEngine, EngineConfig, Interaction
from ranking.metrics import evaluate_lists, per_user_metrics, per_user_quality
from ranking.profile import event_weight
from ranking.scoring import BlendScorer, Scorer
from ranking.split import ColdItemsBy, Split, latest_items, make_split, reveal_groups
from ranking.split import Interaction as Revealed
from ranking.store import VectorStore
from ranking.training import (
    ItemTable,
    TrainConfig,
    build_covisit,
    train,
    user_sequences,
)
from ranking.trending import TrendingCounter

log = logging.getLogger(__name__)

METRICS = ("recall", "ndcg", "hit_rate", "coverage", "cold_recall")
# how concentrated new-item exposure is (summary and the lines under the printed table; see
# ranking.metrics.evaluate_lists)
EXPOSURE = ("cold_distinct", "cold_top_share")
FULL = "full"  # the system: learned ranker + co-visitation + cold slots, through the engine
BLEND = "engine-blend"  # the engine before the ranker: cosine + popularity prior, no snapshot
BASELINES = ("random", "popularity", "item-knn", "content")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (1, 3, 5)
    seeds: tuple[int, ...] = (0,)
    test_users_frac: float = 0.2
    cold_items_frac: float = 0.1
    # "random" draws the new items from the catalog; "time" holds out the latest to appear (and
    # validation simulates new items the same way: the latest warm items of the training log)
    cold_items_by: ColdItemsBy = "random"
    n: int = 20  # list length asked of every method, and the @k of the metrics
    # revealed events per engine batch, in event-time order (0 = all as one batch): a user's
    # list sees the trending counts and online co-visitation pairs of earlier batches, as in
    # the stream, where another user's earlier event has been applied before this one's
    replay_batch: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    # MMR λ candidates picked on validation users (training users held out of the fit), never
    # on test users; the configured λ is always a candidate
    mmr_lambdas: tuple[float, ...] = (1.0,)
    val_users_frac: float = 0.15
    # new-item slot policies tried on the validation users, with a share of the training items
    # held out of the fit as simulated new items (cold_items_frac of the warm items):
    # (minimum slots, share of content's new items kept, "content" | "scorer" order)
    # (m, 0, how) = exactly m slots; "prior" orders new items by recent cosine + the ranker's
    # content prior (predicted popularity), the others as EngineConfig.cold_rank_by says
    # "prior:β" sets the prior's weight β against the cosine (EngineConfig.cold_prior_weight)
    cold_policies: tuple[tuple[int, float, str], ...] = (
        *((m, 0.0, f"prior:{beta:g}") for m in (1, 2, 3) for beta in (0.25, 0.5, 1.0)),
        *((1, frac, f"prior:{beta:g}") for frac in (0.5, 1.0) for beta in (0.5, 1.0)),
        (1, 1.0, "recent"),
        (0, 0.0, "scorer"),  # no slots: the ranker alone (infeasible unless it ranks new items)
    )
    # Which items happen to be new decides much of a policy's new-item recall: a policy that
    # shows everyone the one new item the prior likes best wins or loses on that item alone.
    # So each policy is also judged on new_item_draws random subsets (new_item_draw_frac of the
    # simulated new items each; the rest retired), and must clear content-only's new-item
    # recall on every draw and k to qualify; quality is averaged over the draws.
    new_item_draws: int = 3
    new_item_draw_frac: float = 0.5
    # Among the qualifying policies, those whose Recall+NDCG is within this many standard errors
    # of the best one's (paired over validation users) are taken as tied, and of those the one
    # with the largest worst-case new-item margin over content-only wins (the one-standard-error
    # rule). 0 = the best Recall+NDCG alone, the rule until 2026-11-27.
    cold_policy_noise_se: float = 1.0


Encode = Callable[[Sequence[str]], np.ndarray]
StoreFactory = Callable[[Path], VectorStore]


def simulated_new_items(split: Split, cfg: EvalConfig, rng: np.random.Generator) -> set[str]:
    """Warm items held out of the fit as the validation users' new items, drawn the way the
    split drew the real ones: at random, or the latest of the training log to appear."""
    if cfg.cold_items_by == "time":
        return set(latest_items(split.train, cfg.cold_items_frac))
    warm_items = sorted({str(i) for i in split.train["item_id"].dropna()})
    return set(rng.choice(warm_items, round(cfg.cold_items_frac * len(warm_items)), replace=False))


def catalog_items(dataset: Dataset) -> list[CatalogItem]:
    return [
        CatalogItem(
            item_id=it.item_id,
            title=it.title,
            category=it.category,
            tags=it.tags,
            brand=it.brand,
            description=it.description,
            price=it.price,
            created_at=it.ts or 0.0,  # unknown creation time: 0, never "new"
        )
        for it in dataset.items
    ]


@contextmanager
def temp_store(factory: StoreFactory) -> Iterator[VectorStore]:
    """A store in a fresh directory on tmpfs when there is one, removed afterwards."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="coldstream-eval-", dir=shm if shm.is_dir() else None))
    store = factory(base / "store")
    try:
        yield store
    finally:
        store.close()
        shutil.rmtree(base, ignore_errors=True)


def _events(revealed: Mapping[str, Sequence[Revealed]]) -> list[Interaction]:
    """Revealed interactions as engine events, in event-time order, one partition, fresh offsets."""
    flat = [(e.ts, u, n, e) for u, evs in revealed.items() for n, e in enumerate(evs)]
    flat.sort(key=lambda t: (t[0], t[1], t[2]))
    return [
        Interaction(
            event_id=f"eval-{u}-{n}",
            user_id=u,
            type=e.type,
            ts=e.ts,
            item_id=e.item_id,
            text=e.text,
            rating=e.rating,
            partition=0,
            offset=off,
        )
        for off, (_, u, n, e) in enumerate(flat)
    ]


def reveal(log_df: pd.DataFrame, k: int) -> tuple[dict[str, list[Revealed]], dict[str, set[str]]]:
    """:meth:`Split.reveal` for the users of ``log_df`` (validation users from training data)."""
    return reveal_groups(((str(u), g) for u, g in log_df.groupby("user_id", sort=True)), k)


def trending_counter(cfg: EngineConfig, log_df: pd.DataFrame) -> TrendingCounter | None:
    """Trending counts of a training log at its last event, computed in one vectorized pass
    (None for a log without item events)."""
    df = log_df.loc[log_df["item_id"].notna()]
    if df.empty:
        return None
    weights = np.array(
        [
            max(event_weight(cfg.profile, t, None if math.isnan(r) else r), 0.0)
            for t, r in zip(df["type"], df["rating"], strict=True)
        ]
    )
    ts = df["ts"].to_numpy(dtype=np.float64)
    ref = float(ts.max())
    decayed = weights * np.power(0.5, (ref - ts) / cfg.trending_half_life_s)
    sums = df.assign(w=decayed).groupby("item_id", sort=False)["w"].sum().astype(float).to_dict()
    counter = TrendingCounter(cfg.trending_half_life_s)
    counter.ref_ts = ref
    counter.scores = {str(k): float(v) for k, v in sums.items()}
    return counter


def warm_trending(engine: BehaviorEngine, log_df: pd.DataFrame) -> None:
    """Seed the engine's trending counts (partition 0) from a training log."""
    counter = trending_counter(engine.cfg, log_df)
    if counter is not None:
        engine.trending[0] = counter


def replay(
    engine: BehaviorEngine,
    revealed: Mapping[str, Sequence[Revealed]],
    encode: Encode | None,
    batch: int = 0,
) -> dict[str, list[str]]:
    """Feed the revealed events in event-time order through prepare/apply, ``batch`` at a time
    (0: all as one batch); each user's last list, the one their last revealed event triggered."""
    from encoders.texts import user_text

    events = _events(revealed)
    size = batch if batch > 0 else max(len(events), 1)
    lists: dict[str, list[str]] = {}
    for start in range(0, len(events), size):
        prep = engine.prepare(events[start : start + size])
        vectors = None
        if prep.texts:
            if encode is None:
                raise ValueError("the data set has text events: an encoder is needed")
            vectors = encode([user_text(kind, text) for kind, text in prep.texts])
        outcome = engine.apply(prep, vectors)
        lists.update({r.user_id: [i.item_id for i in r.items] for r in outcome.recommendations})
    return lists


def _score(
    lists: Mapping[str, Sequence[str]], targets: Mapping[str, set[str]], split: Split, n: int
) -> dict[str, float]:
    return evaluate_lists(
        lists, targets, k=n, cold_items=split.cold_items, catalog_size=len(split.catalog)
    )


@dataclass(frozen=True)
class StreamRun:
    """One test replay as the in-process path runs it, for a :class:`StreamReplay` to repeat.

    ``engine`` is the configuration the in-process engine used (its users collection aside),
    ``trending`` the warm start :func:`warm_trending` gave it, ``events`` the revealed events in
    the order and with the ids the in-process replay used. ``catalog``/``vectors`` are the
    items as the eval encoded them (catalog order); those in ``cold_items`` must arrive as item
    events, the others are in the store before the replay starts, as in process.
    """

    seed: int
    k: int
    method: str  # FULL or BLEND
    scorer: Scorer
    covisit: CovisitModel | None
    engine: EngineConfig
    trending: TrendingCounter | None
    events: Sequence[Interaction]
    catalog: Sequence[CatalogItem]
    vectors: np.ndarray
    cold_items: frozenset[str]
    replay_batch: int = 0  # the in-process replay's events per batch (EvalConfig.replay_batch)

    @property
    def tag(self) -> str:
        return f"seed {self.seed} k={self.k} {self.method}"

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(e.user_id for e in self.events))


@dataclass
class StreamResult:
    """Each user's list as the stream emitted it, and what the runner measured on the way."""

    lists: dict[str, list[str]]
    info: dict[str, Any] = field(default_factory=dict)


class StreamReplay(Protocol):
    """Replays a :class:`StreamRun` through something other than this process (the stream)."""

    path: str  # the result's ``path``, e.g. "via-kafka"

    def describe(self) -> dict[str, Any]: ...

    def __call__(self, run: StreamRun) -> StreamResult: ...


def agreement(
    reference: Mapping[str, Sequence[str]],
    other: Mapping[str, Sequence[str]],
    users: Sequence[str],
) -> dict[str, float]:
    """How far two paths' lists for the same users differ: the share of users whose lists are
    identical (same items, same order), whose first item is the same, and the mean share of the
    reference list's items the other list holds (order ignored)."""
    same = top1 = 0
    overlap: list[float] = []
    for u in users:
        a, b = list(reference.get(u, ())), list(other.get(u, ()))
        same += a == b
        top1 += bool(a and b and a[0] == b[0])
        overlap.append(len(set(a) & set(b)) / len(a) if a else float(not b))
    n = max(len(users), 1)
    return {
        "users": float(len(users)),
        "identical_lists": same / n,
        "same_first_item": top1 / n,
        "mean_overlap": float(np.mean(overlap)) if overlap else math.nan,
    }


def evaluate_seed(
    dataset: Dataset,
    vectors: np.ndarray,
    seed: int,
    engine_cfg: EngineConfig,
    cfg: EvalConfig,
    *,
    store_factory: StoreFactory,
    encode: Encode | None,
    encoder_name: str,
    blend: Scorer,
    progress: Callable[[str], None],
    stream: StreamReplay | None = None,
) -> dict[str, Any]:
    split = make_split(
        dataset,
        test_users_frac=cfg.test_users_frac,
        cold_items_frac=cfg.cold_items_frac,
        cold_items_by=cfg.cold_items_by,
        seed=seed,
    )
    catalog = catalog_items(dataset)
    points = item_points(catalog, vectors)
    items = ItemTable([p.id for p in points], vectors, [dict(p.payload) for p in points])
    # Held-out items arrive as item events now, as the item agent would stamp them (created_at
    # = arrival); every other item is old. Training sees them as catalog items without history.
    arrival = time.time()
    catalog_created = {p.id: p.payload.get("created_at") for p in points}
    catalog_active = {p.id: p.payload.get("active", True) for p in points}
    for p in points:
        if p.id in split.cold_items:
            p.payload["created_at"] = arrival
    # validation users: training users kept out of the fit, used to pick MMR's λ
    rng = np.random.default_rng([seed, 7])
    train_users = sorted({str(u) for u in split.train["user_id"]})
    val_users = set(rng.choice(train_users, round(cfg.val_users_frac * len(train_users)), False))
    is_val = split.train["user_id"].isin(val_users)
    # simulated new items for the validation users: warm items held out of the fit (ranker,
    # snapshot, trending), as the real new items are held out of all training data
    pseudo_new = simulated_new_items(split, cfg, rng)
    is_pseudo = split.train["item_id"].astype(str).isin(pseudo_new)
    fit_log = split.train.loc[~is_val & ~is_pseudo].reset_index(drop=True)
    val_log = split.train.loc[is_val].reset_index(drop=True)
    # items held out of the fit (the real new items and the simulated ones) are no training
    # candidates either, not even negatives: the protocol holds them out of all training data
    held_out = split.cold_items | pseudo_new
    fit_items = ItemTable(
        items.ids,
        items.vectors,
        [
            {**p, "active": False} if i in held_out else p
            for i, p in zip(items.ids, items.payloads, strict=True)
        ],
    )
    t0 = time.perf_counter()
    trained = train(
        fit_log,
        fit_items,
        engine_cfg,
        dataclasses.replace(cfg.train, seed=seed),
        encoder=encoder_name,
        progress=lambda m: progress(f"seed {seed} train: {m}"),
    )
    train_s = time.perf_counter() - t0
    progress(
        f"seed {seed}: ranker {trained.scorer.version} in {train_s:.0f}s, "
        f"val recall@20 {trained.report['val_ranker']['recall']:.4f}"
    )
    baselines: dict[str, Any] = {
        "random": RandomRecommender(split.catalog, seed=seed),
        "popularity": PopularityRecommender(split.train, split.catalog),
        "item-knn": ItemKNNRecommender(split.train, split.catalog),
        "content": ContentRecommender(items.ids, vectors),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {"train_s": round(train_s, 2)}
    cfg_n = dataclasses.replace(engine_cfg, recs_count=cfg.n)
    with temp_store(store_factory) as store:
        dim = vectors.shape[1]
        store.ensure_collection(cfg_n.items_collection, dim)
        store.ensure_collection(cfg_n.state_collection, 1)
        t0 = time.perf_counter()
        store.upsert(cfg_n.items_collection, points)
        timings["upsert_items_s"] = round(time.perf_counter() - t0, 3)

        def replay_with(
            tag: str,
            scorer: Scorer,
            covisit: Any,
            trend_log: pd.DataFrame,
            ecfg: EngineConfig,
            revealed: Mapping[str, Sequence[Revealed]],
        ) -> dict[str, list[str]]:
            users = f"users-{tag}"
            store.ensure_collection(users, dim)
            engine = BehaviorEngine(
                store,
                dataclasses.replace(ecfg, users_collection=users),
                scorer,
                covisit=covisit,
                clock=lambda: arrival,  # the replay happens as the new items arrive
            )
            warm_trending(engine, trend_log)
            t0 = time.perf_counter()
            lists = replay(engine, revealed, encode, cfg.replay_batch)
            timings[f"replay_{tag}_s"] = round(time.perf_counter() - t0, 3)
            return lists

        # choices on the validation users: their history is not in the fit nor its snapshot,
        # and the simulated new items enter as new items (no counts, created now); the real
        # new items have not arrived yet (retired while validating), so, as at test time, one
        # set of new items competes for the slots and every one of them can be a target
        draws = new_item_draws(pseudo_new, cfg.new_item_draws, cfg.new_item_draw_frac, seed)
        for p in points:
            if p.id in pseudo_new:
                p.payload["created_at"] = arrival
        val_sets = {k: reveal(val_log, k) for k in cfg.ks}
        # the baselines on the validation users (fitted on the fit log, as the ranker is): the
        # bar the choices below are judged against, without looking at a test user
        fitted: dict[str, Recommender] = {
            "popularity": PopularityRecommender(fit_log, split.catalog),
            "item-knn": ItemKNNRecommender(fit_log, split.catalog),
        }
        changed = pseudo_new | split.cold_items  # the points whose payload validation rewrites

        def arrive(new: frozenset[str]) -> dict[str, dict[str, dict[str, float]]]:
            """Make ``new`` the only new items in the store; the baselines on validation users."""
            for p in points:
                p.payload["active"] = (
                    catalog_active[p.id]
                    and p.id not in split.cold_items
                    and (p.id not in pseudo_new or p.id in new)
                )
            store.upsert(cfg_n.items_collection, [p for p in points if p.id in changed])
            gone = split.cold_items | (pseudo_new - new)
            arrived = [r for r, i in enumerate(items.ids) if i not in gone]
            content = ContentRecommender([items.ids[r] for r in arrived], vectors[arrived])
            return {
                str(k): {
                    name: evaluate_lists(
                        recommend_all(rec, rv, cfg.n),
                        tg,
                        k=cfg.n,
                        cold_items=new,
                        catalog_size=len(split.catalog),
                    )
                    for name, rec in {**fitted, "content": content}.items()
                }
                for k, (rv, tg) in val_sets.items()
            }

        # undated, as the test snapshot: the validation users' events are as old as the fit
        # log's and not in it, so a worker's rule (no online counts up to the snapshot's date)
        # would leave their online co-visitation out
        val_covisit = trained.covisit.undated()

        def validate(
            tag: str, ecfg: EngineConfig, new: frozenset[str]
        ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
            """Per k: the metrics, and each validation user's Recall+NDCG (for paired gaps)."""
            out, users = [], []
            for k, (rv, tg) in val_sets.items():
                lists = replay_with(
                    f"val-{tag}-k{k}", trained.scorer, val_covisit, fit_log, ecfg, rv
                )
                out.append(
                    evaluate_lists(
                        lists, tg, k=cfg.n, cold_items=new, catalog_size=len(split.catalog)
                    )
                )
                users.append(per_user_quality(lists, tg, k=cfg.n))
            return out, users

        val_baselines = arrive(draws[0])
        lambdas = tuple(dict.fromkeys((engine_cfg.mmr_lambda, *cfg.mmr_lambdas)))
        selection: dict[str, float] = {}
        for lam in lambdas:
            ms, _ = validate(f"l{lam:g}", dataclasses.replace(cfg_n, mmr_lambda=lam), draws[0])
            selection[f"{lam:g}"] = float(np.mean([m["recall"] + m["ndcg"] for m in ms]))
        lam = max(lambdas, key=lambda x: selection[f"{x:g}"])
        progress(f"seed {seed}: MMR λ on validation users {selection} → {lam:g}")
        cfg_lam = dataclasses.replace(cfg_n, mmr_lambda=lam)
        # every policy on every draw of new items: one flat list of (draw, k) figures each
        val_policy_metrics: dict[str, list[list[dict[str, float]]]] = {}
        val_policy_users: dict[str, list[dict[str, float]]] = {}
        val_content: list[list[float]] = []
        for d, new in enumerate(draws):
            # the longest quiet stretch of a run (~50 s on MovieLens): say where it is
            progress(
                f"seed {seed}: new-item policies on validation users, draw {d + 1}/{len(draws)} "
                f"({len(cfg.cold_policies)} policies)"
            )
            bases = val_baselines if d == 0 else arrive(new)
            val_content.append([bases[str(k)]["content"]["cold_recall"] for k in cfg.ks])
            for pol in cfg.cold_policies:
                ms, users = validate(
                    f"p{pol[0]}-{pol[1]:g}-{pol[2]}-d{d}", with_cold_policy(cfg_lam, pol), new
                )
                val_policy_metrics.setdefault(_policy_key(pol), []).append(ms)
                val_policy_users.setdefault(_policy_key(pol), []).extend(users)
        policy, policy_table = choose_cold_policy(
            cfg.cold_policies,
            lambda pol: [m for ms in val_policy_metrics[_policy_key(pol)] for m in ms],
            [c for cs in val_content for c in cs],
            per_user=lambda pol: user_means(val_policy_users[_policy_key(pol)]),
            noise_se=cfg.cold_policy_noise_se,
        )
        progress(
            f"seed {seed}: new-item policy on validation users ({len(draws)} draws of new "
            f"items) → {policy}"
        )
        for p in points:
            if p.id in pseudo_new:
                p.payload["created_at"] = catalog_created[p.id]
            p.payload["active"] = catalog_active[p.id]
        store.upsert(cfg_n.items_collection, [p for p in points if p.id in changed])
        cfg_lam = with_cold_policy(cfg_lam, policy)
        cfg_full = cfg_lam
        # the served snapshot counts every training user (validation users included). Undated:
        # the test users' events are as old as the training log's, and not in it
        covisit = build_covisit(
            user_sequences(split.train), train_users, cfg.train, "", engine_cfg, dated=False
        )
        via: dict[str, dict[str, Any]] = {}
        paired: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for k in cfg.ks:
            revealed, targets = split.reveal(k)
            per_k: dict[str, dict[str, float]] = {}
            scored_lists: dict[str, Mapping[str, Sequence[str]]] = {}
            engines: tuple[tuple[str, str, Scorer, CovisitModel | None, EngineConfig], ...] = (
                (FULL, "full", trained.scorer, covisit, cfg_full),
                (BLEND, "blend", blend, None, cfg_n),
            )
            for method, short, scorer, cov, ecfg in engines:
                lists = replay_with(f"{short}-k{k}", scorer, cov, split.train, ecfg, revealed)
                if stream is not None:
                    run = StreamRun(
                        seed=seed,
                        k=k,
                        method=method,
                        scorer=scorer,
                        covisit=cov,
                        engine=ecfg,
                        trending=trending_counter(ecfg, split.train),
                        events=_events(revealed),
                        catalog=catalog,
                        vectors=vectors,
                        cold_items=split.cold_items,
                        replay_batch=cfg.replay_batch,
                    )
                    t0 = time.perf_counter()
                    streamed = stream(run)
                    timings[f"{stream.path}_{short}-k{k}_s"] = round(time.perf_counter() - t0, 1)
                    via.setdefault(str(k), {})[method] = {
                        "in_process": _score(lists, targets, split, cfg.n),
                        "agreement": agreement(lists, streamed.lists, sorted(targets)),
                        **streamed.info,
                    }
                    lists = streamed.lists
                per_k[method] = _score(lists, targets, split, cfg.n)
                scored_lists[method] = lists
            for name, rec in baselines.items():
                scored_lists[name] = recommend_all(rec, revealed, cfg.n)
                per_k[name] = _score(scored_lists[name], targets, split, cfg.n)
            results[str(k)] = per_k
            paired[str(k)] = paired_with_baselines(scored_lists, targets, cfg.n)
            progress(
                f"seed {seed} k={k}: full recall {per_k[FULL]['recall']:.4f} "
                f"ndcg {per_k[FULL]['ndcg']:.4f} cold {per_k[FULL]['cold_recall']:.4f}"
            )
    report = {k: v for k, v in trained.report.items() if k != "history"}
    return {
        "seed": seed,
        "results": results,
        "train": report,
        "ranker": trained.scorer.version,
        "mmr_lambda": lam,
        "mmr_selection": selection,
        "cold_policy": list(policy),
        "cold_policy_selection": policy_table,
        "val_content_cold_recall": val_content[0],
        "val_new_item_draws": [len(d) for d in draws],
        "val_content_cold_recall_draws": val_content,
        "val_baselines": val_baselines,
        "val_policies": {
            pol: {str(k): m for k, m in zip(cfg.ks, per_draw[0], strict=True)}
            for pol, per_draw in val_policy_metrics.items()
        },
        "val_policies_cold_recall_draws": {
            pol: [[m["cold_recall"] for m in ms] for ms in per_draw]
            for pol, per_draw in val_policy_metrics.items()
        },
        "val_full": {
            str(k): m
            for k, m in zip(cfg.ks, val_policy_metrics[_policy_key(policy)][0], strict=True)
        },
        "val_users": len(val_users),
        "timings": timings,
        "cold_items": len(split.cold_items),
        "test_users": len(split.test_users),
        "test_paired": paired,
        **({stream.path.replace("-", "_"): via} if stream is not None else {}),
    }


ColdPolicy = tuple[int, float, str]


def new_item_draws(items: set[str], draws: int, frac: float, seed: int) -> list[frozenset[str]]:
    """All of ``items`` first, then ``draws`` seeded random subsets of ``frac`` of them."""
    pool = sorted(items)
    rng = np.random.default_rng([seed, 11])
    size = max(1, round(frac * len(pool))) if pool else 0
    out = [frozenset(pool)]
    out += [frozenset(rng.choice(pool, size, replace=False)) for _ in range(draws) if pool]
    return out


def _policy_key(pol: ColdPolicy) -> str:
    return f"{pol[0]}/{pol[1]:g}/{pol[2]}"


def with_cold_policy(ecfg: EngineConfig, policy: ColdPolicy) -> EngineConfig:
    """``(slots, share of content's new items, order)``; an order ``"prior:β"`` is the prior
    order with weight β."""
    minimum, frac, rank_by = policy
    how, _, weight = rank_by.partition(":")
    return dataclasses.replace(
        ecfg,
        cold_item_slots=minimum,
        cold_slots_content_frac=frac,
        cold_rank_by=how,
        cold_prior_weight=float(weight) if weight else ecfg.cold_prior_weight,
        cold_slots_follow_content=True,
    )


def user_means(per_user: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each user's mean over the runs (draws × k) they have targets in."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for run in per_user:
        for user, q in run.items():
            sums[user] = sums.get(user, 0.0) + q
            counts[user] = counts.get(user, 0) + 1
    return {user: total / counts[user] for user, total in sums.items()}


PAIRED_BASELINES = ("popularity", "item-knn", "content")


def paired_with_baselines(
    lists: Mapping[str, Mapping[str, Sequence[str]]],
    targets: Mapping[str, Collection[str]],
    n: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """The full system minus each baseline, user by user on the same test users: per metric
    the mean gap and its standard error. A win or a miss by less than a standard error or two
    is within the per-user noise of one split (the acceptance is decided per seed on such
    margins)."""
    full = per_user_metrics(lists[FULL], targets, n)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for base in PAIRED_BASELINES:
        if base not in lists:
            continue
        other = per_user_metrics(lists[base], targets, n)
        out[base] = {}
        for metric in ("recall", "ndcg"):
            gap, se = paired_gap(full[metric], other[metric])
            out[base][metric] = {"gap": gap, "se": se}
    return out


def paired_gap(best: Mapping[str, float], other: Mapping[str, float]) -> tuple[float, float]:
    """Mean and standard error of ``best - other`` over the users both have."""
    common = best.keys() & other.keys()
    if len(common) < 2:
        return math.nan, math.nan
    d = np.array([best[u] - other[u] for u in sorted(common)])
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def choose_cold_policy(
    policies: Sequence[ColdPolicy],
    validate: Callable[[ColdPolicy], Sequence[Mapping[str, float]]],
    content_cold: Sequence[float],
    per_user: Callable[[ColdPolicy], Mapping[str, float]] | None = None,
    noise_se: float = 0.0,
) -> tuple[ColdPolicy, dict[str, dict[str, float]]]:
    """The new-item policy for the worker, chosen on validation users.

    A policy qualifies if its cold recall is above 0 and at least content-only's for every k
    (and draw); if none does, the one closest to that bar wins (largest worst-case cold recall
    minus content's). Among qualifying ones the best mean Recall+NDCG wins, unless ``per_user``
    (each validation user's Recall+NDCG under a policy) and ``noise_se`` > 0 are given: then
    every qualifying policy whose paired gap to the best is at most ``noise_se`` standard errors
    counts as tied with it, and the tied one with the largest worst-case margin over content
    wins. Quality differences of a few thousandths between slot policies are within the
    validation users' noise, while the margin is what keeps the new-item target on other items.

    ``validate`` returns one metrics dict per k (same order as ``content_cold``).
    """
    if not policies:
        raise ValueError("no new-item policies to choose from")
    table: dict[str, dict[str, float]] = {}
    scored: list[tuple[bool, float, float, ColdPolicy]] = []
    for pol in policies:
        ms = validate(pol)
        colds = [m["cold_recall"] for m in ms]
        margins = [
            (c if not math.isnan(c) else 0.0) - (b if not math.isnan(b) else 0.0)
            for c, b in zip(colds, content_cold, strict=True)
        ]
        ok = all((not math.isnan(c)) and c > 0 for c in colds) and min(margins) >= 0
        quality = float(np.mean([m["recall"] + m["ndcg"] for m in ms]))
        table[_policy_key(pol)] = {
            "quality": quality,
            "min_cold_margin": float(min(margins)),
            "ok": float(ok),
        }
        scored.append((ok, quality, float(min(margins)), pol))
    feasible = [t for t in scored if t[0]]
    if not feasible:
        return max(scored, key=lambda t: (t[2], t[1]))[3], table
    best = max(feasible, key=lambda t: t[1])
    if per_user is None or noise_se <= 0:
        return best[3], table
    best_users = per_user(best[3])
    tied = []
    for t in feasible:
        gap, se = (0.0, 0.0) if t is best else paired_gap(best_users, per_user(t[3]))
        within = t is best or (not math.isnan(gap) and gap <= noise_se * se)
        table[_policy_key(t[3])].update(gap=gap, gap_se=se, tied_with_best=float(within))
        if within:
            tied.append(t)
    return max(tied, key=lambda t: (t[2], t[1]))[3], table


def summarize(per_seed: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Mean and (population) standard deviation over seeds, per k, method and metric."""
    out: dict[str, Any] = {}
    for k in ks:
        methods = per_seed[0]["results"][str(k)].keys()
        out[str(k)] = {
            m: {
                metric: {
                    "mean": float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else math.nan,
                    "std": float(np.nanstd(vals)) if not np.all(np.isnan(vals)) else math.nan,
                    "values": [float(v) for v in vals],
                }
                for metric in (*METRICS, *EXPOSURE)
                for vals in [
                    np.array([s["results"][str(k)][m].get(metric, math.nan) for s in per_seed])
                ]
            }
            for m in methods
        }
    return out


ACCEPTANCE_KS = (1, 3, 5)
ACCEPTANCE_SEEDS = 3
ACCEPTANCE_N = 20


def acceptance_scope(ks: Sequence[int], seeds: Sequence[int], n: int) -> list[str]:
    """What a run lacks to decide issue 5's acceptance (k = 1, 3 and 5, three seeds, @20);
    empty = in scope. Met targets on a narrower run say nothing about the acceptance."""
    missing = []
    if not set(ACCEPTANCE_KS) <= set(ks):
        missing.append(f"k = {', '.join(map(str, ACCEPTANCE_KS))} (this run: {list(ks)})")
    if len(set(seeds)) < ACCEPTANCE_SEEDS:
        missing.append(f"{ACCEPTANCE_SEEDS} seeds at least (this run: {len(set(seeds))})")
    if n != ACCEPTANCE_N:
        missing.append(f"lists of {ACCEPTANCE_N} (this run: {n})")
    return missing


def check_targets(summary: Mapping[str, Any], per_seed: Sequence[Mapping[str, Any]]) -> list[str]:
    """The acceptance checks of issue 5, per seed and k; returns the failures (empty = all met)."""
    failures: list[str] = []
    for s in per_seed:
        for k, res in s["results"].items():
            full = res[FULL]
            for metric in ("recall", "ndcg"):
                for base in ("popularity", "item-knn"):
                    if not full[metric] > res[base][metric]:
                        pair = s.get("test_paired", {}).get(k, {}).get(base, {}).get(metric)
                        noise = (
                            f" (paired gap {pair['gap']:+.4f} ± {pair['se']:.4f} s.e.)"
                            if pair
                            else ""
                        )
                        failures.append(
                            f"seed {s['seed']} k={k}: {metric} {full[metric]:.4f} <= "
                            f"{base} {res[base][metric]:.4f}{noise}"
                        )
            cold, content = full["cold_recall"], res["content"]["cold_recall"]
            if not (cold > 0 and cold >= content):
                failures.append(
                    f"seed {s['seed']} k={k}: cold recall {cold:.4f} vs content {content:.4f}"
                )
    return failures


def format_table(summary: Mapping[str, Any], n: int = 20) -> str:
    heads = [f"Recall@{n}", f"NDCG@{n}", f"HR@{n}", "Coverage", f"ColdRecall@{n}"]
    lines = [f"{'k':>2}  {'method':<13}" + "".join(f"{h:>17}" for h in heads)]
    for k, methods in summary.items():
        for m, metrics in methods.items():
            cells = []
            for metric in METRICS:
                v = metrics[metric]
                cells.append(
                    f"{'n/a':>17}"
                    if math.isnan(v["mean"])
                    else f"{v['mean']:>9.4f} ± {v['std']:.4f}"
                )
            lines.append(f"{k:>2}  {m:<13}" + "".join(cells))
        lines.append("")
    exposure = _exposure_lines(summary)
    if exposure:
        lines += [
            "new-item exposure (mean over seeds): distinct new items shown · share of the lists "
            "showing the most shown one",
            *exposure,
        ]
    return "\n".join(lines).rstrip() + "\n"


def _exposure_lines(
    summary: Mapping[str, Any], methods: Sequence[str] = (FULL, "content")
) -> list[str]:
    """One line per k for ``methods``: a new-item recall decided by one or two items shows here."""
    lines = []
    for k, per_method in summary.items():
        cells = []
        for m in methods:
            got = per_method.get(m, {})
            distinct = got.get("cold_distinct", {}).get("mean", math.nan)
            top = got.get("cold_top_share", {}).get("mean", math.nan)
            if not (math.isnan(distinct) or math.isnan(top)):
                cells.append(f"{m} {distinct:.1f} · {top:.2f}")
        if cells:
            lines.append(f"{k:>2}  " + "   ".join(cells))
    return lines


def plot(summary: Mapping[str, Any], path: str | Path, n: int = 20, label: str = "") -> None:
    """Recall@n and cold-item Recall@n against k; ``label`` (e.g. the replay path) goes in the
    title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in summary)
    methods = list(summary[str(ks[0])])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in (
        (axes[0], "recall", f"Recall@{n}"),
        (axes[1], "cold_recall", f"Cold-item Recall@{n}"),
    ):
        for m in methods:
            means = [summary[str(k)][m][metric]["mean"] for k in ks]
            stds = [summary[str(k)][m][metric]["std"] for k in ks]
            if all(math.isnan(v) for v in means):
                continue
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=m)
        ax.set_xlabel("revealed interactions per test user (k)")
        ax.set_title(title)
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    suffix = f", {label}" if label else ""
    fig.suptitle(f"coldstream cold-start evaluation (mean ± std over seeds{suffix})")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)


def run(
    dataset: Dataset,
    vectors: np.ndarray,
    engine_cfg: EngineConfig,
    cfg: EvalConfig,
    *,
    store_factory: StoreFactory,
    encode: Encode | None,
    encoder_name: str,
    blend: Scorer | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    stream: StreamReplay | None = None,
) -> dict[str, Any]:
    """Every seed, summarized; ``stream`` replays the test users through the stream instead of
    in process (``path`` in the result says which did)."""
    t0 = time.perf_counter()
    per_seed = [
        evaluate_seed(
            dataset,
            vectors,
            seed,
            engine_cfg,
            cfg,
            store_factory=store_factory,
            encode=encode,
            encoder_name=encoder_name,
            blend=blend or BlendScorer(0.3),
            progress=progress,
            stream=stream,
        )
        for seed in cfg.seeds
    ]
    summary = summarize(per_seed, cfg.ks)
    return {
        "dataset": dataset.name,
        "path": stream.path if stream is not None else "in-process",
        **({"stream": stream.describe()} if stream is not None else {}),
        "config": {
            "ks": list(cfg.ks),
            "seeds": list(cfg.seeds),
            "test_users_frac": cfg.test_users_frac,
            "cold_items_frac": cfg.cold_items_frac,
            "cold_items_by": cfg.cold_items_by,
            "replay_batch": cfg.replay_batch,
            "n": cfg.n,
            "train": dataclasses.asdict(cfg.train),
            "engine": {k: v for k, v in dataclasses.asdict(engine_cfg).items() if k != "profile"},
        },
        "summary": summary,
        "per_seed": per_seed,
        "failures": check_targets(summary, per_seed),
        "acceptance_scope_missing": acceptance_scope(cfg.ks, cfg.seeds, cfg.n),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_json(result: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=float) + "\n")
