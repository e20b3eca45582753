"""A lying or slow HTTP server: every answer is bounded in memory and in time, and every
failure is a documented exception. Raw servers on loopback say exactly what the emulator
would never say."""

from __future__ import annotations

import json
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any, Callable

import pytest

import oaiws
from oaiws.testing import HOSTILE_FRAMES, Emulator, Fault

Script = Callable[[Any, Any, threading.Event], None]
CREATED = {"type": "response.created", "response": {"id": "resp_x", "status": "in_progress"}}
DONE = {
    "type": "response.completed",
    "response": {"id": "resp_x", "status": "completed", "output": []},
}


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: RawServer = self.server  # type: ignore[assignment]
        length = 0
        while True:
            line = self.rfile.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        self.rfile.read(length)
        server.requests += 1
        try:
            server.script(self.rfile, self.wfile, server.stop)
        except OSError:
            server.client_gone.set()


class RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: Script) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = script
        self.requests = 0
        self.stop = threading.Event()
        self.client_gone = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def serve() -> Iterator[Callable[[Script], RawServer]]:
    made: list[RawServer] = []

    def make(script: Script) -> RawServer:
        server = RawServer(script)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop.set()
        server.shutdown()
        server.server_close()


def _client(server: RawServer, **options: Any) -> oaiws.Client:
    options.setdefault("max_retries", 0)
    return oaiws.Client(api_key="sk-x", base_url=server.base_url, transport="http", **options)


def _sse_head(wfile: Any) -> None:
    wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


# -- memory ---------------------------------------------------------------------------------


def test_a_redirect_with_an_endless_body_is_refused_without_reading_it(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        wfile.write(
            b"HTTP/1.1 307 Moved\r\nLocation: http://[::1/unparsable\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        while not stop.wait(0.05):
            wfile.write(b"x" * 65536)

    server = serve(script)
    started = time.monotonic()
    with _client(server) as client, pytest.raises(oaiws.APIStatusError) as caught:
        client.create_response(model="m", input="x")
    assert caught.value.status_code == 307 and "never followed" in str(caught.value)
    assert time.monotonic() - started < 3.0


def test_a_compressed_answer_is_refused(serve: Callable[[Script], RawServer]) -> None:
    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: 4\r\n\r\nxxxx"
        )

    with _client(serve(script)) as client, pytest.raises(oaiws.ProtocolError, match="gzip"):
        client.create_response(model="m", input="x")


def test_a_line_that_never_ends_stops_at_max_message_size(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        _sse_head(wfile)
        wfile.write(_chunk(_event(CREATED)))
        while not stop.is_set():
            wfile.write(_chunk(b"x" * 65536))  # one line, no newline, 64 KiB at a time

    server = serve(script)
    tracemalloc.start()
    try:
        with _client(server, max_message_size=1 << 20) as client:
            with pytest.raises(oaiws.ProtocolError, match="max_message_size"):
                client.create_response(model="m", input="x")
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


# -- time ---------------------------------------------------------------------------------------


def test_an_event_that_trickles_in_is_cut_at_read_timeout(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        _sse_head(wfile)
        wfile.write(_chunk(_event(CREATED)))
        wfile.flush()
        for byte in _chunk(_event(DONE)):  # the next event, one byte every 0.2 s
            if stop.wait(0.2):
                return
            wfile.write(bytes([byte]))
            wfile.flush()

    server = serve(script)
    started = time.monotonic()
    client = _client(server, read_timeout=1.0)
    with client, pytest.raises(oaiws.StreamTimeoutError) as caught:
        list(client.generate_response(model="m", input="x"))
    assert time.monotonic() - started < 3.0
    assert [event.type for event in caught.value.events] == ["response.created"]


def test_after_the_terminal_event_nobody_waits_for_the_body_to_end(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        _sse_head(wfile)
        wfile.write(_chunk(_event(CREATED) + _event(DONE)))
        wfile.flush()
        while not stop.wait(0.5):  # keep-alive comments, and never the body's end
            wfile.write(_chunk(b": ping\n\n"))
            wfile.flush()

    server = serve(script)
    started = time.monotonic()
    with _client(server, read_timeout=30.0) as client:
        assert client.create_response(model="m", input="x").status == "completed"
        assert time.monotonic() - started < 2.0
        assert server.client_gone.wait(5), "the connection was closed, not kept"


def test_a_rest_answer_that_trickles_in_is_bounded_by_the_calls_timeout(
    serve: Callable[[Script], RawServer],
) -> None:
    body = json.dumps({"id": "resp_1", "object": "response", "status": "completed"}).encode()

    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for byte in body:
            if stop.wait(0.3):
                return
            wfile.write(bytes([byte]))
            wfile.flush()

    server = serve(script)
    started = time.monotonic()
    with _client(server) as client, pytest.raises(oaiws.APITimeoutError):
        client.responses.retrieve("resp_1", timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_a_listing_whose_cursor_never_moves_is_refused(
    serve: Callable[[Script], RawServer],
) -> None:
    page = json.dumps(
        {"data": [{"id": "item_1", "type": "message"}], "has_more": True, "last_id": "item_1"}
    ).encode()

    def script(rfile: Any, wfile: Any, stop: threading.Event) -> None:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(page)}\r\n\r\n".encode()
            + page
        )

    server = serve(script)
    with _client(server) as client, pytest.raises(oaiws.ProtocolError, match="never end"):
        list(client.responses.input_items.list("resp_1"))
    assert server.requests == 2


# -- the emulator's hostile frames over SSE ---------------------------------------------------

REFUSED = {
    "not_json",
    "invalid_utf8",
    "not_an_object",
    "no_type",
    "type_not_a_string",
    "deep_nesting",
    "negative_index",
    "index_not_an_integer",
    "terminal_without_response",
}
WEBSOCKET_ONLY = {"oversized_frame", "fragment_flood"}


@pytest.mark.parametrize("preset", sorted(HOSTILE_FRAMES))
def test_hostile_events_over_http_are_refused_or_tolerated_as_over_websocket(
    oaiws_emulator: Emulator, preset: str
) -> None:
    with oaiws.Client(
        api_key=oaiws_emulator.api_key,
        base_url=oaiws_emulator.base_url,
        transport="http",
        max_retries=0,
    ) as client:
        oaiws_emulator.inject(Fault(hostile_frame=preset))
        try:
            outcome: Any = client.create_response(model="m", input="hello")
        except oaiws.OAIWSError as error:
            outcome = error
        if preset in WEBSOCKET_ONLY:
            assert isinstance(outcome, oaiws.BadRequestError)
        elif preset in REFUSED:
            assert type(outcome) is oaiws.ProtocolError, outcome
        elif preset == "error_not_an_object":
            assert type(outcome) is oaiws.APIStatusError, outcome
        else:
            assert isinstance(outcome, oaiws.Response), outcome
        assert client.create_response(model="m", input="again").status == "completed"
