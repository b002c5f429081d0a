"""The learned ranker: forward = concat MLP, save → load round trip, refusals, hot reload."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from ranking.features import FEATURES, feature_matrix
from ranking.ranker import (
    ArtifactWatcher,
    RankerLoadError,
    RankerMeta,
    RankerMLP,
    RankerScorer,
    _checksum,
    load_ranker,
    ranker_watcher,
    relevance,
    save_ranker,
)
from ranking.scoring import Candidates, ItemPrior
from ranking.training import listwise_loss, mask_as_new

pytestmark = pytest.mark.unit
DIM = 16


def _scorer(seed: int = 0, version: str = "v-test") -> RankerScorer:
    torch.manual_seed(seed)
    model = RankerMLP(DIM, len(FEATURES), hidden=8)
    meta = RankerMeta(
        version=version,
        dim=DIM,
        hidden=8,
        features=list(FEATURES),
        encoder="enc",
        data_hash="abc",
    )
    return RankerScorer(model, meta)


def _cands(m: int = 12, seed: int = 1) -> tuple[np.ndarray, Candidates]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(m, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    user = vecs[0] + vecs[1]
    user /= np.linalg.norm(user)
    return user, Candidates(
        ids=[f"i{j}" for j in range(m)],
        vectors=vecs,
        cosine=vecs @ user,
        popularity=rng.random(m).astype(np.float32),
        categories=["A" if j % 2 else "B" for j in range(m)],
        is_cold=np.zeros(m, bool),
        counts=rng.integers(0, 50, m).astype(np.float32),
        covisit=rng.random(m).astype(np.float32),
        age_s=np.full(m, np.nan),
        profile_events=3,
    )


def test_factored_forward_equals_concat_mlp() -> None:
    model = RankerMLP(DIM, len(FEATURES), hidden=8).eval()
    u = torch.randn(3, DIM)
    items = torch.randn(3, 5, DIM)
    feats = torch.randn(3, 5, len(FEATURES))
    torch.testing.assert_close(model(u, items, feats), model.forward_concat(u, items, feats))
    torch.testing.assert_close(
        model(u[0], items[0], feats[0]), model.forward_concat(u[0], items[0], feats[0])
    )


def test_features_are_bounded_and_ordered() -> None:
    _, cands = _cands()
    f = feature_matrix(cands, {"A": 3.0, "B": 1.0})
    assert f.shape == (12, len(FEATURES))
    col = {n: j for j, n in enumerate(FEATURES)}
    assert f[:, col["covisit_rel"]].max() == pytest.approx(1.0)
    assert set(np.round(f[:, col["category_affinity"]], 3)) == {0.75, 0.25}
    assert np.all(f[:, col["item_age"]] == 0)  # unknown age
    assert np.isfinite(f).all()


def test_round_trip_gives_the_same_scores(tmp_path: Path) -> None:
    scorer = _scorer()
    user, cands = _cands()
    before = scorer.score(user, cands, {"A": 1.0})
    path = save_ranker(tmp_path / "r.safetensors", scorer)
    loaded = load_ranker(path, expect_dim=DIM, expect_encoder="enc")
    np.testing.assert_array_equal(loaded.score(user, cands, {"A": 1.0}), before)
    assert loaded.version == "v-test"
    assert loaded.meta.features == list(FEATURES)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_corrupt_file_is_refused(tmp_path: Path) -> None:
    path = save_ranker(tmp_path / "r.safetensors", _scorer())
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip a weight bit: still valid safetensors, wrong checksum
    path.write_bytes(bytes(raw))
    with pytest.raises(RankerLoadError, match="checksum"):
        load_ranker(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(RankerLoadError, match="not a readable"):
        load_ranker(path)
    with pytest.raises(RankerLoadError, match="no ranker file"):
        load_ranker(tmp_path / "missing.safetensors")


def test_mismatched_file_is_refused(tmp_path: Path) -> None:
    path = save_ranker(tmp_path / "r.safetensors", _scorer())
    with pytest.raises(RankerLoadError, match="384-d"):
        load_ranker(path, expect_dim=384)
    with pytest.raises(RankerLoadError, match="encoder"):
        load_ranker(path, expect_encoder="other-model")
    # a file trained on other features (metadata rewritten with a valid checksum)
    other = _scorer()
    other.meta.features = [*FEATURES, "extra"]
    path2 = save_ranker(tmp_path / "r2.safetensors", other)
    with pytest.raises(RankerLoadError, match="features"):
        load_ranker(path2)


def test_watcher_swaps_and_keeps_previous_on_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    watcher = ranker_watcher(path, expect_dim=DIM, expect_encoder="enc")
    assert watcher.poll() is None  # no file yet
    save_ranker(path, _scorer(version="v1"))
    first = watcher.poll()
    assert first is not None and first.version == "v1"
    assert watcher.poll() is None  # unchanged file: nothing to do
    time.sleep(0.01)
    path.write_bytes(b"garbage")
    assert watcher.poll() is None
    assert watcher.current is first and watcher.last_error is not None
    time.sleep(0.01)
    save_ranker(path, _scorer(seed=3, version="v2"))
    second = watcher.poll()
    assert second is not None and second.version == "v2" and watcher.last_error is None


def test_generic_watcher_survives_loader_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    watcher: ArtifactWatcher[dict[str, int]] = ArtifactWatcher(
        path, lambda p: json.loads(p.read_text())
    )
    path.write_text('{"a": 1}')
    assert watcher.poll() == {"a": 1}
    time.sleep(0.01)
    path.write_text("{broken")
    assert watcher.poll() is None and watcher.current == {"a": 1}


def test_a_watcher_keeps_the_previous_model_whatever_the_loader_raises(tmp_path: Path) -> None:
    """Only ValueError and OSError were caught: a damaged file raising TypeError (valid JSON of
    the wrong type) escaped into the reload timer, which stops the app, and at start-up the
    worker crash-looped until the file was removed (found by review)."""
    path = tmp_path / "x.json"
    watcher: ArtifactWatcher[int] = ArtifactWatcher(path, lambda p: len(json.loads(p.read_text())))
    path.write_text("[1, 2]")
    assert watcher.poll() == 2
    time.sleep(0.01)
    path.write_text("7")  # len(7): TypeError
    assert watcher.poll() is None and watcher.current == 2
    assert watcher.last_error is not None and watcher.last_error.startswith("TypeError")


def test_a_watcher_sees_a_file_renamed_in_with_the_old_size_and_mtime(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -a`` or a save within the same tick keep size and mtime: the stamp
    was (mtime, size), so the new model was never loaded (found by review)."""
    path = tmp_path / "r.safetensors"
    save_ranker(path, _scorer(0, version="v1"))
    watcher = ranker_watcher(path, expect_dim=DIM)
    assert watcher.poll() is not None
    st = path.stat()
    save_ranker(path, _scorer(1, version="v2"))  # same shapes: same size; a new inode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    loaded = watcher.poll()
    assert loaded is not None and loaded.version == "v2"


