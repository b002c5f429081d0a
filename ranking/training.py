"""``coldstream train``: the co-visitation snapshot and the ranker, learned from an interaction log.

Training replays each training user's history through the stream's own code: the profile update
rule (:func:`ranking.profile.apply_signal`), the candidate pool (:func:`ranking.candidates.
assemble_candidates`: content recall, co-visited and popular channels) and the features
(:func:`ranking.features.feature_matrix`). A list is a user's profile after their first L events
(L in ``prefix_lengths``, the cold-start regime); its positives are the items they touch later.

No leakage from a user's own future into their features: users are split into folds, and a fold's
lists read co-visitation and popularity counted on the other folds' users only. A validation slice
of users (never trained on) picks the epoch (early stopping). The snapshot served afterwards is
counted on all the log's users.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ranking.candidates import assemble_candidates
from ranking.covisit import CovisitIndex, CovisitModel
from ranking.engine import EngineConfig
from ranking.features import FEATURES, feature_matrix
from ranking.profile import Profile, Signal, apply_signal, event_weight, update_recent
from ranking.ranker import RankerMeta, RankerMLP, RankerScorer
from ranking.scoring import ItemPrior
from ranking.store import Hit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    # 4 and 6 added to (1, 2, 3, 5, 8): on validation users of seeds 0-2, two training seeds
    # each, Recall+NDCG@20 (mean over k = 1, 3, 5) rose in 5 of 6 pairs, by 0.008 on average
    prefix_lengths: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    folds: int = 2
    val_frac: float = 0.15
    hidden: int = 32
    wide: int = 16  # width of the features-only tower (0 = none), see RankerMLP
    dropout: float = 0.1
    epochs: int = 15
    patience: int = 3
    lr: float = 3e-3
    weight_decay: float = 1e-5
    batch_lists: int = 64
    max_positives: int = 16
    negatives: int = 48
    # share of sampled candidates shown as a new item would look (no popularity, co-visitation
    # or age), positives and negatives alike, so new items are scored on their content
    cold_mask_frac: float = 0.0
    # weight averaging: the running mean of the epochs' weights from swa_start on is a candidate
    # for the returned model too (picked on the validation users like any epoch); -1 = off
    swa_start: int = 4
    # ridge penalty of the item prior (content → log visits) fitted on the log's items; < 0 = none
    prior_l2: float = 1.0
    covisit_window: int = 500
    covisit_neighbors: int = 200
    # rankers fitted under different seeds whose per-list relevances are averaged; on seed 1's
    # validation users 3 members moved Recall+NDCG@20 (mean over k = 1, 3, 5) 0.578 → 0.590
    ensemble: int = 3
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = leave as is


@dataclass(frozen=True)
class ItemTable:
    """The catalog as training sees it: ids, unit vectors (n, d) and the stored payloads."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.vectors) or len(self.ids) != len(self.payloads):
            raise ValueError("ids, vectors and payloads must have the same length")


@dataclass
class TrainResult:
    scorer: RankerScorer
    covisit: CovisitModel
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _List:
    user: np.ndarray  # (d,)
    rows: np.ndarray  # (m,) catalog rows
    feats: np.ndarray  # (m, F)
    labels: np.ndarray  # (m,) 0/1
    n_targets: int  # all later items, in the pool or not (the recall denominator)


