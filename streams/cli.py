"""The ``coldstream`` command line: one sub-command per job, each a thin call into a module."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from infra.runtime import limit_blas_threads
from infra.settings import (
    EMBEDDED_FETCH_MAX_WAIT_MS,
    EMBEDDED_SESSION_TIMEOUT_S,
    Settings,
    get_settings,
    reference,
    unknown_variables,
)
from streams import eval_cli

Handler = Callable[[argparse.Namespace, Settings], int]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.reference:
        print(reference(), end="")
        return 0
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def _cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    """Probe this machine's worker as an orchestrator would (exit 0 healthy, 1 not, 2 off):
    the address and port come from the worker's own settings, so a container health check
    needs no copy of them."""
    import http.client
    import urllib.error
    import urllib.request

    from infra.metrics import probe_url

    if not settings.metrics_port:
        print("the health endpoints are off (COLDSTREAM_METRICS_PORT=0)", file=sys.stderr)
        return 2
    url = probe_url(
        settings.metrics_host, settings.metrics_port, "/readyz" if args.ready else "/healthz"
    )
    # straight to the local worker: an HTTP_PROXY in the environment must not carry the probe
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=args.timeout) as resp:
            print(f"{url}: {resp.status} {resp.read(2048).decode(errors='replace')}")
            return 0
    except urllib.error.HTTPError as exc:  # 503: the worker answers that it is not well
        print(f"{url}: {exc.code} {exc.read(2048).decode(errors='replace')}", file=sys.stderr)
    except (OSError, http.client.HTTPException) as exc:  # refused, timed out, cut off
        print(f"{url}: no answer: {exc}", file=sys.stderr)
    return 1


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from streams.schemas import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        print(path)
    return 0


def _cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from infra.broker import EmbeddedBroker
    from infra.kafka import ensure_topics

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = args.port if args.port is not None else settings.embedded_broker_port or 9092
    with EmbeddedBroker(port, start_timeout_s=settings.embedded_broker_start_timeout_s) as b:
        if args.create_topics:
            ensure_topics(settings, b.bootstrap)
        print(f"embedded broker (Tansu) on {b.bootstrap}; Ctrl-C to stop", flush=True)
        # with a bootstrap set, the settings take the broker for real Kafka (30 s session,
        # 500 ms fetch wait: ~80 ms a message on this broker); these keep the embedded values
        print(
            f"export COLDSTREAM_KAFKA_BOOTSTRAP={b.bootstrap} "
            f"COLDSTREAM_KAFKA_SESSION_TIMEOUT_S={EMBEDDED_SESSION_TIMEOUT_S:g} "
            f"COLDSTREAM_KAFKA_FETCH_MAX_WAIT_MS={EMBEDDED_FETCH_MAX_WAIT_MS}",
            flush=True,
        )
        while not stop.wait(0.5):
            if not b.is_running():
                print("broker exited unexpectedly", file=sys.stderr)
                return 1
    print("broker stopped")
    return 0


def _cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from infra.kafka import ensure_topics, list_topics

    if settings.embedded_kafka:
        print("set COLDSTREAM_KAFKA_BOOTSTRAP (e.g. from `coldstream broker`)", file=sys.stderr)
        return 2
    topics = (
        ensure_topics(settings, settings.kafka_bootstrap)
        if args.action == "create"
        else list_topics(settings, settings.kafka_bootstrap)
    )
    for name, parts in sorted(topics.items()):
        print(f"{name}\t{parts} partitions")
    if args.action == "create":
        wanted = settings.topic_partitions()
        other = {name: parts for name, parts in topics.items() if parts != wanted[name]}
        for name, parts in sorted(other.items()):
            # an operator raising COLDSTREAM_PARTITIONS_* to scale out would keep the old
            # parallelism without a word: existing topics are not changed
            print(
                f"topic {name} exists with {parts} partitions, the settings ask for "
                f"{wanted[name]}: not changed (add partitions with the cluster's own tools; "
                "events keyed by user_id move to other partitions then)",
                file=sys.stderr,
            )
        return 1 if other else 0
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    return run_worker(settings)


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from streams.produce import produce_file

    if settings.embedded_kafka:
        print("set COLDSTREAM_KAFKA_BOOTSTRAP to the broker to publish to", file=sys.stderr)
        return 2
    report = produce_file(settings, settings.kafka_bootstrap, args.kind, Path(args.file))
    print(report.summary())
    if report.delivery_error:
        return 1
    return 0 if report.invalid == 0 or args.allow_invalid else 1


def _cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tail import tail

    if settings.embedded_kafka:
        print("set COLDSTREAM_KAFKA_BOOTSTRAP to the broker to read from", file=sys.stderr)
        return 2
    tail(settings, settings.kafka_bootstrap, limit=args.limit, from_beginning=args.from_beginning)
    return 0


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from streams.export import export_log

    if settings.embedded_kafka:
        print("set COLDSTREAM_KAFKA_BOOTSTRAP to the broker to read from", file=sys.stderr)
        return 2
    report = export_log(settings, settings.kafka_bootstrap, Path(args.out), timeout_s=args.timeout)
    print(report.summary())  # an export with nothing to train on raised ExportError
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.demo import run_demo

    return run_demo(
        settings, users=args.users, max_events=args.events, seed=args.seed, rate=args.rate
    )


def _progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def _report(text: str, report: dict[str, Any], json_path: str | None) -> int:
    """Print a bench's report, and write its figures when ``--json`` asked for them."""
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _cmd_bench_encoder(args: argparse.Namespace, settings: Settings) -> int:
    from encoders.bench import format_bench, run_encoder_bench
    from ranking.datasets import load_movielens_100k
    from streams.worker import encoder_config

    texts = movielens_texts(load_movielens_100k(), args.texts)
    report = run_encoder_bench(
        texts,
        encoder_config(settings),
        naive_sample=args.naive_sample,
        progress=_progress,
    )
    return _report(format_bench(report), report, args.json)


