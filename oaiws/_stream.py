"""One request's life: validate -> acquire -> send -> read to a terminal event.

A request owns its connection from ``acquire`` until it has read the terminal event; only
then does the connection go back to the pool. Every other exit (an error, a timeout, the
caller breaking out of the loop or dropping the stream) closes it: its leftover events must
never reach another request, and closing is the only way to stop a response being generated.

The generator that yields the events holds a ``_Request`` and never the ``ResponseStream``
that wraps it, so when the caller drops the stream the generator is finalised at once (no
reference cycle waiting for the garbage collector) and its ``finally`` closes the connection.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol

from . import _json, _retry
from ._events import TERMINAL_EVENT_TYPES, Event, Response, ResponseAccumulator
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConfigurationError,
    ConnectionLimitReachedError,
    ProtocolError,
    StreamInterruptedError,
    StreamTimeoutError,
    error_from_event,
)

if TYPE_CHECKING:
    from types import TracebackType

    from ._config import ClientConfig
    from ._connection import Connection
    from ._pool import Pool

__all__ = ["ResponseStream", "Turn", "build_payload", "collect_response"]

log = logging.getLogger("oaiws")

# Fields the WebSocket transport decides itself: streaming is implicit, background mode does
# not exist over a socket, and the event type is ours to set.
_REFUSED_FIELDS = {
    "stream": "WebSocket mode always streams: remove stream= (use create_response() for a "
    "single finished Response)",
    "stream_options": "WebSocket mode has no stream_options: remove it",
    "background": "background mode is not supported over WebSocket: remove background= "
    "(or use the HTTP API for background responses)",
    "type": "type is set by oaiws (response.create): remove it",
}
_STR_FIELDS = (
    "previous_response_id",
    "instructions",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "service_tier",
    "truncation",
)
_BOOL_FIELDS = ("store", "parallel_tool_calls", "generate")
_LIST_FIELDS = ("tools", "include", "context_management")
_MAPPING_FIELDS = ("metadata", "reasoning", "text")
_STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,256}")


def build_payload(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check the ``response.create`` fields and build the event, before any network traffic.

    Keys whose value is ``None`` are left out: the server rejects explicit nulls.
    Raises ``ConfigurationError`` with a message that says what to change.
    """
    payload: dict[str, Any] = {"type": "response.create"}
    for key, value in fields.items():
        if key in _REFUSED_FIELDS:
            if key == "background" and not value:
                continue  # background=False asks for what we do anyway
            if value is not None or key == "type":
                raise ConfigurationError(_REFUSED_FIELDS[key])
        if value is not None:
            payload[key] = value

    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigurationError("model must be a non-empty string, e.g. model='gpt-5.5'")
    if "input" in payload:
        payload["input"] = _check_input(payload["input"])
    elif (
        "previous_response_id" not in payload
        and "prompt" not in payload
        and payload.get("generate") is not False  # a warm-up may carry no input
    ):
        raise ConfigurationError("input is required: a string or a list of input items")
    for key in _STR_FIELDS:
        if key in payload and not isinstance(payload[key], str):
            raise ConfigurationError(f"{key} must be a str, not {type(payload[key]).__name__}")
    if payload.get("previous_response_id") == "":
        raise ConfigurationError("previous_response_id must not be empty: leave it out instead")
    for key in _BOOL_FIELDS:
        if key in payload and not isinstance(payload[key], bool):
            raise ConfigurationError(f"{key} must be True or False")
    for key in _LIST_FIELDS:
        if key in payload:
            payload[key] = _check_list(key, payload[key])
    for key in _MAPPING_FIELDS:
        if key in payload and not isinstance(payload[key], Mapping):
            raise ConfigurationError(f"{key} must be a dict, not {type(payload[key]).__name__}")
    if "metadata" in payload and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in payload["metadata"].items()
    ):
        raise ConfigurationError("metadata keys and values must be strings")
    if "max_output_tokens" in payload:
        value = payload["max_output_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigurationError("max_output_tokens must be a positive integer")
    for key in ("temperature", "top_p"):
        if key in payload and not _is_number(payload[key]):
            raise ConfigurationError(f"{key} must be a number")
    if "stream_id" in payload and not (
        isinstance(payload["stream_id"], str) and _STREAM_ID.fullmatch(payload["stream_id"])
    ):
        raise ConfigurationError("stream_id must be 1-256 characters of A-Z a-z 0-9 _ . -")
    try:
        _json.dumps(payload)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"the request cannot be sent as JSON: {error}") from None
    return payload


