"""``coldstream bench``: end-to-end throughput and latency through the real stack.

Publishes the MovieLens catalog as items, then behavior events from synthetic shoppers at a fixed
rate (open loop) or as fast as possible, for a bounded time; reads the output topic on a second
thread and reports events/s in, recommendations/s out, the backlog over time, the worker's CPU
and RSS, and latency percentiles over every event a list answers: from when the event was due
(open loop) to its list's production (the output record's timestamp, set when the worker hands
it to its producer), and to its reading by this process's consumer.

Traffic model: :class:`streams.traffic.ShopperTraffic` (browsing sessions of Zipf-popular
clicks, interleaved), shared with ``bench engine``.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE
from tqdm import tqdm

from infra import metrics
from infra.settings import Settings
from ranking.datasets import load_movielens_100k
from streams.core_wait import ThreadTimes, core_wait, thread_times
from streams.demo import item_payload
from streams.produce import Publisher
from streams.stack import LocalStack, scratch_settings
from streams.tail import output_consumer
from streams.traffic import ShopperTraffic


@dataclass
class _Collector:
    """Output-topic reader on its own thread: a latency for every event a list covers.

    The worker lists each user once per batch, naming the user's last event of the batch as
    the trigger; the user's earlier events of the batch are answered by the same list, and
    they waited longest. So each list times every event of its user sent up to its trigger,
    not the trigger alone (before 2026-11-27 only triggers were timed: the slower the run,
    the bigger the batches and the fewer the events timed, 29% at 400-event batches).
    """

    settings: Settings
    bootstrap: str
    latencies_ms: list[float] = field(default_factory=list)  # sent → list produced
    received_ms: list[float] = field(default_factory=list)  # sent → list read here
    sent_times: list[float] = field(default_factory=list)  # aligned with latencies_ms
    received: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    # set once the consumer group has given the reader its partitions: lists produced before
    # would wait for the join (about 3 s on the embedded broker) and read as slow
    ready: threading.Event = field(default_factory=threading.Event)
    _pending: dict[str, collections.deque[tuple[str, float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, user: str, event_id: str, at: float) -> None:
        """An event of ``user`` is sent (``at``: when it was due); call before sending it."""
        with self._lock:
            self._pending.setdefault(user, collections.deque()).append((event_id, at))

    def covered(self, user: str, trigger: str) -> list[tuple[str, float]]:
        """The events of ``user`` up to ``trigger``, in send order, taken off the pending ones
        (none when the trigger was answered already: a list sent again)."""
        with self._lock:
            pending = self._pending.get(user)
            if not pending or all(event_id != trigger for event_id, _ in pending):
                return []
            out = []
            while pending:
                out.append(pending.popleft())
                if out[-1][0] == trigger:
                    break
            return out

    def run(self) -> None:
        consumer = output_consumer(
            self.settings, self.bootstrap, self.settings.topic_recommendations
        )
        try:
            while not self.stop.is_set() and not self.ready.is_set():
                consumer.consume(1000, 0.1)  # joins the group; nothing is sent yet: no lists
                if consumer.assignment():
                    self.ready.set()
            while not self.stop.is_set():
                for msg in consumer.consume(1000, 0.1):
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    got = time.time()
                    rec = json.loads(value)
                    self.received += 1
                    kind, produced_ms = msg.timestamp()  # the worker's hand-off to its producer
                    for _event_id, sent in self.covered(rec["user_id"], rec["trigger_event_id"]):
                        self.received_ms.append((got - sent) * 1000.0)
                        if kind != TIMESTAMP_NOT_AVAILABLE:
                            self.latencies_ms.append(produced_ms - sent * 1000.0)
                            self.sent_times.append(sent)
        finally:
            consumer.close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(values)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "p99": round(float(np.percentile(arr, 99)), 2),
        "max": round(float(arr.max()), 2),
    }


def backlog_growth(series: list[tuple[float, float]], duration_s: float) -> float | None:
    """How fast the backlog grows once the run has warmed up: the least-squares slope (events
    per second) of its samples from a third of ``duration_s`` on; None with fewer than 3.

    The issue's "no growing backlog" read directly: the applied rate alone mixes the backlog's
    growth with the drain after the last send (a backlog of 4,000 events growing by 30/s still
    reads as ~1,940 applied per second at 2,000/s over 60 s).
    """
    late = [(t, b) for t, b in series if t >= duration_s / 3]
    if len(late) < 3:
        return None
    t = np.array([p[0] for p in late], dtype=np.float64)
    b = np.array([p[1] for p in late], dtype=np.float64)
    if np.ptp(t) == 0:
        return None
    slope = float(np.polyfit(t, b, 1)[0])
    return round(slope, 1)


def run_bench(
    settings: Settings,
    *,
    duration_s: float = 60.0,
    rate: float = 0.0,
    users: int = 2000,
    session_mean: float = 5.0,
    concurrency: int = 50,
    seed: int = 0,
    drain_timeout_s: float = 60.0,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    """One bounded run; returns JSON-able figures."""
    dataset = load_movielens_100k()
    item_ids = [i.item_id for i in dataset.items]
    traffic = ShopperTraffic(
        item_ids, users=users, session_mean=session_mean, concurrency=concurrency, seed=seed
    )
    # on configured servers the run gets topics, a consumer group and collections of its own
    settings, scratch = scratch_settings(settings, "bench")
    with LocalStack(settings, log_dir=log_dir, scratch=scratch) as stack:
        assert stack.worker is not None and stack.worker.proc is not None
        worker = psutil.Process(stack.worker.proc.pid)
        broker = psutil.Process(stack.broker.pid) if stack.broker and stack.broker.pid else None
        publisher = Publisher(settings, stack.bootstrap)
        # the catalog as new items: from the first publish to a ready worker until it has
        # encoded and upserted every one (searchable from then on), its metric read every 0.1 s
        stack.worker.wait_ready(timeout_s=300)
        indexing_start = time.monotonic()
        for item in dataset.items:
            publisher.item(item_payload(item))
        publisher.flush()
        stack.worker.wait_for("coldstream_items_indexed_total", len(item_ids), timeout_s=300)
        indexing_s = time.monotonic() - indexing_start
        collector = _Collector(settings, stack.bootstrap)
        reader = threading.Thread(target=collector.run, name="bench-reader", daemon=True)
        reader.start()
        if not collector.ready.wait(60):
            raise RuntimeError("the bench's output reader got no partitions within 60 s")
        rss_start = worker.memory_info().rss
        cpu_start = worker.cpu_times()
        broker_cpu_start = cpu_seconds(broker)
        client = psutil.Process()  # this process: the load generator and the reader
        client_cpu_start = cpu_seconds(client)
        machine_start = psutil.cpu_times()
        pids = {"worker": worker.pid, "client": client.pid}
        if broker is not None:
            pids["broker"] = broker.pid
        threads_start = {name: thread_times(pid) for name, pid in pids.items()}
        backlog: list[tuple[float, float]] = []
        applied_series: list[tuple[float, float]] = []
        sent = 0
        send_lag_max = 0.0
        start = time.time()
        next_sample = start + 1.0
        with tqdm(total=int(duration_s), desc="bench", unit="s", file=sys.stderr) as bar:
            while (now := time.time()) - start < duration_s:
                if rate > 0:
                    due = int((now - start) * rate)
                    if sent >= due:
                        time.sleep(min(0.001, max(0.0, start + (sent + 1) / rate - now)))
                        continue
                    # latency counts from when the event was due: a send held up (by the
                    # scrape below, by this process) must not hide its wait (coordinated
                    # omission)
                    intended = start + (sent + 1) / rate
                else:
                    intended = time.time()
                event = traffic.next_event(int(time.time() * 1000))
                collector.sent(str(event["user_id"]), str(event["event_id"]), intended)
                publisher.event(event)
                send_lag_max = max(send_lag_max, time.time() - intended)
                sent += 1
                if now >= next_sample:
                    scraped = stack.worker.metrics()
                    if scraped:  # a failed scrape is no sample (it read as nothing applied)
                        applied = metrics.total(scraped, "coldstream_profile_updates_total")
                        backlog.append((round(now - start, 1), sent - applied))
                        applied_series.append((round(now - start, 1), applied))
                    bar.update(int(now - start) - bar.n)
                    next_sample += 1.0
        publisher.flush()
        send_seconds = time.time() - start
        deadline = time.monotonic() + drain_timeout_s
        applied = 0.0
        while time.monotonic() < deadline:
            scraped = stack.worker.metrics()
            if scraped:
                applied = max(applied, metrics.total(scraped, "coldstream_profile_updates_total"))
            if applied >= sent:
                break
            time.sleep(0.2)
        drained = applied >= sent
        drained_at = time.time()
        time.sleep(1.0)  # let the last recommendations reach the reader
        # before the reader stops: its threads (librdkafka's too) end with it, and a thread
        # that ended is missing from the sample
        threads_end: dict[str, dict[int, ThreadTimes]] = {
            name: thread_times(pid) for name, pid in pids.items()
        }
        threads_window_s = time.time() - start
        collector.stop.set()
        reader.join(10)
        cpu_end = worker.cpu_times()
        broker_cpu_end = cpu_seconds(broker)
        client_cpu_end = cpu_seconds(client)
        machine_end = psutil.cpu_times()
        # The counters ran past drained_at (the reader's last second and its join), so CPU
        # shares are over the counters' own window; total_s would overstate them.
        cpu_window_s = time.time() - start
        machine_busy_s = busy_seconds(machine_start, machine_end)
        machine_steal_s = busy_seconds(machine_start, machine_end, ("steal",))
        rss_end = worker.memory_info().rss
        worker_metrics = stack.worker.metrics()
    cpu_s = (cpu_end.user + cpu_end.system) - (cpu_start.user + cpu_start.system)
    # drift: the first and the last tenth of the sending time, side by side
    tenth = duration_s / 10.0
    early = [
        lat
        for t, lat in zip(collector.sent_times, collector.latencies_ms, strict=True)
        if t - start <= tenth
    ]
    late_lat = [
        lat
        for t, lat in zip(collector.sent_times, collector.latencies_ms, strict=True)
        if t - start >= duration_s - tenth
    ]
    total_s = drained_at - start
    half = [b for t, b in backlog if t <= duration_s / 2]
    late = [b for t, b in backlog if t > duration_s / 2]
    return {
        "mode": f"open loop at {rate:g} events/s" if rate > 0 else "as fast as possible",
        "duration_s": duration_s,
        "users": users,
        "session_mean": session_mean,
        "concurrency": concurrency,
        "catalog_items": len(item_ids),
        "catalog_indexed_s": round(indexing_s, 2),
        "items_indexed_per_s": round(len(item_ids) / indexing_s, 1),
        "events_sent": sent,
        "events_applied": int(applied),
        "send_rate_per_s": round(sent / send_seconds, 1),
        "processed_rate_per_s": round(applied / total_s, 1),
        # the applied counter's slope while sending, from a third of the run on: the drain
        # after the last send (the load generator idle) does not flatter it
        "applied_rate_per_s": backlog_growth(applied_series, duration_s),
        "send_lag_max_ms": round(1000.0 * send_lag_max, 1),
        "drained": drained,
        "recommendations": collector.received,
        "recommendations_per_s": round(collector.received / total_s, 1),
        "drain_s_after_send": round(drained_at - start - send_seconds, 2),
        "latency_ms": percentiles(collector.latencies_ms),
        "latency_samples": len(collector.latencies_ms),
        # the same events, to the list read by this process's consumer (+ its fetch wait)
        "latency_ms_received": percentiles(collector.received_ms),
        "latency_ms_first_tenth": percentiles(early),
        "latency_ms_last_tenth": percentiles(late_lat),
        "backlog_first_half_max": max(half, default=0),
        "backlog_second_half_max": max(late, default=0),
        "backlog_series": backlog,
        "backlog_growth_per_s": backlog_growth(backlog, duration_s),
        "worker_cpu_percent": round(100.0 * cpu_s / cpu_window_s, 1),
        "broker_cpu_percent": (
            round(100.0 * (broker_cpu_end - broker_cpu_start) / cpu_window_s, 1) if broker else None
        ),
        # the same machine runs the load: at 2,000 events/s the generator and the reader took
        # ~20% of a core and the broker ~28%, beside the worker's ~90% (docs/performance-history.md)
        "client_cpu_percent": round(100.0 * (client_cpu_end - client_cpu_start) / cpu_window_s, 1),
        "machine_cpu_percent": round(100.0 * machine_busy_s / cpu_window_s, 1),
        "machine_cores": psutil.cpu_count() or 1,
        # on a shared machine a process may be ready to run and wait for a core: per process,
        # its threads' time on a core and waiting for one (streams.core_wait; Linux only)
        "core_wait": {
            name: (
                asdict(w) if (w := core_wait(threads_start[name], end, threads_window_s)) else None
            )
            for name, end in threads_end.items()
        },
        "cpu_window_s": round(cpu_window_s, 2),
        # a virtual machine's cores taken by its host meanwhile (runs are comparable only
        # when this is low)
        "machine_steal_percent": round(100.0 * machine_steal_s / cpu_window_s, 1),
        "batch_mean_events": _mean(worker_metrics, "coldstream_batch_size", "events"),
        "batch_mean_ms": _ms(_mean(worker_metrics, "coldstream_batch_duration_seconds", "events")),
        "worker_latency_mean_ms": _ms(
            _mean(worker_metrics, "coldstream_event_to_recommendation_seconds")
        ),
        "worker_rss_mb_start": round(rss_start / 2**20, 1),
        "worker_rss_mb_end": round(rss_end / 2**20, 1),
        "dead_letters": metrics.total(worker_metrics, "coldstream_dead_letters_total"),
        "scratch": list(scratch.topics + scratch.collections),
        "scratch_left_behind": stack.left_behind,
    }


def cpu_seconds(proc: psutil.Process | None) -> float:
    """User + system CPU seconds of ``proc`` so far (0 when there is none or it is gone)."""
    if proc is None:
        return 0.0
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")  # user includes guest time


def busy_seconds(start: Any, end: Any, fields: tuple[str, ...] = _BUSY_FIELDS) -> float:
    """CPU seconds all cores spent in ``fields`` between two ``psutil.cpu_times()`` (default:
    busy, so idle, I/O wait and time stolen by the hypervisor are left out)."""

    def total(times: Any) -> float:
        return sum(float(getattr(times, name, 0.0)) for name in fields)

    return max(total(end) - total(start), 0.0)


def _mean(samples: dict[str, float], name: str, agent: str | None = None) -> float | None:
    """Mean of a histogram from its ``_sum`` and ``_count`` (one agent's, or all)."""
    label = f"{{agent={agent}}}" if agent else ""
    if agent:
        count = samples.get(f"{name}_count{label}", 0.0)
        value = samples.get(f"{name}_sum{label}", 0.0)
    else:
        count = metrics.total(samples, f"{name}_count")
        value = metrics.total(samples, f"{name}_sum")
    return round(value / count, 4) if count else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000.0 * seconds, 1)


