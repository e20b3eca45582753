"""One blocking WebSocket to the Responses API.

A ``Connection`` wraps one ``websocket-client`` socket and turns everything the library or
the operating system can raise into the documented exceptions of ``oaiws.errors``. It knows
its age and the response its server-side cache holds; it knows nothing of retries or pools.

Ownership: a connection is used by one thread at a time (the request that checked it out,
or the pool's maintenance thread while it is idle). Nothing here takes a lock of its own.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

import websocket
from websocket import ABNF

from . import _json
from ._config import ClientConfig, display_url
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    ProtocolError,
    error_from_handshake,
)

__all__ = ["Connection"]

logger = logging.getLogger("oaiws.connection")

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Terminal events that leave a response in the connection's server-side cache, and those
# after which the cache holds nothing we can continue from (PROTOCOL.md section 4).
_CACHING_EVENTS = frozenset({"response.completed", "response.incomplete", "response.done"})
_EVICTING_EVENTS = frozenset({"response.failed", "error"})
# Either of them: the one set lookup every text frame pays before any tracking work.
_TRACKED_EVENTS = _CACHING_EVENTS | _EVICTING_EVENTS

_TEXT = ABNF.OPCODE_TEXT

# Sending a close frame is a courtesy; it must never hold a request thread for long. A frame
# of a few bytes fits any send buffer at once unless the peer stopped reading entirely.
_CLOSE_SEND_TIMEOUT = 0.1

# A request this small goes straight into the kernel's send buffer: the buffer is empty, since
# the server answered everything sent before (the smallest default buffer on Linux is 16 KiB).
# Such a send cannot stall, so the socket keeps its read timeout for it: changing the timeout
# is a system call that releases the GIL, twice per request (to connect_timeout and back),
# and with many threads each release can cost a context switch.
_SEND_FITS_BUFFER = 16 * 1024

# While idle, a frame that has started arriving completes within milliseconds; a partial
# one is kept by websocket-client's frame buffer and finished at the next check.
_DRAIN_TIMEOUT = 0.05

# websocket-client reads each frame with reads of exactly the size it needs next (the header,
# the extended length, the payload). One read of up to this much takes a whole TLS record at
# once (16 KiB at most) and the frame parser is served from it.
_READ_AHEAD = 65536

_ids = itertools.count(1)

_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    websocket.WebSocketTimeoutException,
    socket.timeout,
    TimeoutError,
)


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: Union[bool, str]) -> ssl.SSLContext:
    """One TLS context per ``verify`` value, shared: building one loads the CA store (slow)."""
    if verify is False:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    context = ssl.create_default_context()
    paths = ssl.get_default_verify_paths()
    has_system_store = any(
        path is not None and os.path.exists(path) for path in (paths.cafile, paths.capath)
    )
    if not has_system_store:
        # Slim containers often ship no CA store; requests' dependency certifi then has one.
        bundle = _certifi_bundle()
        if bundle is not None:
            context.load_verify_locations(cafile=bundle)
    return context


def _certifi_bundle() -> Optional[str]:
    try:
        import certifi  # noqa: PLC0415 - needed only on hosts without a CA store
    except ImportError:
        return None
    return str(certifi.where())


def _decode_body(body: Optional[bytes]) -> Any:
    if not body:
        return None
    try:
        return _json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


class _ReadAhead:
    """What websocket-client's frame parser reads from: the socket, one large read at a time.

    The parser asks for exactly the bytes it needs next, three reads per frame, and every read
    of a socket releases the GIL; with many threads each release can hand the GIL to another
    thread and cost a context switch. Reading whatever has arrived (up to ``_READ_AHEAD``)
    and serving the parser from it makes that one read per TLS record. Measured with 32
    threads on 8 connections: about 30% more requests per second, 3% less CPU per event
    alone. Errors of the underlying read (timeouts, a closed socket) pass through untouched,
    and bytes already read are never lost: they stay here for the next frame.
    """

    __slots__ = ("_data", "_pos", "_read", "reads")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._data = b""
        self._pos = 0
        self.reads = 0  # reads of the socket, for tests and debugging

    def __call__(self, wanted: int) -> bytes:
        data = self._data
        pos = self._pos
        if pos >= len(data):
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


class Connection:
    """One open WebSocket. Build it with ``Connection.open(config)``."""

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
        self._read_ahead: Optional[_ReadAhead] = None
        frames = getattr(ws, "frame_buffer", None)
        if frames is not None and callable(getattr(frames, "recv", None)):
            # websocket-client's frame parser reads through frame_buffer.recv (1.9 and
            # later; the guard keeps the plain path should that ever change).
            self._read_ahead = frames.recv = _ReadAhead(frames.recv)

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(cls, config: ClientConfig) -> Connection:
        """Open a WebSocket and complete the upgrade within ``config.connect_timeout``.

        Raises the ``APIStatusError`` subclass of a refused upgrade (``error_from_handshake``),
        ``APITimeoutError`` when the handshake is too slow, ``APIConnectionError`` for any
        other network failure, and ``ConfigurationError`` when there is no API key.
        """
        headers = config.handshake_headers()
        url = config.websocket_url
        shown = display_url(url)
        options: dict[str, Any] = {
            "header": headers,
            "timeout": config.connect_timeout,
            # Never follow a redirect: it would carry the credentials to wherever it points.
            "redirect_limit": 0,
            # A server-side client has no web origin; the official SDKs send none either.
            "suppress_origin": True,
        }
        if config.proxy is not None:
            options["http_proxy_host"] = config.proxy.host
            options["http_proxy_port"] = config.proxy.port
            options["proxy_type"] = config.proxy.scheme
            options["http_proxy_timeout"] = config.connect_timeout
            if config.proxy.username is not None:
                options["http_proxy_auth"] = (config.proxy.username, config.proxy.password or "")
        sslopt: Optional[dict[str, Any]] = None
        if url.lower().startswith("wss:"):
            try:
                sslopt = {"context": _ssl_context(config.verify)}
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"cannot load the CA bundle {config.verify!r}: {exc}"
                ) from exc

        started = time.monotonic()
        # websocket-client validates the UTF-8 of every text frame in pure Python, which costs
        # more CPU than everything else on the receive path together (profiled: about 70% of
        # it). Every text frame is then decoded as JSON, and that decoder rejects invalid
        # UTF-8 in C (``_json.loads``), so the frame is still refused, at a fraction of the cost.
        ws = websocket.WebSocket(sslopt=sslopt, enable_multithread=True, skip_utf8_validation=True)
        # websocket-client applies connect_timeout to each socket operation; the watchdog
        # bounds the whole upgrade, so a server that trickles its answer cannot stretch it.
        watchdog = _HandshakeWatchdog(ws, config.connect_timeout)
        try:
            try:
                ws.connect(url, **options)  # type: ignore[no-untyped-call]
            except Exception:
                if watchdog.stop():
                    raise _HandshakeDeadlineError from None
                raise
            if watchdog.stop():
                _drop(ws)
                raise _HandshakeDeadlineError
            # websocket-client before 1.9.2 reports a redirect it was told not to follow
            # as a successful connect: refuse it here (nothing was sent to its target).
            redirect = _redirect_status(ws)
            if redirect is not None:
                _drop(ws)
                raise _redirect_error(redirect[0], redirect[1], shown)
        except websocket.WebSocketBadStatusException as exc:
            # Everything useful (status, body, headers) is copied into the error; the original
            # text is dropped because it quotes every response header, cookies included.
            raise error_from_handshake(
                exc.status_code, _decode_body(exc.resp_body), exc.resp_headers or {}
            ) from None
        except _TIMEOUT_ERRORS as exc:
            raise APITimeoutError(
                f"the WebSocket handshake with {shown} did not complete within "
                f"connect_timeout={config.connect_timeout:g}s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise APIConnectionError(
                f"TLS certificate verification failed for {shown}: {exc.verify_message} "
                "(pass verify='/path/to/ca.pem' for a private CA)"
            ) from exc
        except websocket.WebSocketAddressException as exc:
            raise APIConnectionError(f"cannot resolve the host of {shown}: {exc}") from exc
        except websocket.WebSocketProxyException as exc:
            raise APIConnectionError(f"the proxy refused the connection to {shown}: {exc}") from exc
        except websocket.WebSocketException as exc:
            redirect = _redirect_status(ws)
            if redirect is not None:
                raise _redirect_error(redirect[0], redirect[1], shown) from None
            raise ProtocolError(f"the WebSocket upgrade with {shown} failed: {exc}") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise APIConnectionError(f"cannot connect to {shown}: {reason}") from exc
        except ValueError as exc:  # websocket-client's URL parser
            raise ConfigurationError(f"invalid WebSocket URL {shown}: {exc}") from exc

        response_headers: Mapping[str, str] = ws.headers or {}
        connection = cls(ws, config, request_id=response_headers.get("x-request-id"))
        logger.debug(
            "connection #%d opened to %s in %.3fs",
            connection.id,
            shown,
            time.monotonic() - started,
        )
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
        """Send one event as a JSON text frame."""
        if self._closed:
            raise APIConnectionError(self._closed_message())
        try:
            # UTF-8 bytes straight from the encoder: a str would only be encoded again.
            encoded = _json.dumpb(payload)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the request cannot be encoded as JSON: {exc}") from exc
        try:
            # connect_timeout bounds a send that could stall: a peer that has not taken bytes
            # for that long is gone, whatever the size of the request. A small one cannot
            # stall (see _SEND_FITS_BUFFER); it keeps any timeout at least that long.
            current = self._timeout_set
            limit = self._config.connect_timeout
            if len(encoded) > _SEND_FITS_BUFFER or current is None or current < limit:
                self._set_timeout(limit)
            self._ws.send(encoded, ABNF.OPCODE_TEXT)
        except _TIMEOUT_ERRORS as exc:
            self._mark_dead()
            raise APITimeoutError(
                f"sending on connection #{self.id} stalled for "
                f"connect_timeout={self._config.connect_timeout:g}s"
            ) from exc
        except (websocket.WebSocketException, OSError) as exc:
            self._mark_dead()
            raise APIConnectionError(
                f"sending on connection #{self.id} failed: {_describe(exc)}"
            ) from exc
        now = time.monotonic()
        self.last_used_at = now
        self._last_sent_at = now
        if payload.get("type") == "response.create":
            self.requests_started += 1

    def recv_json(self, timeout: float) -> Any:
        """Receive one text frame and decode it; control frames are handled on the way.

        ``timeout`` bounds the silence before the next text frame: pings from the server are
        answered but do not extend it.
        """
        if self._closed:
            raise APIConnectionError(self._closed_message())
        # The hot path of every event: a text frame read with the timeout already set, one
        # clock read on each side, and tracking only for the few types that need it.
        started = time.monotonic()
        limit = timeout
        while True:
            opcode, data = self._recv_frame(limit, timeout)
            now = self._last_frame_at = time.monotonic()
            if opcode == _TEXT:
                self.last_used_at = now
                try:
                    decoded = _json.loads(data)
                except ValueError:
                    raise ProtocolError(
                        f"the server sent a text frame that is not JSON on connection #{self.id}"
                    ) from None
                if decoded.__class__ is dict:
                    kind = decoded.get("type")
                    if kind.__class__ is str and kind in _TRACKED_EVENTS:
                        self._track_response(decoded)
                return decoded
            self._on_control_frame(opcode, data)
            if opcode == ABNF.OPCODE_BINARY:
                raise ProtocolError(
                    f"the server sent a binary frame on connection #{self.id}; "
                    "the protocol uses JSON text frames only"
                )
            if opcode == ABNF.OPCODE_CLOSE:
                raise APIConnectionError(self._closed_message())
            # ping (already answered by websocket-client) or pong: keep waiting, for what is
            # left of the same silence
            limit = timeout - (now - started)
            if limit <= 0:
                raise APITimeoutError(
                    f"no event from the server on connection #{self.id} for {timeout:g}s"
                )

    def _set_timeout(self, seconds: float) -> None:
        if seconds != self._timeout_set:
            self._ws.settimeout(seconds)
            self._timeout_set = seconds

    def _recv_frame(self, limit: float, timeout: float) -> tuple[int, bytes]:
        try:
            if limit != self._timeout_set:
                self._ws.settimeout(limit)
                self._timeout_set = limit
            opcode, frame = self._ws.recv_data_frame(control_frame=True)
        except _TIMEOUT_ERRORS as exc:
            raise APITimeoutError(
                f"no event from the server on connection #{self.id} for {timeout:g}s"
            ) from exc
        except (websocket.WebSocketProtocolException, websocket.WebSocketPayloadException) as exc:
            self._mark_dead()
            raise ProtocolError(f"invalid WebSocket frame on connection #{self.id}: {exc}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            self._mark_dead()
            raise APIConnectionError(f"connection #{self.id} was lost: {_describe(exc)}") from exc
        return opcode, frame.data

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

    def _track_response(self, event: Any) -> None:
        """Remember which response the server's connection-local cache now holds."""
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind in _CACHING_EVENTS:
            response = event.get("response")
            response_id = response.get("id") if isinstance(response, dict) else None
            self.last_response_id = response_id if isinstance(response_id, str) else None
        elif kind in _EVICTING_EVENTS:
            self.last_response_id = None

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
            while self._readable():
                self._set_timeout(_DRAIN_TIMEOUT)
                try:
                    opcode, frame = self._ws.recv_data_frame(control_frame=True)
                except _TIMEOUT_ERRORS:
                    break  # a partial frame; websocket-client keeps it for the next check
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
            return self._ping_if_quiet()
        except (websocket.WebSocketException, OSError, ValueError) as exc:
            logger.debug("connection #%d: lost while idle: %s", self.id, _describe(exc))
            self._mark_dead()
            return False

    def _ping_if_quiet(self) -> bool:
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
            self._set_timeout(_CLOSE_SEND_TIMEOUT)
            self._ws.ping()
            self._ping_sent_at = now
            self._last_sent_at = now
        return True

    def _readable(self) -> bool:
        sock = self._ws.sock
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is closed")
        if self._read_ahead is not None and self._read_ahead.pending:
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
        _drop(ws)
        if was_open:
            logger.debug("connection #%d closed after %.1fs", self.id, self.age)

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
        _drop(self._ws)

    def _closed_message(self) -> str:
        if self.close_code is None:
            return f"connection #{self.id} is closed"
        detail = f": {self._close_reason}" if self._close_reason else ""
        return f"the server closed connection #{self.id} (close code {self.close_code}{detail})"