@pytest.mark.unit
def test_mask_as_new_zeroes_history_features_of_chosen_rows_only() -> None:

    feats = np.arange(3 * len(FEATURES), dtype=np.float32).reshape(3, len(FEATURES)) + 1.0
    out = mask_as_new(feats, np.array([False, True, False]))
    history = [FEATURES.index(n) for n in ("log_popularity", "covisit", "covisit_rel", "item_age")]
    others = [j for j in range(len(FEATURES)) if j not in history]
    assert np.all(out[1, history] == 0.0)
    assert np.array_equal(out[1, others], feats[1, others])  # content and user features kept
    assert np.array_equal(out[[0, 2]], feats[[0, 2]])
    assert np.all(feats > 0)  # the input is not modified


def test_wide_tower_forward_equals_concat_and_round_trips_with_prior(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = RankerMLP(DIM, len(FEATURES), hidden=8, wide=4).eval()
    u = torch.randn(2, DIM)
    items = torch.randn(2, 5, DIM)
    feats = torch.randn(2, 5, len(FEATURES))
    torch.testing.assert_close(model(u, items, feats), model.forward_concat(u, items, feats))
    meta = RankerMeta("v-wide", DIM, 8, list(FEATURES), "enc", "abc", wide=4)
    prior = ItemPrior(np.linspace(-1, 1, DIM).astype(np.float32), 0.5)
    scorer = RankerScorer(model, meta, prior)
    user, cands = _cands()
    path = save_ranker(tmp_path / "w.safetensors", scorer)
    loaded = load_ranker(path, expect_dim=DIM)
    assert loaded.meta.wide == 4
    np.testing.assert_array_equal(loaded.score(user, cands, {}), scorer.score(user, cands, {}))
    assert loaded.prior is not None
    np.testing.assert_array_equal(loaded.prior.weight, prior.weight)
    assert loaded.prior.bias == pytest.approx(0.5)
    # a file without a prior (or without the tower) still loads, as before
    plain = load_ranker(save_ranker(tmp_path / "p.safetensors", _scorer()))
    assert plain.prior is None and plain.meta.wide == 0


def test_item_prior_is_the_ridge_fit_and_ignores_unvisited_items() -> None:
    rng = np.random.default_rng(0)
    x = 0.5 * rng.normal(size=(40, 3))
    x[5:] -= x[5:].mean(axis=0)  # the visited rows centred: then the fit is exact at l2 = 0
    w = np.array([0.5, -0.25, 1.0])
    y = x @ w + 3.0
    assert (y[5:] > 0).all()
    counts = np.expm1(y)
    counts[:5] = 0.0  # never visited: left out of the fit
    x[:5] = 100.0  # so including them would spoil the fit
    exact = ItemPrior.fit(x, counts, l2=0.0)
    np.testing.assert_allclose(exact.weight, w, atol=1e-5)
    assert exact.bias == pytest.approx(3.0)
    np.testing.assert_allclose(exact(x[5:]), y[5:], atol=1e-4)
    # with a penalty: the ridge normal equations X'(y − b − Xw) = l2·w on the visited rows
    ridge = ItemPrior.fit(x, counts, l2=3.0)
    resid = y[5:] - ridge.bias - x[5:] @ ridge.weight
    np.testing.assert_allclose(x[5:].T @ resid, 3.0 * ridge.weight, atol=1e-4)
    # nothing to learn from: a zero prior
    assert np.all(ItemPrior.fit(x, np.zeros(40)).weight == 0)


def test_listwise_loss_on_a_hand_computed_list() -> None:

    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0), 5.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])  # the last row is padding
    # softmax over exp(0), exp(log 2), exp(log 3) = 1, 2, 3 (sum 6); positives rows 0 and 2
    expected = -(math.log(1 / 6) + math.log(3 / 6)) / 2
    assert float(listwise_loss(logits, labels, mask)) == pytest.approx(expected)
    # a list without positives adds 0 to the batch mean
    two = listwise_loss(
        torch.cat([logits, logits]),
        torch.cat([labels, torch.zeros_like(labels)]),
        mask.repeat(2, 1),
    )
    assert float(two) == pytest.approx(expected / 2)


