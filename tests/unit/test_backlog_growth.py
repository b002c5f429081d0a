"""The bench's backlog growth: the least-squares slope of the backlog after the warm-up third."""

from __future__ import annotations

import pytest

from streams.bench import backlog_growth

pytestmark = pytest.mark.unit


def test_a_steadily_growing_backlog_reads_as_its_rate() -> None:
    series = [(float(t), 1000.0 + 50.0 * t) for t in range(1, 61)]
    assert backlog_growth(series, 60.0) == pytest.approx(50.0)


def test_the_warm_up_third_is_left_out() -> None:
    # a backlog that jumps to 4,000 while the worker warms up, then holds: keeping up
    series = [(float(t), 200.0 * t) for t in range(1, 20)] + [
        (float(t), 4000.0) for t in range(20, 61)
    ]
    assert backlog_growth(series, 60.0) == pytest.approx(0.0)


def test_hand_computed_slope_of_noisy_samples() -> None:
    # t = 20, 30, 40 and backlog 10, 40, 40: mean t 30, mean b 30;
    # slope = sum((t-30)(b-30)) / sum((t-30)^2) = (-10*-20 + 0 + 10*10) / 200 = 1.5
    assert backlog_growth([(5.0, 999.0), (20.0, 10.0), (30.0, 40.0), (40.0, 40.0)], 60.0) == 1.5


@pytest.mark.parametrize("series", [[], [(30.0, 5.0)], [(1.0, 5.0), (25.0, 6.0), (40.0, 7.0)]])
def test_too_few_samples_give_no_figure(series: list[tuple[float, float]]) -> None:
    assert backlog_growth(series, 60.0) is None