def data_hash(log_df: pd.DataFrame, item_ids: Sequence[str]) -> str:
    """Names the log a model was fitted on (in its version and metadata): every column the fit
    reads, so a log with other ratings or event types is another log."""
    h = hashlib.sha256()
    h.update("\n".join(item_ids).encode())
    read = [c for c in ("user_id", "item_id", "ts", "type", "rating") if c in log_df.columns]
    cols = log_df[read].astype(str)
    h.update(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def user_sequences(log_df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each user's item events in time order (the log is already sorted by ts, file order)."""
    df = log_df.loc[log_df["item_id"].notna()]
    return {str(u): g for u, g in df.groupby("user_id", sort=True)}


def min_users(cfg: TrainConfig) -> int:
    """Users with item events a fit needs at least: two per fold (each fold's lists read the
    others' counts)."""
    return 2 * max(cfg.folds, 2)


def build_covisit(
    seqs: Mapping[str, pd.DataFrame],
    users: Sequence[str],
    cfg: TrainConfig,
    data_hash: str = "",
    engine_cfg: EngineConfig | None = None,
    *,
    dated: bool = True,
) -> CovisitModel:
    """Co-visitation counted over ``users``' item events; a user with none (only searches or
    profile texts) adds nothing. With ``engine_cfg`` (the snapshot a worker serves), the
    scale of the worker's online pairs is measured too (:func:`online_pair_scale`).
    ``dated``: the snapshot names its latest event's time (``counted_until``); a log split by
    user, not by time, has later events outside it, and must not."""
    counted = [seqs[u] for u in users if u in seqs]
    model = CovisitModel.build(
        ([str(i) for i in g["item_id"]] for g in counted),
        window=cfg.covisit_window,
        neighbors=cfg.covisit_neighbors,
        data_hash=data_hash,
        # a worker drops online counts of events up to here (BehaviorEngine._drop_counted)
        counted_until=_counted_until(counted) if dated else None,
    )
    if engine_cfg is None:
        return model
    return model.with_online_pair_scale(online_pair_scale(seqs, users, cfg, engine_cfg, model))


def _counted_until(counted: Sequence[pd.DataFrame]) -> float | None:
    """The latest event time of the log, but not past now: one event from a client whose
    clock runs ahead (the events contract allows a day) would date the snapshot after
    events it never saw, and a worker would drop those online counts."""
    latest = max((float(g["ts"].max()) for g in counted), default=None)
    if latest is None:
        return None
    now = time.time()
    if latest > now:
        log.warning(
            "the log's latest event is %.0f s in the future: the snapshot is dated now",
            latest - now,
        )
        return now
    return latest


def online_pair_scale(
    seqs: Mapping[str, pd.DataFrame],
    users: Sequence[str],
    cfg: TrainConfig,
    engine_cfg: EngineConfig,
    snapshot: CovisitModel,
    max_events: int = 1_000_000,
) -> float:
    """How many times the snapshot's rule counts a pair that the worker's rule counts once.

    The snapshot pairs each visit with the user's visits up to ``cfg.covisit_window``
    positions away, repeats and weight-0 events included; a worker pairs an event of weight
    > 0 with the last ``engine_cfg.covisit_window`` distinct recent items its profile keeps.
    Both rules are run over the same users and summed over the snapshot's kept pairs (each
    item's strongest neighbours: the counts the ranker's features read). Past ``max_events``
    the users (in order) stop and the snapshot's rule is counted again over those taken, so
    both sides read one log. 1.0 when no kept pair is paired by the worker's rule.

    Measured on MovieLens-100K cut at its 80% time quantile (``scripts/covisit_scale_replay.py``:
    the last 20% of events replayed in time order, each next item predicted by co-visitation
    from the snapshot of the first 80% plus the online counts): the ratio 4.38 raised HR@20
    from 0.2705 to 0.2780, and for items first seen after the cut from 0.025 to 0.065 (201
    events). The ratio is 1.000 on the visits whose earlier visits fit the worker's window and
    4.92 past it; weighing each online visit by its own (the script's ``depth``) gave 0.2713
    and 0.045, so the uniform ratio stays.
    """
    with_events = [u for u in users if u in seqs]
    taken: list[str] = []
    events = 0
    for u in with_events:
        if taken and events + len(seqs[u]) > max_events:
            break
        taken.append(u)
        events += len(seqs[u])
    reference = snapshot if len(taken) == len(with_events) else build_covisit(seqs, taken, cfg)
    # only the kept pairs are counted (the sum reads no other): memory stays the snapshot's
    kept = {a: set(reference.neighbors(a)[0]) for a in reference.item_ids}
    none: set[str] = set()
    window, profile = engine_cfg.covisit_window, engine_cfg.profile
    paired = 0
    for u in taken:
        g = seqs[u]
        recent: list[str] = []
        for item, kind, rating in zip(
            g["item_id"].astype(str), g["type"], g["rating"], strict=True
        ):
            weight = event_weight(profile, str(kind), None if pd.isna(rating) else float(rating))
            if weight > 0:  # as CovisitCounter.add pairs it, both ways
                mine = kept.get(item, none)
                for other in recent[-window:]:
                    if other != item:
                        paired += (item in kept.get(other, none)) + (other in mine)
            update_recent(recent, item, weight, profile)
    return float(reference.data.sum()) / paired if paired > 0 else 1.0


def _lists_for_user(
    events: pd.DataFrame,
    items: ItemTable,
    row_of: Mapping[str, int],
    index: CovisitIndex,
    popular: list[tuple[str, str]],
    active: np.ndarray,
    engine_cfg: EngineConfig,
    prefix_lengths: Sequence[int],
    created: np.ndarray | None = None,
) -> list[tuple[_List, set[str]]]:
    """``created``: each item's publication time (0: unknown, always there). An item published
    after a list's time is no candidate of it: the worker could not have shown it then."""
    out: list[tuple[_List, set[str]]] = []
    known = [
        (str(r.item_id), float(r.ts), str(r.type), None if pd.isna(r.rating) else float(r.rating))
        for r in events.itertuples(index=False)
        if str(r.item_id) in row_of
    ]
    wanted = sorted(L for L in set(prefix_lengths) if 0 < L < len(known))
    if not wanted:
        return out
    profile = Profile("train")
    applied = 0
    for L in wanted:
        while applied < L:
            item, ts, kind, rating = known[applied]
            row = row_of[item]
            apply_signal(
                profile,
                Signal(
                    event_id=str(applied),
                    event_type=kind,
                    ts=ts,
                    vector=items.vectors[row],
                    item_id=item,
                    category=_opt_str(items.payloads[row].get("category")),
                    rating=rating,
                ),
                engine_cfg.profile,
            )
            applied += 1
        if profile.vector is None:
            continue
        seen = set(profile.seen)
        targets = {i for i, _, _, _ in known[L:]} - seen
        if not targets:
            continue
        now = known[L - 1][1]
        sims = items.vectors @ profile.vector
        mask = active.copy() if created is None else active & (created <= now)
        mask[[row_of[i] for i in seen]] = False
        sims = np.where(mask, sims, -np.inf)
        n = min(engine_cfg.recall_top_n, int(mask.sum()))
        top = np.argpartition(-sims, n - 1)[:n] if n > 0 else np.zeros(0, np.int64)
        top = top[np.argsort(-sims[top], kind="stable")]
        hits = [Hit(items.ids[r], float(sims[r]), items.payloads[r], items.vectors[r]) for r in top]
        recent = profile.recent_items[-engine_cfg.covisit_window :]
        chan = [(i, "covisit") for i in index.top(recent, engine_cfg.covisit_top_n, exclude=seen)]
        extras = chan + popular
        if created is not None:
            extras = [(i, why) for i, why in extras if created[row_of[i]] <= now]
        cands = assemble_candidates(
            profile, hits, extras, _Points(items, row_of), {}, index, now, engine_cfg
        )
        if cands is None:
            continue
        feats = feature_matrix(cands, profile.categories)
        rows = np.array([row_of[i] for i in cands.ids], dtype=np.int64)
        labels = np.array([1.0 if i in targets else 0.0 for i in cands.ids], dtype=np.float32)
        out.append((_List(profile.vector.copy(), rows, feats, labels, len(targets)), targets))
    return out


def _created_at(payload: Mapping[str, Any]) -> float:
    value = payload.get("created_at")
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


class _Points(Mapping[str, Any]):
    """The catalog seen as the ``known_items`` mapping the engine reads channel items from."""

    def __init__(self, table: ItemTable, row_of: Mapping[str, int]) -> None:
        self.table = table
        self.row_of = row_of

    def __getitem__(self, key: str) -> Any:
        from ranking.store import StoredPoint

        r = self.row_of[key]
        return StoredPoint(key, self.table.vectors[r], self.table.payloads[r])

    def __iter__(self) -> Any:
        return iter(self.row_of)

    def __len__(self) -> int:
        return len(self.row_of)


def _opt_str(value: object) -> str | None:
    return str(value) if value else None


def _metrics(scores: np.ndarray, lst: _List, k: int = 20) -> tuple[float, float]:
    order = np.argsort(-scores, kind="stable")[:k]
    hits = lst.labels[order]
    recall = float(hits.sum()) / lst.n_targets
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((hits * disc[: len(hits)]).sum())
    idcg = float(disc[: min(lst.n_targets, k)].sum())
    return recall, dcg / idcg


def _mean_metrics(lists: Sequence[_List], score: Callable[[_List], np.ndarray]) -> dict[str, float]:
    if not lists:
        return {"recall": math.nan, "ndcg": math.nan}
    rs, ns = zip(*(_metrics(score(lst), lst) for lst in lists), strict=True)
    return {"recall": float(np.mean(rs)), "ndcg": float(np.mean(ns))}


def _batch(
    lists: Sequence[_List], vectors: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    b, f = len(lists), lists[0].feats.shape[1]
    rows = np.zeros((b, width), np.int64)
    feats = np.zeros((b, width, f), np.float32)
    labels = np.zeros((b, width), np.float32)
    mask = np.zeros((b, width), bool)
    for j, lst in enumerate(lists):
        m = len(lst.rows)
        rows[j, :m] = lst.rows
        feats[j, :m] = lst.feats
        labels[j, :m] = lst.labels
        mask[j, :m] = True
    users = torch.from_numpy(np.stack([lst.user for lst in lists]).astype(np.float32))
    return (
        users,
        vectors[torch.from_numpy(rows)],
        torch.from_numpy(feats),
        torch.from_numpy(labels),
        torch.from_numpy(mask),
    )


def _sample(lst: _List, cfg: TrainConfig, rng: np.random.Generator) -> _List:
    pos = np.flatnonzero(lst.labels > 0)
    neg = np.flatnonzero(lst.labels <= 0)
    if len(pos) > cfg.max_positives:
        pos = rng.choice(pos, cfg.max_positives, replace=False)
    if len(neg) > cfg.negatives:
        neg = rng.choice(neg, cfg.negatives, replace=False)
    keep = np.concatenate([pos, neg])
    feats = lst.feats[keep]
    if cfg.cold_mask_frac > 0:
        feats = mask_as_new(feats, rng.random(len(keep)) < cfg.cold_mask_frac)
    return _List(lst.user, lst.rows[keep], feats, lst.labels[keep], lst.n_targets)


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over each list, the positives sharing the target mass equally.

    For a list with scores ``s`` and positives ``P``: ``−(1/|P|) Σ_{p∈P} log softmax(s)_p``,
    the softmax taken over the list's real rows (``mask``; padding never competes); lists
    without positives add 0. Averaged over the lists of the batch.
    """
    logits = logits.masked_fill(~mask, -1e9)
    labels = labels * mask
    target = labels / labels.sum(dim=1, keepdim=True).clamp(min=1.0)
    return -(torch.log_softmax(logits, dim=1) * target).sum(dim=1).mean()


_HISTORY_FEATURES = ("log_popularity", "covisit", "covisit_rel", "item_age")


def mask_as_new(feats: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A copy of ``feats`` where ``rows`` carry a new item's history features (all 0)."""
    out = feats.copy()
    cols = np.array([FEATURES.index(name) for name in _HISTORY_FEATURES], dtype=np.int64)
    out[np.ix_(np.flatnonzero(rows), cols)] = 0.0
    return out


def train(
    log_df: pd.DataFrame,
    items: ItemTable,
    engine_cfg: EngineConfig,
    cfg: TrainConfig,
    *,
    encoder: str,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fit the ranker on ``log_df`` (the training users' interactions) and count co-visitation.

    With ``cfg.ensemble`` > 1 each member is fitted as a whole ranker of its own under seed
    ``cfg.seed + 1000·j``: its own folds, validation slice, negatives and initial weights.
    """
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seqs = user_sequences(log_df)
    users = sorted(seqs)
    if len(users) < min_users(cfg):
        raise ValueError(f"need more users to train on (got {len(users)})")
    dhash = data_hash(log_df, items.ids)
    n_members = max(1, cfg.ensemble)
    fits: list[_Member] = []
    for j in range(n_members):
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + 1000 * j)
        tag = f"member {j + 1}/{n_members}: " if n_members > 1 else ""
        fits.append(_fit_member(seqs, users, items, engine_cfg, member_cfg, _prefixed(say, tag)))
    first = fits[0]
    covisit = build_covisit(seqs, users, cfg, dhash, engine_cfg)
    meta = RankerMeta(
        version=f"mlp-{dhash[:8]}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}",
        dim=items.vectors.shape[1],
        hidden=cfg.hidden,
        wide=cfg.wide,
        features=list(FEATURES),
        encoder=encoder,
        data_hash=dhash,
        metrics={
            "val_recall@20": float(np.mean([f.val["recall"] for f in fits])),
            "val_ndcg@20": float(np.mean([f.val["ndcg"] for f in fits])),
            "best_epoch": float(first.report["best_epoch"]),
            "train_lists": float(first.report["train_lists"]),
            "val_lists": float(first.report["val_lists"]),
        },
        members=n_members,
    )
    # the first member's figures at the top level (each member has its own validation slice)
    report: dict[str, Any] = {
        **first.report,
        "members": [{k: v for k, v in f.report.items() if k != "history"} for f in fits[1:]],
        "seconds_total": round(time.perf_counter() - t0, 2),
        "data_hash": dhash,
        "covisit_pairs": covisit.pairs,
        "covisit_online_pair_scale": round(covisit.online_pair_scale, 4),
        "covisit_counted_until": covisit.counted_until,
    }
    prior = None
    if cfg.prior_l2 >= 0:
        visits = np.array([covisit.count(i) for i in items.ids], dtype=np.float64)
        prior = ItemPrior.fit(items.vectors, visits, cfg.prior_l2)
    return TrainResult(RankerScorer([f.model for f in fits], meta, prior), covisit, report)


def _prefixed(say: Callable[[str], None], tag: str) -> Callable[[str], None]:
    return lambda msg: say(tag + msg)


@dataclass
class _Member:
    model: RankerMLP
    val: dict[str, float]
    report: dict[str, Any]


def _fit_member(
    seqs: Mapping[str, pd.DataFrame],
    users: Sequence[str],
    items: ItemTable,
    engine_cfg: EngineConfig,
    cfg: TrainConfig,
    say: Callable[[str], None],
) -> _Member:
    """One ranker: training lists from folds of ``users``, early-stopped on a validation slice."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    row_of = {item: r for r, item in enumerate(items.ids)}
    active = np.array([p.get("active", True) is not False for p in items.payloads], dtype=bool)
    created = np.array([_created_at(p) for p in items.payloads], dtype=np.float64)
    fold_of = {
        u: int(f) for u, f in zip(users, rng.integers(0, cfg.folds, len(users)), strict=True)
    }
    val_users = set(rng.choice(users, max(1, round(cfg.val_frac * len(users))), replace=False))

    train_lists: list[_List] = []
    val_lists: list[_List] = []
    for fold in range(cfg.folds):
        stats_users = [u for u in users if fold_of[u] != fold]
        index = CovisitIndex(build_covisit(seqs, stats_users, cfg), [], engine_cfg.covisit_recency)
        popular = [(i, "trending") for i in index.popular(engine_cfg.popular_top_n)]
        for u in users:
            if fold_of[u] != fold:
                continue
            made = _lists_for_user(
                seqs[u],
                items,
                row_of,
                index,
                popular,
                active,
                engine_cfg,
                cfg.prefix_lengths,
                created,
            )
            (val_lists if u in val_users else train_lists).extend(lst for lst, _ in made)
        say(f"fold {fold + 1}/{cfg.folds}: {len(train_lists)} train / {len(val_lists)} val lists")
    if not train_lists or not val_lists:
        raise ValueError("no training lists: the log is too short for the prefix lengths")
    t_lists = time.perf_counter() - t0

    dim = items.vectors.shape[1]
    model = RankerMLP(dim, len(FEATURES), cfg.hidden, cfg.dropout, wide=cfg.wide)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    vectors = torch.from_numpy(np.asarray(items.vectors, dtype=np.float32))
    width = cfg.max_positives + cfg.negatives

    def scores_of(lst: _List) -> np.ndarray:
        with torch.inference_mode():
            return model(
                torch.from_numpy(lst.user),
                vectors[torch.from_numpy(lst.rows)],
                torch.from_numpy(lst.feats),
            ).numpy()

    col = {name: j for j, name in enumerate(FEATURES)}
    report: dict[str, Any] = {
        "val_popularity": _mean_metrics(val_lists, lambda s: s.feats[:, col["log_popularity"]]),
        "val_covisit": _mean_metrics(
            val_lists,
            lambda s: s.feats[:, col["covisit"]] + 1e-3 * s.feats[:, col["log_popularity"]],
        ),
        "val_cosine": _mean_metrics(val_lists, lambda s: s.feats[:, col["cosine"]]),
    }
    best: dict[str, Any] = {"score": -1.0, "epoch": -1, "state": None, "val": {}, "averaged": False}
    history: list[dict[str, float]] = []
    swa: dict[str, torch.Tensor] | None = None
    n_avg = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(train_lists))
        total = 0.0
        for start in range(0, len(order), cfg.batch_lists):
            chunk = [
                _sample(train_lists[i], cfg, rng) for i in order[start : start + cfg.batch_lists]
            ]
            users_t, items_t, feats_t, labels_t, mask_t = _batch(chunk, vectors, width)
            loss = listwise_loss(model(users_t, items_t, feats_t), labels_t, mask_t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        model.eval()
        val = _mean_metrics(val_lists, scores_of)
        score = val["recall"] + val["ndcg"]
        history.append({"epoch": epoch, "loss": total / len(train_lists), **val})
        say(
            f"epoch {epoch}: loss {total / len(train_lists):.4f} "
            f"val recall@20 {val['recall']:.4f} ndcg@20 {val['ndcg']:.4f}"
        )
        improved = False
        if score > best["score"]:
            best = {
                "score": score,
                "epoch": epoch,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "val": val,
                "averaged": False,
            }
            improved = True
        if 0 <= cfg.swa_start <= epoch:
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            n_avg += 1
            if swa is None:
                swa = current
            else:
                for key, v in current.items():
                    if v.is_floating_point():
                        swa[key] += (v - swa[key]) / n_avg
            model.load_state_dict(swa)
            model.eval()
            swa_val = _mean_metrics(val_lists, scores_of)
            model.load_state_dict(current)
            history[-1].update({"swa_recall": swa_val["recall"], "swa_ndcg": swa_val["ndcg"]})
            say(
                f"epoch {epoch}: weight average val recall@20 {swa_val['recall']:.4f} "
                f"ndcg@20 {swa_val['ndcg']:.4f}"
            )
            if swa_val["recall"] + swa_val["ndcg"] > best["score"]:
                best = {
                    "score": swa_val["recall"] + swa_val["ndcg"],
                    "epoch": epoch,
                    "state": {k: v.clone() for k, v in swa.items()},
                    "val": swa_val,
                    "averaged": True,
                }
                improved = True
        if not improved and epoch - best["epoch"] >= cfg.patience:
            break
    assert best["state"] is not None
    model.load_state_dict(best["state"])
    model.eval()
    return _Member(
        model,
        best["val"],
        {
            "users": len(users),
            "val_users": len(val_users),
            "train_lists": len(train_lists),
            "val_lists": len(val_lists),
            "best_epoch": best["epoch"],
            "best_averaged": best["averaged"],
            "val_ranker": best["val"],
            **report,
            "history": history,
            "seconds_lists": round(t_lists, 2),
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )
