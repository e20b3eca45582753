"""Lanes: many responses at once on one WebSocket, each in a named lane (``stream_id``).

Newer OpenAI servers run up to ``MAX_ACTIVE`` responses at once on one connection, in up to
``MAX_LANES`` named lanes; every event carries its lane's ``stream_id`` and is routed by it
(PROTOCOL.md section 4). A ``MuxConnection`` wraps one ``Connection`` with:

- **one reader thread**, the only one that reads the socket: it routes each event to its
  lane's queue, answers pings, pings a quiet connection and notices a dead one;
- **sends from any thread**, one at a time (requests of other lanes, steering);
- **lanes**: named slots, each serving one request at a time, each with the server-side
  cache of its latest response (which a conversation's next turn continues from).

What reaches whom:

- an event naming a lane goes to that lane's request only, its ``error`` events included;
- an ``error`` without ``stream_id`` is connection-level: every request on the socket gets
  it, and the connection closes;
- a lost connection or a protocol violation fails every request on it; so does an event
  naming a lane that serves no request (a server that lies about lanes);
- steering answers route by their lane, or by the response they name when they carry none.

Abandoning a response (a request leaving before its terminal event): nothing in the protocol
stops one lane's response, and closing the socket would cut the other lanes' responses. So
the abandoned lane's events are discarded as they arrive, the connection takes no new
requests, and it closes once the other lanes' responses have ended; that close is what stops
the abandoned response (and its billing). Conversations whose lanes lived there continue on
another connection (by replay, or from storage).

Probing: the first request on a new connection runs alone until its first event. One that
carries its ``stream_id`` confirms lanes; ``invalid_stream_id`` means the server refuses them
(the request is resent without lanes, nothing was generated); any other event without
``stream_id`` means the server ignores them: that request goes on alone on this connection,
which then closes. Either way the pool stops using lanes (``_lanepool``).

Locking: the pool's lock guards every lane and connection state (one lock, so a decision
never sees half of a change); each lane's condition shares it. Sends take ``send_lock``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._connection import Connection
from ._steering import SteerLedger, is_steer_refusal
from .errors import APIConnectionError, APIError, APITimeoutError, ProtocolError

if TYPE_CHECKING:
    from ._config import ClientConfig

__all__ = [
    "MAX_ACTIVE",
    "MAX_BUFFERED_EVENTS",
    "MAX_LANES",
    "Lane",
    "LaneChannel",
    "LaneLease",
    "LanesUnavailable",
    "MuxConnection",
]

logger = logging.getLogger("oaiws.lanes")

# The service's limits per connection (PROTOCOL.md section 4).
MAX_ACTIVE = 16
MAX_LANES = 32

# Unread events one lane may buffer while its request does not read (it is paused, or slow).
# Past this the request fails instead of the process growing without bound.
MAX_BUFFERED_EVENTS = 100_000

# The longest the reader waits for bytes before looking after the connection (pings, age).
_CARE_INTERVAL = 1.0

_TERMINAL = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "response.done", "error"}
)
_CACHING = frozenset({"response.completed", "response.incomplete"})
_CACHING_STATUSES = frozenset({"completed", "incomplete"})

# Queued for a probe request whose lane the server refused.
_REFUSED = object()


class LanesUnavailable(APIConnectionError):
    """The server answered a lane request with ``invalid_stream_id``: it has no lanes. Nothing
    was generated, so the request is resent without lanes (never reaches the caller)."""


class LaneLease:
    """A conversation's claim on one lane between its turns, so that its next turn finds the
    lane's cache holding its chain. The pool may take an idle lane back when it needs room
    (the next turn then moves, by replay or from storage); ``release()`` gives it up."""

    __slots__ = ("__weakref__", "lane", "released")

    def __init__(self) -> None:
        self.lane: Optional[Lane] = None
        self.released = False

    def release(self) -> None:
        self.released = True
        self.lane = None


class Lane:
    """One named lane of a connection: at most one request at a time."""

    __slots__ = (
        "abandoned",
        "channel",
        "cond",
        "last_response_id",
        "last_used",
        "lease",
        "mux",
        "name",
        "queue",
        "requests",
        "response_ids",
        "waiting",
    )

    def __init__(self, mux: MuxConnection, name: str) -> None:
        self.mux = mux
        self.name = name
        self.queue: collections.deque[Any] = collections.deque()
        self.cond = threading.Condition(mux.lock)
        self.waiting = False
        self.channel: Optional[LaneChannel] = None
        self.lease: Optional[weakref.ReferenceType[LaneLease]] = None
        self.last_response_id: Optional[str] = None  # what the lane's server cache holds
        self.last_used = time.monotonic()
        self.requests = 0
        self.abandoned = False  # its request left mid-response; events are discarded
        self.response_ids: set[str] = set()  # responses of the current request (steering)

    def leased_by(self) -> Optional[LaneLease]:
        lease = self.lease() if self.lease is not None else None
        if lease is None or lease.released or lease.lane is not self:
            return None
        return lease

    @property
    def busy(self) -> bool:
        return self.channel is not None or self.abandoned

    def deliver(self, item: Any) -> None:
        """Queue an event (or a failure marker) for the lane's request; under the lock."""
        if self.abandoned or self.channel is None:
            return
        queue = self.queue
        if len(queue) >= MAX_BUFFERED_EVENTS:
            queue.clear()
            queue.append(
                APIConnectionError(
                    f"lane {self.name} of connection #{self.mux.id} buffered "
                    f"{MAX_BUFFERED_EVENTS} unread events: the request did not read its "
                    "response for too long"
                )
            )
        else:
            queue.append(item)
        if self.waiting:
            self.cond.notify()


