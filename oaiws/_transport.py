"""Which transport carries a request: the WebSocket pool, HTTP streaming, or, with
``transport="auto"``, WebSocket first and HTTP where WebSocket mode is not offered.

A request asks the ``Router`` for a channel (a pooled WebSocket ``Connection`` or a one-off
``HttpChannel``: both send a payload and receive events), and gives it back through the
router, which returns it to its pool or closes it.

``auto``: an upgrade answered with a status that means "no WebSocket mode here" (404, 405,
426, 501) sends the request over HTTP at once, in the same attempt (nothing was sent yet),
and later requests go straight to HTTP for ``REPROBE_AFTER`` seconds, after which WebSocket
mode is tried again (a server may gain it). So does a proxy that refuses to tunnel a plain
``ws://`` upgrade, since plain HTTP goes through it without a tunnel; a proxy's refusal of a
``wss://`` tunnel (HTTPS needs the same tunnel) or of its credentials (407) never falls back.
The first fallback is logged at WARNING, each one counted in ``http_fallbacks``. Other
refusals (401, 403, 429, 5xx) are real errors and never fall back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from ._config import ClientConfig, display_url
from ._connection import Connection
from ._handshake import ProxyRefusedError
from ._lanepool import LanePool
from ._mux import LaneChannel, LaneLease, LanesUnavailable
from ._pool import Pool
from ._stats import Stats
from .errors import APIStatusError

if TYPE_CHECKING:
    from ._http import HttpChannel, HttpTransport

    AnyChannel = Union[Connection, HttpChannel, LaneChannel]

__all__ = ["NO_WEBSOCKET_STATUSES", "REPROBE_AFTER", "Channel", "ChannelSource", "Router"]

logger = logging.getLogger("oaiws")

# Statuses of a refused upgrade that mean "this server has no WebSocket mode".
NO_WEBSOCKET_STATUSES = frozenset({404, 405, 426, 501})

# Seconds a client that fell back to HTTP waits before trying WebSocket mode again.
REPROBE_AFTER = 600.0


class Channel(Protocol):
    """What a request talks through (``Connection`` and ``HttpChannel`` are both one)."""

    request_id: Optional[str]
    requests_started: int
    last_response_id: Optional[str]

    @property
    def closed(self) -> bool: ...

    def send_json(self, payload: Any) -> None: ...

    def recv_json(self, timeout: float) -> Any: ...


class ChannelSource(Protocol):
    """Where a request gets its channel and gives it back."""

    def acquire(
        self, timeout: float, affinity: Optional[str], lease: Optional[LaneLease] = None
    ) -> AnyChannel: ...

    def release(self, channel: AnyChannel, *, hold: bool) -> None: ...

    def discard(self, channel: AnyChannel, reason: str, *, lost: bool) -> None: ...


class Router:
    """The client's ``ChannelSource``: WebSocket, HTTP, or WebSocket first (see the module)."""

    def __init__(
        self,
        config: ClientConfig,
        pool: Pool,
        http: Callable[[], HttpTransport],
        stats: Stats,
        lanes: Optional[LanePool] = None,
    ) -> None:
        self._mode = config.transport
        self.lanes = lanes
        self._url = display_url(config.websocket_url)
        # Plain HTTP goes through a proxy without a CONNECT tunnel; HTTPS needs one, as wss does.
        self._plain = config.websocket_url.lower().startswith("ws:")
        self.pool = pool
        self._http = http  # made on first use (Runtime.http)
        self._stats = stats
        self._fell_back_at: Optional[float] = None  # monotonic, the last fallback (auto)
        self._warned = False
        self._lock = threading.Lock()

    @property
    def over_http(self) -> bool:
        """Whether the next request goes over HTTP without trying WebSocket mode."""
        if self._mode == "http":
            return True
        fell_back_at = self._fell_back_at
        return (
            self._mode == "auto"
            and fell_back_at is not None
            and time.monotonic() - fell_back_at < REPROBE_AFTER
        )

    def acquire(
        self, timeout: float, affinity: Optional[str], lease: Optional[LaneLease] = None
    ) -> AnyChannel:
        if self.over_http:
            return self._http().channel(timeout)
        try:
            lanes = self.lanes
            if lanes is not None and not lanes.unsupported:
                try:
                    return lanes.acquire(timeout, affinity, lease)
                except LanesUnavailable:
                    pass  # found out meanwhile: the default pool serves it
            return self.pool.acquire(timeout, affinity)
        except APIStatusError as error:
            if self._mode != "auto" or error.status_code not in NO_WEBSOCKET_STATUSES:
                raise
            self._fall_back(f"the server answered the upgrade with HTTP {error.status_code}")
        except ProxyRefusedError as refused:
            if self._mode != "auto" or not self._plain or refused.proxy_status == 407:
                raise
            self._fall_back("a proxy refused the upgrade")
        return self._http().channel(timeout)

    def _fall_back(self, why: str) -> None:
        with self._lock:
            self._fell_back_at = time.monotonic()
            first, self._warned = not self._warned, True
        self._stats.add("http_fallbacks")
        message = (
            "oaiws: %s at %s: WebSocket mode is not available there, so requests go over HTTP "
            "streaming (tried again in %gs; transport='http' skips the attempt, "
            "transport='websocket' raises instead)"
        )
        if first:
            logger.warning(message, why, self._url, REPROBE_AFTER)
        else:
            logger.debug(message, why, self._url, REPROBE_AFTER)

    def release(self, channel: AnyChannel, *, hold: bool) -> None:
        if isinstance(channel, Connection):
            self.pool.release(channel, hold=hold)
        elif isinstance(channel, LaneChannel):
            assert self.lanes is not None  # a lane came from there
            self.lanes.release(channel)
        else:
            channel.finish()

    def discard(self, channel: AnyChannel, reason: str, *, lost: bool) -> None:
        if isinstance(channel, Connection):
            self.pool.discard(channel, reason, lost=lost)
        elif isinstance(channel, LaneChannel):
            assert self.lanes is not None
            self.lanes.discard(channel, reason, lost=lost)
        else:
            channel.close()


class HttpSource:
    """A ``ChannelSource`` of one fixed HTTP request (a background create, a retrieve)."""

    def __init__(
        self,
        http: HttpTransport,
        method: str,
        path: str,
        params: Optional[dict[str, Any]] = None,
    ) -> None:
        self._http = http
        self._method = method
        self._path = path
        self._params = params

    def acquire(
        self, timeout: float, affinity: Optional[str], lease: Optional[LaneLease] = None
    ) -> AnyChannel:
        return self._http.channel(timeout, self._method, self._path, self._params)

    def release(self, channel: AnyChannel, *, hold: bool) -> None:
        assert not isinstance(channel, (Connection, LaneChannel))
        channel.finish()

    def discard(self, channel: AnyChannel, reason: str, *, lost: bool) -> None:
        assert not isinstance(channel, (Connection, LaneChannel))
        channel.close()
