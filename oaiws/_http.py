"""The HTTP half, over ``requests``: streaming a response as server-sent events when WebSocket
mode is not available, and the REST calls (retrieve, delete, cancel, input items).

``HttpTransport`` owns one ``requests.Session`` per client (its connection pool sized to
``max_connections``, replaced in a forked child), and turns everything ``requests`` and
``urllib3`` can raise into the documented exceptions: an HTTP error status into the
``APIStatusError`` subclass of that status, a redirect into an ``APIStatusError`` that is never
followed (the key never travels to another origin), a network failure into
``APIConnectionError``, a timeout into ``APITimeoutError``, a body that is not the protocol into
``ProtocolError``. Messages show URLs without their query string.

``HttpChannel`` is one streaming request, shaped like a WebSocket ``Connection`` for the request
layer (``send_json`` then ``recv_json`` per event), so a request reads the same ``Event`` objects
whatever carried them.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from . import _json
from ._config import ClientConfig, display_url
from ._frames import decode
from ._sse import SSEParser, SSETooLargeError
from ._stats import Stats
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    PoolTimeoutError,
    ProtocolError,
    error_from_status,
)

__all__ = ["HttpChannel", "HttpTransport", "KeepAliveDropped"]

logger = logging.getLogger("oaiws.http")

# One read of a streaming body takes whatever has arrived, up to this much.
_READ = 65536

# After the terminal event a server ends the body; a well-behaved one has at most its final
# chunk marker left. More than this is not worth reading to keep the connection.
_DRAIN_LIMIT = 65536

_TIMEOUTS = (
    requests.exceptions.Timeout,
    urllib3.exceptions.TimeoutError,
    TimeoutError,
)


class KeepAliveDropped(APIConnectionError):
    """The server closed (or reset) the connection before answering: most likely a kept-alive
    connection it had dropped while idle, which a new connection cures (documented as
    ``APIConnectionError``; the retry policy retries it without a pause)."""


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
        self._closed = False
        parts = urlsplit(config.base_url)
        self._base = (parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query)
        _live_transports.add(self)

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # requests' own retries stay off: the retry policy is oaiws's (_retry).
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=self._config.max_connections, max_retries=0
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.verify = self._config.verify
        return session

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
        user = ""
        if proxy.username is not None:
            user = quote(proxy.username, safe="") + ":" + quote(proxy.password or "", safe="") + "@"
        address = f"http://{user}{proxy.host}:{proxy.port}"
        if proxy.scheme != "http":
            address = f"{proxy.scheme}://{user}{proxy.host}:{proxy.port}"
        return {"http": address, "https": address}

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        body: Optional[bytes] = None,
        stream: bool,
        read_timeout: float,
    ) -> requests.Response:
        """One HTTP request; returns a 2xx response (its body not read yet).

        Raises the ``APIStatusError`` subclass of an error status (the body read, bounded),
        an ``APIStatusError`` for a redirect (never followed), ``APITimeoutError``,
        ``APIConnectionError`` and ``ConfigurationError`` (no API key).
        """
        if self._pid != os.getpid():
            self._after_fork_in_child()
        headers = self._config.handshake_headers()
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = self.url(path)
        shown = f"{method} {display_url(url)}"
        self._stats.add("http_requests")
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                stream=True,  # bodies are read here, bounded, never at once by requests
                timeout=(self._config.connect_timeout, read_timeout),
                allow_redirects=False,  # the credentials never follow a redirect
                proxies=self._proxies(url),
                # Explicit, so that a CA bundle named in the environment (REQUESTS_CA_BUNDLE)
                # never overrides a verify= that names one (requests does that for None).
                verify=self._config.verify,
            )
        except Exception as error:
            raise _mapped(error, shown, self._config) from error
        status = response.status_code
        if status < 300:
            return response
        try:
            if status < 400:
                raise _redirect_error(response, shown)
            raise error_from_status(
                status, self._bounded_body(response, shown), response.headers, action=shown
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
        read_timeout: Optional[float] = None,
    ) -> Any:
        """A REST call's JSON answer (an empty body gives ``None``); one try, mapped errors."""
        body = None if payload is None else _json.dumpb(payload)
        shown = f"{method} {display_url(self.url(path))}"
        give_back = self.take_slot(self._config.pool_timeout)
        try:
            response = self.send(
                method,
                path,
                params=params,
                body=body,
                stream=False,
                read_timeout=read_timeout or self._config.read_timeout,
            )
            try:
                data = self._bounded_body(response, shown)
            finally:
                response.close()
        finally:
            give_back()
        if isinstance(data, str):
            raise ProtocolError(f"the answer to {shown} is not JSON")
        return data

    def _bounded_body(self, response: requests.Response, shown: str) -> Any:
        """The body decoded as JSON (text when it is not JSON), at most max_message_size."""
        limit = self._config.max_message_size
        try:
            raw = response.raw.read(limit + 1, decode_content=True)
        except Exception as error:
            raise _mapped(error, shown, self._config) from error
        if len(raw) > limit:
            raise ProtocolError(
                f"the answer to {shown} is larger than max_message_size={limit}",
                request_id=response.headers.get("x-request-id"),
            )
        if not raw:
            return None
        try:
            return decode(raw)
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    # -- channels --------------------------------------------------------------------------

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
        self._closed = True
        self._session.close()


