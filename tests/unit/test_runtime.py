import asyncio
import gc

import pytest
import uvloop
from threadpoolctl import threadpool_info, threadpool_limits

from infra.runtime import configure_gc, limit_blas_threads, use_event_loop


def test_blas_pool_is_capped() -> None:
    with threadpool_limits(limits=None):  # restores the test process's pool afterwards
        limit_blas_threads(1)
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)


def test_startup_objects_leave_the_collectors_reach() -> None:
    thresholds = gc.get_threshold()
    try:
        assert configure_gc(freeze=False, gen0_threshold=5000) == 0
        assert gc.get_threshold() == (5000, *thresholds[1:])
        survivor = [[n] for n in range(1000)]  # tracked containers, alive at "start-up"
        frozen = configure_gc(freeze=True)
        assert frozen >= len(survivor) and gc.get_freeze_count() == frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in survivor)  # full collections skip them
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_event_loop_setting_picks_the_loop_faust_will_create() -> None:
    policy = asyncio.get_event_loop_policy()
    try:
        use_event_loop("uvloop")
        loop = asyncio.new_event_loop()  # what Faust's worker and its consumer thread call
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
        asyncio.set_event_loop_policy(None)
        use_event_loop("asyncio")  # leaves the default policy alone
        loop = asyncio.new_event_loop()
        try:
            assert not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
        with pytest.raises(ValueError, match="unknown event loop"):
            use_event_loop("trio")
    finally:
        asyncio.set_event_loop_policy(policy)
