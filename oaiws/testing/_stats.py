"""The emulator's counters: incremented by the server loop, read from any thread."""

from __future__ import annotations

import threading
from typing import Union

Number = Union[int, float]

# Every key, documented in docs/emulator.md. Fixed up front so a reader can rely on a key
# being present (zero) before the first event of its kind.
STAT_KEYS = (
    "handshakes",
    "refused_upgrades",
    "websocket_refused",
    "connections_open",
    "connections_total",
    "requests",
    "responses_completed",
    "responses_failed",
    "responses_incomplete",
    "warmups",
    "background_started",
    "background_cancelled",
    "cache_hits",
    "cache_misses",
    "hydrations",
    "previous_response_not_found",
    "bytes_received",
    "events_sent",
    "pings_received",
    "pongs_received",
    "pings_sent",
    "http_requests",
    "http_connections",
    "errors_sent",
    "rate_limited",
    "rate_limit_tokens",
    "faults_applied",
    "hostile_frames_sent",
    "connections_closed_max_age",
    "connections_closed_idle",
    "connections_closed_ping_timeout",
    "input_kb_processed",
    "steers_received",
    "steers_accepted",
    "steers_pending",
    "steers_failed",
    "successors",
)


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Number] = dict.fromkeys(STAT_KEYS, 0)

    def add(self, key: str, amount: Number = 1) -> None:
        with self._lock:
            self._values[key] = self._values[key] + amount

    def snapshot(self) -> dict[str, Number]:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        """Zero every counter except ``connections_open``, which is a gauge of the present."""
        with self._lock:
            still_open = self._values["connections_open"]
            self._values = dict.fromkeys(STAT_KEYS, 0)
            self._values["connections_open"] = still_open