def _check_input(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [_as_item(item) for item in value]
    raise ConfigurationError(
        f"input must be a string or a list of input items (dicts), not {type(value).__name__}"
    )


def _as_item(item: Any) -> Any:
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)  # typed models of the openai package
    if callable(dump):
        return dump(exclude_none=True)
    raise ConfigurationError(
        f"each input item must be a dict like {{'role': 'user', 'content': '...'}}, "
        f"not {type(item).__name__}"
    )


def _check_list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{key} must be a list, not {type(value).__name__}")
    return [_as_item(item) if key == "tools" else item for item in value]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _not_found(data: Any) -> bool:
    """Whether a first frame is the ``previous_response_not_found`` error (either shape)."""
    if not isinstance(data, dict) or data.get("type") != "error":
        return False
    nested = data.get("error")
    fields = nested if isinstance(nested, dict) else data
    return bool(fields.get("code") == "previous_response_not_found")


class Turn(Protocol):
    """What a conversation plugs into a stream (``conversation.py`` implements it).

    ``begin`` runs at the first ``next()``, before anything is sent, and returns the
    continuation payload and the full-context replay payload; ``finished`` gets the response
    once its terminal event was read (before that event is yielded); ``end`` runs once the
    stream is over, however it ended (also when ``begin`` raised).
    """

    def begin(self) -> tuple[dict[str, Any], Optional[dict[str, Any]]]: ...

    def finished(self, response: Response) -> None: ...

    def end(self) -> None: ...


