"""Dynamic micro-batching for asyncio callers.

Many stream events each need one or two vectors; a forward pass over 64 texts costs little more than
over one. The batcher gathers texts from concurrent callers for at most ``max_wait_ms`` (up to
``max_batch``), plus whatever else is already queued (up to ``window_batches`` passes' worth), sorts
them by token length and runs the sub-batches, each padded only to its longest text, on a single
executor thread, so the Faust loop keeps heartbeating. Callers get their rows as soon as the pass
carrying them is done. A bounded queue pushes back on producers when encoding lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from encoders.model import TextEncoder, check_texts, split_sorted

log = logging.getLogger(__name__)

OnBatch = Callable[[int, float], None]


class BatcherStopped(RuntimeError):
    """The batcher was stopped (or never started) before these texts were encoded."""


class EncoderUnavailable(RuntimeError):
    """The encoder fails on a known-good text too: the device or the model is broken, not the
    input. Callers retry as for any dependency outage instead of rejecting the input."""


# Known-good input for :meth:`MicroBatcher.answers`: short, plain, inside every vocabulary.
PROBE_TEXT = "probe: a plain short text"


@dataclass(eq=False)
class _Request:
    """One caller's texts; rows are filled as the batches that carry them finish."""

    future: asyncio.Future[np.ndarray]
    out: np.ndarray
    remaining: int = field(default=0)


@dataclass(frozen=True)
class _Item:
    request: _Request
    row: int
    text: str


