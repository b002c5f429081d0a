"""``coldstream eval`` and ``coldstream train``, and the engine/ranker assembly they share with
the worker (:func:`load_models`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.settings import Settings

if TYPE_CHECKING:  # the CLI imports this module for every command: torch loads only when used
    import numpy as np

    from ranking.covisit import CovisitModel
    from ranking.ranker import RankerScorer
    from ranking.store import VectorStore

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- assembly (worker + eval)


def load_models(
    settings: Settings, *, dim: int, encoder: str
) -> tuple[RankerScorer | None, CovisitModel | None]:
    """The trained ranker and snapshot when their files exist and load; None for each that
    does not (the worker then ranks with the cosine/popularity blend and online counts)."""
    from ranking.covisit import CovisitError, CovisitModel
    from ranking.ranker import RankerLoadError, load_ranker

    ranker: RankerScorer | None = None
    covisit: CovisitModel | None = None
    if settings.ranker_enabled and settings.ranker_file.exists():
        try:
            ranker = load_ranker(settings.ranker_file, expect_dim=dim, expect_encoder=encoder)
        except RankerLoadError as exc:
            log.error("ranker not loaded: %s", exc)
    if settings.covisit_file.exists():
        try:
            covisit = CovisitModel.load(settings.covisit_file)
        except CovisitError as exc:
            log.error("co-visitation snapshot not loaded: %s", exc)
    return ranker, covisit


def train_config(settings: Settings, args: argparse.Namespace | None = None) -> Any:
    from ranking.training import TrainConfig

    return TrainConfig(
        hidden=settings.ranker_hidden,
        epochs=getattr(args, "epochs", None) or settings.ranker_epochs,
        val_frac=settings.ranker_val_frac,
        ensemble=settings.ranker_ensemble,
        covisit_window=settings.covisit_train_window,
        covisit_neighbors=settings.covisit_neighbors,
        negatives=getattr(args, "negatives", None) or TrainConfig.negatives,
        cold_mask_frac=(
            mask
            if (mask := getattr(args, "cold_mask_frac", None)) is not None
            else settings.ranker_cold_mask_frac
        ),
    )


def _eval_store_factory() -> Any:
    """The fastest store that opens here: Qdrant Edge, else qdrant-client local mode."""

    def factory(path: Path) -> VectorStore:
        try:
            from infra.edge_store import EdgeStore

            return EdgeStore(path)
        except Exception as exc:  # pragma: no cover - depends on the installed engine
            log.warning("Qdrant Edge unavailable (%s); using qdrant-client local mode", exc)
            from infra.qdrant_store import QdrantStore

            return QdrantStore(path=path)

    return factory


def _load_dataset(args: argparse.Namespace) -> Any:
    from ranking.datasets import load_generic, load_movielens_100k

    if args.items or args.interactions:
        if not (args.items and args.interactions):
            raise SystemExit("--items and --interactions go together")
        return load_generic(args.items, args.interactions)
    if args.dataset != "ml-100k":
        raise SystemExit(f"unknown --dataset {args.dataset!r} (ml-100k, or --items/--interactions)")
    return load_movielens_100k()


def _encode_items(dataset: Any, settings: Settings) -> tuple[np.ndarray, Any]:
    from encoders.model import load_encoder
    from encoders.texts import item_text
    from streams.worker import encoder_config

    encoder = load_encoder(encoder_config(settings))
    texts = [item_text(i.title, i.category, i.tags, i.brand, i.description) for i in dataset.items]
    t0 = time.perf_counter()
    vectors = encoder.encode(texts)
    _say(f"encoded {len(texts)} items in {time.perf_counter() - t0:.1f}s ({encoder!r})")
    return vectors, encoder


def _say(msg: str) -> None:
    print(f"  … {msg}", file=sys.stderr, flush=True)


def _ints(text: str, minimum: int = 0) -> tuple[int, ...]:
    """Comma-separated integers, each at least ``minimum``, repeats dropped (a seed given
    twice would count twice in the mean over seeds)."""
    try:
        values = tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    if min(values) < minimum:
        raise argparse.ArgumentTypeError(f"each value must be at least {minimum}, got {text!r}")
    return values


def _ks(text: str) -> tuple[int, ...]:
    return _ints(text, minimum=1)  # k = 0 reveals nothing: no list to score


def _in(low: float, high: float, *, open_ends: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] (in (low, high) with ``open_ends``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = low < value < high if open_ends else low <= value <= high
        if not inside:
            span = f"({low:g}, {high:g})" if open_ends else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be in {span}")
        return value

    return parse


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def _output_file(text: str | Path) -> Path:
    """A file the command will write at its end, checked before its work: a directory, or a
    folder that cannot be made or written, fails now instead of after minutes of training."""
    path = Path(text)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"{path.parent}: not writable")
    return path


def _check_users(dataset: Any, held_out: float, train: Any) -> None:
    """Enough users to train on, said before the model loads: the fit needs
    :func:`ranking.training.min_users` users with 2 or more item events (a history and
    something after it) once ``held_out`` of the users (test and validation) are set aside;
    fewer failed deep in training."""
    from ranking.datasets import DatasetError
    from ranking.training import min_users

    frame = dataset.interactions
    per_user = frame.loc[frame["item_id"].notna()].groupby("user_id").size()
    usable = int((per_user >= 2).sum())
    fit = min_users(train)
    need = math.ceil(fit / max(1.0 - held_out, 1e-9))
    if usable < need:
        raise DatasetError(
            f"{dataset.name}: {usable} user(s) with 2 or more item interactions; this run "
            f"needs at least {need} ({fit} to train on after {held_out:.0%} of the users are "
            "held out)"
        )


# ------------------------------------------------------------------- commands


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.evaluation import EvalConfig, format_table, plot, run, write_json
    from ranking.scoring import BlendScorer

    for out in (args.json, args.plot):
        if out:
            _output_file(out)
    dataset = _load_dataset(args)
    val = EvalConfig.val_users_frac
    _check_users(
        dataset, 1.0 - (1.0 - args.test_users_frac) * (1.0 - val), train_config(settings, args)
    )
    vectors, encoder = _encode_items(dataset, settings)
    seeds = args.seeds if args.seeds else (args.seed,)
    cfg = EvalConfig(
        ks=args.k,
        seeds=seeds,
        test_users_frac=args.test_users_frac,
        cold_items_frac=args.cold_items_frac,
        cold_items_by=args.cold_items_by,
        replay_batch=args.replay_batch,
        train=train_config(settings, args),
    )
    from streams.worker import engine_config

    engine_cfg = dataclasses.replace(
        engine_config(settings),
        cold_slots_content_frac=settings.cold_slots_content_frac,
        cold_rank_by=settings.cold_rank_by,
    )
    if args.cold_slots is not None:
        engine_cfg = dataclasses.replace(engine_cfg, cold_item_slots=args.cold_slots)
    if args.mmr_lambda is not None:
        engine_cfg = dataclasses.replace(engine_cfg, mmr_lambda=args.mmr_lambda)
    stream = None
    if args.via_kafka:
        from streams.eval_kafka import KafkaReplay

        stream = KafkaReplay(settings, progress=_say)
    result = run(
        dataset,
        vectors,
        engine_cfg,
        cfg,
        store_factory=_eval_store_factory(),
        encode=encoder.encode,
        encoder_name=encoder.name,
        blend=BlendScorer(settings.popularity_weight, settings.popularity_half_count),
        progress=_say,
        stream=stream,
    )
    print(
        f"{dataset.name}: {len(seeds)} seed(s) {list(seeds)}, test users "
        f"{args.test_users_frac:g}, cold items {args.cold_items_frac:g} ({args.cold_items_by}); "
        "mean ± std over seeds; "
        f"test users replayed {result['path']}"
    )
    # how many users each figure averages over: on a small data set one seed's "± 0.0000"
    # is a handful of users, not precision
    scored = [int(s.get("test_users", 0)) for s in result.get("per_seed", [])]
    print(f"test users scored per seed: {', '.join(map(str, scored))}")
    print(format_table(result["summary"], cfg.n))
    if stream is not None:
        from streams.eval_kafka import format_agreement

        print("the engine's rows through the worker, beside the in-process replay of this run:")
        print(format_agreement(result))
    if result["failures"]:
        print("targets missed:")
        for f in result["failures"]:
            print(f"  - {f}")
    elif result["acceptance_scope_missing"]:
        print(
            "no target missed on this run, but the acceptance is not decided by it: it needs "
            + "; ".join(result["acceptance_scope_missing"])
        )
    else:
        print(
            "targets met: full beats popularity and item-kNN on Recall and NDCG for every "
            "seed and k; cold recall > 0 and >= content-only"
        )
    print(f"({result['seconds']:.0f}s)")
    from encoders.model import runtime_environment

    result["environment"] = {**runtime_environment(), "encoder": encoder.describe()}
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result["summary"], args.plot, cfg.n, label=result["path"])
        print(f"wrote {args.plot}")
    return 0


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from ranking.catalog import item_points
    from ranking.evaluation import catalog_items
    from ranking.ranker import describe, save_ranker
    from ranking.training import ItemTable, train
    from streams.worker import engine_config

    ranker_path = _output_file(args.ranker_out or settings.ranker_file)
    covisit_path = _output_file(args.covisit_out or settings.covisit_file)
    dataset = _load_dataset(args)
    _check_users(dataset, 0.0, train_config(settings, args))
    vectors, encoder = _encode_items(dataset, settings)
    points = item_points(catalog_items(dataset), vectors)
    items = ItemTable([p.id for p in points], vectors, [dict(p.payload) for p in points])
    result = train(
        dataset.interactions,
        items,
        engine_config(settings),
        dataclasses.replace(train_config(settings, args), seed=args.seed),
        encoder=encoder.name,
        progress=_say,
    )
    result.covisit.save(covisit_path)  # the snapshot first: a watcher reloads the ranker last
    save_ranker(ranker_path, result.scorer)
    report = {k: v for k, v in result.report.items() if k != "history"}
    print(json.dumps({"ranker": describe(result.scorer.meta), "report": report}, indent=2))
    print(f"wrote {ranker_path}\nwrote {covisit_path}")
    return 0


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="ml-100k", help="built-in data set (default ml-100k)")
    p.add_argument("--items", help="items JSONL (the `items` contract)")
    p.add_argument("--interactions", help="interactions CSV or JSONL (user_id, item_id, ts, …)")
    p.add_argument("--epochs", type=_at_least(1), help="ranker epochs at most (default: setting)")
    p.add_argument(
        "--negatives", type=_at_least(1), help="ranker training: negatives per list (default 48)"
    )
    p.add_argument(
        "--cold-mask-frac",
        type=_in(0.0, 1.0),
        help="ranker training: share of candidates shown as new items (default: setting)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``eval`` and ``train`` on the ``coldstream`` parser."""
    p = sub.add_parser(
        "eval",
        help="cold-start replay evaluation against baselines",
        description="Replay held-out users' first k interactions through the stream engine and "
        "score Recall/NDCG/HR@20, coverage and cold-item recall against random, popularity, "
        "item-kNN and content-only baselines on the same split.",
    )
    p.set_defaults(handler=_cmd_eval)
    _data_args(p)
    p.add_argument(
        "--test-users-frac",
        type=_in(0.0, 1.0, open_ends=True),
        default=0.2,
        help="share of users held out and scored (default 0.2)",
    )
    p.add_argument(
        "--cold-items-frac",
        type=_in(0.0, 1.0, open_ends=True),
        default=0.1,
        help="share of items held out of all training data, arriving as new items (default 0.1)",
    )
    p.add_argument(
        "--cold-items-by",
        choices=("random", "time"),  # ranking.split.COLD_ITEMS_BY (pandas loads only when used)
        default="random",
        help="which items are new: a random draw (default), or time: the latest to appear in "
        "the log, as new releases (the validation's simulated new items follow suit)",
    )
    p.add_argument(
        "--replay-batch",
        type=_at_least(0),
        default=0,
        help="revealed events per engine batch, in time order, so a list sees earlier batches' "
        "trending and co-visitation (default 0: all test users' events as one batch)",
    )
    p.add_argument("--k", type=_ks, default=(1, 3, 5), help="revealed events, e.g. 1,3,5")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--seeds", type=_ints, help="several seeds, e.g. 0,1,2 (overrides --seed)")
    p.add_argument(
        "--cold-slots",
        type=_at_least(0),
        help="new-item slots of the engine without a trained ranker (default: setting); the "
        "full system's slots are the policy chosen on validation users",
    )
    p.add_argument(
        "--mmr-lambda",
        type=_in(0.0, 1.0),
        help="the MMR lambda validation users weigh against 1.0 (default: the setting's); "
        "the full system takes the better one",
    )
    p.add_argument(
        "--via-kafka",
        action="store_true",
        help="replay the test users through the broker and a real worker process and score "
        "the recommendations topic (a fresh stack per k and engine method; choices on "
        "validation users stay in process)",
    )
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--plot", help="write Recall@20 and cold recall vs k to this PNG")
    p = sub.add_parser(
        "train",
        help="train the ranker and the co-visitation snapshot from an interaction log",
        description="Fit the MLP ranker (early-stopped on a validation slice of users) and count "
        "co-visitation; write both as safetensors (paths: COLDSTREAM_RANKER_PATH, "
        "COLDSTREAM_COVISIT_PATH). A running worker picks them up without a restart.",
    )
    p.set_defaults(handler=_cmd_train)
    _data_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ranker-out", help="ranker file (default: setting)")
    p.add_argument("--covisit-out", help="snapshot file (default: setting)")
