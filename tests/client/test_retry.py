"""The retry policy: which failures retry, and how long the pauses are."""

from __future__ import annotations

import time
from typing import Optional

import pytest

from oaiws import _retry
from oaiws._stats import Stats
from oaiws.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConnectionLimitReachedError,
    PoolTimeoutError,
    ProtocolError,
    StreamInterruptedError,
    error_from_event,
    error_from_handshake,
)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (APIConnectionError("reset"), True),
        (APITimeoutError("handshake timed out"), True),
        (ConnectionLimitReachedError("max age"), True),
        (error_from_handshake(503, "busy"), True),
        (error_from_handshake(429, {"error": {"code": "rate_limit_exceeded"}}), True),
        (error_from_handshake(500, ""), True),
        (error_from_handshake(400, ""), False),
        (error_from_handshake(401, ""), False),
        (error_from_handshake(403, ""), False),
        (error_from_handshake(404, ""), False),
        (
            error_from_event(
                {"type": "error", "status": 429, "error": {"code": "rate_limit_exceeded"}}
            ),
            True,
        ),
        (error_from_event({"type": "error", "error": {"code": "server_is_overloaded"}}), True),
        (error_from_event({"type": "error", "error": {"code": "server_error"}}), True),
        (
            error_from_event(
                {"type": "error", "status": 429, "error": {"code": "insufficient_quota"}}
            ),
            False,
        ),
        (
            error_from_event({"type": "error", "status": 400, "error": {"code": "invalid_value"}}),
            False,
        ),
        (
            error_from_event({"type": "error", "error": {"code": "previous_response_not_found"}}),
            False,
        ),
        (ProtocolError("binary frame"), False),
        (PoolTimeoutError("pool full"), False),
        (_retry.TotalTimeoutError("deadline"), False),
        (StreamInterruptedError("broken"), False),
        (ValueError("a bug"), False),
    ],
)
def test_is_retryable(error: BaseException, retryable: bool) -> None:
    assert _retry.is_retryable(error) is retryable


def test_interrupted_buffered_requests_are_retried_whole() -> None:
    assert _retry.is_retryable(StreamInterruptedError("broken"), whole_request=True)
    assert not _retry.is_retryable(BadRequestError("bad"), whole_request=True)


def test_backoff_grows_exponentially_with_downward_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.5)
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 8.0)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        for _ in range(50):
            pause = _retry.backoff_seconds(attempt)
            assert 0.75 * base <= pause <= base


def test_backoff_honours_a_sane_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.5)
    assert _retry.backoff_seconds(1, retry_after=3.0) == 3.0
    assert _retry.backoff_seconds(1, retry_after=0.0) == 0.0
    assert _retry.backoff_seconds(1, retry_after=3600.0) <= 0.5


def _run(
    failures: list[BaseException],
    *,
    max_retries: int,
    free_resends: int = 0,
    deadline: Optional[float] = None,
    whole_request: bool = False,
    stats: Optional[Stats] = None,
) -> tuple[int, str]:
    """Run the policy over an attempt that fails with ``failures`` in turn, then succeeds.

    A plain ``APIError`` in the list stands for a failure after the request was sent; an
    ``AttemptFailed`` is raised as given (nothing sent, or stale)."""
    calls = 0

    def attempt() -> str:
        nonlocal calls
        calls += 1
        if failures:
            failure = failures.pop(0)
            if isinstance(failure, APIError):
                raise _retry.AttemptFailed(failure, sent=True)
            raise failure
        return "ok"

    result = _retry.run(
        attempt,
        max_retries=max_retries,
        free_resends=free_resends,
        deadline=deadline,
        whole_request=whole_request,
        stats=stats,
    )
    return calls, result


def test_the_policy_retries_transient_errors_then_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.001)
    stats = Stats()
    calls, result = _run(
        [APIConnectionError("x"), error_from_handshake(503, "")], max_retries=3, stats=stats
    )
    assert (calls, result, stats.counters()["retries"]) == (3, "ok", 2)


def test_the_policy_gives_up_after_max_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.001)
    with pytest.raises(APIConnectionError, match="second"):
        _run(
            [APIConnectionError("first"), APIConnectionError("second"), APIConnectionError("x")],
            max_retries=1,
        )


def test_the_policy_raises_caller_errors_at_once() -> None:
    with pytest.raises(AuthenticationError):
        _run([error_from_handshake(401, "")], max_retries=5)


def test_the_policy_uses_retry_after() -> None:
    error = error_from_handshake(503, "", {"retry-after-ms": "120"})
    started = time.monotonic()
    calls, _ = _run([error], max_retries=1)
    assert calls == 2
    assert time.monotonic() - started >= 0.11


def test_the_policy_never_sleeps_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 30.0)
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 30.0)
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        _run([APIConnectionError("x")] * 10, max_retries=5, deadline=time.monotonic() + 0.05)
    assert time.monotonic() - started < 2.0


def test_nothing_sent_is_resent_for_free_but_only_so_often() -> None:
    stats = Stats()
    not_sent = [_retry.AttemptFailed(APIConnectionError("stale"), sent=False) for _ in range(3)]
    calls, result = _run(list(not_sent), max_retries=0, free_resends=3, stats=stats)
    assert (calls, result) == (4, "ok")
    assert stats.counters()["resends"] == 3 and stats.counters()["retries"] == 0
    # Past the free bound, nothing-sent failures spend the retry budget like any other.
    with pytest.raises(APIConnectionError):
        _run(list(not_sent), max_retries=0, free_resends=2)


def test_anything_sent_counts_against_max_retries() -> None:
    # The request reached the wire each time: 1 + max_retries tries at most, never more,
    # however the connection failed (a reused one closed before answering included).
    stale = [_retry.AttemptFailed(APIConnectionError("closed"), sent=True, stale=True)] * 5
    calls = 0

    def attempt() -> str:
        nonlocal calls
        calls += 1
        raise stale[calls - 1]

    with pytest.raises(APIConnectionError):
        _retry.run(attempt, max_retries=2, free_resends=10)
    assert calls == 3


def test_a_failure_a_new_connection_cures_is_retried_without_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 5.0)
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 5.0)
    started = time.monotonic()
    stale = _retry.AttemptFailed(APIConnectionError("closed"), sent=True, stale=True)
    limit = ConnectionLimitReachedError("max age")
    calls, _ = _run([stale, limit], max_retries=2)
    assert calls == 3
    assert time.monotonic() - started < 1.0


def test_exceptions_that_are_not_attempt_failures_pass_through_untouched() -> None:
    with pytest.raises(ValueError, match="a bug"):
        _run([ValueError("a bug")], max_retries=5)
    with pytest.raises(KeyboardInterrupt):
        _run([KeyboardInterrupt()], max_retries=5)


def test_an_interrupted_buffered_request_is_retried_whole() -> None:
    calls, _ = _run([StreamInterruptedError("broken")], max_retries=1, whole_request=True)
    assert calls == 2
    with pytest.raises(StreamInterruptedError):
        _run([StreamInterruptedError("broken")], max_retries=1)


def test_retry_logs_never_carry_messages(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.001)
    caplog.set_level("DEBUG", logger="oaiws")
    error = error_from_event(
        {
            "type": "error",
            "status": 500,
            "error": {"code": "server_error", "message": "SECRET-CONTENT"},
        }
    )
    _run([error], max_retries=1)
    assert "retrying request" in caplog.text
    assert "server_error" in caplog.text
    assert "SECRET-CONTENT" not in caplog.text
