"""The pool's state, and the one function that decides who gets what.

Plain bookkeeping, nothing else: no lock, no thread, no socket, no clock of its own. ``Pool``
calls one transition per event while it holds its lock (a request arrives, a connection
comes back, a handshake ends, a check fails, care ends, time passes, close, fork); each
transition changes plain state and then runs ``_assign``, which decides everything at once:
which waiter gets which connection or slot, which connections to close, what to open in the
background. It returns that as ``Actions``: the I/O that ``Pool`` performs once the lock is
released.

The ordering rule, in one place (``_assign``):

1. Closed: every waiter fails, every idle connection is closed.
2. Idle connections past their retirement age are closed; so are those idle for
   ``idle_timeout``, least recently used first, never below ``min_connections``.
3. A hold (a connection kept for the continuation of its last response) ends when it runs
   out, or at once when the oldest waiter has waited ``affinity_wait``: holds never delay
   anybody by more than that.
4. A waiter continuing from a held connection's response takes it, even past older waiters
   (it was kept for that very request).
5. Then waiters are served oldest first: an idle connection that holds its previous
   response, else the most recently used idle one that nobody holds; else the first waiters,
   one per connection under idle care, wait for those (they come back within milliseconds);
   else a free slot, in which the waiter opens a connection itself. A waiter whose held
   connection is under care waits for that one.
6. Free slots left below ``min_connections`` are reserved for the background fill, one
   handshake at a time.

Invariants, true after every transition and asserted by ``check_invariants`` (the stateful
property test calls it after every step): open + opening <= ``max_connections``; every
connection is in exactly one state; no waiter waits while an idle connection it may take
exists, nor while a free slot exists, beyond the waiters kept for connections under care
(one per such connection, and those whose held connection is under care); a closed pool has
no idle connection and no waiter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ._connection import Connection
    from ._stats import Stats

__all__ = ["CARING", "IDLE", "IN_USE", "Actions", "PoolState", "Waiter"]

IDLE = "idle"  # the pool's, free
IN_USE = "in_use"  # checked out by one request
CARING = "caring"  # the pool's, being looked after by the maintenance thread

# Waiter states.
QUEUED = "queued"  # in line
GRANTED = "granted"  # given a connection (``conn``) or a free slot (``slot``)
OWNER = "owner"  # acquire() returned: the request owns its connection
FAILED = "failed"  # the pool was closed while it waited (``error``)
GONE = "gone"  # left: timed out, interrupted, or its handshake failed


class Waiter:
    """One request asking for a connection: its place in line and, later, its grant.

    ``check``: the granted connection sat idle and must be checked before use (one handed
    over by a request that has just read its terminal event need not be). ``event`` is
    created only when the request has to block; grants set it under the pool's lock.
    """

    __slots__ = (
        "affinity",
        "check",
        "conn",
        "deadline",
        "error",
        "event",
        "since",
        "slot",
        "state",
    )

    def __init__(self, affinity: Optional[str], since: float, deadline: float) -> None:
        self.affinity = affinity
        self.since = since
        self.deadline = deadline
        self.state = QUEUED
        self.conn: Optional[Connection] = None
        self.slot = False
        self.check = False
        self.error: Optional[BaseException] = None
        self.event: Any = None  # threading.Event, made when the request blocks

    def granted(self) -> bool:
        """Whether the wait is over: a connection, a slot, or a failure."""
        return self.state is not QUEUED

    def __repr__(self) -> str:
        return f"<Waiter {self.state} affinity={self.affinity!r} since={self.since:.3f}>"


class _Entry:
    """The pool's bookkeeping of one open connection."""

    __slots__ = ("held_for", "held_until", "idle_since", "retire_at", "state")

    def __init__(self, state: str, retire_at: float, idle_since: float) -> None:
        self.state = state
        self.retire_at = retire_at  # on the age clock
        self.idle_since = idle_since  # on the age clock
        # While the connection is kept for the continuation of response ``held_for``: the
        # wait-clock time at which the hold runs out.
        self.held_for: Optional[str] = None
        self.held_until = 0.0


class Actions:
    """What a transition leaves to do outside the lock."""

    __slots__ = ("close", "fill", "woken")

    def __init__(self) -> None:
        self.close: list[tuple[Connection, str]] = []  # connections to close, and why
        self.woken: list[Waiter] = []  # waiters whose verdict came: set their events
        self.fill = False  # a slot was reserved for the background fill: open one connection

    def __bool__(self) -> bool:
        return bool(self.close or self.woken or self.fill)


