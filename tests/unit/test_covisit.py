"""Co-visitation counting, snapshot files, online deltas and their merge."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranking import covisit
from ranking.covisit import (
    CovisitCounter,
    CovisitError,
    CovisitIndex,
    CovisitModel,
    ItemIds,
    RowCache,
)

pytestmark = pytest.mark.unit


def test_build_counts_pairs_within_window() -> None:
    m = CovisitModel.build([["a", "b", "c"], ["a", "c"], ["b", "b"]], window=1, neighbors=10)
    assert m.count("a") == 2 and m.count("b") == 3 and m.count("c") == 2
    ids, data = m.neighbors("a")
    assert dict(zip(ids, data.tolist(), strict=True)) == {"b": 1.0, "c": 1.0}
    ids, data = m.neighbors("b")
    assert dict(zip(ids, data.tolist(), strict=True)) == {"a": 1.0, "c": 1.0}  # never itself
    # window 2 also pairs a with c in the first sequence
    m2 = CovisitModel.build([["a", "b", "c"], ["a", "c"]], window=2, neighbors=10)
    ids, data = m2.neighbors("a")
    assert dict(zip(ids, data.tolist(), strict=True)) == {"c": 2.0, "b": 1.0}
    assert ids[0] == "c"  # strongest first


def test_build_keeps_top_neighbors() -> None:
    seqs = [["x", "a"]] * 3 + [["x", "b"]] * 2 + [["x", "c"]]
    m = CovisitModel.build(seqs, window=5, neighbors=2)
    ids, data = m.neighbors("x")
    assert ids == ["a", "b"] and data.tolist() == [3.0, 2.0]
    assert m.neighbors("unknown") == ([], pytest.approx(np.zeros(0)))


def test_snapshot_round_trip_and_corruption(tmp_path: Path) -> None:
    m = CovisitModel.build([["a", "b", "c"], ["c", "a"]], window=3, neighbors=5, data_hash="h")
    path = tmp_path / "cv.safetensors"
    m.save(path)
    back = CovisitModel.load(path)
    assert back.item_ids == m.item_ids and back.data_hash == "h" and back.window == 3
    np.testing.assert_array_equal(back.data, m.data)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CovisitError, match="checksum"):
        CovisitModel.load(path)
    with pytest.raises(CovisitError, match="no co-visitation"):
        CovisitModel.load(tmp_path / "missing.safetensors")


def test_online_counter_matches_snapshot_counting() -> None:
    seq = ["a", "b", "c", "a"]
    c = CovisitCounter()
    for t, item in enumerate(seq):
        c.add(seq[max(0, t - 2) : t], item)
    m = CovisitModel.build([seq], window=2, neighbors=10)
    for item in "abc":
        ids, data = m.neighbors(item)
        assert c.pairs[item] == dict(zip(ids, data.tolist(), strict=True))
        assert c.counts[item] == m.count(item)
    back = CovisitCounter.from_payload(c.to_payload())
    assert back.pairs == c.pairs and back.counts == c.counts


def test_online_counter_prunes_to_max_pairs() -> None:
    c = CovisitCounter(max_pairs=4)
    for n in range(10):
        c.add([f"p{n}"], f"q{n}", weight=float(n + 1))
    assert sum(len(r) for r in c.pairs.values()) <= 5
    assert "q9" in c.pairs["p9"]  # the strongest survive


def test_online_visit_counts_are_bounded_too() -> None:
    """Pairs were capped but visit counts kept one entry per item ever visited: a churning
    catalog grew them, and every state write carried them (found by review)."""
    c = CovisitCounter(max_pairs=100, row_cap=4)
    for n in range(5000):
        c.add([f"i{n}"], f"j{n}", weight=1.0 + (n == 4321))
    assert len(c.counts) <= 120
    assert c.counts["j4321"] == 2.0  # the largest stay
    assert len(c.to_payload()["items"]) <= 3 * 120  # counted items and pairs' items
    index = CovisitIndex(None, [c], recency=0.5, ids=c.ids, rows=RowCache())
    assert index.count("j4321") == 2.0 and index.count("j0") == 0.0
    assert index.count("j4999") == 1.0  # of equal counts, the latest visited stay


def _visits(
    window: int, weights: st.SearchStrategy[float], max_size: int
) -> st.SearchStrategy[list[tuple[list[str], str, float]]]:
    """Visits as ``CovisitCounter.add`` takes them: (window of recent items, item, weight)."""
    items = st.sampled_from("abcdefgh")
    return st.lists(st.tuples(st.lists(items, max_size=window), items, weights), max_size=max_size)


@settings(max_examples=60, deadline=None)
@given(_visits(6, st.sampled_from([1.0, 2.0, 0.5]), 40))  # few weights: ties at the trim
def test_online_counter_matches_plain_counting_with_row_cap(
    adds: list[tuple[list[str], str, float]],
) -> None:
    """The counter against a plain re-count: both directions of each pair, and a row past
    twice its cap cut to its ``row_cap`` strongest (ties: the pairs first seen last stay, in
    the row's order)."""
    cap = 2
    c = CovisitCounter(row_cap=cap)
    pairs: dict[str, dict[str, float]] = {}
    counts: dict[str, float] = {}
    for recent, item, w in adds:
        c.add(recent, item, w)
        counts[item] = counts.get(item, 0.0) + w
        for other in recent:
            if other == item:
                continue
            for x, y in ((other, item), (item, other)):
                row = pairs.setdefault(x, {})
                row[y] = row.get(y, 0.0) + w
                if len(row) > 2 * cap:
                    ranked = sorted(enumerate(row.items()), key=lambda e: (-e[1][1], -e[0]))
                    kept = sorted(ranked[:cap])
                    pairs[x] = {k: v for _, (k, v) in kept}
    assert c.counts == counts
    assert {k: list(r.items()) for k, r in c.pairs.items()} == {
        k: list(r.items()) for k, r in pairs.items()
    }
    assert c._n_pairs == sum(len(r) for r in pairs.values())
    assert c.dirty == set(c.ids.get(k) for k in pairs)


def test_a_new_items_first_pair_survives_a_full_row_of_single_visits() -> None:
    """A popular item's row full of count-1 pairs cut the newest first, so a new item's only
    co-visitation evidence was the first thing forgotten. Found by review."""
    c = CovisitCounter(row_cap=4)
    for n in range(8):  # "hit" co-visited once with each of 8 old items: the row is at 2 x cap
        c.add([f"old{n}"], "hit")
    c.add(["hit"], "new-item")  # the 9th neighbour: the row is cut to 4
    assert "new-item" in c.row("hit")
    assert list(c.row("hit")) == ["old5", "old6", "old7", "new-item"]  # the row's order kept


def test_index_merges_snapshot_and_deltas() -> None:
    base = CovisitModel.build([["a", "b"], ["a", "b"], ["a", "c"]], window=1, neighbors=10)
    delta = CovisitCounter()
    delta.add(["a"], "d")
    idx = CovisitIndex(base, [delta], recency=0.5)
    assert idx.count("a") == 3 and idx.count("d") == 1  # a's visits were counted before
    s = idx.scores(["a"])
    assert s["b"] == pytest.approx(2 / math.sqrt(3 * 2))
    assert s["d"] == pytest.approx(1 / math.sqrt(3 * 1))
    assert idx.top(["a"], 1) == ["b"]
    assert set(idx.top(["a"], 2, exclude=["b"])) == {"c", "d"}
    # recency: the older item weighs recency^1
    s2 = idx.scores(["b", "a"])
    assert s2["c"] == pytest.approx(1 / math.sqrt(3 * 1))
    assert s2["a"] == pytest.approx(0.5 * 2 / math.sqrt(2 * 3))
    assert idx.popular(2) == ["a", "b"]


def test_index_is_a_snapshot_of_shared_counters() -> None:
    ids = ItemIds()
    a, b = CovisitCounter(ids=ids), CovisitCounter(ids=ids)
    a.add(["x"], "y")
    b.add(["x"], "z")
    idx = CovisitIndex(None, [a, b], recency=1.0, ids=ids)
    assert idx.count("x") == 0 and idx.count("y") == 1 and idx.count("z") == 1
    assert idx.counts(["y", "z", "never-seen"]).tolist() == [1.0, 1.0, 0.0]
    a.add(["y"], "x")  # after the index was built: it keeps the counts it was built from
    assert idx.count("x") == 0
    assert idx.popular(5) == ["y", "z"]
    with pytest.raises(ValueError, match="share"):
        CovisitIndex(None, [a, CovisitCounter()], recency=1.0, ids=ids)


def _scores(idx: CovisitIndex, recent: list[str]) -> dict[str, float]:
    return {i: idx.scores(recent)[i] for i in idx.scores(recent).largest(100)}


def test_row_cache_follows_counts_across_steps() -> None:
    """Rows kept between steps give exactly the scores of an index built from scratch."""
    ids = ItemIds()
    base = CovisitModel.build([["a", "b"], ["a", "c"]], window=1, neighbors=10)
    a, b = CovisitCounter(ids=ids), CovisitCounter(ids=ids)
    cache = RowCache()
    a.add(["a"], "d")
    steps = [
        lambda: b.add(["a"], "e", weight=2.0),  # a row already cached changes
        lambda: a.add(["d"], "f"),  # a new row, a newly interned item
        lambda: b.add([], "a", weight=3.0),  # a visit only: a total changes, no row
        lambda: None,  # nothing changed: every row is reused
    ]
    for change in [*steps, None]:
        cached = CovisitIndex(base, [a, b], recency=0.5, ids=ids, rows=cache)
        fresh = CovisitIndex(base, [a, b], recency=0.5, ids=ids)
        for recent in (["a"], ["d", "a"], ["e"]):
            assert _scores(cached, recent) == pytest.approx(_scores(fresh, recent))
        for item in "abcdefg":  # visit totals: updated in place of a full sum, the same values
            assert cached.count(item) == fresh.count(item)
        assert cached.popular(10) == fresh.popular(10)
        if change is not None:
            change()
    assert cache.rows  # rows survived the steps
    a._prune()  # a prune may rewrite any row: the cache starts over
    CovisitIndex(base, [a, b], recency=0.5, ids=ids, rows=cache)
    assert not cache.rows
    CovisitIndex(base, [a, b], recency=0.5, ids=ids, rows=cache).scores(["a"])
    assert cache.rows
    CovisitIndex(None, [a, b], recency=0.5, ids=ids, rows=cache)  # another snapshot
    assert not cache.rows
    # without a snapshot, the rows are kept from one step to the next as well
    CovisitIndex(None, [a, b], recency=0.5, ids=ids, rows=cache).scores(["a"])
    kept = dict(cache.rows)
    CovisitIndex(None, [a, b], recency=0.5, ids=ids, rows=cache)
    assert kept and all(cache.rows[i] is row for i, row in kept.items())


def test_counter_payload_round_trip_keeps_names() -> None:
    c = CovisitCounter(ids=ItemIds())
    c.add(["a", "b"], "c", weight=2.0)
    payload = json.loads(json.dumps(c.to_payload()))  # as the store keeps it
    back = CovisitCounter.from_payload(payload, ids=ItemIds())
    assert back.row("c") == {"a": 2.0, "b": 2.0} and back.count("c") == 2.0
    assert back.pairs == c.pairs and back.counts == c.counts
    # the first format (name-keyed dicts) still loads
    old = {"counts": {"c": 2.0}, "pairs": {"c": {"a": 2.0, "b": 2.0}, "a": {"c": 2.0}}}
    back = CovisitCounter.from_payload(old, ids=ItemIds())
    assert back.row("c") == {"a": 2.0, "b": 2.0} and back.count("c") == 2.0


@settings(max_examples=50, deadline=None)
@given(_visits(4, st.floats(0.1, 5.0), 30))
def test_counter_payload_round_trips_any_counts(adds: list[tuple[list[str], str, float]]) -> None:
    ids = ItemIds()
    ids.id("unrelated")  # interned ids need not start at 0 nor be dense in a counter
    c = CovisitCounter(ids=ids)
    for recent, item, w in adds:
        c.add(recent, item, weight=w)
    back = CovisitCounter.from_payload(json.loads(json.dumps(c.to_payload())), ids=ItemIds())
    assert back.counts == c.counts and back.pairs == c.pairs


def test_scores_of_ids_unknown_and_unscored_are_zero() -> None:
    ids = ItemIds()
    c = CovisitCounter(ids=ids)
    c.add([], "a")
    c.add(["a"], "b", weight=2.0)
    c.add(["a"], "c")
    idx = CovisitIndex(None, [c], recency=1.0, ids=ids)
    s = idx.scores(["b"])
    never = len(ids) + 5  # an id no index knows
    got = s.of(np.array([ids.id("a"), -1, ids.id("c"), never, ids.id("b")], np.int64))
    assert got[0] == pytest.approx(2 / math.sqrt(2 * 1))
    assert got[1:].tolist() == [0.0, 0.0, 0.0, 0.0]  # unknown, unscored, out of range, itself
    assert s.get("zzz", -1.0) == -1.0 and s.largest(5) == ["a"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_and_sparse_window_scores_are_identical(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small catalog sums window scores in a dense array, a large one sorts: same floats."""
    rng = random.Random(seed)
    items = [f"i{n}" for n in range(60)]
    base = CovisitModel.build([rng.sample(items, 12) for _ in range(80)], window=4, neighbors=10)
    ids = ItemIds()
    online = CovisitCounter(ids=ids)
    for _ in range(200):
        online.add(rng.sample(items, 5), rng.choice(items))
    windows = [rng.sample(items, rng.randint(1, 20)) for _ in range(30)]
    windows.append(["i1", "i2", "i1"])  # a repeat weighs twice, at both recencies
    for window in windows:
        monkeypatch.setattr(covisit, "_DENSE_PER_ENTRY", 10**9)  # always dense
        dense = CovisitIndex(base, [online], 0.8, ids).scores(window)
        monkeypatch.setattr(covisit, "_DENSE_PER_ENTRY", 0)  # always sparse
        sparse = CovisitIndex(base, [online], 0.8, ids).scores(window)
        assert dense.largest(60) == sparse.largest(60)
        gids = ids.lookup(items)
        np.testing.assert_array_equal(dense.of(gids), sparse.of(gids))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_cells", [1 << 21, 0])  # one pass for the batch; one by one
def test_a_batch_primed_at_once_scores_the_same_floats_as_window_by_window(
    seed: int, max_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    items = [f"i{n}" for n in range(80)]
    base = CovisitModel.build([rng.sample(items, 12) for _ in range(80)], window=4, neighbors=10)
    ids = ItemIds()
    online = [CovisitCounter(ids=ids) for _ in range(2)]
    for _ in range(300):
        rng.choice(online).add(rng.sample(items, 5), rng.choice(items))
    windows = [rng.sample(items, rng.randint(1, 20)) for _ in range(25)]
    windows += [[], ["never-seen"], ["i1", "never-seen", "i1"], windows[0]]  # repeats, unknowns
    monkeypatch.setattr(covisit, "_PRIME_MAX_CELLS", max_cells)
    primed = CovisitIndex(base, online, 0.8, ids)
    primed.prime(windows)
    gids = ids.lookup([*items, "never-seen"])
    for window in windows:
        alone = CovisitIndex(base, online, 0.8, ids).scores(window)
        got = primed.scores(window)
        assert got.largest(100) == alone.largest(100)
        np.testing.assert_array_equal(got.of(gids), alone.of(gids))
        assert [got.get(i) for i in items] == [alone.get(i) for i in items]


def test_a_snapshot_whose_item_ids_were_edited_is_refused(tmp_path: Path) -> None:
    """The checksum covered the tensors only, and the ids that name their rows are metadata:
    one byte changed gave the counts to another item (found by review)."""
    m = CovisitModel.build([["a", "b"], ["a", "c"]], window=1, neighbors=10)
    path = tmp_path / "c.safetensors"
    m.save(path)
    raw = path.read_bytes()
    i = raw.index(b'\\"b\\"')  # the id "b" inside the JSON of the header
    path.write_bytes(raw[: i + 2] + b"z" + raw[i + 3 :])
    with pytest.raises(CovisitError, match="metadata checksum"):
        CovisitModel.load(path)


def test_a_snapshot_from_before_the_metadata_checksum_still_loads(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    m = CovisitModel.build([["a", "b"], ["a", "c"]], window=1, neighbors=10)
    path = tmp_path / "c.safetensors"
    m.save(path)
    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    del meta["meta_checksum"]
    save_file(tensors, str(path), metadata=meta)
    assert CovisitModel.load(path).item_ids == m.item_ids
    meta["item_ids"] = "2"  # valid JSON of the wrong type: refused, not a TypeError
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CovisitError, match="item_ids"):
        CovisitModel.load(path)


def test_counts_whose_indices_leave_the_item_list_are_refused() -> None:
    """An index past the list raised IndexError, which the assignment path did not catch; a
    negative one named the last item (found by review)."""
    import base64

    c = CovisitCounter()
    c.add(["a"], "b")
    for bad in (7, -1):
        payload = c.to_payload()
        payload["pair_a"] = base64.b64encode(np.array([bad, 0], "<i4").tobytes()).decode()
        with pytest.raises(CovisitError, match="pair_a outside"):
            CovisitCounter.from_payload(payload)


def test_the_index_reads_online_pairs_at_the_snapshots_scale_and_visits_once() -> None:
    """The counters keep events (persisted counts stay right under another snapshot, a row's
    trim compares like with like); the index reads their pairs in the snapshot's units."""
    c = CovisitCounter()
    c.add(["a", "b"], "c")
    c.add(["c"], "a")
    assert c.pairs == {"a": {"c": 2.0}, "b": {"c": 1.0}, "c": {"a": 2.0, "b": 1.0}}
    base = CovisitModel.build([["x", "y"]], window=1, neighbors=5)
    plain = CovisitIndex(base, [c], recency=1.0).scores(["a"])
    scaled = CovisitIndex(base.with_online_pair_scale(4.0), [c], recency=1.0).scores(["a"])
    # cosine: c(a, c) / sqrt(n(a) · n(c)); visits count once either way
    assert plain.get("c") == pytest.approx(2.0 / math.sqrt(1.0 * 1.0))
    assert scaled.get("c") == pytest.approx(4.0 * plain.get("c"))
    assert CovisitIndex(base.with_online_pair_scale(4.0), [c], 1.0).count("a") == 1.0


def test_the_online_pair_scale_round_trips_and_older_files_read_as_one(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    m = CovisitModel.build([["a", "b"], ["a", "c"]], window=1, neighbors=10)
    assert m.online_pair_scale == 1.0
    scaled = m.with_online_pair_scale(4.3996)
    assert scaled.online_pair_scale == 4.3996 and scaled.pairs == m.pairs
    path = tmp_path / "c.safetensors"
    scaled.save(path)
    assert CovisitModel.load(path).online_pair_scale == 4.3996
    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    del meta["online_pair_scale"], meta["meta_checksum"]  # as written before the scale
    save_file(tensors, str(path), metadata=meta)
    assert CovisitModel.load(path).online_pair_scale == 1.0
    for bad in ("nan", "-2", "0", "many"):
        meta["online_pair_scale"] = bad
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(CovisitError, match=r"scale|bad metadata"):
            CovisitModel.load(path)
    with pytest.raises(CovisitError, match="scale"):
        m.with_online_pair_scale(math.inf)


def test_a_snapshot_names_the_time_it_counted_up_to_and_older_files_none(
    tmp_path: Path,
) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    m = CovisitModel.build([["a", "b"]], window=1, neighbors=10, counted_until=1_700_000_123.5)
    path = tmp_path / "c.safetensors"
    m.with_online_pair_scale(3.0).save(path)  # the scaled copy keeps it
    plain = m.undated()  # the evaluation's replays: the same counts, no date
    assert plain.counted_until is None and plain.data is m.data and m.counted_until is not None
    assert CovisitModel.load(path).counted_until == 1_700_000_123.5
    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    del meta["counted_until"], meta["meta_checksum"]  # as written before session 22
    save_file(tensors, str(path), metadata=meta)
    assert CovisitModel.load(path).counted_until is None
    for bad in ("yesterday", "nan", "inf"):
        meta["counted_until"] = bad
        save_file(tensors, str(path), metadata=meta)
        with pytest.raises(CovisitError, match=r"bad metadata|counted until"):
            CovisitModel.load(path)


def test_a_counter_knows_when_it_started_counting_and_keeps_it_saved() -> None:
    c = CovisitCounter()
    assert c.empty and c.since_ts is None and c.until_ts is None
    c.add([], "a", ts=100.0)
    c.add(["a"], "b", ts=50.0)  # late: the start stays the first event's time
    c.add(["b"], "c")  # no time: neither moves
    c.add(["c"], "d", ts=300.0)
    assert (c.since_ts, c.until_ts) == (100.0, 300.0) and not c.empty
    back = CovisitCounter.from_payload(json.loads(json.dumps(c.to_payload())))
    assert (back.since_ts, back.until_ts) == (100.0, 300.0)
    assert back.pairs == c.pairs
    old = c.to_payload()
    del old["since_ts"], old["until_ts"]  # saved before session 22: of any time
    undated = CovisitCounter.from_payload(old)
    undated.add(["a"], "e", ts=5000.0)  # a later event must not date the older counts
    assert undated.since_ts == 0.0 and undated.until_ts == 5000.0
    empty = CovisitCounter().to_payload()
    del empty["since_ts"], empty["until_ts"]
    assert CovisitCounter.from_payload(empty).since_ts is None
