"""Fault injection: what can go wrong, and the queues that decide which request gets it."""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional

from oaiws.errors import ConfigurationError

from ._hostile import HOSTILE_FRAMES

# The HTTP-like status each well-known error code stands for, as the real service sends them.
STATUS_BY_ERROR_CODE = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "server_is_overloaded": 503,
    "service_unavailable": 503,
}

ERROR_CODE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limit_exceeded",
}


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the server. Unset fields do nothing, so faults combine.

    ``hostile_frame`` names a preset of :data:`~oaiws.testing.HOSTILE_FRAMES`: frames that
    break the protocol in that precise way, sent after the response's ``response.created``.

    Connection faults (``inject(..., on="connection")``) act at the upgrade
    (``refuse_status``, ``retry_after``, ``handshake_delay``) and their request fields apply
    to the first request on that connection. Request faults act on one ``response.create``
    or ``POST /v1/responses``.
    """

    refuse_status: Optional[int] = None
    retry_after: Optional[float] = None
    handshake_delay: float = 0.0
    close_after_events: Optional[int] = None
    close_code: Optional[int] = 1011
    stall_before_first_event: float = 0.0
    stall_after_first_event: float = 0.0
    error_code: Optional[str] = None
    error_status: Optional[int] = None
    malformed_frame: bool = False
    binary_frame: bool = False
    hostile_frame: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("refuse_status", "error_status"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and 100 <= value <= 599):
                raise ConfigurationError(
                    f"Fault.{name} must be an HTTP status (100-599), not {value!r}"
                )
        if self.close_code is not None and not (
            _is_int(self.close_code) and 1000 <= self.close_code <= 4999
        ):
            raise ConfigurationError(
                f"Fault.close_code must be 1000-4999 or None, not {self.close_code!r}"
            )
        if self.close_after_events is not None and not (
            _is_int(self.close_after_events) and self.close_after_events >= 0
        ):
            raise ConfigurationError("Fault.close_after_events must be a non-negative integer")
        for name in ("handshake_delay", "stall_before_first_event", "stall_after_first_event"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigurationError(
                    f"Fault.{name} must be a non-negative number, not {value!r}"
                )
        if self.retry_after is not None and (
            not _is_number(self.retry_after) or self.retry_after < 0
        ):
            raise ConfigurationError("Fault.retry_after must be a non-negative number")
        if self.error_code is not None and (
            not isinstance(self.error_code, str) or not self.error_code
        ):
            raise ConfigurationError("Fault.error_code must be a non-empty string")
        for name in ("malformed_frame", "binary_frame"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"Fault.{name} must be a bool")
        if self.hostile_frame is not None and (
            not isinstance(self.hostile_frame, str) or self.hostile_frame not in HOSTILE_FRAMES
        ):
            raise ConfigurationError(
                f"Fault.hostile_frame must be None or one of {', '.join(HOSTILE_FRAMES)},"
                f" not {self.hostile_frame!r}"
            )

    @property
    def acts_on_request(self) -> bool:
        """Whether any field changes how a response is served (as opposed to the upgrade)."""
        return (
            self.close_after_events is not None
            or self.stall_before_first_event > 0
            or self.stall_after_first_event > 0
            or self.error_code is not None
            or self.malformed_frame
            or self.binary_frame
            or self.hostile_frame is not None
        )

    def error_status_code(self) -> int:
        """The status of the ``error`` event this fault sends (see the class docs)."""
        if self.error_status is not None:
            return self.error_status
        if self.error_code is not None:
            return STATUS_BY_ERROR_CODE.get(self.error_code, 400)
        return self.refuse_status or 400

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build from JSON-decoded fields; raises ConfigurationError naming the bad field."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise ConfigurationError(f"a fault must be a JSON object: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigurationError("a fault must be a JSON object of Fault fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigurationError(f"unknown Fault field(s): {', '.join(map(str, unknown))}")
        try:
            return cls(**{str(k): v for k, v in data.items()})
        except TypeError as exc:  # a wrong type that the checks above did not name
            raise ConfigurationError(f"invalid fault: {exc}") from None


def error_code_for_status(status: int) -> str:
    if status >= 500:
        return "server_is_overloaded" if status == 503 else "server_error"
    return ERROR_CODE_BY_STATUS.get(status, "invalid_request_error")


class FaultQueue:
    """Faults waiting for the next upgrades or requests. Thread-safe: tests inject from
    their own thread while the server loop consumes."""

    SCOPES = ("connection", "request")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Fault]] = {scope: deque() for scope in self.SCOPES}

    def inject(self, fault: Fault, *, on: str = "request", times: int = 1) -> None:
        if not isinstance(fault, Fault):
            raise ConfigurationError(f"inject() takes a Fault, not {type(fault).__name__}")
        if on not in self.SCOPES:
            raise ConfigurationError(f"on must be 'connection' or 'request', not {on!r}")
        if not _is_int(times) or times < 1:
            raise ConfigurationError(f"times must be a positive integer, not {times!r}")
        with self._lock:
            self._queues[on].extend([fault] * times)

    def take(self, on: str) -> Optional[Fault]:
        with self._lock:
            queue = self._queues[on]
            return queue.popleft() if queue else None

    def clear(self) -> None:
        with self._lock:
            for queue in self._queues.values():
                queue.clear()

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {scope: len(queue) for scope, queue in self._queues.items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
