"""oaiws: the OpenAI Responses API over WebSocket, from synchronous, threaded Python."""

from __future__ import annotations

from . import errors
from ._events import Event, Response
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    ConnectionLimitReachedError,
    InternalServerError,
    NotFoundError,
    OAIWSError,
    PermissionDeniedError,
    PoolTimeoutError,
    PreviousResponseNotFoundError,
    ProtocolError,
    RateLimitError,
    StreamInterruptedError,
    UnprocessableEntityError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionLimitReachedError",
    "Event",
    "InternalServerError",
    "NotFoundError",
    "OAIWSError",
    "PermissionDeniedError",
    "PoolTimeoutError",
    "PreviousResponseNotFoundError",
    "ProtocolError",
    "RateLimitError",
    "Response",
    "StreamInterruptedError",
    "UnprocessableEntityError",
    "__version__",
    "errors",
]
