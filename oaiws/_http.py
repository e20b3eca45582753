"""The HTTP half, over ``requests``: streaming a response as server-sent events when WebSocket
mode is not available, and the REST calls (retrieve, delete, cancel, input items).

``HttpTransport`` owns one ``requests.Session`` per client (its connection pool sized to
``max_connections``, replaced in a forked child), and turns everything ``requests``,
``urllib3`` and ``http.client`` can raise into the documented exceptions: an HTTP error status
into the ``APIStatusError`` subclass of that status, a redirect into an ``APIStatusError`` that
is never followed (the key never travels to another origin, and the redirect's body is never
read), a network failure into ``APIConnectionError``, a timeout into ``APITimeoutError``, a
body that is not the protocol into ``ProtocolError``. Messages show URLs without their query
string, and no exception keeps ``requests``' own (which quotes it) as its cause.

A server is not trusted here either: bodies are asked for uncompressed and read in the pieces
that arrive (``_Body``: at most one system call per read, the socket's timeout fitted to the
time left), so ``max_message_size`` and the deadlines bound what a body costs, whatever it
claims or however slowly it comes.

``HttpChannel`` is one streaming request, shaped like a WebSocket ``Connection`` for the request
layer (``send_json`` then ``recv_json`` per event), so a request reads the same ``Event`` objects
whatever carried them.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from . import _json
from ._config import ClientConfig, display_url
from ._forking import reset_in_child
from ._frames import decode
from ._retry import KeepAliveDropped
from ._sse import SSEParser, SSETooLargeError
from ._stats import Stats
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    PoolTimeoutError,
    PreviousResponseNotFoundError,
    ProtocolError,
    error_from_status,
)

__all__ = ["HttpChannel", "HttpTransport"]

logger = logging.getLogger("oaiws.http")

# One read of a body takes whatever has arrived, up to this much.
_READ = 65536

# After the terminal event a server ends the body; its final chunk marker is normally there
# already. The caller never waits longer than this for it: the connection is closed instead.
_END_WAIT = 0.02

_TIMEOUTS = (
    requests.exceptions.Timeout,
    urllib3.exceptions.TimeoutError,
    TimeoutError,
    socket.timeout,  # not a TimeoutError before Python 3.10
)
_CORRUPT = (
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.DecodeError,
)


class _Session(requests.Session):
    """A session that never looks at a redirect: with ``allow_redirects=False`` requests
    still prepares the next request, reading the redirect's whole body to do so."""

    def get_redirect_target(self, resp: requests.Response) -> Optional[str]:
        return None