class MuxConnection:
    """One WebSocket carrying many lanes; see the module docstring."""

    def __init__(
        self,
        conn: Connection,
        config: ClientConfig,
        lock: threading.RLock,
        *,
        retire_at: float,
        on_change: Callable[[MuxConnection], None],
        on_lanes_missing: Callable[[MuxConnection, str], None],
    ) -> None:
        self.conn = conn
        self.id = conn.id
        self.config = config
        self.lock = lock
        self.send_lock = threading.Lock()
        self.lanes: dict[str, Lane] = {}
        self.state = "probing"  # then "lanes", or "plain" for a server without lanes
        self.retiring = False  # takes no new request; closes when its last one ends
        self.closed = False
        # The lanes that sent steers, in the order sent: a server that does not know
        # response.steer refuses each with an error naming no lane, in that order. (A server
        # that knows it answers on the lane; the bound keeps this from growing there.)
        self.steered_lanes: collections.deque[Lane] = collections.deque(maxlen=MAX_LANES * 4)
        self.failure: Optional[tuple[type[APIError], str]] = None
        self.retire_at = retire_at
        self.idle_since = time.monotonic()
        # The pool, held weakly: a client dropped without close() must not be kept alive by
        # its reader threads; once it is gone, each reader closes its connection and ends.
        self._pool_on_change = weakref.WeakMethod(on_change)
        self._pool_on_lanes_missing = weakref.WeakMethod(on_lanes_missing)
        self._thread = threading.Thread(
            target=self._read_loop, name=f"oaiws-lanes-{conn.id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _on_change(self) -> None:
        """Tell the pool that this connection's state or capacity changed, or that its reader
        looks after it while quiet (under the lock); with the pool gone, close."""
        tell = self._pool_on_change()
        if tell is None:
            self.closed = True  # the client was dropped: the reader ends and closes
        else:
            tell(self)

    def _on_lanes_missing(self, how: str) -> None:
        tell = self._pool_on_lanes_missing()
        if tell is not None:
            tell(self, how)

    # -- lanes (under the lock) -----------------------------------------------------------

    @property
    def active(self) -> int:
        """Responses the server is generating here, abandoned ones included."""
        return sum(1 for lane in self.lanes.values() if lane.busy)

    @property
    def live(self) -> int:
        """Lanes serving a request."""
        return sum(1 for lane in self.lanes.values() if lane.channel is not None)

    def accepting(self, now: float) -> bool:
        """Whether a new request may start here: lanes confirmed, healthy, not retiring."""
        if not self.retiring and now >= self.retire_at:
            self.retiring = True
            logger.debug("lane connection #%d retires (age)", self.id)
        return self.state == "lanes" and not self.retiring and not self.unusable

    @property
    def unusable(self) -> bool:
        return self.closed or self.failure is not None or self.conn.closed

    def free_lane(self) -> Optional[Lane]:
        """A lane for a new request: a new name while there is room (``MAX_LANES`` distinct
        names per connection, for its whole life), else the least recently used idle lane
        that no conversation keeps. So a lane's cache (a chain the caller continues with
        ``previous_response_id``) lasts as long as it can."""
        if len(self.lanes) < MAX_LANES:
            return self.new_lane()
        oldest: Optional[Lane] = None
        for lane in self.lanes.values():
            idle = not lane.busy and lane.leased_by() is None
            if idle and (oldest is None or lane.last_used < oldest.last_used):
                oldest = lane
        return oldest

    def new_lane(self) -> Lane:
        name = f"oaiws-{len(self.lanes)}"
        lane = self.lanes[name] = Lane(self, name)
        return lane

    def take(self, lane: Lane) -> LaneChannel:
        """Give ``lane`` to a request (the pool binds it to the request's lease)."""
        channel = LaneChannel(self, lane)
        lane.channel = channel
        lane.queue.clear()
        lane.response_ids = set()
        lane.requests += 1
        lane.last_used = time.monotonic()
        return channel

    def give_back(self, lane: Lane, *, abandoned: bool) -> None:
        """The request on ``lane`` is over (``abandoned``: before its response ended)."""
        lane.channel = None
        lane.queue.clear()
        lane.last_used = time.monotonic()
        if abandoned and not self.unusable:
            lane.abandoned = True
            lane.last_response_id = None
            lane.lease = None
            if not self.retiring:
                logger.debug(
                    "lane %s of connection #%d abandoned mid-response: the connection closes "
                    "once its other lanes' responses end",
                    lane.name,
                    self.id,
                )
            self.retiring = True
        if self.live == 0:
            self.idle_since = lane.last_used

    def should_close(self) -> bool:
        """Retiring (or broken) with nobody left on it."""
        return (self.retiring or self.unusable) and self.live == 0

    # -- reading --------------------------------------------------------------------------

    def next_event(self, lane: Lane, timeout: float) -> Any:
        """The next event of ``lane``'s request, waiting at most ``timeout`` seconds."""
        queue = lane.queue
        try:
            # Without the lock: popleft is atomic, and an empty queue is checked again under
            # the lock below before waiting, so no wake-up is lost.
            item = queue.popleft()
        except IndexError:
            pass
        else:
            if item.__class__ is dict:
                return item
            queue.appendleft(item)  # a marker: handled below, under the lock
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                if queue:
                    item = queue.popleft()
                    if item.__class__ is dict:
                        return item
                    if item is _REFUSED:
                        raise LanesUnavailable(
                            "the server has no lanes (invalid_stream_id)",
                            request_id=self.conn.request_id,
                        )
                    if isinstance(item, APIError):
                        raise item
                    return item
                if self.failure is not None:
                    cls, message = self.failure
                    raise cls(message, request_id=self.conn.request_id)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise APITimeoutError(
                        f"no event from the server on lane {lane.name} of connection "
                        f"#{self.id} for {timeout:g}s",
                        request_id=self.conn.request_id,
                    )
                lane.waiting = True
                try:
                    lane.cond.wait(remaining)
                finally:
                    lane.waiting = False

    def _read_loop(self) -> None:
        conn = self.conn
        config = self.config
        frame_timeout = config.connect_timeout
        care = (
            _CARE_INTERVAL
            if config.ping_interval is None
            else min(_CARE_INTERVAL, config.ping_interval)
        )
        failure: tuple[type[APIError], str] = (
            APIConnectionError,
            f"lane connection #{self.id} was closed",
        )
        try:
            while not self.closed:
                if not conn.wait_readable(care):
                    self._care()
                    continue
                data = conn.read_one(frame_timeout)
                if data is None:
                    continue
                with self.lock:
                    self._route(data)
                if data.__class__ is dict and data.get("type") == "response.created":
                    # A request starts: let its thread run now rather than after the rest of a
                    # burst already read (its first event would wait up to the interpreter's
                    # switch interval, 5 ms; see docs/performance.md, Lanes).
                    time.sleep(0)
        except APIError as error:
            if not self.closed:
                cls: type[APIError] = (
                    ProtocolError if isinstance(error, ProtocolError) else APIConnectionError
                )
                failure = (cls, error.message)
                if isinstance(error, APITimeoutError):
                    failure = (
                        APIConnectionError,
                        f"a frame stalled on lane connection #{self.id}: {error.message}",
                    )
        except Exception as exc:  # noqa: BLE001 - the socket, closed under the reader
            if not self.closed:
                failure = (APIConnectionError, f"lane connection #{self.id} was lost: {exc!r}")
        finally:
            with self.lock:
                self.closed = True
                self.fail(*failure)
            with self.send_lock:
                conn.close()

    def _care(self) -> None:
        """While no bytes arrive: keep the connection alive, and notice a dead one."""
        with self.send_lock:
            alive = self.conn.ping_if_quiet(keep_timeout=True)
        if not alive:
            raise APIConnectionError(f"lane connection #{self.id}: ping unanswered")
        with self.lock:
            self._on_change()  # the pool looks at its age and idleness

    def _route(self, data: Any) -> None:
        """One event from the server, to the lane it belongs to (under the lock)."""
        if data.__class__ is not dict:
            self._violation("a JSON frame that is not an event object")
            return
        stream_id = data.get("stream_id")
        kind = data.get("type")
        if stream_id.__class__ is str:
            lane = self.lanes.get(stream_id)
            if lane is None or not lane.busy:
                self._violation(
                    f"an event for lane {stream_id[:64]!r}, which serves no request"
                )
                return
            if self.state == "probing":
                if kind == "error" and _refuses_lanes(data):
                    # Refused, naming the lane it refuses: no lanes here either.
                    self.retiring = True
                    self._on_lanes_missing("refused")
                    lane.deliver(_REFUSED)
                    return
                self.state = "lanes"
                self._on_change()  # confirmed: others may join
            if kind.__class__ is str and kind.startswith("response.steer."):
                # Answered on its lane: a server that knows steering. Its entry in the
                # refusal line is not needed.
                with contextlib.suppress(ValueError):
                    self.steered_lanes.remove(lane)
            self._track(lane, kind, data)
            lane.deliver(data)
            return
        if self.state != "lanes":
            self._route_unlaned(kind, data)
            return
        if kind.__class__ is str and kind.startswith("response.steer."):
            self._route_steer(data)
            return
        if kind == "error" and is_steer_refusal(data):
            # A server that does not know response.steer names no lane in its refusal: it is
            # for the oldest steer sent on this connection. One for no request is dropped.
            try:
                lane = self.steered_lanes.popleft()
            except IndexError:
                logger.debug("lane connection #%d: a steering refusal for no request", self.id)
                return
            lane.deliver(data)
            return
        if kind == "error":
            # Connection-level: every request here gets it; the connection is done.
            logger.debug("lane connection #%d: connection-level error event", self.id)
            for lane in self.lanes.values():
                lane.deliver(dict(data))
            self.retiring = True
            self.fail(APIConnectionError, f"lane connection #{self.id} failed (error event)")
            return
        self._violation(f"a {kind!r} event without stream_id")

    def _route_unlaned(self, kind: Any, data: dict[str, Any]) -> None:
        """An event without ``stream_id`` while probing (or on a server without lanes): it
        can only be the one request's."""
        lanes = [lane for lane in self.lanes.values() if lane.channel is not None]
        if len(lanes) != 1:
            self._violation("an event without stream_id")
            return
        lane = lanes[0]
        if self.state == "probing":
            self.retiring = True  # either way this connection serves no other request
            if kind == "error" and _refuses_lanes(data):
                self._on_lanes_missing("refused")
                lane.deliver(_REFUSED)
                return
            if kind != "error":
                self.state = "plain"
                self._on_lanes_missing("ignored")
        self._track(lane, kind, data)
        lane.deliver(data)

    def _route_steer(self, data: dict[str, Any]) -> None:
        steer = data.get("steer")
        target = steer.get("previous_response_id") if isinstance(steer, dict) else None
        for lane in self.lanes.values():
            if lane.channel is not None and target in lane.response_ids:
                lane.deliver(data)
                return
        logger.debug("lane connection #%d: a steering answer for no request here", self.id)

    def _track(self, lane: Lane, kind: Any, data: dict[str, Any]) -> None:
        """What the lane's server-side cache holds, and which responses its request has."""
        if kind.__class__ is not str:
            return
        if kind == "response.created":
            response = data.get("response")
            response_id = response.get("id") if isinstance(response, dict) else None
            if isinstance(response_id, str):
                lane.response_ids.add(response_id)
        elif kind in _TERMINAL:
            response = data.get("response")
            cached: Any = None
            if isinstance(response, dict):
                status = response.get("status")
                if kind in _CACHING or (kind == "response.done" and status in _CACHING_STATUSES):
                    cached = response.get("id")
            lane.last_response_id = cached if cached.__class__ is str else None

    def _violation(self, what: str) -> None:
        self.fail(ProtocolError, f"the server sent {what} on lane connection #{self.id}")

    def fail(self, cls: type[APIError], message: str) -> None:
        """Every request here fails with ``cls(message)`` once its queue is read (under the
        lock)."""
        self.closed = True  # the reader stops and closes the socket
        if self.failure is None:
            self.failure = (cls, message)
            logger.debug("lane connection #%d failed: %s", self.id, message)
        for lane in self.lanes.values():
            if lane.waiting:
                lane.cond.notify()
        self._on_change()

    # -- sending and closing --------------------------------------------------------------

    def send(self, payload: dict[str, Any]) -> None:
        """Send one event from any thread."""
        with self.send_lock:
            self.conn.send_json(payload)

    def close(self) -> None:
        """Close the socket (outside the lock); the reader ends."""
        with self.lock:
            self.closed = True
        with self.send_lock:
            self.conn.close()

    def abandon(self) -> None:
        """In a child process after fork: drop the parent's socket silently."""
        self.closed = True
        self.conn.abandon()


class LaneChannel:
    """What a request holds on a lane: sends on the connection, receives its lane's events.

    Quacks like a ``Connection`` for ``_stream`` (``send_json``, ``recv_json``,
    ``last_response_id``, ``requests_started``, ``request_id``, ``closed``). ``ledger`` is the
    request's steering record, when it steers.
    """

    __slots__ = ("_at_end", "lane", "ledger", "mux", "request_id", "requests_started")

    def __init__(self, mux: MuxConnection, lane: Lane) -> None:
        self.mux = mux
        self.lane = lane
        self.request_id = mux.conn.request_id
        self.requests_started = mux.conn.requests_started
        self.ledger: Optional[SteerLedger] = None
        self._at_end = True  # the last event read ended a response

    @property
    def settled(self) -> bool:
        """Whether nothing more will arrive on the lane for this request: its last event
        ended a response, and no steering answer or successor is owed."""
        ledger = self.ledger
        return self._at_end and (ledger is None or not ledger.open)

    @property
    def closed(self) -> bool:
        return self.mux.unusable

    @property
    def last_response_id(self) -> Optional[str]:
        return self.lane.last_response_id

    @property
    def stream_id(self) -> str:
        return self.lane.name

    def send_json(self, payload: Any) -> None:
        if payload.get("type") == "response.create":
            self._at_end = False
            if self.mux.state != "plain":
                payload = {**payload, "stream_id": self.lane.name}
        self.mux.send(payload)

    def send_concurrent(self, payload: Any) -> None:
        """Send a steer, from any thread."""
        mux = self.mux
        with mux.send_lock:
            mux.steered_lanes.append(self.lane)
            try:
                mux.conn.send_json(payload)
            except BaseException:
                mux.steered_lanes.pop()
                raise

    def interrupt(self) -> None:
        """From another thread: the owner's next read fails at once (``APIConnectionError``);
        the owner then gives the lane up (abandoned, unless its response had ended)."""
        with self.mux.lock:
            if self.lane.channel is not self:
                return  # given back meanwhile: the lane may serve someone else now
            self.lane.deliver(
                APIConnectionError(
                    f"the request on lane {self.lane.name} of connection #{self.mux.id} was "
                    "interrupted"
                )
            )

    def recv_json(self, timeout: float) -> Any:
        data = self.mux.next_event(self.lane, timeout)
        kind = data.get("type") if data.__class__ is dict else None
        # A refused steer's error ends nothing (the stream turns it into a steer failure).
        self._at_end = kind in _TERMINAL and not (kind == "error" and is_steer_refusal(data))
        return data

    def __repr__(self) -> str:
        return f"<LaneChannel {self.lane.name} of connection #{self.mux.id}>"


def _refuses_lanes(data: dict[str, Any]) -> bool:
    """Whether a probe's error says the server has no lanes: ``invalid_stream_id``, or any
    client error about the ``stream_id`` field (``unknown_parameter``, ...)."""
    nested = data.get("error")
    fields = nested if isinstance(nested, dict) else data
    status = data.get("status")
    return fields.get("code") == "invalid_stream_id" or (
        fields.get("param") == "stream_id" and not (isinstance(status, int) and status >= 500)
    )
