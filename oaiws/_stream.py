"""One request's life: acquire -> send -> read to a terminal event.

A request owns its connection from ``acquire`` until it has read the terminal event; only
then does the connection go back to the pool. Every other exit (an error, a timeout, the
caller breaking out of the loop or dropping the stream) closes it: its leftover events must
never reach another request, and closing is the only way to stop a response being generated.

The start of a request (acquire, send, first event) runs under the retry policy
(``_retry``): each failure is reported as an ``AttemptFailed`` saying whether the request had
reached the wire. Once an event has reached the caller nothing is retried, and every
exception carries the events received and the partial response.

The generator that yields the events holds a ``_Request`` and never the ``ResponseStream``
that wraps it, so when the caller drops the stream the generator is finalised at once (no
reference cycle waiting for the garbage collector) and its ``finally`` closes the connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol, TypeVar

from . import _retry
from ._closing import ClosesOnExit
from ._events import TERMINAL_EVENT_TYPES, Event, Response, ResponseAccumulator
from ._mux import LaneChannel, LanesUnavailable
from ._retry import AttemptFailed, KeepAliveDropped
from ._steering import STEER_EVENTS, Steer, SteerLedger, is_steer_refusal, steer_items
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ProtocolError,
    SteerFailedError,
    StreamClosedError,
    StreamInterruptedError,
    StreamTimeoutError,
    error_from_event,
)

if TYPE_CHECKING:
    from ._mux import LaneLease
    from ._runtime import Runtime
    from ._transport import AnyChannel, ChannelSource

__all__ = ["AttemptWatch", "ResponseStream", "Turn", "collect_response"]

log = logging.getLogger("oaiws")

_E = TypeVar("_E", bound=APIError)

# The statuses a conversation's chain may continue from (the connection is held for them).
_CONTINUABLE = ("completed", "incomplete")


def _not_found(data: Any) -> bool:
    """Whether a first frame is the ``previous_response_not_found`` error (either shape)."""
    if data.__class__ is not dict or data.get("type") != "error":
        return False
    nested = data.get("error")
    fields = nested if isinstance(nested, dict) else data
    return bool(fields.get("code") == "previous_response_not_found")


class Turn(Protocol):
    """What a conversation plugs into a stream (``conversation.py`` implements it).

    ``begin`` runs at the first ``next()``, before anything is sent, and returns the
    continuation payload and the full-context replay payload; ``steered`` gets a response
    that steering replaced, and the steering input its successor took up, when the
    successor starts; ``finished`` gets the final response once its terminal event was read
    (before that event is yielded), with the steering input left pending for the next
    request (``[]`` without); ``end`` runs once the stream is over, however it ended (also
    when ``begin`` raised).
    """

    def begin(self) -> tuple[dict[str, Any], Optional[dict[str, Any]]]: ...

    def steered(self, response: Response, steer_input: list[dict[str, Any]]) -> None: ...

    def finished(self, response: Response, pending_input: list[dict[str, Any]]) -> None: ...

    def end(self) -> None: ...


class AttemptWatch(Protocol):
    """Sees every try of a buffered request (``collect_response``): a batch paces its tries
    and learns of the 429s that the retry policy then waits out."""

    def attempt(self) -> None:
        """Before each try (resends and retries included); may block, or raise to stop (an
        exception that is not an ``AttemptFailed`` is never retried)."""

    def failed(self, error: APIError) -> None:
        """A try failed with ``error``; the policy decides next whether to try again (unless
        this raises)."""

    def sleep(self, seconds: float) -> None:
        """The policy's pause before the next try; may raise to stop."""


