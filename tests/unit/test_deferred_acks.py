"""Input events are acked only after their batch's outputs are on the broker (streams.agents)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infra import metrics
from streams.agents import DeferredAcks, all_delivered, send_outputs, until_delivered
from streams.pipeline import Outputs

pytestmark = pytest.mark.unit


class _Acks:
    """Records acks in order, as ``faust.Stream.ack`` would mark them."""

    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def __call__(self, event: Any) -> bool:
        self.acked.append(event)
        return True


async def _when(gate: asyncio.Future[None]) -> None:
    await gate


def _awaiting() -> float:
    """The gauge of batches whose outputs await the broker's acks."""
    value = metrics.REGISTRY.get_sample_value("coldstream_output_batches_awaiting_acks")
    assert value is not None
    return value


async def _slow() -> None:
    """A delivery that takes a while."""
    await asyncio.sleep(0.02)


def test_events_are_acked_after_their_outputs_not_before() -> None:
    async def main() -> None:
        record = _Acks()
        acks = DeferredAcks(record, in_flight=2)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        before = _awaiting()
        await acks.after(_when(gate), ["a", "b"])  # returns while the outputs still wait
        await asyncio.sleep(0.01)
        assert record.acked == []
        assert _awaiting() == before + 1
        gate.set_result(None)
        await asyncio.sleep(0.01)
        assert record.acked == ["a", "b"]
        assert _awaiting() == before

    asyncio.run(main())


def test_at_most_in_flight_batches_wait() -> None:
    async def main() -> None:
        record = _Acks()
        acks = DeferredAcks(record, in_flight=1)
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        second: asyncio.Future[None] = loop.create_future()
        await acks.after(_when(first), ["a"])
        blocked = asyncio.ensure_future(acks.after(_when(second), ["b"]))
        await asyncio.sleep(0.01)
        assert not blocked.done()  # two batches would wait: the second waits for the first
        first.set_result(None)
        await asyncio.wait_for(blocked, 1.0)
        assert record.acked == ["a"]
        assert len(acks) == 1
        second.set_result(None)
        await acks.drain()
        assert record.acked == ["a", "b"]
        assert len(acks) == 0

    asyncio.run(main())


def test_no_batch_in_flight_waits_for_each_batch() -> None:
    async def main() -> None:
        record = _Acks()
        acks = DeferredAcks(record, in_flight=0)

        await acks.after(_slow(), ["a"])
        assert record.acked == ["a"]

    asyncio.run(main())


def test_a_batch_taken_while_behind_waits_for_its_acks_and_the_earlier_ones() -> None:
    async def main() -> None:
        record = _Acks()
        acks = DeferredAcks(record, in_flight=4)
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        await acks.after(_when(first), ["a"])  # keeping up: returns at once
        loop.call_later(0.02, first.set_result, None)

        await acks.after(_slow(), ["b"], wait=True)
        assert record.acked == ["a", "b"]
        assert len(acks) == 0

    asyncio.run(main())


def test_a_failed_delivery_acks_nothing_and_fails_the_next_batch() -> None:
    async def main() -> None:
        record = _Acks()
        acks = DeferredAcks(record, in_flight=4)
        before = _awaiting()

        async def lost() -> None:
            raise ConnectionError("broker gone")

        await acks.after(lost(), ["a"])
        await asyncio.sleep(0.01)
        assert record.acked == []
        with pytest.raises(ConnectionError, match="broker gone"):
            await acks.after(asyncio.sleep(0), ["b"])
        # nor is the batch after acked: acks go in batch order, and the commit must not pass
        # the failed batch (it is redelivered once the agent or the worker restarts)
        with pytest.raises(ConnectionError, match="broker gone"):
            await acks.drain()
        assert record.acked == []
        assert _awaiting() == before

    asyncio.run(main())


def test_negative_in_flight_is_refused() -> None:
    with pytest.raises(ValueError, match="in_flight"):
        DeferredAcks(_Acks(), in_flight=-1)


