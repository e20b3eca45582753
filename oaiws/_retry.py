"""The retry policy, whole and in one place: what is tried again, what it costs, how long to wait.

One request is a series of attempts (acquire a connection, send ``response.create``, read the
first event; for ``create_response`` the whole response). Every attempt that fails tells
the policy what it knows in an ``AttemptFailed``: the error, and whether the request
reached the wire. Then:

- **Nothing was sent** (the send itself failed: a pooled connection the server had closed):
  a free resend on another connection, at once. Bounded by ``max_connections + 1`` per
  request (each pooled connection can be stale once, then a fresh one), after which such
  failures count like the others.
- **Anything was sent** (the handshake was answered or refused, the request went out): a
  retry, counted against ``max_retries``, only for transient failures: network errors,
  timeouts, 429 and 5xx (``retry-after`` honoured when it is sane), and
  ``websocket_connection_limit_reached``. The pause is exponential with jitter, except after a
  failure that a new connection cures (the connection limit; a pooled connection that broke
  before answering), which is retried at once. So ``response.create`` is on the wire at most
  ``1 + max_retries`` times, plus at most once more per try for a conversation's replay
  after ``previous_response_not_found`` (a different request, not a retry).
- **Never retried:** caller errors (other 4xx, bad credentials, ``insufficient_quota``),
  protocol violations, a full pool, a closed client, the request's own ``timeout=``.
- **After output reached the caller** nothing is retried: the exception carries the
  ``events`` received and the ``partial_response`` (see ``oaiws.errors``). A buffered
  request (``create_response``) shows nothing before the end, so it may retry the whole
  request when the connection breaks midway.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, NoReturn, Optional, TypeVar

from tenacity import RetryCallState, Retrying
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ._stats import Stats
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ConnectionLimitReachedError,
    PoolTimeoutError,
    StreamInterruptedError,
)

__all__ = [
    "INITIAL_BACKOFF",
    "MAX_BACKOFF",
    "MAX_RETRY_AFTER",
    "AttemptFailed",
    "KeepAliveDropped",
    "TotalTimeoutError",
    "backoff_seconds",
    "is_retryable",
    "run",
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


class KeepAliveDropped(APIConnectionError):
    """The server closed (or reset) a connection before answering: most likely a kept-alive
    connection it had dropped while idle, which a new connection cures. Documented as
    ``APIConnectionError``; ``run`` retries it without a pause (a stale failure)."""


class TotalTimeoutError(APITimeoutError):
    """The request's own ``timeout=`` passed. Never retried: the caller's budget is spent."""


class AttemptFailed(Exception):
    """One attempt's failure, as the request layer saw it; the policy decides what follows.

    ``sent``: the request reached the server (or the server was reached: a handshake was
    answered). ``stale``: a pooled connection broke before answering, which a new connection
    cures, so the retry needs no pause.
    """

    def __init__(self, error: APIError, *, sent: bool, stale: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.sent = sent
        self.stale = stale


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


class _Budget:
    """One request's spending: free resends left, retries made, and the latest decision."""

    __slots__ = (
        "deadline",
        "free_resends",
        "max_retries",
        "pause",
        "resend",
        "retries",
        "stats",
        "whole_request",
    )

    def __init__(
        self,
        max_retries: int,
        free_resends: int,
        deadline: Optional[float],
        whole_request: bool,
        stats: Optional[Stats],
    ) -> None:
        self.max_retries = max_retries
        self.free_resends = free_resends
        self.deadline = deadline
        self.whole_request = whole_request
        self.stats = stats
        self.retries = 0
        self.pause: Optional[float] = None  # the decision for the latest failure
        self.resend = False

    def worth_a_look(self, failure: AttemptFailed) -> bool:
        """Whether the policy could try again at all (no side effect): the fast path's test."""
        if not failure.sent and self.free_resends > 0:
            return True
        return self.max_retries > 0 and is_retryable(
            failure.error, whole_request=self.whole_request
        )

    def decide(self, failure: BaseException) -> bool:
        """Decide about one failure: True to try again (``pause`` set), False to give up."""
        self.pause = None
        self.resend = False
        if not isinstance(failure, AttemptFailed):
            return False  # not an attempt's failure (a bug, an interruption): never retried
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        if not failure.sent and self.free_resends > 0:
            self.free_resends -= 1
            self.resend = True
            self.pause = 0.0
            return True
        error = failure.error
        if self.retries >= self.max_retries or not is_retryable(
            error, whole_request=self.whole_request
        ):
            return False
        self.retries += 1
        if failure.stale or isinstance(error, ConnectionLimitReachedError):
            pause = 0.0
        else:
            retry_after = error.retry_after if isinstance(error, APIStatusError) else None
            pause = backoff_seconds(self.retries, retry_after)
        if self.deadline is not None:
            # Never sleep past the request's deadline; the next try will report it.
            pause = min(pause, max(0.0, self.deadline - time.monotonic()))
        self.pause = pause
        return True


