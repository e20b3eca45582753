"""Connection against real sockets: the emulator, plus a tiny HTTP server for refusals and
redirects that the emulator does not model (another origin, x-request-id)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from waiting import wait_for

from oaiws import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    InternalServerError,
    ProtocolError,
    RateLimitError,
)
from oaiws._config import ClientConfig
from oaiws._connection import Connection
from oaiws._frames import ReadAhead
from oaiws.testing import Emulator, Fault

KEY = "sk-test"
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def config_for(emu: Emulator, **options: Any) -> ClientConfig:
    options.setdefault("api_key", emu.api_key)
    options.setdefault("base_url", emu.base_url)
    return ClientConfig.resolve(**options)


def run_request(conn: Connection, text: str) -> list[dict[str, Any]]:
    conn.send_json({"type": "response.create", "model": "test-model", "input": text})
    events = []
    while True:
        event = conn.recv_json(5.0)
        events.append(event)
        if event["type"] in TERMINAL:
            return events


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: HTTPStub = self.server  # type: ignore[assignment]
        lines = []
        while True:
            line = self.rfile.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            lines.append(line.decode("latin-1").rstrip("\r\n"))
        server.requests.append(lines)
        body = server.body.encode()
        head = [f"HTTP/1.1 {server.status} Stub", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in server.headers.items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)


class HTTPStub(socketserver.ThreadingTCPServer):
    """Answers every request with one status, headers and body; records request heads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, status: int, headers: dict[str, str], body: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status, self.headers, self.body = status, headers, body
        self.requests: list[list[str]] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server_address[1]}/v1/responses"


@pytest.fixture
def stub_factory() -> Iterator[Callable[..., HTTPStub]]:
    stubs: list[HTTPStub] = []

    def make(status: int, headers: dict[str, str], body: str = "") -> HTTPStub:
        stub = HTTPStub(status, headers, body)
        threading.Thread(target=stub.serve_forever, args=(0.05,), daemon=True).start()
        stubs.append(stub)
        return stub

    yield make
    for stub in stubs:
        stub.shutdown()
        stub.server_close()


# -- handshake ----------------------------------------------------------------------------


def test_open_send_receive_and_track_the_response(oaiws_emulator: Emulator) -> None:
    conn = Connection.open(config_for(oaiws_emulator))
    try:
        assert conn.requests_started == 0 and conn.last_response_id is None
        events = run_request(conn, "hello")
        assert events[-1]["type"] == "response.completed"
        assert conn.requests_started == 1
        assert conn.last_response_id == events[-1]["response"]["id"]
        assert KEY not in repr(conn)
    finally:
        conn.close()
    assert conn.closed


def test_tls_with_the_emulator_ca(oaiws_emulator_factory: Callable[..., Emulator]) -> None:
    emu = oaiws_emulator_factory(tls=True)
    assert emu.websocket_url.startswith("wss://")
    conn = Connection.open(config_for(emu, verify=emu.ca_path))
    try:
        assert run_request(conn, "over tls")[-1]["type"] == "response.completed"
    finally:
        conn.close()
    with pytest.raises(APIConnectionError, match="certificate"):
        Connection.open(config_for(emu))  # the system store does not know the emulator's CA


def test_bad_key_is_refused_with_401_and_the_key_never_shows(oaiws_emulator: Emulator) -> None:
    with pytest.raises(AuthenticationError) as info:
        Connection.open(config_for(oaiws_emulator, api_key="sk-wrong-secret"))
    assert info.value.status_code == 401
    text = str(info.value) + repr(info.value) + repr(info.value.body) + repr(info.value.headers)
    assert "sk-wrong-secret" not in text


def test_503_with_retry_after_maps_to_internal_server_error(oaiws_emulator: Emulator) -> None:
    oaiws_emulator.inject(Fault(refuse_status=503, retry_after=1.0), on="connection")
    with pytest.raises(InternalServerError) as info:
        Connection.open(config_for(oaiws_emulator))
    assert info.value.status_code == 503
    assert info.value.retry_after == 1.0


def test_429_keeps_retry_after_and_request_id(stub_factory: Callable[..., HTTPStub]) -> None:
    body = '{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}'
    stub = stub_factory(429, {"retry-after": "2", "x-request-id": "req_123"}, body)
    config = ClientConfig.resolve(api_key="sk-secret-429", websocket_url=stub.url)
    with pytest.raises(RateLimitError) as info:
        Connection.open(config)
    error = info.value
    assert (error.status_code, error.code, error.retry_after) == (429, "rate_limit_exceeded", 2.0)
    assert error.request_id == "req_123"
    assert "sk-secret-429" not in str(error)