class _HandshakeDeadlineError(TimeoutError):
    """The whole upgrade outlived connect_timeout (mapped to ``APITimeoutError``)."""


class _HandshakeWatchdog:
    """Shuts the socket down when an upgrade outlives its deadline.

    The socket exists only once TCP, the proxy tunnel and TLS are done (each step bounded
    by connect_timeout on its own); until then the watchdog looks again every few
    milliseconds, and it cuts the upgrade the moment there is a socket to cut.
    """

    _RECHECK = 0.02

    def __init__(self, ws: websocket.WebSocket, seconds: float) -> None:
        self._ws = ws
        self._lock = threading.Lock()
        self._stopped = False
        self._expired = False
        self._arm(seconds)

    def _arm(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self._expire)
        timer.daemon = True
        timer.name = "oaiws-handshake-deadline"
        self._timer = timer
        timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._expired = True
            sock = self._ws.sock
            if sock is None:
                self._arm(self._RECHECK)
                return
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def stop(self) -> bool:
        """Disarm; True when the deadline had passed (the upgrade must be refused)."""
        with self._lock:
            self._stopped = True
            self._timer.cancel()
            return self._expired


def _redirect_status(ws: websocket.WebSocket) -> Optional[tuple[int, Mapping[str, str]]]:
    response: Any = getattr(ws, "handshake_response", None)
    status = getattr(response, "status", None)
    if status in _REDIRECT_STATUSES:
        return int(status), getattr(response, "headers", None) or {}
    return None


def _drop(ws: websocket.WebSocket) -> None:
    """Close the socket at once, without a close handshake."""
    with contextlib.suppress(OSError):
        ws.shutdown()  # type: ignore[no-untyped-call]


def _parse_close(data: bytes) -> tuple[Optional[int], str]:
    if len(data) < 2:
        return 1005, ""  # RFC 6455: no status code was present
    (code,) = struct.unpack("!H", data[:2])
    reason = data[2:125].decode("utf-8", errors="replace")
    return int(code), reason


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redirect_error(status: int, headers: Mapping[str, str], shown_url: str) -> APIStatusError:
    location = headers.get("location")
    target = display_url(location) if location else "an unnamed location"
    return APIStatusError(
        f"the server answered the WebSocket upgrade at {shown_url} with a redirect "
        f"(HTTP {status}) to {target}; redirects are never followed, so the API key cannot "
        "travel to another address: set base_url or websocket_url to the final URL",
        status_code=status,
        headers=headers,
    )
