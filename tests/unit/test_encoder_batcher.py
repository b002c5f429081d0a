"""MicroBatcher mechanics against a fake encoder: routing, batching, back-pressure, shutdown."""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from encoders.batcher import PROBE_TEXT, BatcherStopped, EncoderUnavailable, MicroBatcher

pytestmark = pytest.mark.unit

DIM = 8


def _vector(text: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEncoder:
    """Token ids are the characters, so length order is text length; vectors depend on text only."""

    dim = DIM

    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None) -> None:
        self.gate = gate
        self.fail_on = fail_on
        self.passes: list[int] = []

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [[ord(c) for c in t] for t in texts]

    def encode_ids(self, ids: Sequence[Sequence[int]], *, batch_size: int | None = None) -> Any:
        if self.gate is not None:
            assert self.gate.wait(10)
        texts = ["".join(map(chr, row)) for row in ids]
        if self.fail_on in texts:
            raise RuntimeError("boom")
        self.passes.append(len(texts))
        return np.stack([_vector(t) for t in texts])


def _batcher(encoder: FakeEncoder, **kw: Any) -> MicroBatcher:
    opts: dict[str, Any] = {"max_batch": 4, "max_wait_ms": 5.0, "queue_size": 64}
    opts.update(kw)
    return MicroBatcher(encoder, **opts)  # type: ignore[arg-type]


def test_concurrent_callers_get_their_own_vectors() -> None:
    encoder = FakeEncoder()
    seen: list[tuple[int, float]] = []

    async def main() -> list[np.ndarray]:
        batcher = _batcher(encoder, on_batch=lambda n, s: seen.append((n, s)))
        async with batcher:
            calls = [[f"text {i}" + "x" * (i % 7), f"other {i}"] for i in range(25)]
            results = await asyncio.gather(*(batcher.encode(c) for c in calls))
            for call, got in zip(calls, results, strict=True):
                assert got.shape == (2, DIM)
                np.testing.assert_array_equal(got, np.stack([_vector(t) for t in call]))
            return results

    asyncio.run(main())
    assert max(encoder.passes) <= 4
    assert sum(encoder.passes) == 50
    assert len(encoder.passes) < 50  # callers shared passes
    assert sum(n for n, _ in seen) == 50


def test_empty_text_rejected_before_queueing() -> None:
    async def main() -> None:
        async with _batcher(FakeEncoder()) as batcher:
            with pytest.raises(ValueError, match="empty"):
                await batcher.encode(["fine", "  "])
            assert batcher.queued == 0
            assert (await batcher.encode([])).shape == (0, DIM)

    asyncio.run(main())


def test_not_started_raises() -> None:
    async def main() -> None:
        with pytest.raises(BatcherStopped):
            await _batcher(FakeEncoder()).encode(["a"])

    asyncio.run(main())


def test_queue_is_bounded_and_drains() -> None:
    gate = threading.Event()
    encoder = FakeEncoder(gate)

    async def main() -> None:
        async with _batcher(encoder, queue_size=3, max_batch=2, window_batches=1) as batcher:
            first = asyncio.create_task(batcher.encode(["a", "b"]))  # taken by the blocked pass
            await asyncio.sleep(0.05)
            texts = [f"t{i}" for i in range(10)]
            big = asyncio.create_task(batcher.encode(texts))
            await asyncio.sleep(0.05)
            assert batcher.queued == 3  # the rest of the caller's texts wait for room
            assert not big.done()
            gate.set()
            assert (await first).shape == (2, DIM)
            np.testing.assert_array_equal(await big, np.stack([_vector(t) for t in texts]))

    asyncio.run(main())
    assert max(encoder.passes) <= 2


def test_failed_pass_fails_only_its_callers() -> None:
    encoder = FakeEncoder(fail_on="bad")

    async def main() -> None:
        async with _batcher(encoder, max_wait_ms=0.0) as batcher:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.encode(["bad"])
            got = await batcher.encode(["good"])  # the batcher survives
            np.testing.assert_array_equal(got[0], _vector("good"))

    asyncio.run(main())


def test_a_text_that_fails_a_shared_pass_fails_only_its_own_caller() -> None:
    encoder = FakeEncoder(fail_on="bad")

    async def main() -> list[Any]:
        async with _batcher(encoder, max_wait_ms=50.0) as batcher:
            return await asyncio.gather(
                batcher.encode(["good one", "good two"]),
                batcher.encode(["bad"]),
                batcher.encode(["good three"]),
                return_exceptions=True,
            )

    first, bad, third = asyncio.run(main())
    np.testing.assert_array_equal(first, np.stack([_vector("good one"), _vector("good two")]))
    assert isinstance(bad, RuntimeError) and str(bad) == "boom"
    np.testing.assert_array_equal(third, np.stack([_vector("good three")]))
    assert sum(encoder.passes) == 3  # the window failed as one pass, then each caller alone