def test_a_redirect_is_never_followed_with_the_key(
    oaiws_emulator: Emulator, stub_factory: Callable[..., HTTPStub]
) -> None:
    stub = stub_factory(307, {"Location": oaiws_emulator.websocket_url + "?token=x"})
    config = ClientConfig.resolve(api_key=oaiws_emulator.api_key, websocket_url=stub.url)
    with pytest.raises(APIStatusError) as info:
        Connection.open(config)
    assert info.value.status_code == 307
    assert "redirect" in str(info.value) and "token=x" not in str(info.value)
    assert len(stub.requests) == 1
    assert oaiws_emulator.stats()["handshakes"] == 0, "the other origin never saw a request"


def test_handshake_timeout(oaiws_emulator: Emulator) -> None:
    oaiws_emulator.inject(Fault(handshake_delay=3.0), on="connection")
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="connect_timeout"):
        Connection.open(config_for(oaiws_emulator, connect_timeout=0.3))
    assert time.monotonic() - started < 2.0


def test_connection_refused_is_an_api_connection_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    config = ClientConfig.resolve(api_key="sk-x", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(APIConnectionError, match="cannot connect"):
        Connection.open(config)


# -- receiving ----------------------------------------------------------------------------


def test_silence_raises_timeout(oaiws_emulator: Emulator) -> None:
    oaiws_emulator.inject(Fault(stall_before_first_event=3.0))
    conn = Connection.open(config_for(oaiws_emulator))
    try:
        conn.send_json({"type": "response.create", "model": "m", "input": "x"})
        started = time.monotonic()
        with pytest.raises(APITimeoutError):
            conn.recv_json(0.3)
        assert time.monotonic() - started < 2.0
    finally:
        conn.close()


def test_server_close_mid_response_names_the_close_code(oaiws_emulator: Emulator) -> None:
    oaiws_emulator.inject(Fault(close_after_events=2, close_code=1011))
    conn = Connection.open(config_for(oaiws_emulator))
    with pytest.raises(APIConnectionError, match="1011"):
        run_request(conn, "x")
    assert conn.closed and conn.close_code == 1011
    with pytest.raises(APIConnectionError):
        conn.send_json({"type": "response.create"})


@pytest.mark.parametrize("fault", [Fault(binary_frame=True), Fault(malformed_frame=True)])
def test_non_json_frames_are_protocol_errors(oaiws_emulator: Emulator, fault: Fault) -> None:
    oaiws_emulator.inject(fault)
    conn = Connection.open(config_for(oaiws_emulator))
    try:
        with pytest.raises(ProtocolError):
            run_request(conn, "x")
    finally:
        conn.close()


def test_close_is_fast_in_the_middle_of_a_response(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    emu = oaiws_emulator_factory(deltas=200, delta_delay=0.02)
    conn = Connection.open(config_for(emu))
    conn.send_json({"type": "response.create", "model": "m", "input": "long"})
    conn.recv_json(5.0)
    started = time.monotonic()
    conn.close()
    assert time.monotonic() - started < 0.3
    wait_for(lambda: emu.stats()["connections_open"] == 0)


def test_a_small_request_keeps_the_socket_timeout_a_large_one_bounds_its_send(
    oaiws_emulator: Emulator,
) -> None:
    # Changing a socket's timeout is a GIL-releasing system call: a request that fits the
    # kernel's send buffer keeps the read timeout (5 s here); a large one is bounded by
    # connect_timeout.
    conn = Connection.open(config_for(oaiws_emulator, connect_timeout=2.0))
    changes: list[Any] = []
    settimeout = conn._ws.settimeout
    conn._ws.settimeout = lambda seconds: (changes.append(seconds), settimeout(seconds))[1]
    try:
        run_request(conn, "first")  # the send sets connect_timeout, the reads set theirs
        changes.clear()
        conn.send_json({"type": "response.create", "model": "test-model", "input": "small"})
        assert changes == []
        while conn.recv_json(5.0)["type"] not in TERMINAL:
            pass
        changes.clear()
        conn.send_json({"type": "response.create", "model": "m", "input": "x" * 20_000})
        assert changes == [2.0]
    finally:
        conn.close()


# -- reading ahead ------------------------------------------------------------------------


def test_read_ahead_serves_the_parser_from_one_read() -> None:
    chunks = [b"\x81\x05hello\x81\x02hi"]
    reader = ReadAhead(lambda size: chunks.pop(0))
    assert (reader(2), reader(5), reader(2), reader(2)) == (
        b"\x81\x05",
        b"hello",
        b"\x81\x02",
        b"hi",
    )
    assert reader.reads == 1 and not reader.pending


def test_read_ahead_never_gives_more_than_asked_and_keeps_the_rest() -> None:
    chunks = [b"abcdef", b"gh"]
    reader = ReadAhead(lambda size: chunks.pop(0))
    assert reader(4) == b"abcd" and reader.pending
    assert reader(10) == b"ef"  # what is left; the parser asks again for the shortage
    assert reader(10) == b"gh" and reader.reads == 2


def test_read_ahead_passes_errors_through_and_loses_nothing() -> None:
    results: list[Any] = [b"abc", TimeoutError("silence"), b"d"]

    def read(size: int) -> bytes:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return bytes(result)

    reader = ReadAhead(read)
    assert reader(2) == b"ab"
    assert reader(1) == b"c"
    with pytest.raises(TimeoutError):
        reader(1)
    assert reader(1) == b"d"


def test_read_ahead_guards_every_read_but_the_one_marked_unguarded() -> None:
    chunks = [b"ab", b"cd", b"ef"]
    guarded: list[int] = []
    reader = ReadAhead(lambda size: chunks.pop(0), lambda: guarded.append(reader.reads))
    reader.unguarded = True
    assert reader(2) == b"ab" and guarded == []  # a frame's first read: the socket bounds it
    assert reader(2) == b"cd" and guarded == [1]  # any later read: the guard first
    assert reader(2) == b"ef" and guarded == [1, 2]


@pytest.mark.parametrize("tls", [False, True])
def test_a_response_takes_about_one_socket_read_per_frame(
    oaiws_emulator_factory: Callable[..., Emulator], tls: bool
) -> None:
    # websocket-client alone reads three times per frame; every read releases the GIL.
    emu = oaiws_emulator_factory(tls=tls)
    conn = Connection.open(config_for(emu, verify=emu.ca_path or True))
    try:
        events = run_request(conn, "count my reads")
        assert conn._read_ahead is not None
        assert conn._read_ahead.reads <= len(events) + 2, (conn._read_ahead.reads, len(events))
    finally:
        conn.close()


def test_a_frame_already_read_ahead_while_idle_is_noticed(oaiws_emulator: Emulator) -> None:
    # A leftover data frame must never reach the next request, even when its bytes were
    # read from the socket with the last frame of a response (the socket then looks quiet).
    conn = Connection.open(config_for(oaiws_emulator))
    run_request(conn, "first")
    assert conn._read_ahead is not None and not conn._read_ahead.pending
    conn._read_ahead._data, conn._read_ahead._pos = b"\x81\x02{}", 0  # a text frame
    assert conn.check_idle() is False
    assert conn.closed


# -- idle care ----------------------------------------------------------------------------


def test_a_close_while_idle_is_noticed(oaiws_emulator: Emulator) -> None:
    conn = Connection.open(config_for(oaiws_emulator))
    assert conn.check_idle()
    oaiws_emulator.close_all_connections(code=1001)
    wait_for(lambda: not conn.check_idle())
    assert conn.closed and conn.close_code == 1001


def test_a_dropped_tcp_connection_is_noticed_while_idle(oaiws_emulator: Emulator) -> None:
    conn = Connection.open(config_for(oaiws_emulator))
    oaiws_emulator.close_all_connections(code=None)
    wait_for(lambda: not conn.check_idle())
    assert conn.closed


def test_idle_pings_keep_a_connection_past_the_server_idle_timeout(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    emu = oaiws_emulator_factory(idle_timeout=0.8)
    conn = Connection.open(config_for(emu, ping_interval=0.2))
    try:
        # Time itself is what is tested: the connection must outlive the server's idle timer.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            assert conn.check_idle()
            time.sleep(0.05)
        assert run_request(conn, "still here")[-1]["type"] == "response.completed"
        stats = emu.stats()
        assert stats["pings_received"] >= 3
        assert stats["connections_closed_idle"] == 0
    finally:
        conn.close()


def test_server_pings_are_answered_while_idle(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    emu = oaiws_emulator_factory(ping_interval=0.1, ping_timeout=0.5)
    conn = Connection.open(config_for(emu, ping_interval=None))
    try:
        wait_for(lambda: conn.check_idle() and emu.stats()["pongs_received"] >= 3)
        assert emu.stats()["connections_closed_ping_timeout"] == 0
        assert run_request(conn, "x")[-1]["type"] == "response.completed"
    finally:
        conn.close()


def test_without_idle_care_the_server_drops_the_connection(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    # The counterpart of the two tests above: proves the emulator enforces its timer.
    emu = oaiws_emulator_factory(ping_interval=0.1, ping_timeout=0.3)
    conn = Connection.open(config_for(emu, ping_interval=None))
    wait_for(lambda: emu.stats()["connections_closed_ping_timeout"] == 1)
    wait_for(lambda: not conn.check_idle())