class HttpChannel:
    """One request streamed over HTTP, read like a WebSocket connection: ``send_json`` gives the
    payload (``POST``: the body, with ``stream: true``); the first ``recv_json`` sends it and
    every call returns the next event's JSON.

    A stream read to its terminal event gives its TCP connection back to the session's pool
    (``finish``); any other end closes it (``close``), so a half-read body is never reused.
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
        self._body: Optional[bytes] = None
        self._response: Optional[requests.Response] = None
        self._chunks: Optional[Iterator[bytes]] = None
        self._parser = SSEParser(http._config.max_message_size)
        self._ready: list[tuple[str, bytes]] = []
        self._ended = False
        self._timeout_set: Optional[float] = None
        self.closed = False
        self.requests_started = 0
        self.request_id: Optional[str] = None
        self.id = 0  # for the request layer's logs

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<HttpChannel {self._method} {self._path} {state}>"

    def send_json(self, payload: Mapping[str, Any]) -> None:
        """Keep the request: it goes out with the first ``recv_json`` (nothing is sent here)."""
        if self._method == "POST":
            body = {key: value for key, value in payload.items() if key != "type"}
            body["stream"] = True
            try:
                self._body = _json.dumpb(body)
            except (TypeError, ValueError) as error:
                raise ConfigurationError(
                    f"the request cannot be encoded as JSON: {error}"
                ) from error
        self.requests_started += 1

    def recv_json(self, timeout: float) -> Any:
        """The next event's JSON, within ``timeout`` seconds (the whole event, not each read)."""
        if self.closed:
            raise APIConnectionError("this HTTP stream is closed", request_id=self.request_id)
        deadline = time.monotonic() + timeout
        if self._response is None:
            self._start(timeout)
        while not self._ready:
            if self._ended:
                self._drop()
                raise APIConnectionError(
                    "the server ended the HTTP stream before the response's terminal event",
                    request_id=self.request_id,
                )
            self._read(deadline, timeout)
        _name, data = self._ready.pop(0)
        try:
            return decode(data)
        except ValueError as error:
            self._drop()
            raise ProtocolError(
                f"the server sent an event whose data is not valid JSON ({error})",
                request_id=self.request_id,
            ) from None

    def _start(self, timeout: float) -> None:
        params = self._params
        response = self._http.send(
            self._method,
            self._path,
            params=params,
            body=self._body,
            stream=True,
            read_timeout=timeout,
        )
        self._response = response
        self._timeout_set = timeout
        self.request_id = response.headers.get("x-request-id")
        kind = response.headers.get("content-type", "")
        if not kind.startswith("text/event-stream"):
            self._drop()
            raise ProtocolError(
                f"the server answered a streaming request with {kind or 'no content type'}, "
                "not text/event-stream",
                request_id=self.request_id,
            )
        raw = response.raw
        if raw.chunked and hasattr(raw, "read_chunked"):
            self._chunks = raw.read_chunked(decode_content=True)
        else:
            self._chunks = _reads(raw)

    def _read(self, deadline: float, timeout: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._drop()
            raise APITimeoutError(
                f"no whole event from the server for {timeout:g}s", request_id=self.request_id
            )
        self._set_timeout(remaining)
        assert self._chunks is not None
        try:
            chunk = next(self._chunks, b"")
        except Exception as error:
            self._drop()
            if isinstance(error, _TIMEOUTS) or isinstance(
                getattr(error, "__context__", None), _TIMEOUTS
            ):
                raise APITimeoutError(
                    f"no event from the server for {timeout:g}s", request_id=self.request_id
                ) from error
            raise APIConnectionError(
                f"the HTTP stream was cut ({type(error).__name__})", request_id=self.request_id
            ) from error
        try:
            if chunk:
                self._ready.extend(self._parser.feed(chunk))
            else:
                self._ended = True
                self._ready.extend(self._parser.close())
        except SSETooLargeError as error:
            self._drop()
            raise ProtocolError(
                f"{error}, more than max_message_size (raise it if such events are expected)",
                request_id=self.request_id,
            ) from None

    def _set_timeout(self, seconds: float) -> None:
        # The socket's timeout bounds one read; shrink it when an event's time runs short, as
        # the WebSocket connection does (one system call, only then).
        current = self._timeout_set
        if current is not None and seconds >= current / 2:
            return
        response = self._response
        connection = getattr(getattr(response, "raw", None), "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)
            self._timeout_set = seconds

    def finish(self) -> None:
        """After the terminal event: read the body's end and give the connection back."""
        response, self._response = self._response, None
        self.closed = True
        self._give_back()
        if response is None:
            return
        try:
            drained = 0
            if not self._ended and self._chunks is not None:
                for chunk in self._chunks:
                    drained += len(chunk)
                    if drained > _DRAIN_LIMIT:
                        break
            if drained <= _DRAIN_LIMIT and response.raw.isclosed():
                response.raw.release_conn()
                return
        except Exception:
            logger.debug("the end of an HTTP stream could not be read", exc_info=True)
        response.close()

    def close(self) -> None:
        """Abandon: the socket is closed, never given back with a half-read body."""
        self._drop()

    def _drop(self) -> None:
        self.closed = True
        self._give_back()
        response, self._response = self._response, None
        if response is not None:
            response.close()


def _reads(raw: Any) -> Iterator[bytes]:
    """A body that is not chunked (delimited by its length or by the close), in the pieces
    that arrive: one read never waits for more than is there."""
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 1.26: the http.client response underneath has it
        read1 = raw._fp.read1
    while True:
        chunk = read1(_READ)
        if not chunk:
            return
        yield chunk


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
    if _dropped(error):
        return KeepAliveDropped(f"{shown} failed: the server closed the connection unanswered")
    return APIConnectionError(f"{shown} failed: {_root_cause(error)}")


def _dropped(error: BaseException) -> bool:
    """Whether the connection was closed or reset before any answer (a dropped keep-alive)."""
    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, (http.client.RemoteDisconnected, ConnectionResetError)):
            return True
        reason = getattr(seen, "reason", None)  # urllib3 wraps the cause in MaxRetryError
        seen = reason if isinstance(reason, BaseException) else (seen.__cause__ or seen.__context__)
    return False


def _root_cause(error: BaseException) -> str:
    seen: BaseException = error
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
    return type(seen).__name__


def _redirect_error(response: requests.Response, shown: str) -> APIStatusError:
    location = response.headers.get("location")
    target = display_url(location) if location else "an unnamed location"
    return APIStatusError(
        f"the server answered {shown} with a redirect (HTTP {response.status_code}) to "
        f"{target}; redirects are never followed, so the API key cannot travel to another "
        "address: set base_url to the final URL",
        status_code=response.status_code,
        headers=response.headers,
    )


_live_transports: weakref.WeakSet[HttpTransport] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for transport in list(_live_transports):
        transport._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
