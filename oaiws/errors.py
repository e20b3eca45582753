"""The exceptions oaiws raises.

Every failure a caller can see is one of these. The names mirror openai-python's, so code
that already catches ``openai.RateLimitError`` reads the same with ``oaiws.RateLimitError``.

Hierarchy::

    OAIWSError
    ├── ConfigurationError                 bad options or arguments, raised before any I/O
    ├── ClientClosedError                  the Client was closed; create a new one
    ├── ConversationBusyError              a Conversation used by two threads at once
    ├── StreamClosedError                  until_done() on a stream closed before its end
    ├── BatchStoppedError                  a batch request cut short by stop()/close()
    └── APIError
        ├── APIConnectionError             the network failed (refused, reset, closed)
        │   ├── APITimeoutError            a deadline passed (handshake, silence, total)
        │   ├── PoolTimeoutError           no connection became free within pool_timeout
        │   ├── StreamInterruptedError     the connection broke after events reached the caller
        │   │   └── StreamTimeoutError     ... because a deadline passed (also an APITimeoutError)
        │   └── ConnectionLimitReachedError  the server retired the connection (max age)
        ├── ProtocolError                  the server sent something that is not the protocol
        └── APIStatusError                 the server answered with an error status or event
            ├── BadRequestError (400)
            │   └── PreviousResponseNotFoundError
            ├── AuthenticationError (401)
            ├── PermissionDeniedError (403)
            ├── NotFoundError (404)
            ├── ConflictError (409)
            ├── UnprocessableEntityError (422)
            ├── RateLimitError (429)
            └── InternalServerError (5xx)

No exception text or attribute ever holds an API key: the handshake's headers are not kept,
and bodies come from the server, which never echoes credentials back.

The rule that tells a caller whether output reached them: every ``APIError`` carries
``events`` (the events of the failed request received before the failure) and
``partial_response`` (the response accumulated from them, ``None`` when nothing arrived). A
request whose events had reached its caller is never retried, so an exception raised by a
``ResponseStream`` after its first event always has a non-empty ``events``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ._events import Event, Response

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchStoppedError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionLimitReachedError",
    "ConversationBusyError",
    "InternalServerError",
    "NotFoundError",
    "OAIWSError",
    "PermissionDeniedError",
    "PoolTimeoutError",
    "PreviousResponseNotFoundError",
    "ProtocolError",
    "RateLimitError",
    "SteerFailedError",
    "StreamClosedError",
    "StreamInterruptedError",
    "StreamTimeoutError",
    "UnprocessableEntityError",
    "error_from_event",
    "error_from_handshake",
    "error_from_status",
]

# Header names whose values must never be shown, whatever the server sent back.
_SECRET_HEADERS = frozenset(
    {"authorization", "api-key", "cookie", "set-cookie", "proxy-authorization"}
)


class OAIWSError(Exception):
    """Base class of every exception raised by oaiws."""


class ConfigurationError(OAIWSError, ValueError):
    """An option or argument is invalid. Raised before anything is sent."""


class ClientClosedError(OAIWSError, RuntimeError):
    """The ``Client`` (and its pool) was closed; create a new ``oaiws.Client``."""


class ConversationBusyError(OAIWSError, RuntimeError):
    """A ``Conversation`` was used by a second thread while a turn was in progress.

    A conversation is a chain: each turn continues from the previous one, so two turns at
    once would fork it. Use one conversation per thread (many conversations may share one
    client), or serialise the turns yourself.
    """


class BatchStoppedError(OAIWSError, RuntimeError):
    """A batch request that was in flight when the batch was stopped (``BatchRun.stop`` or
    ``close``, Ctrl-C in ``oaiws batch``) and did not finish within the grace period: its
    connection was closed. Its response is lost; run it again (``oaiws batch`` does on a rerun).
    """


class StreamClosedError(OAIWSError, RuntimeError):
    """``until_done()`` on a stream that its caller closed (``close()``, ``break``, the end of
    a ``with`` block) before its terminal event: the rest of the response was never read and
    cannot be any more. ``events`` and ``partial_response`` hold what had arrived.
    """

    events: list[Event]
    partial_response: Optional[Response]
    response_id: Optional[str]

    def __init__(
        self,
        message: str,
        *,
        events: Sequence[Event] = (),
        partial_response: Optional[Response] = None,
        response_id: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.events = list(events)
        self.partial_response = partial_response
        self.response_id = response_id


class APIError(OAIWSError):
    """A request to the API failed.

    ``message`` is a human-readable explanation; ``request_id`` and ``response_id`` are set
    when the server told us (``x-request-id`` header of the connection's upgrade or of the
    error, ``response.id`` in an event), so that support tickets can name them. ``events`` is
    every event of the request received before the failure and ``partial_response`` the
    response built from them (``[]`` and ``None`` when the failure came first): a non-empty
    ``events`` means output had reached the caller, and such a request is never retried.
    """

    message: str
    request_id: Optional[str]
    response_id: Optional[str]
    events: list[Event]
    partial_response: Optional[Response]

    def __init__(
        self,
        message: str,
        *,
        request_id: Optional[str] = None,
        response_id: Optional[str] = None,
        events: Sequence[Event] = (),
        partial_response: Optional[Response] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.response_id = response_id
        self.events = list(events)
        self.partial_response = partial_response

    def _add_context(
        self,
        *,
        request_id: Optional[str] = None,
        response_id: Optional[str] = None,
        events: Sequence[Event] = (),
        partial_response: Optional[Response] = None,
    ) -> None:
        """Fill in what the layer that raised this could not know (never overwrites)."""
        if self.request_id is None:
            self.request_id = request_id
        if self.response_id is None:
            self.response_id = response_id
        if not self.events and events:
            self.events = list(events)
        if self.partial_response is None:
            self.partial_response = partial_response

    def __str__(self) -> str:
        extras = [f"{name}={value}" for name, value in self._context() if value is not None]
        return f"{self.message} ({', '.join(extras)})" if extras else self.message

    def _context(self) -> list[tuple[str, Any]]:
        return [("request_id", self.request_id), ("response_id", self.response_id)]


class APIConnectionError(APIError):
    """The connection to the server could not be made or was lost."""


class APITimeoutError(APIConnectionError):
    """A deadline passed: the handshake, the silence between two events, or the request's total."""