def test_a_failed_pass_is_blamed_on_the_encoder_only_if_the_probe_fails_too() -> None:
    async def main() -> None:
        async with _batcher(FakeEncoder(fail_on="bad"), max_wait_ms=0.0) as batcher:
            with pytest.raises(RuntimeError, match="boom") as bad_text:
                await batcher.encode_or_diagnose(["bad"])
            assert not isinstance(bad_text.value, EncoderUnavailable)
            np.testing.assert_array_equal(
                (await batcher.encode_or_diagnose(["good"]))[0], _vector("good")
            )
        async with _batcher(FakeEncoder(fail_on=PROBE_TEXT), max_wait_ms=0.0) as batcher:
            with pytest.raises(EncoderUnavailable, match="probe") as broken:
                await batcher.encode_or_diagnose([PROBE_TEXT])  # fails with the probe: broken
            assert isinstance(broken.value.__cause__, RuntimeError)

    asyncio.run(main())


def test_stop_fails_waiting_callers() -> None:
    gate = threading.Event()

    async def main() -> None:
        batcher = _batcher(FakeEncoder(gate), queue_size=2, max_batch=1, window_batches=1)
        await batcher.start()
        running = asyncio.create_task(batcher.encode(["in flight"]))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.encode(["q1", "q2", "q3"]))  # blocks on put
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(batcher.stop())
        await asyncio.sleep(0.05)
        gate.set()
        await stopping
        for task in (running, queued):
            with pytest.raises(BatcherStopped):
                await task
        assert not batcher.running

    asyncio.run(main())


class _GatedSecondPass(FakeEncoder):
    """Fails on "bad"; its second pass (the first caller's re-run) waits for ``release``."""

    def __init__(self) -> None:
        super().__init__(fail_on="bad")
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode_ids(self, ids: Sequence[Sequence[int]], *, batch_size: int | None = None) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.entered.set()
            assert self.release.wait(10)
        return super().encode_ids(ids, batch_size=batch_size)


def test_a_stop_during_the_per_caller_rerun_answers_every_caller() -> None:
    encoder = _GatedSecondPass()

    async def main() -> list[BaseException | None]:
        batcher = _batcher(encoder, max_wait_ms=50.0)
        await batcher.start()
        calls = [
            asyncio.ensure_future(batcher.encode(texts))
            for texts in (["good one"], ["bad"], ["good three"])
        ]
        assert await asyncio.to_thread(encoder.entered.wait, 10)
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.05)
        encoder.release.set()
        await stopping
        _done, pending = await asyncio.wait(calls, timeout=5)
        assert not pending, "a caller was left waiting"
        return [c.exception() for c in calls]

    errors = asyncio.run(main())
    assert all(isinstance(e, BatcherStopped) for e in errors), errors


class _OneRowShort(FakeEncoder):
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return super().token_ids(texts)[:-1]  # a broken tokenizer: an error outside any pass


def test_an_error_outside_a_pass_fails_its_callers_and_the_batcher_goes_on() -> None:
    async def main() -> None:
        encoder = _OneRowShort()
        async with _batcher(encoder, max_wait_ms=5.0) as batcher:
            with pytest.raises(IndexError):
                await asyncio.wait_for(batcher.encode(["a", "bb"]), 5)
            assert batcher.running
            encoder.token_ids = FakeEncoder.token_ids.__get__(encoder)  # type: ignore[method-assign]
            np.testing.assert_array_equal((await batcher.encode(["ok"]))[0], _vector("ok"))

    asyncio.run(main())


def test_the_running_pass_is_timed_and_the_clock_stops_with_it() -> None:
    gate = threading.Event()
    encoder = FakeEncoder(gate=gate)

    async def main() -> tuple[float, float, float]:
        async with _batcher(encoder) as batcher:
            idle = batcher.pass_running_s()
            call = asyncio.ensure_future(batcher.encode(["a text"]))
            await asyncio.sleep(0.2)
            during = batcher.pass_running_s()
            gate.set()
            await call
            return idle, during, batcher.pass_running_s()

    idle, during, after = asyncio.run(main())
    assert idle == 0.0 and after == 0.0
    assert during >= 0.15


def test_stop_answers_callers_blocked_on_a_full_queue() -> None:
    """Draining the queue once woke one blocked caller per text taken; the others waited on a
    queue nobody read again. Found by review."""

    async def main() -> None:
        gate = threading.Event()
        b = _batcher(FakeEncoder(gate=gate), max_batch=1, queue_size=1, max_wait_ms=0)
        await b.start()
        first = asyncio.ensure_future(b.encode(["running"]))
        await asyncio.sleep(0.05)  # its pass is in the thread, held by the gate
        callers = [asyncio.ensure_future(b.encode([f"text {i}"])) for i in range(4)]
        await asyncio.sleep(0.05)  # one queued, three blocked in put
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="still stopping"):
            await b.start()
        gate.set()
        await stopping
        _, pending = await asyncio.wait([first, *callers], timeout=3)
        assert not pending
        assert all(isinstance(t.exception(), BatcherStopped) for t in callers)

    asyncio.run(main())
