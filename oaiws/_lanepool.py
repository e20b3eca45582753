"""The pool of multiplexed connections behind ``Client(lanes=True)``.

Each request gets a lane of a ``MuxConnection`` (``_mux``) for its response. The rules:

- **Few sockets.** A request joins the busiest connection that can take it (fewer than
  ``MAX_ACTIVE`` responses, and a free lane: ``MAX_LANES`` names per connection); another
  connection is opened only when none can, up to ``max_connections``; past that, requests
  wait in line up to ``pool_timeout``.
- **Leases.** A conversation holds a ``LaneLease``: its turns run on the same lane, whose
  server-side cache holds its chain, without holding the connection between turns. When its
  connection is full it waits up to ``affinity_wait`` for room there before moving; a lease
  whose connection closed or retired moves (the turn replays, or continues from storage).
  When every lane of every connection is taken and no connection may be opened, the lane of
  the least recently used idle lease is taken back.
- **Rotation.** A connection retires ahead of ``max_connection_age`` (margin and jitter as in
  ``_pool``): it takes no new request, and closes when its last response ends. A connection
  with no request and no lease closes after ``idle_timeout`` (keeping ``min_connections``).
- **No lanes on the server.** The first request on each new connection probes (see
  ``_mux``). A server that refuses or ignores lanes turns them off for the client, with a
  warning; requests then use the default pool (``_pool``), and none is lost.
- **Fork safety.** In a child process the pool starts empty; inherited sockets are dropped
  without a word on them.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Callable, Optional

from ._config import ClientConfig, display_url
from ._connection import Connection
from ._forking import RESET_AT_FORK, reset_in_child
from ._mux import MAX_ACTIVE, Lane, LaneChannel, LaneLease, LanesUnavailable, MuxConnection
from ._pool import closed_error
from ._stats import Stats
from .errors import PoolTimeoutError

__all__ = ["LanePool"]

logger = logging.getLogger("oaiws.lanes")

_JITTER_FRACTION = 0.05


class LanePool:
    """Lanes over a bounded set of multiplexed connections (see the module docstring)."""

    def __init__(
        self,
        config: ClientConfig,
        stats: Stats,
        connect: Callable[[ClientConfig], Connection] = Connection.open,
    ) -> None:
        self._config = config
        self._stats = stats
        self._connect = connect
        self._rng = random.Random()
        self._closed = False
        self.unsupported = False  # the server has no lanes: the client stopped using them
        self._init_state()
        reset_in_child(self)

    def _init_state(self) -> None:
        # Re-entrant: a stream dropped in a reference cycle gives its lane back from a garbage
        # collection, which may run in a thread already holding the lock (a reader routing).
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._muxes: list[MuxConnection] = []
        self._opening = 0
        self._waiters: collections.deque[object] = collections.deque()  # the line, oldest first
        self._pid = os.getpid()

    # -- checkout ---------------------------------------------------------------------------

    def acquire(
        self, timeout: float, affinity: Optional[str], lease: Optional[LaneLease] = None
    ) -> LaneChannel:
        """A lane for one request (the lease's own when it can); raises ``PoolTimeoutError``
        after ``timeout`` seconds in line, ``ClientClosedError``, the errors of a handshake,
        or ``LanesUnavailable`` once the server was found to have no lanes.

        Requests wait in line, first come first served: a newcomer never takes a lane, nor a
        connection's room for one more response, while an older request waits. At its turn,
        a conversation's turn takes its own lane (kept for it) when its connection has room,
        or waits for room there up to ``affinity_wait`` (holding the line that long at most)
        before moving.
        """
        self._check_fork()
        started = time.monotonic()
        deadline = started + timeout
        closing: list[MuxConnection] = []
        ticket: Optional[object] = None
        try:
            with self._lock:
                try:
                    while True:
                        if self._closed:
                            raise closed_error()
                        if self.unsupported:
                            raise LanesUnavailable("the server has no lanes")
                        now = time.monotonic()
                        closing.extend(self._sweep(now))
                        channel: Optional[LaneChannel] = None
                        own_wait = False
                        if not self._waiters or self._waiters[0] is ticket:  # our turn
                            channel, own_wait = self._own_lane(lease, now, started)
                            if channel is None and not own_wait:
                                channel = self._any_lane(affinity, now)
                                if channel is None and not self._coming():
                                    if self._opening + len(self._muxes) < self._max:
                                        self._opening += 1
                                        break
                                    channel = self._evict(now)
                        if channel is not None:
                            return self._handed(channel, lease, affinity)
                        if ticket is None:
                            ticket = object()
                            self._waiters.append(ticket)
                        remaining = deadline - now
                        if remaining <= 0:
                            self._stats.add("requests_timeouts")
                            raise PoolTimeoutError(
                                f"no lane became free within pool_timeout={timeout:g}s "
                                f"({len(self._muxes)} connections of at most {self._max}, "
                                f"each with at most {MAX_ACTIVE} responses at once)"
                            )
                        if own_wait:
                            remaining = min(remaining, self._config.affinity_wait - (now - started))
                        self._changed.wait(max(remaining, 0.001))
                finally:
                    if ticket is not None:
                        self._waiters.remove(ticket)
                        self._changed.notify_all()  # the next in line may go
        finally:
            for mux in closing:
                mux.close()
        return self._open(lease, affinity)

    def _coming(self) -> bool:
        """A connection is being opened or probed: it will take up to ``MAX_ACTIVE``
        requests within a round trip, so waiting beats opening yet another."""
        return self._opening > 0 or any(
            mux.state == "probing" and not mux.unusable for mux in self._muxes
        )

    @property
    def _max(self) -> int:
        return self._config.max_connections

    def _handed(
        self, channel: LaneChannel, lease: Optional[LaneLease], affinity: Optional[str]
    ) -> LaneChannel:
        """Bookkeeping of a lane given to a request (under the lock)."""
        if lease is not None:
            channel.lane.lease = weakref.ref(lease)
            lease.lane = channel.lane
        self._stats.add("lane_requests")
        self._stats.add("checkouts")
        self._count_affinity(channel, affinity)
        return channel

    def _count_affinity(self, channel: LaneChannel, affinity: Optional[str]) -> None:
        """A continuation's lane holds its previous response (a hit) or not (a miss)."""
        if affinity is not None:
            hit = channel.lane.last_response_id == affinity
            self._stats.add("lane_hits" if hit else "lane_misses")

    def _own_lane(
        self, lease: Optional[LaneLease], now: float, started: float
    ) -> tuple[Optional[LaneChannel], bool]:
        """A conversation's own lane when it can run there now; else whether to wait for room
        there (its connection is full: up to ``affinity_wait``). A lease whose lane is gone,
        retiring or full for too long lets it go: the chain moves."""
        if lease is None or lease.lane is None:
            return None, False
        lane = lease.lane
        mux = lane.mux
        if lane.leased_by() is lease and not lane.busy and mux.accepting(now):
            if mux.active < MAX_ACTIVE:
                return mux.take(lane), False
            if now - started < self._config.affinity_wait:
                return None, True
        lease.lane = None
        return None, False

    def _any_lane(self, affinity: Optional[str], now: float) -> Optional[LaneChannel]:
        """A lane for a request that has none of its own: the idle lane whose cache holds
        ``affinity`` (a chain the caller continues itself), else one on the busiest
        connection with room (few sockets)."""
        candidates = [
            mux for mux in self._muxes if mux.active < MAX_ACTIVE and mux.accepting(now)
        ]
        if affinity is not None:
            for mux in candidates:
                for lane in mux.lanes.values():
                    if (
                        lane.last_response_id == affinity
                        and not lane.busy
                        and lane.leased_by() is None
                    ):
                        return mux.take(lane)
        for mux in sorted(candidates, key=lambda m: -m.live):
            free = mux.free_lane()
            if free is not None:
                return mux.take(free)
        return None

    def _evict(self, now: float) -> Optional[LaneChannel]:
        """Every lane is busy or kept and no connection may be opened: take back the lane of
        the least recently used idle conversation, on a connection with room."""
        oldest: Optional[Lane] = None
        for mux in self._muxes:
            if mux.active >= MAX_ACTIVE or not mux.accepting(now):
                continue
            for lane in mux.lanes.values():
                if not lane.busy and (oldest is None or lane.last_used < oldest.last_used):
                    oldest = lane
        if oldest is None:
            return None
        previous = oldest.leased_by()
        if previous is not None:
            previous.lane = None
            self._stats.add("lane_evictions")
        oldest.lease = None
        oldest.last_response_id = None
        return oldest.mux.take(oldest)

    def _open(self, lease: Optional[LaneLease], affinity: Optional[str]) -> LaneChannel:
        """Open a connection (outside the lock) and probe lanes on it with this request."""
        try:
            conn = self._connect(self._config)
        except BaseException:
            with self._lock:
                self._opening -= 1
                self._changed.notify_all()
            self._stats.add("handshake_errors")
            raise
        self._stats.add("connections_opened")
        with self._lock:
            self._opening -= 1
            if self._closed or self._pid != os.getpid():
                conn.close()
                raise closed_error()
            mux = MuxConnection(
                conn,
                self._config,
                self._lock,
                retire_at=self._retire_at(conn),
                on_change=self._on_change,
                on_lanes_missing=self._on_lanes_missing,
            )
            self._muxes.append(mux)
            channel = self._handed(mux.take(mux.new_lane()), lease, affinity)
        mux.start()
        logger.debug(
            "lane connection #%d opened to %s", mux.id, display_url(self._config.websocket_url)
        )
        return channel

    def _retire_at(self, conn: Connection) -> float:
        config = self._config
        jitter = self._rng.uniform(0.0, _JITTER_FRACTION * config.max_connection_age)
        return conn.created_at + config.max_connection_age - config.effective_age_margin - jitter

    # -- return -----------------------------------------------------------------------------

    def release(self, channel: LaneChannel) -> None:
        """The request read its response to the end."""
        self._give_back(channel, abandoned=False)

    def discard(self, channel: LaneChannel, reason: str, *, lost: bool) -> None:
        """The request ended otherwise: abandoned mid-response unless nothing more will come
        on its lane (an error event ended it, or the connection is gone)."""
        # Whatever ``lost`` says: a lane's read may fail while its connection is sound (an
        # interruption, a timeout); only a broken connection leaves nothing behind.
        abandoned = not channel.settled and not channel.mux.unusable
        if abandoned:
            self._stats.add("lanes_abandoned")
            logger.debug("%r: %s", channel, reason)
        self._give_back(channel, abandoned=abandoned)

    def _give_back(self, channel: LaneChannel, *, abandoned: bool) -> None:
        mux = channel.mux
        close = False
        with self._lock:
            lane = channel.lane
            if lane.channel is channel:
                mux.give_back(lane, abandoned=abandoned)
            if mux.should_close() and mux in self._muxes:
                self._muxes.remove(mux)
                close = True
            self._changed.notify_all()
        if close:
            self._close_mux(mux)

    # -- care (from the readers, under the lock) --------------------------------------------

    def _on_change(self, mux: MuxConnection) -> None:
        """A connection's state changed, or its reader looks after it while quiet."""
        now = time.monotonic()
        mux.accepting(now)  # marks it retiring once of age
        idle_timeout = self._config.idle_timeout
        if (
            idle_timeout is not None
            and mux.state == "lanes"
            and mux.live == 0
            and mux.active == 0
            and now - mux.idle_since >= idle_timeout
            and len(self._muxes) > self._config.min_connections
            and not any(lane.leased_by() is not None for lane in mux.lanes.values())
        ):
            mux.retiring = True
        if (mux.unusable or mux.should_close()) and mux in self._muxes:
            # Broken (its requests are told as they read) or done: it no longer counts
            # against max_connections. Called by the reader, which closes its own socket.
            self._muxes.remove(mux)
            mux.closed = True
            self._stats.add("connections_closed")
        self._changed.notify_all()

    def _sweep(self, now: float) -> list[MuxConnection]:
        """Connections to close now (broken or retired, nobody on them); under the lock."""
        done = []
        for mux in self._muxes:
            mux.accepting(now)  # marks it retiring once of age
            if mux.should_close():
                done.append(mux)
        for mux in done:
            self._muxes.remove(mux)
            self._stats.add("connections_closed")
        return done

    def _on_lanes_missing(self, mux: MuxConnection, how: str) -> None:
        first = not self.unsupported
        self.unsupported = True
        self._stats.add("lane_fallbacks")
        message = (
            "oaiws: the server at %s %s lanes (stream_id), so this client goes on without "
            "them: one response per connection, as with lanes=False"
        )
        url = display_url(self._config.websocket_url)
        if first:
            logger.warning(message, url, how)
        else:
            logger.debug(message, url, how)
        self._changed.notify_all()

    def _close_mux(self, mux: MuxConnection) -> None:
        mux.close()
        self._stats.add("connections_closed")

    # -- the rest ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Gauges: ``lane_connections``, ``lanes_active``, ``lanes_leased``,
        ``lanes_waiting``."""
        with self._lock:
            return {
                "lane_connections": len(self._muxes),
                "lanes_waiting": len(self._waiters),
                "lanes_active": sum(mux.active for mux in self._muxes),
                "lanes_leased": sum(
                    1
                    for mux in self._muxes
                    for lane in mux.lanes.values()
                    if lane.leased_by() is not None
                ),
            }

    def lane_stats(self) -> list[dict[str, Any]]:
        """One entry per lane of every open connection."""
        with self._lock:
            return [
                {
                    "connection": mux.id,
                    "stream_id": lane.name,
                    "state": mux.state if not mux.retiring else "retiring",
                    "busy": lane.channel is not None,
                    "abandoned": lane.abandoned,
                    "leased": lane.leased_by() is not None,
                    "requests": lane.requests,
                    "idle_seconds": round(time.monotonic() - lane.last_used, 3),
                }
                for mux in self._muxes
                for lane in mux.lanes.values()
            ]

    def close(self) -> None:
        """Close idle connections now, busy ones when their last response ends."""
        closing: list[MuxConnection] = []
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for mux in self._muxes:
                mux.retiring = True
                if mux.should_close():
                    closing.append(mux)
            for mux in closing:
                self._muxes.remove(mux)
            self._changed.notify_all()
        for mux in closing:
            self._close_mux(mux)

    # -- fork -------------------------------------------------------------------------------

    def _check_fork(self) -> None:
        if not RESET_AT_FORK and os.getpid() != self._pid:
            self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        inherited = self._muxes
        self._init_state()
        for mux in inherited:
            mux.abandon()
