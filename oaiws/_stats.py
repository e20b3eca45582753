"""The client's statistics: one object that the pool and the request layer both count into.

Counters only add up; the gauges (connections open, idle, waiting, ...) are read from the
pool's state when a snapshot is taken. ``Client.pool_stats()`` returns the snapshot, and
the README documents every key.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["COUNTERS", "Stats"]

COUNTERS = (
    "connections_opened",
    "connections_closed",
    "connections_expired",
    "connections_discarded",
    "connections_lost",
    "handshake_errors",
    "checkouts",
    "reuses",
    "requests_wait_ms",
    "requests_timeouts",
    "retries",
    "resends",
    "affinity_hits",
    "affinity_misses",
    "affinity_holds",
    "affinity_holds_preempted",
    "affinity_holds_released",
    "replays",
    "maintenance_errors",
    "http_requests",
    "http_fallbacks",
    "lane_requests",
    "lane_hits",
    "lane_misses",
    "lane_evictions",
    "lane_fallbacks",
    "lanes_abandoned",
    "steers_sent",
)


class Stats:
    """Thread-safe counters. Any layer may count; its own lock makes every addition whole.

    The pool counts while holding its own lock, so the order is always pool lock, then this
    one; nothing here calls back out, so the two can never deadlock.
    """

    __slots__ = ("_counters", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def add_checkout(self, *, reused: bool, affinity_hit: Any) -> None:
        """One connection handed to a request: ``affinity_hit`` is ``None`` when the request
        named no previous response, else whether it got the connection that holds it."""
        with self._lock:
            counters = self._counters
            counters["checkouts"] += 1
            if reused:
                counters["reuses"] += 1
            if affinity_hit is not None:
                counters["affinity_hits" if affinity_hit else "affinity_misses"] += 1

    def counters(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counters)

    def reset(self) -> None:
        """After a fork: the child starts from zero, with a lock of its own."""
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
