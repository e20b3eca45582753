"""Requests-per-minute and tokens-per-minute limits, enforced as the real service does.

The service does not let a minute's budget arrive at once: its limits are enforced over short
windows (a limit of 600 requests per minute admits about 10 per second). The emulator models
that with one token bucket per limit, refilled continuously at the limit's rate and holding at
most ``burst`` seconds of it (at least one request's worth). A request is admitted when every
bucket holds what it costs, and then pays in all of them; otherwise it is refused with 429 and
a ``retry-after`` that says when it would have been admitted. A refused request costs nothing.

What a request costs in tokens: a token per four bytes of its input as sent (the compact UTF-8
JSON of ``input``, plus ``instructions``), plus its ``max_output_tokens``, since the service
reserves the most a response may produce. The real service counts input with its tokenizer;
this simple rule is the one oaiws's batch pacing estimates with, so a test can check the
pacing exactly.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from ._requests import CreateRequest

__all__ = ["RateLimiter", "rate_limit_tokens", "retry_after_headers"]


class _Bucket:
    __slots__ = ("capacity", "last", "level", "rate")

    def __init__(self, per_minute: float, burst: float, now: float) -> None:
        self.rate = per_minute / 60.0  # per second
        self.capacity = max(1.0, self.rate * burst)
        self.level = self.capacity
        self.last = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        self.last = now

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` is available (0: now). A cost above the capacity needs only a
        full bucket, and leaves it in debt: the budget is kept over time, never exceeded."""
        needed = min(cost, self.capacity)
        return 0.0 if self.level >= needed else (needed - self.level) / self.rate


class RateLimiter:
    """The emulator's rate limits; ``admit`` is called once per ``response.create``."""

    def __init__(
        self,
        requests_per_minute: Optional[float],
        tokens_per_minute: Optional[float],
        burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        now = clock()
        self._clock = clock
        self._lock = threading.Lock()
        self._requests = _Bucket(requests_per_minute, burst, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, burst, now) if tokens_per_minute else None

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def admit(self, tokens: int) -> Optional[float]:
        """Admit a request costing ``tokens``: ``None``, or the seconds to wait before a retry
        could be admitted (the request is refused and pays nothing)."""
        with self._lock:
            now = self._clock()
            wait = 0.0
            for bucket, cost in ((self._requests, 1.0), (self._tokens, float(tokens))):
                if bucket is not None:
                    bucket.refill(now)
                    wait = max(wait, bucket.wait_for(cost))
            if wait > 0:
                return wait
            if self._requests is not None:
                self._requests.level -= 1.0
            if self._tokens is not None:
                self._tokens.level -= float(tokens)
            return None


def rate_limit_tokens(request: CreateRequest) -> int:
    """What ``request`` costs against a tokens-per-minute limit (see the module docstring)."""
    raw = request.body.get("input")
    size = (
        0
        if raw is None
        else len(json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode())
    )
    size += len((request.instructions or "").encode())
    return (size + 3) // 4 + (request.max_output_tokens or 0)


def retry_after_headers(wait: float) -> dict[str, str]:
    """``retry-after`` in whole seconds (rounded up, as HTTP allows no fraction) and the
    service's ``retry-after-ms`` with the precise figure."""
    return {
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
    }
