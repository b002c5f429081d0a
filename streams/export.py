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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from tqdm import tqdm

from infra.kafka import TopicAdminError, client_config, list_topics
from infra.settings import Settings
from streams.pipeline import limits_from
from streams.schemas import BehaviorEvent, InvalidPayload, ItemEvent, Limits, decode

M = TypeVar("M", ItemEvent, BehaviorEvent)

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


class ExportError(RuntimeError):
    """The export could not read the topics to their end, or has nothing to write."""


# one event kept for the log: (ts in seconds, the line's fields); a tuple, not a model, for
# memory: the whole log is held to be sorted by time (about 300 bytes an event here)
_Row = tuple[float, str, str, str, str | None, float | None, str | None]


def export_log(
    settings: Settings,
    bootstrap: str,
    out_dir: Path,
    *,
    timeout_s: float = 600.0,
    progress: bool = True,
) -> ExportReport:
    """Write ``out_dir``/items.jsonl and interactions.jsonl from the topics; see the module.

    Both files are written first under temporary names and renamed once both are complete, so
    a failed or empty export leaves the last one as it was."""
    existing = list_topics(settings, bootstrap)
    for topic in (settings.topic_items, settings.topic_events):
        if topic not in existing:
            raise TopicAdminError(f"topic {topic!r} does not exist on {bootstrap}")
    report = ExportReport(out_dir)
    limits = limits_from(settings)
    deadline = time.monotonic() + timeout_s
    items: dict[str, dict[str, Any]] = {}

    def on_item(raw: bytes | None, where: str) -> None:
        report.item_records += 1
        item = _decoded(raw, ItemEvent, "item_id", limits, report, where)
        if item is None:
            report.invalid_items += 1
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

    seen: set[tuple[str, str]] = set()
    rows: list[_Row] = []

    def on_event(raw: bytes | None, where: str) -> None:
        report.event_records += 1
        ev = _decoded(raw, BehaviorEvent, "user_id", limits, report, where)
        if ev is None:
            report.invalid_events += 1
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
        # the time as ISO-8601: train's reader takes any date that way (a number before 1970
        # would be refused as negative)
        rows.append((ts, ev.ts.isoformat(), ev.user_id, ev.type, item_id, ev.rating, ev.text))
        report.first_ts = ts if report.first_ts is None else min(report.first_ts, ts)
        report.last_ts = ts if report.last_ts is None else max(report.last_ts, ts)

    _read_topic(settings, bootstrap, settings.topic_events, on_event, report, deadline, progress)
    rows.sort(key=lambda r: r[0])  # stable: the read order breaks ties, as train's reader
    report.interactions = len(rows)
    if not kept or not rows:
        raise ExportError(
            f"nothing to train on: {report.items} item(s) and {report.interactions} "
            f"interaction(s) in the topics; {out_dir} is left as it was\n{report.summary()}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    done = [
        _write_jsonl(out_dir / ITEMS_FILE, kept.values()),
        _write_jsonl(out_dir / INTERACTIONS_FILE, map(_interaction_line, rows)),
    ]
    for tmp, path in done:
        tmp.replace(path)
    return report


def _decoded(
    raw: bytes | None,
    model: type[M],
    id_field: str,
    limits: Limits,
    report: ExportReport,
    where: str,
) -> M | None:
    """The record under its contract, or None (an example of why kept in the report). Its
    ``id_field`` with surrounding spaces is refused too: train's reader strips ids, and two
    would merge."""
    try:
        parsed = decode(raw, model, limits)
    except InvalidPayload as exc:
        _example(report, f"{where}: {exc.reason}: {exc.message}")
        return None
    value = getattr(parsed, id_field)
    if value != value.strip():
        _example(report, f"{where}: {id_field} {value!r} has surrounding spaces")
        return None
    return parsed


def _interaction_line(row: _Row) -> dict[str, Any]:
    _, when, user_id, kind, item_id, rating, text = row
    line: dict[str, Any] = {"user_id": user_id, "type": kind, "ts": when}
    if item_id is not None:
        line["item_id"] = item_id
    if rating is not None:
        line["rating"] = rating
    if text is not None:
        line["text"] = text
    return line


