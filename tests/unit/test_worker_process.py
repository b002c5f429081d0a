"""The stack's handle on a worker child: reading its metrics while it comes and goes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from infra.settings import Settings
from streams.stack import WorkerProcess

pytestmark = pytest.mark.unit


@pytest.fixture
def cut_off_server() -> Iterator[int]:
    """Answers every request with a page cut off mid-body, as a worker dying mid-answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9797\r\n\r\n# HELP x\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_a_page_cut_off_mid_answer_reads_as_no_answer(cut_off_server: int) -> None:
    """It raised http.client.IncompleteRead out of a wait on a dying worker (seen once in the
    suite), instead of the wait noticing the exit."""
    worker = WorkerProcess(Settings(), "127.0.0.1:9092")
    worker.metrics_port = cut_off_server
    assert worker.metrics() == {}
