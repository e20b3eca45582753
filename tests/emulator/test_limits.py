"""Maximum connection age, idle timeout and server pings."""

from __future__ import annotations

import time

import websocket
from waiting import wait_for

from .conftest import Client, final


def test_max_age_sends_limit_reached_then_closes_1001(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(max_connection_age=0.3)
    client = Client(emu.websocket_url)
    assert final(client.run(input="x"))["status"] == "completed"
    error = client.event()
    assert error["type"] == "error" and "stream_id" not in error
    assert error["error"]["code"] == "websocket_connection_limit_reached"
    assert client.close_code() == 1001
    assert emu.stats()["connections_closed_max_age"] == 1
    wait_for(lambda: emu.stats()["connections_open"] == 0, what="the connection to be gone")


def test_max_age_cuts_a_response_in_progress(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(max_connection_age=0.3)
    client = Client(emu.websocket_url)
    client.create(input="x", metadata={"emulator_deltas": "50", "emulator_delta_delay_ms": "20"})
    events = []
    while True:
        event = client.event()
        events.append(event)
        if event["type"] == "error":
            break
    assert events[-1]["error"]["code"] == "websocket_connection_limit_reached"
    assert "response.completed" not in [e["type"] for e in events]
    assert client.close_code() == 1001


def test_idle_connections_close_1001(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(idle_timeout=0.2)
    client = Client(emu.websocket_url)
    wait_for(lambda: emu.stats()["connections_closed_idle"] == 1, what="the idle close")
    assert client.close_code() == 1001


def test_pings_keep_an_idle_connection_open(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(idle_timeout=0.3)
    client = Client(emu.websocket_url)
    until = time.monotonic() + 0.9
    while time.monotonic() < until:
        client.ws.ping(b"keep")
        opcode, _ = client.ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG
        time.sleep(0.05)  # the gap between keep-alives is the behaviour under test
    assert emu.stats()["connections_closed_idle"] == 0
    assert emu.stats()["pings_received"] >= 10
    assert final(client.run(input="still open"))["status"] == "completed"


def test_server_pings_are_counted_with_their_pongs(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(ping_interval=0.1)
    client = Client(emu.websocket_url)
    opcode, _ = client.ws.recv_data(control_frame=True)  # websocket-client answers with a pong
    assert opcode == websocket.ABNF.OPCODE_PING
    wait_for(lambda: emu.stats()["pongs_received"] >= 1, what="the pong")
    assert emu.stats()["pings_sent"] >= 1
    assert final(client.run(input="x"))["status"] == "completed"


def test_no_pong_closes_1011(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(ping_interval=0.1, ping_timeout=0.2)
    client = Client(emu.websocket_url)
    wait_for(lambda: emu.stats()["connections_closed_ping_timeout"] == 1, what="the ping timeout")
    assert client.close_code() == 1011