class HttpTransport:
    """The client's HTTP side: one session, the URL of each endpoint, errors mapped."""

    def __init__(self, config: ClientConfig, stats: Stats) -> None:
        self._config = config
        self._stats = stats
        self._pid = os.getpid()
        self._session = self._new_session()
        # At most max_connections HTTP requests at once, like the WebSocket pool: the others
        # wait up to pool_timeout. (Beyond its size, the session's pool would open connections
        # it then throws away, warning about each.)
        self._slots = threading.BoundedSemaphore(config.max_connections)
        parts = urlsplit(config.base_url)
        self._base = (parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query)
        reset_in_child(self)

    def _new_session(self) -> requests.Session:
        session = _Session()
        # requests' own retries stay off: the retry policy is oaiws's (_retry).
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=self._config.max_connections, max_retries=0
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    @property
    def limit(self) -> int:
        return self._config.max_message_size

    # -- sending ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """The URL of an endpoint below the base URL (``/responses``), its query string kept."""
        scheme, netloc, base_path, query = self._base
        return urlunsplit((scheme, netloc, base_path + path, query, ""))

    def _proxies(self, url: str) -> Optional[dict[str, str]]:
        proxy = self._config.proxy
        if proxy is None:
            return None  # requests applies HTTPS_PROXY / HTTP_PROXY / NO_PROXY itself
        if requests.utils.should_bypass_proxies(url, no_proxy=None):
            # NO_PROXY bypasses an explicit proxy too, as it does for the WebSocket.
            return {"http": "", "https": ""}
        if proxy.scheme.startswith("socks") and importlib.util.find_spec("socks") is None:
            raise ConfigurationError(
                f"a {proxy.scheme} proxy for HTTP requests needs PySocks: "
                "pip install 'requests[socks]'"
            )
        user = ""
        if proxy.username is not None:
            user = quote(proxy.username, safe="") + ":" + quote(proxy.password or "", safe="") + "@"
        host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host  # IPv6
        address = f"{proxy.scheme}://{user}{host}:{proxy.port}"
        return {"http": address, "https": address}

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        body: Optional[bytes] = None,
        stream: bool,
        deadline: float,
    ) -> requests.Response:
        """One HTTP request; returns a 2xx response (its body not read yet). ``deadline``
        (monotonic) bounds the wait for the answer's head, and the error body's reading.

        Raises the ``APIStatusError`` subclass of an error status (the body read, bounded),
        an ``APIStatusError`` for a redirect (never followed), ``APITimeoutError``,
        ``APIConnectionError``, ``ProtocolError`` and ``ConfigurationError`` (no API key).
        """
        if self._pid != os.getpid():
            self._after_fork_in_child()
        config = self._config
        headers = config.handshake_headers()
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        # Uncompressed: a compressed body could expand far beyond what arrived.
        headers["Accept-Encoding"] = "identity"
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = self.url(path)
        shown = f"{method} {display_url(url)}"
        self._stats.add("http_requests")
        read_timeout = max(0.001, deadline - time.monotonic())
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                stream=True,  # bodies are read here, bounded, never at once by requests
                timeout=(config.connect_timeout, read_timeout),
                allow_redirects=False,  # the credentials never follow a redirect
                proxies=self._proxies(url),
                # Explicit, so that a CA bundle named in the environment (REQUESTS_CA_BUNDLE)
                # never overrides a verify= that names one (requests does that for None).
                verify=config.verify,
            )
        except Exception as error:  # noqa: BLE001 - every failure leaves as a documented error
            raise _mapped(error, shown, config) from None
        status = response.status_code
        if status < 300:
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding not in ("", "identity"):
                response.close()
                raise ProtocolError(
                    f"the server compressed its answer to {shown} ({encoding}) although an "
                    "uncompressed one was asked for",
                    request_id=response.headers.get("x-request-id"),
                )
            return response
        try:
            if status < 400:
                raise _redirect_error(response, shown)
            raise error_from_status(
                status,
                self.read_json(response, shown, deadline, text_ok=True),
                response.headers,
                action=shown,
            )
        finally:
            response.close()

    def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        payload: Optional[Mapping[str, Any]] = None,
        deadline: float,
    ) -> Any:
        """A REST call's JSON answer (an empty body gives ``None``); one try, mapped errors,
        everything (the wait for a place, the answer, its body) within ``deadline``."""
        body = None if payload is None else _json.dumpb(payload)
        shown = f"{method} {display_url(self.url(path))}"
        wait = min(self._config.pool_timeout, deadline - time.monotonic())
        give_back = self.take_slot(wait)
        try:
            response = self.send(
                method, path, params=params, body=body, stream=False, deadline=deadline
            )
            try:
                return self.read_json(response, shown, deadline)
            finally:
                response.close()
        finally:
            give_back()

    def read_json(
        self, response: requests.Response, shown: str, deadline: float, *, text_ok: bool = False
    ) -> Any:
        """The body decoded as JSON (``None`` when empty), at most ``max_message_size``, read
        within ``deadline``; ``text_ok``: a body that is not JSON comes back as text."""
        reader = _Body(response, shown)
        limit = self._config.max_message_size
        pieces: list[bytes] = []
        size = 0
        while True:
            piece = reader.read(deadline)
            if not piece:
                break
            size += len(piece)
            if size > limit:
                raise ProtocolError(
                    f"the answer to {shown} is larger than max_message_size={limit}",
                    request_id=response.headers.get("x-request-id"),
                )
            pieces.append(piece)
        # The whole body was read: its connection can serve the next request.
        response.raw.release_conn()
        raw = b"".join(pieces)
        if not raw:
            return None
        try:
            return decode(raw)
        except ValueError:
            if text_ok:
                return raw.decode("utf-8", errors="replace")
            raise ProtocolError(
                f"the answer to {shown} is not JSON",
                request_id=response.headers.get("x-request-id"),
            ) from None

    # -- places and channels ---------------------------------------------------------------

    def take_slot(self, timeout: float) -> Callable[[], None]:
        """Wait up to ``timeout`` for one of the ``max_connections`` places of an HTTP request;
        returns the function that gives it back (safe to call more than once)."""
        slots = self._slots
        if not slots.acquire(timeout=max(0.0, timeout)):
            self._stats.add("requests_timeouts")
            raise PoolTimeoutError(
                f"no HTTP connection became free within {timeout:g}s "
                f"(max_connections={self._config.max_connections}): raise max_connections or "
                "pool_timeout, or share the client among fewer threads"
            )
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                if slots is self._slots:  # a forked child has a semaphore of its own
                    slots.release()

        return give_back

    def channel(
        self,
        timeout: float,
        method: str = "POST",
        path: str = "/responses",
        params: Optional[dict[str, Any]] = None,
    ) -> HttpChannel:
        """A streaming request waiting for its payload (``send_json``), holding one of the
        ``max_connections`` places until it ends (``PoolTimeoutError`` after ``timeout``)."""
        return HttpChannel(self, method, path, params, self.take_slot(timeout))

    # -- fork, close -----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The parent's pooled sockets are the parent's: the child starts a session of its own
        # and leaves the old one to the garbage collector (closing it sends nothing either).
        self._pid = os.getpid()
        self._session = self._new_session()
        self._slots = threading.BoundedSemaphore(self._config.max_connections)

    def close(self) -> None:
        self._session.close()