class _Request:
    """The state of one request; the event generator's only reference."""

    __slots__ = (
        "accumulator",
        "config",
        "conn",
        "deadline",
        "events",
        "hold",
        "payload",
        "pool",
        "replay",
        "response",
        "retry_start",
        "timeout",
        "turn",
    )

    def __init__(
        self,
        pool: Pool,
        config: ClientConfig,
        payload: dict[str, Any],
        timeout: Optional[float],
        *,
        retry_start: bool = True,
        deadline: Optional[float] = None,
        replay: Optional[dict[str, Any]] = None,
        hold: bool = False,
        turn: Optional[Turn] = None,
    ) -> None:
        self.pool = pool
        self.config = config
        self.payload = payload
        # The same request with the whole transcript as input and no previous_response_id:
        # sent instead of the continuation when the chain cannot be continued (a conversation).
        self.replay = replay
        self.hold = hold  # keep the connection for the next turn when the response is done
        self.turn = turn
        self.timeout = timeout
        self.deadline = deadline
        self.retry_start = retry_start
        self.conn: Optional[Connection] = None
        self.accumulator = ResponseAccumulator()
        self.events: list[Event] = []
        self.response: Optional[Response] = None

    # --- deadlines -------------------------------------------------------------------------

    def _remaining(self) -> Optional[float]:
        if self.deadline is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _retry.TotalTimeoutError(
                f"the request did not finish within its timeout of {self.timeout}s"
            )
        return remaining

    def _bounded(self, seconds: float) -> float:
        remaining = self._remaining()
        return seconds if remaining is None else min(seconds, remaining)

    def _timed_out(self, error: APITimeoutError) -> APITimeoutError:
        """The error for a receive that timed out: the total deadline's when that one passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline - 0.001:
            return _retry.TotalTimeoutError(
                f"the request did not finish within its timeout of {self.timeout}s"
            )
        return error

    # --- the connection --------------------------------------------------------------------

    def drop_connection(self, reason: str, *, lost: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.discard(conn, reason, lost=lost)  # the pool logs it

    def _return_connection(self, response_id: Optional[str], *, hold: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            # The server's connection-local cache now holds this response: let the pool
            # route its continuation here.
            conn.last_response_id = response_id
            self.pool.release(conn, hold=hold)

    # --- the start, inside the retry scope -------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Acquire, send, and read the first event; retried as a whole when allowed."""
        if self.turn is not None:
            self.payload, self.replay = self.turn.begin()
        if self.timeout is not None and self.deadline is None:
            self.deadline = time.monotonic() + self.timeout
        if not self.retry_start:
            return self._attempt()
        return _retry.call(
            self._attempt, self.config.max_retries, self.deadline, on_retry=self.pool.record_retry
        )

    def _attempt(self) -> dict[str, Any]:
        # A stale pooled connection or a retired one is not the request's failure: replace it
        # and resend without spending a retry. Bounded, so a broken server cannot loop us.
        free_resends = self.config.max_connections + 1
        affinity = self.payload.get("previous_response_id")
        while True:
            conn = self.pool.acquire(self._bounded(self.config.pool_timeout), affinity)
            self.conn = conn
            reused = conn.requests_started > 0
            payload = self._payload_for(conn, affinity)
            try:
                conn.send_json(payload)
                data: dict[str, Any] = conn.recv_json(self._bounded(self.config.read_timeout))
                if payload is not self.replay and self.replay is not None and _not_found(data):
                    # The server cannot continue the chain (expired, or never stored): send
                    # the whole transcript at once on the same connection. Nothing reached
                    # the caller, and this is no failure of the request: no retry is spent.
                    self.pool.record_replay()
                    log.debug("previous response not found: replaying the full context")
                    payload = self.replay
                    conn.send_json(payload)
                    data = conn.recv_json(self._bounded(self.config.read_timeout))
            except APITimeoutError as error:
                self.drop_connection("no first event before the deadline")
                raise self._timed_out(error) from None
            except APIConnectionError:
                self.drop_connection("closed before the first event", lost=True)
                if reused and free_resends > 0:
                    free_resends -= 1
                    log.debug("pooled connection was stale: resending on another one")
                    continue
                raise
            except BaseException:
                self.drop_connection("the first event could not be read")
                raise
            try:
                self.check(data)
            except ConnectionLimitReachedError:
                if free_resends > 0:
                    free_resends -= 1
                    log.debug("connection reached its maximum age: resending on a new one")
                    continue
                raise
            return data

    def _payload_for(self, conn: Connection, affinity: Optional[str]) -> dict[str, Any]:
        """The continuation, or the full replay when this connection cannot continue it.

        With ``store: false`` only the connection that produced the previous response can
        continue from it; anywhere else the server would answer ``previous_response_not_found``
        after a round trip, so the replay is sent straight away. With ``store`` true or unset
        the continuation is sent: the server loads the chain from storage.
        """
        if (
            self.replay is not None
            and affinity is not None
            and conn.last_response_id != affinity
            and self.payload.get("store") is False
        ):
            self.pool.record_replay()
            return self.replay
        return self.payload

    # --- reading ---------------------------------------------------------------------------

    def check(self, data: Any) -> None:
        """Raise for a frame that is not an event or is an ``error`` event (ends the request)."""
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.drop_connection("the server sent a frame that is not an event")
            raise ProtocolError("the server sent a JSON frame that is not an event (no type)")
        if data["type"] != "error":
            return
        error = error_from_event(data, response_id=self._response_id())
        if isinstance(error, APIStatusError) and (error.status_code or 500) < 500:
            # A request-scoped error ends the request; the connection itself is sound.
            self._return_connection(self.conn.last_response_id if self.conn else None)
        else:
            self.drop_connection(f"error event {getattr(error, 'code', None)}")
        raise error

    def receive(self) -> dict[str, Any]:
        """The next frame after events reached the caller: failures are interruptions."""
        conn = self.conn
        assert conn is not None  # held from start() until a terminal event
        try:
            timeout = self.config.read_timeout
            if self.deadline is not None:
                timeout = self._bounded(timeout)
            data: dict[str, Any] = conn.recv_json(timeout)
        except APITimeoutError as error:
            self.drop_connection("timed out in the middle of a response")
            cause = self._timed_out(error)
            raise self._interrupted(StreamTimeoutError, cause.message) from cause
        except APIConnectionError as error:
            self.drop_connection("connection lost in the middle of a response", lost=True)
            raise self._interrupted(StreamInterruptedError, error.message) from error
        return data

    def finish(self) -> None:
        """After the terminal event: build the response and give the connection back."""
        response = self.response = self.accumulator.build()
        # A failed response is not continued from (the server evicts what it continued), so
        # only a usable one is worth keeping the connection for.
        keep = self.hold and response.status in ("completed", "incomplete")
        self._return_connection(response.id, hold=keep)
        if self.turn is not None:
            self.turn.finished(response)

    def _interrupted(self, cls: type[StreamInterruptedError], cause: str) -> StreamInterruptedError:
        return cls(
            f"{cause}; {len(self.events)} events had already been received, so the request is "
            "not retried (see .events and .partial_response)",
            events=self.events,
            partial_response=self.accumulator.build(),
            response_id=self._response_id(),
        )

    def _response_id(self) -> Optional[str]:
        for event in self.events[:3]:
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                return str(response["id"])
        return None


