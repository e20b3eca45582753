"""The retry policy, in one place: which failures are retried and how long to wait between tries.

- Before any event reached the caller: network failures, handshake 429/5xx and ``error``
  events with 429/5xx are retried with exponential backoff and jitter (``retry-after`` wins
  when the server sent one), up to ``max_retries`` times.
- Caller errors (other 4xx, bad credentials), protocol violations, a full pool and a request's
  own total deadline are raised at once.
- After output reached the caller nothing is retried (``StreamInterruptedError``); a buffered
  request (``create_response``) yields nothing, so it may retry the whole request.

Stale pooled connections and ``websocket_connection_limit_reached`` are not failures of the
request: ``_stream`` replaces the connection and resends without spending a retry.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Optional, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    PoolTimeoutError,
    StreamInterruptedError,
)

__all__ = [
    "INITIAL_BACKOFF",
    "MAX_BACKOFF",
    "MAX_RETRY_AFTER",
    "TotalTimeoutError",
    "backoff_seconds",
    "call",
    "is_retryable",
    "retrying",
]

log = logging.getLogger("oaiws")

T = TypeVar("T")

# Seconds. Module-level so an application (or a test) can tune them in one place.
INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
# A retry-after longer than this is not worth blocking a request thread for: back off instead.
MAX_RETRY_AFTER = 60.0

# Error codes that mean "try again later", whatever status the server attached.
_TRANSIENT_CODES = frozenset(
    {"rate_limit_exceeded", "server_error", "server_is_overloaded", "service_unavailable"}
)
# A 429 that no amount of waiting fixes.
_PERMANENT_CODES = frozenset({"insufficient_quota"})


class TotalTimeoutError(APITimeoutError):
    """The request's own ``timeout=`` passed. Never retried: the caller's budget is spent."""


def is_retryable(error: BaseException, *, whole_request: bool = False) -> bool:
    """Whether ``error``, raised before any event reached the caller, is worth another try.

    ``whole_request``: the request yields nothing to its caller (``create_response``), so a
    connection lost in the middle of the response may be retried from the start too.
    """
    if isinstance(error, (TotalTimeoutError, PoolTimeoutError)):
        return False
    if isinstance(error, StreamInterruptedError):
        return whole_request
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError):
        if error.code in _PERMANENT_CODES:
            return False
        if error.code in _TRANSIENT_CODES:
            return True
        status = error.status_code
        return status is not None and (status == 429 or status >= 500)
    return False


def backoff_seconds(attempt: int, retry_after: Optional[float] = None) -> float:
    """The pause before retry number ``attempt`` (1-based).

    The server's ``retry-after`` when it gave a sane one; else exponential from
    ``INITIAL_BACKOFF`` up to ``MAX_BACKOFF``, jittered downwards by up to a quarter so that
    threads that failed together do not retry together.
    """
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
        return retry_after
    base = min(INITIAL_BACKOFF * (2.0 ** (attempt - 1)), MAX_BACKOFF)
    return base * (1.0 - 0.25 * random.random())


class _Wait(wait_base):
    def __init__(self, deadline: Optional[float]) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        retry_after = error.retry_after if isinstance(error, APIStatusError) else None
        pause = backoff_seconds(retry_state.attempt_number, retry_after)
        if self._deadline is not None:
            # Never sleep past the request's deadline; the next try will report it.
            pause = min(pause, max(0.0, self._deadline - time.monotonic()))
        return pause


class _Stop(stop_base):
    def __init__(self, max_retries: int, deadline: Optional[float]) -> None:
        self._max_attempts = max_retries + 1
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        if retry_state.attempt_number >= self._max_attempts:
            return True
        return self._deadline is not None and time.monotonic() >= self._deadline


def _describe(error: Optional[BaseException]) -> str:
    # Class, status and code only: messages may quote what the server received.
    if isinstance(error, APIStatusError):
        return f"{type(error).__name__}(status={error.status_code}, code={error.code})"
    return type(error).__name__


def retrying(
    max_retries: int,
    deadline: Optional[float] = None,
    *,
    whole_request: bool = False,
    on_retry: Optional[Callable[[], None]] = None,
) -> Retrying:
    """A fresh ``tenacity.Retrying`` for one request (they keep per-call state: never share)."""

    def before_sleep(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        pause = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
        log.debug(
            "retrying request in %.2fs after %s (retry %d of %d)",
            pause,
            _describe(error),
            retry_state.attempt_number,
            max_retries,
        )
        if on_retry is not None:
            on_retry()

    return Retrying(
        stop=_Stop(max_retries, deadline),
        wait=_Wait(deadline),
        retry=retry_if_exception(lambda error: is_retryable(error, whole_request=whole_request)),
        before_sleep=before_sleep,
        reraise=True,
    )


def call(
    attempt: Callable[[], T],
    max_retries: int,
    deadline: Optional[float] = None,
    *,
    whole_request: bool = False,
    on_retry: Optional[Callable[[], None]] = None,
) -> T:
    """Run ``attempt`` under the policy and return its result.

    The first try runs before any tenacity machinery is built: it almost always succeeds, and
    a ``Retrying`` costs more to set up than the rest of a warm request's bookkeeping. When it
    fails with something worth retrying, tenacity takes over as if it had made that first try
    itself (same counting, same pauses, same logs).
    """
    try:
        return attempt()
    except Exception as error:
        if max_retries == 0 or not is_retryable(error, whole_request=whole_request):
            raise
        first_failure: list[Exception] = [error]

    def replay_then_attempt() -> T:
        if first_failure:
            raise first_failure.pop()
        return attempt()

    policy = retrying(max_retries, deadline, whole_request=whole_request, on_retry=on_retry)
    return policy(replay_then_attempt)
