"""One open WebSocket to the Responses API: send an event, receive one with a deadline,
look after it while idle, close it fast.

A ``Connection`` wraps one upgraded ``websocket-client`` socket (``_handshake`` opens it;
``_frames`` bounds what it accepts) and turns everything the library or the operating
system can raise into the documented exceptions of ``oaiws.errors``. It knows its age and
the response its server-side cache holds; it knows nothing of retries or pools.

Ownership: a connection is used by one thread at a time (the request that checked it out,
or the pool's maintenance thread while it is idle). Nothing here takes a lock of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Mapping
from typing import Any, Optional, cast

import websocket
from websocket import ABNF

from . import _json
from ._config import ClientConfig, display_url
from ._frames import TOO_DEEP, BoundedFrames, LinearMessages, MessageTooLargeError, ReadAhead
from ._handshake import TIMEOUT_ERRORS, drop, open_websocket
from .errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    ProtocolError,
)

__all__ = ["Connection"]

logger = logging.getLogger("oaiws.connection")

# Terminal events after which the server's connection-local cache holds the response, and
# those after which it holds nothing we can continue from (PROTOCOL.md section 4).
# ``response.done`` caches or evicts by the status it carries.
_CACHING_EVENTS = frozenset({"response.completed", "response.incomplete"})
_CACHING_STATUSES = frozenset({"completed", "incomplete"})
_TRACKED_EVENTS = _CACHING_EVENTS | {"response.done", "response.failed", "error"}

_TEXT = ABNF.OPCODE_TEXT

# Sending a close frame is a courtesy; it must never hold a request thread for long. A frame
# of a few bytes fits any send buffer at once unless the peer stopped reading entirely.
_CLOSE_SEND_TIMEOUT = 0.1

# A request this small goes straight into the kernel's send buffer: the buffer is empty, since
# the server answered everything sent before (the smallest default buffer on Linux is 16 KiB).
# Such a send cannot stall, so the socket keeps its read timeout for it (changing it is a
# GIL-releasing system call; docs/performance.md has the measurement).
_SEND_FITS_BUFFER = 16 * 1024

# While idle, a frame that has started arriving completes within milliseconds; and an idle
# connection receives a few control frames (pings, a close) at most.
_DRAIN_TIMEOUT = 0.05
_DRAIN_FRAMES = 16

_ids = itertools.count(1)


class Connection:
    """One open WebSocket. Build it with ``Connection.open(config)``.

    ``last_response_id`` is the response the server's connection-local cache holds, as the
    terminal events read on this connection tell it: this object is its only writer.
    """

    id: int
    created_at: float
    last_used_at: float
    requests_started: int
    last_response_id: Optional[str]
    close_code: Optional[int]
    request_id: Optional[str]

    def __init__(
        self, ws: websocket.WebSocket, config: ClientConfig, *, request_id: Optional[str] = None
    ) -> None:
        now = time.monotonic()
        self.id = next(_ids)
        self.created_at = now
        self.last_used_at = now
        self.requests_started = 0
        self.last_response_id = None
        self.close_code = None
        self.request_id = request_id
        self._ws = ws
        self._config = config
        self._url = display_url(config.websocket_url)
        self._closed = False
        self._last_frame_at = now  # any frame, control frames included
        self._last_sent_at = now
        self._ping_sent_at: Optional[float] = None
        self._close_reason = ""
        # The timeout last given to the socket: every frame of a response is read with the
        # same one, and setting it again costs two calls per frame for nothing.
        self._timeout_set: Optional[float] = None
        self._poller: Optional[Any] = None  # select.poll() registered with the socket, reused
        # websocket-client's frame parser, bounded by max_message_size and served from one
        # large read at a time (see _frames).
        old = ws.frame_buffer
        frames = BoundedFrames(old.recv, old.skip_utf8_validation, config.max_message_size)
        # A frame must arrive whole by this (monotonic) time: see _before_read.
        self._frame_deadline = float("inf")
        self._read_ahead = ReadAhead(old.recv, self._before_read)
        frames.recv = cast(Any, self._read_ahead)  # typed differently across websocket-client
        ws.frame_buffer = frames
        ws.cont_frame = LinearMessages(ws.cont_frame.fire_cont_frame, old.skip_utf8_validation)

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, config: ClientConfig) -> Connection:
        """Open a WebSocket and complete the upgrade within ``config.connect_timeout``.

        Raises the ``APIStatusError`` subclass of a refused upgrade, ``APITimeoutError`` when
        the handshake is too slow, ``APIConnectionError`` for any other network failure,
        ``ProtocolError`` for an answer that is not a WebSocket upgrade, and
        ``ConfigurationError`` when there is no API key (see ``_handshake``).
        """
        ws, request_id = open_websocket(config)
        connection = cls(ws, config, request_id=request_id)
        logger.debug("connection #%d opened to %s", connection.id, connection._url)
        return connection

    # -- state -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def age(self) -> float:
        """Seconds since the connection was opened."""
        return time.monotonic() - self.created_at

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<Connection #{self.id} {self._url} {state} age={self.age:.1f}s "
            f"requests={self.requests_started}>"
        )

    # -- request path ------------------------------------------------------------------

    def send_json(self, payload: Mapping[str, Any]) -> None:
        """Send one event as a JSON text frame.

        Raises ``APIConnectionError`` (``APITimeoutError`` when the send stalled for
        ``connect_timeout``) when it fails: then nothing usable reached the server, and the
        connection is dead.
        """
        encoded = self._encoded(payload)
        try:
            # connect_timeout bounds a send that could stall: a peer that has not taken bytes
            # for that long is gone, whatever the size of the request. A small one cannot
            # stall (see _SEND_FITS_BUFFER); it keeps any timeout at least that long.
            current = self._timeout_set
            limit = self._config.connect_timeout
            if len(encoded) > _SEND_FITS_BUFFER or current is None or current < limit:
                self._set_timeout(limit)
            self._ws.send(encoded, ABNF.OPCODE_TEXT)
        except TIMEOUT_ERRORS as exc:
            self._mark_dead()
            raise APITimeoutError(
                f"sending on connection #{self.id} stalled for "
                f"connect_timeout={self._config.connect_timeout:g}s",
                request_id=self.request_id,
            ) from exc
        except (websocket.WebSocketException, OSError) as exc:
            self._mark_dead()
            raise APIConnectionError(
                f"sending on connection #{self.id} failed: {_describe(exc)}",
                request_id=self.request_id,
            ) from exc
        now = time.monotonic()
        self.last_used_at = now
        self._last_sent_at = now
        if payload.get("type") == "response.create":
            self.requests_started += 1

    def _encoded(self, payload: Mapping[str, Any]) -> bytes:
        """The event as UTF-8 JSON (straight from the encoder: a str would only be encoded
        again); ``APIConnectionError`` on a closed connection, ``ConfigurationError`` for a
        payload that is not JSON."""
        if self._closed:
            raise APIConnectionError(self._closed_message(), request_id=self.request_id)
        try:
            return _json.dumpb(payload)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the request cannot be encoded as JSON: {exc}") from exc

    def send_concurrent(self, payload: Mapping[str, Any]) -> None:
        """Send one small event while another thread may be reading (steering): the socket's
        timeout, which the reader set, is left alone. Failures as in ``send_json``."""
        encoded = self._encoded(payload)
        try:
            self._ws.send(encoded, ABNF.OPCODE_TEXT)
        except (websocket.WebSocketException, OSError) as exc:
            self._mark_dead()
            raise APIConnectionError(
                f"sending on connection #{self.id} failed: {_describe(exc)}",
                request_id=self.request_id,
            ) from exc
        self._last_sent_at = time.monotonic()

    def recv_json(self, timeout: float) -> Any:
        """Receive one text frame and decode it; control frames are handled on the way.

        ``timeout`` bounds the silence before the next text frame: pings from the server are
        answered but do not extend it. Raises ``APITimeoutError`` (silence),
        ``APIConnectionError`` (closed: the message names the close code) and
        ``ProtocolError`` (a binary frame, an invalid or oversized frame, a text that is not
        JSON or nests too deep); after the last two the connection is dead.
        """
        if self._closed:
            raise APIConnectionError(self._closed_message(), request_id=self.request_id)
        # The hot path of every event: a text frame read with the timeout already set, one
        # clock read on each side, and tracking only for the few types that need it.
        started = time.monotonic()
        # The whole frame must be there by then, however it trickles in (see _before_read);
        # its first read is bounded by the socket's timeout alone, which is no later.
        self._frame_deadline = started + timeout
        self._read_ahead.unguarded = True
        limit = timeout
        while True:
            opcode, data = self._recv_frame(limit, timeout)
            now = self._last_frame_at = time.monotonic()
            if opcode == _TEXT:
                self.last_used_at = now
                decoded = self._decode(data)
                if decoded.__class__ is dict:
                    kind = decoded.get("type")
                    if kind.__class__ is str and kind in _TRACKED_EVENTS:
                        self._track_response(decoded)
                return decoded
            self._control_frame_read(opcode, data)
            # ping (already answered by websocket-client) or pong: keep waiting, for what is
            # left of the same silence
            limit = timeout - (now - started)
            if limit <= 0:
                raise APITimeoutError(
                    f"no event from the server on connection #{self.id} for {timeout:g}s",
                    request_id=self.request_id,
                )

    def read_one(self, timeout: float) -> Optional[Any]:
        """Read exactly one frame for a lane reader (``_mux``): the decoded event of a text
        frame, or ``None`` for a control frame (a ping is answered on the way).

        ``timeout`` bounds the frame: call it when ``wait_readable`` said bytes are there, so
        a timeout means a frame that trickles or stalls, which is fatal (``APITimeoutError``
        after the connection was marked dead). Other failures as in ``recv_json``.
        """
        if self._closed:
            raise APIConnectionError(self._closed_message(), request_id=self.request_id)
        self._frame_deadline = time.monotonic() + timeout
        try:
            opcode, data = self._recv_frame(timeout, timeout)
        except APITimeoutError:
            self._mark_dead()
            raise
        now = self._last_frame_at = time.monotonic()
        if opcode == _TEXT:
            self.last_used_at = now
            return self._decode(data)
        self._control_frame_read(opcode, data)
        return None

    def _decode(self, data: bytes) -> Any:
        """A text frame's JSON (the rules of what is accepted are ``_frames.decode``'s)."""
        try:
            return _json.loads(data)
        except ValueError as exc:
            raise self._protocol_error(
                f"the server sent a text frame that is not valid JSON ({exc})"
            ) from None
        except RecursionError:
            raise self._protocol_error(f"the server sent a frame that {TOO_DEEP}") from None

    def _control_frame_read(self, opcode: int, data: bytes) -> None:
        """A frame that is not text: a pong or a ping goes by; binary and close raise."""
        self._on_control_frame(opcode, data)
        if opcode == ABNF.OPCODE_BINARY:
            raise self._protocol_error(
                "the server sent a binary frame; the protocol uses JSON text frames only"
            )
        if opcode == ABNF.OPCODE_CLOSE:
            raise APIConnectionError(self._closed_message(), request_id=self.request_id)

    def wait_readable(self, timeout: float) -> bool:
        """Whether bytes arrive within ``timeout`` seconds (a lane reader's idle wait)."""
        if self._readable():
            return True
        poller = self._poller  # made by _readable() where poll() exists
        if poller is not None:
            return bool(poller.poll(max(timeout, 0.0) * 1000.0))
        sock = self._ws.sock
        if sock is None:
            raise APIConnectionError(self._closed_message(), request_id=self.request_id)
        readable, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        return bool(readable)

    def _set_timeout(self, seconds: float) -> None:
        if seconds != self._timeout_set:
            self._ws.settimeout(seconds)
            self._timeout_set = seconds

    def _before_read(self) -> None:
        """Before each read of the socket: the socket's timeout bounds one read, and a server
        that sends a frame one byte at a time would never trip it. The frame's deadline
        bounds the whole of it; once a frame is trickling (most of its time gone), the
        socket's timeout shrinks to what is left. A frame that arrives at once costs one
        clock read here."""
        remaining = self._frame_deadline - time.monotonic()
        if remaining <= 0:
            raise websocket.WebSocketTimeoutException("the frame did not arrive whole in time")
        current = self._timeout_set
        if current is not None and remaining < current / 2:
            self._ws.settimeout(remaining)
            self._timeout_set = remaining

    def _recv_frame(self, limit: float, timeout: float) -> tuple[int, bytes]:
        try:
            if limit != self._timeout_set:
                self._ws.settimeout(limit)
                self._timeout_set = limit
            opcode, frame = self._ws.recv_data_frame(control_frame=True)
        except TIMEOUT_ERRORS as exc:
            raise APITimeoutError(
                f"no event from the server on connection #{self.id} for {timeout:g}s",
                request_id=self.request_id,
            ) from exc
        except MessageTooLargeError as exc:
            raise self._protocol_error(
                f"{exc} (raise max_message_size if such messages are expected)"
            ) from None
        except (websocket.WebSocketProtocolException, websocket.WebSocketPayloadException) as exc:
            raise self._protocol_error(f"invalid WebSocket frame: {exc}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            self._mark_dead()
            raise APIConnectionError(
                f"connection #{self.id} was lost: {_describe(exc)}", request_id=self.request_id
            ) from exc
        except Exception as exc:
            # Whatever else the frame parser raises, the bytes it was given caused it.
            raise self._protocol_error(f"an unreadable frame ({_describe(exc)})") from exc
        return opcode, frame.data

    def _protocol_error(self, what: str) -> ProtocolError:
        """The server broke the protocol: this connection is never used again."""
        self._mark_dead()
        return ProtocolError(f"{what} on connection #{self.id}", request_id=self.request_id)

    def _on_frame(self, opcode: int, data: bytes) -> None:
        self._last_frame_at = time.monotonic()
        self._on_control_frame(opcode, data)

    def _on_control_frame(self, opcode: int, data: bytes) -> None:
        if opcode == ABNF.OPCODE_PONG:
            self._ping_sent_at = None
        elif opcode == ABNF.OPCODE_CLOSE:
            # websocket-client has already answered the close frame; only the socket is left.
            self.close_code, self._close_reason = _parse_close(data)
            self._mark_dead()

    def _track_response(self, event: dict[str, Any]) -> None:
        """Remember which response the server's connection-local cache now holds: the one a
        ``completed`` or ``incomplete`` terminal event names (``response.done`` by the status
        it carries); nothing after a failure or an error."""
        kind = event["type"]
        response = event.get("response")
        response_id = None
        if isinstance(response, dict):
            if kind in _CACHING_EVENTS:
                response_id = response.get("id")
            elif kind == "response.done":
                status = response.get("status")
                if status.__class__ is str and status in _CACHING_STATUSES:
                    response_id = response.get("id")
        self.last_response_id = response_id if response_id.__class__ is str else None

    # -- idle care ---------------------------------------------------------------------

    def check_idle(self) -> bool:
        """Look after an idle connection without blocking; False when it is dead.

        Drains pending frames (websocket-client answers pings as it reads them; a close frame
        or EOF is noticed), sends a ping after ``ping_interval`` of quiet, and declares the
        connection dead when a ping went unanswered for too long. A text frame while idle
        means leftovers of an earlier response: such a connection must not serve anyone.
        """
        if self._closed:
            return False
        try:
            # Bounded, whatever the server does: at most _DRAIN_FRAMES frames, each whole
            # within _DRAIN_TIMEOUT. A frame that trickles in, or a flood of them, makes the
            # connection unfit: an idle connection has a few control frames at most, and a
            # partial frame left behind could complete under the next request.
            drained = 0
            while self._readable():
                drained += 1
                if drained > _DRAIN_FRAMES:
                    logger.debug("connection #%d: the server floods it while idle", self.id)
                    self._mark_dead()
                    return False
                self._set_timeout(_DRAIN_TIMEOUT)
                self._frame_deadline = time.monotonic() + _DRAIN_TIMEOUT
                try:
                    opcode, frame = self._ws.recv_data_frame(control_frame=True)
                except TIMEOUT_ERRORS:
                    logger.debug("connection #%d: a frame did not arrive whole while idle", self.id)
                    self._mark_dead()
                    return False
                self._on_frame(opcode, frame.data)
                if opcode == ABNF.OPCODE_CLOSE:
                    logger.debug(
                        "connection #%d: the server closed it while idle (code %s)",
                        self.id,
                        self.close_code,
                    )
                    return False
                if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                    logger.debug("connection #%d: unexpected data frame while idle", self.id)
                    self._mark_dead()
                    return False
            return self.ping_if_quiet()
        except Exception as exc:  # noqa: BLE001 - a closed socket, a reset, a refused frame
            logger.debug("connection #%d: lost while idle: %s", self.id, _describe(exc))
            self._mark_dead()
            return False

    def ping_if_quiet(self, *, keep_timeout: bool = False) -> bool:
        """Send a ping after ``ping_interval`` of quiet; False (and the connection marked
        dead) when the last ping went unanswered for too long. ``keep_timeout``: another
        thread is reading (a lane reader's care), so the socket's timeout is left alone (a
        ping is a few bytes: it fits the send buffer)."""
        interval = self._config.ping_interval
        if interval is None:
            return True
        now = time.monotonic()
        if self._ping_sent_at is not None:
            # An unanswered ping: give it as long as a handshake, or one interval.
            if now - self._ping_sent_at > max(interval, self._config.connect_timeout):
                logger.debug("connection #%d: ping unanswered, dropping it", self.id)
                self._mark_dead()
                return False
            return True
        quiet_since = max(self._last_frame_at, self._last_sent_at)
        if now - quiet_since >= interval:
            if not keep_timeout:
                self._set_timeout(_CLOSE_SEND_TIMEOUT)
            self._ws.ping()
            self._ping_sent_at = now
            self._last_sent_at = now
        return True

    def _readable(self) -> bool:
        sock = self._ws.sock
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is closed")
        if self._read_ahead.pending:
            return True  # bytes already read from the socket, waiting for the frame parser
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered inside the TLS layer
        if hasattr(select, "poll"):
            # Built once: every checkout of an idle connection polls it.
            poller = self._poller
            if poller is None:
                poller = self._poller = select.poll()
                poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Close quickly: a close frame if it can be sent at once, then drop the socket.

        Waiting for the server's close frame could take seconds on a busy or dead peer;
        a request thread never waits for it.
        """
        ws = self._ws
        was_open = not self._closed
        self._closed = True
        sock = ws.sock
        if sock is None:
            return
        try:
            if ws.connected:
                self._timeout_set = None
                sock.settimeout(_CLOSE_SEND_TIMEOUT)
                ws.send_close(websocket.STATUS_NORMAL)
        except (websocket.WebSocketException, OSError):
            pass  # the peer is gone or not reading: dropping the socket is all that is left
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        drop(ws)
        if was_open:
            logger.debug("connection #%d closed after %.1fs", self.id, self.age)

    def interrupt(self) -> None:
        """From another thread: wake the owner out of a blocking read or write (both fail with
        ``APIConnectionError``); the owner then closes the connection as after any failure.
        Nothing is sent: the owner may be in the middle of a frame."""
        sock = self._ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def abandon(self) -> None:
        """Drop the socket without sending anything (in a child process after fork).

        The socket is shared with the parent, which still uses it: no close frame, no TLS
        alert, no shutdown() (which would cut the parent's connection too). Closing the
        child's copy of the file descriptor leaves the parent's intact.
        """
        self._closed = True
        ws = self._ws
        sock = ws.sock
        ws.sock = None
        ws.connected = False
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # -- helpers -----------------------------------------------------------------------

    def _mark_dead(self) -> None:
        """The socket is unusable: release it at once (no close handshake is possible)."""
        self._closed = True
        drop(self._ws)

    def _closed_message(self) -> str:
        if self.close_code is None:
            return f"connection #{self.id} is closed"
        detail = f": {self._close_reason}" if self._close_reason else ""
        return f"the server closed connection #{self.id} (close code {self.close_code}{detail})"


def _parse_close(data: bytes) -> tuple[Optional[int], str]:
    if len(data) < 2:
        return 1005, ""  # RFC 6455: no status code was present
    (code,) = struct.unpack("!H", data[:2])
    reason = data[2:125].decode("utf-8", errors="replace")
    return int(code), reason


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
