"""What a ``Client``, its streams and its conversations share: one object, so that none of
them reaches into another's private members.

A ``Runtime`` owns the resolved configuration, the WebSocket pool, the HTTP transport, the
router that chooses between them, and the statistics; it knows whether the client was
closed, and prepares a request (its fields and its ``timeout=`` checked, before anything is
sent).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ._config import ClientConfig
from ._lanepool import LanePool
from ._payload import build_payload
from ._pool import Pool, closed_error
from ._stats import Stats
from ._transport import Router
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._http import HttpTransport

__all__ = ["Runtime"]


class Runtime:
    """The configuration, transports and statistics of one client, and its open/closed state."""

    __slots__ = ("_closed", "_http", "_lock", "config", "lanes", "pool", "router", "stats")

    def __init__(self, config: ClientConfig, pool: Optional[Pool] = None) -> None:
        self.config = config
        self.stats = pool.counters if pool is not None else Stats()
        # With lanes, the default pool only serves a server found to have none: it opens
        # nothing ahead of need (min_connections is the lane pool's, see docs/lanes.md).
        pool_config = dataclasses.replace(config, min_connections=0) if config.lanes else config
        self.pool = pool if pool is not None else Pool(pool_config, stats=self.stats)
        self._http: Optional[HttpTransport] = None
        self._lock = threading.Lock()
        self._closed = False
        # Lanes (many responses per connection), when asked for; the pool stays for servers
        # found to have none.
        self.lanes = LanePool(config, self.stats) if config.lanes else None
        self.router = Router(config, self.pool, lambda: self.http, self.stats, self.lanes)

    @property
    def http(self) -> HttpTransport:
        """The HTTP transport, made on first use: a client that never leaves WebSocket mode
        never imports ``requests`` (a third of the import time of the package)."""
        http = self._http
        if http is None:
            from ._http import HttpTransport  # noqa: PLC0415 - requests only when needed

            with self._lock:
                if self._http is None:
                    if self._closed:
                        raise closed_error()
                    self._http = HttpTransport(self.config, self.stats)
                http = self._http
        return http

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise closed_error()

    def prepare(
        self, fields: Mapping[str, Any], timeout: Optional[float]
    ) -> tuple[dict[str, Any], Optional[float]]:
        """The ``response.create`` event for ``fields`` and the call's timeout in seconds,
        both checked; raises ``ConfigurationError`` (or ``ClientClosedError``) before any I/O."""
        self.check_open()
        if self.lanes is not None and "stream_id" in fields and fields["stream_id"] is not None:
            raise ConfigurationError(
                "with lanes=True the client names the lanes itself: remove stream_id"
            )
        payload = build_payload(fields)
        seconds = self.check_timeout(timeout)
        self.config.require_api_key()
        return payload, seconds

    @staticmethod
    def check_timeout(timeout: Any) -> Optional[float]:
        """A call's ``timeout=``: ``None``, or a positive finite number of seconds."""
        if timeout is None:
            return None
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError("timeout must be a positive number of seconds or None")
        return float(timeout)

    def close(self) -> None:
        """Close the pool; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.pool.close()
        if self.lanes is not None:
            self.lanes.close()
        with self._lock:
            http = self._http
        if http is not None:
            http.close()
