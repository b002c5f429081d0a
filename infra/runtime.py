"""Process-wide runtime knobs that must be set once, before the hot path runs."""

from __future__ import annotations

import gc
import logging

import numpy  # noqa: F401  (loads OpenBLAS, so that the limit below finds its pool)
from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)


def limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS pool (OpenBLAS) at ``threads``; 0 leaves it alone.

    Ranking runs a few dozen products of ~100×384 matrices per user per batch. Measured on 2
    cores: a threaded OpenBLAS ``80×384 @ 384×80`` took 260 µs (thread wake-ups; 3–11 ms when
    the cores are busy), one thread 54 µs. torch's own pool (the encoder) is not touched.
    """
    if threads <= 0:
        return
    threadpool_limits(limits=threads, user_api="blas")
    log.debug("numpy BLAS limited to %d thread(s)", threads)


def freeze_startup_objects(enabled: bool = True) -> int:
    """Move everything allocated so far out of the cyclic GC's reach; returns how many objects.

    A worker holds ~300k tracked objects once torch, transformers, Faust and the models are
    loaded, and every full (generation 2) collection walked them all: measured in process,
    160 ms per collection, one every ~800 events (a 160 ms stall in a stream whose target is
    50 ms, and ~17% of the engine's CPU). Frozen, they are skipped (4 ms per collection);
    refcounting still frees them. Call once, after start-up, before the stream runs.
    """
    if not enabled:
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: %d start-up objects frozen", frozen)
    return frozen
