"""Hostile frames: each preset puts exactly its documented bytes on the wire, after the real
``response.created``, and the emulator survives clients that refuse them.

These tests read the wire with a raw client (websocket-client frames, a raw socket where the
framing itself is the point, requests for SSE): never with oaiws.Client, whose handling of
these frames is what the presets exist to test.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
import requests
import websocket
from waiting import wait_for

import oaiws.testing
from oaiws.errors import ConfigurationError
from oaiws.testing import HOSTILE_FRAMES, Fault

from .conftest import KEY, TEXT_TURN

AUTH = {"Authorization": f"Bearer {KEY}"}

# Presets followed by the normal terminal (response.completed with an empty output).
NORMAL_TERMINAL = [
    "not_json",
    "invalid_utf8",
    "not_an_object",
    "no_type",
    "type_not_a_string",
    "deep_nesting",
    "negative_index",
    "huge_index",
    "index_not_an_integer",
    "wrong_field_types",
]
# Presets that replace the terminal event.
REPLACED_TERMINAL = [
    "terminal_without_response",
    "output_not_a_list",
    "status_not_a_string",
    "deep_output_item",
    "error_not_an_object",
]


def _deep_output(response_id: str) -> list:
    nested: list = []
    for _ in range(199):
        nested = [nested]
    part = {"type": "output_text", "text": "deep", "annotations": [], "extra": nested}
    message_id = "msg_" + response_id.partition("_")[2]
    return [
        {
            "type": "message",
            "id": message_id,
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
    ]


# Replaced terminals that are the normal finished response with one field changed:
# (event type, field, the value given the response id).
FIELD_REPLACED = {
    "output_not_a_list": ("response.completed", "output", lambda _: 5),
    "status_not_a_string": ("response.done", "status", lambda _: ["completed"]),
    "deep_output_item": ("response.completed", "output", _deep_output),
}
WEBSOCKET_ONLY = ["oversized_frame", "fragment_flood"]
# Presets whose frames are not JSON objects, so they carry no sequence_number.
UNNUMBERED = {"not_json", "invalid_utf8", "not_an_object"}

HUGE = 2**62
FRAGMENT = b" " * 65536
FLOOD_FRAMES = 512 * 1024 * 1024 // len(FRAGMENT)


def _expected(name: str, response_id: str) -> list[tuple[str, bytes]]:
    """(SSE event name, exact payload) of every frame ``name`` sends after
    ``response.created``, a replacing terminal included (but not output_not_a_list's, whose
    response is checked field by field)."""
    suffix = response_id.removeprefix("resp_")
    message_id, call_id = f"msg_{suffix}", f"fc_{suffix}"
    part = {"type": "output_text", "text": ""}
    text = {
        "not_json": b'{"type": "response.output_text.delta", "delta": ',
        "invalid_utf8": b'{"type":"response.output_text.delta","delta":"\xff\xfe"}',
        "not_an_object": b"[1, 2, 3]",
    }
    if name in text:
        return [("message", text[name])]
    if name == "deep_nesting":
        nested = b"[" * 100_000 + b"]" * 100_000
        payload = (
            b'{"type": "response.output_text.delta", "delta": "x", "extra": '
            + nested
            + b', "sequence_number": 1}'
        )
        return [("response.output_text.delta", payload)]
    events: list[dict] = {
        "no_type": [{}],
        "type_not_a_string": [{"type": 42}],
        "negative_index": [
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": 0,
                "content_index": -5,
                "part": part,
            },
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": -1,
                "content_index": -1,
                "delta": "x",
                "logprobs": [],
            },
        ],
        "huge_index": [
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": HUGE,
                "content_index": HUGE,
                "part": part,
            },
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": HUGE,
                "content_index": HUGE,
                "delta": "x",
                "logprobs": [],
            },
            {
                "type": "response.function_call_arguments.delta",
                "item_id": call_id,
                "output_index": HUGE,
                "delta": "{}",
            },
        ],
        "index_not_an_integer": [
            {"type": "response.output_item.added", "output_index": "0", "item": {}},
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": 0,
                "content_index": True,
                "part": part,
            },
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": 1.5,
                "content_index": 0,
                "delta": "x",
                "logprobs": [],
            },
        ],
        "wrong_field_types": [
            {"type": "response.in_progress", "response": "oops"},
            {"type": "response.output_item.added", "output_index": 0, "item": "oops"},
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "part": [],
            },
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": 5,
                "logprobs": [],
            },
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": "kept",
                "logprobs": [],
            },
            {
                "type": "response.output_text.done",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "text": None,
                "logprobs": [],
            },
        ],
        "terminal_without_response": [{"type": "response.completed"}],
        "output_not_a_list": [],
        "status_not_a_string": [],
        "deep_output_item": [],
        "error_not_an_object": [{"type": "error", "error": 42, "status": "x"}],
    }[name]
    return [
        (
            event["type"] if isinstance(event.get("type"), str) else "message",
            json.dumps({**event, "sequence_number": number}).encode(),
        )
        for number, event in enumerate(events, start=1)
    ]


def _terminal_sequence(name: str) -> int:
    """The normal terminal's sequence_number: after created (0) and the numbered frames."""
    return 1 if name in UNNUMBERED else 1 + len(_expected(name, "resp_x"))