def test_batched_scores_equal_per_user_scores() -> None:
    scorer = _scorer()
    lists = [_cands(m, seed) for m, seed in ((12, 1), (5, 2), (2, 3), (9, 4))]
    users = [u for u, _ in lists]
    cands = [c for _, c in lists]
    affinities: list[dict[str, float]] = [{}, {"Drama": 1.0}, {}, {"Comedy": 0.5}]
    batched = scorer.score_many(users, cands, affinities)
    for u, c, aff, got in zip(users, cands, affinities, batched, strict=True):
        np.testing.assert_allclose(got, scorer.score(u, c, aff), rtol=1e-5, atol=1e-6)
    assert [len(b) for b in batched] == [12, 5, 2, 9]


def _ensemble(n: int = 3) -> RankerScorer:
    models = []
    for seed in range(n):
        torch.manual_seed(100 + seed)
        models.append(RankerMLP(DIM, len(FEATURES), hidden=8, wide=4))
    meta = RankerMeta(
        version="v-ens",
        dim=DIM,
        hidden=8,
        wide=4,
        features=list(FEATURES),
        encoder="enc",
        data_hash="abc",
        members=n,
    )
    return RankerScorer(models, meta)


def test_ensemble_scores_are_the_mean_of_its_members_relevances() -> None:

    scorer = _ensemble(3)
    user, cands = _cands()
    feats = torch.from_numpy(feature_matrix(cands, {"A": 1.0}))
    with torch.inference_mode():
        each = [
            relevance(m(torch.from_numpy(user), torch.from_numpy(cands.vectors), feats).numpy())
            for m in scorer.models
        ]
    mean = np.mean(each, axis=0)
    want = (mean - mean.min()) / (mean.max() - mean.min())
    got = scorer.score(user, cands, {"A": 1.0})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, each[0])  # the members differ, so the mean is not member 0
    batched = scorer.score_many([user, user], [cands, cands], [{"A": 1.0}, {"A": 1.0}])
    for b in batched:
        np.testing.assert_allclose(b, got, rtol=1e-5, atol=1e-6)


