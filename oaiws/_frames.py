"""What the client accepts from the wire: frames no larger than ``max_message_size``, read
through one large read at a time, and text frames that decode to JSON.

A server is not trusted: a frame header may announce any length, a message may go on in
continuation frames forever, and a JSON text may nest until a recursive parser runs out of
stack. Each of these is refused before it can cost more than what actually arrived, and
surfaces as ``ProtocolError``: the size at the frame's header, the nesting by the decoder
itself (orjson stops at 1024 levels, the standard library near the interpreter's recursion
limit; both become a ``ValueError`` here). Checking the nesting of every event again would
cost more than decoding some of them; the one place that copies and re-encodes what the
server sent, a conversation's transcript, checks its items against ``MAX_NESTING``
(``nested_deeper_than``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Optional, Union

import websocket

from . import _json

__all__ = [
    "MAX_NESTING",
    "TOO_DEEP",
    "BoundedFrames",
    "LinearMessages",
    "MessageTooLargeError",
    "ReadAhead",
    "TooDeepError",
    "decode",
    "nested_deeper_than",
]

# The deepest nesting a conversation keeps in its transcript: real items nest about ten deep
# (a tool's JSON schema echoed back, a few more); 128 keeps every copy (copy.deepcopy recurses
# in Python) and every re-encoding (orjson encodes at most 254 levels) far from a limit.
MAX_NESTING = 128
TOO_DEEP = "nests deeper than the JSON decoder allows"

# websocket-client reads each frame with reads of exactly the size it needs next (the header,
# the extended length, the payload). One read of up to this much takes a whole TLS record at
# once (16 KiB at most) and the frame parser is served from it.
_READ_AHEAD = 65536

_CONTROL_OPCODES = 0x8  # opcodes from 8 up: close, ping, pong
_CONTINUATION = websocket.ABNF.OPCODE_CONT
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 section 5.5
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class TooDeepError(ValueError):
    """A JSON text nests deeper than the decoder allows."""


class MessageTooLargeError(websocket.WebSocketProtocolException):
    """A frame, or a message made of continuation frames, exceeds ``max_message_size``."""

    def __init__(self, announced: int, limit: int) -> None:
        super().__init__(
            f"the server announced a message of {announced} bytes, more than "
            f"max_message_size={limit}"
        )
        self.announced = announced
        self.limit = limit


def decode(data: Union[bytes, bytearray, str]) -> Any:
    """A text's JSON value; ``ValueError`` when it is not JSON or nests deeper than the
    decoder allows (``Connection.recv_json`` does the same inline, one call less per event)."""
    try:
        return _json.loads(data)
    except RecursionError:
        # The standard library's parser recurses in C and gives up near the interpreter's
        # recursion limit (orjson stops at 1024 levels with a ValueError of its own).
        raise TooDeepError(f"the JSON {TOO_DEEP}") from None


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds objects or arrays more than ``limit`` levels deep (a walk of
    its containers, without recursion)."""
    if value.__class__ is not dict and value.__class__ is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if node.__class__ is dict else node
        for child in children:
            kind = child.__class__
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False


class BoundedFrames(websocket.frame_buffer):
    """websocket-client's frame parser, refusing a message larger than ``limit`` bytes.

    The check runs once the frame's header and length are read, before its payload is: a
    header that announces 2**63 bytes costs nothing. Continuation frames add up to their
    message's total. Control frames (ping, pong, close) may carry at most 125 bytes.
    """

    def __init__(self, recv: Callable[[int], Any], skip_utf8_validation: bool, limit: int) -> None:
        # Any: websocket-client's own annotation of recv changed between releases.
        super().__init__(recv, skip_utf8_validation)
        self.limit = limit
        self.message_bytes = 0  # of the fragmented message being received

    def recv_length(self) -> None:
        # websocket-client's own decoding of the length (RFC 6455 section 5.2), with the
        # bound checked in the same call: this runs for every frame, so no extra one.
        header = self.header
        if header is None:
            raise websocket.WebSocketProtocolException("Header not received")
        length = header[6] & 0x7F
        if length == 0x7E:
            length = _U16.unpack(self.recv_strict(2))[0]
        elif length == 0x7F:
            length = _U64.unpack(self.recv_strict(8))[0]
        self.length = length
        opcode = header[4]
        if opcode >= _CONTROL_OPCODES:
            if length > _MAX_CONTROL_PAYLOAD:
                raise websocket.WebSocketProtocolException(
                    f"a control frame announced {length} bytes (at most 125 are allowed)"
                )
            return
        total = length + self.message_bytes if opcode == _CONTINUATION else length
        if total > self.limit:
            raise MessageTooLargeError(total, self.limit)
        self.message_bytes = 0 if header[0] else total


class LinearMessages(websocket.continuous_frame):
    """websocket-client's reassembly of fragmented messages, in linear time.

    It appends each fragment to an immutable ``bytes``, copying the whole message every time:
    quadratic, so a server streaming a message in thousands of small fragments up to
    ``max_message_size`` could cost seconds of CPU. Here the second fragment turns the
    message into a ``bytearray`` that later fragments extend in place; a message of one
    frame (every event in practice) stays the ``bytes`` it arrived as, with no copy.
    """

    def add(self, frame: websocket.ABNF) -> None:
        message = self.cont_data
        if message:
            buffer = message[1]
            if buffer.__class__ is bytes:
                buffer = message[1] = bytearray(buffer)
            buffer += frame.data
        else:
            if frame.opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                self.recving_frames = frame.opcode
            self.cont_data = [frame.opcode, frame.data]
        if frame.fin:
            self.recving_frames = None


class ReadAhead:
    """What websocket-client's frame parser reads from: the socket, one large read at a time.

    The parser asks for exactly the bytes it needs next, three reads per frame, and every read
    of a socket releases the GIL; with many threads each release can hand the GIL to another
    thread and cost a context switch. Reading whatever has arrived (up to ``_READ_AHEAD``)
    and serving the parser from it makes that one read per TLS record (the measurements are
    in docs/performance.md). Errors of the underlying read (timeouts, a closed socket) pass
    through untouched, and bytes already read are never lost: they stay here for the next
    frame. ``guard`` runs before each read of the socket (once per TLS record, not per
    frame): the connection bounds a whole frame's arrival with it, which a per-read socket
    timeout cannot do against a server that sends one byte at a time. ``unguarded``: the next
    read skips ``guard`` (the first read of a frame, which the socket's timeout bounds alone).
    """

    __slots__ = ("_data", "_guard", "_pos", "_read", "reads", "unguarded")

    def __init__(
        self, read: Callable[[int], Any], guard: Optional[Callable[[], None]] = None
    ) -> None:
        self._read = read
        self._guard = guard  # called before every read of the socket; may raise a timeout
        self._data = b""
        self._pos = 0
        self.reads = 0  # reads of the socket, for tests and debugging
        self.unguarded = False

    def __call__(self, wanted: int) -> bytes:
        data = self._data
        pos = self._pos
        if pos >= len(data):
            if self.unguarded:
                self.unguarded = False
            elif self._guard is not None:
                self._guard()
            data = self._data = self._read(_READ_AHEAD)
            self.reads += 1
            pos = 0
        end = pos + wanted
        self._pos = end
        if pos == 0 and end >= len(data):
            return data  # all of it: no copy
        return data[pos:end]  # never more than wanted: the parser keeps any excess itself

    @property
    def pending(self) -> bool:
        """Bytes read from the socket and not yet given to the parser."""
        return self._pos < len(self._data)