def _assert_finished_like(done: dict, started: dict) -> None:
    """``done`` is ``started`` (the response of response.created), completed, with no output."""
    assert done["id"] == started["id"] and done["status"] == "completed"
    assert done["output"] == [] and done["usage"]["output_tokens"] == 0
    same = set(started) - {"status", "output", "usage", "completed_at"}
    assert {k: done[k] for k in same} == {k: started[k] for k in same}


# -- raw clients ---------------------------------------------------------------------------


class Raw:
    """A websocket-client connection used frame by frame (or byte by byte) with no
    reassembly and no UTF-8 validation: it sees what the emulator wrote."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: Bearer {KEY}"], skip_utf8_validation=True, timeout=5
        )

    def create(self, **fields) -> dict:
        """Send a create; return its response.created, asserted to be the first frame."""
        fields.setdefault("model", "gpt-test")
        fields.setdefault("input", "hello")
        self.ws.send(json.dumps({"type": "response.create", **fields}))
        created = json.loads(self.text())
        assert created["type"] == "response.created" and created["sequence_number"] == 0
        return created

    def text(self) -> bytes:
        """The next data frame, asserted to be one whole TEXT frame; its raw payload."""
        opcode, frame = self.ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_TEXT and frame.fin
        return frame.data

    def turn(self, **fields) -> list[str]:
        """A normal request's event types, read to its terminal."""
        types = [self.create(**fields)["type"]]
        while types[-1] not in ("response.completed", "error"):
            types.append(json.loads(self.text())["type"])
        return types

    def exactly(self, count: int) -> bytes:
        """``count`` raw bytes from the socket (bounded by its 5 s timeout)."""
        data = bytearray()
        while len(data) < count:
            chunk = self.ws.sock.recv(min(count - len(data), 1 << 20))
            assert chunk, f"the connection closed after {len(data)} of {count} bytes"
            data += chunk
        return bytes(data)

    def rest_after_close(self) -> bytes:
        """Send a close frame, then every raw byte the server still sends until it closes."""
        self.ws.send_close()
        data = bytearray()
        while chunk := self.ws.sock.recv(65536):
            data += chunk
        return bytes(data)

    def drop(self) -> None:
        """Close TCP at once, as a client refusing a frame might."""
        self.ws.shutdown()


@pytest.fixture
def raw(emu):
    clients: list[Raw] = []

    def factory() -> Raw:
        client = Raw(emu.websocket_url)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.ws.shutdown()


def _is_close_frame(data: bytes) -> bool:
    """A whole, unmasked close frame and nothing else."""
    return len(data) >= 2 and data[0] == 0x88 and len(data) == 2 + data[1]


def _no_warnings(caplog) -> None:
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


# -- the catalogue and the Fault field -----------------------------------------------------


