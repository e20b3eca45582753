"""A server that sends its frames one byte at a time: each byte comes well within the socket's
timeout, so only a bound on the whole frame stops it. The client gives up within its
``read_timeout`` (mid-response) or its idle drain bound (while idle), never hangs.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from support import read_upgrade, text_frame, upgrade_answer

import oaiws
from oaiws._config import ClientConfig
from oaiws._connection import Connection

CREATED = {"type": "response.created", "response": {"id": "resp_slow", "status": "in_progress"}}


class _DripHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: DripServer = self.server  # type: ignore[assignment]
        self.wfile.write(upgrade_answer(read_upgrade(self.rfile)))
        self.wfile.flush()
        if server.mode == "response":
            self.request.recv(65536)  # the response.create
            self.wfile.write(text_frame(json.dumps(CREATED).encode()))
            self.wfile.flush()
        # A frame announced whole, then its bytes one at a time: never silent for long.
        frame = text_frame(b'{"type": "response.output_text.delta", "delta": "' + b"x" * 200)
        for index in range(len(frame)):
            if server.stop.wait(server.interval):
                return
            try:
                self.wfile.write(frame[index : index + 1])
                self.wfile.flush()
            except OSError:
                server.client_gone.set()
                return


class DripServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str, interval: float) -> None:
        super().__init__(("127.0.0.1", 0), _DripHandler)
        self.mode = mode
        self.interval = interval
        self.stop = threading.Event()
        self.client_gone = threading.Event()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


@pytest.fixture
def drip() -> Iterator[DripServer]:
    servers: list[DripServer] = []

    def make(mode: str, interval: float = 0.02) -> DripServer:
        server = DripServer(mode, interval)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        server.stop.set()
        server.shutdown()
        server.server_close()


def test_a_frame_that_trickles_in_mid_response_times_out_within_read_timeout(drip) -> None:  # type: ignore[no-untyped-def]
    server = drip("response")
    client = oaiws.Client(api_key="sk-x", base_url=server.base_url, read_timeout=0.5)
    seen: list[oaiws.Event] = []
    started = time.monotonic()
    with client, pytest.raises(oaiws.StreamTimeoutError) as caught:
        for event in client.generate_response(model="m", input="x"):
            seen.append(event)
    # 200 bytes at 20 ms each would take 4 s; read_timeout cuts the frame at 0.5 s.
    assert time.monotonic() - started < 2.0
    assert (
        [event.type for event in caught.value.events]
        == ["response.created"]
        == [event.type for event in seen]
    )
    assert server.client_gone.wait(5), "the connection was closed, not left hanging"


def test_a_frame_that_trickles_in_while_idle_makes_the_connection_unfit(drip) -> None:  # type: ignore[no-untyped-def]
    server = drip("idle")
    conn = Connection.open(ClientConfig.resolve(api_key="sk-x", base_url=server.base_url))
    try:
        # Looked after as the care thread would, until the frame has started to arrive.
        deadline = time.monotonic() + 5
        while True:
            started = time.monotonic()
            alive = conn.check_idle()
            took = time.monotonic() - started
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert alive is False, "a partial frame must never wait for the next request"
        assert took < 0.5, took
        assert conn.closed
    finally:
        conn.close()
