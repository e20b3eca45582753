"""Every fault kind: injected in-process, carried in request metadata, and through the
admin API of an EmulatorProcess."""

from __future__ import annotations

import json
import time

import pytest
import websocket
from waiting import wait_for

from oaiws.testing import EmulatorProcess, Fault

from .conftest import Client, final


def _refused(url: str) -> websocket.WebSocketBadStatusException:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        Client(url)
    return info.value


def test_refused_upgrade_with_status_and_retry_after(emu, connect):
    emu.inject(Fault(refuse_status=429, retry_after=7), on="connection")
    refusal = _refused(emu.websocket_url)
    assert refusal.status_code == 429
    assert refusal.resp_headers["retry-after"] == "7"
    assert json.loads(refusal.resp_body)["error"]["code"] == "rate_limit_exceeded"
    assert final(connect().run(input="x"))["status"] == "completed"  # only once
    emu.inject(Fault(refuse_status=503), on="connection", times=2)
    assert _refused(emu.websocket_url).status_code == 503
    assert _refused(emu.websocket_url).status_code == 503
    connect()
    stats = emu.stats()
    assert stats["refused_upgrades"] == 3 and stats["handshakes"] == 2


def test_handshake_delay_fault(emu, connect):
    emu.inject(Fault(handshake_delay=0.3), on="connection")
    start = time.monotonic()
    connect()
    assert time.monotonic() - start >= 0.3


def test_connection_fault_request_fields_hit_the_first_request_only(emu, connect):
    emu.inject(Fault(error_code="server_error"), on="connection")
    client = connect()
    error = client.run(input="x")[-1]
    assert (error["status"], error["error"]["code"]) == (500, "server_error")
    assert final(client.run(input="x"))["status"] == "completed"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("rate_limit_exceeded", 429),
        ("server_error", 500),
        ("server_is_overloaded", 503),
        ("odd", 400),
    ],
)
def test_error_code_fault(emu, connect, code, status):
    emu.inject(Fault(error_code=code, retry_after=2))
    error = connect().run(input="x")[-1]
    assert error["type"] == "error" and error["status"] == status
    assert error["error"]["code"] == code and error["error"]["headers"] == {"retry-after": "2"}


def test_error_status_overrides(emu, connect):
    emu.inject(Fault(error_code="custom", error_status=409))
    assert connect().run(input="x")[-1]["status"] == 409


@pytest.mark.parametrize(
    ("close_after", "close_code", "expected_events"),
    [(0, 1011, 0), (3, 1011, 3), (2, 4000, 2), (3, None, 3)],
)
def test_close_after_events(emu, connect, close_after, close_code, expected_events):
    emu.inject(Fault(close_after_events=close_after, close_code=close_code))
    client = connect()
    client.create(input="x")
    events, code = [], None
    try:
        while True:
            opcode, data = client.ws.recv_data(control_frame=True)
            if opcode != websocket.ABNF.OPCODE_TEXT:
                code = int.from_bytes(data[:2], "big")
                break
            events.append(json.loads(data))
    except websocket.WebSocketConnectionClosedException:
        code = None  # TCP dropped with no close frame
    assert len(events) == expected_events
    assert code == close_code


def test_dropped_tcp_gives_no_close_frame(emu, connect):
    emu.inject(Fault(close_after_events=1, close_code=None))
    client = connect()
    client.create(input="x")
    assert client.event()["type"] == "response.created"
    assert client.close_code() is None


def test_stalls(emu, connect):
    client = connect()
    emu.inject(Fault(stall_before_first_event=0.3))
    start = time.monotonic()
    client.create(input="x")
    client.event()
    assert time.monotonic() - start >= 0.3
    client.until_terminal()
    emu.inject(Fault(stall_after_first_event=0.3))
    client.create(input="x")
    client.event()
    start = time.monotonic()
    client.event()
    assert time.monotonic() - start >= 0.25


def test_malformed_and_binary_frames_replace_the_first_event(emu, connect):
    client = connect()
    emu.inject(Fault(malformed_frame=True))
    client.create(input="x")
    with pytest.raises(ValueError):
        json.loads(client.ws.recv())
    assert client.event()["type"] == "response.in_progress"
    client.until_terminal()
    emu.inject(Fault(binary_frame=True))
    client.create(input="x")
    assert isinstance(client.ws.recv(), bytes)
    assert client.until_terminal()[-1]["type"] == "response.completed"


def test_fault_in_request_metadata_wins_and_leaves_the_queue_alone(emu, connect):
    emu.inject(Fault(error_code="server_error"))
    client = connect()
    fault = json.dumps({"error_code": "rate_limit_exceeded"})
    error = client.run(input="x", metadata={"emulator_fault": fault})[-1]
    assert error["error"]["code"] == "rate_limit_exceeded"
    assert client.run(input="x")[-1]["error"]["code"] == "server_error"
    assert final(client.run(input="x"))["status"] == "completed"
    assert emu.stats()["faults_applied"] == 2


def test_metadata_fault_can_close_the_socket(emu, connect):
    client = connect()
    client.create(
        input="x", metadata={"emulator_fault": '{"close_after_events": 0, "close_code": 1013}'}
    )
    assert client.close_code() == 1013


def test_clear_faults(emu, connect):
    emu.inject(Fault(error_code="server_error"), times=3)
    emu.inject(Fault(refuse_status=500), on="connection")
    emu.clear_faults()
    assert final(connect().run(input="x"))["status"] == "completed"


def test_fault_validation():
    with pytest.raises(ValueError):
        Fault(refuse_status=42)
    with pytest.raises(ValueError):
        Fault.from_dict({"nope": 1})
    with pytest.raises(ValueError):
        Fault(close_after_events=-1)


def test_close_all_connections(emu, connect):
    first, second = connect(), connect()
    wait_for(lambda: emu.stats()["connections_open"] == 2, what="two connections")
    emu.close_all_connections()
    assert first.close_code() == 1001 and second.close_code() == 1001
    third = connect()
    wait_for(lambda: emu.stats()["connections_open"] == 1, what="one connection")
    emu.close_all_connections(code=None)
    assert third.close_code() is None


@pytest.fixture(scope="module")
def process():
    with EmulatorProcess(api_key="sk-proc", deltas=3) as emulator:
        yield emulator


def test_emulator_process_admin_api(process):
    process.reset_stats()
    process.clear_faults()
    assert process.running and process.port > 0
    assert process.websocket_url == f"ws://127.0.0.1:{process.port}/v1/responses"
    client = Client(process.websocket_url, key="sk-proc")
    assert sum(e["type"] == "response.output_text.delta" for e in client.run(input="x")) == 3
    process.inject(Fault(error_code="server_is_overloaded"))
    assert client.run(input="x")[-1]["status"] == 503
    process.inject(Fault(refuse_status=403), on="connection")
    with pytest.raises(websocket.WebSocketBadStatusException):
        Client(process.websocket_url, key="sk-proc")
    process.inject(Fault(close_after_events=1), times=5)
    process.clear_faults()
    assert final(client.run(input="x"))["status"] == "completed"
    stats = process.stats()
    assert stats["requests"] == 3 and stats["refused_upgrades"] == 1
    assert stats["connections_open"] == 1
    process.close_all_connections(1012)
    assert client.close_code() == 1012
    with pytest.raises(ValueError):
        process.inject(Fault(), on="sometimes")
