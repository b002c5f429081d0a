"""``coldstream export``: the ``items`` and ``events`` topics as a training log.

A retraining cycle needs the log the stream has seen, in the generic format ``coldstream train``
and ``coldstream eval`` read (``ranking.datasets.load_generic``): an items JSONL under the
``items`` contract and an interactions JSONL. This reads both topics from their first retained
offset to the end they had when it started (records arriving meanwhile wait for the next run),
with a consumer that is assigned partitions and commits nothing, so no consumer group sees it.

The records are decoded by the contracts the worker applies, so what is exported is what the
worker could apply: an invalid record (which the worker dead-letters) is skipped and counted, as
is a repeated event id of one user (a producer's retry; the worker applies it once). An item's
latest record with content is kept; a retirement keeps the content before it (a history is not
a catalog: the log names retired items), and an id that never had content is dropped. An event
naming an item the ``items`` topic does not hold (its records aged out of retention, or the
catalog was loaded another way) is dropped and counted: ``train`` would refuse it.

The snapshot ``train`` then writes is dated by the latest event exported (``counted_until``), and
a worker that loads it drops the online co-visitation counts it holds of events up to then.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from tqdm import tqdm

from infra.kafka import TopicAdminError, client_config, list_topics
from infra.settings import Settings
from streams.pipeline import limits_from
from streams.schemas import BehaviorEvent, InvalidPayload, ItemEvent, decode

log = logging.getLogger(__name__)
ITEMS_FILE = "items.jsonl"
INTERACTIONS_FILE = "interactions.jsonl"


@dataclass
class ExportReport:
    out_dir: Path
    item_records: int = 0
    items: int = 0
    items_without_content: int = 0
    invalid_items: int = 0
    event_records: int = 0
    interactions: int = 0
    invalid_events: int = 0
    duplicate_events: int = 0
    unknown_item_events: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    # topic → partition → (first offset read, end offset at the start)
    ranges: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the first few skipped records, why

    def summary(self) -> str:
        def when(ts: float | None) -> str:
            return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

        lines = [
            f"items: {self.items} from {self.item_records} record(s) "
            f"({self.invalid_items} invalid, {self.items_without_content} never with content) "
            f"→ {self.out_dir / ITEMS_FILE}",
            f"interactions: {self.interactions} from {self.event_records} record(s) "
            f"({self.invalid_events} invalid, {self.duplicate_events} repeated event ids, "
            f"{self.unknown_item_events} naming an item not exported) "
            f"→ {self.out_dir / INTERACTIONS_FILE}",
            f"event times {when(self.first_ts)} … {when(self.last_ts)}",
        ]
        lines += [f"  skipped {e}" for e in self.examples]
        return "\n".join(lines)


_EXAMPLES = 10


def export_log(
    settings: Settings,
    bootstrap: str,
    out_dir: Path,
    *,
    timeout_s: float = 600.0,
    progress: bool = True,
) -> ExportReport:
    """Write ``out_dir``/items.jsonl and interactions.jsonl from the topics; see the module."""
    existing = list_topics(settings, bootstrap)
    for topic in (settings.topic_items, settings.topic_events):
        if topic not in existing:
            raise TopicAdminError(f"topic {topic!r} does not exist on {bootstrap}")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out_dir)
    limits = limits_from(settings)
    deadline = time.monotonic() + timeout_s
    items: dict[str, dict[str, Any]] = {}

    def on_item(raw: bytes | None, where: str) -> None:
        report.item_records += 1
        try:
            item = decode(raw, ItemEvent, limits)
        except InvalidPayload as exc:
            report.invalid_items += 1
            _example(report, f"{where}: {exc.reason}: {exc.message}")
            return
        if item.active:
            items.pop(item.item_id, None)  # to the end: the file's order is the latest's
            items[item.item_id] = _item_line(item)
        elif item.item_id not in items:
            items[item.item_id] = {}  # retired before any content: dropped at the end

    _read_topic(settings, bootstrap, settings.topic_items, on_item, report, deadline, progress)
    report.items_without_content = sum(1 for line in items.values() if not line)
    kept = {item_id: line for item_id, line in items.items() if line}
    report.items = len(kept)
    _write_jsonl(out_dir / ITEMS_FILE, kept.values())

    seen: set[tuple[str, str]] = set()
    rows: list[dict[str, Any]] = []

    def on_event(raw: bytes | None, where: str) -> None:
        report.event_records += 1
        try:
            ev = decode(raw, BehaviorEvent, limits)
        except InvalidPayload as exc:
            report.invalid_events += 1
            _example(report, f"{where}: {exc.reason}: {exc.message}")
            return
        key = (ev.user_id, ev.event_id)
        if key in seen:
            report.duplicate_events += 1
            return
        seen.add(key)
        item_id = ev.applied_item_id
        if item_id is not None and item_id not in kept:
            report.unknown_item_events += 1
            _example(report, f"{where}: item_id {item_id!r} is not in the items topic")
            return
        ts = ev.ts_epoch
        row: dict[str, Any] = {"user_id": ev.user_id, "type": ev.type, "ts": ts}
        if item_id is not None:
            row["item_id"] = item_id
        if ev.rating is not None:
            row["rating"] = ev.rating
        if ev.text is not None:
            row["text"] = ev.text
        rows.append(row)
        report.first_ts = ts if report.first_ts is None else min(report.first_ts, ts)
        report.last_ts = ts if report.last_ts is None else max(report.last_ts, ts)

    _read_topic(settings, bootstrap, settings.topic_events, on_event, report, deadline, progress)
    rows.sort(key=lambda r: r["ts"])  # stable: the read order breaks ties, as train's reader
    report.interactions = len(rows)
    _write_jsonl(out_dir / INTERACTIONS_FILE, rows)
    return report


def _item_line(item: ItemEvent) -> dict[str, Any]:
    line: dict[str, Any] = {"item_id": item.item_id, "title": item.title}
    for name in ("description", "category", "brand", "price"):
        value = getattr(item, name)
        if value is not None:
            line[name] = value
    if item.tags:
        line["tags"] = list(item.tags)
    if item.attributes:
        line["attributes"] = dict(item.attributes)
    if item.ts is not None:
        line["ts"] = item.ts.timestamp()
    return line


def _example(report: ExportReport, text: str) -> None:
    if len(report.examples) < _EXAMPLES:
        report.examples.append(text)


def _read_topic(
    settings: Settings,
    bootstrap: str,
    topic: str,
    on_record: Callable[[bytes | None, str], None],
    report: ExportReport,
    deadline: float,
    progress: bool,
) -> None:
    """Hand every record of ``topic`` up to its end at the start to ``on_record``, partition
    by partition in offset order; a record's place is ``topic/partition@offset``.

    The end is each partition's high watermark when the read starts. The embedded broker
    (Tansu 0.6.0) answers one that is too low: it counts record batches, not records (7
    records sent in 3 batches read as an end of 1 or 2). A partition read past the end its
    broker now names, which Kafka cannot do, is read instead until an idle poll.
    """
    consumer = Consumer(
        client_config(
            settings,
            bootstrap,
            **{
                "group.id": f"coldstream-export-{uuid.uuid4().hex[:8]}",  # never joined
                "enable.auto.commit": False,
                "fetch.wait.max.ms": settings.effective_fetch_max_wait_ms,
            },
        )
    )

    def left_s() -> float:
        return max(deadline - time.monotonic(), 1.0)

    try:
        meta = consumer.list_topics(topic, timeout=left_s())
        ranges = report.ranges.setdefault(topic, {})
        ends: dict[int, int] = {}
        for p in sorted(meta.topics[topic].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=left_s())
            ranges[p] = (low, high)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        later: dict[int, list[tuple[int, bytes | None]]] = {p: [] for p in ends}
        untrusted: set[int] = set()  # partitions whose broker names too low an end
        total = sum(high - ranges[p][0] for p, high in ends.items())
        bar = tqdm(total=total, unit="rec", desc=topic, file=sys.stderr, disable=not progress)
        with bar:
            while ends:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{topic}: the end was not reached in time; partitions left (end "
                        f"offsets): {dict(sorted(ends.items()))}"
                    )
                messages = consumer.consume(500, 0.5)
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            raise RuntimeError(f"{topic}: consumer error: {err}")
                        continue
                    p, offset = msg.partition(), msg.offset()
                    if p is None or offset is None or p not in ends:
                        continue
                    if offset < ends[p] or p in untrusted:
                        on_record(msg.value(), f"{topic}/{p}@{offset}")
                        bar.update(1)
                    else:  # past the end: arrived after the start, unless the end is wrong
                        later[p].append((offset, msg.value()))
                if not messages:
                    _judge_ends(consumer, topic, ends, later, untrusted, on_record, left_s())
    finally:
        consumer.close()


def _judge_ends(
    consumer: Consumer,
    topic: str,
    ends: dict[int, int],
    later: dict[int, list[tuple[int, bytes | None]]],
    untrusted: set[int],
    on_record: Callable[[bytes | None, str], None],
    timeout_s: float,
) -> None:
    """At an idle poll: a partition read to its end is done (what came after it is dropped);
    one read past the end its broker names now has a wrong end: what was held back is handed
    over, and it is done at the next idle poll."""
    for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
        p, position = tp.partition, tp.offset
        if position < ends[p]:  # not there yet (or nothing fetched: a negative position)
            continue
        if p in untrusted:
            del ends[p]  # drained: an idle poll after reading past the named end
            continue
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        if position > high:  # Kafka cannot hand out an offset past its high watermark
            log.warning(
                "%s/%d: the broker names %d as the end but records up to %d were read: "
                "reading it until idle instead (the embedded broker counts record batches)",
                topic,
                p,
                high,
                position - 1,
            )
            untrusted.add(p)
            for offset, value in later.pop(p, []):
                on_record(value, f"{topic}/{p}@{offset}")
        else:
            del ends[p]


def _write_jsonl(path: Path, lines: Any) -> None:
    """Write atomically: a reader (a training job) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
