"""Co-visitation: which items other users touched near the ones this user just touched.

Two layers, merged at query time by :class:`CovisitIndex`:

- :class:`CovisitModel`, the learned snapshot: symmetric co-occurrence counts of item pairs at
  most ``window`` positions apart in each user's time-ordered history, pruned to the strongest
  ``neighbors`` per item, plus each item's visit count. Built by ``coldstream train`` from the
  interaction log and saved as safetensors (no pickle) with JSON metadata.
- :class:`CovisitCounter`, the online delta: the same counts, learned from the events a worker
  owns since the snapshot, one counter per input partition (like trending) so ownership follows
  the consumer group; persisted as a payload in the store.

Score of a candidate ``j`` for a user whose recent items are ``r_1 … r_n`` (newest last):
``Σ_t recency^(n−t) · c(r_t, j) / sqrt(n(r_t) · n(j))`` — item-kNN's cosine, recency-weighted.
"""

from __future__ import annotations

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
    ) -> None:
        n = len(item_ids)
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
        return cls(inv_index, counts, indptr, cols, sums, window=window, data_hash=data_hash)

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
            "item_ids": json.dumps(self.item_ids),
            "checksum": _checksum(tensors),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)  # readers never see a half-written snapshot

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
        try:
            item_ids = json.loads(meta["item_ids"])
            window = int(meta["window"])
        except (KeyError, ValueError) as exc:
            raise CovisitError(f"{path}: bad metadata: {exc}") from exc
        return cls(
            item_ids,
            tensors["counts"],
            tensors["indptr"],
            tensors["indices"],
            tensors["data"],
            window=window,
            data_hash=meta.get("data_hash", ""),
        )


class CovisitCounter:
    """Online pair and visit counts learned from live events (one per input partition)."""

    def __init__(self, max_pairs: int = 200_000, row_cap: int = 64) -> None:
        self.max_pairs = max_pairs
        self.row_cap = row_cap  # neighbours kept per item: bounds the per-user scoring loop
        self.counts: dict[str, float] = {}
        self.pairs: dict[str, dict[str, float]] = {}
        self._n_pairs = 0

    def add(self, recent: Sequence[str], item: str, weight: float = 1.0) -> None:
        """``item`` was just visited after ``recent`` (the window of items before it)."""
        self.counts[item] = self.counts.get(item, 0.0) + weight
        for other in recent:
            if other == item:
                continue
            self._bump(other, item, weight)
            self._bump(item, other, weight)
        if self._n_pairs > self.max_pairs * 1.2:
            self._prune()

    def _bump(self, a: str, b: str, w: float) -> None:
        row = self.pairs.get(a)
        if row is None:
            row = self.pairs[a] = {}
        if b not in row:
            self._n_pairs += 1
        row[b] = row.get(b, 0.0) + w
        if len(row) > 2 * self.row_cap:  # amortized: trim to the strongest neighbours
            keep = heapq.nlargest(self.row_cap, row.items(), key=lambda kv: kv[1])
            self._n_pairs -= len(row) - len(keep)
            self.pairs[a] = dict(keep)

    def _prune(self) -> None:
        flat = ((v, a, b) for a, row in self.pairs.items() for b, v in row.items())
        keep = heapq.nlargest(self.max_pairs, flat)
        self.pairs = {}
        for v, a, b in keep:
            self.pairs.setdefault(a, {})[b] = v
        self._n_pairs = len(keep)

    def to_payload(self) -> dict[str, Any]:
        return {"counts": self.counts, "pairs": self.pairs}

    @classmethod
    def from_payload(
        cls, payload: Mapping[str, Any], max_pairs: int = 200_000, row_cap: int = 64
    ) -> CovisitCounter:
        c = cls(max_pairs, row_cap)
        c.counts = {str(k): float(v) for k, v in payload.get("counts", {}).items()}
        c.pairs = {
            str(a): {str(b): float(v) for b, v in row.items()}
            for a, row in payload.get("pairs", {}).items()
        }
        c._n_pairs = sum(len(r) for r in c.pairs.values())
        return c


