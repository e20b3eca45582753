"""Steering: adding user input to a response while it is being generated.

``stream.steer(input)`` sends ``{"type": "response.steer", "previous_response_id", "input"}``
for the response in flight (PROTOCOL.md section 2). The server answers each submission with
``response.steer.accepted`` (queued: the response stops at a safe point, ending
``incomplete`` with reason ``steered``, or completes, and a successor response continues with
the input; the successor's ``response.created`` is the commit point), ``.pending`` (the
response waits for tool outputs: the input is prepended to the next request that continues
it), or ``.failed`` (with a code). Answers name the submission by a server-given id, and are
matched to submissions in the order they were sent.

A ``Steer`` is the caller's handle on one submission; a ``SteerLedger`` is a stream's record
of them, which says whether more is to come after a terminal event (a successor, or an
answer): the stream keeps reading until nothing is.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping
from typing import Any, Optional

from .errors import ConfigurationError, SteerFailedError

__all__ = ["STEER_EVENTS", "Steer", "SteerLedger", "is_steer_refusal", "steer_items"]

STEER_EVENTS = frozenset(
    {"response.steer.accepted", "response.steer.pending", "response.steer.failed"}
)

_CONTENT_PARTS = frozenset({"input_text", "input_image", "input_file"})

# How a server that does not know ``response.steer`` refuses it: an ``error`` event about the
# event's type (never about a response).
_UNKNOWN_EVENT_CODES = frozenset({"unsupported_event_type", "unknown_event_type"})


def is_steer_refusal(data: Mapping[str, Any]) -> bool:
    """Whether an ``error`` event refuses an event type the server does not know."""
    nested = data.get("error")
    fields: Mapping[str, Any] = nested if isinstance(nested, Mapping) else data
    code = fields.get("code")
    return data.get("type") == "error" and (
        code in _UNKNOWN_EVENT_CODES
        or (code in ("invalid_value", "invalid_type") and fields.get("param") == "type")
    )


def steer_items(value: Any) -> list[dict[str, Any]]:
    """The steering input as message items, checked before anything is sent: text, one user
    message, or a list of them (content as text or ``input_text``/``input_image``/
    ``input_file`` parts). Raises ``ConfigurationError``."""
    if isinstance(value, str):
        if not value:
            raise ConfigurationError("steering input must not be empty")
        return [{"type": "message", "role": "user", "content": value}]
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigurationError(
            "steering input must be text, a user message, or a non-empty list of them"
        )
    result = []
    for item in items:
        if isinstance(item, str):
            result.extend(steer_items(item))
            continue
        if not isinstance(item, Mapping):
            raise ConfigurationError("steering input items must be text or message objects")
        extra = set(item) - {"type", "role", "content"}
        if extra or item.get("type", "message") != "message" or item.get("role") != "user":
            raise ConfigurationError(
                "steering accepts user messages only: {'role': 'user', 'content': ...} "
                f"(got {sorted(item)!r} with role {item.get('role')!r})"
            )
        content = item.get("content")
        if isinstance(content, str):
            if not content:
                raise ConfigurationError("a steering message's content must not be empty")
        elif not (
            isinstance(content, (list, tuple))
            and content
            and all(isinstance(p, Mapping) and p.get("type") in _CONTENT_PARTS for p in content)
        ):
            raise ConfigurationError(
                "a steering message's content is text or a list of input_text, input_image "
                "and input_file parts"
            )
        result.append({"type": "message", "role": "user", "content": content})
    return result


class Steer:
    """One steering submission, as the server answers it (``stream.steer(...)`` returns it).

    ``status``: ``"queued"`` (the response's id is not known yet: sent at its
    ``response.created``), ``"sent"``, ``"accepted"`` (the server holds it), ``"applied"``
    (a successor response took it up: ``successor_id``), ``"pending"`` (the response waits
    for tool outputs; ``required_input`` lists them, and the input is prepended to the next
    request continuing the response), ``"failed"`` (``error``, a ``SteerFailedError``), or
    ``"abandoned"`` (the stream ended, closed or failed, after sending it and before the
    server's last word on it: the server may still apply it to a response nobody reads).
    ``id`` is the server's id for it, once answered. ``wait(timeout)`` blocks (in another
    thread than the one reading the stream) until it is applied, pending or failed.
    """

    __slots__ = (
        "_done",
        "error",
        "id",
        "input",
        "raise_on_failure",
        "required_input",
        "response_id",
        "status",
        "successor_id",
    )

    def __init__(self, items: list[dict[str, Any]], *, raise_on_failure: bool) -> None:
        self.input = items
        self.raise_on_failure = raise_on_failure
        self.status = "queued"
        self.id: Optional[str] = None
        self.response_id: Optional[str] = None
        self.successor_id: Optional[str] = None
        self.required_input: list[Any] = []
        self.error: Optional[SteerFailedError] = None
        self._done = threading.Event()

    @property
    def settled(self) -> bool:
        """Applied, pending, failed or abandoned: nothing more will be known of it."""
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until settled (``True``) or ``timeout`` seconds passed (``False``). Call it
        from another thread than the one iterating the stream, which is what reads the
        answers; a stream that ends settles every steer it still had."""
        return self._done.wait(timeout)

    def _settle(self, status: str) -> None:
        self.status = status
        self._done.set()

    def __repr__(self) -> str:
        return f"<oaiws.Steer {self.status} id={self.id!r} response_id={self.response_id!r}>"