def test_the_catalogue_is_public_and_names_every_preset():
    assert "HOSTILE_FRAMES" in oaiws.testing.__all__
    assert list(HOSTILE_FRAMES) == [*NORMAL_TERMINAL, *WEBSOCKET_ONLY, *REPLACED_TERMINAL]
    for description in HOSTILE_FRAMES.values():
        assert description and "\n" not in description
    with pytest.raises(TypeError):
        HOSTILE_FRAMES["mine"] = "x"  # type: ignore[index]


def test_an_unknown_preset_is_refused_naming_the_valid_ones():
    with pytest.raises(ConfigurationError) as info:
        Fault(hostile_frame="nope")
    message = str(info.value)
    assert "'nope'" in message and all(name in message for name in HOSTILE_FRAMES)
    with pytest.raises(ConfigurationError):
        Fault(hostile_frame=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Fault.from_dict({"hostile_frame": "nope"})
    for name in HOSTILE_FRAMES:
        fault = Fault(hostile_frame=name)
        assert fault.acts_on_request
        assert Fault.from_dict(fault.to_dict()) == fault
        assert Fault.from_dict(json.dumps(fault.to_dict())) == fault
    assert Fault().to_dict()["hostile_frame"] is None and not Fault().acts_on_request


# -- WebSocket -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NORMAL_TERMINAL)
def test_a_preset_then_the_normal_terminal_with_no_output(emu, raw, name):
    client = raw()
    emu.inject(Fault(hostile_frame=name))
    created = client.create()
    expected = [payload for _, payload in _expected(name, created["response"]["id"])]
    assert [client.text() for _ in expected] == expected
    terminal = json.loads(client.text())
    assert terminal["type"] == "response.completed"
    assert terminal["sequence_number"] == _terminal_sequence(name)
    _assert_finished_like(terminal["response"], created["response"])
    # The very next frame belongs to the next request: no deltas, nothing after the terminal.
    assert client.turn() == TEXT_TURN


@pytest.mark.parametrize("name", ["terminal_without_response", "error_not_an_object"])
def test_a_replaced_terminal_is_exactly_the_hostile_event(emu, raw, name):
    client = raw()
    emu.inject(Fault(hostile_frame=name))
    created = client.create()
    [(_, payload)] = _expected(name, created["response"]["id"])
    assert client.text() == payload
    assert client.turn() == TEXT_TURN


@pytest.mark.parametrize("name", sorted(FIELD_REPLACED))
def test_a_field_replaced_terminal_is_the_normal_one_but_that_field(emu, raw, name):
    kind, field, value = FIELD_REPLACED[name]
    client = raw()
    emu.inject(Fault(hostile_frame=name))
    created = client.create()
    terminal = json.loads(client.text())
    assert list(terminal) == ["type", "response", "sequence_number"]
    assert terminal["type"] == kind and terminal["sequence_number"] == 1
    assert terminal["response"][field] == value(created["response"]["id"])
    normal = {**terminal["response"], "output": [], "status": "completed"}
    _assert_finished_like(normal, created["response"])
    assert client.turn() == TEXT_TURN


def test_invalid_utf8_is_a_text_frame_of_those_bytes(emu, raw):
    client = raw()
    emu.inject(Fault(hostile_frame="invalid_utf8"))
    client.create()
    opcode, frame = client.ws.recv_data_frame(True)
    assert (opcode, frame.fin) == (websocket.ABNF.OPCODE_TEXT, 1)
    assert frame.data == b'{"type":"response.output_text.delta","delta":"\xff\xfe"}'
    with pytest.raises(UnicodeDecodeError):
        frame.data.decode()


def test_a_tolerated_response_can_be_continued(emu, raw):
    client = raw()
    emu.inject(Fault(hostile_frame="huge_index"))
    created = client.create()
    for _ in range(4):  # three hostile frames and the terminal
        client.text()
    assert client.turn(previous_response_id=created["response"]["id"]) == TEXT_TURN
    assert emu.stats()["cache_hits"] == 1


def test_frames_on_a_lane_are_numbered_and_carry_its_stream_id(emu, raw):
    client = raw()
    emu.inject(Fault(hostile_frame="no_type"))
    created = client.create(stream_id="lane-a")
    assert created["stream_id"] == "lane-a"
    assert client.text() == b'{"sequence_number": 1, "stream_id": "lane-a"}'
    terminal = json.loads(client.text())
    assert (terminal["sequence_number"], terminal["stream_id"]) == (2, "lane-a")


def test_oversized_frame_announces_2_62_bytes_sends_1_kib_then_nothing(emu, raw, connect):
    client = raw()
    emu.inject(Fault(hostile_frame="oversized_frame"))
    client.create()
    assert client.exactly(10) == b"\x81\x7f" + HUGE.to_bytes(8, "big")
    assert client.exactly(1024) == b"a" * 1024
    # No terminal, no event: the next bytes after our close frame are the server's reply.
    assert _is_close_frame(client.rest_after_close())
    wait_for(lambda: emu.stats()["connections_open"] == 0, what="the connection to end")
    assert emu.stats()["hostile_frames_sent"] == 1
    assert connect().run(input="x")[-1]["type"] == "response.completed"


def test_fragment_flood_stops_promptly_when_the_client_closes(emu, raw, connect, caplog):
    client = raw()
    emu.inject(Fault(hostile_frame="fragment_flood"))
    client.create()
    length = len(FRAGMENT).to_bytes(8, "big")
    assert client.exactly(10) == b"\x01\x7f" + length  # TEXT, FIN=0
    assert client.exactly(len(FRAGMENT)) == FRAGMENT
    assert client.exactly(10) == b"\x00\x7f" + length  # CONTINUATION, FIN=0
    client.drop()
    # The session ends only once the flood's task has finished.
    wait_for(lambda: emu.stats()["connections_open"] == 0, timeout=3, what="the flood to stop")
    assert emu.stats()["hostile_frames_sent"] == 1
    assert connect().run(input="x")[-1]["type"] == "response.completed"
    _no_warnings(caplog)


def test_fragment_flood_sends_512_mib_and_never_a_final_frame(emu, raw):
    client = raw()
    emu.inject(Fault(hostile_frame="fragment_flood"))
    client.create()
    length = len(FRAGMENT).to_bytes(8, "big")
    for index in range(FLOOD_FRAMES):
        opcode = b"\x01" if index == 0 else b"\x00"
        assert client.exactly(10) == opcode + b"\x7f" + length
        assert client.exactly(len(FRAGMENT)) == FRAGMENT
    # Then nothing (no final fragment, no event) until the close handshake.
    assert _is_close_frame(client.rest_after_close())


def test_a_flood_to_a_client_that_stopped_reading_never_holds_stop_up(emu, raw, caplog):
    client = raw()
    emu.inject(Fault(hostile_frame="fragment_flood"))
    client.create()
    client.exactly(10)  # the flood has started; this client reads no further
    start = time.monotonic()
    emu.stop()
    assert time.monotonic() - start < 3
    assert not emu.running
    _no_warnings(caplog)


def test_clients_that_refuse_mid_preset_never_hurt_the_emulator(emu, raw, connect, caplog):
    for name in HOSTILE_FRAMES:
        client = raw()
        emu.inject(Fault(hostile_frame=name))
        client.create()
        client.drop()
        wait_for(lambda: emu.stats()["connections_open"] == 0, what=f"{name}'s connection to end")
    assert connect().run(input="x")[-1]["type"] == "response.completed"
    _no_warnings(caplog)


def test_hostile_frames_sent_counts_each_frame(emu, raw):
    client = raw()
    for name, frames in [("wrong_field_types", 6), ("terminal_without_response", 1)]:
        emu.reset_stats()
        emu.inject(Fault(hostile_frame=name))
        client.create()
        for _ in range(frames):
            client.text()
        if name == "wrong_field_types":
            client.text()  # the normal terminal
        stats = emu.stats()
        assert stats["hostile_frames_sent"] == frames
        assert stats["events_sent"] == 1 + frames + (name == "wrong_field_types")
        assert stats["faults_applied"] == 1


def test_every_way_to_give_a_fault_carries_the_preset(emu, raw):
    client = raw()
    fault = json.dumps({"hostile_frame": "no_type"})
    client.create(metadata={"emulator_fault": fault})
    assert client.text() == b'{"sequence_number": 1}'
    client.text()

    emu.inject(Fault(hostile_frame="not_an_object"), on="connection")
    fresh = raw()
    fresh.create()
    assert fresh.text() == b"[1, 2, 3]"
    fresh.text()
    assert fresh.turn() == TEXT_TURN  # only the first request on that connection

    origin = emu.base_url.removesuffix("/v1")
    admin = requests.post(
        origin + "/_emulator/faults",
        json={"fault": {"hostile_frame": "type_not_a_string"}},
        headers=AUTH,
        timeout=5,
    )
    assert admin.status_code == 200
    client.create()
    assert client.text() == b'{"type": 42, "sequence_number": 1}'
    client.text()
    refused = requests.post(
        origin + "/_emulator/faults",
        json={"fault": {"hostile_frame": "nope"}},
        headers=AUTH,
        timeout=5,
    )
    assert refused.status_code == 400
    assert "deep_nesting" in refused.json()["error"]["message"]


# -- HTTP ----------------------------------------------------------------------------------


def _sse_blocks(content: bytes) -> list[tuple[str, bytes]]:
    blocks = []
    for block in content.split(b"\n\n"):
        if not block:
            continue
        event, data = block.split(b"\n", 1)
        assert event.startswith(b"event: ") and data.startswith(b"data: ")
        blocks.append((event[len(b"event: ") :].decode(), data[len(b"data: ") :]))
    return blocks


def _post(emu, *, stream: bool) -> requests.Response:
    body = {"model": "m", "input": "hello", "stream": stream}
    return requests.post(emu.base_url + "/responses", json=body, headers=AUTH, timeout=5)


@pytest.mark.parametrize("name", NORMAL_TERMINAL + REPLACED_TERMINAL)
def test_sse_sends_the_same_texts_as_events(emu, name):
    emu.inject(Fault(hostile_frame=name))
    reply = _post(emu, stream=True)
    assert reply.status_code == 200
    blocks = _sse_blocks(reply.content)
    assert blocks[0][0] == "response.created"
    created = json.loads(blocks[0][1])
    expected = _expected(name, created["response"]["id"])
    assert blocks[1 : 1 + len(expected)] == expected
    rest = blocks[1 + len(expected) :]
    if name in NORMAL_TERMINAL:
        [(event, data)] = rest
        terminal = json.loads(data)
        assert event == terminal["type"] == "response.completed"
        assert terminal["sequence_number"] == _terminal_sequence(name)
        _assert_finished_like(terminal["response"], created["response"])
    elif name in FIELD_REPLACED:
        kind, field, value = FIELD_REPLACED[name]
        [(event, data)] = rest
        answer = json.loads(data)["response"][field]
        assert event == kind and answer == value(created["response"]["id"])
    else:
        assert rest == []


@pytest.mark.parametrize("name", NORMAL_TERMINAL + REPLACED_TERMINAL)
def test_a_non_streaming_post_answers_the_first_hostile_text(emu, name):
    emu.inject(Fault(hostile_frame=name))
    reply = _post(emu, stream=False)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    if name in FIELD_REPLACED:
        _, field, value = FIELD_REPLACED[name]
        response = json.loads(reply.content)["response"]
        assert response[field] == value(response["id"])
        return
    # Item ids derive from the response id, which this answer does not otherwise show.
    item_id = json.loads(reply.content).get("item_id", "") if "index" in name else ""
    response_id = "resp_" + item_id.partition("_")[2]
    assert reply.content == _expected(name, response_id)[0][1]
    assert emu.stats()["hostile_frames_sent"] == 1


@pytest.mark.parametrize("name", WEBSOCKET_ONLY)
def test_websocket_only_presets_are_a_400_over_http(emu, name):
    for stream in (True, False):
        emu.inject(Fault(hostile_frame=name))
        reply = _post(emu, stream=stream)
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert name in error["message"] and "only over WebSocket" in error["message"]
    assert emu.stats()["hostile_frames_sent"] == 0
    assert _post(emu, stream=False).json()["status"] == "completed"
