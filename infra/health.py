"""Liveness and readiness for orchestrators (``/healthz``, ``/readyz`` beside ``/metrics``).

The metrics endpoint answers from its own thread, so it stays up when the worker is stuck: a
container healthcheck on ``/metrics`` cannot see a blocked event loop. Liveness here is the
loop's own heartbeat (a Faust timer); readiness adds what the worker needs to do its job: the
pipeline started and its dependencies (the store, the encoder) answering. Both are plain state
set by the worker, read by the HTTP thread.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Check:
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Health:
    """What the worker reports about itself; safe to read from another thread."""

    def __init__(
        self,
        stall_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        restart_after_down_s: dict[str, float] | None = None,
        start_grace_s: float | None = None,
    ):
        """``restart_after_down_s``: dependencies a restart can cure (the encoder: a device
        left in an error state by a failed pass stays so until the process ends), and how long
        each may stay down before liveness fails. ``start_grace_s`` (default
        ``stall_after_s``): how long start-up may take before the first beat (the encoder's
        load, the store's optimize, the consumer group's join)."""
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be positive")
        self.stall_after_s = stall_after_s
        self.start_grace_s = stall_after_s if start_grace_s is None else start_grace_s
        self.restart_after_down_s = dict(restart_after_down_s or {})
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()  # the loop has ``stall_after_s`` from here to start beating
        self._beats = 0
        self._started = False
        self._dependencies: dict[str, bool] = {}
        self._down_since: dict[str, float] = {}
        self._shutting_down = False

    def beat(self) -> None:
        """The event loop is turning (called from a loop timer)."""
        with self._lock:
            self._last_beat = self._clock()
            self._beats += 1

    def begin_shutdown(self) -> None:
        """A stop has begun: the loop's timers (its heartbeat) are stopping on purpose."""
        with self._lock:
            self._shutting_down = True

    @property
    def shutting_down(self) -> bool:
        with self._lock:
            return self._shutting_down

    def set_started(self, started: bool) -> None:
        with self._lock:
            self._started = started

    def set_dependency(self, name: str, up: bool) -> None:
        with self._lock:
            self._dependencies[name] = up
            if up:
                self._down_since.pop(name, None)
            else:
                self._down_since.setdefault(name, self._clock())

    def is_down(self, name: str) -> bool:
        with self._lock:
            return self._dependencies.get(name) is False

    def forget(self) -> None:
        """Back to the state of a fresh process (tests; a worker restarted in one process)."""
        with self._lock:
            self._last_beat = self._clock()
            self._beats = 0
            self._started = False
            self._dependencies.clear()
            self._down_since.clear()
            self._shutting_down = False

    def liveness(self) -> Check:
        """Alive while the event loop beat within ``stall_after_s`` (``start_grace_s`` from
        the start until its first beat; a blocked loop also stops heartbeating the consumer
        group) and no dependency a restart can cure has been down for longer than allowed:
        restarting is the cure for both."""
        with self._lock:
            now = self._clock()
            age = now - self._last_beat
            beats = self._beats
            down_s = {name: now - since for name, since in self._down_since.items()}
        too_long = sorted(
            name
            for name, limit in self.restart_after_down_s.items()
            if limit > 0 and down_s.get(name, 0.0) > limit
        )
        ok = age <= (self.stall_after_s if beats else self.start_grace_s) and not too_long
        detail: dict[str, Any] = {"loop_beat_age_s": round(age, 3), "beats": beats}
        if down_s:
            detail["down_for_s"] = {name: round(v, 3) for name, v in sorted(down_s.items())}
        if too_long:
            detail["down_too_long"] = too_long
        return Check(ok, detail)

    def readiness(self) -> Check:
        """Ready once alive, beating, started and every dependency seen answers."""
        live = self.liveness()
        with self._lock:
            started = self._started
            deps = dict(self._dependencies)
            beats = self._beats
        down = sorted(name for name, up in deps.items() if not up)
        ok = live.ok and beats > 0 and started and not down
        detail = {
            **live.detail,
            "started": started,
            "dependencies": {name: "up" if up else "down" for name, up in sorted(deps.items())},
        }
        return Check(ok, detail)


HEALTH = Health()


class LivenessWatchdog:
    """Ends the process once liveness has failed for ``exit_after_s`` in a row.

    Docker and Compose restart a container whose process exits, not one whose health check
    fails, so a worker whose loop is stuck (or whose device hung) would stay stuck there. It
    counts from its own first check that saw the failure: a check delayed by a long hold of
    the GIL starts the count, it does not end it. The committed offsets make the restart
    replay what the stuck process had not finished.
    """

    def __init__(
        self,
        health: Health,
        exit_after_s: float,
        *,
        exit: Callable[[int], object] = os._exit,
        clock: Callable[[], float] = time.monotonic,
        check_every_s: float = 1.0,
    ) -> None:
        if exit_after_s <= 0 or check_every_s <= 0:
            raise ValueError("exit_after_s and check_every_s must be positive")
        self.health = health
        self.exit_after_s = exit_after_s
        self.check_every_s = check_every_s
        self._exit = exit
        self._clock = clock
        self._failing_since: float | None = None

    def check(self) -> bool:
        """One look at liveness; True when it ended the process (a test's ``exit`` returns).
        A worker shutting down is left to finish: its heartbeat has stopped on purpose, and
        ending it would skip saving its counts."""
        if self.health.shutting_down:
            self._failing_since = None
            return False
        live = self.health.liveness()
        now = self._clock()
        if live.ok:
            self._failing_since = None
            return False
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since < self.exit_after_s:
            return False
        log.critical(
            "liveness has failed for %.0f s (%s): ending the process so that it is restarted",
            now - self._failing_since,
            json.dumps(live.detail, sort_keys=True),
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(1)
        return True

    def start(self) -> LivenessWatchdog:
        """Check from a daemon thread for the life of the process."""
        threading.Thread(target=self._run, name="liveness-watchdog", daemon=True).start()
        return self

    def _run(self) -> None:
        while True:
            time.sleep(self.check_every_s)
            if self.check():
                return


def health_response(check: Check, ok_status: str) -> tuple[str, bytes]:
    """(HTTP status line, JSON body) for a check."""
    body = {"status": ok_status if check.ok else "failing", **check.detail}
    status = "200 OK" if check.ok else "503 Service Unavailable"
    return status, (json.dumps(body, sort_keys=True) + "\n").encode()


def health_app(health: Health, fallback: Callable[..., Iterable[bytes]]) -> Callable[..., Any]:
    """A WSGI app answering ``/healthz`` and ``/readyz``, ``/metrics`` by ``fallback`` and
    anything else with 404."""
    routes: dict[str, Callable[[], tuple[str, bytes]]] = {
        "/healthz": lambda: health_response(health.liveness(), "alive"),
        "/readyz": lambda: health_response(health.readiness(), "ready"),
    }

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return fallback(environ, start_response)
        route = routes.get(path)
        if route is None:  # a mistyped probe path must not pass as healthy
            return _plain(
                start_response, "404 Not Found", b"not found: /metrics, /healthz, /readyz\n"
            )
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"GET or HEAD\n")
        status, body = route()
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return app


def _plain(start_response: Callable[..., Any], status: str, body: bytes) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