class PoolTimeoutError(APIConnectionError):
    """No pooled connection became free within ``pool_timeout`` seconds.

    Raise ``max_connections`` or lower the concurrency that shares the client.
    """


class ConnectionLimitReachedError(APIConnectionError):
    """The server retired the connection because it reached its maximum age.

    oaiws rotates connections before the limit; when a server still answers
    ``websocket_connection_limit_reached``, the request is retried at once on a new
    connection (within ``max_retries``). Callers see this only when those retries met the same.
    """

    code = "websocket_connection_limit_reached"


class StreamInterruptedError(APIConnectionError):
    """The connection broke after events had already reached the caller.

    Such a request is never retried (the caller has seen part of the output). ``events`` holds
    every event received before the break, and ``partial_response`` the response accumulated
    from them.
    """


class StreamTimeoutError(StreamInterruptedError, APITimeoutError):
    """A deadline passed after events had reached the caller.

    Both a ``StreamInterruptedError`` (``events`` and ``partial_response`` hold what arrived)
    and an ``APITimeoutError``, so either ``except`` clause catches it.
    """


class ProtocolError(APIError):
    """The server broke the protocol: a binary frame, a text frame that is not JSON or nests
    deeper than the JSON decoder goes, a frame larger than ``max_message_size``, a
    conversation turn whose output nests deeper than 128 levels, an event without a
    string ``type``, an invalid index, a terminal event without a response object. The
    connection is closed; nothing the server claimed was allocated."""


