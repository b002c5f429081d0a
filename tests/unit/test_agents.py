"""An agent stopped mid-batch finishes the batch before Faust acks it (streams.agents)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable

import pytest

from streams.agents import finish_batch

pytestmark = pytest.mark.unit


def _run_and_stop(
    process: Callable[[list[int]], Awaitable[None]], log: list[str], *, cancels: int
) -> None:
    """An agent over a batch source that acks in a ``finally`` around its ``yield``, as Faust's
    ``Stream.take_events`` does; cancelled (``cancels`` times) while it processes its batch."""

    async def take() -> AsyncGenerator[list[int], None]:
        try:
            yield [1, 2, 3]
        finally:
            log.append("acked")

    async def agent(started: asyncio.Event) -> None:
        async with contextlib.aclosing(take()) as batches:
            async for batch in batches:
                started.set()
                await finish_batch(process(batch))

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(agent(started))
        await started.wait()
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_batch_interrupted_by_a_stop_is_applied_before_it_is_acked() -> None:
    log: list[str] = []

    async def process(batch: list[int]) -> None:
        await asyncio.sleep(0.05)
        log.append(f"applied {batch}")

    _run_and_stop(process, log, cancels=3)
    assert log == ["applied [1, 2, 3]", "acked"]


def test_a_failing_batch_still_fails() -> None:
    async def work() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(finish_batch(work()))


def test_a_batch_that_is_itself_cancelled_propagates_the_cancellation() -> None:
    async def main() -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))

        async def work() -> None:
            await inner

        outer = asyncio.create_task(finish_batch(work()))
        await asyncio.sleep(0.01)
        inner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer

    asyncio.run(main())