class PoolState:
    """Every connection and waiter of one pool, and the transitions between their states.

    ``now`` arguments are on the wait clock (``time.monotonic`` in ``Pool``), which holds and
    waits use; ``age_clock`` measures connection ages and idle times (injectable, so tests
    can age connections without waiting). ``closed_error`` builds the exception a waiter gets
    when the pool closes under it.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        min_connections: int,
        affinity_wait: float,
        idle_timeout: Optional[float],
        age_clock: Callable[[], float],
        stats: Stats,
        closed_error: Callable[[], BaseException],
        fill_backoff_start: float = 0.5,
        fill_backoff_max: float = 30.0,
    ) -> None:
        self.max_connections = max_connections
        self.min_connections = min_connections
        self.affinity_wait = affinity_wait
        self.idle_timeout = idle_timeout
        self.age_clock = age_clock
        self.stats = stats
        self.closed_error = closed_error
        self.fill_backoff_start = fill_backoff_start
        self.fill_backoff_max = fill_backoff_max
        self.fill_enabled = False  # may passes reserve slots for the background fill?
        self.entries: dict[Connection, _Entry] = {}
        self.idle: list[Connection] = []  # ordered by idle_since: the last is the MRU
        self.waiters: list[Waiter] = []  # in arrival order
        self.opening = 0  # handshakes in flight (each holds a slot)
        self.filling = 0  # ... of which the background fill's
        self.caring = 0  # connections under idle care
        self.held = 0  # entries with a hold
        self.closed = False
        self.fill_retry_at = 0.0  # age clock: no fill before this (after a failed one)
        self.fill_backoff = fill_backoff_start
        # Age clock: no idle connection retires or times out before this, so most passes skip
        # looking (it may be early, never late: a look that finds nothing sets it anew).
        self._next_due = 0.0

    # -- transitions: each changes plain state, then lets _assign decide ------------------

    def enqueue(self, waiter: Waiter, now: float) -> Actions:
        """A request asks for a connection."""
        self.waiters.append(waiter)
        return self._assign(now)

    def cancel(self, waiter: Waiter, now: float, *, checking: bool = False) -> Actions:
        """The request gave up (interrupted): it leaves the line or gives its grant back.

        ``checking``: it was interrupted while checking a granted connection, whose socket
        may be in the middle of a frame: that connection is closed, not kept.
        """
        actions_close: list[tuple[Connection, str]] = []
        if waiter.state is QUEUED:
            self.waiters.remove(waiter)
        elif waiter.state is GRANTED:
            conn = waiter.conn
            if conn is not None and conn in self.entries:
                if checking:
                    self._forget(conn, "discarded")
                    actions_close.append((conn, "interrupted while being checked"))
                else:
                    self._make_idle(conn, self.entries[conn].idle_since)
            elif waiter.slot:
                self.opening -= 1
        waiter.state = GONE
        waiter.conn = None
        waiter.slot = False
        actions = self._assign(now)
        actions.close.extend(actions_close)
        self._nudge_oldest(actions)
        return actions

    def timed_out(self, waiter: Waiter, now: float) -> Optional[Actions]:
        """The request's deadline passed: it leaves the line (``Actions``), or ``None`` when
        a grant raced the deadline (honoured, never lost)."""
        if waiter.state is not QUEUED:
            return None
        self.waiters.remove(waiter)
        waiter.state = GONE
        self.stats.add("requests_timeouts")
        actions = Actions()
        self._nudge_oldest(actions)
        return actions

    def taken(self, waiter: Waiter) -> None:
        """acquire() returns: the request owns its connection from now on."""
        waiter.state = OWNER
        waiter.conn = None

    def opened(
        self, waiter: Optional[Waiter], conn: Connection, retire_at: float, now: float
    ) -> Actions:
        """A handshake in a reserved slot succeeded (``waiter`` None: the background fill)."""
        self.opening -= 1
        self.stats.add("connections_opened")
        if waiter is None:
            self.filling -= 1
            self.fill_backoff = self.fill_backoff_start
        entry = _Entry(IN_USE, retire_at, self.age_clock())
        self.entries[conn] = entry
        self._next_due = 0.0  # one more connection: idle ones may now time out (min_connections)
        if waiter is not None:
            waiter.slot = False
            waiter.conn = conn
        if self.closed:
            # Closed during the handshake: the connection goes at once, its opener fails.
            self._forget(conn, "closed")
            actions = self._assign(now)
            actions.close.append((conn, "the pool closed during its handshake"))
            if waiter is not None:
                waiter.conn = None
                waiter.state = FAILED
                waiter.error = self.closed_error()
            return actions
        if waiter is None:
            self._make_idle(conn, entry.idle_since)
            return self._assign(now, returned=conn)  # new: nothing to check
        return self._assign(now)

    def open_failed(self, waiter: Optional[Waiter], now: float, *, counted: bool) -> Actions:
        """A handshake in a reserved slot failed; the slot is free again. ``counted``: an
        error of the handshake (not an interruption), counted in ``handshake_errors``."""
        self.opening -= 1
        if counted:
            self.stats.add("handshake_errors")
        if waiter is None:
            self.filling -= 1
            self.fill_retry_at = self.age_clock() + self.fill_backoff
            self.fill_backoff = min(self.fill_backoff * 2, self.fill_backoff_max)
        else:
            waiter.slot = False
            waiter.state = GONE
        return self._assign(now)

    def release(self, conn: Connection, hold: Optional[str], now: float) -> Optional[Actions]:
        """A request read its response to the end and gives its connection back; ``hold``:
        keep it for the continuation of that response id. ``None``: not checked out from
        this pool (released twice, or inherited across a fork)."""
        entry = self.entries.get(conn)
        if entry is None or entry.state is not IN_USE:
            return None
        age_now = self.age_clock()
        reason = None
        if self.closed:
            reason = "closed"
        elif conn.closed:
            reason = "lost"
        elif age_now >= entry.retire_at:
            reason = "expired"
        if reason is not None:
            self._forget(conn, reason)
            actions = self._assign(now)
            actions.close.append((conn, f"{reason} on return"))
            return actions
        if hold is not None and self.affinity_wait > 0:
            entry.held_for = hold
            entry.held_until = now + self.affinity_wait
            self.held += 1
            self.stats.add("affinity_holds")
        self._make_idle(conn, age_now)
        actions = self._assign(now, returned=conn)
        if entry.held_for is not None:
            self._nudge_oldest(actions)
        return actions

    def discard(
        self, conn: Connection, reason: str, *, lost: bool, now: float
    ) -> Optional[Actions]:
        """A request closes its connection (its response was not read to the end, or the
        connection broke). ``None``: not checked out from this pool."""
        entry = self.entries.get(conn)
        if entry is None or entry.state is not IN_USE:
            return None
        self.stats.add("connections_discarded")
        self._forget(conn, "lost" if lost else "discarded")
        actions = self._assign(now)
        actions.close.append((conn, f"discarded: {reason}"))
        return actions

    def check_failed(self, waiter: Waiter, conn: Connection, reason: str, now: float) -> Actions:
        """The connection granted to ``waiter`` failed its check before use (``reason`` says
        how, e.g. ``lost``): it is closed and the waiter is back in line, in its place."""
        if conn in self.entries:
            self._forget(conn, reason)
        waiter.conn = None
        waiter.check = False
        waiter.state = QUEUED
        if waiter.event is not None:
            waiter.event.clear()
        index = len(self.waiters)
        while index > 0 and self.waiters[index - 1].since > waiter.since:
            index -= 1
        self.waiters.insert(index, waiter)
        actions = self._assign(now)
        actions.close.append((conn, f"{reason} at checkout"))
        return actions

    def care_due(self) -> list[Connection]:
        """The idle connections to look after this round, least recently used first."""
        return list(self.idle)

    def begin_care(self, conn: Connection) -> bool:
        """The maintenance takes an idle connection to look after it; False when it is no
        longer idle (taken meanwhile)."""
        entry = self.entries.get(conn)
        if entry is None or entry.state is not IDLE:
            return False
        self.idle.remove(conn)
        entry.state = CARING
        self.caring += 1
        return True

    def end_care(self, conn: Connection, alive: bool, now: float) -> Actions:
        """Care of ``conn`` ended: back to idle when alive, else closed."""
        entry = self.entries.get(conn)
        if entry is None or entry.state is not CARING:
            return self._assign(now)  # forgotten meanwhile (a fork reset the pool)
        if self.closed or not alive:
            self._forget(conn, "closed" if self.closed else "lost")
            actions = self._assign(now)
            actions.close.append((conn, "closed" if self.closed else "dead while idle"))
            return actions
        self.caring -= 1
        self._make_idle(conn, entry.idle_since)
        # It was checked an instant ago: whoever gets it now need not check it again.
        return self._assign(now, returned=conn)

    def release_holds(self, response_ids: list[str], now: float) -> Actions:
        """End the holds kept for these responses (their conversations ended)."""
        wanted = set(response_ids)
        if self.held:
            for entry in self.entries.values():
                if entry.held_for is not None and entry.held_for in wanted:
                    self._unhold(entry)
                    self.stats.add("affinity_holds_released")
        return self._assign(now)

    def tick(self, now: float) -> Actions:
        """Time passed: holds may have run out, waiters may be overdue, connections aged."""
        return self._assign(now)

    def close(self, now: float) -> Actions:
        """Close the pool: idle connections now, in-use ones when they come back."""
        self.closed = True
        return self._assign(now)

    # -- the one decision ------------------------------------------------------------------

    def _assign(self, now: float, returned: Optional[Connection] = None) -> Actions:
        actions = Actions()
        if self.closed:
            for waiter in self.waiters:
                waiter.state = FAILED
                waiter.error = self.closed_error()
                actions.woken.append(waiter)
            self.waiters.clear()
            for conn in self.idle:
                self._forget(conn, "closed", keep_idle_list=True)
                actions.close.append((conn, "the pool closed"))
            self.idle.clear()
            if self.held:  # a connection under care keeps nothing for anyone in a closed pool
                for entry in self.entries.values():
                    if entry.held_for is not None:
                        self._unhold(entry)
            return actions

        if self.idle and self.age_clock() >= self._next_due:
            self._retire_idle(actions)
        if self.held:
            self._expire_holds(now)
        waiters = self.waiters
        if waiters:
            if self.held:
                self._grant_held(actions, returned)
            self._grant_in_order(actions, returned)
        if (
            self.fill_enabled
            and not self.filling
            and len(self.entries) + self.opening < self.min_connections
            and self.age_clock() >= self.fill_retry_at
        ):
            self.opening += 1
            self.filling += 1
            actions.fill = True
        return actions

    def _retire_idle(self, actions: Actions) -> None:
        age_now = self.age_clock()
        for conn in [c for c in self.idle if age_now >= self.entries[c].retire_at]:
            self.idle.remove(conn)
            self._forget(conn, "expired", keep_idle_list=True)
            actions.close.append((conn, "retired (age)"))
        timeout = self.idle_timeout
        if timeout is not None:
            # Least recently used first, and never below min_connections.
            while self.idle and len(self.entries) > self.min_connections:
                conn = self.idle[0]
                if age_now - self.entries[conn].idle_since < timeout:
                    break
                del self.idle[0]
                self._forget(conn, "idle", keep_idle_list=True)
                actions.close.append((conn, "closed after idle_timeout"))
        self._next_due = self._earliest_due()

    def _earliest_due(self) -> float:
        """When the first idle connection retires or may time out (age clock)."""
        due = float("inf")
        may_time_out = self.idle_timeout is not None and len(self.entries) > self.min_connections
        for conn in self.idle:
            entry = self.entries[conn]
            due = min(due, entry.retire_at)
            if may_time_out:
                due = min(due, entry.idle_since + self.idle_timeout)  # type: ignore[operator]
        return due

    def _expire_holds(self, now: float) -> None:
        overdue = bool(self.waiters) and now - self.waiters[0].since >= self.affinity_wait
        for entry in self.entries.values():
            if entry.held_for is None:
                continue
            if entry.held_until <= now:
                self._unhold(entry)
            elif overdue:
                self._unhold(entry)
                self.stats.add("affinity_holds_preempted")

    def _grant_held(self, actions: Actions, returned: Optional[Connection]) -> None:
        """Waiters continuing from a held idle connection's response take it first."""
        for conn in list(self.idle):
            entry = self.entries[conn]
            if entry.held_for is None:
                continue
            for waiter in self.waiters:
                if waiter.affinity == entry.held_for:
                    self._grant(waiter, conn, returned, actions)
                    break

    def _grant_in_order(self, actions: Actions, returned: Optional[Connection]) -> None:
        kept_for_care = self.caring
        held_in_care = self._held_in_care() if self.caring and self.held else ()
        index = 0
        waiters = self.waiters
        while index < len(waiters):
            waiter = waiters[index]
            if waiter.affinity in held_in_care:
                # Its held connection is under care, back within milliseconds: it waits for
                # that one (end_care hands it over) rather than lose its chain.
                index += 1
                continue
            conn = self._pick_idle(waiter.affinity)
            if conn is not None:
                self._grant(waiter, conn, returned, actions)
                continue
            if kept_for_care > 0:
                kept_for_care -= 1  # served by a connection coming back from care
                index += 1
                continue
            if len(self.entries) + self.opening >= self.max_connections:
                return  # nothing left for anyone further down the line
            del waiters[index]
            self.opening += 1
            waiter.state = GRANTED
            waiter.slot = True
            actions.woken.append(waiter)

    def _nudge_oldest(self, actions: Actions) -> None:
        """While holds exist, the oldest waiter must wake when one runs out or when it becomes
        overdue, to take it: its wake-up time may predate the hold (or its place at the head
        of the line), so it looks again. One waiter is enough: its tick serves the line."""
        if self.held and self.waiters:
            oldest = self.waiters[0]
            if oldest not in actions.woken:
                actions.woken.append(oldest)

    def _held_in_care(self) -> set[Optional[str]]:
        return {
            entry.held_for
            for entry in self.entries.values()
            if entry.state is CARING and entry.held_for is not None
        }

    def _pick_idle(self, affinity: Optional[str]) -> Optional[Connection]:
        """The idle connection holding ``affinity`` if free, else the most recently used
        idle one that nobody holds."""
        idle = self.idle
        if not idle:
            return None
        if affinity is not None:
            for conn in reversed(idle):
                if conn.last_response_id == affinity:
                    if self.entries[conn].held_for is None:
                        return conn
                    break
        if not self.held:
            return idle[-1]
        for conn in reversed(idle):
            if self.entries[conn].held_for is None:
                return conn
        return None

    def _grant(
        self, waiter: Waiter, conn: Connection, returned: Optional[Connection], actions: Actions
    ) -> None:
        self.waiters.remove(waiter)
        self.idle.remove(conn)
        entry = self.entries[conn]
        entry.state = IN_USE
        if entry.held_for is not None:
            self._unhold(entry)
        waiter.state = GRANTED
        waiter.conn = conn
        # One that a request has just given back read its terminal event an instant ago: a
        # check would be a system call (a GIL release) for nothing. One that sat idle is
        # checked by its new owner before use.
        waiter.check = conn is not returned
        actions.woken.append(waiter)

    # -- helpers -----------------------------------------------------------------------------

    def _make_idle(self, conn: Connection, idle_since: float) -> None:
        entry = self.entries[conn]
        entry.state = IDLE
        entry.idle_since = idle_since
        due = entry.retire_at
        if self.idle_timeout is not None:
            due = min(due, idle_since + self.idle_timeout)
        self._next_due = min(self._next_due, due)
        # Keep the list ordered by idle_since, so that LIFO stays LIFO after care.
        idle = self.idle
        index = len(idle)
        while index > 0 and self.entries[idle[index - 1]].idle_since > idle_since:
            index -= 1
        idle.insert(index, conn)

    def _unhold(self, entry: _Entry) -> None:
        entry.held_for = None
        entry.held_until = 0.0
        self.held -= 1

    def _forget(self, conn: Connection, reason: str, *, keep_idle_list: bool = False) -> None:
        """A connection leaves the pool (the caller closes it): count it, free its slot."""
        entry = self.entries.pop(conn)
        if entry.state is IDLE and not keep_idle_list:
            self.idle.remove(conn)
        elif entry.state is CARING:
            self.caring -= 1
        if entry.held_for is not None:
            self._unhold(entry)
        stats = self.stats
        stats.add("connections_closed")
        if reason == "expired":
            stats.add("connections_expired")
        elif reason == "lost":
            stats.add("connections_lost")

    # -- reading ---------------------------------------------------------------------------

    def gauges(self, now: float) -> dict[str, int]:
        in_use = sum(1 for entry in self.entries.values() if entry.state is IN_USE)
        held = sum(
            1
            for entry in self.entries.values()
            if entry.held_for is not None and entry.held_until > now
        )
        return {
            "connections_open": len(self.entries),
            "connections_idle": len(self.idle) + self.caring,
            "connections_in_use": in_use,
            "connections_opening": self.opening,
            "connections_held": held,
            "requests_waiting": len(self.waiters),
            "max_connections": self.max_connections,
            "min_connections": self.min_connections,
        }

    def next_wake(self, waiter: Waiter, now: float) -> float:
        """When a waiting request must look again if nobody hands it anything before: its
        deadline, or the moment a hold runs out or the line becomes overdue."""
        wake_at = waiter.deadline
        if self.held:
            if self.waiters:
                wake_at = min(wake_at, self.waiters[0].since + self.affinity_wait)
            for entry in self.entries.values():
                if entry.held_for is not None:
                    wake_at = min(wake_at, entry.held_until)
        return max(wake_at, now)

    def next_maintenance(self, default: float) -> float:
        """Seconds (age clock) until an idle connection retires or times out, or a fill is
        due; at most ``default``."""
        age_now = self.age_clock()
        delay = default
        for conn in self.idle:
            entry = self.entries[conn]
            delay = min(delay, entry.retire_at - age_now)
            if self.idle_timeout is not None:
                delay = min(delay, entry.idle_since + self.idle_timeout - age_now)
        if len(self.entries) + self.opening < self.min_connections:
            delay = min(delay, self.fill_retry_at - age_now)
        return max(0.0, delay)

    def state_of(self, conn: Connection) -> Optional[str]:
        entry = self.entries.get(conn)
        return None if entry is None else entry.state

    def retire_at(self, conn: Connection) -> Optional[float]:
        entry = self.entries.get(conn)
        return None if entry is None else entry.retire_at

    def check_invariants(self, now: float) -> None:
        """Raise AssertionError when the state breaks a rule of the module docstring."""
        entries = self.entries
        _require(len(entries) + self.opening <= self.max_connections, "bound exceeded")
        _require(0 <= self.filling <= self.opening, "fill slots outside the opening count")
        states = [entry.state for entry in entries.values()]
        _require(self.idle == sorted(self.idle, key=lambda c: entries[c].idle_since), "LIFO")
        _require(len(set(map(id, self.idle))) == len(self.idle), "idle twice")
        _require(
            {id(c) for c in self.idle} == {id(c) for c, e in entries.items() if e.state is IDLE},
            "the idle list and the idle entries disagree",
        )
        _require(states.count(CARING) == self.caring, "caring count")
        _require(self.caring >= 0 and self.held >= 0 and self.opening >= 0, "a negative count")
        _require(
            sum(1 for e in entries.values() if e.held_for is not None) == self.held, "held count"
        )
        _require(all(w.state is QUEUED for w in self.waiters), "a granted waiter still in line")
        _require(
            all(e.held_until > now for e in entries.values() if e.held_for is not None),
            "a hold outlived its affinity_wait",
        )
        if self.closed:
            _require(not self.idle and not self.waiters, "a closed pool keeps idle or waiters")
            return
        if not self.waiters:
            return
        held_in_care = self._held_in_care()
        takeable = [c for c in self.idle if entries[c].held_for is None]
        _require(
            not takeable or all(w.affinity in held_in_care for w in self.waiters),
            "a waiter waits next to an idle connection",
        )
        for conn in self.idle:
            held_for = entries[conn].held_for
            if held_for is None:
                continue  # allowed only beside waiters kept for care, checked above
            _require(
                all(w.affinity != held_for for w in self.waiters),
                "a waiter waits next to the connection held for it",
            )
            _require(
                entries[conn].held_until > now and now - self.waiters[0].since < self.affinity_wait,
                "a hold outlived its bound while someone waits",
            )
        free_slots = self.max_connections - len(entries) - self.opening
        others = [w for w in self.waiters if w.affinity not in held_in_care]
        _require(
            free_slots == 0 or len(others) <= self.caring,
            "a waiter waits next to a free slot",
        )


def _require(condition: bool, rule: str) -> None:
    if not condition:
        raise AssertionError(f"pool invariant broken: {rule}")
