"""Pacing for a batch: requests and tokens per minute spread evenly, and a concurrency limit
that backs off on 429 and comes back (additive increase, multiplicative decrease).

``Pacer`` is a virtual schedule (the generic cell rate algorithm): every request is given the
first moment at which it keeps each budget's pace, so starts are spread one interval apart
(``60 / max_requests_per_minute`` seconds, and ``tokens * 60 / max_tokens_per_minute`` for the
tokens a request is estimated to use) and a minute's budget is never spent at once. When the
server answers 429 the whole schedule waits for its ``retry-after``.

A 429 that the budgets given did not prevent (none given, or a limit lower than the one
given) also halves the pace of the latest starts and keeps to it, which then grows by about one
request per second every second: with short responses, concurrency alone would not bound the
rate (8 requests in flight of 50 ms each are 160 per second).

``ConcurrencyLimit`` bounds the requests in flight. It starts at the batch's ``concurrency``;
a 429 halves it (once per round of requests: 429s from requests started before the last cut
do not cut again) and every success then adds ``1 / limit``, so the limit grows by about one
per round trip back to ``concurrency``. Under a limit it cannot see, a run so settles just under
the account's limit instead of storming it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Callable, Optional

from . import _json

__all__ = ["ConcurrencyLimit", "Pacer", "estimate_tokens"]

# A token is about four bytes of English text (the service's own rule of thumb).
BYTES_PER_TOKEN = 4
# Starts whose pace a 429 halves (see Pacer.slow_down).
RECENT_STARTS = 32
# Requests per second above which a learned pace is dropped: it no longer binds anything.
MAX_LEARNED_RATE = 1000.0


def estimate_tokens(fields: Mapping[str, Any]) -> int:
    """The tokens a request may use, as rate limits count them: about one per four bytes of
    its input (the UTF-8 JSON of ``input``, plus ``instructions``) plus ``max_output_tokens``,
    which the service reserves up front. The service counts with its tokenizer; the estimate
    is close for English text (the embedded emulator charges exactly this)."""
    size = 0
    raw = fields.get("input")
    if raw is not None:
        try:
            size += len(_json.dumpb(raw))
        except (TypeError, ValueError):  # not JSON as it stands: sending it would fail anyway
            size += len(repr(raw).encode("utf-8", "replace"))
    instructions = fields.get("instructions")
    if isinstance(instructions, str):
        size += len(instructions.encode())
    tokens = (size + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    max_output = fields.get("max_output_tokens")
    if isinstance(max_output, int) and not isinstance(max_output, bool) and max_output > 0:
        tokens += max_output
    return tokens


class Pacer:
    """Gives each request its start time under the per-minute budgets (both optional)."""

    def __init__(
        self,
        requests_per_minute: Optional[float],
        tokens_per_minute: Optional[float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._request_interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        # Learned from 429s (see slow_down): the pace the server has shown it takes.
        self._learned_interval = 0.0
        self._recent: deque[float] = deque(maxlen=RECENT_STARTS)
        self._token_interval = 60.0 / tokens_per_minute if tokens_per_minute else 0.0
        self._tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._next_request = now
        self._next_token = now
        self._paused_until = now

    def reserve(self, tokens: int) -> float:
        """Book the next start for a request of ``tokens``; returns when it may start (on the
        pacer's clock). A request larger than a minute's token budget is booked as a whole
        minute's: it waits its turn and then runs alone."""
        with self._lock:
            now = self._clock()
            start = max(now, self._paused_until, self._next_request, self._next_token)
            interval = max(self._request_interval, self._learned_interval)
            if interval:
                self._next_request = start + interval
            self._recent.append(start)
            if self._token_interval:
                booked = min(float(tokens), float(self._tokens_per_minute or 0.0))
                self._next_token = start + booked * self._token_interval
            return start

    def pause(self, seconds: float) -> None:
        """The server asked for a pause (``retry-after``): nothing starts before it ends."""
        with self._lock:
            until = self._clock() + seconds
            if until > self._paused_until:
                self._paused_until = until
                # The schedule moves with it: what was booked later keeps its spacing.
                self._next_request = max(self._next_request, until)
                self._next_token = max(self._next_token, until)

    def slow_down(self) -> None:
        """A 429 the budgets given did not prevent: halve the pace of the latest starts and
        keep to it (multiplicative decrease)."""
        with self._lock:
            recent = self._recent
            if len(recent) < 2 or recent[-1] <= recent[0]:
                return
            rate = (len(recent) - 1) / (recent[-1] - recent[0])
            if self._learned_interval:
                rate = min(rate, 1.0 / self._learned_interval)
            self._learned_interval = 2.0 / rate
            recent.clear()

    def speed_up(self) -> None:
        """A request went through: the learned pace grows by about one request per second
        every second (additive increase), until it no longer binds."""
        with self._lock:
            if not self._learned_interval:
                return
            rate = 1.0 / self._learned_interval
            rate += 1.0 / rate
            self._learned_interval = 0.0 if rate > MAX_LEARNED_RATE else 1.0 / rate


class ConcurrencyLimit:
    """Requests in flight, bounded by a limit that adapts to 429s (see the module docstring)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self._limit = float(maximum)
        self._in_flight = 0
        self._round = 0  # bumped on every cut: a request remembers the round it started in
        self._condition = threading.Condition()

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self, stopped: Callable[[], bool]) -> Optional[int]:
        """Wait for room; the round the request starts in, or ``None`` once ``stopped()``
        (asked at least every tenth of a second)."""
        with self._condition:
            while self._in_flight >= self.limit:
                if stopped():
                    return None
                self._condition.wait(0.1)
            if stopped():
                return None
            self._in_flight += 1
            return self._round

    def release(self, *, rate_limited: bool) -> None:
        """One request ended; ``rate_limited``: it met a 429 (whatever became of it)."""
        with self._condition:
            self._in_flight -= 1
            if not rate_limited:
                self._limit = min(float(self.maximum), self._limit + 1.0 / max(1.0, self._limit))
            self._condition.notify_all()

    def rate_limited(self, started_round: int) -> bool:
        """A 429 met by a request started in ``started_round``: cut the limit by half, unless
        it was cut since that request started. True when this 429 cut it."""
        with self._condition:
            if started_round != self._round:
                return False
            self._round += 1
            self._limit = max(1.0, self._limit / 2.0)
            return True
