"""Loaders: the generic format's contract and errors; MovieLens when recbole is installed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from ranking.datasets import DatasetError, load_generic, load_movielens_100k, parse_ts

pytestmark = pytest.mark.unit


def _write_items(path: Path, items: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n", encoding="utf-8")
    return path


ITEMS = [
    {"item_id": "i1", "title": "Alpha", "category": "c", "tags": ["x", "y"], "price": 2.5},
    {"item_id": "i2", "title": "Beta", "ts": "2024-01-01T00:00:00Z", "active": True},
]


def test_parse_ts_variants() -> None:
    assert parse_ts("1970-01-01T00:00:10Z") == 10.0
    assert parse_ts("1970-01-01T00:00:10") == 10.0  # naive means UTC
    assert parse_ts("1970-01-01T01:00:10+01:00") == 10.0
    assert parse_ts(1_700_000_000) == 1_700_000_000.0
    assert parse_ts("1700000000000") == 1_700_000_000.0  # milliseconds
    for bad in ("yesterday", "", None, True, -5, "nan", "1700000000000000", 1e300):
        with pytest.raises(ValueError):
            parse_ts(bad)


def test_load_generic_csv(tmp_path: Path) -> None:
    items = _write_items(tmp_path / "items.jsonl", ITEMS)
    inter = tmp_path / "inter.csv"
    inter.write_text(
        "user_id,item_id,ts,type,rating,text\n"
        "u1,i2,2024-01-02T00:00:00Z,view,,\n"
        "u1,i1,1704067200000,rate,4.5,\n"
        "u2,,1704067200,search,,space movies\n"
        "u2,i1,1704067200,,,\n",
        encoding="utf-8",
    )
    ds = load_generic(items, inter)
    assert [i.item_id for i in ds.items] == ["i1", "i2"]
    assert ds.items[0].tags == ("x", "y") and ds.items[0].price == 2.5
    assert ds.items[1].ts == 1704067200.0
    df = ds.interactions
    assert list(df.columns) == ["user_id", "item_id", "ts", "type", "rating", "text"]
    # Sorted by ts, ties (three at 1704067200) in file order.
    assert list(df["item_id"]) == ["i1", None, "i1", "i2"]
    assert list(df["type"]) == ["rate", "search", "view", "view"]
    assert df["rating"][0] == 4.5 and math.isnan(df["rating"][2])
    assert df["text"][1] == "space movies"


def test_load_generic_jsonl(tmp_path: Path) -> None:
    items = _write_items(tmp_path / "items.jsonl", ITEMS)
    inter = tmp_path / "inter.jsonl"
    inter.write_text(
        json.dumps({"user_id": "u1", "item_id": "i1", "ts": 5, "rating": 3})
        + "\n\n"
        + json.dumps({"user_id": 7, "item_id": "i2", "ts": 4, "type": "purchase"})
        + "\n",
        encoding="utf-8",
    )
    ds = load_generic(items, inter)
    assert list(ds.interactions["user_id"]) == ["7", "u1"]
    assert list(ds.interactions["type"]) == ["purchase", "rate"]


def test_later_item_record_replaces_earlier(tmp_path: Path) -> None:
    items = _write_items(tmp_path / "items.jsonl", [*ITEMS, {"item_id": "i1", "title": "New"}])
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,ts\nu,i1,1\n", encoding="utf-8")
    ds = load_generic(items, inter)
    assert {i.item_id: i.title for i in ds.items} == {"i1": "New", "i2": "Beta"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"item_id": "i1", "tags": "x"}', "tags"),
        ('{"title": "no id"}', "item_id"),
        ('{"item_id": "i1", "price": "cheap"}', "price"),
        ('{"item_id": "i1", "active": "yes"}', "active"),
        ("[1, 2]", "JSON object"),
        ("{not json", "invalid JSON"),
        ('{"item_id": "i1", "title": " ... "}', "needs a title"),  # nothing to encode
        ('{"item_id": "i1", "title": "A", "price": -1}', "negative"),
    ],
)
def test_bad_item_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps(ITEMS[0]) + "\n" + line + "\n", encoding="utf-8")
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,ts\nu,i1,1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"items\.jsonl:2: .*{message}"):
        load_generic(items, inter)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("u1,i1,", "'ts' is required"),
        ("u1,i1,tomorrow", "bad timestamp"),
        ("u1,nope,1", "not in items.jsonl"),
        (",i1,1", "user_id"),
        ("u1,i1,1,teleport", "unknown type"),
        ("u1,,1,search", "requires a non-empty 'text'"),
        ("u1,,1,view", "item_id"),
        ("u1,i1,1,rate,lots", "rating"),
        ("u1,i1,1,view,,,extra", "more fields"),
        ("u1,i1,1,rate,11", "outside 0-10"),  # the events contract's bound
        ("u1,i1,1,rate,", "requires a 'rating'"),
        ("u1,i1,1700000000000000", "year 3000"),  # microseconds
    ],
)
def test_bad_interaction_rows_name_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    items = _write_items(tmp_path / "items.jsonl", ITEMS)
    inter = tmp_path / "inter.csv"
    inter.write_text(
        "user_id,item_id,ts,type,rating,text\nu0,i1,1,view,,\n" + row + "\n", encoding="utf-8"
    )
    with pytest.raises(DatasetError, match=rf"inter\.csv:3: .*{message}"):
        load_generic(items, inter)


def test_missing_files_header_and_extension(tmp_path: Path) -> None:
    items = _write_items(tmp_path / "items.jsonl", ITEMS)
    with pytest.raises(DatasetError, match="no such file"):
        load_generic(items, tmp_path / "missing.csv")
    bad_ext = tmp_path / "inter.parquet"
    bad_ext.write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match="extension"):
        load_generic(items, bad_ext)
    no_ts = tmp_path / "inter.csv"
    no_ts.write_text("user_id,item_id\nu,i1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"inter\.csv:1: .*ts"):
        load_generic(items, no_ts)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no items"):
        load_generic(empty, no_ts)


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed")
def test_movielens_100k_shape() -> None:
    ds = load_movielens_100k()
    assert len(ds.items) == 1682
    assert len(ds.interactions) == 100_000
    assert ds.interactions["user_id"].nunique() == 943
    toy = ds.items_by_id()["1"]
    assert toy.title == "Toy Story (1995)"
    assert toy.category == "Animation"
    assert toy.tags == ("Animation", "Children's", "Comedy")
    assert toy.description is None
    assert ds.interactions["ts"].is_monotonic_increasing
    assert set(ds.interactions["type"]) == {"rate"}


def test_movielens_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import ranking.datasets as mod

    monkeypatch.setattr(mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_movielens_100k()


def test_a_byte_order_mark_and_spaced_header_are_read(tmp_path: Path) -> None:
    """Spreadsheet exports: a UTF-8 byte-order mark and a space after each comma."""
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"\xef\xbb\xbf" + (json.dumps(ITEMS[0]) + "\n").encode())
    inter = tmp_path / "inter.csv"
    inter.write_bytes(b"\xef\xbb\xbfuser_id, item_id, ts\nu1,i1,1\n")
    data = load_generic(items, inter)
    assert [i.item_id for i in data.items] == ["i1"]
    assert list(data.interactions["user_id"]) == ["u1"]


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    items = _write_items(tmp_path / "items.jsonl", ITEMS)
    inter = tmp_path / "inter.csv"
    inter.write_bytes(b"user_id,item_id,ts\nu1,i1,1\nu\xe9,i1,2\n")
    with pytest.raises(DatasetError, match=r"inter\.csv:3: not UTF-8"):
        load_generic(items, inter)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes((json.dumps(ITEMS[0]) + "\n").encode() + b'{"item_id": "\xe9"}\n')
    with pytest.raises(DatasetError, match=r"latin\.jsonl:2: not UTF-8"):
        load_generic(latin, inter)


def test_line_endings_of_every_kind_are_read(tmp_path: Path) -> None:
    """A lone CR ends a line too (old Mac, "CSV (Macintosh)" exports); so does CRLF."""
    items = tmp_path / "items.jsonl"
    items.write_bytes(("\r".join(json.dumps(i) for i in ITEMS) + "\r").encode())
    inter = tmp_path / "inter.csv"
    inter.write_bytes(b"user_id,item_id,ts\ru1,i1,1\r\nu2,i2,2\r")
    data = load_generic(items, inter)
    assert [i.item_id for i in data.items] == ["i1", "i2"]
    assert list(data.interactions["user_id"]) == ["u1", "u2"]


def test_an_inactive_item_needs_no_text(tmp_path: Path) -> None:
    """As on the `items` topic: text is what an active item is encoded from."""
    items = _write_items(tmp_path / "items.jsonl", [*ITEMS, {"item_id": "old", "active": False}])
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,ts\nu1,i1,1\n", encoding="utf-8")
    assert "old" in [i.item_id for i in load_generic(items, inter).items]
