"""The retry policy: which failures retry, and how long the pauses are."""

from __future__ import annotations

import time

import pytest

from oaiws import _retry
from oaiws.errors import (
    APIConnectionError,
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


def _run(retrying: object, failures: list[BaseException]) -> tuple[int, str]:
    calls = 0

    def attempt() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "ok"

    result = retrying(attempt)  # type: ignore[operator]
    return calls, result


def test_retrying_retries_transient_errors_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.001)
    retries: list[int] = []
    retrying = _retry.retrying(3, on_retry=lambda: retries.append(1))
    calls, result = _run(retrying, [APIConnectionError("x"), error_from_handshake(503, "")])
    assert (calls, result, len(retries)) == (3, "ok", 2)


def test_retrying_gives_up_after_max_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 0.001)
    retrying = _retry.retrying(1)
    with pytest.raises(APIConnectionError, match="second"):
        _run(
            retrying,
            [APIConnectionError("first"), APIConnectionError("second"), APIConnectionError("x")],
        )


def test_retrying_raises_caller_errors_at_once() -> None:
    retrying = _retry.retrying(5)
    with pytest.raises(AuthenticationError):
        _run(retrying, [error_from_handshake(401, "")])


def test_retrying_uses_retry_after() -> None:
    retrying = _retry.retrying(1)
    error = error_from_handshake(503, "", {"retry-after-ms": "120"})
    started = time.monotonic()
    calls, _ = _run(retrying, [error])
    assert calls == 2
    assert time.monotonic() - started >= 0.11


def test_retrying_never_sleeps_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 30.0)
    retrying = _retry.retrying(5, deadline=time.monotonic() + 0.05)
    started = time.monotonic()
    with pytest.raises(APIConnectionError):
        _run(retrying, [APIConnectionError("x")] * 10)
    assert time.monotonic() - started < 2.0


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
    _run(_retry.retrying(1), [error])
    assert "retrying request" in caplog.text
    assert "server_error" in caplog.text
    assert "SECRET-CONTENT" not in caplog.text
