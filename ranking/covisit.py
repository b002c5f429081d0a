"""Co-visitation: which items other users touched near the ones this user just touched.

Two layers, merged at query time by :class:`CovisitIndex`:

- :class:`CovisitModel`, the learned snapshot: symmetric co-occurrence counts of item pairs at
  most ``window`` positions apart in each user's time-ordered history, pruned to the strongest
  ``neighbors`` per item, plus each item's visit count. Built by ``coldstream train`` from the
  interaction log and saved as safetensors (no pickle) with JSON metadata.
- :class:`CovisitCounter`, the online delta: the same counts, learned from the events a worker
  owns since the snapshot, one counter per input partition (like trending) so ownership follows
  the consumer group; persisted as a payload in the store. A worker pairs an event with only
  the user's last few distinct items (the profile keeps no more), where the snapshot paired
  visits hundreds of positions apart, so the index reads each online pair count
  ``online_pair_scale`` times: the ratio of the two rules' counts on the snapshot's own pairs,
  measured on its own log (``ranking.training.online_pair_scale``). Without it, evidence
  gathered after training — all a new item has — weighed a fraction of what the ranker learned
  such counts to mean. The counters themselves stay in events (scaled when read), so counts
  persisted under one snapshot stay right under the next, and a row's trim compares like with
  like. ``COLDSTREAM_COVISIT_ONLINE_PAIR_SCALE`` replaces the stored scale (1 = once).
  The gain is not the units alone: weighing only the visits past the worker's window, by the
  ratio measured on those (1.000 within it, 4.92 past it), predicted worse in the time-split
  replay than the uniform scale (``scripts/covisit_scale_replay.py``, ``depth``): online pairs
  are fresher than the snapshot's, and counting them more pays.

Score of a candidate ``j`` for a user whose recent items are ``r_1 … r_n`` (newest last):
``Σ_t recency^(n−t) · c(r_t, j) / sqrt(n(r_t) · n(j))`` — item-kNN's cosine, recency-weighted.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "coldstream-covisit/1"


class CovisitError(ValueError):
    """A co-visitation snapshot file is missing, corrupt or of another format."""


class CovisitModel:
    """Immutable learned snapshot: per-item visit counts and CSR top neighbors."""

    def __init__(
        self,
        item_ids: Sequence[str],
        counts: np.ndarray,
        indptr: np.ndarray,
        indices: np.ndarray,
        data: np.ndarray,
        *,
        window: int,
        data_hash: str = "",
        online_pair_scale: float = 1.0,
        counted_until: float | None = None,
    ) -> None:
        n = len(item_ids)
        if not (math.isfinite(online_pair_scale) and online_pair_scale > 0):
            raise CovisitError(f"online pair scale {online_pair_scale!r}: expected a number > 0")
        if counted_until is not None and not math.isfinite(counted_until):
            raise CovisitError(f"counted until {counted_until!r}: expected a time")
        if counts.shape != (n,) or indptr.shape != (n + 1,) or indices.shape != data.shape:
            raise CovisitError("co-visitation arrays do not match the item list")
        if n and (int(indptr[0]) != 0 or int(indptr[-1]) != len(indices)):
            raise CovisitError("co-visitation row pointers are inconsistent")
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise CovisitError("co-visitation neighbor index out of range")
        self.item_ids = list(item_ids)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.counts = counts.astype(np.float32)
        self.indptr = indptr.astype(np.int64)
        self.indices = indices.astype(np.int32)
        self.data = data.astype(np.float32)
        self.window = window
        self.data_hash = data_hash
        # what one online pair counts for (see the module docstring); 1 for files without it
        self.online_pair_scale = float(online_pair_scale)
        # the time of the latest event the snapshot counted (None: not known, files written
        # before session 22): online counts of events up to it are in the snapshot already
        self.counted_until = counted_until

    @classmethod
    def empty(cls) -> CovisitModel:
        z = np.zeros(0, np.float32)
        return cls([], z, np.zeros(1, np.int64), np.zeros(0, np.int32), z, window=0)

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        sequences: Iterable[Sequence[str]],
        *,
        window: int,
        neighbors: int,
        data_hash: str = "",
        counted_until: float | None = None,
    ) -> CovisitModel:
        """Count pairs at most ``window`` apart in each time-ordered sequence; keep the top ones.

        A repeat of the same item in a sequence pairs like any other visit, but never with itself.
        """
        if window < 1 or neighbors < 1:
            raise ValueError("window and neighbors must be >= 1")
        index: dict[str, int] = {}
        flat: list[int] = []
        owner: list[int] = []
        for u, seq in enumerate(sequences):
            for item in seq:
                flat.append(index.setdefault(item, len(index)))
                owner.append(u)
        n = len(index)
        items = np.asarray(flat, dtype=np.int64)
        users = np.asarray(owner, dtype=np.int64)
        counts = np.bincount(items, minlength=n).astype(np.float32)
        chunks: list[np.ndarray] = []  # pair keys a·n + b, merged into (keys, sums) in chunks
        pending = 0
        keys = np.zeros(0, np.int64)
        sums = np.zeros(0, np.float64)

        def merge(keys: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            all_keys = np.concatenate([keys, *chunks])
            weights = np.concatenate([sums, *(np.ones(len(c)) for c in chunks)])
            uniq, inv = np.unique(all_keys, return_inverse=True)
            chunks.clear()
            return uniq, np.bincount(inv, weights=weights, minlength=len(uniq))

        for off in range(1, window + 1):
            if off >= len(items):
                break
            same = users[:-off] == users[off:]
            if not same.any():
                break
            a = items[:-off][same]
            b = items[off:][same]
            keep = a != b
            a, b = a[keep], b[keep]
            chunks += [a * n + b, b * n + a]
            pending += 2 * len(a)
            if pending > 8_000_000:
                keys, sums = merge(keys, sums)
                pending = 0
        if chunks:
            keys, sums = merge(keys, sums)
        rows = keys // max(n, 1)
        cols = keys % max(n, 1)
        order = np.lexsort((-sums, rows))
        rows, cols, sums = rows[order], cols[order], sums[order]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        rank = np.arange(len(rows)) - indptr[rows]
        keep = rank < neighbors
        rows, cols, sums = rows[keep], cols[keep], sums[keep]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        inv_index = [""] * n
        for item, i in index.items():
            inv_index[i] = item
        return cls(
            inv_index,
            counts,
            indptr,
            cols,
            sums,
            window=window,
            data_hash=data_hash,
            counted_until=counted_until,
        )

    def with_online_pair_scale(self, scale: float) -> CovisitModel:
        """The same counts, the online pairs read with it counting ``scale`` times. A shallow
        copy: the arrays and the id index are shared (a worker keeps the loaded snapshot too)."""
        if not (math.isfinite(scale) and scale > 0):
            raise CovisitError(f"online pair scale {scale!r}: expected a number > 0")
        scaled = copy.copy(self)
        scaled.online_pair_scale = float(scale)
        return scaled

    def undated(self) -> CovisitModel:
        """The same counts with no ``counted_until``: for replays whose online events are as
        old as the snapshot's and not in it (the evaluation splits by user, not by time)."""
        plain = copy.copy(self)
        plain.counted_until = None
        return plain

    # -- lookups --------------------------------------------------------------------------
    def count(self, item: str) -> float:
        i = self.index.get(item)
        return float(self.counts[i]) if i is not None else 0.0

    def neighbors(self, item: str) -> tuple[list[str], np.ndarray]:
        i = self.index.get(item)
        if i is None:
            return [], np.zeros(0, np.float32)
        lo, hi = int(self.indptr[i]), int(self.indptr[i + 1])
        return [self.item_ids[j] for j in self.indices[lo:hi]], self.data[lo:hi]

    @property
    def pairs(self) -> int:
        return len(self.indices)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {
            "counts": self.counts,
            "indptr": self.indptr,
            "indices": self.indices,
            "data": self.data,
        }
        meta = {
            "format": FORMAT,
            "window": str(self.window),
            "data_hash": self.data_hash,
            "online_pair_scale": repr(self.online_pair_scale),
            **({} if self.counted_until is None else {"counted_until": repr(self.counted_until)}),
            "item_ids": json.dumps(self.item_ids),
            "checksum": _checksum(tensors),
        }
        meta["meta_checksum"] = _meta_checksum(meta)
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(path)  # readers never see a half-written snapshot
        finally:
            tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind

    @classmethod
    def load(cls, path: str | Path) -> CovisitModel:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CovisitError(f"{path}: no co-visitation snapshot (run `coldstream train`)")
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:
            raise CovisitError(f"{path}: unreadable co-visitation snapshot: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise CovisitError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if set(tensors) != {"counts", "indptr", "indices", "data"}:
            raise CovisitError(f"{path}: unexpected tensors {sorted(tensors)}")
        if meta.get("checksum") != _checksum(tensors):
            raise CovisitError(f"{path}: checksum mismatch (corrupt file)")
        # the row of each item id is in the metadata: a changed id moves counts to another item
        # (files written before 2026-11-27 have no metadata checksum)
        if "meta_checksum" in meta and meta["meta_checksum"] != _meta_checksum(meta):
            raise CovisitError(f"{path}: metadata checksum mismatch (corrupt file)")
        try:
            item_ids = json.loads(meta["item_ids"])
            window = int(meta["window"])
            # files written before 2026-11-27 (session 21) have none: online pairs count once
            scale = float(meta.get("online_pair_scale", "1.0"))
            until = float(meta["counted_until"]) if "counted_until" in meta else None
        except (KeyError, ValueError) as exc:
            raise CovisitError(f"{path}: bad metadata: {exc}") from exc
        if not (isinstance(item_ids, list) and all(isinstance(i, str) for i in item_ids)):
            raise CovisitError(f"{path}: bad metadata: item_ids is not a list of ids")
        if len(item_ids) != len(tensors["counts"]):
            raise CovisitError(
                f"{path}: {len(item_ids)} item ids for {len(tensors['counts'])} counts"
            )
        return cls(
            item_ids,
            tensors["counts"],
            tensors["indptr"],
            tensors["indices"],
            tensors["data"],
            window=window,
            data_hash=meta.get("data_hash", ""),
            online_pair_scale=scale,
            counted_until=until,
        )


class ItemIds:
    """Item ids interned as dense ints, shared by the online counters and the index.

    Counters keyed by ints let the index read a neighbour row or all visit counts with one
    ``np.fromiter`` each, instead of a Python step per neighbour (the hot loop of a batch).
    Grows with the catalog the worker has seen; ids are never reused.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._models: dict[int, tuple[CovisitModel, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def id(self, item: str) -> int:
        i = self._index.get(item)
        if i is None:
            i = self._index[item] = len(self.names)
            self.names.append(item)
        return i

    def get(self, item: str) -> int | None:
        return self._index.get(item)

    def lookup(self, items: Sequence[str]) -> np.ndarray:
        """Ids of ``items``, -1 for an item never interned."""
        get = self._index.get
        return np.fromiter((get(i, -1) for i in items), np.int64, len(items))

    def of_model(self, model: CovisitModel) -> np.ndarray:
        """Interned id of each of a snapshot's items (memoized per snapshot)."""
        held = self._models.get(id(model))
        if held is None or held[0] is not model:
            ids = np.fromiter((self.id(i) for i in model.item_ids), np.int64, len(model.item_ids))
            self._models = {id(model): (model, ids)}  # one snapshot is live at a time
            held = self._models[id(model)]
        return held[1]


class CovisitCounter:
    """Online pair and visit counts learned from live events (one per input partition)."""

    def __init__(
        self, max_pairs: int = 200_000, row_cap: int = 64, ids: ItemIds | None = None
    ) -> None:
        self.max_pairs = max_pairs
        self.row_cap = row_cap  # neighbours kept per item: bounds the per-user scoring loop
        self.ids = ids if ids is not None else ItemIds()
        self._counts: dict[int, float] = {}
        self._pairs: dict[int, dict[int, float]] = {}
        self._n_pairs = 0
        # event times: of the first event counted (the counter's start; a late event counted
        # afterwards does not move it) and the latest; None before any carried one
        self.since_ts: float | None = None
        self.until_ts: float | None = None
        # rows and visit counts changed since a RowCache last looked (bounded by interned items)
        self.dirty: set[int] = set()
        self.dirty_counts: set[int] = set()
        self.dirty_all = False

    def add(
        self, recent: Sequence[str], item: str, weight: float = 1.0, ts: float | None = None
    ) -> None:
        """``item`` was just visited after ``recent`` (the window of items before it), at
        event time ``ts`` if known.

        The pair loop is inline (no method call per pair) and looks the item's own row up
        once: ~40 pair updates per event make it the hottest Python loop of a warm batch.
        """
        if ts is not None:
            if self.since_ts is None:
                self.since_ts = ts
            if self.until_ts is None or ts > self.until_ts:
                self.until_ts = ts
        intern = self.ids.id
        known = self.ids._index.get  # the interning's fast path, without a call per pair
        b = intern(item)
        self._counts[b] = self._counts.get(b, 0.0) + weight
        self.dirty_counts.add(b)
        pairs = self._pairs
        dirty = self.dirty
        cap = 2 * self.row_cap
        added = 0
        own: dict[int, float] | None = None  # b's row, looked up at its first pair
        for other in recent:
            if other == item:
                continue
            a = known(other)
            if a is None:
                a = intern(other)  # never b: ids are one per item
            # the pair both ways: (a, b), then (b, a)
            dirty.add(a)
            row = pairs.get(a)
            if row is None:
                row = pairs[a] = {}
            old = row.get(b)
            if old is None:
                row[b] = weight
                added += 1
                if len(row) > cap:
                    added -= self._trim(a)
            else:
                row[b] = old + weight
            if own is None:
                dirty.add(b)
                own = pairs.get(b)
                if own is None:
                    own = pairs[b] = {}
            old = own.get(a)
            if old is None:
                own[a] = weight
                added += 1
                if len(own) > cap:
                    added -= self._trim(b)
                    own = pairs[b]  # the trim put a new dict in its place
            else:
                own[a] = old + weight
        self._n_pairs += added
        if self._n_pairs > self.max_pairs * 1.2:
            self._prune()
        if len(self._counts) > self.max_pairs * 1.2:
            self._prune_counts()

    def _trim(self, a: int) -> int:
        """Cut ``a``'s row to its strongest ``row_cap`` neighbours (amortized over ``row_cap``
        additions); returns how many pairs went. Among equal counts the pairs first seen last
        stay, as in :meth:`_prune_counts`: in a popular item's row full of single visits, a
        new item's first pair is the one a cold-start recommender must not forget (before,
        ties kept the oldest, so it was always cut first). The row keeps its insertion order."""
        row = self._pairs[a]
        keys, counts = list(row), list(row.values())
        # positions from the last, sorted by count (stable, so among equal counts the later
        # first), the strongest kept in their order: the result of heapq.nlargest over
        # (count, position), 5× faster (C comparisons, no key function per neighbour); a
        # trim ran every ~row_cap new pairs of a row and was half of the online counting
        keep = sorted(range(len(counts) - 1, -1, -1), key=counts.__getitem__, reverse=True)
        del keep[self.row_cap :]
        keep.sort()
        self._pairs[a] = {keys[k]: counts[k] for k in keep}
        return len(row) - len(keep)

    def _prune_counts(self) -> None:
        """Keep the ``max_pairs`` largest visit counts: pairs are capped, and without this the
        counts kept one entry per item ever visited (a churning catalog grows it, and every
        state write carries it). A dropped item counts 0 again, as if never visited here.
        Among equal counts the item counted first goes first: a new item's first visits are
        not the ones to forget."""
        items = list(self._counts.items())  # in the order each item was first counted
        keep = heapq.nlargest(self.max_pairs, range(len(items)), key=lambda k: (items[k][1], k))
        self._counts = dict(items[k] for k in sorted(keep))
        self.dirty_all = True

    def _prune(self) -> None:
        flat = ((v, a, b) for a, row in self._pairs.items() for b, v in row.items())
        keep = heapq.nlargest(self.max_pairs, flat)
        self._pairs = {}
        for v, a, b in keep:
            self._pairs.setdefault(a, {})[b] = v
        self._n_pairs = len(keep)
        self.dirty_all = True

    @property
    def empty(self) -> bool:
        return not self._counts and not self._pairs

    # -- reads by item name (tests, persistence) and by interned id (the index) ------------
    def count(self, item: str) -> float:
        i = self.ids.get(item)
        return self._counts.get(i, 0.0) if i is not None else 0.0

    def row(self, item: str) -> dict[str, float]:
        i = self.ids.get(item)
        names = self.ids.names
        return {names[j]: v for j, v in self._pairs.get(i, {}).items()} if i is not None else {}

    @property
    def counts(self) -> dict[str, float]:
        names = self.ids.names
        return {names[i]: v for i, v in self._counts.items()}

    @property
    def pairs(self) -> dict[str, dict[str, float]]:
        names = self.ids.names
        return {names[a]: {names[b]: v for b, v in row.items()} for a, row in self._pairs.items()}

    def count_of(self, i: int) -> float:
        return self._counts.get(i, 0.0)

    def count_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._counts)
        return (
            np.fromiter(self._counts.keys(), np.int64, n),
            np.fromiter(self._counts.values(), np.float64, n),
        )

    def extend_row(self, i: int, keys: list[int], values: list[float]) -> None:
        """Append item ``i``'s neighbours and counts to ``keys`` and ``values``."""
        row = self._pairs.get(i)
        if row:
            keys.extend(row.keys())
            values.extend(row.values())

    def to_payload(self) -> dict[str, Any]:
        """The counts as flat arrays (base64), for the worker's periodic state write.

        The first format, name-keyed nested dicts through JSON, took ~66 ms for 4 partitions'
        114k pairs on the engine thread every persist interval (a latency spike for every batch
        behind it); arrays take a few. :meth:`from_payload` reads both.
        """
        counts_ids = np.fromiter(self._counts.keys(), np.int64, len(self._counts))
        counts = np.fromiter(self._counts.values(), np.float64, len(self._counts))
        keys: list[int] = []
        values: list[float] = []
        for row in self._pairs.values():  # list.extend over dict views runs in C
            keys.extend(row.keys())
            values.extend(row.values())
        a = np.repeat(
            np.fromiter(self._pairs.keys(), np.int64, len(self._pairs)),
            np.fromiter(map(len, self._pairs.values()), np.int64, len(self._pairs)),
        )
        b = np.array(keys, np.int64)
        v = np.array(values, np.float64)
        # local ids: positions in ``items`` (only the items this counter holds)
        used, local = np.unique(np.concatenate([counts_ids, a, b]), return_inverse=True)
        names = self.ids.names
        k, m = len(counts_ids), len(a)
        return {
            "format": _PAYLOAD_FORMAT,
            "items": [names[int(i)] for i in used],
            "count_items": _b64(local[:k].astype(np.int32)),
            "counts": _b64(counts),
            "pair_a": _b64(local[k : k + m].astype(np.int32)),
            "pair_b": _b64(local[k + m :].astype(np.int32)),
            "pair_counts": _b64(v),
            "since_ts": self.since_ts,
            "until_ts": self.until_ts,
        }

    @classmethod
    def from_payload(
        cls,
        payload: Mapping[str, Any],
        max_pairs: int = 200_000,
        row_cap: int = 64,
        ids: ItemIds | None = None,
    ) -> CovisitCounter:
        fmt = payload.get("format")
        if fmt is not None and fmt != _PAYLOAD_FORMAT:  # written by another version
            raise CovisitError(f"co-visitation counts of an unknown format {fmt!r}")
        c = cls(max_pairs, row_cap, ids)
        intern = c.ids.id
        if fmt == _PAYLOAD_FORMAT:
            gid = np.fromiter((intern(str(i)) for i in payload["items"]), np.int64)
            local = {k: _unb64(payload[k], np.int32) for k in ("count_items", "pair_a", "pair_b")}
            for name, idx in local.items():  # a negative index would name the last item
                if len(idx) and (idx.min() < 0 or idx.max() >= len(gid)):
                    raise CovisitError(f"co-visitation counts: {name} outside the item list")
            keys = gid[local["count_items"]].tolist()
            c._counts = dict(zip(keys, _unb64(payload["counts"], np.float64).tolist(), strict=True))
            a = gid[local["pair_a"]].tolist()
            b = gid[local["pair_b"]].tolist()
            v = _unb64(payload["pair_counts"], np.float64).tolist()
            for x, y, w in zip(a, b, v, strict=True):
                row = c._pairs.get(x)
                if row is None:
                    row = c._pairs[x] = {}
                row[y] = w
        else:  # the first format: {"counts": {item: n}, "pairs": {item: {item: n}}}
            c._counts = {intern(str(k)): float(v) for k, v in payload.get("counts", {}).items()}
            c._pairs = {
                intern(str(a)): {intern(str(b)): float(v) for b, v in row.items()}
                for a, row in payload.get("pairs", {}).items()
            }
        c._n_pairs = sum(len(r) for r in c._pairs.values())
        for name in ("since_ts", "until_ts"):
            value = payload.get(name)
            setattr(c, name, None if value is None else float(value))
        if c.since_ts is None and not c.empty:  # saved before session 22: of any time, and the
            c.since_ts = 0.0  # next event must not date them (a dated snapshot drops them)
        return c


