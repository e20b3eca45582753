"""Opening one WebSocket: TLS, proxy, the whole-upgrade deadline, redirect refusal, and the
mapping of everything that can go wrong to the documented exceptions.

``open_websocket(config)`` returns the upgraded ``websocket-client`` socket and the
``x-request-id`` of the upgrade; ``Connection.open`` wraps it. Every failure, whatever
library or system call raised it, leaves through ``_mapped_errors`` as an ``oaiws`` error:
``APIStatusError`` subclasses for a refused upgrade, ``APITimeoutError`` for a slow one,
``APIConnectionError`` for the network, ``ProtocolError`` for a server that does not speak
WebSocket, ``ConfigurationError`` for a bad URL or CA bundle.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

import websocket

from ._config import ClientConfig, display_url
from ._frames import decode
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    OAIWSError,
    ProtocolError,
    error_from_handshake,
)

__all__ = ["TIMEOUT_ERRORS", "ProxyRefusedError", "drop", "open_websocket"]

logger = logging.getLogger("oaiws.connection")

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# websocket-client names a refused CONNECT's status in its message ("... status: 403").
_PROXY_STATUS = re.compile(r"status:?\s*(\d{3})")

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    websocket.WebSocketTimeoutException,
    socket.timeout,
    TimeoutError,
)


class ProxyRefusedError(APIConnectionError):
    """The proxy refused to carry the upgrade (documented as ``APIConnectionError``).
    ``proxy_status``: the status the proxy answered, when it gave one."""

    proxy_status: Optional[int] = None


def open_websocket(config: ClientConfig) -> tuple[websocket.WebSocket, Optional[str]]:
    """Open a WebSocket and complete the upgrade within ``config.connect_timeout``.

    Returns the socket and the upgrade's ``x-request-id`` (``None`` if the server sent
    none). Raises only ``oaiws`` errors (see the module docstring).
    """
    headers = config.handshake_headers()
    url = config.websocket_url
    shown = display_url(url)
    options = _connect_options(config, headers)
    sslopt: Optional[dict[str, Any]] = None
    if url.lower().startswith("wss:"):
        try:
            sslopt = {"context": _ssl_context(config.verify)}
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the CA bundle {config.verify!r}: {exc}") from exc

    started = time.monotonic()
    # websocket-client validates the UTF-8 of every text frame in pure Python, which costs
    # more CPU than everything else on the receive path together. Every text frame is then
    # decoded as JSON, and that decoder rejects invalid UTF-8 in C (``_json.loads``), so
    # the frame is still refused, at a fraction of the cost.
    ws = websocket.WebSocket(sslopt=sslopt, enable_multithread=True, skip_utf8_validation=True)
    with _mapped_errors(ws, shown, config):
        # websocket-client applies connect_timeout to each socket operation; the watchdog
        # bounds the whole upgrade, so a server that trickles its answer cannot stretch it.
        watchdog = _HandshakeWatchdog(ws, config.connect_timeout)
        try:
            ws.connect(url, **options)  # type: ignore[no-untyped-call]
        except Exception:
            if watchdog.stop():
                raise _HandshakeDeadlineError from None
            raise
        if watchdog.stop():
            drop(ws)
            raise _HandshakeDeadlineError
        # websocket-client before 1.9.2 reports a redirect it was told not to follow as a
        # successful connect: refuse it here (nothing was sent to its target).
        redirect = _redirect_status(ws)
        if redirect is not None:
            drop(ws)
            raise _redirect_error(redirect[0], redirect[1], shown)
    response_headers: Mapping[str, str] = ws.headers or {}
    logger.debug("opened a WebSocket to %s in %.3fs", shown, time.monotonic() - started)
    return ws, response_headers.get("x-request-id")


def _connect_options(config: ClientConfig, headers: dict[str, str]) -> dict[str, Any]:
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
    return options


@contextlib.contextmanager
def _mapped_errors(ws: websocket.WebSocket, shown: str, config: ClientConfig) -> Iterator[None]:
    """Turn whatever an upgrade raises into the documented exception, quoting no secret."""
    try:
        yield
    except OAIWSError:
        raise  # already mapped (a refused redirect)
    except websocket.WebSocketBadStatusException as exc:
        # Everything useful (status, body, headers) is copied into the error; the original
        # text is dropped because it quotes every response header, cookies included.
        raise error_from_handshake(
            exc.status_code, _decode_body(exc.resp_body), exc.resp_headers or {}
        ) from None
    except TIMEOUT_ERRORS as exc:
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
        refused = ProxyRefusedError(f"the proxy refused the connection to {shown}: {exc}")
        found = _PROXY_STATUS.search(str(exc))
        refused.proxy_status = int(found.group(1)) if found else None
        raise refused from exc
    except websocket.WebSocketException as exc:
        redirect = _redirect_status(ws)
        if redirect is not None:
            raise _redirect_error(redirect[0], redirect[1], shown) from None
        raise ProtocolError(f"the WebSocket upgrade with {shown} failed: {exc}") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise APIConnectionError(f"cannot connect to {shown}: {reason}") from exc
    except _WatchdogStartError as exc:
        raise APIConnectionError(
            f"cannot open a WebSocket to {shown}: the handshake's deadline thread could not "
            f"start ({exc.__cause__})"
        ) from exc
    except Exception as exc:
        # The URL was validated with the options, so anything else websocket-client raises
        # (a value, index, key or decoding error in its parser) is the server's answer.
        raise ProtocolError(
            f"the server's answer to the WebSocket upgrade at {shown} could not be read "
            f"({type(exc).__name__})"
        ) from exc


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
        return decode(body)
    except ValueError:  # not JSON, or nested too deep: kept as text
        return body.decode("utf-8", errors="replace")


class _HandshakeDeadlineError(TimeoutError):
    """The whole upgrade outlived connect_timeout (mapped to ``APITimeoutError``)."""


class _WatchdogStartError(Exception):
    """The watchdog's timer thread could not start (mapped to ``APIConnectionError``)."""


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
        try:
            self._arm(seconds)
        except RuntimeError as exc:  # "can't start new thread"
            raise _WatchdogStartError from exc

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
                try:
                    self._arm(self._RECHECK)
                except RuntimeError:
                    # No thread for the next look: websocket-client's own per-operation
                    # timeouts (connect_timeout each) still bound the upgrade.
                    logger.debug("oaiws: the handshake watchdog could not re-arm")
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


def drop(ws: websocket.WebSocket) -> None:
    """Close the socket at once, without a close handshake."""
    with contextlib.suppress(OSError):
        ws.shutdown()  # type: ignore[no-untyped-call]


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
