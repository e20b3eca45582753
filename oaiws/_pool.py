"""The bounded, thread-safe pool of WebSocket connections.

Rules, each of them tested:

- **Bounded.** At most ``max_connections`` connections are open or opening. Every slot is
  accounted for under the lock (``_total``); every exit path of every method either keeps a
  connection in its slot or frees the slot, handing it to the oldest waiter.
- **Fair.** Callers that find the pool full wait in FIFO order; a returned connection, or a
  freed slot, goes to the oldest waiter. A newcomer never overtakes a waiter.
- **Warm.** Idle connections are taken most-recently-used first, so a hot set stays warm and
  the rest can age out after ``idle_timeout`` (never below ``min_connections``).
- **Affinity.** ``acquire(affinity=X)`` prefers the idle connection whose server-side cache
  holds response ``X``; it only chooses among idle connections and never lets a caller
  overtake a waiter. When that connection is busy or gone, the normal rule applies.
- **Holds, bounded by ``affinity_wait``.** A server caches one response per connection, so a
  connection that serves anyone else loses the chain it held. ``release(conn, hold=True)``
  (a ``Conversation``'s turn) keeps the connection for the continuation of its response for
  at most ``affinity_wait`` seconds: only ``acquire(affinity=<that response>)`` may take it,
  even past waiters, since it was kept for that very request. Holds never cost another
  caller more than ``affinity_wait``: no hold is granted while the oldest waiter has waited
  that long, and a waiter that has waited that long (or a hold that ran out) takes a held
  connection, oldest waiter first. ``release_hold(X)`` ends a hold early.
- **No I/O under the lock.** Handshakes, closes and pings happen outside it.
- **Checked before use.** A connection that waited idle in the pool is checked (drained,
  closed ones dropped) when it is checked out. One that a returning request hands straight
  to a waiting one is not polled again: it read its terminal event an instant before, and a
  poll there is a system call that releases the GIL, which with many threads costs a context
  switch per request (measured: 32 threads over 8 connections went from 565 to 920 requests
  per second without it). A server that closed it in that instant is caught by the first
  send or read, before any event, and the request is sent again on another connection.
- **Rotation.** A connection retires ahead of ``max_connection_age`` by a margin (clamped to
  a quarter of the age) and a downward-only random jitter, so a fleet opened together does
  not reconnect together. A connection past that point is never handed out; one in use is
  retired when it comes back, never in the middle of a response.
- **Idle care.** A blocking socket answers pings only while someone reads it, so a daemon
  thread drains idle connections (answering pings, noticing closes), pings quiet ones,
  drops dead ones before anyone checks them out, retires old ones and keeps
  ``min_connections`` open.
- **Fork safety.** In a child process the pool starts empty; connections inherited from the
  parent are abandoned without sending anything on them.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Callable, Optional

from ._config import ClientConfig
from ._connection import Connection
from .errors import ClientClosedError, OAIWSError, PoolTimeoutError

__all__ = ["ConnectFn", "Pool"]

logger = logging.getLogger("oaiws.pool")

ConnectFn = Callable[[ClientConfig], Connection]

# Downward-only jitter of a connection's lifetime, as a fraction of max_connection_age.
_JITTER_FRACTION = 0.05

# The longest the maintenance thread sleeps between two rounds of idle care.
_MAX_CARE_INTERVAL = 1.0
_MIN_CARE_INTERVAL = 0.01

# After min_connections could not be opened, wait this long before trying again (seconds),
# doubling up to the maximum, so that a refusing server is not hammered from the background.
_FILL_BACKOFF_START = 0.5
_FILL_BACKOFF_MAX = 30.0

_COUNTERS = (
    "connections_opened",
    "connections_closed",
    "connections_expired",
    "connections_discarded",
    "connections_lost",
    "handshake_errors",
    "checkouts",
    "reuses",
    "requests_wait_ms",
    "requests_timeouts",
    "retries",
    "affinity_hits",
    "affinity_misses",
    "affinity_holds",
    "affinity_holds_preempted",
    "replays",
)


class _Waiter:
    """One caller waiting for a connection; whoever frees one fills exactly one field."""

    __slots__ = ("affinity", "closed", "conn", "event", "handed", "since", "slot")

    def __init__(self, affinity: Optional[str], since: float) -> None:
        self.affinity = affinity
        self.since = since  # time.monotonic() when it joined the line
        self.event = threading.Event()
        self.conn: Optional[Connection] = None
        self.handed = False  # conn came straight from a request that had just finished
        self.slot = False  # a free slot: the waiter opens a connection in it
        self.closed = False  # the pool was closed while it waited

    @property
    def granted(self) -> bool:
        return self.conn is not None or self.slot or self.closed


class _Entry:
    """The pool's bookkeeping of one open connection."""

    __slots__ = ("held_until", "idle_since", "retire_at")

    def __init__(self, retire_at: float, idle_since: float) -> None:
        self.retire_at = retire_at
        self.idle_since = idle_since
        # Non-zero while the connection is kept for the continuation of its last response:
        # time.monotonic() at which the hold runs out (real time, like every wait).
        self.held_until = 0.0