def _item_line(item: ItemEvent) -> dict[str, Any]:
    """What train's reader keeps (attributes are not: a NaN there would not even write)."""
    line: dict[str, Any] = {"item_id": item.item_id, "title": item.title}
    for name in ("description", "category", "brand", "price"):
        value = getattr(item, name)
        if value is not None:
            line[name] = value
    if item.tags:
        line["tags"] = list(item.tags)
    if item.ts is not None:
        line["ts"] = item.ts.isoformat()  # any date (a number is read in 1970-3000 only)
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

    The end is each partition's high watermark when the read starts; a partition is done when
    the consumer's position (or an end-of-partition event) reaches it, and is paused then, so
    records that keep arriving on a live topic are not fetched. The embedded broker (Tansu
    0.6.0) names an end that is too low: it counts record batches, not records (7 records sent
    in 3 batches read as an end of 1 or 2). A partition read past the end its broker names when
    asked again, which Kafka cannot do, is read instead until a poll brings none of its
    records. Records deleted by retention under the read fail the export.
    """
    consumer = Consumer(
        client_config(
            settings,
            bootstrap,
            **{
                "group.id": f"coldstream-export-{uuid.uuid4().hex[:8]}",  # never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",  # a gap under the read is said, not skipped
                "fetch.wait.max.ms": settings.effective_fetch_max_wait_ms,
            },
        )
    )

    def left_s() -> float:
        return max(deadline - time.monotonic(), 1.0)

    try:
        try:
            meta = consumer.list_topics(topic, timeout=left_s())
            found = meta.topics.get(topic)
            if found is None or found.error is not None:
                raise ExportError(f"{topic}: {found.error if found else 'no such topic'}")
            ranges = report.ranges.setdefault(topic, {})
            ends: dict[int, int] = {}
            for p in sorted(found.partitions):
                tp = TopicPartition(topic, p)
                low, high = consumer.get_watermark_offsets(tp, timeout=left_s())
                ranges[p] = (low, high)
                if high > low:  # an empty partition (on Tansu too: no batch) is done
                    ends[p] = high
        except KafkaException as exc:
            raise ExportError(f"{topic}: {exc}") from exc
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        reader = _Reader(consumer, topic, ends, on_record, left_s)
        total = sum(high - ranges[p][0] for p, high in ends.items())
        bar = tqdm(total=total, unit="rec", desc=topic, file=sys.stderr, disable=not progress)
        with bar:
            while reader.ends:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{topic}: the end was not reached in time; partitions left (end "
                        f"offsets): {dict(sorted(reader.ends.items()))}"
                    )
                bar.update(reader.poll())
    finally:
        consumer.close()


class _Reader:
    """One topic's read to its partitions' ends (see ``_read_topic``)."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        ends: dict[int, int],
        on_record: Callable[[bytes | None, str], None],
        timeout_s: Callable[[], float],
    ) -> None:
        self.consumer, self.topic, self.ends = consumer, topic, ends
        self.on_record, self.timeout_s = on_record, timeout_s
        # records at or past a partition's end, held until the end is judged right or wrong
        self.later: dict[int, list[tuple[int, bytes | None]]] = {p: [] for p in ends}
        self.untrusted: set[int] = set()  # partitions whose broker names too low an end

    def poll(self) -> int:
        """One fetch's records handed over; returns how many."""
        handed = 0
        got: set[int] = set()  # partitions this poll brought records of
        eof: set[int] = set()
        for msg in self.consumer.consume(500, 0.5):
            p, offset, err = msg.partition(), msg.offset(), msg.error()
            if p is None or p not in self.ends:
                continue
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(p)
                    continue
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    raise ExportError(
                        f"{self.topic}/{p}: records under the read were deleted (retention) "
                        f"during the export; run it again ({err})"
                    )
                raise ExportError(f"{self.topic}/{p}: {err}")
            if offset is None:
                continue
            got.add(p)
            if offset < self.ends[p] or p in self.untrusted:
                self.on_record(msg.value(), f"{self.topic}/{p}@{offset}")
                handed += 1
            else:  # past the end: arrived after the start, unless the end is wrong
                self.later[p].append((offset, msg.value()))
        handed += self._judge(got, eof)
        return handed

    def _judge(self, got: set[int], eof: set[int]) -> int:
        """Partitions at their end are done (and paused); what they hold past it is dropped,
        unless their broker now names an end below where they are: then it is handed over and
        the partition is read on until a poll brings none of its records."""
        handed = 0
        done: list[TopicPartition] = []
        for tp in self.consumer.position([TopicPartition(self.topic, p) for p in self.ends]):
            p, position = tp.partition, tp.offset
            if p in self.untrusted:
                if p not in got:
                    done.append(tp)
                continue
            if position < self.ends[p] and p not in eof:  # not there (negative: not fetched)
                continue
            if position > self.ends[p]:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=self.timeout_s()
                )
                if position > high:  # Kafka cannot hand out an offset past its high watermark
                    log.warning(
                        "%s/%d: the broker names %d as the end but records up to %d were "
                        "read: reading it until it brings no more (the embedded broker counts "
                        "record batches)",
                        self.topic,
                        p,
                        high,
                        position - 1,
                    )
                    self.untrusted.add(p)
                    for offset, value in self.later.pop(p, []):
                        self.on_record(value, f"{self.topic}/{p}@{offset}")
                        handed += 1
                    continue
            done.append(tp)
        if done:
            self.consumer.pause(done)
            for tp in done:
                del self.ends[tp.partition]
                self.later.pop(tp.partition, None)
        return handed


def _write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> tuple[Path, Path]:
    """Write to a temporary name beside ``path``; the caller renames it once all files are
    written (a reader, a training job, never sees half a file or a mismatched pair)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, path