class _Body:
    """Reads a body in the pieces that arrive: ``http.client``'s ``read1`` (one system call at
    most, chunked transfer decoded), with the socket's timeout fitted to the time left, so a
    body that trickles in is still bounded by its deadline."""

    __slots__ = ("_read1", "_shown", "_sock", "_timeout")

    def __init__(self, response: requests.Response, shown: str) -> None:
        raw: Any = response.raw  # urllib3's, 1.26 or 2.x: typed differently by each
        self._read1: Callable[[int], bytes] = raw._fp.read1
        connection = getattr(raw, "connection", None)
        self._sock: Optional[socket.socket] = getattr(connection, "sock", None)
        self._timeout: Optional[float] = self._sock.gettimeout() if self._sock else None
        self._shown = shown

    @property
    def socket(self) -> Optional[socket.socket]:
        return self._sock

    def read(self, deadline: float) -> bytes:
        """What has arrived (``b""`` at the end); ``APITimeoutError`` once past ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise APITimeoutError(f"the answer to {self._shown} did not arrive in time")
        current = self._timeout
        sock = self._sock
        # Fitted when the time left grew (a new event) or fell well below the timeout set: a
        # read that finds bytes waiting costs no system call for this.
        if sock is not None and (
            current is None or remaining > current or remaining < current * 0.9 - 0.01
        ):
            sock.settimeout(remaining)
            self._timeout = remaining
        try:
            return self._read1(_READ)
        except Exception as error:  # noqa: BLE001 - every failure leaves as a documented error
            raise _read_error(error, self._shown) from None


class HttpChannel:
    """One request streamed over HTTP, read like a WebSocket connection: ``send_json`` gives the
    payload (``POST``: the body, with ``stream: true``); the first ``recv_json`` sends it and
    every call returns the next event's JSON.

    A stream read to its terminal event gives its TCP connection back to the session's pool
    (``finish``); any other end closes it (``close``), so a half-read body is never reused.
    A ``previous_response_not_found`` refusal is returned as an ``error`` event, as the
    WebSocket server sends it, so a conversation can replay at once on the same channel.
    """

    last_response_id: Optional[str] = None  # HTTP has no connection-local cache to continue

    def __init__(
        self,
        http: HttpTransport,
        method: str,
        path: str,
        params: Optional[dict[str, Any]],
        give_back: Callable[[], None],
    ) -> None:
        self._http = http
        self._give_back = give_back  # its place among max_connections, until it ends
        self._method = method
        self._path = path
        self._params = params
        self._pid = os.getpid()
        self._body: Optional[bytes] = None
        self._response: Optional[requests.Response] = None
        self._reader: Optional[_Body] = None
        self._parser = SSEParser(http.limit)
        self._ready: list[bytes] = []
        self._ended = False
        self.closed = False
        self.requests_started = 0
        self.request_id: Optional[str] = None
        self.id = 0  # for the request layer's logs

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<HttpChannel {self._method} {self._path} {state}>"

    @property
    def _shown(self) -> str:
        return f"{self._method} {display_url(self._http.url(self._path))}"

    def send_json(self, payload: Mapping[str, Any]) -> None:
        """Keep the request: it goes out with the next ``recv_json`` (nothing is sent here)."""
        if self._response is not None:
            raise APIConnectionError("this HTTP stream is still being read")
        if self._method == "POST":
            if payload.get("generate") is False:
                raise ConfigurationError(
                    "generate: false (warm()) is WebSocket mode's: HTTP has no connection to "
                    "warm up (use transport='websocket', or leave warm() out over HTTP)"
                )
            body = {key: value for key, value in payload.items() if key != "type"}
            body["stream"] = True
            try:
                self._body = _json.dumpb(body)
            except (TypeError, ValueError) as error:
                raise ConfigurationError(
                    f"the request cannot be encoded as JSON: {error}"
                ) from error
        self._parser = SSEParser(self._http.limit)
        self._ready = []
        self._ended = False
        self.requests_started += 1

    def recv_json(self, timeout: float) -> Any:
        """The next event's JSON, within ``timeout`` seconds (the whole event, not each read)."""
        if self.closed:
            raise APIConnectionError("this HTTP stream is closed", request_id=self.request_id)
        deadline = time.monotonic() + timeout
        if self._response is None:
            try:
                self._start(deadline)
            except PreviousResponseNotFoundError as refused:
                return _as_error_event(refused)
        while not self._ready:
            if self._ended:
                self._drop()
                raise APIConnectionError(
                    "the server ended the HTTP stream before the response's terminal event",
                    request_id=self.request_id,
                )
            self._read(deadline, timeout)
        data = self._ready.pop(0)
        try:
            return decode(data)
        except ValueError as error:
            self._drop()
            raise ProtocolError(
                f"the server sent an event whose data is not valid JSON ({error})",
                request_id=self.request_id,
            ) from None

    def _start(self, deadline: float) -> None:
        response = self._http.send(
            self._method,
            self._path,
            params=self._params,
            body=self._body,
            stream=True,
            deadline=deadline,
        )
        self._response = response
        self.request_id = response.headers.get("x-request-id")
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            self._drop()
            raise ProtocolError(
                f"the server answered a streaming request with {kind or 'no content type'}, "
                "not text/event-stream",
                request_id=self.request_id,
            )
        self._reader = _Body(response, self._shown)

    def _read(self, deadline: float, timeout: float) -> None:
        reader = self._reader
        if reader is None:  # closed meanwhile
            raise APIConnectionError(
                f"the stream of {self._shown} was closed", request_id=self.request_id
            )
        try:
            chunk = reader.read(deadline)
        except APITimeoutError:
            self._drop()
            raise APITimeoutError(
                f"no whole event from the server for {timeout:g}s", request_id=self.request_id
            ) from None
        except APIError as error:
            self._drop()
            error._add_context(request_id=self.request_id)
            raise
        try:
            if chunk:
                self._ready.extend(data for _name, data in self._parser.feed(chunk))
            else:
                self._ended = True
                self._ready.extend(data for _name, data in self._parser.close())
        except SSETooLargeError as error:
            self._drop()
            raise ProtocolError(
                f"{error}, more than max_message_size (raise it if such events are expected)",
                request_id=self.request_id,
            ) from None

    def finish(self) -> None:
        """After the terminal event: the body's end, if it is already there, and the TCP
        connection back to the pool; else the connection is closed (the caller never waits
        for a server that keeps its body open)."""
        response, self._response = self._response, None
        reader, self._reader = self._reader, None
        self.closed = True
        self._give_back()
        if response is None:
            return
        if os.getpid() == self._pid and reader is not None:
            try:
                ended = self._ended
                deadline = time.monotonic() + _END_WAIT
                drained = 0
                while not ended and drained <= _READ:
                    piece = reader.read(deadline)
                    drained += len(piece)
                    ended = not piece
                if ended and response.raw.isclosed():
                    response.raw.release_conn()
                    return
            except APIError:
                pass  # not there in time, or broken: closing is all that is left
        response.close()

    def close(self) -> None:
        """Abandon: the socket is closed, never given back with a half-read body."""
        self._drop()

    def interrupt(self) -> None:
        """From another thread: wake the owner out of a blocking read of the body (it fails
        with ``APIConnectionError``); the owner then closes the channel as after any failure.
        Before the answer's headers there is no socket of its own to reach: the request then
        ends by its deadlines."""
        reader = self._reader
        sock = reader.socket if reader is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _drop(self) -> None:
        self.closed = True
        self._give_back()
        self._reader = None
        response, self._response = self._response, None
        if response is not None:
            response.close()