class _Request:
    """The state of one request; the event generator's only reference."""

    __slots__ = (
        "accumulator",
        "channels",
        "conn",
        "deadline",
        "ended",
        "ended_part",
        "events",
        "failure",
        "hold",
        "lease",
        "ledger",
        "payload",
        "queued_steers",
        "replay",
        "request_id",
        "response",
        "response_id",
        "retry_start",
        "runtime",
        "steer_lock",
        "steered",
        "timeout",
        "turn",
    )

    def __init__(
        self,
        runtime: Runtime,
        payload: dict[str, Any],
        timeout: Optional[float],
        *,
        retry_start: bool = True,
        deadline: Optional[float] = None,
        replay: Optional[dict[str, Any]] = None,
        hold: bool = False,
        turn: Optional[Turn] = None,
        channels: Optional[ChannelSource] = None,
        lease: Optional[LaneLease] = None,
    ) -> None:
        self.runtime = runtime
        self.lease = lease  # a conversation's lane, with lanes on
        # Where the request gets its channel: the client's router (WebSocket or HTTP), or a
        # fixed HTTP request (a background create, a retrieve).
        self.channels: ChannelSource = channels if channels is not None else runtime.router
        self.payload = payload
        # The same request with the whole transcript as input and no previous_response_id:
        # sent instead of the continuation when the chain cannot be continued (a conversation).
        self.replay = replay
        self.hold = hold  # keep the connection for the next turn when the response is done
        self.turn = turn
        self.timeout = timeout
        self.deadline = deadline
        self.retry_start = retry_start
        self.conn: Optional[AnyChannel] = None
        self.request_id: Optional[str] = None  # the x-request-id of the last connection's upgrade
        self.accumulator = ResponseAccumulator()
        self.events: list[Event] = []
        self.response: Optional[Response] = None
        self.failure: Optional[BaseException] = None  # what ended the stream, if not its end
        # Steering (see _steering): made by the first steer().
        self.steer_lock = threading.Lock()
        self.ledger: Optional[SteerLedger] = None
        self.queued_steers: list[Steer] = []  # before the response's id was known
        self.response_id: Optional[str] = None  # the response in flight
        self.ended = False  # the stream decided to end: no steer may be sent any more
        self.steered: list[Response] = []  # responses that steering replaced, in order
        # A response that ended while steering still owed an answer or a successor.
        self.ended_part: Optional[tuple[dict[str, Any], Response]] = None

    # --- deadlines -------------------------------------------------------------------------

    def _remaining(self) -> Optional[float]:
        if self.deadline is None:
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._total_timeout()
        return remaining

    def _bounded(self, seconds: float) -> float:
        remaining = self._remaining()
        return seconds if remaining is None else min(seconds, remaining)

    def _total_timeout(self) -> _retry.TotalTimeoutError:
        return _retry.TotalTimeoutError(
            f"the request did not finish within its timeout of {self.timeout}s",
            request_id=self.request_id,
        )

    def _timed_out(self, error: APITimeoutError) -> APITimeoutError:
        """The error for a receive that timed out: the total deadline's when that one passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline - 0.001:
            return self._total_timeout()
        return error

    # --- the connection --------------------------------------------------------------------

    def drop_connection(self, reason: str, *, lost: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.channels.discard(conn, reason, lost=lost)  # the pool logs it

    def _return_connection(self, *, hold: bool = False) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.channels.release(conn, hold=hold)

    # --- the start, under the retry policy -------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Acquire, send, and read the first event (checked); retried as a whole when allowed.

        With ``retry_start`` false (``collect_response``, which retries the whole request
        itself) an attempt's failure leaves as ``AttemptFailed``.
        """
        if self.turn is not None:
            self.payload, self.replay = self.turn.begin()
        if self.timeout is not None and self.deadline is None:
            self.deadline = time.monotonic() + self.timeout
        if not self.retry_start:
            return self._attempt()
        config = self.runtime.config
        return _retry.run(
            self._attempt,
            max_retries=config.max_retries,
            free_resends=config.max_connections + 1,
            deadline=self.deadline,
            stats=self.runtime.stats,
        )

    def _attempt(self) -> dict[str, Any]:
        config = self.runtime.config
        affinity = self.payload.get("previous_response_id")
        # A retried start begins afresh: an error that ended the last try ended nothing here.
        self.ended = False
        try:
            conn = self.channels.acquire(self._bounded(config.pool_timeout), affinity, self.lease)
        except APIError as error:
            # The handshake reached the server (or the pool is full, or time is up): what the
            # policy makes of it depends on the error alone.
            raise AttemptFailed(self._context(error), sent=True) from None
        self.conn = conn
        self.request_id = conn.request_id
        reused = conn.requests_started > 0
        payload = self._payload_for(conn, affinity)
        try:
            conn.send_json(payload)
        except APIConnectionError as error:
            # Nothing usable reached the server (a pooled connection it had closed): a free
            # resend, bounded by the policy.
            self.drop_connection("the send failed", lost=True)
            raise AttemptFailed(self._context(error), sent=False) from None
        except BaseException:
            self.drop_connection("the request could not be sent")
            raise
        try:
            data: dict[str, Any] = conn.recv_json(self._bounded(config.read_timeout))
            if payload is not self.replay and self.replay is not None and _not_found(data):
                # The server cannot continue the chain (expired, or never stored): send the
                # whole transcript at once on the same connection. Nothing reached the
                # caller; this is the conversation's plan B, not a retry of the request.
                self.runtime.stats.add("replays")
                log.debug("previous response not found: replaying the full context")
                payload = self.replay
                conn.send_json(payload)
                data = conn.recv_json(self._bounded(config.read_timeout))
            self.request_id = conn.request_id  # over HTTP, known once the answer came
            self.check(data)
        except LanesUnavailable as error:
            # Refused before anything was generated: resent at once without lanes.
            self.drop_connection("the server has no lanes", lost=True)
            raise AttemptFailed(self._context(error), sent=False) from None
        except APITimeoutError as error:
            self.drop_connection("no first event before the deadline")
            raise AttemptFailed(self._context(self._timed_out(error)), sent=True) from None
        except APIConnectionError as error:
            # Closed before answering: on a pooled connection (or a kept-alive HTTP one), most
            # likely one the server had closed while it was idle, which a new one cures at once.
            self.drop_connection("closed before the first event", lost=True)
            stale = reused or isinstance(error, KeepAliveDropped)
            raise AttemptFailed(self._context(error), sent=True, stale=stale) from None
        except APIError as error:  # a protocol violation, or an error event (check() raised)
            self.drop_connection("the server broke the protocol")  # unless check() gave it back
            raise AttemptFailed(self._context(error), sent=True) from None
        except BaseException:
            self.drop_connection("the first event could not be read")
            raise
        return data

    def _payload_for(self, conn: AnyChannel, affinity: Optional[str]) -> dict[str, Any]:
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
            self.runtime.stats.add("replays")
            return self.replay
        return self.payload

    # --- reading ---------------------------------------------------------------------------

    def check(self, data: Any) -> str:
        """The frame's event type; raises for a frame that is not an event, or an ``error``
        event (which ends the request). The one place a frame is judged."""
        kind = data.get("type") if data.__class__ is dict else None
        if kind.__class__ is str and kind != "error":
            return str(kind)
        if kind.__class__ is not str:
            self.drop_connection("the server sent a frame that is not an event")
            raise self._context(
                ProtocolError(
                    "the server sent a JSON frame that is not an event (no string type)",
                    request_id=self.request_id,
                )
            )
        error = error_from_event(data, response_id=self._response_id())
        with self.steer_lock:
            self.ended = True  # no steer may be sent from here on
            owed = self.more_to_come()
        if isinstance(error, APIStatusError) and (error.status_code or 500) < 500 and not owed:
            # A request-scoped error ends the request; the connection itself is sound.
            self._return_connection()
        else:
            # A server error, or steering still owes an answer that must reach no one else.
            self.drop_connection(f"error event {getattr(error, 'code', None)}")
        raise self._context(error)

    def receive(self) -> dict[str, Any]:
        """The next frame after events reached the caller: failures are interruptions."""
        conn = self.conn
        assert conn is not None  # held from start() until a terminal event
        try:
            timeout = self.runtime.config.read_timeout
            if self.deadline is not None:
                timeout = self._bounded(timeout)
            data: dict[str, Any] = conn.recv_json(timeout)
        except _retry.TotalTimeoutError as error:
            self.drop_connection("the request's timeout passed in the middle of a response")
            raise self._interrupted(StreamTimeoutError, error.message) from error
        except APITimeoutError as error:
            self.drop_connection("timed out in the middle of a response")
            cause = self._timed_out(error)
            raise self._interrupted(StreamTimeoutError, cause.message) from cause
        except APIConnectionError as error:
            self.drop_connection("connection lost in the middle of a response", lost=True)
            raise self._interrupted(StreamInterruptedError, error.message) from error
        except ProtocolError as error:
            self.drop_connection("the server broke the protocol")
            raise self._context(error) from None
        return data

    def finish(self, data: dict[str, Any], built: Optional[Response] = None) -> None:
        """After the terminal event: build the response and give the connection back.

        ``built``: the response, already built when steering kept the stream open after it.
        """
        if data.get("response").__class__ is not dict:
            self.drop_connection("a terminal event without a response")
            raise self._context(
                ProtocolError(
                    f"the server ended the response with a {data['type']!r} event that has no "
                    "response object",
                    request_id=self.request_id,
                )
            )
        try:
            response = self.response = built if built is not None else self.accumulator.build()
        except ProtocolError as error:
            self.drop_connection("the response could not be assembled")
            raise self._context(error) from None
        # A failed response is not continued from (the server evicts what it continued), so
        # only a usable one is worth keeping the connection for.
        self._return_connection(hold=self.hold and response.status in _CONTINUABLE)
        if self.turn is not None:
            try:
                self.turn.finished(response, self._pending_input())
            except ProtocolError as error:  # the conversation refused what the server sent
                raise self._context(error) from None

    # --- steering --------------------------------------------------------------------------

    def steer(self, value: Any, *, raise_on_failure: bool) -> Steer:
        items = steer_items(value)  # checked before anything is sent
        steer = Steer(items, raise_on_failure=raise_on_failure)
        with self.steer_lock:
            if self.ended or self.response is not None or self.failure is not None:
                raise SteerFailedError(
                    "this stream's response has already ended: send the input as a new "
                    "request (or a new turn of the conversation)",
                    code="response_already_completed",
                    response_id=self.response_id,
                )
            if self.ledger is None:
                self.ledger = SteerLedger()
            waiting_for_successor = self.ended_part is not None and self.ledger.accepted
            if self.response_id is None or self.conn is None or waiting_for_successor:
                # Sent when the response (or the successor on its way) is created.
                steer.status = "queued"
                self.queued_steers.append(steer)
                return steer
            self._send_steer(steer)
        return steer

    def _send_steer(self, steer: Steer) -> None:
        """Send one submission for the response in flight (under ``steer_lock``)."""
        conn = self.conn
        ledger = self.ledger
        assert ledger is not None
        steer.response_id = self.response_id
        if isinstance(conn, LaneChannel):
            # The lane is not settled while the ledger owes anything (see LaneChannel).
            conn.ledger = ledger
        send = getattr(conn, "send_concurrent", None)
        if send is None:
            ledger.all.append(steer)
            steer.error = SteerFailedError(
                "steering needs WebSocket mode; this response is streamed over HTTP",
                code="steering_not_supported",
                response_id=self.response_id,
            )
            steer._settle("failed")
            return
        ledger.sent(steer)
        try:
            send(
                {
                    "type": "response.steer",
                    "previous_response_id": steer.response_id,
                    "input": steer.input,
                }
            )
        except APIError as error:
            # The connection is lost: the stream reports that at its next read (with its
            # context); the steer itself simply never went out.
            ledger.unsent(steer)
            steer.error = SteerFailedError(
                f"the steering input could not be sent, the connection was lost: "
                f"{error.message}",
                code="stream_ended",
                response_id=self.response_id,
                request_id=error.request_id,
            )
            steer._settle("failed")
            return
        self.runtime.stats.add("steers_sent")

    def special(self, kind: str, data: dict[str, Any]) -> bool:
        """A ``response.created`` or a steering answer; returns whether the event belongs
        to the response (steering answers do not)."""
        if kind == "response.created":
            response = data.get("response")
            response_id = response.get("id") if isinstance(response, dict) else None
            # One section under steer_lock: a steer from another thread sees either the ended
            # response with its successor owed (and waits for it), or the successor.
            with self.steer_lock:
                ended = self.ended_part
                if ended is not None:
                    # A successor after steering: the response that ended is part of the story.
                    self.ended_part = None
                    previous = ended[1]
                    self.steered.append(previous)
                    ledger = self.ledger
                    applied = ledger.successor(response_id) if ledger is not None else []
                    if self.turn is not None:
                        steer_input = [item for steer in applied for item in steer.input]
                        self.turn.steered(previous, steer_input)
                    self.accumulator = ResponseAccumulator()
                self.response_id = response_id if isinstance(response_id, str) else None
                queued, self.queued_steers = self.queued_steers, []
                for waiting in queued:
                    self._send_steer(waiting)  # a failed send fails only that steer
            return True
        ledger = self.ledger
        if ledger is not None:
            answered = ledger.answer(kind, data)
            if answered is not None and answered.error is not None:
                answered.error._add_context(request_id=self.request_id)
        return False

    def steer_refusal(self, data: Any) -> Optional[dict[str, Any]]:
        """An ``error`` event that refuses a ``response.steer`` the server does not know (an
        older server or a gateway), as the ``response.steer.failed`` it stands for; ``None``
        for any other error, which ends the request."""
        ledger = self.ledger
        if ledger is None or data.__class__ is not dict or not is_steer_refusal(data):
            return None
        steer = ledger.oldest_unanswered()
        if steer is None:
            return None
        nested = data.get("error")
        message = nested.get("message") if isinstance(nested, dict) else None
        log.debug("the server does not know response.steer: %s", message)
        return {
            "type": "response.steer.failed",
            "steer": {"id": None, "previous_response_id": steer.response_id},
            "error": {
                "type": "invalid_request_error",
                "code": "steering_not_supported",
                "message": f"the server does not support steering ({message or 'refused'})",
            },
            "refused_by": data,
        }

    def more_to_come(self) -> bool:
        """After a terminal event: whether steering still owes an answer or a successor."""
        ledger = self.ledger
        return ledger is not None and ledger.open

    def end_here(self, data: Optional[dict[str, Any]] = None) -> bool:
        """After a terminal event (``data``; ``None`` after a steering answer): whether the
        stream ends now. Decided under ``steer_lock``, so that a steer sent from another
        thread either counts (the stream reads on to its answer) or is refused: never sent
        for a stream that has let its connection go, where its answer would reach the next
        request. When it does not end, the response that ended is kept (``ended_part``) in
        the same section, so a steer meanwhile waits for the successor."""
        with self.steer_lock:
            if self.more_to_come():
                if data is not None:
                    self._end_part(data)
                return False
            self.ended = True
            return True

    def _end_part(self, data: dict[str, Any]) -> None:
        """A terminal event after which steering still owes something: keep reading."""
        if data.get("response").__class__ is not dict:
            self.finish(data)  # raises the protocol error
        try:
            built = self.accumulator.build()
        except ProtocolError as error:
            self.drop_connection("the response could not be assembled")
            raise self._context(error) from None
        self.ended_part = (data, built)

    def settle_if_done(self) -> bool:
        """After a steering answer: when a response had ended and nothing more is owed, the
        stream is over (``finish`` done)."""
        ended = self.ended_part
        if ended is None or not self.end_here(None):
            return False
        self.ended_part = None
        self.finish(ended[0], ended[1])
        return True

    def settle_open_steers(self) -> None:
        """The stream is over: nobody will read what the server says of its open steers any
        more. One never sent fails (``stream_ended``); one sent (and perhaps accepted) is
        ``abandoned``: the server may still apply it, to a response nobody reads. Either way
        nobody waits on it forever."""
        with self.steer_lock:
            self.ended = True
            queued, self.queued_steers = self.queued_steers, []
            ledger = self.ledger
        for steer in queued:
            if ledger is not None and steer not in ledger.all:
                ledger.all.append(steer)
            steer.error = SteerFailedError(
                "the stream ended (closed, interrupted or failed) before this steering input "
                "could be sent",
                code="stream_ended",
                response_id=self.response_id,
                request_id=self.request_id,
            )
            steer._settle("failed")
        for steer in ledger.open_steers() if ledger is not None else []:
            steer._settle("abandoned")

    def steer_failure(self) -> Optional[SteerFailedError]:
        """The first failed submission whose caller asked to be told, for the stream's end."""
        ledger = self.ledger
        if ledger is None:
            return None
        for steer in list(ledger.all):
            if steer.raise_on_failure and steer.error is not None:
                steer.error.response = self.response
                return steer.error
        return None

    def _pending_input(self) -> list[dict[str, Any]]:
        ledger = self.ledger
        if ledger is None:
            return []
        return [
            item for steer in list(ledger.all) if steer.status == "pending" for item in steer.input
        ]

    def _interrupted(self, cls: type[StreamInterruptedError], cause: str) -> StreamInterruptedError:
        error = cls(
            f"{cause}; {len(self.events)} events had already been received, so the request is "
            "not retried (see .events and .partial_response)",
            request_id=self.request_id,
        )
        self._context(error)
        return error

    def _context(self, error: _E) -> _E:
        """``error`` with what this request knows: the upgrade's request id, the response id,
        the events received and the partial response."""
        error._add_context(
            request_id=self.request_id,
            response_id=self._response_id(),
            events=self.events,
            partial_response=self.partial(),
        )
        return error

    def partial(self) -> Optional[Response]:
        """The response accumulated so far; ``None`` before any event, or when the events
        cannot be assembled (they named invalid indices)."""
        if not self.events:
            return None
        try:
            return self.accumulator.build()
        except ProtocolError:
            return None

    def _response_id(self) -> Optional[str]:
        for event in self.events[:3]:
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                return str(response["id"])
        return None