class Pool:
    """A bounded pool of ``Connection``s shared by the threads of one ``Client``.

    ``connect`` opens one connection (``Connection.open``; tests inject a fake). ``clock``
    measures ages and idle times (``time.monotonic``; tests may inject a fake one). Waiting
    for a connection always uses real time. ``background=False`` runs no maintenance thread:
    the owner calls ``run_maintenance()`` itself (tests drive the pool step by step).
    ``config.affinity_wait`` bounds holds (see the module's rules); ``0`` disables them.
    """

    def __init__(
        self,
        config: ClientConfig,
        connect: ConnectFn = Connection.open,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        background: bool = True,
    ) -> None:
        self._config = config
        self._affinity_wait = config.affinity_wait
        self._background = background
        self._connect = connect
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._init_state()
        _live_pools.add(self)
        if config.min_connections > 0:
            # Warm connections are opened by the maintenance thread, never by the caller.
            self._start_maintenance()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        # Slots taken: connections open (idle, in use, under care) plus handshakes in flight.
        self._total = 0
        self._opening = 0
        self._idle: collections.deque[Connection] = collections.deque()  # right end = MRU
        self._in_use: set[Connection] = set()
        self._caring: set[Connection] = set()  # idle, taken out by the maintenance thread
        self._entries: dict[Connection, _Entry] = {}
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._fill_retry_at = 0.0
        self._fill_backoff = _FILL_BACKOFF_START

    # -- checkout --------------------------------------------------------------------

    def acquire(
        self, timeout: Optional[float] = None, affinity: Optional[str] = None
    ) -> Connection:
        """Check a connection out, waiting up to ``timeout`` (default ``pool_timeout``).

        Raises ``PoolTimeoutError`` when none became free in time, the handshake's own
        exception when a new connection could not be opened, and ``ClientClosedError``
        once the pool is closed.
        """
        self._check_fork()
        if timeout is None:
            timeout = self._config.pool_timeout
        self._start_maintenance()
        conn, fresh, handed = self._checkout(timeout, affinity)
        held: Optional[Connection] = conn
        try:
            while not fresh and not handed:
                problem = self._unfit(conn)
                if problem is None:
                    break
                # A stale or dead idle connection is not the caller's failure: drop it and
                # use another idle one, or open a new one in the same slot (keeping our turn).
                held = None
                replacement = self._replace(conn, problem)
                conn.close()
                if replacement is None:
                    conn = self._open_in_reserved_slot()
                    fresh = True
                else:
                    conn = replacement
                held = conn
        except BaseException:
            # Interrupted between checkout and hand-over: the slot must not leak.
            if held is not None:
                self.discard(held, "checkout interrupted")
            raise
        with self._lock:
            self._counters["checkouts"] += 1
            if not fresh:
                self._counters["reuses"] += 1
            if affinity is not None:
                hit = conn.last_response_id == affinity
                self._counters["affinity_hits" if hit else "affinity_misses"] += 1
        if not fresh:
            logger.debug("connection #%d reused", conn.id)
        return conn

    def _checkout(
        self, timeout: float, affinity: Optional[str]
    ) -> tuple[Connection, bool, bool]:
        """An idle connection, or a new one in a free slot, waiting in line when needed.

        Also says whether the connection is new (``fresh``) and whether a returning request
        handed it over directly (``handed``); only one that was neither needs checking.
        """
        waiter: Optional[_Waiter] = None
        with self._lock:
            if self._closed:
                raise _closed_error()
            now = time.monotonic()
            # A connection held for this very continuation is taken even past waiters: the
            # hold already kept it from them, within the affinity_wait bound.
            conn = self._take_idle_locked(affinity, now, held_only=bool(self._waiters))
            if conn is not None:
                return conn, False, False
            # Connections under idle care come back within microseconds: wait for them
            # rather than paying a handshake. A newcomer never overtakes a waiter.
            if self._waiters or self._caring or self._total >= self._config.max_connections:
                waiter = _Waiter(affinity, now)
                self._waiters.append(waiter)
            else:
                self._total += 1
                self._opening += 1
        if waiter is None:
            return self._open_in_reserved_slot(), True, False
        return self._wait(waiter, timeout)

    def _wait(self, waiter: _Waiter, timeout: float) -> tuple[Connection, bool, bool]:
        started = waiter.since
        deadline = started + timeout
        try:
            while True:
                with self._lock:
                    wake_at = self._next_wake_locked(waiter, deadline, time.monotonic())
                if waiter.event.wait(max(0.0, wake_at - time.monotonic())):
                    break
                # Woken by the clock: a hold may have run out, or this line may have waited
                # affinity_wait; either way held connections go to the oldest waiters now.
                with self._lock:
                    now = time.monotonic()
                    if not waiter.granted:
                        self._preempt_holds_locked(now)
                    if waiter.granted or now >= deadline:
                        break
        except BaseException:
            # Interrupted (KeyboardInterrupt): leave the line, giving back any grant.
            with self._lock:
                if not waiter.granted:
                    self._waiters.remove(waiter)
                elif waiter.conn is not None:
                    self._in_use.discard(waiter.conn)
                    self._put_locked(waiter.conn, time.monotonic())
                elif waiter.slot:
                    self._opening -= 1
                    self._free_slot_locked()
            raise
        # Whatever woke us (or not), the verdict is read under the lock: a grant that raced
        # the timeout is honoured, never lost.
        with self._lock:
            self._counters["requests_wait_ms"] += int((time.monotonic() - started) * 1000)
            timed_out = not waiter.granted
            if timed_out:
                self._waiters.remove(waiter)
                self._counters["requests_timeouts"] += 1
        if timed_out:
            raise PoolTimeoutError(
                f"no connection became free within {timeout:g}s "
                f"(max_connections={self._config.max_connections}): raise max_connections "
                "or pool_timeout, or share the client among fewer threads"
            )
        if waiter.closed:
            raise _closed_error()
        if waiter.conn is not None:
            return waiter.conn, False, waiter.handed
        return self._open_in_reserved_slot(), True, False

    def _next_wake_locked(self, waiter: _Waiter, deadline: float, now: float) -> float:
        """When a waiter must look at the holds again, if nobody hands it anything before."""
        wake_at = deadline
        overdue_at = waiter.since + self._affinity_wait
        if self._affinity_wait > 0 and overdue_at > now:
            wake_at = min(wake_at, overdue_at)
        for conn in self._idle:
            held_until = self._entries[conn].held_until
            if held_until > now:
                wake_at = min(wake_at, held_until)
            elif held_until:
                return now  # a hold already ran out: hand it over at once
        return wake_at

    def _preempt_holds_locked(self, now: float) -> None:
        """Give held idle connections to waiters once their hold ran out or once the oldest
        waiter has waited ``affinity_wait``: holds never cost a waiter more than that."""
        while self._waiters:
            overdue = now - self._waiters[0].since >= self._affinity_wait
            chosen: Optional[Connection] = None
            for conn in self._idle:
                held_until = self._entries[conn].held_until
                if not held_until or (held_until > now and not overdue):
                    continue
                if chosen is None or held_until < self._entries[chosen].held_until:
                    chosen = conn  # the hold that runs out first is the least likely to be used
            if chosen is None:
                return
            entry = self._entries[chosen]
            if entry.held_until > now:
                self._counters["affinity_holds_preempted"] += 1
            entry.held_until = 0.0
            self._idle.remove(chosen)
            self._put_locked(chosen, now)

    def _take_idle_locked(
        self, affinity: Optional[str], now: float, *, held_only: bool = False
    ) -> Optional[Connection]:
        """The idle connection holding ``affinity``, else the most recently used one that is
        not held for someone else. ``held_only``: only one held for ``affinity`` will do."""
        chosen: Optional[Connection] = None
        if affinity is not None:
            for candidate in reversed(self._idle):
                if candidate.last_response_id == affinity:
                    if not held_only or self._entries[candidate].held_until > now:
                        chosen = candidate
                    break
        if chosen is None and not held_only:
            for candidate in reversed(self._idle):
                held_until = self._entries[candidate].held_until
                if held_until <= now:
                    chosen = candidate
                    break
        if chosen is None:
            return None
        self._idle.remove(chosen)
        self._entries[chosen].held_until = 0.0
        self._in_use.add(chosen)
        return chosen

    def _unfit(self, conn: Connection) -> Optional[str]:
        """Why an idle connection must not be handed out, checked outside the lock."""
        entry = self._entries.get(conn)
        if entry is None or self._clock() >= entry.retire_at:
            return "expired"
        if conn.closed or not conn.check_idle():
            return "lost"
        return None

    def _replace(self, conn: Connection, problem: str) -> Optional[Connection]:
        """Forget an unfit connection; give its holder another idle one or keep its slot."""
        with self._lock:
            self._in_use.discard(conn)
            entry = self._entries.pop(conn, None)
            self._counters["connections_closed"] += 1
            if problem == "expired":
                self._counters["connections_expired"] += 1
            else:
                self._counters["connections_lost"] += 1
            if entry is None:
                # Not ours any more (a fork reset the pool): take a slot like a newcomer.
                self._total += 1
            replacement = self._take_idle_locked(None, time.monotonic())
            if replacement is None:
                self._opening += 1  # the slot stays ours, now for a handshake
            else:
                self._free_slot_locked()  # the replacement brought its own slot
        if problem == "expired":
            logger.debug("connection #%d retired at checkout (age %.1fs)", conn.id, self._age(conn))
        else:
            logger.debug("connection #%d found dead at checkout", conn.id)
        return replacement

    def _open_in_reserved_slot(self) -> Connection:
        """Open a connection in a slot already counted in ``_total`` and ``_opening``."""
        try:
            conn = self._connect(self._config)
        except BaseException as exc:
            with self._lock:
                self._opening -= 1
                if isinstance(exc, Exception):
                    self._counters["handshake_errors"] += 1
                self._free_slot_locked()
            raise
        with self._lock:
            self._opening -= 1
            self._counters["connections_opened"] += 1
            if self._closed:
                self._counters["connections_closed"] += 1
                self._free_slot_locked()
                closed = True
            else:
                self._entries[conn] = _Entry(self._retire_at(conn), self._clock())
                self._in_use.add(conn)
                closed = False
        if closed:
            conn.close()
            raise _closed_error()
        return conn

    # -- checkin ---------------------------------------------------------------------

    def release(self, conn: Connection, hold: bool = False) -> None:
        """Take back a connection whose response was read to its terminal event.

        ``hold``: keep it for the continuation of ``conn.last_response_id`` (a conversation's
        next turn) for at most ``affinity_wait`` seconds; see the module's rules.
        """
        self._check_fork()
        reason: Optional[str] = None
        with self._lock:
            if conn not in self._in_use:
                reason = "ours" if conn in self._entries else "unknown"
            else:
                self._in_use.discard(conn)
                entry = self._entries[conn]
                if self._closed:
                    reason = "pool closed"
                elif conn.closed:
                    reason = "lost"
                elif self._clock() >= entry.retire_at:
                    reason = "expired"
                else:
                    entry.idle_since = self._clock()
                    now = time.monotonic()
                    if hold and self._affinity_wait > 0 and conn.last_response_id is not None:
                        entry.held_until = now + self._affinity_wait
                        self._counters["affinity_holds"] += 1
                    self._put_locked(conn, now, handed=True)
                if reason is not None:
                    self._forget_locked(conn, reason)
        if reason == "ours":
            # Released twice: it is idle or serves someone else now. Leave it alone.
            logger.debug("connection #%d released but not checked out: ignored", conn.id)
        elif reason == "unknown":
            # Inherited from before a fork (already abandoned) or never the pool's: drop it
            # without sending anything.
            conn.abandon()
        elif reason is not None:
            conn.close()
            logger.debug(
                "connection #%d %s on return (age %.1fs)", conn.id, reason, self._age(conn)
            )

    def discard(self, conn: Connection, reason: str, lost: bool = False) -> None:
        """Close a connection that must not be reused (its response was not read to its end)
        and free its slot. ``lost``: the connection broke rather than being abandoned."""
        self._check_fork()
        with self._lock:
            known = conn in self._in_use
            ours = conn in self._entries
            if known:
                self._in_use.discard(conn)
                self._counters["connections_discarded"] += 1
                self._forget_locked(conn, "lost" if lost else "discarded")
        if known:
            conn.close()
            logger.debug("connection #%d discarded: %s", conn.id, reason)
        elif not ours:
            conn.abandon()  # see release(): never the pool's, or inherited across a fork

    def release_hold(self, response_id: str) -> None:
        """End the hold kept for the continuation of ``response_id`` (its conversation ended):
        the connection goes to the oldest waiter, or stays idle for anyone."""
        with self._lock:
            for conn in self._idle:
                if conn.last_response_id == response_id and self._entries[conn].held_until:
                    self._entries[conn].held_until = 0.0
                    self._idle.remove(conn)
                    self._put_locked(conn, time.monotonic())
                    return

    def record_retry(self) -> None:
        """Count one retry of a request (the stream layer's)."""
        with self._lock:
            self._counters["retries"] += 1

    def record_replay(self) -> None:
        """Count one full-context replay in place of a continuation (the stream layer's)."""
        with self._lock:
            self._counters["replays"] += 1

    def _put_locked(self, conn: Connection, now: float, handed: bool = False) -> None:
        """An open, usable connection becomes available: to the oldest waiter, else idle.

        A held one goes to the waiter continuing from its response, else stays idle and
        held, unless the oldest waiter has already waited ``affinity_wait``. ``handed``: it
        comes straight from a request that has just read its terminal event, so the waiter
        that gets it need not check it.
        """
        entry = self._entries[conn]
        if entry.held_until > now:
            for waiter in self._waiters:
                if waiter.affinity is not None and waiter.affinity == conn.last_response_id:
                    self._waiters.remove(waiter)
                    self._grant_locked(waiter, conn, handed)
                    return
            if not self._waiters or now - self._waiters[0].since < self._affinity_wait:
                self._insert_idle_locked(conn)
                return
            self._counters["affinity_holds_preempted"] += 1
        entry.held_until = 0.0
        if self._waiters:
            self._grant_locked(self._waiters.popleft(), conn, handed)
            return
        self._insert_idle_locked(conn)

    def _grant_locked(self, waiter: _Waiter, conn: Connection, handed: bool) -> None:
        self._in_use.add(conn)
        waiter.conn = conn
        waiter.handed = handed
        waiter.event.set()

    def _insert_idle_locked(self, conn: Connection) -> None:
        # Keep the deque ordered by idle_since so that LIFO stays LIFO after idle care.
        since = self._entries[conn].idle_since
        index = len(self._idle)
        while index > 0 and self._entries[self._idle[index - 1]].idle_since > since:
            index -= 1
        self._idle.insert(index, conn)

    def _forget_locked(self, conn: Connection, reason: str) -> None:
        """A connection leaves the pool: count it and free its slot (the caller closes it)."""
        self._entries.pop(conn, None)
        self._counters["connections_closed"] += 1
        if reason == "expired":
            self._counters["connections_expired"] += 1
        elif reason == "lost":
            self._counters["connections_lost"] += 1
        self._free_slot_locked()

    def _free_slot_locked(self) -> None:
        """A slot is free: hand it to the oldest waiter, who opens a connection in it."""
        if self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            self._opening += 1
            waiter.slot = True
            waiter.event.set()
        else:
            self._total -= 1

    # -- lifetimes -------------------------------------------------------------------

    def _retire_at(self, conn: Connection) -> float:
        config = self._config
        jitter = self._rng.uniform(0.0, _JITTER_FRACTION * config.max_connection_age)
        return conn.created_at + config.max_connection_age - config.effective_age_margin - jitter

    def _age(self, conn: Connection) -> float:
        return self._clock() - conn.created_at

    # -- maintenance -----------------------------------------------------------------

    def _start_maintenance(self) -> None:
        if self._thread is not None or not self._background:
            return
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=_maintenance_main,
                args=(weakref.ref(self), self._stop),
                name="oaiws-pool-maintenance",
                daemon=True,
            )
            self._thread = thread
        thread.start()

    def _care_interval(self) -> float:
        interval = self._config.ping_interval
        if interval is None:
            return _MAX_CARE_INTERVAL
        return max(_MIN_CARE_INTERVAL, min(_MAX_CARE_INTERVAL, interval / 2))

    def run_maintenance(self) -> float:
        """One round of idle care; returns the seconds until the next one is due.

        Run by the maintenance thread; tests call it directly to drive the pool step by step.
        """
        if os.getpid() != self._pid:
            return self._care_interval()
        config = self._config
        now = self._clock()
        retiring: list[tuple[Connection, str]] = []
        with self._lock:
            if self._closed:
                return self._care_interval()
            for conn in list(self._idle):
                if now >= self._entries[conn].retire_at:
                    self._idle.remove(conn)
                    self._forget_locked(conn, "expired")
                    retiring.append((conn, "retired"))
            if config.idle_timeout is not None:
                # Least recently used first, and never below min_connections.
                for conn in list(self._idle):
                    if len(self._entries) <= config.min_connections:
                        break
                    if now - self._entries[conn].idle_since >= config.idle_timeout:
                        self._idle.remove(conn)
                        self._forget_locked(conn, "idle")
                        retiring.append((conn, "closed after idle_timeout"))
            caring = list(self._idle)
            self._idle.clear()
            self._caring.update(caring)
        for conn, why in retiring:
            conn.close()
            logger.debug("connection #%d %s (age %.1fs)", conn.id, why, self._age(conn))
        for conn in caring:
            self._care_for(conn)
        self._fill_min_connections()
        return self._next_round_in()

    def _care_for(self, conn: Connection) -> None:
        alive = False
        try:
            alive = conn.check_idle()
        finally:
            with self._lock:
                self._caring.discard(conn)
                if conn not in self._entries:
                    alive = False  # the pool was reset by a fork meanwhile
                    forgotten = True
                else:
                    forgotten = False
                    if self._closed or not alive:
                        self._forget_locked(conn, "closed" if self._closed else "lost")
                    else:
                        self._put_locked(conn, time.monotonic())
        if not alive and not forgotten:
            conn.close()
            if not self._closed:
                logger.debug("connection #%d dropped while idle: dead", conn.id)

    def _fill_min_connections(self) -> None:
        """Open connections up to ``min_connections``, one handshake at a time."""
        while True:
            with self._lock:
                if (
                    self._closed
                    or self._total >= self._config.min_connections
                    or self._clock() < self._fill_retry_at
                ):
                    return
                self._total += 1
                self._opening += 1
            try:
                conn = self._connect(self._config)
            except BaseException as exc:
                with self._lock:
                    self._opening -= 1
                    self._counters["handshake_errors"] += 1
                    self._free_slot_locked()
                    self._fill_retry_at = self._clock() + self._fill_backoff
                    self._fill_backoff = min(self._fill_backoff * 2, _FILL_BACKOFF_MAX)
                if not isinstance(exc, OAIWSError):
                    raise
                logger.debug("opening a warm connection failed: %s", type(exc).__name__)
                return
            with self._lock:
                self._opening -= 1
                self._counters["connections_opened"] += 1
                self._fill_backoff = _FILL_BACKOFF_START
                if self.closed:  # re-read: close() may have run during the handshake
                    self._counters["connections_closed"] += 1
                    self._free_slot_locked()
                    closed = True
                else:
                    now = self._clock()
                    self._entries[conn] = _Entry(self._retire_at(conn), now)
                    self._put_locked(conn, time.monotonic())
                    closed = False
            if closed:
                conn.close()
                return

    def _next_round_in(self) -> float:
        delay = self._care_interval()
        now = self._clock()
        with self._lock:
            for conn in self._idle:
                entry = self._entries[conn]
                delay = min(delay, entry.retire_at - now)
                if self._config.idle_timeout is not None:
                    delay = min(delay, entry.idle_since + self._config.idle_timeout - now)
            if self._total < self._config.min_connections:
                delay = min(delay, max(0.0, self._fill_retry_at - now))
        return max(_MIN_CARE_INTERVAL, delay)

    # -- stats, repr, close ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Gauges (``connections_open``, ``connections_idle``, ``connections_in_use``,
        ``connections_opening``, ``requests_waiting``) and cumulative counters."""
        with self._lock:
            result: dict[str, Any] = {
                "connections_open": len(self._entries),
                "connections_idle": len(self._idle) + len(self._caring),
                "connections_in_use": len(self._in_use),
                "connections_opening": self._opening,
                "requests_waiting": len(self._waiters),
                "connections_held": sum(
                    1 for conn in self._idle if self._entries[conn].held_until > time.monotonic()
                ),
                "max_connections": self._config.max_connections,
                "min_connections": self._config.min_connections,
            }
            result.update(self._counters)
        return result

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<Pool {'closed' if self._closed else 'open'} "
                f"open={len(self._entries)} idle={len(self._idle) + len(self._caring)} "
                f"in_use={len(self._in_use)} opening={self._opening} "
                f"waiting={len(self._waiters)} max={self._config.max_connections}>"
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close idle connections now and in-use ones when they come back; wake every waiter.

        Idempotent. Later ``acquire`` calls raise ``ClientClosedError``.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            for conn in idle:
                self._forget_locked(conn, "closed")
            while self._waiters:
                waiter = self._waiters.popleft()
                waiter.closed = True
                waiter.event.set()
            # The maintenance thread ends at its next wake-up; not joined, because it may be
            # in a handshake (bounded by connect_timeout) whose connection is then closed.
            self._stop.set()
        for conn in idle:
            conn.close()
        logger.debug("pool closed")

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- fork ------------------------------------------------------------------------

    def _check_fork(self) -> None:
        # Where os.register_at_fork exists (every platform with fork) the child is reset at
        # the fork itself, so the system call behind os.getpid() is spared on every checkout
        # and return; elsewhere this check does the same job late.
        if not _RESET_AT_FORK and os.getpid() != self._pid:
            self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        """Start afresh in a child process, dropping the parent's sockets silently."""
        inherited = list(self._entries)
        closed = self._closed
        self._init_state()  # a new lock too: the parent's may have been held at the fork
        self._closed = closed
        for conn in inherited:
            conn.abandon()
        _live_pools.add(self)


def _closed_error() -> ClientClosedError:
    return ClientClosedError("this client is closed: create a new oaiws.Client")


def _maintenance_main(pool_ref: weakref.ReferenceType[Pool], stop: threading.Event) -> None:
    # Holds the pool weakly so that a forgotten client is garbage-collected and its thread
    # ends, instead of keeping the pool alive forever.
    while not stop.is_set():
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        try:
            delay = pool.run_maintenance()
        except Exception:  # one failed round must not end idle care for good
            logger.warning("oaiws pool maintenance round failed", exc_info=True)
            delay = _MAX_CARE_INTERVAL
        del pool
        if stop.wait(delay):
            return


_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


_RESET_AT_FORK = hasattr(os, "register_at_fork")
if _RESET_AT_FORK:
    os.register_at_fork(after_in_child=_after_fork_in_child)
