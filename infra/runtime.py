"""Process-wide runtime knobs that must be set once, before the hot path runs."""

from __future__ import annotations

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