def format_report(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    rec = report["latency_ms_received"]
    return "\n".join(
        [
            f"coldstream bench — {report['mode']}, {report['duration_s']:g} s, "
            f"{report['users']} users, sessions of {report['session_mean']:g} events on average"
            f" ({report['concurrency']} at a time), {report['catalog_items']} items",
            f"catalog as new items       {report['catalog_items']} published → searchable in"
            f" {report['catalog_indexed_s']} s ({report['items_indexed_per_s']}/s, encoded and"
            " upserted by the worker)",
            f"events sent / applied      {report['events_sent']} / {report['events_applied']}"
            f"  (send {report['send_rate_per_s']}/s, processed {report['processed_rate_per_s']}/s;"
            f" applied while sending {report['applied_rate_per_s']}/s)",
            f"recommendations            {report['recommendations']}"
            f" ({report['recommendations_per_s']}/s)",
            f"event→recommendation ms    p50 {lat['p50']} · p95 {lat['p95']} · p99 {lat['p99']}"
            f" · max {lat['max']}  ({report['latency_samples']} of {report['events_sent']} events"
            " timed, from when each was due to its list's production)",
            f"  … to a consumer's read   p50 {rec['p50']} · p95 {rec['p95']} · p99 {rec['p99']}"
            f" · max {rec['max']}  (send lag max {report['send_lag_max_ms']} ms)",
            f"latency drift ms (p50/p99) first tenth {report['latency_ms_first_tenth']['p50']}"
            f"/{report['latency_ms_first_tenth']['p99']} · last tenth"
            f" {report['latency_ms_last_tenth']['p50']}/{report['latency_ms_last_tenth']['p99']}",
            f"backlog max (events)       first half {report['backlog_first_half_max']:.0f}"
            f" · second half {report['backlog_second_half_max']:.0f}"
            + (
                f" · drained {report['drain_s_after_send']} s after the last send"
                if report["drained"]
                else f" · NOT drained {report['drain_s_after_send']} s after the last send"
            ),
            f"backlog growth             {_growth(report)}",
            f"worker                     CPU {report['worker_cpu_percent']}% · RSS"
            f" {report['worker_rss_mb_start']} → {report['worker_rss_mb_end']} MB"
            f" · broker CPU {report['broker_cpu_percent']}%",
            f"machine                    CPU {report['machine_cpu_percent']}% of"
            f" {100 * report['machine_cores']}% · this client (load + reader)"
            f" {report['client_cpu_percent']}% · stolen by the host"
            f" {report['machine_steal_percent']}%",
            *_core_wait_lines(report),
            f"behavior batches           mean {report['batch_mean_events']} events"
            f" in {report['batch_mean_ms']} ms · worker-side latency mean"
            f" {report['worker_latency_mean_ms']} ms (topic arrival → emit)",
            f"dead letters               {report['dead_letters']:.0f}",
            *_scratch_lines(report),
        ]
    )


def _core_wait_lines(report: dict[str, Any]) -> list[str]:
    waits = report.get("core_wait") or {}
    shown = [
        f"{label} {w['waiting_percent']}%"
        + (
            f" (busiest thread {w['busiest_thread_on_core_percent']}% on a core,"
            f" {w['busiest_thread_waiting_percent']}% waiting)"
            if name == "worker"
            else ""
        )
        for name, label in (("worker", "worker"), ("broker", "broker"), ("client", "this client"))
        if (w := waits.get(name))
    ]
    if not shown:
        return []
    return [f"waiting for a core         {' · '.join(shown)}  (threads summed, of the window)"]


def _scratch_lines(report: dict[str, Any]) -> list[str]:
    if not report.get("scratch"):
        return []
    left = report.get("scratch_left_behind") or []
    return [
        f"run's own names            {', '.join(report['scratch'])}"
        + ("" if left else " (dropped after the run)"),
        *(f"left behind                {line}" for line in left),
    ]


def _growth(report: dict[str, Any]) -> str:
    growth = report.get("backlog_growth_per_s")
    if growth is None:
        return "too few samples (runs shorter than ~5 s)"
    since = report["duration_s"] / 3
    return f"{growth:+.1f} events/s from {since:.0f} s on (least squares; ~0 = keeping up)"