def _as_error_event(refused: APIStatusError) -> dict[str, Any]:
    """A refusal by HTTP status, as the ``error`` event the WebSocket server sends instead."""
    body = refused.body if isinstance(refused.body, Mapping) else {}
    error = body.get("error")
    fields = dict(error) if isinstance(error, Mapping) else {"message": refused.message}
    fields.setdefault("code", refused.code)
    fields["headers"] = dict(refused.headers)
    return {"type": "error", "status": refused.status_code, "error": fields}


def _read_error(error: Exception, shown: str) -> APIError:
    if isinstance(error, _TIMEOUTS):
        return APITimeoutError(f"{shown}: no answer in time")
    if isinstance(error, (http.client.IncompleteRead, OSError)):
        return APIConnectionError(f"{shown}: the connection was cut ({type(error).__name__})")
    if isinstance(error, (http.client.HTTPException, ValueError, *_CORRUPT)):
        return ProtocolError(f"{shown}: the body is not valid HTTP ({type(error).__name__})")
    return APIConnectionError(f"{shown}: the body could not be read ({type(error).__name__})")


def _mapped(error: Exception, shown: str, config: ClientConfig) -> APIError | ConfigurationError:
    """The oaiws error for what ``requests`` raised; never its text, which quotes the URL."""
    if isinstance(error, (APIError, ConfigurationError)):
        return error
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return APITimeoutError(
            f"connecting for {shown} took longer than connect_timeout={config.connect_timeout:g}s"
        )
    if isinstance(error, _TIMEOUTS):
        return APITimeoutError(f"{shown} timed out")
    if isinstance(error, requests.exceptions.SSLError):
        return APIConnectionError(
            f"TLS failed for {shown} (pass verify='/path/to/ca.pem' for a private CA)"
        )
    if isinstance(error, requests.exceptions.ProxyError):
        return APIConnectionError(f"the proxy refused {shown}")
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return ConfigurationError(f"invalid URL for {shown}")
    if isinstance(error, _CORRUPT):
        return ProtocolError(f"the answer to {shown} could not be decoded")
    if _dropped(error):
        return KeepAliveDropped(f"{shown} failed: the server closed the connection unanswered")
    return APIConnectionError(f"{shown} failed: {_root_cause(error)}")