_PAYLOAD_FORMAT = 2


def _b64(arr: np.ndarray) -> str:
    little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return base64.b64encode(little.tobytes()).decode()


def _unb64(text: str, dtype: type[np.generic]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))


@functools.cache
def _no_snapshot() -> CovisitModel:
    """One shared empty snapshot: caches keyed by the snapshot see the same one every step."""
    return CovisitModel.empty()


class RowCache:
    """Merged neighbour rows and visit totals kept from one engine step to the next.

    A row (snapshot + every partition's online pairs) only changes when a counter bumps it, so
    a step rebuilds just the rows its predecessors touched instead of all ~14 per user; the
    visit totals likewise are updated for the items visited since, not summed from every
    counter each step. The counters flag what changed; :meth:`sync` drops or recomputes that
    (everything after a prune, a new snapshot or another set of counters). One cache per
    engine: it consumes the flags.
    """

    def __init__(self) -> None:
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.totals: np.ndarray = np.zeros(0)
        self._base_totals: np.ndarray = np.zeros(0)
        self._base: CovisitModel | None = None
        self._deltas: list[CovisitCounter] = []

    def sync(
        self, base: CovisitModel, base_ids: np.ndarray, deltas: Sequence[CovisitCounter], n: int
    ) -> None:
        same = base is self._base and len(deltas) == len(self._deltas)
        same = same and all(a is b for a, b in zip(deltas, self._deltas, strict=False))
        if not same or any(d.dirty_all for d in deltas):
            self.rows.clear()
            self._base_totals = np.zeros(n, np.float64)
            self._base_totals[base_ids] += base.counts
            self.totals = visit_totals(self._base_totals, deltas)
        else:
            for d in deltas:
                for i in d.dirty:
                    self.rows.pop(i, None)
            changed = sorted(set().union(*(d.dirty_counts for d in deltas)))
            grown = n - len(self.totals)
            if changed or grown:
                # a new array: an index of an earlier step keeps the totals it was built with
                totals = np.concatenate([self.totals, np.zeros(max(grown, 0))])
                self._base_totals = np.concatenate(
                    [self._base_totals, np.zeros(max(n - len(self._base_totals), 0))]
                )
                for i in changed:  # the order of visit_totals: snapshot, then each counter
                    total = self._base_totals[i]
                    for d in deltas:
                        total += d.count_of(i)
                    totals[i] = total
                self.totals = totals
        for d in deltas:
            d.dirty.clear()
            d.dirty_counts.clear()
            d.dirty_all = False
        self._base, self._deltas = base, list(deltas)


