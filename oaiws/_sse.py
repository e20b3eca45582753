"""Server-sent events: the bytes of an HTTP streaming response, cut into events.

Follows the WHATWG event-stream format: lines end with CRLF, LF or CR (a CRLF split across two
reads is one line end); ``data:`` lines of one event are joined with ``\\n``; ``event:`` names
it; lines starting with ``:`` are comments; a field's value loses one leading space; a blank
line dispatches the event; a byte order mark opening the stream is dropped. ``id`` and
``retry`` are read and ignored (the client never reconnects an SSE stream by itself). One
leniency: a last event whose blank line never came before the body ended is still
dispatched, since some servers end a stream that way.

The server is not trusted: a line, or an event's data, longer than ``limit`` bytes is refused
(``SSETooLargeError``), so a stream that never sends a newline cannot grow without bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["SSEParser", "SSETooLargeError", "events_of"]

_CR = b"\r"
_LF = b"\n"
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark may open a stream: it is not part of it


class SSETooLargeError(ValueError):
    """A line or an event's data is larger than the parser's limit."""


class SSEParser:
    """Feed it the body's chunks; it returns each event's ``(event name, data)`` as it ends."""

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_limit",
        "_pending",
        "_pending_cr",
        "_pending_size",
        "_started",
    )

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # The start of a line whose end has not arrived, in the pieces it came in (joined once
        # the line ends: appending to one bytes would copy it again with every piece).
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_cr = False  # the last chunk ended with CR: a LF next is the same line end
        self._started = False  # the stream's first bytes were seen (a BOM may open them)
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """The events that ``chunk`` completes, in order."""
        if not chunk:
            return []
        if not self._started:
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == _LF:
                chunk = chunk[1:]
        if _CR in chunk:
            if chunk[-1:] == _CR:
                self._pending_cr = True  # its LF may come with the next chunk
            chunk = chunk.replace(b"\r\n", _LF).replace(_CR, _LF)
        if _LF not in chunk:
            self._keep_pending(chunk)
            return []
        lines = chunk.split(_LF)
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        self._keep_pending(lines.pop())  # the unfinished last line (b"" after a line end)
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(self._dispatch())
                else:
                    self._event = b""
                continue
            if line[:1] == b":":
                continue  # a comment (keep-alive)
            field, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data_size += len(value) + 1
                if self._data_size > self._limit:
                    raise SSETooLargeError(f"an event's data is larger than {self._limit} bytes")
                self._data.append(value)
            elif field == b"event":
                self._event = value
            # id, retry and unknown fields: nothing to do for a client that never reconnects
        return events

    def _keep_pending(self, piece: bytes) -> None:
        if not piece:
            return
        self._pending_size += len(piece)
        if self._pending_size > self._limit:
            raise SSETooLargeError(f"an event-stream line is longer than {self._limit} bytes")
        self._pending.append(piece)

    def close(self) -> list[tuple[str, bytes]]:
        """The body ended: a last event without its blank line is still dispatched."""
        events: list[tuple[str, bytes]] = []
        if self._pending:
            events.extend(self.feed(_LF))
        if self._data:
            events.append(self._dispatch())
        return events

    def _dispatch(self) -> tuple[str, bytes]:
        data = self._data
        event = (
            self._event.decode("utf-8", "replace"),
            data[0] if len(data) == 1 else _LF.join(data),
        )
        self._data = []
        self._data_size = 0
        self._event = b""
        return event


def events_of(chunks: Iterable[bytes], limit: int) -> Iterator[tuple[str, bytes]]:
    """Every event of a body given as chunks (a convenience for tests and REST helpers)."""
    parser = SSEParser(limit)
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()
