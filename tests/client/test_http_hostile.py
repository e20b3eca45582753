"""A lying or slow HTTP server: every answer is bounded in memory and in time, and every
failure is a documented exception. Raw servers on loopback say exactly what the emulator
would never say."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from typing import Any, Callable

import pytest
from support import Answer, RawRequest, RawServer
from test_hostile_server import REFUSED as REFUSED_OVER_WEBSOCKET

import oaiws
from oaiws.testing import HOSTILE_FRAMES, Emulator, Fault

Serve = Callable[[Answer], RawServer]
CREATED = {"type": "response.created", "response": {"id": "resp_x", "status": "in_progress"}}
DONE = {
    "type": "response.completed",
    "response": {"id": "resp_x", "status": "completed", "output": []},
}


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _client(server: RawServer, **options: Any) -> oaiws.Client:
    options.setdefault("max_retries", 0)
    return oaiws.Client(api_key="sk-x", base_url=server.base_url, transport="http", **options)


def _sse_head(wfile: Any) -> None:
    wfile.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


# -- memory ---------------------------------------------------------------------------------


def test_a_redirect_with_an_endless_body_is_refused_without_reading_it(
    raw_server: Serve,
) -> None:
    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        wfile.write(
            b"HTTP/1.1 307 Moved\r\nLocation: http://[::1/unparsable\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        while not stop.wait(0.05):
            wfile.write(b"x" * 65536)
        return False

    server = raw_server(answer)
    started = time.monotonic()
    with _client(server) as client, pytest.raises(oaiws.APIStatusError) as caught:
        client.create_response(model="m", input="x")
    assert caught.value.status_code == 307 and "never followed" in str(caught.value)
    assert time.monotonic() - started < 3.0


def test_a_compressed_answer_is_refused(raw_server: Serve) -> None:
    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: 4\r\n\r\nxxxx"
        )
        return False

    with _client(raw_server(answer)) as client, pytest.raises(oaiws.ProtocolError, match="gzip"):
        client.create_response(model="m", input="x")


def test_a_line_that_never_ends_stops_at_max_message_size(
    raw_server: Serve,
) -> None:
    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        _sse_head(wfile)
        wfile.write(_chunk(_event(CREATED)))
        while not stop.is_set():
            wfile.write(_chunk(b"x" * 65536))  # one line, no newline, 64 KiB at a time
        return False

    server = raw_server(answer)
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
    raw_server: Serve,
) -> None:
    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        _sse_head(wfile)
        wfile.write(_chunk(_event(CREATED)))
        wfile.flush()
        for byte in _chunk(_event(DONE)):  # the next event, one byte every 0.2 s
            if stop.wait(0.2):
                return False
            wfile.write(bytes([byte]))
            wfile.flush()
        return False

    server = raw_server(answer)
    started = time.monotonic()
    client = _client(server, read_timeout=1.0)
    with client, pytest.raises(oaiws.StreamTimeoutError) as caught:
        list(client.generate_response(model="m", input="x"))
    assert time.monotonic() - started < 3.0
    assert [event.type for event in caught.value.events] == ["response.created"]


def test_after_the_terminal_event_nobody_waits_for_the_body_to_end(
    raw_server: Serve,
) -> None:
    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        _sse_head(wfile)
        wfile.write(_chunk(_event(CREATED) + _event(DONE)))
        wfile.flush()
        while not stop.wait(0.5):  # keep-alive comments, and never the body's end
            wfile.write(_chunk(b": ping\n\n"))
            wfile.flush()
        return False

    server = raw_server(answer)
    started = time.monotonic()
    with _client(server, read_timeout=30.0) as client:
        assert client.create_response(model="m", input="x").status == "completed"
        assert time.monotonic() - started < 2.0
        assert server.client_gone.wait(5), "the connection was closed, not kept"


def test_a_rest_answer_that_trickles_in_is_bounded_by_the_calls_timeout(
    raw_server: Serve,
) -> None:
    body = json.dumps({"id": "resp_1", "object": "response", "status": "completed"}).encode()

    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for byte in body:
            if stop.wait(0.3):
                return False
            wfile.write(bytes([byte]))
            wfile.flush()
        return False

    server = raw_server(answer)
    started = time.monotonic()
    with _client(server) as client, pytest.raises(oaiws.APITimeoutError):
        client.responses.retrieve("resp_1", timeout=1.0)
    assert time.monotonic() - started < 3.0


def test_a_listing_whose_cursor_never_moves_is_refused(
    raw_server: Serve,
) -> None:
    page = json.dumps(
        {"data": [{"id": "item_1", "type": "message"}], "has_more": True, "last_id": "item_1"}
    ).encode()

    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(page)}\r\n\r\n".encode()
            + page
        )
        return False

    server = raw_server(answer)
    with _client(server) as client, pytest.raises(oaiws.ProtocolError, match="never end"):
        list(client.responses.input_items.list("resp_1"))
    assert len(server.requests) == 2


# -- the emulator's hostile frames over SSE ---------------------------------------------------

WEBSOCKET_ONLY = {"oversized_frame", "fragment_flood"}  # over HTTP, a 400
REFUSED = REFUSED_OVER_WEBSOCKET - WEBSOCKET_ONLY


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