def test_ensemble_round_trips_and_a_missing_member_is_refused(tmp_path: Path) -> None:

    scorer = _ensemble(3)
    user, cands = _cands()
    path = save_ranker(tmp_path / "e.safetensors", scorer)
    loaded = load_ranker(path, expect_dim=DIM)
    assert loaded.meta.members == 3 and len(loaded.models) == 3
    np.testing.assert_array_equal(loaded.score(user, cands, {}), scorer.score(user, cands, {}))
    # drop member 2's tensors and re-sign the file: the checksum passes, the members do not

    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata() or {})
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("member2.")}

    meta["checksum"] = _checksum(tensors, meta)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(RankerLoadError, match="do not fit"):
        load_ranker(tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    ("key", "value"),
    [("hidden", "-1"), ("dim", "0"), ("wide", "-3"), ("metrics", "[]"), ("metrics", '"x"')],
)
def test_crafted_metadata_is_a_load_error(tmp_path: Path, key: str, value: str) -> None:
    """Metadata rewritten with a valid checksum: every problem is a RankerLoadError (before, a
    negative width raised RuntimeError, a list of metrics AttributeError, and a negative
    ``wide`` loaded as 0). Found by review."""
    path = save_ranker(tmp_path / "r.safetensors", _scorer())
    with safe_open(str(path), framework="numpy") as fh:
        meta = dict(fh.metadata() or {})
    tensors = load_file(str(path))
    meta[key] = value
    meta["checksum"] = _checksum(tensors, meta)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(RankerLoadError):
        load_ranker(tmp_path / "bad.safetensors")


def test_single_member_files_keep_the_unprefixed_layout(tmp_path: Path) -> None:

    path = save_ranker(tmp_path / "one.safetensors", _scorer())
    assert not any(k.startswith("member") for k in load_file(str(path)))
    assert load_ranker(path).meta.members == 1