class _Retry(retry_base):
    # tenacity asks this first for every failure (every version): the decision is made here
    # once, and the stop and wait below read it.
    def __init__(self, budget: _Budget) -> None:
        self._budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        return self._budget.decide(outcome.exception())  # type: ignore[arg-type]


class _Stop(stop_base):
    def __init__(self, budget: _Budget) -> None:
        self._budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._budget.pause is None


class _Wait(wait_base):
    def __init__(self, budget: _Budget) -> None:
        self._budget = budget

    def __call__(self, retry_state: RetryCallState) -> float:
        return self._budget.pause or 0.0


def _describe(error: Optional[BaseException]) -> str:
    # Class, status and code only: messages may quote what the server received.
    if isinstance(error, AttemptFailed):
        error = error.error
    if isinstance(error, APIStatusError):
        return f"{type(error).__name__}(status={error.status_code}, code={error.code})"
    return type(error).__name__


def run(
    attempt: Callable[[], T],
    *,
    max_retries: int,
    free_resends: int,
    deadline: Optional[float] = None,
    whole_request: bool = False,
    stats: Optional[Stats] = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``attempt`` under the policy and return its result, or raise the final error.

    ``attempt`` raises ``AttemptFailed`` for its failures; anything else it raises passes
    through untouched and is never retried. The first try runs before any tenacity machinery
    is built: it almost always succeeds, and a ``Retrying`` costs more to set up than the
    rest of a warm request's bookkeeping. When it fails with something worth another look,
    tenacity takes over as if it had made that first try itself. ``sleep`` makes the pauses
    (a batch's wakes up when the batch stops, and raises instead).
    """
    try:
        return attempt()
    except AttemptFailed as failure:
        budget = _Budget(max_retries, free_resends, deadline, whole_request, stats)
        if not budget.worth_a_look(failure):
            _give_up(failure)
        first_failure: list[AttemptFailed] = [failure]

    def replay_then_attempt() -> T:
        if first_failure:
            raise first_failure.pop()
        return attempt()

    def before_sleep(retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if budget.resend:
            log.debug("resending at once after %s: nothing was sent", _describe(error))
            if stats is not None:
                stats.add("resends")
            return
        log.debug(
            "retrying request in %.2fs after %s (retry %d of %d)",
            budget.pause or 0.0,
            _describe(error),
            budget.retries,
            max_retries,
        )
        if stats is not None:
            stats.add("retries")

    policy = Retrying(
        retry=_Retry(budget),
        stop=_Stop(budget),
        wait=_Wait(budget),
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    try:
        return policy(replay_then_attempt)
    except AttemptFailed as failure:
        _give_up(failure)


def _give_up(failure: AttemptFailed) -> NoReturn:
    error = failure.error
    raise error.with_traceback(error.__traceback__) from error.__cause__