class APIStatusError(APIError):
    """The server answered with an error: an HTTP status at the handshake or an ``error`` event.

    Attributes: ``status_code`` (HTTP-like status, ``None`` when the server gave none),
    ``code`` (machine-readable, e.g. ``"rate_limit_exceeded"``), ``type`` (e.g.
    ``"invalid_request_error"``), ``param`` (the request field at fault), ``body`` (the raw
    error payload as received), ``headers`` (response headers, credentials removed) and
    ``retry_after`` (seconds, when the server asked for a pause).
    """

    status_code: Optional[int]
    code: Optional[str]
    type: Optional[str]
    param: Optional[str]
    body: Any
    headers: dict[str, str]
    retry_after: Optional[float]

    def __init__(
        self,
        message: str,
        *,
        status_code: Optional[int] = None,
        code: Optional[str] = None,
        type: Optional[str] = None,  # mirrors the wire field name
        param: Optional[str] = None,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        request_id: Optional[str] = None,
        response_id: Optional[str] = None,
    ) -> None:
        super().__init__(message, request_id=request_id, response_id=response_id)
        self.status_code = status_code
        self.code = code
        self.type = type
        self.param = param
        self.body = body
        self.headers = _public_headers(headers or {})
        self.retry_after = _retry_after_seconds(self.headers)
        if self.request_id is None:
            self.request_id = self.headers.get("x-request-id")

    def _context(self) -> list[tuple[str, Any]]:
        return [
            ("status", self.status_code),
            ("code", self.code),
            ("param", self.param),
            *super()._context(),
        ]


class BadRequestError(APIStatusError):
    """400: the request is invalid. Never retried."""


class PreviousResponseNotFoundError(BadRequestError):
    """400 ``previous_response_not_found``: the server cannot continue from that response.

    The id is not in this connection's cache and cannot be loaded from storage (``store=false``,
    Zero Data Retention, or expired). Recover by sending the full context again without
    ``previous_response_id``, or use ``client.conversation(...)``, which does that for you.
    """


class SteerFailedError(BadRequestError):
    """A steering submission (``stream.steer(...)``) the server did not apply.

    ``code`` is the server's (``response_not_found``, ``invalid_input``,
    ``steering_not_supported``, ``too_many_pending_steers``, ``response_already_completed``,
    ``response_not_active``, ``successor_creation_failed``, or a newer one; the client's own
    ``stream_ended`` when the stream ended, closed or failed, before it could be sent);
    ``steer_id`` the
    id the server gave the submission (``None`` when refused before it was sent);
    ``response_id`` the response it was to steer; ``response`` the stream's final response
    when the error is raised at the end of the stream (``steer(..., raise_on_failure=True)``).
    The status is 400 and the error is never retried: the steered response went on without
    the input, so send it as a new turn if it still matters.
    """

    steer_id: Optional[str]
    response: Optional[Response]

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        steer_id: Optional[str] = None,
        response_id: Optional[str] = None,
        body: Any = None,
        request_id: Optional[str] = None,
    ) -> None:
        super().__init__(
            message,
            status_code=400,
            code=code,
            type="invalid_request_error",
            body=body,
            request_id=request_id,
            response_id=response_id,
        )
        self.steer_id = steer_id
        self.response = None

    def _context(self) -> list[tuple[str, Any]]:
        return [*super()._context(), ("steer_id", self.steer_id)]


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked. Never retried."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model, project or organization. Never retried."""


class NotFoundError(APIStatusError):
    """404: the URL, model or resource does not exist. Never retried."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's state."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed but could not be processed."""


class RateLimitError(APIStatusError):
    """429: too many requests or tokens. Retried with backoff before any output was yielded."""


class InternalServerError(APIStatusError):
    """5xx: the server failed. Retried with backoff before any output was yielded."""


RECOVER_PREVIOUS_RESPONSE = (
    "To recover, send the full input again without previous_response_id (this connection's "
    "cache no longer holds that response, and store=false responses cannot be loaded from "
    "storage), or use client.conversation(...), which replays it for you."
)

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