class CovisitIndex:
    """A snapshot plus online deltas, read as one set of counts."""

    def __init__(
        self, base: CovisitModel | None, deltas: Iterable[CovisitCounter], recency: float
    ) -> None:
        self.base = base or CovisitModel.empty()
        self.deltas = list(deltas)
        self.recency = recency
        # an index lives for one engine step, during which no count changes: memoizing the
        # per-item totals, the merged neighbour rows and the window scores is exact
        self._counts: dict[str, float] = {}
        self._scores: dict[tuple[str, ...], CovisitScores] = {}
        self._rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._totals: list[float] = []  # count() of each registered id
        self._totals_np = np.zeros(0, np.float64)

    def count(self, item: str) -> float:
        value = self._counts.get(item)
        if value is None:
            value = self.base.count(item) + sum(d.counts.get(item, 0.0) for d in self.deltas)
            self._counts[item] = value
        return value

    def counts(self, items: Sequence[str]) -> np.ndarray:
        return np.array([self.count(i) for i in items], dtype=np.float32)

    def _id(self, item: str) -> int:
        i = self._ids.get(item)
        if i is None:
            i = self._ids[item] = len(self._names)
            self._names.append(item)
            self._totals.append(self.count(item))
        return i

    def _row(self, item: str) -> tuple[np.ndarray, np.ndarray]:
        """``item``'s neighbours (snapshot + every partition's online pairs) as id/weight arrays."""
        row = self._rows.get(item)
        if row is None:
            ids, data = self.base.neighbors(item)
            idx = [self._id(j) for j in ids]
            val = data.astype(np.float64).tolist()
            for d in self.deltas:
                for j, c in d.pairs.get(item, {}).items():
                    idx.append(self._id(j))
                    val.append(c)
            row = self._rows[item] = (np.asarray(idx, np.int64), np.asarray(val, np.float64))
        return row

    def popular(self, n: int) -> list[str]:
        """The ``n`` most visited items (snapshot plus deltas)."""
        if n <= 0:
            return []
        base = self.base
        top = np.argsort(-base.counts, kind="stable")[: n * 2]
        scores = {base.item_ids[i]: float(base.counts[i]) for i in top}
        for d in self.deltas:
            for item in d.counts:
                scores[item] = self.count(item)
        return [i for i, _ in heapq.nlargest(n, scores.items(), key=lambda kv: kv[1])]

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

    def _compute_scores(self, recent: Sequence[str]) -> CovisitScores:
        nr = len(recent)
        parts_idx: list[np.ndarray] = []
        parts_val: list[np.ndarray] = []
        for t, r in enumerate(recent):
            n_r = self.count(r)
            if n_r <= 0:
                continue
            idx, val = self._row(r)
            if len(idx):
                parts_idx.append(idx)
                parts_val.append(val * (self.recency ** (nr - 1 - t) / math.sqrt(n_r)))
        if len(self._totals_np) != len(self._totals):
            self._totals_np = np.asarray(self._totals, np.float64)
        if not parts_idx:
            return CovisitScores(self._ids, np.zeros(0), np.zeros(0, np.int64), self._names)
        idx_all = np.concatenate(parts_idx)
        raw = np.bincount(idx_all, weights=np.concatenate(parts_val), minlength=len(self._names))
        touched = np.flatnonzero(np.bincount(idx_all, minlength=len(self._names)))
        totals = self._totals_np[touched]
        keep = touched[totals > 0]
        dense = np.zeros(len(self._names), np.float64)
        dense[keep] = raw[keep] / np.sqrt(self._totals_np[keep])
        return CovisitScores(self._ids, dense, keep, self._names)

    def top(self, recent: Sequence[str], n: int, exclude: Iterable[str] = ()) -> list[str]:
        excluded = set(exclude)
        scored = self.scores(recent)
        ranked = scored.largest(n + len(excluded))
        return [i for i in ranked if i not in excluded][:n]


class CovisitScores:
    """Read-only ``item → score`` over dense arrays (what ``dict`` cost per neighbour before)."""

    def __init__(
        self, ids: Mapping[str, int], dense: np.ndarray, nonzero: np.ndarray, names: list[str]
    ) -> None:
        self._ids = ids
        self._dense = dense
        self._nonzero = nonzero
        self._names = names
        self._mask = np.zeros(len(dense), bool)
        self._mask[nonzero] = True

    def _pos(self, item: object) -> int | None:
        i = self._ids.get(item) if isinstance(item, str) else None
        return i if i is not None and i < len(self._mask) and self._mask[i] else None

    def get(self, item: str, default: float = 0.0) -> float:
        i = self._pos(item)
        return default if i is None else float(self._dense[i])

    def __getitem__(self, item: str) -> float:
        i = self._pos(item)
        if i is None:
            raise KeyError(item)
        return float(self._dense[i])

    def largest(self, n: int) -> list[str]:
        """The ``n`` best-scored items, best first (ties: lower id first)."""
        if n <= 0 or not len(self._nonzero):
            return []
        values = self._dense[self._nonzero]
        part = np.argpartition(-values, n - 1)[:n] if n < len(values) else np.arange(len(values))
        order = part[np.lexsort((self._nonzero[part], -values[part]))]
        return [self._names[int(self._nonzero[i])] for i in order]


def _checksum(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(name.encode())
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()