class MicroBatcher:
    """Share forward passes between concurrent ``encode`` callers."""

    def __init__(
        self,
        encoder: TextEncoder,
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
        on_batch: OnBatch | None = None,
        window_batches: int = 4,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or window_batches < 1 or max_wait_ms < 0:
            raise ValueError("max_batch, queue_size, window_batches >= 1 and max_wait_ms >= 0")
        self.encoder = encoder
        self.max_batch = max_batch
        # Sorting a backlog wider than one pass cuts padding: texts arrive in random length order.
        self.max_window = max_batch * window_batches
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.on_batch = on_batch
        self.batches = 0
        self.texts = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._halt = threading.Event()  # tells the thread to skip the rest of a window on stop
        self._pass_started: float | None = None  # monotonic start of the pass in the thread
        self._stopping = False

    def pass_running_s(self) -> float:
        """How long the forward pass now in the thread has run (0 when none is): a device
        that hangs instead of failing shows here and nowhere else."""
        started = self._pass_started
        return time.monotonic() - started if started is not None else 0.0

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def queued(self) -> int:
        """Texts waiting for a forward pass (a gauge for back-pressure)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        if self._stopping:
            raise RuntimeError("the encoder batcher is still stopping: await stop() first")
        if self.running:
            return
        self._halt.clear()
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        # One thread: forward passes are serialized anyway, and torch parallelizes inside each.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._worker = asyncio.create_task(self._run(), name="encoder-batcher")

    async def stop(self) -> None:
        """Stop batching; callers still waiting get ``BatcherStopped``, those blocked on a
        full queue included."""
        self._stopping = True
        try:
            worker, self._worker = self._worker, None
            self._halt.set()
            if worker is not None:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            if self._queue is not None:
                # each get wakes one caller blocked in put, which then queues its text and
                # sees the batcher stopped: drain until a turn of the loop queues nothing more
                while True:
                    while not self._queue.empty():
                        item = self._queue.get_nowait()
                        _fail(item.request, BatcherStopped("encoder batcher stopped"))
                    await asyncio.sleep(0)
                    if self._queue.empty():
                        break
            executor, self._executor = self._executor, None
            if executor is not None:
                # Let a forward pass already in the thread finish without blocking the loop.
                await asyncio.to_thread(executor.shutdown, wait=True)
        finally:
            self._stopping = False

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``texts``, in order; waits when the queue is full."""
        items = check_texts(texts)  # reject here so one bad caller cannot fail a shared batch
        queue = self._queue
        if queue is None or not self.running:
            raise BatcherStopped("encoder batcher is not running; call start() first")
        loop = asyncio.get_running_loop()
        request = _Request(
            future=loop.create_future(),
            out=np.empty((len(items), self.encoder.dim), dtype=np.float32),
            remaining=len(items),
        )
        if not items:
            return request.out
        try:
            for row, text in enumerate(items):
                await queue.put(_Item(request, row, text))  # back-pressure point
                if queue is not self._queue or not self.running:
                    # stop() ran while we waited for room; nothing will read this queue again.
                    raise BatcherStopped("encoder batcher stopped")
        except BaseException:
            request.future.cancel()  # rows already queued are skipped by the worker
            raise
        return await request.future

    async def encode_or_diagnose(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`encode`; a failed pass is followed by a probe. When the probe fails too the
        failure is the encoder's (:class:`EncoderUnavailable`), otherwise the original error is
        raised: it belongs to these texts (or was a one-off, such as memory for one big pass).
        """
        try:
            return await self.encode(texts)
        except (BatcherStopped, asyncio.CancelledError):
            raise
        except Exception as exc:
            if await self.answers():
                raise
            raise EncoderUnavailable(f"the encoder fails on a probe text too: {exc!r}") from exc

    async def answers(self) -> bool:
        """Whether the encoder encodes :data:`PROBE_TEXT` (through the same queue and thread)."""
        try:
            await self.encode([PROBE_TEXT])
        except BatcherStopped:
            raise
        except Exception:
            return False
        return True

    async def _run(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            try:
                deadline = loop.time() + self.max_wait
                while len(batch) < self.max_batch:
                    if not queue.empty():
                        batch.append(queue.get_nowait())
                        continue
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can drop an item it got
                    # just as the timeout fired; a cancelled Queue.get leaves the item queued.
                    try:
                        async with asyncio.timeout(remaining):
                            batch.append(await queue.get())
                    except TimeoutError:
                        break
            except asyncio.CancelledError:
                for item in batch:
                    _fail(item.request, BatcherStopped("encoder batcher stopped"))
                raise
            while len(batch) < self.max_window and not queue.empty():
                batch.append(queue.get_nowait())
            live = [item for item in batch if not item.request.future.done()]
            if not live:
                continue
            # every caller taken off the queue gets an answer, whatever happens below: stop()
            # only drains what is still queued
            try:
                await self._encode_window(loop, live)
            except asyncio.CancelledError:
                for item in live:
                    _fail(item.request, BatcherStopped("encoder batcher stopped"))
                raise
            except Exception as exc:  # a bug here must not end the batcher with callers waiting
                log.exception("encoder window of %d texts failed outside a pass", len(live))
                for item in live:
                    _fail(item.request, exc)

    async def _encode_window(self, loop: asyncio.AbstractEventLoop, window: list[_Item]) -> None:
        failed, exc = await self._run_window(loop, window)
        failed = [item for item in failed if not item.request.future.done()]
        if not failed or exc is None:
            return
        log.error("encoder pass over %d texts failed", len(failed), exc_info=exc)
        by_request: dict[int, list[_Item]] = {}
        for item in failed:
            by_request.setdefault(id(item.request), []).append(item)
        if len(by_request) == 1:
            _fail(failed[0].request, exc)
            return
        # a pass is shared: one caller's text must not fail the others. Each caller's texts
        # not encoded yet go through again on their own; only a caller failing alone fails
        for items in by_request.values():
            alone, own = await self._run_window(loop, items)
            if alone and own is not None:
                _fail(items[0].request, own)

    async def _run_window(
        self, loop: asyncio.AbstractEventLoop, window: list[_Item]
    ) -> tuple[list[_Item], BaseException | None]:
        """Encode ``window``; returns the items a failed pass left unencoded, and its error."""
        try:
            skipped, failed, exc = await loop.run_in_executor(
                self._executor, self._encode_in_thread, loop, window
            )
        except asyncio.CancelledError:
            for item in window:
                _fail(item.request, BatcherStopped("encoder batcher stopped"))
            raise
        for item in skipped:  # stop() cut the window short
            _fail(item.request, BatcherStopped("encoder batcher stopped"))
        return failed, exc

    def _encode_in_thread(
        self, loop: asyncio.AbstractEventLoop, window: list[_Item]
    ) -> tuple[list[_Item], list[_Item], BaseException | None]:
        """Runs on the executor thread; hands each pass's rows to the loop as soon as it is done.

        Returns the items left unencoded because stop() was called, and those left unencoded
        because a pass (or the tokenizer) failed, with that error; a failure never escapes, so
        the rows already handed over are not handed over twice.
        """
        try:
            self._pass_started = time.monotonic()
            ids = self.encoder.token_ids([item.text for item in window])
        except Exception as exc:
            return [], window, exc
        finally:
            self._pass_started = None
        order = sorted(range(len(window)), key=lambda i: len(ids[i]))
        groups = split_sorted(order, self.max_batch)
        for k, group in enumerate(groups):
            if self._halt.is_set():
                return [window[i] for rest in groups[k:] for i in rest], [], None
            started = time.perf_counter()
            try:
                self._pass_started = time.monotonic()
                vectors = self.encoder.encode_ids([ids[i] for i in group], batch_size=len(group))
            except Exception as exc:
                return [], [window[i] for rest in groups[k:] for i in rest], exc
            finally:
                self._pass_started = None
            seconds = time.perf_counter() - started
            loop.call_soon_threadsafe(self._deliver, [window[i] for i in group], vectors, seconds)
        return [], [], None

    def _deliver(self, items: list[_Item], vectors: np.ndarray, seconds: float) -> None:
        self.batches += 1
        self.texts += len(items)
        for item, vector in zip(items, vectors, strict=True):
            request = item.request
            if request.future.done():
                continue
            request.out[item.row] = vector
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(request.out)
        if self.on_batch is not None:
            try:
                self.on_batch(len(items), seconds)
            except Exception:  # metrics must never stop encoding
                log.exception("encoder on_batch callback failed")


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
