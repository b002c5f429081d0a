"""Liveness and readiness for orchestrators (``/healthz``, ``/readyz`` beside ``/metrics``).

The metrics endpoint answers from its own thread, so it stays up when the worker is stuck: a
container healthcheck on ``/metrics`` cannot see a blocked event loop. Liveness here is the
loop's own heartbeat (a Faust timer); readiness adds what the worker needs to do its job: the
pipeline started and its dependencies (the store, the encoder) answering. Both are plain state
set by the worker, read by the HTTP thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Check:
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Health:
    """What the worker reports about itself; safe to read from another thread."""

    def __init__(self, stall_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        if stall_after_s <= 0:
            raise ValueError("stall_after_s must be positive")
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()  # the loop has ``stall_after_s`` from here to start beating
        self._beats = 0
        self._started = False
        self._dependencies: dict[str, bool] = {}

    def beat(self) -> None:
        """The event loop is turning (called from a loop timer)."""
        with self._lock:
            self._last_beat = self._clock()
            self._beats += 1

    def set_started(self, started: bool) -> None:
        with self._lock:
            self._started = started

    def set_dependency(self, name: str, up: bool) -> None:
        with self._lock:
            self._dependencies[name] = up

    def forget(self) -> None:
        """Back to the state of a fresh process (tests; a worker restarted in one process)."""
        with self._lock:
            self._last_beat = self._clock()
            self._beats = 0
            self._started = False
            self._dependencies.clear()

    def liveness(self) -> Check:
        """Alive while the event loop beat within ``stall_after_s`` (a blocked loop also stops
        heartbeating the consumer group; restarting is the cure)."""
        with self._lock:
            age = self._clock() - self._last_beat
            beats = self._beats
        ok = age <= self.stall_after_s
        return Check(ok, {"loop_beat_age_s": round(age, 3), "beats": beats})

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


def health_response(check: Check, ok_status: str) -> tuple[str, bytes]:
    """(HTTP status line, JSON body) for a check."""
    body = {"status": ok_status if check.ok else "failing", **check.detail}
    status = "200 OK" if check.ok else "503 Service Unavailable"
    return status, (json.dumps(body, sort_keys=True) + "\n").encode()


def health_app(health: Health, fallback: Callable[..., Iterable[bytes]]) -> Callable[..., Any]:
    """A WSGI app answering ``/healthz`` and ``/readyz``, everything else by ``fallback``."""
    routes: dict[str, Callable[[], tuple[str, bytes]]] = {
        "/healthz": lambda: health_response(health.liveness(), "alive"),
        "/readyz": lambda: health_response(health.readiness(), "ready"),
    }

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = routes.get(environ.get("PATH_INFO", ""))
        if route is None:
            return fallback(environ, start_response)
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
