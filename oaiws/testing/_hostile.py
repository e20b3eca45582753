"""Hostile frames: named, precise ways for the emulator to break the protocol on purpose.

A preset is what the server sends after a response's real ``response.created``, so a client
can be tested to refuse (or tolerate) it without crashing, hanging or allocating what a frame
claims. Every byte a preset puts on the wire is defined here; the engine only asks
:func:`hostile_preset` what to send for a name and a response id. See docs/emulator.md,
"Hostile frames".

Nothing here imports aiohttp: :mod:`oaiws.testing` must import without the ``emulator`` extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Optional, Union

OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1

# Far beyond anything a client could buffer, but below 2**63: RFC 6455 requires the most
# significant bit of a 64-bit length to be 0, and this frame must be well-formed but huge.
HUGE = 2**62
FLOOD_FRAGMENT_BYTES = 64 * 1024
FLOOD_LIMIT_BYTES = 512 * 1024 * 1024
NESTING_DEPTH = 100_000
# Deeper than a client should copy into a transcript (oaiws keeps 128 levels), well within
# what any JSON decoder reads.
OUTPUT_ITEM_DEPTH = 200


@dataclass(frozen=True)
class JsonEvent:
    """A JSON object frame. The emitter numbers it like every event (``sequence_number``, and
    ``stream_id`` on a lane, appended after the fields) and changes nothing else: the hostile
    content is never repaired."""

    fields: Mapping[str, Any]
    # Values already rendered as JSON text, placed after ``fields``: deep_nesting's array is
    # deeper than json.dumps can recurse.
    raw_fields: tuple[tuple[str, str], ...] = ()

    @property
    def sse_event(self) -> str:
        kind = self.fields.get("type")
        return kind if isinstance(kind, str) else "message"

    def render(self, sequence_number: int, stream_id: Optional[str]) -> bytes:
        # Member by member with json.dumps's default separators, so that without raw fields
        # the text equals json.dumps of the numbered dict, byte for byte.
        members = [(key, json.dumps(value)) for key, value in self.fields.items()]
        members.extend(self.raw_fields)
        members.append(("sequence_number", json.dumps(sequence_number)))
        if stream_id is not None:
            members.append(("stream_id", json.dumps(stream_id)))
        body = ", ".join(f"{json.dumps(key)}: {value}" for key, value in members)
        return ("{" + body + "}").encode()


@dataclass(frozen=True)
class TextFrame:
    """A text frame (an SSE event over HTTP) whose payload is sent exactly as given: not
    JSON, not an object, or not UTF-8. Only a JSON object with a string ``type`` names its SSE
    event; anything else is ``event: message``."""

    payload: bytes
    sse_event: str = "message"


@dataclass(frozen=True)
class RawFrame:
    """One RFC 6455 frame from the server (so unmasked), for what aiohttp refuses to send."""

    fin: bool
    opcode: int
    payload: bytes
    # The length the header announces; None: the payload's own.
    announced_length: Optional[int] = None

    def header(self) -> bytes:
        length = len(self.payload) if self.announced_length is None else self.announced_length
        first = (0x80 if self.fin else 0x00) | self.opcode
        if length < 126:
            return bytes((first, length))
        if length < 1 << 16:
            return bytes((first, 126)) + length.to_bytes(2, "big")
        return bytes((first, 127)) + length.to_bytes(8, "big")

    @property
    def leaves_message_open(self) -> bool:
        """Whether the stream is left inside a message (FIN=0) or inside a frame (the header
        announced more than follows), where no further data frame can be read."""
        return not self.fin or (
            self.announced_length is not None and self.announced_length != len(self.payload)
        )


@dataclass(frozen=True)
class FragmentFlood:
    """A text message that never ends: a first fragment (FIN=0), then continuations (FIN=0),
    until ``limit`` payload bytes were sent or the client closed. Never a final frame."""

    fragment: bytes
    limit: int

    def frames(self) -> Iterator[RawFrame]:
        # One fragment object for every frame: the flood allocates nothing per frame.
        yield RawFrame(False, OPCODE_TEXT, self.fragment)
        for _ in range(1, self.limit // len(self.fragment)):
            yield RawFrame(False, OPCODE_CONTINUATION, self.fragment)


# What a preset lists; the emitter turns a JsonEvent into a TextFrame by numbering it.
PresetFrame = Union[JsonEvent, TextFrame, RawFrame, FragmentFlood]
# What a sink is handed.
WireFrame = Union[TextFrame, RawFrame, FragmentFlood]


@dataclass(frozen=True)
class HostilePreset:
    """What a preset sends after ``response.created``, and how the response ends."""

    description: str
    # The frames, given the response id (item ids are derived from it, so they are predictable).
    frames: Callable[[str], tuple[PresetFrame, ...]]
    # None: the normal terminal (``response.completed``, output []); else what replaces it,
    # built from that finished response.
    terminal: Optional[Callable[[dict[str, Any]], JsonEvent]] = None
    # The last frame leaves the stream where nothing can follow: no terminal is sent.
    endless: bool = False
    # WebSocket framing is the point: over HTTP the request is refused with a 400.
    websocket_only: bool = False


def _ids(response_id: str) -> tuple[str, str]:
    """A message id and a function-call id shaped like real ones, derived from the response."""
    suffix = response_id.partition("_")[2]
    return f"msg_{suffix}", f"fc_{suffix}"


def _empty_part() -> dict[str, Any]:
    return {"type": "output_text", "text": ""}


def _none(response_id: str) -> tuple[PresetFrame, ...]:
    return ()


def _not_json(response_id: str) -> tuple[PresetFrame, ...]:
    return (TextFrame(b'{"type": "response.output_text.delta", "delta": '),)


def _invalid_utf8(response_id: str) -> tuple[PresetFrame, ...]:
    return (TextFrame(b'{"type":"response.output_text.delta","delta":"\xff\xfe"}'),)


def _not_an_object(response_id: str) -> tuple[PresetFrame, ...]:
    return (TextFrame(b"[1, 2, 3]"),)


def _no_type(response_id: str) -> tuple[PresetFrame, ...]:
    return (JsonEvent({}),)  # numbering makes it {"sequence_number": 1}


def _type_not_a_string(response_id: str) -> tuple[PresetFrame, ...]:
    return (JsonEvent({"type": 42}),)


def _deep_nesting(response_id: str) -> tuple[PresetFrame, ...]:
    nested = "[" * NESTING_DEPTH + "]" * NESTING_DEPTH
    return (
        JsonEvent(
            {"type": "response.output_text.delta", "delta": "x"}, raw_fields=(("extra", nested),)
        ),
    )


def _negative_index(response_id: str) -> tuple[PresetFrame, ...]:
    message_id, _ = _ids(response_id)
    return (
        JsonEvent(
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": 0,
                "content_index": -5,
                "part": _empty_part(),
            }
        ),
        JsonEvent(
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": -1,
                "content_index": -1,
                "delta": "x",
                "logprobs": [],
            }
        ),
    )


def _huge_index(response_id: str) -> tuple[PresetFrame, ...]:
    message_id, call_id = _ids(response_id)
    return (
        JsonEvent(
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": HUGE,
                "content_index": HUGE,
                "part": _empty_part(),
            }
        ),
        JsonEvent(
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": HUGE,
                "content_index": HUGE,
                "delta": "x",
                "logprobs": [],
            }
        ),
        JsonEvent(
            {
                "type": "response.function_call_arguments.delta",
                "item_id": call_id,
                "output_index": HUGE,
                "delta": "{}",
            }
        ),
    )


def _index_not_an_integer(response_id: str) -> tuple[PresetFrame, ...]:
    # Indices of the wrong JSON type: a string, a boolean, a fraction.
    message_id, _ = _ids(response_id)
    return (
        JsonEvent({"type": "response.output_item.added", "output_index": "0", "item": {}}),
        JsonEvent(
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": 0,
                "content_index": True,
                "part": _empty_part(),
            }
        ),
        JsonEvent(
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": 1.5,
                "content_index": 0,
                "delta": "x",
                "logprobs": [],
            }
        ),
    )


def _wrong_field_types(response_id: str) -> tuple[PresetFrame, ...]:
    # Each event has its usual fields and valid indices; only the named fields have the
    # wrong JSON type.
    message_id, _ = _ids(response_id)
    return (
        JsonEvent({"type": "response.in_progress", "response": "oops"}),
        JsonEvent({"type": "response.output_item.added", "output_index": 0, "item": "oops"}),
        JsonEvent(
            {
                "type": "response.content_part.added",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "part": [],
            }
        ),
        JsonEvent(
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": 5,
                "logprobs": [],
            }
        ),
        JsonEvent(
            {
                "type": "response.output_text.delta",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "delta": "kept",
                "logprobs": [],
            }
        ),
        JsonEvent(
            {
                "type": "response.output_text.done",
                "item_id": message_id,
                "output_index": 0,
                "content_index": 0,
                "text": None,
                "logprobs": [],
            }
        ),
    )


def _oversized_frame(response_id: str) -> tuple[PresetFrame, ...]:
    return (RawFrame(True, OPCODE_TEXT, b"a" * 1024, announced_length=HUGE),)


def _fragment_flood(response_id: str) -> tuple[PresetFrame, ...]:
    return (FragmentFlood(b" " * FLOOD_FRAGMENT_BYTES, FLOOD_LIMIT_BYTES),)


def _terminal_without_response(done: dict[str, Any]) -> JsonEvent:
    return JsonEvent({"type": "response.completed"})


def _output_not_a_list(done: dict[str, Any]) -> JsonEvent:
    return JsonEvent({"type": "response.completed", "response": {**done, "output": 5}})


def _status_not_a_string(done: dict[str, Any]) -> JsonEvent:
    return JsonEvent({"type": "response.done", "response": {**done, "status": ["completed"]}})


def _deep_output_item(done: dict[str, Any]) -> JsonEvent:
    message_id, _ = _ids(done["id"])
    nested: list[Any] = []
    for _ in range(OUTPUT_ITEM_DEPTH - 1):
        nested = [nested]
    item = {
        "type": "message",
        "id": message_id,
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "deep", "annotations": [], "extra": nested}],
    }
    return JsonEvent({"type": "response.completed", "response": {**done, "output": [item]}})


def _error_not_an_object(done: dict[str, Any]) -> JsonEvent:
    return JsonEvent({"type": "error", "error": 42, "status": "x"})


_PRESETS: dict[str, HostilePreset] = {
    "not_json": HostilePreset(
        'a text frame of truncated JSON: {"type": "response.output_text.delta", "delta": ',
        _not_json,
    ),
    "invalid_utf8": HostilePreset(
        'a text frame whose bytes are not UTF-8: {"type":"response.output_text.delta",'
        '"delta":"\\xff\\xfe"}',
        _invalid_utf8,
    ),
    "not_an_object": HostilePreset("a text frame of a JSON array: [1, 2, 3]", _not_an_object),
    "no_type": HostilePreset('an object without a type: {"sequence_number": 1}', _no_type),
    "type_not_a_string": HostilePreset(
        'an event whose type is a number: {"type": 42, ...}', _type_not_a_string
    ),
    "deep_nesting": HostilePreset(
        "a response.output_text.delta with a field nested 100,000 arrays deep", _deep_nesting
    ),
    "negative_index": HostilePreset(
        "response.content_part.added at content_index -5, then response.output_text.delta at"
        " output_index and content_index -1",
        _negative_index,
    ),
    "huge_index": HostilePreset(
        "response.content_part.added, response.output_text.delta and"
        " response.function_call_arguments.delta at index 2**62",
        _huge_index,
    ),
    "index_not_an_integer": HostilePreset(
        'indices of the wrong JSON type: output_index "0", content_index true, output_index 1.5',
        _index_not_an_integer,
    ),
    "wrong_field_types": HostilePreset(
        "well-known events with valid indices but fields of the wrong JSON type (response"
        ' "oops", item "oops", part [], delta 5, text null), and one good delta "kept"',
        _wrong_field_types,
    ),
    "oversized_frame": HostilePreset(
        "a text frame header announcing 2**62 payload bytes, 1 KiB of them, then nothing"
        " (WebSocket only)",
        _oversized_frame,
        endless=True,
        websocket_only=True,
    ),
    "fragment_flood": HostilePreset(
        "a text message in 64 KiB fragments that never ends, up to 512 MiB, then nothing"
        " (WebSocket only)",
        _fragment_flood,
        endless=True,
        websocket_only=True,
    ),
    "terminal_without_response": HostilePreset(
        "instead of the terminal event: response.completed without a response",
        _none,
        terminal=_terminal_without_response,
    ),
    "output_not_a_list": HostilePreset(
        "instead of the terminal event: response.completed whose response.output is 5",
        _none,
        terminal=_output_not_a_list,
    ),
    "status_not_a_string": HostilePreset(
        'instead of the terminal event: response.done whose response.status is ["completed"]',
        _none,
        terminal=_status_not_a_string,
    ),
    "deep_output_item": HostilePreset(
        "instead of the terminal event: response.completed whose output is one message with"
        f" an array nested {OUTPUT_ITEM_DEPTH} levels deep in its text part",
        _none,
        terminal=_deep_output_item,
    ),
    "error_not_an_object": HostilePreset(
        'instead of the terminal event: {"type": "error", "error": 42, "status": "x"}',
        _none,
        terminal=_error_not_an_object,
    ),
}

HOSTILE_FRAMES: Mapping[str, str] = MappingProxyType(
    {name: preset.description for name, preset in _PRESETS.items()}
)


def hostile_preset(name: str) -> HostilePreset:
    """The preset called ``name`` (a valid name: ``Fault`` checks it when it is built)."""
    return _PRESETS[name]