def _causes(error: BaseException) -> list[BaseException]:
    """The chain below ``error`` (causes, contexts, urllib3's ``reason``), at most 16 deep."""
    found: list[BaseException] = []
    seen: Optional[BaseException] = error
    while seen is not None and len(found) < 16:
        found.append(seen)
        reason = getattr(seen, "reason", None)  # urllib3 wraps the cause in MaxRetryError
        seen = reason if isinstance(reason, BaseException) else (seen.__cause__ or seen.__context__)
    return found


def _dropped(error: BaseException) -> bool:
    """Whether the connection was closed or reset before any answer (a dropped keep-alive)."""
    return any(
        isinstance(cause, (http.client.RemoteDisconnected, ConnectionResetError))
        for cause in _causes(error)
    )


def _root_cause(error: BaseException) -> str:
    for cause in reversed(_causes(error)):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return type(_causes(error)[-1]).__name__


def _redirect_error(response: requests.Response, shown: str) -> APIStatusError:
    location = response.headers.get("location")
    try:
        target = display_url(location) if location else "an unnamed location"
    except ValueError:
        target = "an unreadable location"
    return APIStatusError(
        f"the server answered {shown} with a redirect (HTTP {response.status_code}) to "
        f"{target}; redirects are never followed, so the API key cannot travel to another "
        "address: set base_url to the final URL",
        status_code=response.status_code,
        headers=response.headers,
    )