def _cmd_bench_store(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from infra.store_bench import run_store_bench

    with tempfile.TemporaryDirectory(prefix="coldstream-store-bench-") as tmp:
        report = run_store_bench(
            args.backend,
            args.items,
            queries=args.queries,
            path=Path(tmp) / "store",
            clustered=not args.uniform,
            limit=settings.recall_top_n,
        )
    return _report("\n".join(f"{k:<28} {v}" for k, v in report.items()), report, args.json)


def _cmd_bench_engine(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from streams.engine_bench import format_engine_report, run_engine_bench

    with tempfile.TemporaryDirectory(prefix="coldstream-engine-bench-") as tmp:
        # always a scratch embedded store: the bench writes a catalog and 2,000 users
        scratch = {"data_dir": Path(tmp) / "data", "qdrant_url": ""}
        report = run_engine_bench(
            settings.model_copy(update=scratch),
            batch=args.batch,
            batches=args.batches,
            warmup=args.warmup,
            users=args.users,
            session_mean=args.session_mean,
            concurrency=args.concurrency,
            seed=args.seed,
            progress=_progress,
            lists_path=Path(args.lists) if args.lists else None,
        )
    return _report(format_engine_report(report), report, args.json)


def _cmd_bench_broker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.broker_bench import format_broker_report, run_broker_bench

    report = run_broker_bench(
        settings, rate=args.rate, duration_s=args.duration, interval_s=args.interval
    )
    return _report(format_broker_report(report), report, args.json)


def movielens_texts(dataset: object, limit: int) -> list[str]:
    """Real item texts (titles, genres) and user-side texts (genre searches) from MovieLens."""
    from encoders.texts import item_text, user_text
    from ranking.datasets import Dataset

    assert isinstance(dataset, Dataset)
    items = [item_text(i.title, i.category, i.tags, i.brand, i.description) for i in dataset.items]
    genres = sorted({t for i in dataset.items for t in i.tags})
    searches = [user_text("search", f"{g.lower()} movies") for g in genres]
    texts = items + searches
    return texts[:limit] if limit > 0 else texts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coldstream",
        description="Streaming cold-start recommender (Kafka/Faust + BERT encoder + Qdrant). "
        "Settings come from COLDSTREAM_* environment variables (see `coldstream config`).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = add("config", _cmd_config, "print the effective settings (secrets masked)")
    p.add_argument(
        "--reference",
        action="store_true",
        help="print every setting with its default and meaning (Markdown; docs/settings.md)",
    )
    p = add("health", _cmd_health, "probe the local worker's /healthz (or /readyz); exit 0 if ok")
    p.add_argument("--ready", action="store_true", help="probe /readyz instead of /healthz")
    p.add_argument(
        "--timeout",
        type=eval_cli._in(0.0, 3600.0, open_ends=True),
        default=4.0,
        help="seconds to wait for an answer (default 4)",
    )
    p = add("schemas", _cmd_schemas, "write the JSON Schemas of the wire contracts")
    p.add_argument("--out", default="schemas", help="output directory (default: ./schemas)")
    p = add("broker", _cmd_broker, "run the embedded Kafka broker (Tansu) in the foreground")
    p.add_argument(
        "--port",
        type=_port,
        default=None,
        help="port on 127.0.0.1 (default: COLDSTREAM_EMBEDDED_BROKER_PORT if set, else 9092)",
    )
    p.add_argument("--create-topics", action="store_true", help="also create coldstream topics")
    p = add("topics", _cmd_topics, "create or list topics on the configured broker")
    p.add_argument("action", choices=["create", "list"])
    add("worker", _cmd_worker, "run the stream worker (Faust agents for items and events)")
    p = add("produce", _cmd_produce, "publish a JSONL file of items or events (validated)")
    p.add_argument("kind", choices=["items", "events"])
    p.add_argument("file", help="JSON Lines file, one payload per line")
    p.add_argument("--allow-invalid", action="store_true", help="exit 0 even if lines were bad")
    p = add("tail", _cmd_tail, "consume and pretty-print recommendations")
    p.add_argument("--limit", type=int, default=0, help="stop after N messages (0 = forever)")
    p.add_argument("--from-beginning", action="store_true")
    p = add(
        "export",
        _cmd_export,
        "write the items and events topics as a training log (items.jsonl, interactions.jsonl) "
        "for `coldstream train --items … --interactions …`",
    )
    p.add_argument("--out", default="export", help="output directory (default: ./export)")
    p.add_argument(
        "--timeout",
        type=eval_cli._in(0.0, 86400.0, open_ends=True),
        default=600.0,
        help="seconds to reach the topics' ends (default 600)",
    )
    p = add("demo", _cmd_demo, "end-to-end demo on MovieLens-100K with the embedded stack")
    p.add_argument("--users", type=int, default=200, help="users whose events are replayed")
    p.add_argument("--events", type=int, default=20000, help="at most this many events")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="events/s of the paced (latency) phase after the burst; 0 = burst everything",
    )
    bench = add(
        "bench",
        _cmd_bench,
        "end-to-end benchmark on the embedded stack (`bench encoder`: the encoder alone)",
    )
    bench.add_argument("--duration", type=float, default=60.0, help="seconds of sending")
    bench.add_argument("--rate", type=float, default=0.0, help="events/s (0 = as fast as possible)")
    _traffic_args(bench)
    bench.add_argument("--with-encoder", action="store_true", help="also run `bench encoder`")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bsub = bench.add_subparsers(dest="bench", required=False, metavar="BENCH")
    p = bsub.add_parser("encoder", help="encoder throughput: naive vs micro-batched")
    p.set_defaults(handler=_cmd_bench_encoder)
    p.add_argument("--texts", type=int, default=1000, help="texts to encode (0 = all)")
    p.add_argument("--naive-sample", type=int, default=150, help="texts for one-at-a-time modes")
    # SUPPRESS: `bench --json F encoder` keeps the F given before the sub-command
    p.add_argument(
        "--json", default=argparse.SUPPRESS, help="also write the figures to this JSON file"
    )
    p = bsub.add_parser("store", help="vector-store calls of a stream batch at catalog scale")
    p.set_defaults(handler=_cmd_bench_store)
    p.add_argument("--backend", choices=["edge", "qdrant-local"], default="edge")
    p.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    p.add_argument("--queries", type=int, default=2000, help="single queries timed")
    p.add_argument("--uniform", action="store_true", help="uniform vectors (HNSW worst case)")
    # SUPPRESS: `bench --json F encoder` keeps the F given before the sub-command
    p.add_argument(
        "--json", default=argparse.SUPPRESS, help="also write the figures to this JSON file"
    )
    p = bsub.add_parser(
        "engine", help="the worker's batch work in process (no broker, no Faust), timed per batch"
    )
    p.set_defaults(handler=_cmd_bench_engine)
    p.add_argument("--batch", type=int, default=200, help="events per batch")
    p.add_argument("--batches", type=int, default=100, help="batches timed")
    p.add_argument("--warmup", type=int, default=20, help="batches run first, not timed")
    _traffic_args(p, sub=True)
    # SUPPRESS: `bench --json F encoder` keeps the F given before the sub-command
    p.add_argument(
        "--json", default=argparse.SUPPRESS, help="also write the figures to this JSON file"
    )
    p.add_argument(
        "--lists",
        help="write the timed batches' lists to this JSONL file (user, items), to diff two runs",
    )
    p = bsub.add_parser("broker", help="the Kafka broker alone: fixed-rate produce + consume")
    p.set_defaults(handler=_cmd_bench_broker)
    p.add_argument("--rate", type=float, default=500.0, help="records/s")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of sending")
    p.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    # SUPPRESS: `bench --json F encoder` keeps the F given before the sub-command
    p.add_argument(
        "--json", default=argparse.SUPPRESS, help="also write the figures to this JSON file"
    )
    eval_cli.add_commands(sub)  # eval, train (issue 5)
    return parser


def _traffic_args(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """The options of the shoppers model (streams.traffic) that `bench` and `bench engine` share;
    ``sub``: the sub-command's copies, whose absence keeps a value given before the
    sub-command (`bench --users 7 engine`) instead of putting their defaults over it."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if sub else value

    parser.add_argument("--users", type=int, default=default(2000), help="synthetic users")
    parser.add_argument(
        "--session-mean",
        type=float,
        default=default(5.0),
        help="events per session (1 = worst case)",
    )
    parser.add_argument("--concurrency", type=int, default=default(50), help="sessions at a time")
    parser.add_argument("--seed", type=int, default=default(0))


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    import tempfile

    from streams.bench import format_report, run_bench

    with tempfile.TemporaryDirectory(prefix="coldstream-bench-") as tmp:
        run_settings = settings.model_copy(update={"data_dir": Path(tmp) / "data"})
        report = run_bench(
            run_settings,
            duration_s=args.duration,
            rate=args.rate,
            users=args.users,
            session_mean=args.session_mean,
            concurrency=args.concurrency,
            seed=args.seed,
            log_dir=Path(tmp),
        )
    text = format_report(report)
    if args.with_encoder:
        print(text, flush=True)  # the end-to-end figures first, not after the encoder's run
        from encoders.bench import format_bench, run_encoder_bench
        from ranking.datasets import load_movielens_100k
        from streams.worker import encoder_config

        enc = run_encoder_bench(
            movielens_texts(load_movielens_100k(), 1000), encoder_config(settings), naive_sample=150
        )
        text = format_bench(enc)
        report["encoder"] = enc
    return _report(text, report, args.json)


# errors that are the user's input or environment (a data file, a model directory, a broker
# or store not there, a port taken): one line on stderr, not a traceback (which the log keeps
# at DEBUG); module → exception class, looked up only in modules already imported (a module
# never imported raised nothing, and importing them all would load torch for `config`)
_USER_ERRORS = {
    "ranking.datasets": "DatasetError",
    "encoders.model": "EncoderLoadError",
    "ranking.ranker": "RankerLoadError",
    "ranking.covisit": "CovisitError",
    "infra.kafka": "TopicAdminError",
    "streams.export": "ExportError",
    "infra.broker": "BrokerError",
    "streams.eval_kafka": "ViaKafkaError",
    "ranking.store": "StoreUnavailable",
}


def _user_error_types() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [OSError]
    for module, name in _USER_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded is not None:
            found.append(getattr(loaded, name))
    return tuple(found)


def _settings_problems(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        # a rule across settings (a model validator) names no one variable
        lines.append(f"  COLDSTREAM_{field.upper()}: {err['msg']}" if field else f"  {err['msg']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"coldstream: error: invalid settings\n{_settings_problems(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in unknown_variables():
        logging.getLogger("coldstream").warning(
            "%s names no setting and is ignored (misspelled? `coldstream config --reference` "
            "lists them all)",
            name,
        )
    limit_blas_threads(settings.numpy_blas_threads)
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except Exception as exc:
        if not isinstance(exc, _user_error_types()):
            raise
        logging.getLogger("coldstream").debug("%s failed", args.command, exc_info=True)
        print(f"coldstream: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
