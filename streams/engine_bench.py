"""``coldstream bench engine``: the worker's per-batch work in process, without broker or Faust.

The end-to-end bench shares two cores between the bench, the embedded broker and the worker, and
its figures move ±15% between runs; this one feeds the same traffic model straight into
:meth:`streams.pipeline.Pipeline.on_events` (decode, profile reads and writes, recall, ranking,
output records) in fixed-size batches, so a change to the batch path can be timed alone. The
store time comes from the worker's own Prometheus histogram; the rest of a batch is Python and
the ranker. Settings as for the worker (a trained ranker through ``COLDSTREAM_RANKER_PATH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from infra import metrics
from infra.runtime import configure_gc
from infra.settings import Settings
from ranking.datasets import load_movielens_100k
from streams.demo import item_payload
from streams.pipeline import Record
from streams.traffic import ShopperTraffic
from streams.worker import build_pipeline, open_store

_STORE_OPS = ("search", "retrieve", "upsert")
BENCH_EPOCH_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the catalog's creation time


def _store_seconds() -> dict[str, float]:
    out: dict[str, float] = {}
    for op in _STORE_OPS:
        value = metrics.REGISTRY.get_sample_value(
            "coldstream_store_operation_duration_seconds_sum", {"operation": op}
        )
        out[op] = float(value or 0.0)
    return out


def run_engine_bench(
    settings: Settings,
    *,
    batch: int = 200,
    batches: int = 100,
    warmup: int = 20,
    users: int = 2000,
    session_mean: float = 5.0,
    concurrency: int = 50,
    seed: int = 0,
    partitions: int = 4,
    progress: Callable[[str], None] | None = None,
    lists_path: Path | None = None,
) -> dict[str, Any]:
    """Index the MovieLens catalog, then time ``batches`` batches of ``batch`` events.

    It writes that catalog and the synthetic users into the store ``settings`` names: give it a
    scratch one (the CLI runs it on a temporary embedded store, whatever is configured).
    """
    if batch < 1 or batches < 1 or warmup < 0:
        raise ValueError("batch and batches must be at least 1, warmup at least 0")
    return asyncio.run(
        _run(
            settings,
            batch=batch,
            batches=batches,
            warmup=warmup,
            traffic_kw={
                "users": users,
                "session_mean": session_mean,
                "concurrency": concurrency,
                "seed": seed,
            },
            partitions=partitions,
            progress=progress or (lambda _msg: None),
            lists_path=lists_path,
        )
    )


async def _run(
    settings: Settings,
    *,
    batch: int,
    batches: int,
    warmup: int,
    traffic_kw: dict[str, Any],
    partitions: int,
    progress: Callable[[str], None],
    lists_path: Path | None,
) -> dict[str, Any]:
    dataset = load_movielens_100k()
    store = open_store(settings)
    pipeline = build_pipeline(settings, store)
    try:
        await pipeline.start()
        await pipeline.on_partitions_assigned(list(range(partitions)))
        progress(f"indexing {len(dataset.items)} items")
        # simulated time from a fixed epoch: item ages, the new-item window and trending decay
        # then do not depend on when the bench runs, so two runs make the same lists
        now = BENCH_EPOCH_S
        pipeline.engine.clock = lambda: ts_ms / 1000.0
        records = [
            Record(
                settings.topic_items,
                0,
                n,
                item.item_id.encode(),
                json.dumps(item_payload(item)).encode(),
                now,
            )
            for n, item in enumerate(dataset.items)
        ]
        for start in range(0, len(records), settings.item_batch_max):
            await pipeline.on_items(records[start : start + settings.item_batch_max])
        configure_gc(freeze=settings.gc_freeze_at_start, gen0_threshold=settings.gc_gen0_threshold)
        traffic = ShopperTraffic([i.item_id for i in dataset.items], **traffic_kw)
        ts_ms = int(now * 1000)
        offsets = [0] * partitions

        def next_batch() -> list[Record]:
            nonlocal ts_ms
            out = []
            for _ in range(batch):
                ts_ms += 1
                event = traffic.next_event(ts_ms)
                user = str(event["user_id"])
                part = _partition(user, partitions)
                offsets[part] += 1
                value = json.dumps(event).encode()
                out.append(
                    Record(
                        settings.topic_events,
                        part,
                        offsets[part],
                        user.encode(),
                        value,
                        time.time(),
                    )
                )
            return out

        progress(f"warm-up: {warmup} batches")
        for _ in range(warmup):
            await pipeline.on_events(next_batch())
        times: list[float] = []
        users_per_batch: list[int] = []
        digest = hashlib.sha256()
        cpu_s = 0.0  # the process's CPU time inside the timed calls (all its threads)
        store_before = _store_seconds()
        with (
            tqdm(total=batches, desc="bench engine", unit="batch", file=sys.stderr) as bar,
            open(lists_path, "wb") if lists_path else contextlib.nullcontext() as lists,
        ):
            for _ in range(batches):
                records_in = next_batch()
                began, cpu_began = time.perf_counter(), time.process_time()
                out = await pipeline.on_events(records_in)
                times.append(time.perf_counter() - began)
                cpu_s += time.process_time() - cpu_began
                users_per_batch.append(len(out.recommendations))
                for _key, value in out.recommendations:
                    fingerprint = _list_fingerprint(value)
                    digest.update(fingerprint)
                    if lists is not None:
                        lists.write(fingerprint + b"\n")
                bar.update(1)
        store_after = _store_seconds()
    finally:
        await pipeline.stop()
    ms = np.asarray(times) * 1000.0
    total_s = float(np.sum(times))
    return {
        "batch_events": batch,
        "batches": batches,
        "warmup_batches": warmup,
        "traffic": traffic_kw,
        "ranker": pipeline.engine.scorer.version,
        "users_per_batch_mean": round(float(np.mean(users_per_batch)), 1),
        "batch_ms": {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "mean": round(float(ms.mean()), 2),
            "p90": round(float(np.percentile(ms, 90)), 2),
            "max": round(float(ms.max()), 2),
        },
        # the engine warms up (co-visitation rows and users' histories fill): batch time over
        # the run, as the first and the last tenth of the timed batches
        "batch_ms_p50_first_tenth": round(float(np.median(ms[: max(1, batches // 10)])), 2),
        "batch_ms_p50_last_tenth": round(float(np.median(ms[-max(1, batches // 10) :])), 2),
        "events_per_s": round(batch * batches / total_s, 1),
        # steadier than wall time on a shared host: CPU is not counted while descheduled
        "cpu_ms_per_batch": round(1000.0 * cpu_s / batches, 2),
        "store_ms_per_batch": {
            op: round(1000.0 * (store_after[op] - store_before[op]) / batches, 2)
            for op in _STORE_OPS
        },
        # the timed batches' lists (users, items, scores, sources, reasons): equal digests
        # mean a speed change left every list as it was (same settings, same seed)
        "lists_digest": digest.hexdigest()[:16],
    }


def _list_fingerprint(value: bytes) -> bytes:
    """What a recommendation record recommends, without its clock fields (generated_at,
    latency_ms), as canonical JSON bytes."""
    rec = json.loads(value)
    return json.dumps([rec["user_id"], rec["items"]], sort_keys=True).encode()


def _partition(user_id: str, partitions: int) -> int:
    """A stable stand-in for Kafka's key partitioner (only ownership per user matters here)."""
    return zlib.crc32(user_id.encode()) % partitions


def format_engine_report(report: dict[str, Any]) -> str:
    ms = report["batch_ms"]
    store = report["store_ms_per_batch"]
    in_store = sum(store.values())
    return "\n".join(
        [
            f"coldstream bench engine — {report['batches']} batches of {report['batch_events']}"
            f" events in process (after {report['warmup_batches']} warm-up), ranker"
            f" {report['ranker']}",
            f"batch ms                   p50 {ms['p50']} · mean {ms['mean']} · p90 {ms['p90']}"
            f" · max {ms['max']}  ({report['users_per_batch_mean']} users per batch)",
            f"batch ms drift (p50)       first tenth {report['batch_ms_p50_first_tenth']}"
            f" · last tenth {report['batch_ms_p50_last_tenth']}",
            f"throughput                 {report['events_per_s']} events/s (one thread of work)",
            f"process CPU per batch      {report['cpu_ms_per_batch']} ms (all threads, inside"
            " the timed calls)",
            f"lists digest               {report['lists_digest']}  (equal = the same lists)",
            f"store ms per batch         search {store['search']} · retrieve {store['retrieve']}"
            f" · upsert {store['upsert']}  (the rest, {ms['mean'] - in_store:.1f} ms: Python"
            " and the ranker)",
        ]
    )