def _events(request: _Request) -> Generator[Event, None, None]:
    # The hot loop of every stream: names are bound locally, the common path is a few dict
    # lookups, and anything unusual goes through request.check() or request.special().
    try:
        data = request.start()  # checked: an event with a string type
        kind = data["type"]
        keep = request.events.append
        add = request.accumulator.add
        while True:
            if kind in _SPECIAL and not request.special(kind, data):
                # A steering answer: shown, not part of the response.
                event = Event(data)
                keep(event)
                if request.settle_if_done():
                    yield event
                    break
            else:
                if kind == "response.created":
                    add = request.accumulator.add  # a successor has an accumulator of its own
                add(data)
                event = Event(data)
                keep(event)
                # At a terminal event: the end, unless a successor or an answer is owed.
                if kind in TERMINAL_EVENT_TYPES and request.end_here(data):
                    request.finish(data)
                    yield event
                    break
            yield event
            data = request.receive()
            kind = data.get("type") if data.__class__ is dict else None
            if kind.__class__ is not str or kind == "error":
                refusal = request.steer_refusal(data)
                if refusal is None:
                    request.check(data)  # raises: not an event, or a request-scoped error
                else:
                    data, kind = refusal, refusal["type"]
        failure = request.steer_failure()
        if failure is not None:
            raise failure
    except GeneratorExit:
        raise  # the caller closed the stream
    except BaseException as failure:
        request.failure = failure
        raise
    finally:
        # Reached with the connection still held only when the response was not read to its
        # end: an error, a timeout, or the caller leaving early (break, exception, dropped).
        request.drop_connection("the response was not read to its end")
        request.settle_open_steers()
        if request.turn is not None:
            request.turn.end()


