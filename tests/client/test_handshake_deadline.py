"""``connect_timeout`` bounds the whole WebSocket upgrade, not each socket operation.

A server that answers the upgrade one byte at a time, each byte well within the timeout,
must not stretch the handshake past ``connect_timeout``. It bounds a send that stalls, too.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from support import read_upgrade, upgrade_answer

from oaiws import APIConnectionError, APITimeoutError
from oaiws._config import ClientConfig
from oaiws._connection import Connection


class _TrickleHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: TricklingServer = self.server  # type: ignore[assignment]
        # A valid upgrade answer: sent at once it would succeed.
        answer = upgrade_answer(read_upgrade(self.rfile), padding=40)
        for index in range(len(answer)):
            if server.stop.wait(server.byte_interval):
                return
            try:
                self.wfile.write(answer[index : index + 1])
                self.wfile.flush()
            except OSError:
                server.client_gone.set()
                return
        server.completed.set()
        server.stop.wait(10)


class TricklingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, byte_interval: float) -> None:
        super().__init__(("127.0.0.1", 0), _TrickleHandler)
        self.byte_interval = byte_interval
        self.stop = threading.Event()
        self.completed = threading.Event()
        self.client_gone = threading.Event()

    @property
    def websocket_url(self) -> str:
        host, port = self.server_address[:2]
        return f"ws://{host}:{port}/v1/responses"


def _serve(byte_interval: float) -> Iterator[TricklingServer]:
    server = TricklingServer(byte_interval)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    # ~170 bytes at 50 ms each: about 8.5 s in all, every byte far inside connect_timeout.
    yield from _serve(0.05)


def test_a_trickled_upgrade_cannot_outlive_connect_timeout(trickling: TricklingServer) -> None:
    config = ClientConfig.resolve(
        api_key="sk-test", websocket_url=trickling.websocket_url, connect_timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match=r"connect_timeout=0\.5s"):
        Connection.open(config)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the handshake took {elapsed:.1f}s despite connect_timeout=0.5"
    assert not trickling.completed.is_set()


def test_a_slow_but_timely_upgrade_still_succeeds() -> None:
    # ~170 bytes at 2 ms: about 0.35 s, inside the 5 s deadline.
    for server in _serve(0.002):
        config = ClientConfig.resolve(
            api_key="sk-test", websocket_url=server.websocket_url, connect_timeout=5.0
        )
        conn = Connection.open(config)
        try:
            assert not conn.closed
            assert server.completed.wait(5)
        finally:
            conn.close()


def test_the_deadline_watchdog_does_not_outlive_the_handshake() -> None:
    for server in _serve(0.0):
        config = ClientConfig.resolve(
            api_key="sk-test", websocket_url=server.websocket_url, connect_timeout=30.0
        )
        conn = Connection.open(config)
        conn.close()
    watchdogs = [t for t in threading.enumerate() if t.name == "oaiws-handshake-deadline"]
    for thread in watchdogs:
        thread.join(2)
    assert not any(thread.is_alive() for thread in watchdogs)


def test_a_refused_tcp_connect_is_not_reported_as_a_deadline() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig.resolve(
        api_key="sk-test", websocket_url=f"ws://127.0.0.1:{port}/v1/responses"
    )
    with pytest.raises(Exception) as info:
        Connection.open(config)
    assert not isinstance(info.value, APITimeoutError)


def test_a_request_the_server_never_reads_times_out_after_connect_timeout() -> None:
    # After the upgrade the server reads nothing more. A request far larger than any socket
    # buffer must give up after connect_timeout, not after the (long) read_timeout.
    for server in _serve(0.0):
        config = ClientConfig.resolve(
            api_key="sk-test",
            websocket_url=server.websocket_url,
            connect_timeout=0.5,
            read_timeout=60.0,
        )
        conn = Connection.open(config)
        try:
            assert server.completed.wait(5)
            started = time.monotonic()
            with pytest.raises(APITimeoutError, match=r"stalled for connect_timeout=0\.5s"):
                conn.send_json({"type": "response.create", "model": "m", "input": "x" * 2**25})
            assert time.monotonic() - started < 10
            assert conn.closed
        finally:
            conn.close()


def test_a_handshake_whose_deadline_thread_cannot_start_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The watchdog is a timer thread; when the interpreter cannot start one, the failure is
    # the documented connection error, never a raw RuntimeError.
    def cannot_start(self: threading.Timer) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Timer, "start", cannot_start)
    config = ClientConfig.resolve(api_key="sk-x", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(APIConnectionError, match="deadline thread could not start"):
        Connection.open(config)
