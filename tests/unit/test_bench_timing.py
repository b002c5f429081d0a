"""`coldstream bench` times every event a list answers, not only the list's trigger."""

from __future__ import annotations

import pytest

from infra.settings import Settings
from streams.bench import _Collector

pytestmark = pytest.mark.unit


def test_a_list_times_every_event_of_its_user_up_to_its_trigger() -> None:
    c = _Collector(Settings(), "127.0.0.1:1")
    for n, (user, event) in enumerate([("u", "e1"), ("v", "f1"), ("u", "e2"), ("u", "e3")]):
        c.sent(user, event, float(n))
    # u's batch held e1 and e2; its list names e2, the last of them
    assert c.covered("u", "e2") == [("e1", 0.0), ("e2", 2.0)]
    assert c.covered("u", "e2") == []  # the same list again (a replay): nothing new to time
    assert c.covered("u", "unknown") == []
    assert c.covered("u", "e3") == [("e3", 3.0)]
    assert c.covered("v", "f1") == [("f1", 1.0)]
    assert c.covered("nobody", "x") == []