def test_batches_are_acked_in_order_and_none_after_a_failed_one() -> None:
    """A later batch delivered first waits for the earlier one; after a failed delivery
    nothing later is acked (the commit must not pass the failed batch)."""

    async def main() -> None:
        record = _Acks()
        acks = DeferredAcks(record, in_flight=4)
        loop = asyncio.get_running_loop()
        first: asyncio.Future[None] = loop.create_future()
        await acks.after(_when(first), ["a"])
        await acks.after(_slow(), ["b"])
        await asyncio.sleep(0.05)  # "b" is delivered, "a" is not yet
        assert record.acked == []
        first.set_result(None)
        await acks.drain()
        assert record.acked == ["a", "b"]

        failing: asyncio.Future[None] = loop.create_future()
        await acks.after(_when(failing), ["c"])
        await acks.after(_slow(), ["d"])
        failing.set_exception(ConnectionError("broker gone"))
        with pytest.raises(ConnectionError):
            await acks.drain()
        await asyncio.sleep(0.05)
        assert record.acked == ["a", "b"]

    asyncio.run(main())


class _Topic:
    """A producer topic whose first ``failures`` deliveries fail (as after the producer's own
    retries), the rest succeed."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[bytes] = []

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.sent.append(value)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(ConnectionError("broker gone"))
        else:
            future.set_result(None)
        return future


class _Topics:
    def __init__(self, failures: int) -> None:
        self.recommendations = _Topic(failures)
        self.dead_letter = _Topic()


def test_an_output_the_broker_failed_is_sent_again_until_it_is_taken() -> None:
    """For batches Faust acks on its own (the items agent), a failed delivery must not end the
    batch: what the broker failed goes again, and only then may the events be acked. What it
    took is not sent again (a list sent again after a later batch's newer list for its user
    would read as the latest; found by review)."""

    async def main() -> None:
        topics = _Topics(failures=3)  # both lists of the first try, the first of the second
        early = Outputs(recommendations=[(b"u1", b"list-1")])
        out = Outputs(recommendations=[(b"u2", b"list-2")], dead_letters=[(None, b"letter")])
        parts = [early, out]
        first = [await send_outputs(part, topics) for part in parts]  # type: ignore[arg-type]
        resends = metrics.REGISTRY.get_sample_value("coldstream_output_resends_total") or 0.0
        await until_delivered(
            asyncio.gather(*first),
            parts,
            topics,  # type: ignore[arg-type]
            first_delay_s=0.001,
        )
        # try 1: both lists fail, the letter is taken; try 2: list-1 fails again; try 3: taken
        assert topics.recommendations.sent == [
            b"list-1",
            b"list-2",
            b"list-1",
            b"list-2",
            b"list-1",
        ]
        assert topics.dead_letter.sent == [b"letter"]
        assert metrics.REGISTRY.get_sample_value("coldstream_output_resends_total") == resends + 2

    asyncio.run(main())


def test_a_part_delivered_then_sent_again_is_timed_once() -> None:
    """A batch's early part is taken, its late part fails: only the late part goes again,
    and the histogram counts each list once (the early part's lists were counted twice, when
    both parts went again)."""

    def observed() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "coldstream_event_to_recommendation_seconds_count"
        )
        return value or 0.0

    async def main() -> None:
        topics = _Topics(failures=0)
        early = Outputs(recommendations=[(b"u1", b"list-1")], latencies_s=[0.01])
        late = Outputs(recommendations=[(b"u2", b"list-2")], latencies_s=[0.02])
        before = observed()
        first = await send_outputs(early, topics)  # type: ignore[arg-type]
        topics.recommendations.failures = 1
        second = await send_outputs(late, topics)  # type: ignore[arg-type]
        await until_delivered(
            all_delivered([first, second]),
            [early, late],
            topics,  # type: ignore[arg-type]
            first_delay_s=0.001,
        )
        assert topics.recommendations.sent == [b"list-1", b"list-2", b"list-2"]
        assert observed() == before + 2

    asyncio.run(main())


class _RefusingTopic(_Topic):
    """A topic whose first ``refusals`` sends raise at once (a full buffer, no metadata)."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        if self.refusals:
            self.refusals -= 1
            raise TimeoutError("no metadata for the topic")
        return await super().send(key, value)


