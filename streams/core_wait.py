"""How long a process's threads were ready to run but waited for a core.

CPU alone misread the worker at 2,000 events/s: it used ~80% of a core while behind, and one
GIL did not explain the rest. Linux's per-thread scheduler statistics
(``/proc/PID/task/TID/schedstat``: nanoseconds on a core, nanoseconds runnable but waiting for
one) showed its batch thread waiting for a core 12-15% of the time, its event loop 11% and
Faust's consumer thread 8% (session 23); with a core of its own it still waited 11.5%, behind
the worker's own threads (each hand-over of the GIL is a wake-up through the scheduler).
``coldstream bench`` reports these shares for the worker, the broker and itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ThreadTimes:
    on_core_ns: int
    waiting_ns: int


@dataclass(frozen=True)
class CoreWait:
    """Shares of a time window, in per cent of it (a process's threads summed: up to
    100 × threads); the busiest thread is the one that ran most."""

    on_core_percent: float
    waiting_percent: float
    busiest_thread_on_core_percent: float
    busiest_thread_waiting_percent: float


def thread_times(pid: int, proc: Path = PROC) -> dict[int, ThreadTimes]:
    """Each live thread's totals so far; empty where the kernel keeps none (not Linux, no
    schedstats) or the process is gone."""
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return {}
    out: dict[int, ThreadTimes] = {}
    for task in tasks:
        try:
            fields = (task / "schedstat").read_text().split()
            out[int(task.name)] = ThreadTimes(int(fields[0]), int(fields[1]))
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return out


def core_wait(
    start: dict[int, ThreadTimes], end: dict[int, ThreadTimes], seconds: float
) -> CoreWait | None:
    """The window's shares from two samples (a thread born meanwhile, or a reused thread id,
    counts from zero; one that ended is not counted); None without both samples, without a
    window, or where the kernel reports no times (schedstats off: every value 0)."""
    if not start or not end or seconds <= 0:
        return None
    if not any(t.on_core_ns or t.waiting_ns for t in end.values()):
        return None
    deltas = []
    for tid, t in end.items():
        before = start.get(tid)
        if before is None or t.on_core_ns < before.on_core_ns or t.waiting_ns < before.waiting_ns:
            before = ThreadTimes(0, 0)  # not the thread the start sample saw
        deltas.append((t.on_core_ns - before.on_core_ns, t.waiting_ns - before.waiting_ns))
    window_ns = seconds * 1e9
    busiest = max(deltas)

    def share(ns: float) -> float:
        return round(100.0 * ns / window_ns, 1)

    return CoreWait(
        on_core_percent=share(sum(d[0] for d in deltas)),
        waiting_percent=share(sum(d[1] for d in deltas)),
        busiest_thread_on_core_percent=share(busiest[0]),
        busiest_thread_waiting_percent=share(busiest[1]),
    )
