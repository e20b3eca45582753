"""oaiws: the OpenAI Responses API over WebSocket, from synchronous, threaded Python."""

from __future__ import annotations

from . import errors
from ._client import Client
from ._events import Event, Response
from ._steering import Steer
from ._stream import ResponseStream
from ._version import __version__
from .batch import BatchProgress, BatchResult, BatchRun
from .conversation import Conversation
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchStoppedError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    ConnectionLimitReachedError,
    ConversationBusyError,
    InternalServerError,
    NotFoundError,
    OAIWSError,
    PermissionDeniedError,
    PoolTimeoutError,
    PreviousResponseNotFoundError,
    ProtocolError,
    RateLimitError,
    SteerFailedError,
    StreamClosedError,
    StreamInterruptedError,
    StreamTimeoutError,
    UnprocessableEntityError,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchProgress",
    "BatchResult",
    "BatchRun",
    "BatchStoppedError",
    "Client",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionLimitReachedError",
    "Conversation",
    "ConversationBusyError",
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
    "ResponseStream",
    "Steer",
    "SteerFailedError",
    "StreamClosedError",
    "StreamInterruptedError",
    "StreamTimeoutError",
    "UnprocessableEntityError",
    "__version__",
    "errors",
]