def test_a_resend_the_producer_refuses_is_tried_again() -> None:
    """A resend whose ``send`` itself raises stays inside the retry loop: before, the error
    escaped it, and Faust acked the items agent's batch without its outputs."""

    async def main() -> None:
        topics = _Topics(failures=0)
        refusing = topics.recommendations = _RefusingTopic(refusals=0)
        refusing.failures = 1  # the first delivery fails ...
        out = Outputs(recommendations=[(b"u1", b"list-1")])
        first = await send_outputs(out, topics)  # type: ignore[arg-type]
        refusing.refusals = 2  # ... and the next two sends are refused outright
        await until_delivered(first, [out], topics, first_delay_s=0.001)  # type: ignore[arg-type]
        assert refusing.sent == [b"list-1", b"list-1"]
        assert refusing.refusals == 0

    asyncio.run(main())


def test_deferred_acks_wait_for_a_delivery_sent_again_and_keep_batch_order() -> None:
    """The behavior agent's path: a batch whose output the broker failed is acked once a
    resend is taken, and a later batch delivered at once waits for it (nothing acked around
    it, so the commit cannot pass it)."""

    async def main() -> None:
        acked: list[str] = []

        async def ack(event: str) -> None:
            acked.append(event)

        topics = _Topics(failures=2)
        acks: DeferredAcks[str] = DeferredAcks(ack, in_flight=4)
        failed = Outputs(recommendations=[(b"u1", b"list-1")])
        first = await send_outputs(failed, topics)  # type: ignore[arg-type]
        await acks.after(
            until_delivered(first, [failed], topics, first_delay_s=0.01),  # type: ignore[arg-type]
            ["a"],
        )
        ok = Outputs(recommendations=[(b"u2", b"list-2")])
        second = await send_outputs(ok, topics)  # type: ignore[arg-type]  # fails once too
        await acks.after(
            until_delivered(second, [ok], topics, first_delay_s=0.01),  # type: ignore[arg-type]
            ["b"],
        )
        assert acked == []
        await acks.drain()
        assert acked == ["a", "b"]
        assert topics.recommendations.sent.count(b"list-1") == 2

    asyncio.run(main())


def test_the_broker_reads_as_down_while_an_output_is_sent_again() -> None:
    """A batch waiting for its output blocks its agent: readiness says so, and the dependency
    gauge, until the resend is taken."""
    from infra.health import HEALTH

    def broker() -> tuple[str | None, float | None]:
        state = HEALTH.readiness().detail["dependencies"].get("broker")
        gauge = metrics.REGISTRY.get_sample_value(
            "coldstream_dependency_up", {"dependency": "broker"}
        )
        return state, gauge

    async def main() -> None:
        topics = _Topics(failures=2)
        out = Outputs(recommendations=[(b"u1", b"list-1")])
        first = await send_outputs(out, topics)  # type: ignore[arg-type]
        task = asyncio.ensure_future(
            until_delivered(first, [out], topics, first_delay_s=0.05)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.02)
        assert broker() == ("down", 0.0)
        await task
        assert broker() == ("up", 1.0)

    asyncio.run(main())


def test_a_batch_cut_by_the_encoder_stopping_is_nobodys_fault() -> None:
    """The batcher answers its callers BatcherStopped while the worker stops: that ends the
    agent (the worker restarts from the last commit) instead of dead-lettering every record of
    the batch as a processing_error and acking them."""
    from encoders.batcher import BatcherStopped
    from streams.agents import guarded
    from streams.pipeline import Record

    class NoLetters:
        def dead_letter_for(self, *args: object) -> None:
            raise AssertionError("nothing is dead-lettered")

    calls: list[int] = []

    async def stopping(records: object, *, retry: bool = False) -> Outputs:
        calls.append(1)
        raise BatcherStopped("encoder batcher stopped")

    records = [Record("events", 0, n, b"u", b"{}", 1.7e9) for n in range(3)]
    with pytest.raises(BatcherStopped):
        asyncio.run(guarded(records, stopping, NoLetters()))  # type: ignore[arg-type]
    assert calls == [1]  # not retried record by record
