"""Failures on request, error shapes, refused fields, and a server nothing can crash."""

from __future__ import annotations

import json
import socket

import pytest
import requests
import websocket

from .conftest import KEY, final


def test_failed_outcome(connect):
    events = connect().run(input="x", metadata={"emulator_outcome": "failed"})
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    response = final(events)
    assert response["status"] == "failed" and response["error"]["code"] == "server_error"


def test_incomplete_outcome_and_max_output_tokens(connect):
    client = connect()
    events = client.run(input="x", metadata={"emulator_outcome": "incomplete"})
    assert events[-1]["type"] == "response.incomplete"
    assert final(events)["incomplete_details"] == {"reason": "max_output_tokens"}
    events = client.run(input="x", max_output_tokens=3)
    response = final(events)
    assert response["status"] == "incomplete" and response["usage"]["output_tokens"] == 3
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 3
    assert response["output"][0]["status"] == "incomplete"
    assert final(client.run(input="x", max_output_tokens=8))["status"] == "completed"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"stream": True}, "stream", "unsupported_parameter"),
        ({"background": False}, "background", "unsupported_parameter"),
        ({"stream_options": {}}, "stream_options", "unsupported_parameter"),
        ({"temperature": None}, "temperature", "invalid_type"),
        ({"model": None}, "model", "invalid_type"),
        ({"model": 5}, "model", "invalid_type"),
        ({"input": 5}, "input", "invalid_type"),
        ({"max_output_tokens": "many"}, "max_output_tokens", "invalid_value"),
        ({"metadata": {"emulator_outcome": "weird"}}, "metadata", "invalid_value"),
        ({"metadata": {"emulator_fault": "{not json"}}, "metadata", "invalid_value"),
    ],
)
def test_invalid_create_fields_get_a_nested_400_error(connect, fields, param, code):
    client = connect()
    client.send({"type": "response.create", "model": "m", "input": "x", **fields})
    error = client.event()
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert (error["error"]["param"], error["error"]["code"]) == (param, code)
    assert final(client.run(input="still usable"))["status"] == "completed"


def test_missing_model(connect):
    client = connect()
    client.send({"type": "response.create", "input": "x"})
    error = client.event()["error"]
    assert (error["code"], error["param"]) == ("missing_required_parameter", "model")


@pytest.mark.parametrize(
    "frame",
    [
        "{not json",
        "[1, 2]",
        '{"type": "response.cancel"}',
        '"str"',
        '{"no": "type"}',
        '{"type": "response.steer", "input": "x"}',
    ],
)
def test_bad_client_frames_get_an_error_and_the_connection_stays_usable(emu, connect, frame):
    client = connect()
    client.send(frame)
    assert client.event()["type"] == "error"
    client.ws.send_binary(b"\x00\x01")
    assert client.event()["error"]["code"] == "invalid_frame"
    assert final(client.run(input="after"))["status"] == "completed"
    assert emu.stats()["errors_sent"] == 2


def test_auth_accepts_both_header_forms_and_refuses_others(emu, connect):
    assert (
        final(connect(header=[f"Authorization: Bearer {KEY}"]).run(input="x"))["status"]
        == "completed"
    )
    assert final(connect(header=[f"api-key: {KEY}"]).run(input="x"))["status"] == "completed"
    for header in ([], ["Authorization: Bearer sk-wrong"], ["api-key: nope"]):
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            connect(header=header)
        assert info.value.status_code == 401
        body = json.loads(info.value.resp_body)
        assert body["error"]["code"] == "invalid_api_key"
        assert (
            "sk-wrong" not in info.value.resp_body.decode()
            if isinstance(info.value.resp_body, bytes)
            else True
        )
    reply = requests.post(
        emu.base_url + "/responses",
        json={"model": "m", "input": "x"},
        headers={"Authorization": "Bearer sk-wrong"},
        timeout=5,
    )
    assert reply.status_code == 401 and "sk-wrong" not in reply.text
    assert emu.stats()["refused_upgrades"] == 3


def test_garbage_never_kills_the_server(emu, connect):
    for junk in (
        b"GET /v1/responses HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        b"\x16\x03\x01garbage",
        b"POST /v1/responses HTTP/1.1\r\nContent-Length: 5\r\n\r\n{{{{{",
    ):
        with socket.create_connection((emu.host, emu.port), timeout=5) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65536)
    client = connect()
    for payload in (
        {"type": "response.create", "model": "m", "input": [{"type": "message"}, 3]},
        {"type": "response.create", "model": "m", "input": [{"role": "user", "content": 7}]},
        {
            "type": "response.create",
            "model": "m",
            "tools": [{"type": "function"}],
            "input": "x",
            "tool_choice": "required",
        },
        {"type": "response.create", "model": "m", "metadata": {"emulator_deltas": "-1"}},
    ):
        client.send(payload)
        assert client.until_terminal()[-1]["type"] in {"error", "response.completed"}
    assert final(client.run(input="fine"))["status"] == "completed"