class SteerLedger:
    """A stream's steering submissions and what the server said of them; thread-safe (the
    iterating thread reads answers, any thread submits)."""

    __slots__ = ("_accepted", "_lock", "_unanswered", "all")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unanswered: collections.deque[Steer] = collections.deque()
        self._accepted: dict[str, Steer] = {}
        self.all: list[Steer] = []

    @property
    def open(self) -> bool:
        """Whether the server still owes an answer or a successor."""
        return bool(self._unanswered or self._accepted)

    @property
    def accepted(self) -> bool:
        """Whether an accepted submission waits for its successor."""
        return bool(self._accepted)

    def open_steers(self) -> list[Steer]:
        """Submissions still owed an answer or a successor; forgets them (the stream ended)."""
        with self._lock:
            steers = [*self._unanswered, *self._accepted.values()]
            self._unanswered.clear()
            self._accepted.clear()
        return steers

    def oldest_unanswered(self) -> Optional[Steer]:
        """The submission the next answer is for, if any."""
        with self._lock:
            return self._unanswered[0] if self._unanswered else None

    def sent(self, steer: Steer) -> None:
        """Record a submission before it is sent (so its answer always finds it)."""
        with self._lock:
            steer.status = "sent"
            self._unanswered.append(steer)
            self.all.append(steer)

    def unsent(self, steer: Steer) -> None:
        """The send failed: nothing to wait for."""
        with self._lock:
            if steer in self._unanswered:
                self._unanswered.remove(steer)

    def answer(self, kind: str, data: Mapping[str, Any]) -> Optional[Steer]:
        """Apply one ``response.steer.*`` event; returns the submission it concerns."""
        info = data.get("steer")
        steer_id = info.get("id") if isinstance(info, Mapping) else None
        with self._lock:
            steer = self._accepted.pop(steer_id, None) if isinstance(steer_id, str) else None
            if steer is None:
                if not self._unanswered:
                    return None  # an answer to nothing we sent: shown, not acted on
                steer = self._unanswered.popleft()
                steer.id = steer_id if isinstance(steer_id, str) else None
            if kind == "response.steer.accepted":
                steer.status = "accepted"
                self._accepted[steer.id or f"#{id(steer)}"] = steer
            elif kind == "response.steer.pending":
                required = data.get("required_input")
                steer.required_input = list(required) if isinstance(required, list) else []
                steer._settle("pending")
            else:
                steer.error = _failure(data, steer)
                steer._settle("failed")
            return steer

    def successor(self, response_id: Optional[str]) -> list[Steer]:
        """A successor response started: every accepted submission is applied to it."""
        with self._lock:
            applied = list(self._accepted.values())
            self._accepted.clear()
        for steer in applied:
            steer.successor_id = response_id
            steer._settle("applied")
        return applied


def _failure(data: Mapping[str, Any], steer: Steer) -> SteerFailedError:
    error = data.get("error")
    fields: Mapping[str, Any] = error if isinstance(error, Mapping) else {}
    code = fields.get("code")
    message = fields.get("message")
    return SteerFailedError(
        message if isinstance(message, str) and message else "the steering input was refused",
        code=code if isinstance(code, str) else None,
        steer_id=steer.id,
        response_id=steer.response_id,
        body=dict(data),
    )
