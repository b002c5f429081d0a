"""The bench's machine CPU: busy time over all cores from two ``psutil.cpu_times()``."""

from __future__ import annotations

from collections import namedtuple

import psutil
import pytest

from streams.bench import busy_seconds

pytestmark = pytest.mark.unit

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_busy_counts_user_system_and_interrupts_not_idle_wait_or_steal() -> None:
    start = Times(100.0, 1.0, 10.0, 500.0, 2.0, 0.0, 1.0, 3.0, 0.0, 0.0)
    end = Times(112.0, 1.5, 13.0, 520.0, 7.0, 0.0, 1.5, 9.0, 4.0, 0.0)
    # user +12 (guest +4 is inside it), nice +0.5, system +3, softirq +0.5
    assert busy_seconds(start, end) == pytest.approx(16.0)
    assert busy_seconds(start, end, ("steal",)) == pytest.approx(6.0)


def test_a_counter_that_went_backwards_reads_as_zero() -> None:
    start = Times(200.0, 0.0, 20.0, 900.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    end = Times(100.0, 0.0, 10.0, 950.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert busy_seconds(start, end) == 0.0


def test_fields_this_platform_lacks_count_as_zero() -> None:
    Short = namedtuple("Short", "user system idle")
    assert busy_seconds(Short(1.0, 1.0, 5.0), Short(3.0, 2.0, 6.0)) == pytest.approx(3.0)


def test_the_real_counters_move_forward_under_load() -> None:
    start = psutil.cpu_times()
    sum(i * i for i in range(2_000_000))  # some CPU work
    assert busy_seconds(start, psutil.cpu_times()) > 0.0