# Codes that say what the status would, for error events that carry no status.
_STATUS_BY_CODE: dict[str, int] = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "server_is_overloaded": 503,
    "service_unavailable": 503,
    "previous_response_not_found": 400,
    "invalid_api_key": 401,
    "invalid_stream_id": 400,
    "websocket_stream_limit_reached": 400,
}


def _status_class(status_code: Optional[int], code: Optional[str]) -> type[APIStatusError]:
    if code == "previous_response_not_found":
        return PreviousResponseNotFoundError
    if status_code is None:
        return APIStatusError
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIStatusError)


def _public_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}


def _retry_after_seconds(headers: Mapping[str, str]) -> Optional[float]:
    for name in ("retry-after-ms", "retry-after"):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue  # an HTTP date: not worth parsing, the backoff policy applies instead
        if math.isfinite(value) and value >= 0:
            return value / 1000.0 if name == "retry-after-ms" else value
    return None


def error_from_status(
    status_code: int,
    body: Any,
    headers: Optional[Mapping[str, str]] = None,
    *,
    action: str = "the WebSocket upgrade",
) -> APIStatusError:
    """Build the exception for an HTTP error status: a refused WebSocket upgrade, or an HTTP
    request's answer (``action`` names it in the message when the body has none).

    ``body`` is the decoded JSON body when there was one (``{"error": {...}}``), else the text.
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    fields: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
    code = _str_or_none(fields.get("code"))
    message = _str_or_none(fields.get("message")) or _status_message(status_code, body, action)
    cls = _status_class(status_code, code)
    return cls(
        message,
        status_code=status_code,
        code=code,
        type=_str_or_none(fields.get("type")),
        param=_str_or_none(fields.get("param")),
        body=body,
        headers=headers,
    )


def error_from_handshake(
    status_code: int,
    body: Any,
    headers: Optional[Mapping[str, str]] = None,
) -> APIStatusError:
    """Build the exception for a WebSocket upgrade the server refused with an HTTP status."""
    return error_from_status(status_code, body, headers)


def error_from_event(event: Mapping[str, Any], *, response_id: Optional[str] = None) -> APIError:
    """Build the exception for an ``error`` event, nested (WebSocket) or flat (SSE) shape.

    ``{"type": "error", "status": 429, "error": {"code", "message", "param", "type", "headers"}}``
    or ``{"type": "error", "code", "message", "param"}``.
    """
    nested = event.get("error")
    fields: Mapping[str, Any] = nested if isinstance(nested, Mapping) else event
    code = _str_or_none(fields.get("code"))
    message = _str_or_none(fields.get("message")) or "the server sent an error event"
    status = event.get("status")
    status_code = status if isinstance(status, int) and not isinstance(status, bool) else None
    if status_code is None and code is not None:
        status_code = _STATUS_BY_CODE.get(code)
    raw_headers = fields.get("headers")
    headers = None
    if isinstance(raw_headers, Mapping):
        # Header values are strings; anything else the server put there is left out.
        headers = {str(k): v for k, v in raw_headers.items() if isinstance(v, str)}
    if code == ConnectionLimitReachedError.code:
        return ConnectionLimitReachedError(message, response_id=response_id)
    cls = _status_class(status_code, code)
    if cls is PreviousResponseNotFoundError:
        message = f"{message} {RECOVER_PREVIOUS_RESPONSE}"
    return cls(
        message,
        status_code=status_code,
        code=code,
        type=_str_or_none(fields.get("type")),
        param=_str_or_none(fields.get("param")),
        body=dict(event),
        headers=headers,
        response_id=response_id,
    )


def _status_message(status_code: int, body: Any, action: str) -> str:
    text = body.strip() if isinstance(body, str) else ""
    detail = f": {text[:200]}" if text else ""
    verb = "refused" if action == "the WebSocket upgrade" else "answered"
    return f"the server {verb} {action} with HTTP {status_code}{detail}"


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value else None
