"""The consumer's inline delivery keeps mode's ``wait_first`` results (streams.transport)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from mode import Service
from mode.utils.locks import Event

from streams.transport import FirstStepInline

pytestmark = pytest.mark.unit


class Inline(FirstStepInline):
    """A bare service with the inline ``wait_first``."""


class Plain(Service):
    """mode's own ``wait_first``: what the inline one must agree with."""


def _both(scenario: Callable[[Service], Awaitable[Any]]) -> tuple[Any, Any]:
    """``scenario`` against the inline service and against mode's, each on a fresh loop."""

    async def run(cls: type[Service]) -> Any:
        service = cls()
        await service.start()
        try:
            return await scenario(service)
        finally:
            await service.stop()

    return asyncio.run(run(Inline)), asyncio.run(run(Plain))


def test_a_delivery_that_does_not_wait_is_done_inline_and_the_other_waits_are_closed() -> None:
    log: list[str] = []

    async def deliver() -> str:
        log.append("delivered")
        return "ok"

    async def scenario(service: Service) -> tuple[list[Any], bool, int]:
        flow = Event()
        before = len(asyncio.all_tasks())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail
            results = await service.wait_first(deliver(), flow.wait())
        return results.results, results.stopped, len(asyncio.all_tasks()) - before

    inline, plain = _both(scenario)
    assert inline[:2] == plain[:2] == (["ok"], False)
    assert inline[2] == 0  # nothing left scheduled
    assert log == ["delivered", "delivered"]


def test_a_delivery_that_waits_finishes_through_the_usual_path() -> None:
    async def scenario(service: Service) -> tuple[list[Any], list[str]]:
        room = asyncio.Queue[int](maxsize=1)
        room.put_nowait(0)  # full: the delivery has to wait for a get
        steps: list[str] = []

        async def deliver() -> str:
            steps.append("start")
            await room.put(1)
            steps.append("put")
            return "late"

        async def drain() -> None:
            await asyncio.sleep(0.01)
            room.get_nowait()

        drainer = asyncio.ensure_future(drain())
        results = await service.wait_first(deliver(), Event().wait())
        await drainer
        return results.results, steps

    inline, plain = _both(scenario)
    assert inline == plain == (["late"], ["start", "put"])


def test_a_waiting_delivery_is_cancelled_when_the_flow_is_suspended() -> None:
    async def scenario(service: Service) -> tuple[bool, list[str], int]:
        suspended = Event()
        room = asyncio.Queue[int](maxsize=1)
        room.put_nowait(0)
        steps: list[str] = []

        async def deliver() -> None:
            try:
                await room.put(1)
                steps.append("put")
            except BaseException as exc:  # a task's cancellation, not a garbage-collected close
                steps.append(type(exc).__name__)
                raise

        async def suspend() -> None:
            await asyncio.sleep(0.01)
            suspended.set()

        suspender = asyncio.ensure_future(suspend())
        results = await service.wait_first(deliver(), suspended.wait())
        await suspender
        await asyncio.sleep(0.01)  # the cancelled delivery runs its clean-up
        return results.stopped, steps, room.qsize()

    inline, plain = _both(scenario)
    assert inline == plain == (False, ["CancelledError"], 1)  # never put


def test_an_error_in_the_first_step_propagates() -> None:
    async def scenario(service: Service) -> str:
        async def deliver() -> None:
            raise ValueError("bad message")

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                await service.wait_first(deliver(), Event().wait())
            except ValueError as exc:
                return str(exc)
        return "no error"

    assert _both(scenario) == ("bad message", "bad message")


def test_a_stopped_service_reports_stopped() -> None:
    async def scenario(service: Service) -> tuple[bool, list[str]]:
        done: list[str] = []

        async def deliver() -> None:
            done.append("ran")

        service._stopped.set()
        results = await service.wait_first(deliver(), Event().wait())
        service._stopped.clear()
        return results.stopped, done

    inline, plain = _both(scenario)
    assert inline == plain == (True, ["ran"])


def test_other_tasks_run_between_inline_deliveries() -> None:
    """Faust's consumer hands over messages in a loop that yields only every 100: an inline
    delivery must still give the loop a turn, or the agent's stream sees none of them until
    the hundredth (batches closed by their window at ~120 events of a full queue)."""

    async def scenario(service: Service) -> list[str]:
        order: list[str] = []

        async def deliver(i: int) -> None:
            order.append(f"delivered {i}")

        async def stream() -> None:
            for _ in range(3):
                order.append("stream ran")
                await asyncio.sleep(0)

        other = asyncio.ensure_future(stream())
        for i in range(3):
            await service.wait_first(deliver(i), Event().wait())
        await other
        return order

    inline, plain = _both(scenario)
    for order in (inline, plain):
        assert order.index("stream ran") < order.index("delivered 1")
