"""Process-wide runtime knobs that must be set once, before the hot path runs."""

from __future__ import annotations

import asyncio
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


def use_event_loop(kind: str) -> None:
    """Make new asyncio event loops ``kind`` ("asyncio" or "uvloop"); call before any is made.

    Faust runs the agents on one loop and its consumer on a thread with a loop of its own; both
    share the GIL with the engine. On a busy 2-core machine the loops' own Python was a quarter
    of the worker's GIL time (docs/performance-history.md); uvloop does that work in C.
    """
    if kind == "asyncio":
        return
    if kind != "uvloop":
        raise ValueError(f"unknown event loop {kind!r} (asyncio or uvloop)")
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    log.debug("event loop: uvloop %s", uvloop.__version__)


def configure_gc(*, freeze: bool = True, gen0_threshold: int = 0) -> int:
    """Keep Python's cyclic garbage collector off the hot path; returns the objects frozen.

    ``freeze`` moves everything allocated so far out of the collector's reach. A worker holds
    ~300k tracked objects once torch, transformers, Faust and the models are loaded, and every
    full (generation 2) collection walked them all: 160 ms per collection in process, one
    every ~800 events (a stall in a stream whose target is 50 ms). Frozen, a full collection
    took ~5 ms; refcounting still frees them. Call once, after start-up, before the stream runs.

    ``gen0_threshold`` (0: Python's default, 700) sets how many net allocations trigger a
    young collection; the engine allocates many short-lived containers per event, and at
    10,000 young collections ran 7× less often (gc time 2.0 → 0.7 s per 24k events).
    """
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
    if not freeze:
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: %d start-up objects frozen", frozen)
    return frozen