# Events the loop hands to request.special(): a response starting, and steering answers.
_SPECIAL = frozenset({"response.created"}) | STEER_EVENTS


class ResponseStream(ClosesOnExit):
    """The events of one response, as an iterator; also a context manager.

    Nothing is sent until the first ``next()``. ``response`` is the finished ``Response``
    once the terminal event was read (``None`` before). Leaving early (``break``, an
    exception in the loop, ``close()``, the end of a ``with`` block, or dropping the stream)
    closes the connection, which stops the server generating the rest.
    """

    __slots__ = ("_events", "_request")

    def __init__(
        self,
        runtime: Runtime,
        payload: dict[str, Any],
        *,
        timeout: Optional[float] = None,
        turn: Optional[Turn] = None,
        channels: Optional[ChannelSource] = None,
        lease: Optional[LaneLease] = None,
    ) -> None:
        # A conversation's turn plans its payload at the first next(): ``payload`` is then
        # only a placeholder (its model shows in the repr).
        self._request = _Request(
            runtime,
            payload,
            timeout,
            hold=turn is not None,
            turn=turn,
            channels=channels,
            lease=lease,
        )
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

    @property
    def steered(self) -> Sequence[Response]:
        """The responses that steering replaced, in order (their successors carried on);
        ``response`` is the last successor's."""
        return tuple(self._request.steered)

    @property
    def steers(self) -> Sequence[Steer]:
        """Every ``steer()`` submission of this stream, in order."""
        ledger = self._request.ledger
        queued = self._request.queued_steers
        return (*(ledger.all if ledger is not None else ()), *queued)

    def steer(self, input: Any, *, raise_on_failure: bool = False) -> Steer:
        """Add user input to the response while it is being generated (``response.steer``).

        ``input``: text, a user message, or a list of them (``input_text``, ``input_image``
        and ``input_file`` parts). Callable from the thread iterating the stream or from
        another one; before the response has started, the input is sent at its
        ``response.created``. Returns a ``Steer`` whose ``status`` follows the server's
        answer. The stream shows the ``response.steer.accepted``, ``.pending`` and
        ``.failed`` events, and after an accepted steer goes on into the successor response
        (``steered`` holds the responses it replaced; ``response`` is the successor's).
        A failed steer leaves the response running as it was; with
        ``raise_on_failure=True`` the stream raises its ``SteerFailedError`` after the
        final event. Raises ``ConfigurationError`` for input that is not user messages,
        ``SteerFailedError`` when the response has already ended. A send that fails (the
        connection was lost) fails the ``Steer`` (``stream_ended``); the stream then reports
        the interruption. Steering needs WebSocket mode and a model that supports it.
        """
        return self._request.steer(input, raise_on_failure=raise_on_failure)

    def until_done(self) -> Response:
        """Read the remaining events and return the finished response.

        On a stream that already failed, raises that failure again; on one that was closed
        before its end (``close()``, ``break``, a ``with`` block), ``StreamClosedError``.
        """
        for _ in self._events:
            pass
        request = self._request
        if request.response is not None:
            return request.response
        if request.failure is not None:
            raise request.failure
        raise StreamClosedError(
            "this stream was closed before its response ended (close(), break or the end of a "
            "with block), so the rest of the response was never read; start a new request",
            events=request.events,
            partial_response=request.partial(),
            response_id=request._response_id(),
        )

    def close(self) -> None:
        """Stop: closes the connection unless the response was read to its end."""
        self._events.close()
        # A stream closed before it started never ran its generator: its queued steers too
        # must fail rather than wait forever.
        self._request.settle_open_steers()

    def __repr__(self) -> str:
        request = self._request
        state = "done" if request.response is not None else f"{len(request.events)} events"
        return f"<ResponseStream model={request.payload.get('model')!r} {state}>"


