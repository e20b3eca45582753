"""What the official SDK hides, seen on a plain websocket-client socket and held against the
SDK's types: frame opcodes, one JSON object per frame, and the errors for frames and fields
the SDK would never send."""

from __future__ import annotations

import json

import pytest
import websocket

from .conftest import Client
from .openai_support import WS_EVENTS, strict

pytestmark = pytest.mark.timeout(30)

TOOL = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}


def frame(client: Client) -> dict:
    """One frame: it must be a text frame holding exactly one event the SDK types know."""
    opcode, data = client.ws.recv_data()
    assert opcode == websocket.ABNF.OPCODE_TEXT, f"opcode {opcode}"
    text = data.decode()
    assert not text.startswith(("event:", "data:")) and text.strip() != "[DONE]"
    event = json.loads(text)  # raises on two objects or trailing bytes
    assert isinstance(event, dict)
    strict(WS_EVENTS[event["type"]], event)
    return event


def until_terminal(client: Client) -> list[dict]:
    events = [frame(client)]
    while events[-1]["type"] not in ("response.completed", "response.failed", "error"):
        events.append(frame(client))
    return events


def test_every_frame_is_one_typed_json_text_frame(emu, connect):
    client = connect()
    client.create(input="hi", metadata={"emulator_deltas": "3"})
    text = until_terminal(client)
    client.create(input="please lookup it", tools=[TOOL], stream_id="tools")
    call = until_terminal(client)
    client.create(input="x", metadata={"emulator_outcome": "failed"})
    failed = until_terminal(client)
    client.create(input="x", previous_response_id="resp_unknown")
    (error,) = until_terminal(client)
    assert text[-1]["type"] == "response.completed"
    assert call[-1]["response"]["output"][0]["type"] == "function_call"
    assert all(event["stream_id"] == "tools" for event in call)
    assert failed[-1]["type"] == "response.failed"
    assert error["status"] == 400 and error["error"]["code"] == "previous_response_not_found"
    assert emu.stats()["events_sent"] == len(text) + len(call) + len(failed) + 1


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        (b"\x00\x01binary", "invalid_frame", None),
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_type", "type"),
        ({"type": "response.cancel"}, "invalid_value", "type"),
        ({"type": "response.create", "model": "m", "input": "x", "stream": True}, None, "stream"),
        (
            {"type": "response.create", "model": "m", "input": "x", "background": True},
            None,
            "background",
        ),
        (
            {"type": "response.create", "model": "m", "input": "x", "instructions": None},
            None,
            "instructions",
        ),
    ],
)
def test_frames_and_fields_the_sdk_never_sends_get_typed_errors(connect, payload, code, param):
    client = connect()
    if isinstance(payload, bytes):
        client.ws.send_binary(payload)
    else:
        client.send(payload)
    error = frame(client)
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    if code is not None:
        assert error["error"]["code"] == code
    assert "stream_id" not in error
    client.create(input="still usable")
    assert until_terminal(client)[-1]["type"] == "response.completed"
