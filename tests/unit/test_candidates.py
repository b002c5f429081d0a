"""A batch's pool table gives each user exactly the pool a one-user assembly gives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from ranking.candidates import PoolTable, assemble_candidates
from ranking.covisit import CovisitIndex, CovisitModel
from ranking.engine import EngineConfig
from ranking.profile import Profile, ProfileConfig
from ranking.scoring import Candidates
from ranking.store import Hit, StoredPoint, payload_copy

DIM = 8
NOW = 1_000_000.0
CFG = EngineConfig(profile=ProfileConfig(weights={}, half_life_s=3600.0), cold_item_max_age_s=100.0)


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _point(n: int, **payload: object) -> StoredPoint:
    fields: dict[str, object] = {
        "active": True,
        "created_at": NOW - 10.0 * n,
        "category": f"c{n % 3}",
    }
    return StoredPoint(f"i{n}", _unit(n), {**fields, **payload})


def _hit(point: StoredPoint, user: np.ndarray, *, vector: bool = True) -> Hit:
    assert point.vector is not None
    return Hit(
        point.id, float(point.vector @ user), point.payload, point.vector if vector else None
    )


def _assert_same(a: Candidates | None, b: Candidates | None) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    for f in dataclasses.fields(Candidates):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
            assert x.dtype == y.dtype, f.name
        else:
            assert x == y, f.name


def test_batch_table_pools_equal_one_user_pools() -> None:
    points = {p.id: p for p in (_point(n) for n in range(12))}
    changed = _point(5, category="moved")  # item 5 updated between the read and the search
    known = {
        **points,
        "i5": changed,
        "i9": _point(9, active=False),  # retired: never a channel item
        "i10": StoredPoint("i10", None, {"active": True}),  # no vector: never a channel item
    }
    del known["i11"]  # unknown to the read: never a channel item
    index = CovisitIndex(
        CovisitModel.build([["i0", "i3", "i4"], ["i3", "i6"]], window=2, neighbors=5), [], 0.8
    )
    popularity = {"i0": 3.0, "i3": 1.0, "i6": 0.5}
    a = Profile("a", vector=_unit(100), recent_items=["i0"], seen=["i0"], event_count=1)
    b = Profile("b", vector=_unit(101), recent_items=["i3"], seen=["i3", "i7"], event_count=2)
    c = Profile("c", vector=_unit(102), recent_items=[], seen=[], event_count=0)
    assert a.vector is not None and b.vector is not None and c.vector is not None
    hits = {
        # i1 is a's hit and b's channel item; i2 has no vector in a's hits
        "a": [_hit(points[i], a.vector) for i in ("i1", "i5", "i1")]
        + [_hit(points["i2"], a.vector, vector=False)],
        "b": [_hit(points[i], b.vector) for i in ("i4", "i6")],
        "c": [],
    }
    extras = {
        "a": [("i6", "covisit"), ("i0", "covisit"), ("i3", "trending")],
        "b": [(i, "covisit") for i in ("i1", "i2", "i5", "i7", "i9", "i10", "i11", "i8", "i8")],
        "c": [("i11", "trending")],
    }
    table = PoolTable(DIM, known, popularity, index)
    for uid in ("a", "b", "c"):
        table.add_hits(hits[uid])
    for uid in ("a", "b", "c"):
        table.add_extras(extras[uid])
    table.freeze()
    for profile in (a, b, c):
        uid = profile.user_id
        batch = table.pool(profile, hits[uid], extras[uid], NOW, CFG)
        alone = assemble_candidates(
            profile, hits[uid], extras[uid], known, popularity, index, NOW, CFG
        )
        _assert_same(batch, alone)
    pool_b = table.pool(b, hits["b"], extras["b"], NOW, CFG)
    assert pool_b is not None
    # b's channel items: seen, retired, vector-less, unknown and repeated ones dropped; i5 as read
    assert pool_b.ids == ["i4", "i6", "i1", "i2", "i5", "i8"]
    assert pool_b.categories[pool_b.ids.index("i5")] == "moved"
    pool_a = table.pool(a, hits["a"], extras["a"], NOW, CFG)
    assert pool_a is not None and pool_a.ids == ["i1", "i5", "i2", "i6", "i3"]
    assert not pool_a.vectors[2].any()  # a's vector-less hit; b's channel i2 has the vector
    assert pool_b.vectors[3] == pytest.approx(_unit(2))
    assert table.pool(c, hits["c"], extras["c"], NOW, CFG) is None


class _Payload(Mapping[str, object]):
    """A read-only mapping that is neither a dict nor a proxy (a third-party store's)."""

    def __init__(self, data: dict[str, object]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@pytest.mark.parametrize("wrap", [dict, MappingProxyType, _Payload])
def test_payload_copy_is_an_equal_dict_of_its_own(wrap: Callable[[dict[str, object]], Any]) -> None:
    source: dict[str, object] = {"category": "Drama", "active": True, "tags": ["a"]}
    view = wrap(source)
    copied = payload_copy(view)
    assert type(copied) is dict and copied == source
    copied["active"] = False
    assert source["active"] is True and view["active"] is True