def _events(request: _Request) -> Generator[Event, None, None]:
    # The hot loop of every stream: names are bound locally, the common path is a few dict
    # lookups, and anything unusual goes through request.check().
    try:
        data = request.start()
        add = request.accumulator.add
        keep = request.events.append
        while True:
            kind = data.get("type") if data.__class__ is dict else None
            if kind.__class__ is not str or kind == "error":
                request.check(data)  # raises: not an event, or a request-scoped error
            add(data)
            event = Event(data)
            keep(event)
            if kind in TERMINAL_EVENT_TYPES:
                request.finish()
                yield event
                return
            yield event
            data = request.receive()
    finally:
        # Reached with the connection still held only when the response was not read to its
        # end: an error, a timeout, or the caller leaving early (break, exception, dropped).
        request.drop_connection("the response was not read to its end")
        if request.turn is not None:
            request.turn.end()


class ResponseStream:
    """The events of one response, as an iterator; also a context manager.

    Nothing is sent until the first ``next()``. ``response`` is the finished ``Response``
    once the terminal event was read (``None`` before). Leaving early (``break``, an
    exception in the loop, ``close()``, the end of a ``with`` block, or dropping the stream)
    closes the connection, which stops the server generating the rest.
    """

    __slots__ = ("_events", "_request")

    def __init__(
        self,
        pool: Pool,
        config: ClientConfig,
        payload: dict[str, Any],
        *,
        timeout: Optional[float] = None,
        turn: Optional[Turn] = None,
    ) -> None:
        # A conversation's turn plans its payload at the first next(): ``payload`` is then
        # only a placeholder (its model shows in the repr).
        self._request = _Request(pool, config, payload, timeout, hold=turn is not None, turn=turn)
        self._events = _events(self._request)

    def __iter__(self) -> Iterator[Event]:
        return self._events

    def __next__(self) -> Event:
        return next(self._events)

    @property
    def response(self) -> Optional[Response]:
        """The finished response, once the stream has ended; ``None`` until then."""
        return self._request.response

    @property
    def events(self) -> Sequence[Event]:
        """Every event received so far."""
        return self._request.events

    def until_done(self) -> Response:
        """Read the remaining events and return the finished response."""
        for _ in self._events:
            pass
        response = self._request.response
        if response is None:  # pragma: no cover - the generator ends only at a terminal event
            raise ProtocolError("the stream ended without a terminal event")
        return response

    def close(self) -> None:
        """Stop: closes the connection unless the response was read to its end."""
        self._events.close()

    def __enter__(self) -> ResponseStream:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        request = self._request
        state = "done" if request.response is not None else f"{len(request.events)} events"
        return f"<ResponseStream model={request.payload.get('model')!r} {state}>"


def collect_response(
    pool: Pool,
    config: ClientConfig,
    payload: dict[str, Any],
    *,
    timeout: Optional[float],
    replay: Optional[dict[str, Any]] = None,
    hold: bool = False,
) -> Response:
    """Run a request to its end without yielding anything: ``create_response``.

    Since the caller sees nothing until the end, a connection lost midway may be retried as a
    whole request, under the same retry budget and total deadline. ``replay`` and ``hold``
    are a conversation's (see ``_Request``): each try chooses between continuation and replay
    on the connection it gets.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def attempt() -> Response:
        request = _Request(
            pool,
            config,
            payload,
            timeout,
            retry_start=False,
            deadline=deadline,
            replay=replay,
            hold=hold,
        )
        for _ in _events(request):
            pass
        assert request.response is not None  # the generator ends only at a terminal event
        return request.response

    return _retry.call(
        attempt, config.max_retries, deadline, whole_request=True, on_retry=pool.record_retry
    )
