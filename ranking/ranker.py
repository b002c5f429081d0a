"""The learned ranker: a small MLP over ``[u, i, u⊙i, |u−i|, features]``, as a :class:`Scorer`.

Files are safetensors (tensors only, no pickle) whose header carries JSON metadata: format, version,
feature list, vector dimension, encoder name, training data hash, a checksum of the tensors and the
validation figures. :func:`load_ranker` refuses a corrupt file or one that does not fit the running
worker (other features, other dimension, other encoder) with :class:`RankerLoadError`, and
:class:`ArtifactWatcher` lets a worker pick up a new file without a restart while keeping the
previous model whenever the new one is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from ranking.features import FEATURES, feature_matrix
from ranking.scoring import Candidates, ItemPrior, unit_range

log = logging.getLogger(__name__)

FORMAT = "coldstream-ranker/1"
_PRIOR_W, _PRIOR_B = "item_prior.weight", "item_prior.bias"  # beside the model's tensors
_MEMBER = "member"  # an ensemble's tensors are named member<j>.<name>
_MAX_MEMBERS = 16
T = TypeVar("T")


class RankerLoadError(ValueError):
    """A ranker file is missing, corrupt, or was trained for another set-up."""


class RankerMLP(nn.Module):
    """``[u, i, u⊙i, |u−i|, f] → hidden → hidden → score``, plus ``f → wide → score``.

    The second tower (``wide`` > 0) reads the scalar features alone: beside 4·d vector inputs
    the few features (co-visitation, popularity, …) are easy to under-use, and a small net over
    them alone learns their combination from little data and generalizes. ``wide`` = 0 is the
    single-tower model (files written before the tower load as such).
    """

    def __init__(
        self, dim: int, n_features: int, hidden: int, dropout: float = 0.1, wide: int = 0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_features = n_features
        self.hidden = hidden
        self.wide = wide
        self.net = nn.Sequential(
            nn.Linear(4 * dim + n_features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.features_net = (
            nn.Sequential(nn.Linear(n_features, wide), nn.ReLU(), nn.Linear(wide, 1))
            if wide > 0
            else None
        )

    def _features_score(self, feats: torch.Tensor) -> torch.Tensor | float:
        if self.features_net is None:
            return 0.0
        return self.features_net(feats).squeeze(-1)

    def forward(self, user: torch.Tensor, items: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``user`` (..., d) against ``items`` (..., m, d) with ``feats`` (..., m, F) → (..., m).

        The first layer is ``Linear`` over the concatenation, computed block by block (the
        same sum, without materializing the (m, 4d + F) input): u and u⊙i fold into per-user
        weights, so only ``|u − i|`` needs a temporary.
        """
        first = self.net[0]
        assert isinstance(first, nn.Linear)
        hidden = first_layer(first.weight, first.bias, user, items, feats)
        return self.head(hidden, feats)

    def head(self, hidden: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Everything after the first layer's pre-activation: the rest of both towers."""
        return self.net[1:](hidden).squeeze(-1) + self._features_score(feats)

    def forward_concat(
        self, user: torch.Tensor, items: torch.Tensor, feats: torch.Tensor
    ) -> torch.Tensor:
        """The literal ``MLP(concat(u, i, u⊙i, |u−i|, f))``; :meth:`forward` equals it."""
        u = user.unsqueeze(-2).expand_as(items)
        x = torch.cat([u, items, u * items, (u - items).abs(), feats], dim=-1)
        return self.net(x).squeeze(-1) + self._features_score(feats)


def first_layer(
    weight: torch.Tensor,
    bias: torch.Tensor,
    user: torch.Tensor,
    items: torch.Tensor,
    feats: torch.Tensor,
) -> torch.Tensor:
    """``Linear(concat(u, i, u⊙i, |u−i|, f))`` computed block by block, without materializing
    the (m, 4d + F) input: u and u⊙i fold into per-user weights, so only ``|u − i|`` needs a
    temporary. ``weight`` may stack several models' first layers (an ensemble's, row-wise).
    """
    d = user.shape[-1]
    w_u, w_i, w_m, w_a, w_f = (
        weight[:, :d],
        weight[:, d : 2 * d],
        weight[:, 2 * d : 3 * d],
        weight[:, 3 * d : 4 * d],
        weight[:, 4 * d :],
    )
    u = user.unsqueeze(-2)  # (..., 1, d)
    # |u − i| is the one (..., m, d) temporary: serving takes its absolute value in place (a
    # second temporary of that size cost 2–15 ms per 60-user batch here, mostly page faults);
    # training keeps the out-of-place op that autograd needs
    diff = items - u
    diff = diff.abs() if torch.is_grad_enabled() else diff.abs_()
    # i·w_i + (u ⊙ i)·w_m = i·(w_i + u ⊙ w_m): one (d, h) matrix per user, one product
    per_user = (u.transpose(-1, -2) * w_m.T) if u.dim() > 2 else (user[:, None] * w_m.T)
    return u @ w_u.T + items @ (per_user + w_i.T) + diff @ w_a.T + feats @ w_f.T + bias


@dataclass
class RankerMeta:
    version: str
    dim: int
    hidden: int
    features: list[str]
    encoder: str
    data_hash: str
    created_at: float = field(default_factory=time.time)
    metrics: dict[str, float] = field(default_factory=dict)
    wide: int = 0  # the features-only tower's width (0 = none)
    members: int = 1  # rankers whose per-list relevances are averaged (an ensemble)


class RankerScorer:
    """Trained :class:`RankerMLP` members behind the :class:`Scorer` protocol.

    Each member's logits become a per-list relevance (:func:`relevance`, [0, 1]); an ensemble
    averages those and rescales once more. Only the order within a list matters, except to MMR,
    which reads the [0, 1] scale. Members fitted under other seeds disagree mostly on the noise
    (different folds, negatives and starting weights), so their mean ranks better than any one.
    """

    def __init__(
        self,
        models: RankerMLP | Sequence[RankerMLP],
        meta: RankerMeta,
        prior: ItemPrior | None = None,
    ) -> None:
        self.models = [models] if isinstance(models, RankerMLP) else list(models)
        if not self.models:
            raise ValueError("a ranker needs at least one model")
        for m in self.models:
            m.eval()
        self.meta = meta
        # the members' first layers stacked row-wise: one pass over the candidates (and one
        # |u − i| temporary) for all members, then each member's own head on its slice
        firsts = [m.net[0] for m in self.models]
        linears = [f for f in firsts if isinstance(f, nn.Linear)]
        assert len(linears) == len(firsts)
        self._weight = torch.cat([f.weight.detach() for f in linears])
        self._bias = torch.cat([f.bias.detach() for f in linears])
        self.version = meta.version
        # content → expected popularity, learned with the ranker: what orders new items
        self.prior = prior

    def score(
        self, user: np.ndarray, cands: Candidates, category_affinity: dict[str, float]
    ) -> np.ndarray:
        if not cands.ids:
            return np.zeros(0, dtype=np.float32)
        feats = torch.from_numpy(feature_matrix(cands, category_affinity))
        user_t = torch.from_numpy(np.asarray(user, dtype=np.float32))
        items_t = torch.from_numpy(np.asarray(cands.vectors, dtype=np.float32))
        return _mean_relevance(self._logits(user_t, items_t, feats))

    def _logits(self, user: torch.Tensor, items: torch.Tensor, feats: torch.Tensor) -> list[Any]:
        """Each member's logits, (..., m) arrays, from one stacked first layer."""
        with torch.inference_mode():
            hidden = first_layer(self._weight, self._bias, user, items, feats)
            parts = hidden.split([m.hidden for m in self.models], dim=-1)
            return [m.head(h, feats).numpy() for m, h in zip(self.models, parts, strict=True)]

    def score_many(
        self,
        users: Sequence[np.ndarray],
        cands: Sequence[Candidates],
        affinities: Sequence[dict[str, float]],
    ) -> list[np.ndarray]:
        """:meth:`score` for a batch's users in one forward pass over padded candidate lists.

        A per-user forward of this small MLP is mostly framework overhead (~0.5 ms measured
        per user); padding to the longest list costs far less.
        """
        sizes = [len(c.ids) for c in cands]
        width = max(sizes, default=0)
        if width == 0:
            return [np.zeros(0, dtype=np.float32) for _ in cands]
        dim = self.models[0].dim
        items = np.zeros((len(cands), width, dim), dtype=np.float32)
        feats = np.zeros((len(cands), width, self.models[0].n_features), dtype=np.float32)
        for row, (c, aff) in enumerate(zip(cands, affinities, strict=True)):
            if sizes[row]:
                items[row, : sizes[row]] = c.vectors
                feats[row, : sizes[row]] = feature_matrix(c, aff)
        user = torch.from_numpy(np.stack([np.asarray(u, dtype=np.float32) for u in users]))
        items_t, feats_t = torch.from_numpy(items), torch.from_numpy(feats)
        logits = self._logits(user, items_t, feats_t)
        return [_mean_relevance([lg[row, :n] for lg in logits]) for row, n in enumerate(sizes)]


def _mean_relevance(logits: Sequence[np.ndarray]) -> np.ndarray:
    if len(logits) == 1:
        return relevance(logits[0])
    return relevance(np.mean([relevance(lg) for lg in logits], axis=0))


def relevance(logits: np.ndarray) -> np.ndarray:
    """Logits → [0, 1] for one list, best = 1: a cosine-like scale for MMR's trade-off."""
    return unit_range(logits).astype(np.float32)


# ---------------------------------------------------------------------------------- files


def _checksum(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for key in sorted(meta):
        if key != "checksum":
            h.update(f"{key}={meta[key]}\n".encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}:{arr.dtype}:{arr.shape}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def save_ranker(path: str | Path, scorer: RankerScorer) -> Path:
    """Write atomically (temp file + rename): a watcher never reads half a file."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one member: the tensors under their own names (the layout of files before ensembles)
    tensors = {
        (k if len(scorer.models) == 1 else f"{_MEMBER}{j}.{k}"): v.detach().cpu().numpy()
        for j, model in enumerate(scorer.models)
        for k, v in model.state_dict().items()
    }
    if scorer.prior is not None:
        tensors[_PRIOR_W] = np.asarray(scorer.prior.weight, dtype=np.float32)
        tensors[_PRIOR_B] = np.array([scorer.prior.bias], dtype=np.float32)
    m = scorer.meta
    meta = {
        "format": FORMAT,
        "version": m.version,
        "dim": str(m.dim),
        "hidden": str(m.hidden),
        "wide": str(m.wide),
        "features": json.dumps(m.features),
        "encoder": m.encoder,
        "data_hash": m.data_hash,
        "created_at": repr(m.created_at),
        "metrics": json.dumps(m.metrics),
        "members": str(len(scorer.models)),
    }
    meta["checksum"] = _checksum(tensors, meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind
    return path


def load_ranker(
    path: str | Path, *, expect_dim: int | None = None, expect_encoder: str | None = None
) -> RankerScorer:
    """Load and verify; any problem is a :class:`RankerLoadError` naming the file and the cause."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RankerLoadError(f"{path}: no ranker file (run `coldstream train`)")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise RankerLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise RankerLoadError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("checksum") != _checksum(tensors, meta):
        raise RankerLoadError(f"{path}: checksum mismatch (corrupt or edited file)")
    try:
        info = RankerMeta(
            version=meta["version"],
            dim=int(meta["dim"]),
            hidden=int(meta["hidden"]),
            features=list(json.loads(meta["features"])),
            encoder=meta["encoder"],
            data_hash=meta["data_hash"],
            created_at=float(meta["created_at"]),
            metrics={k: float(v) for k, v in _json_object(meta.get("metrics", "{}")).items()},
            wide=int(meta.get("wide", "0")),
            members=int(meta.get("members", "1")),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise RankerLoadError(f"{path}: bad metadata: {exc}") from exc
    if info.dim < 1 or info.hidden < 1 or info.wide < 0:
        raise RankerLoadError(
            f"{path}: bad metadata: dim {info.dim}, hidden {info.hidden}, wide {info.wide}"
        )
    if info.features != list(FEATURES):
        raise RankerLoadError(
            f"{path}: trained on features {info.features}, this build computes {list(FEATURES)}"
        )
    if expect_dim is not None and info.dim != expect_dim:
        raise RankerLoadError(
            f"{path}: trained on {info.dim}-d vectors, the encoder gives {expect_dim}-d"
        )
    if expect_encoder is not None and info.encoder != expect_encoder:
        raise RankerLoadError(
            f"{path}: trained with encoder {info.encoder!r}, the worker runs {expect_encoder!r}"
        )
    if not 1 <= info.members <= _MAX_MEMBERS:
        raise RankerLoadError(f"{path}: {info.members} members (1 to {_MAX_MEMBERS} supported)")
    prior: ItemPrior | None = None
    if _PRIOR_W in tensors or _PRIOR_B in tensors:
        w, b = tensors.pop(_PRIOR_W, None), tensors.pop(_PRIOR_B, None)
        if w is None or b is None or w.shape != (info.dim,) or b.shape != (1,):
            raise RankerLoadError(f"{path}: the item prior's tensors do not fit the model")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise RankerLoadError(f"{path}: non-finite item prior")
        prior = ItemPrior(np.array(w, dtype=np.float32), float(b[0]))
    models = []
    for j in range(info.members):
        prefix = "" if info.members == 1 else f"{_MEMBER}{j}."
        try:
            model = RankerMLP(info.dim, len(info.features), info.hidden, wide=info.wide)
            state = {
                k[len(prefix) :]: torch.from_numpy(np.array(v))
                for k, v in tensors.items()
                if k.startswith(prefix)
            }
            model.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError) as exc:
            raise RankerLoadError(f"{path}: tensors do not fit the model: {exc}") from exc
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise RankerLoadError(f"{path}: non-finite weights")
        models.append(model)
    if info.members > 1 and any(not k.startswith(_MEMBER) for k in tensors):
        raise RankerLoadError(f"{path}: tensors outside the {info.members} members")
    return RankerScorer(models, info, prior)


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------- hot reload


class ArtifactWatcher(Generic[T]):
    """Reload a file when it changes; keep the last good object when a new file is refused.

    The worker calls :meth:`poll` from a timer (off the event loop: loading reads a file). It
    returns the new object when one was loaded, else None. A refused file is logged once per
    change (``last_error`` keeps the reason) and the previous object stays in service.
    """

    def __init__(self, path: str | Path, loader: Callable[[Path], T]) -> None:
        self.path = Path(path)
        self.loader = loader
        self.current: T | None = None
        self.last_error: str | None = None
        self._stamp: tuple[int, ...] | None = None

    def _file_stamp(self) -> tuple[int, ...] | None:
        """What tells a changed file: a file renamed in is a new inode, and ``cp -p`` or
        ``rsync -a`` can bring the old size and mtime with it (its ctime is new)."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def poll(self) -> T | None:
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            loaded = self.loader(self.path)
        except Exception as exc:  # whatever a damaged file raises: it must not stop the worker
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("keeping the previous model: %s", self.last_error)
            return None
        self.current = loaded
        self.last_error = None
        log.info("loaded %s", self.path)
        return loaded


def ranker_watcher(
    path: str | Path, *, expect_dim: int | None = None, expect_encoder: str | None = None
) -> ArtifactWatcher[RankerScorer]:
    def load(p: Path) -> RankerScorer:
        return load_ranker(p, expect_dim=expect_dim, expect_encoder=expect_encoder)

    return ArtifactWatcher(path, load)


def describe(meta: RankerMeta) -> dict[str, Any]:
    return {
        "version": meta.version,
        "dim": meta.dim,
        "hidden": meta.hidden,
        "wide": meta.wide,
        "members": meta.members,
        "features": meta.features,
        "encoder": meta.encoder,
        "data_hash": meta.data_hash,
        "metrics": meta.metrics,
    }
