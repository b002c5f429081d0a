"""/healthz and /readyz: the event loop's heartbeat, the pipeline's start and its dependencies."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from infra import metrics
from infra.health import HEALTH, Health, LivenessWatchdog

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_alive_while_the_loop_beats_and_not_once_it_stalls() -> None:
    clock = Clock()
    health = Health(stall_after_s=30.0, clock=clock)
    assert health.liveness().ok  # start-up gets stall_after_s to begin beating
    clock.now += 31.0
    stalled = health.liveness()
    assert not stalled.ok and stalled.detail["loop_beat_age_s"] == pytest.approx(31.0)
    health.beat()
    assert health.liveness().ok
    clock.now += 29.9
    assert health.liveness().ok
    clock.now += 0.2
    assert not health.liveness().ok


def test_start_up_has_its_own_grace_before_the_first_beat() -> None:
    """Model load, the store's optimize and the group's join come before the first beat: with
    only ``stall_after_s`` for them, a slow start was killed over and over (found by review)."""
    clock = Clock()
    health = Health(stall_after_s=30.0, clock=clock, start_grace_s=300.0)
    clock.now += 299.0
    assert health.liveness().ok and health.liveness().detail["beats"] == 0
    clock.now += 2.0
    assert not health.liveness().ok
    health.beat()  # from the first beat on, the stall limit
    clock.now += 31.0
    assert not health.liveness().ok
    assert Health(stall_after_s=30.0).start_grace_s == 30.0


def test_ready_only_when_beating_started_and_every_dependency_answers() -> None:
    clock = Clock()
    health = Health(stall_after_s=5.0, clock=clock)
    assert not health.readiness().ok  # no beat yet
    health.beat()
    assert not health.readiness().ok  # the pipeline has not started
    health.set_started(True)
    health.set_dependency("store", True)
    health.set_dependency("encoder", True)
    ready = health.readiness()
    assert ready.ok and ready.detail["dependencies"] == {"encoder": "up", "store": "up"}
    health.set_dependency("store", False)
    down = health.readiness()
    assert not down.ok and down.detail["dependencies"]["store"] == "down"
    health.set_dependency("store", True)
    assert health.readiness().ok
    clock.now += 6.0  # a stalled loop is neither alive nor ready
    assert not health.readiness().ok
    health.beat()
    health.set_started(False)  # stopping
    assert not health.readiness().ok


def test_an_encoder_down_too_long_fails_liveness_and_a_store_outage_never_does() -> None:
    clock = Clock()
    health = Health(stall_after_s=30.0, clock=clock, restart_after_down_s={"encoder": 60.0})
    health.set_dependency("store", False)
    health.set_dependency("encoder", False)
    clock.now += 20.0
    health.beat()
    health.set_dependency("encoder", False)  # still down: the outage counts from its start
    clock.now += 25.0
    health.beat()
    live = health.liveness()
    assert live.ok and live.detail["down_for_s"] == {"encoder": 45.0, "store": 45.0}
    clock.now += 20.0
    health.beat()
    live = health.liveness()
    assert not live.ok and live.detail["down_too_long"] == ["encoder"]
    health.set_dependency("encoder", True)
    assert health.liveness().ok  # the store, waited out however long, is not a restart's job
    health.set_dependency("encoder", False)
    assert health.liveness().ok  # a new outage starts a new count


def test_a_non_positive_stall_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Health(stall_after_s=0)


@pytest.fixture
def served() -> Iterator[str]:
    server = metrics.serve("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        HEALTH.forget()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def _json(body: bytes) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(body)
    return out


def test_the_metrics_port_answers_health_probes_and_still_serves_metrics(served: str) -> None:
    status, body, kind = _get(served + "/healthz")
    assert status == 200 and kind == "application/json"
    assert _json(body)["status"] == "alive"

    status, body, _ = _get(served + "/readyz")
    assert status == 503
    report = _json(body)
    assert report["status"] == "failing" and report["started"] is False and report["beats"] == 0

    HEALTH.beat()
    HEALTH.set_started(True)
    HEALTH.set_dependency("store", True)
    status, body, _ = _get(served + "/readyz")
    assert status == 200 and _json(body)["status"] == "ready"
    HEALTH.set_dependency("store", False)
    status, body, _ = _get(served + "/readyz")
    assert status == 503 and _json(body)["dependencies"] == {"store": "down"}

    status, body, kind = _get(served + "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert b"coldstream_dependency_up" in body
    assert _get(served + "/healthz?verbose=1")[0] == 200


@pytest.mark.parametrize("path", ["/", "/healthz/", "/HEALTHZ", "/ready", "/metricsx"])
def test_an_unknown_path_is_not_found_rather_than_healthy(served: str, path: str) -> None:
    status, _, _ = _get(served + path)
    assert status == 404


def test_a_probe_answers_get_and_head_only(served: str) -> None:
    head = urllib.request.Request(served + "/healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=5) as resp:
        assert resp.status == 200
    post = urllib.request.Request(served + "/healthz", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=5)
    assert refused.value.code == 405


def _watched(
    exit_after_s: float, **health_kw: float
) -> tuple[Clock, Health, list[int], LivenessWatchdog]:
    """A Health on a test clock, and a watchdog over it that records its exits."""
    clock = Clock()
    health = Health(stall_after_s=30.0, clock=clock, **health_kw)
    exits: list[int] = []
    return (
        clock,
        health,
        exits,
        LivenessWatchdog(health, exit_after_s, exit=exits.append, clock=clock),
    )


def test_the_watchdog_ends_the_process_only_after_liveness_failed_that_long() -> None:
    clock, health, exits, dog = _watched(60.0)
    health.beat()
    clock.now += 29
    assert not dog.check()  # beating within the stall limit
    clock.now += 2  # stalled: liveness fails from here
    assert not dog.check()
    clock.now += 59
    assert not dog.check() and exits == []
    health.beat()  # the loop came back before the minute was up: the count starts over
    assert not dog.check()
    clock.now += 31
    assert not dog.check()
    clock.now += 59.9
    assert not dog.check()
    clock.now += 0.2
    assert dog.check() and exits == [1]


def test_the_watchdog_leaves_a_stopping_worker_to_finish() -> None:
    """Its heartbeat stops on purpose; ending it would skip saving its counts."""
    clock, health, exits, dog = _watched(10.0)
    health.beat()
    health.begin_shutdown()
    for _ in range(20):
        clock.now += 10
        assert not dog.check()
    assert exits == [] and not health.liveness().ok
    health.forget()  # a fresh start in the same process watches again
    assert not health.shutting_down


def test_the_watchdog_spares_the_start_up_grace() -> None:
    clock, health, exits, dog = _watched(10.0, start_grace_s=300.0)
    for _ in range(29):  # a slow start: model load, optimize, group join
        clock.now += 10
        assert not dog.check()
    assert exits == []
    clock.now += 11  # 301 s without a first beat
    assert not dog.check()
    clock.now += 10
    assert dog.check() and exits == [1]
    with pytest.raises(ValueError, match="positive"):
        LivenessWatchdog(health, 0.0)


def test_probes_are_series_too(served: str) -> None:
    def series() -> dict[str, float]:
        return metrics.scrape(served + "/metrics")

    HEALTH.forget()
    HEALTH.beat()
    got = series()
    assert got["coldstream_live"] == 1.0
    assert got["coldstream_ready"] == 0.0  # not started
    assert 0.0 <= got["coldstream_event_loop_beat_age_seconds"] < 30.0
    HEALTH.set_started(True)
    assert series()["coldstream_ready"] == 1.0
    HEALTH.set_dependency("store", False)
    assert series()["coldstream_ready"] == 0.0


def test_the_watchdog_thread_ends_a_stalled_process() -> None:
    health = Health(stall_after_s=0.05, start_grace_s=0.05)
    exited = threading.Event()
    LivenessWatchdog(health, 0.05, exit=lambda status: exited.set(), check_every_s=0.01).start()
    assert exited.wait(5.0)  # no beat ever came: the start grace, then the watchdog's count


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:9108/healthz"),
        ("", "http://127.0.0.1:9108/healthz"),
        ("::", "http://[::1]:9108/healthz"),
        ("10.1.2.3", "http://10.1.2.3:9108/healthz"),
        ("fd00::7", "http://[fd00::7]:9108/healthz"),
        ("worker-0.local", "http://worker-0.local:9108/healthz"),
    ],
)
def test_a_probe_reaches_the_address_the_worker_binds(host: str, url: str) -> None:
    assert metrics.probe_url(host, 9108, "/healthz") == url


def test_coldstream_health_exits_as_the_probe_answers(
    served: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """0 while /healthz says alive, 1 for a 503 (here /readyz before the start) or no answer,
    2 with the endpoints off; the address and port come from the worker's settings."""
    from infra.settings import get_settings
    from streams.cli import main

    port = served.rsplit(":", 1)[1]

    def run(*args: str, **env: str) -> int:
        for name, value in env.items():
            monkeypatch.setenv(f"COLDSTREAM_{name}", value)
        get_settings.cache_clear()
        try:
            return main(["health", *args])
        finally:
            get_settings.cache_clear()

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy must not carry the probe
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert run(METRICS_HOST="0.0.0.0", METRICS_PORT=port) == 0
    assert "200" in (out := capsys.readouterr().out) and "alive" in out
    assert run("--ready") == 1  # not started: the worker answers 503
    assert "503" in capsys.readouterr().err
    with socket_without_listener() as free:
        assert run(METRICS_PORT=str(free)) == 1
    assert "no answer" in capsys.readouterr().err
    assert run(METRICS_PORT="0") == 2


@contextlib.contextmanager
def socket_without_listener() -> Iterator[int]:
    """A loopback port bound but not listening: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