def visit_totals(base_totals: np.ndarray, deltas: Iterable[CovisitCounter]) -> np.ndarray:
    """Snapshot visit counts plus every counter's, by interned id."""
    totals = base_totals.copy()
    for d in deltas:
        keys, values = d.count_arrays()
        totals[keys] += values  # keys are unique within one counter
    return totals


class CovisitIndex:
    """A snapshot plus online deltas, read as one set of counts.

    Built once per engine step; counts must not change while it is in use (the engine applies
    a batch's pairs after its recommendations), so the visit totals are read once, up front,
    and neighbour rows (``rows``: kept across steps) and window scores are memoized.
    """

    def __init__(
        self,
        base: CovisitModel | None,
        deltas: Iterable[CovisitCounter],
        recency: float,
        ids: ItemIds | None = None,
        rows: RowCache | None = None,
    ) -> None:
        self.base = base or _no_snapshot()
        self.deltas = list(deltas)
        self.recency = recency
        self.ids = ids if ids is not None else (self.deltas[0].ids if self.deltas else ItemIds())
        if any(d.ids is not self.ids for d in self.deltas):
            raise ValueError("co-visitation counters must share the index's ItemIds")
        self._base_ids = self.ids.of_model(self.base)
        if rows is not None:
            rows.sync(self.base, self._base_ids, self.deltas, len(self.ids))
            self._totals = rows.totals
        else:
            base_totals = np.zeros(len(self.ids), np.float64)
            base_totals[self._base_ids] += self.base.counts
            self._totals = visit_totals(base_totals, self.deltas)
        self._scores: dict[tuple[str, ...], CovisitScores] = {}
        self._rows = rows.rows if rows is not None else {}

    def _total(self, i: int | None) -> float:
        return float(self._totals[i]) if i is not None and 0 <= i < len(self._totals) else 0.0

    def count(self, item: str) -> float:
        return self._total(self.ids.get(item))

    def counts(self, items: Sequence[str]) -> np.ndarray:
        return self.counts_of(self.ids.lookup(items))

    def counts_of(self, gids: np.ndarray) -> np.ndarray:
        """Visit totals of interned ids (-1 or an id newer than this index: 0)."""
        ok = (gids >= 0) & (gids < len(self._totals))
        out = np.zeros(len(gids), np.float32)
        out[ok] = self._totals[gids[ok]]
        return out

    def _row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i``'s neighbours (snapshot + every partition's online pairs) as arrays."""
        row = self._rows.get(i)
        if row is None:
            idx: list[np.ndarray] = []
            val: list[np.ndarray] = []
            b = self.base.index.get(self.ids.names[i])
            if b is not None:
                lo, hi = int(self.base.indptr[b]), int(self.base.indptr[b + 1])
                idx.append(self._base_ids[self.base.indices[lo:hi]])
                val.append(self.base.data[lo:hi].astype(np.float64))
            keys: list[int] = []
            values: list[float] = []
            for d in self.deltas:  # one list of every partition's pairs: extend runs in C
                d.extend_row(i, keys, values)
            if keys:
                idx.append(np.array(keys, np.int64))
                online = np.array(values, np.float64)
                scale = self.base.online_pair_scale  # online pairs in the snapshot's units
                val.append(online * scale if scale != 1.0 else online)
            if not idx:
                row = (np.zeros(0, np.int64), np.zeros(0, np.float64))
            elif len(idx) == 1:
                row = (idx[0], val[0])
            else:
                row = (np.concatenate(idx), np.concatenate(val))
            self._rows[i] = row
        return row

    def popular(self, n: int) -> list[str]:
        """The ``n`` most visited items (snapshot plus deltas; ties: first interned first, but
        of the items tied at the ``n``-th place numpy's partition picks which are in)."""
        if n <= 0 or not len(self._totals):
            return []
        totals = self._totals
        top = np.argpartition(-totals, n - 1)[:n] if n < len(totals) else np.arange(len(totals))
        top = top[totals[top] > 0]
        order = top[np.lexsort((top, -totals[top]))]
        names = self.ids.names
        return [names[int(i)] for i in order]

    def scores(self, recent: Sequence[str]) -> CovisitScores:
        """Recency-weighted cosine co-visitation of every neighbor of ``recent`` (newest last).

        Memoized per ``recent`` window for the life of the index (one engine step): the channel
        in ``prepare`` and the features in ``recommend`` ask for the same window.
        """
        key = tuple(recent)
        cached = self._scores.get(key)
        if cached is None:
            cached = self._scores[key] = self._compute_scores(recent)
        return cached

    def prime(self, windows: Iterable[Sequence[str]]) -> None:
        """Score every window of a batch in one pass, for :meth:`scores` to hand out.

        One user at a time cost a dozen numpy calls per window (~120 windows in a 400-event
        batch). Here every window's weighted rows go into one ``bincount`` over (window, item)
        cells: each cell adds the same terms in the same order as :meth:`_compute_scores`, so
        the scores are the same floats. Past ``_PRIME_MAX_CELLS`` cells (a large catalog) the
        windows are scored one by one, where the sparse sum follows each window's neighbours.
        """
        todo = list(dict.fromkeys(k for w in windows if (k := tuple(w)) not in self._scores))
        n_items = len(self._totals)
        if not todo or not n_items or len(todo) * n_items > _PRIME_MAX_CELLS:
            for key in todo:
                self._scores[key] = self._compute_scores(key)
            return
        get = self.ids.get
        totals = self._totals
        rows = self._rows
        powers = [self.recency**k for k in range(max(len(k) for k in todo))]
        parts_idx: list[np.ndarray] = []
        parts_val: list[np.ndarray] = []
        scales: list[float] = []
        owners: list[int] = []
        for w, recent in enumerate(todo):
            nr = len(recent)
            for t, r in enumerate(recent):
                i = get(r)
                if i is None or i >= n_items:
                    continue
                n_r = float(totals[i])
                if n_r <= 0:
                    continue
                idx, val = rows.get(i) or self._row(i)
                if len(idx):
                    parts_idx.append(idx)
                    parts_val.append(val)
                    scales.append(powers[nr - 1 - t] / math.sqrt(n_r))
                    owners.append(w)
        empty = CovisitScores(self.ids, np.zeros(0, np.int64), np.zeros(0))
        if not parts_idx:
            self._scores.update(dict.fromkeys(todo, empty))
            return
        lengths = np.fromiter((len(v) for v in parts_val), np.int64, len(parts_val))
        weights = np.concatenate(parts_val) * np.repeat(np.asarray(scales), lengths)
        cells = np.repeat(np.asarray(owners, np.int64) * n_items, lengths)
        cells += np.concatenate(parts_idx)
        dense = np.bincount(cells, weights=weights, minlength=len(todo) * n_items)
        hit = np.flatnonzero(dense)  # every pair count and weight is positive
        window, keys = np.divmod(hit, n_items)
        raw = dense[hit]
        tot = totals[keys]
        keep = tot > 0
        window, keys, values = window[keep], keys[keep], raw[keep] / np.sqrt(tot[keep])
        bounds = np.searchsorted(window, np.arange(len(todo) + 1))
        for w, key in enumerate(todo):
            lo, hi = int(bounds[w]), int(bounds[w + 1])
            self._scores[key] = (
                CovisitScores(self.ids, keys[lo:hi], values[lo:hi]) if hi > lo else empty
            )

    def _compute_scores(self, recent: Sequence[str]) -> CovisitScores:
        nr = len(recent)
        parts_idx: list[np.ndarray] = []
        parts_val: list[np.ndarray] = []
        scales: list[float] = []
        for t, r in enumerate(recent):
            i = self.ids.get(r)
            n_r = self._total(i)
            if n_r <= 0 or i is None:
                continue
            idx, val = self._row(i)
            if len(idx):
                parts_idx.append(idx)
                parts_val.append(val)
                scales.append(self.recency ** (nr - 1 - t) / math.sqrt(n_r))
        if not parts_idx:
            return CovisitScores(self.ids, np.zeros(0, np.int64), np.zeros(0))
        idx = np.concatenate(parts_idx)
        # each row times its item's weight, in one product (the same floats as row by row)
        lengths = np.fromiter((len(v) for v in parts_val), np.int64, len(parts_val))
        weights = np.concatenate(parts_val) * np.repeat(np.asarray(scales), lengths)
        if len(self._totals) <= _DENSE_PER_ENTRY * len(idx):
            # a catalog not much larger than the window's neighbours: one pass over a dense
            # array beats sorting them (the same sums, added in the same order)
            dense = np.bincount(idx, weights=weights, minlength=len(self._totals))
            keys = np.flatnonzero(dense)  # every pair count and weight is positive
            raw = dense[keys]
        else:
            # sparse: the work follows the window's neighbours, not the catalog's size
            keys, inverse = np.unique(idx, return_inverse=True)
            raw = np.bincount(inverse, weights=weights, minlength=len(keys))
        totals = self._totals[keys]
        keep = totals > 0
        return CovisitScores(self.ids, keys[keep], raw[keep] / np.sqrt(totals[keep]))

    def top(self, recent: Sequence[str], n: int, exclude: Iterable[str] = ()) -> list[str]:
        excluded = set(exclude)
        scored = self.scores(recent)
        ranked = scored.largest(n + len(excluded))
        return [i for i in ranked if i not in excluded][:n]


# dense window scores while the catalog has at most this many items per neighbour entry
_DENSE_PER_ENTRY = 4
# a batch's windows are scored together while windows × items is at most this many cells
# (16 MiB of float64): ~120 windows over a catalog of ~17k items
_PRIME_MAX_CELLS = 1 << 21


class CovisitScores:
    """Read-only ``item → score``: sorted interned ids and their scores."""

    def __init__(self, ids: ItemIds, keys: np.ndarray, values: np.ndarray) -> None:
        self._ids = ids
        self._keys = keys
        self._values = values

    def get(self, item: str, default: float = 0.0) -> float:
        i = self._ids.get(item)
        if i is None:
            return default
        got = self.of(np.array([i], np.int64))[0]
        return float(got) if got != 0.0 else default

    def __getitem__(self, item: str) -> float:
        value = self.get(item, math.nan)
        if math.isnan(value):
            raise KeyError(item)
        return value

    def of(self, gids: np.ndarray) -> np.ndarray:
        """Scores of interned ids (0 for -1 and unscored ids)."""
        out = np.zeros(len(gids), np.float32)
        if not len(self._keys) or not len(gids):
            return out
        pos = np.searchsorted(self._keys, gids)
        pos[pos >= len(self._keys)] = 0
        hit = self._keys[pos] == gids
        out[hit] = self._values[pos[hit]]
        return out

    def largest(self, n: int) -> list[str]:
        """The ``n`` best-scored items, best first (ties: lower id first; of the items tied at
        the ``n``-th place, numpy's partition picks which are in: deterministic, not by id)."""
        values = self._values
        if n <= 0 or not len(values):
            return []
        part = np.argpartition(-values, n - 1)[:n] if n < len(values) else np.arange(len(values))
        order = part[np.lexsort((self._keys[part], -values[part]))]
        names = self._ids.names
        return [names[int(self._keys[i])] for i in order]


def _meta_checksum(meta: Mapping[str, str]) -> str:
    """SHA-256 of the metadata but itself, in key order."""
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "meta_checksum"):
        h.update(key.encode())
        h.update(b"\0")
        h.update(meta[key].encode())
        h.update(b"\0")
    return h.hexdigest()


def _checksum(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()