def test_training_lists_hold_no_item_published_after_their_time() -> None:
    """A list at time t held items published long after t (even as positives), with age 0 and
    other users' whole popularity: rows the worker can never show (found by review)."""
    import pandas as pd

    from ranking.covisit import CovisitIndex, CovisitModel
    from ranking.engine import EngineConfig
    from ranking.profile import ProfileConfig
    from ranking.training import ItemTable, _lists_for_user

    rng = np.random.default_rng(0)
    n = 30
    vecs = rng.normal(size=(n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(n)]
    created = np.array([100.0] * 20 + [10_000.0] * 10)  # i20..i29 come after the lists
    items = ItemTable(ids, vecs, [{"category": "c", "created_at": c} for c in created])
    seq = pd.DataFrame(
        {
            "user_id": ["u"] * 3,
            "item_id": ["i1", "i2", "i25"],
            "ts": [200.0, 300.0, 20_000.0],
            "type": ["view"] * 3,
            "rating": [np.nan] * 3,
            "text": [None] * 3,
        }
    )
    cfg = EngineConfig(profile=ProfileConfig(weights={"view": 1.0}, half_life_s=1e9))
    index = CovisitIndex(CovisitModel.build([ids], window=2, neighbors=5), [], 0.8)
    row_of = {i: r for r, i in enumerate(ids)}
    popular = [("i27", "trending"), ("i3", "trending")]

    def pool(with_created: bool) -> list[str]:
        made = _lists_for_user(
            seq,
            items,
            row_of,
            index,
            popular,
            np.ones(n, bool),
            cfg,
            (2,),
            created if with_created else None,
        )
        return [ids[r] for r in made[0][0].rows]

    before = pool(False)
    assert any(row_of[i] >= 20 for i in before)  # what it was
    after = pool(True)
    assert after and all(created[row_of[i]] <= 300.0 for i in after)
    assert "i3" in after


def test_the_data_hash_changes_with_ratings_and_types() -> None:
    import pandas as pd

    from ranking.training import data_hash

    df = pd.DataFrame(
        {
            "user_id": ["u", "u"],
            "item_id": ["a", "b"],
            "ts": [1.0, 2.0],
            "type": ["rate"] * 2,
            "rating": [5.0, 5.0],
        }
    )
    assert data_hash(df, ["a", "b"]) == data_hash(df.copy(), ["a", "b"])
    assert data_hash(df, ["a", "b"]) != data_hash(df.assign(rating=[1.0, 1.0]), ["a", "b"])
    assert data_hash(df, ["a", "b"]) != data_hash(df.assign(type=["view", "rate"]), ["a", "b"])


def test_a_user_with_only_text_events_counts_no_covisitation() -> None:
    """The generic format allows a user whose every row is a search or a profile text; the
    evaluation names its training users from all rows, and counting co-visitation for them
    raised KeyError (found by review)."""
    import pandas as pd

    from ranking.training import TrainConfig, build_covisit, user_sequences

    log = pd.DataFrame(
        {
            "user_id": ["a", "a", "searcher", "b", "b"],
            "item_id": ["i1", "i2", None, "i1", "i2"],
            "ts": [1.0, 2.0, 3.0, 4.0, 5.0],
            "type": ["view", "view", "search", "view", "view"],
        }
    )
    seqs = user_sequences(log)
    assert "searcher" not in seqs
    model = build_covisit(seqs, ["a", "b", "searcher"], TrainConfig())
    assert model.count("i1") == 2.0
    assert model.neighbors("i1")[0] == ["i2"]
    # dated by the latest item event it counted (the search at 3.0 counts nothing)
    assert model.counted_until == 5.0
    assert build_covisit(seqs, ["a"], TrainConfig()).counted_until == 2.0
    assert build_covisit(seqs, ["a", "b"], TrainConfig(), dated=False).counted_until is None
    # an event from a clock that runs ahead does not date the snapshot past now
    ahead = log.assign(ts=[1.0, 2.0, 3.0, 4.0, time.time() + 86_000])
    before = time.time()
    dated = build_covisit(user_sequences(ahead), ["a", "b"], TrainConfig()).counted_until
    assert dated is not None and before <= dated <= time.time()


def test_a_ranker_served_with_another_datas_snapshot_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both load (either alone is a valid model), but the pair is flagged: a log line once per
    change and the ``coldstream_model_data_mismatch`` gauge, until they match again."""
    from infra import metrics
    from infra.settings import Settings
    from ranking.covisit import CovisitModel
    from streams.worker import ModelWatchers

    settings = Settings(data_dir=tmp_path)
    watchers = ModelWatchers(settings, dim=DIM, encoder="enc")
    save_ranker(settings.ranker_file, _scorer(version="v1"))  # data "abc"

    def snapshot(data: str) -> None:
        time.sleep(0.01)  # a new mtime for the watcher
        CovisitModel.build([["a", "b"]], window=2, neighbors=2, data_hash=data).save(
            settings.covisit_file
        )

    def gauge() -> float | None:
        return metrics.REGISTRY.get_sample_value("coldstream_model_data_mismatch")

    snapshot("def")
    with caplog.at_level("WARNING", logger="streams.worker"):
        ranker, covisit = watchers.poll()
        assert ranker is not None and covisit is not None  # served all the same
        assert gauge() != 1.0 and not caplog.records  # one poll may fall between two writes
        assert watchers.poll() == (None, None)  # the next one sees it still: said, once
        watchers.poll()
    message = watchers.mismatch()
    assert message is not None and "v1" in message and "abc" in message and "def" in message
    assert [r.getMessage() for r in caplog.records] == [message]
    assert gauge() == 1.0
    snapshot("abc")
    watchers.poll()
    assert watchers.mismatch() is None and gauge() == 0.0
    snapshot("")  # a snapshot without a data hash (by hand, or an older version): not judged
    watchers.poll()
    assert watchers.mismatch() is None and gauge() == 0.0
    # a retraining: the snapshot first, a poll, then the ranker: never reported
    caplog.clear()
    with caplog.at_level("WARNING", logger="streams.worker"):
        snapshot("xyz")
        watchers.poll()
        retrained = _scorer(version="v2")
        retrained.meta.data_hash = "xyz"
        time.sleep(0.01)
        save_ranker(settings.ranker_file, retrained)
        watchers.poll()
        watchers.poll()
    assert not caplog.records and gauge() == 0.0


def test_the_online_pair_scale_is_the_two_rules_ratio_on_the_kept_pairs() -> None:
    """One user viewing a, b, c. The snapshot (window 500) pairs all three: 6 counts both ways.
    A worker pairing each visit with its last recent item only pairs a-b and b-c: 4 of those.
    So each online pair stands for 1.5 snapshot counts. A rating of 0 pairs in the snapshot
    but not online (weight 0), and the cap on events recounts the snapshot over the users
    taken."""
    import dataclasses

    import pandas as pd

    from infra.settings import Settings
    from ranking.training import TrainConfig, build_covisit, online_pair_scale, user_sequences
    from streams.worker import engine_config

    engine = dataclasses.replace(engine_config(Settings()), covisit_window=1)
    log = pd.DataFrame(
        {
            "user_id": ["u"] * 3,
            "item_id": ["a", "b", "c"],
            "ts": [1.0, 2.0, 3.0],
            "type": ["view"] * 3,
            "rating": [float("nan")] * 3,
        }
    )
    seqs = user_sequences(log)
    model = build_covisit(seqs, ["u"], TrainConfig(), "h", engine)
    assert model.online_pair_scale == pytest.approx(1.5)
    assert build_covisit(seqs, ["u"], TrainConfig()).online_pair_scale == 1.0  # not served
    rated = log.assign(type="rate", rating=[5.0, 0.0, 5.0])  # b rated 0: never paired online
    seqs = user_sequences(rated)
    snapshot = build_covisit(seqs, ["u"], TrainConfig())
    # online: c after [a] (b left the recent items) -> a-c both ways: 2 of the kept 6
    assert online_pair_scale(seqs, ["u"], TrainConfig(), engine, snapshot) == pytest.approx(3.0)
    two = pd.concat([log, log.assign(user_id="v", item_id=["x", "y", "z"])])
    seqs = user_sequences(two)
    both = build_covisit(seqs, ["u", "v"], TrainConfig())
    # capped to the first user: both rules over u alone, not v's snapshot pairs against nothing
    assert online_pair_scale(
        seqs, ["u", "v"], TrainConfig(), engine, both, max_events=3
    ) == pytest.approx(1.5)
