"""TLS in front of the plaintext embedded broker, for the security tests.

The shipped Tansu build cannot terminate TLS itself (see ``test_security.py``), so the tests put
:class:`TlsProxy` in front of it: TLS on 127.0.0.1:``port``, plaintext to the broker on
127.0.0.1:``upstream_port``, bytes copied both ways. The broker advertises the proxy's port, so
every connection a client opens after bootstrap (metadata, group coordinator, partition leader)
comes back through TLS as well. :func:`make_certs` writes a throwaway CA and a server certificate
for 127.0.0.1/localhost signed by it, with the ``openssl`` command-line tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

_SERVER_EXTENSIONS = """\
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


@dataclass(frozen=True)
class Ca:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path
    ca: Ca


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str = "ca") -> Ca:
    """A self-signed CA (EC P-256, valid two days) as ``name.pem``/``name.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = Ca(directory / f"{name}.pem", directory / f"{name}.key")
    # random subject: two CAs made by one test must not look alike to the verifier
    subject = f"/CN=coldstream-test-{name}-{secrets.token_hex(4)}"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-subj", subject,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return ca


def make_server_cert(directory: Path, ca: Ca, name: str = "server") -> ServerCert:
    """A certificate for 127.0.0.1 and localhost (serverAuth), signed by ``ca``."""
    directory.mkdir(parents=True, exist_ok=True)
    server = ServerCert(directory / f"{name}.pem", directory / f"{name}.key", ca)
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(_SERVER_EXTENSIONS)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(server.key), "-out", str(csr), "-subj", "/CN=localhost",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", f"0x{secrets.token_hex(8)}", "-days", "2", "-extfile", str(ext),
        "-out", str(server.cert),
    )  # fmt: skip
    return server


def make_certs(directory: Path) -> ServerCert:
    """A fresh CA and a server certificate for 127.0.0.1 signed by it."""
    return make_server_cert(directory, make_ca(directory))


class TlsProxy:
    """TLS-terminating TCP proxy on 127.0.0.1, its asyncio loop on a daemon thread.

    Use as a context manager. ``port`` 0 picks a free port (read it from :attr:`port` once
    started). Stopping closes the listener and every open connection, then ends the thread.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        upstream_port: int,
        cert: Path,
        key: Path,
        *,
        port: int = 0,
        upstream_host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> TlsProxy:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._main, name="tls-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("TLS proxy did not start")
        if self._error is not None:
            raise RuntimeError("TLS proxy failed to start") from self._error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError("TLS proxy thread did not stop")

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop thread ---------------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_handshake_errors)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._relay(reader, writer)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(handle, self.host, self.port, ssl=self.context)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("TLS proxy: upstream %s:%d unreachable: %s", *self.upstream, exc)
            client_writer.close()
            return
        try:
            await asyncio.gather(
                _pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer)
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or error on either side, then close ``writer`` (which ends the other pipe)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _quiet_handshake_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client that rejects our certificate is expected in the tests: log it, don't shout."""
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionError):
        log.debug("TLS proxy: %s: %s", context.get("message"), exc)
        return
    loop.default_exception_handler(context)
