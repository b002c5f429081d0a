"""Threads' time on a core and waiting for one, from Linux's per-thread scheduler statistics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.core_wait import ThreadTimes, core_wait, thread_times


def _task(root: Path, pid: int, tid: int, text: str) -> None:
    task = root / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "schedstat").write_text(text)


def test_reads_each_threads_totals_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    _task(tmp_path, 7, 7, "1500000000 250000000 900\n")
    _task(tmp_path, 7, 8, "20 30 4\n")
    _task(tmp_path, 7, 9, "garbage\n")  # not the kernel's format: skipped, not an error
    (tmp_path / "7" / "task" / "10").mkdir()  # a thread that ended between listing and reading
    assert thread_times(7, tmp_path) == {
        7: ThreadTimes(1_500_000_000, 250_000_000),
        8: ThreadTimes(20, 30),
    }
    assert thread_times(99, tmp_path) == {}  # a process that is gone


def test_shares_of_the_window_summed_over_threads_with_the_busiest_apart() -> None:
    start = {1: ThreadTimes(1_000_000_000, 0), 2: ThreadTimes(0, 0), 3: ThreadTimes(5, 5)}
    end = {
        1: ThreadTimes(7_000_000_000, 1_500_000_000),  # 6 s on a core, 1.5 s waiting
        2: ThreadTimes(1_000_000_000, 2_000_000_000),  # 1 s, 2 s
        4: ThreadTimes(500_000_000, 500_000_000),  # born meanwhile: counted from zero
    }  # thread 3 ended: not counted
    got = core_wait(start, end, 10.0)
    assert got is not None
    assert got.on_core_percent == 75.0
    assert got.waiting_percent == 40.0
    assert (got.busiest_thread_on_core_percent, got.busiest_thread_waiting_percent) == (60.0, 15.0)


def test_a_reused_thread_id_counts_from_zero_and_missing_samples_give_nothing() -> None:
    start = {1: ThreadTimes(9_000_000_000, 9_000_000_000)}
    # thread 1 ended and a new thread got its id: its totals are below the old one's
    got = core_wait(start, {1: ThreadTimes(1_000_000_000, 0)}, 10.0)
    assert got is not None and (got.on_core_percent, got.waiting_percent) == (10.0, 0.0)
    assert core_wait(start, {}, 10.0) is None
    assert core_wait({}, start, 10.0) is None  # no start: a whole lifetime is no window
    assert core_wait(start, start, 0.0) is None
    assert core_wait({1: ThreadTimes(0, 0)}, {1: ThreadTimes(0, 0)}, 10.0) is None  # no stats


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path(f"/proc/{os.getpid()}/schedstat").exists(),
    reason="needs Linux's per-thread scheduler statistics",
)
def test_a_spinning_process_is_on_a_core_or_waiting_for_one_all_the_time() -> None:
    # a process of its own: a thread of this one would also sleep while another of its
    # threads holds the GIL (the suite's earlier tests leave some behind)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # past the interpreter's start-up, which reads files
        began = time.monotonic()
        before = thread_times(spinner.pid)
        time.sleep(0.3)
        after = thread_times(spinner.pid)
        seconds = time.monotonic() - began
    finally:
        spinner.kill()
        spinner.wait()
    assert spinner.pid in before and spinner.pid in after
    ran = after[spinner.pid].on_core_ns - before[spinner.pid].on_core_ns
    waited = after[spinner.pid].waiting_ns - before[spinner.pid].waiting_ns
    assert ran > 0
    # never asleep: however busy the machine, its time is on a core or in the queue for one
    assert ran + waited >= 0.8 * seconds * 1e9
    got = core_wait(before, after, seconds)
    assert got is not None
    assert got.busiest_thread_on_core_percent + got.busiest_thread_waiting_percent >= 80