def collect_response(
    runtime: Runtime,
    payload: dict[str, Any],
    *,
    timeout: Optional[float],
    replay: Optional[dict[str, Any]] = None,
    hold: bool = False,
    channels: Optional[ChannelSource] = None,
    watch: Optional[AttemptWatch] = None,
    lease: Optional[LaneLease] = None,
) -> Response:
    """Run a request to its end without yielding anything: ``create_response``.

    Since the caller sees nothing until the end, a connection lost midway may be retried as a
    whole request, under the same policy, budget and total deadline. ``replay`` and ``hold``
    are a conversation's (see ``_Request``): each try chooses between continuation and replay
    on the connection it gets. ``watch`` sees every try.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def attempt() -> Response:
        if watch is not None:
            watch.attempt()
        request = _Request(
            runtime,
            payload,
            timeout,
            retry_start=False,
            deadline=deadline,
            replay=replay,
            hold=hold,
            channels=channels,
            lease=lease,
        )
        try:
            for _ in _events(request):
                pass
        except AttemptFailed as failure:
            if watch is not None:
                watch.failed(failure.error)
            raise
        except APIError as error:
            if watch is not None:
                watch.failed(error)
            # Midway: nothing reached the caller, so the policy may retry the whole request.
            raise AttemptFailed(error, sent=True) from None
        assert request.response is not None  # the generator ends only at a terminal event
        return request.response

    config = runtime.config
    return _retry.run(
        attempt,
        max_retries=config.max_retries,
        free_resends=config.max_connections + 1,
        deadline=deadline,
        whole_request=True,
        stats=runtime.stats,
        sleep=time.sleep if watch is None else watch.sleep,
    )
