"""The bounded, thread-safe pool of WebSocket connections shared by one client's threads.

``Pool`` is the threaded shell around ``PoolState`` (the bookkeeping and the one function
that decides who gets what, in ``_poolstate``): every public method takes the lock, runs one
transition of the state, and then, with the lock released, does the I/O the transition
asked for (closing connections, a handshake in a slot it was given, checking an idle
connection before use). The lock is never held during a handshake, a close or a ping.

Rules (the ordering rule itself is in ``_poolstate``'s docstring):

- **Bounded, fair.** At most ``max_connections`` connections open or opening; callers that
  find none free wait in FIFO order up to ``pool_timeout``; a newcomer never overtakes a
  waiter, and no waiter waits next to a free slot.
- **Warm.** Idle connections are taken most recently used first, so a hot set stays warm
  and the rest age out after ``idle_timeout`` (never below ``min_connections``).
- **Affinity and holds.** ``acquire(affinity=X)`` prefers the idle connection whose
  server-side cache holds response ``X``. ``release(conn, hold=True)`` keeps a conversation's
  connection for its next turn for at most ``affinity_wait`` seconds; ``release_hold``
  ends that at once (the conversation was closed or dropped).
- **Checked before use.** A connection that sat idle is checked (drained, closed ones
  dropped) by the request it is granted to; one handed straight from a request that has
  just read its terminal event is not (see ``docs/performance.md``). A check that fails
  closes the connection and puts the request back in its place in line.
- **Rotation.** A connection retires ahead of ``max_connection_age`` by a margin (at most a
  quarter of the age) and a downward-only random jitter, so a fleet opened together does not
  reconnect together; one in use retires when it comes back, never mid-response.
- **Background care** (``_maintenance``): idle connections are drained and pinged, dead
  ones dropped, ``min_connections`` kept open; handshakes run apart from the care rounds.
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
from typing import Any, Callable, Optional

from ._config import ClientConfig
from ._connection import Connection
from ._forking import RESET_AT_FORK, reset_in_child
from ._maintenance import Maintenance
from ._poolstate import Actions, PoolState, Waiter
from ._stats import Stats
from .errors import ClientClosedError, OAIWSError, PoolTimeoutError

__all__ = ["ConnectFn", "Pool", "closed_error"]

logger = logging.getLogger("oaiws.pool")

ConnectFn = Callable[[ClientConfig], Connection]

# Downward-only jitter of a connection's lifetime, as a fraction of max_connection_age.
_JITTER_FRACTION = 0.05

# The longest the maintenance thread sleeps between two rounds of idle care.
_MAX_CARE_INTERVAL = 1.0
_MIN_CARE_INTERVAL = 0.01


def closed_error() -> ClientClosedError:
    """What a request on a closed client raises."""
    return ClientClosedError("this client is closed: create a new oaiws.Client")


class Pool:
    """A bounded pool of ``Connection``s shared by the threads of one ``Client``.

    ``connect`` opens one connection (``Connection.open``; tests inject a fake). ``clock``
    measures ages and idle times (``time.monotonic``; tests may inject a fake one); waiting
    and holds always use real time. ``background=False`` runs no maintenance thread: the
    owner calls ``run_maintenance()`` itself (tests drive the pool step by step). ``stats``
    is the client's statistics object (``counters``), which the request layer counts into too.
    """

    def __init__(
        self,
        config: ClientConfig,
        connect: ConnectFn = Connection.open,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Optional[random.Random] = None,
        background: bool = True,
        stats: Optional[Stats] = None,
    ) -> None:
        self._config = config
        self._connect = connect
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._background = background
        self.counters = stats if stats is not None else Stats()
        self._init_state()
        reset_in_child(self)
        if config.min_connections > 0:
            # Warm connections are opened in the background, never by the caller.
            self._maintenance.ensure_started()

    def _init_state(self) -> None:
        config = self._config
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._state = PoolState(
            max_connections=config.max_connections,
            min_connections=config.min_connections,
            affinity_wait=config.affinity_wait,
            idle_timeout=config.idle_timeout,
            age_clock=self._clock,
            stats=self.counters,
            closed_error=closed_error,
        )
        self._state.fill_enabled = self._background
        # Holds to end, queued by finalizers that must not wait for the lock (see release_hold).
        self._unholds: collections.deque[str] = collections.deque()
        self._maintenance = Maintenance(self, background=self._background)

    # -- checkout --------------------------------------------------------------------------

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
        self._maintenance.ensure_started()
        now = time.monotonic()
        waiter = Waiter(affinity, now, now + timeout)
        state = self._state
        actions: Optional[Actions] = None
        try:
            with self._lock:
                if state.closed:
                    raise closed_error()
                actions = state.enqueue(waiter, now)
                if self._unholds:
                    actions = _merged(self._take_unholds(now), actions)
                # Ready to block in the same pass under the lock: with many threads, every
                # extra acquisition of a contended lock can cost a context switch.
                wake_at = None if waiter.granted() else self._prepare_wait(waiter, now)
        finally:
            if actions:
                self._perform(actions)
        checking = False
        try:
            while True:
                if not waiter.granted():
                    self._wait(waiter, timeout, wake_at)
                    wake_at = None
                if waiter.error is not None:
                    raise waiter.error
                if waiter.slot:
                    conn = self._open_in_slot(waiter)
                    fresh = True
                    break
                granted = waiter.conn
                assert granted is not None  # granted, and not a slot
                conn = granted
                fresh = False
                if not waiter.check:
                    break
                checking = True
                problem = self._unfit(conn)
                checking = False
                if problem is None:
                    break
                self._step(self._state.check_failed, waiter, conn, problem)
            # A granted waiter is out of the line: only this thread looks at it any more.
            state.taken(waiter)
        except BaseException:
            # Interrupted, timed out or refused: give back whatever was granted.
            self._step(self._state.cancel, waiter, checking=checking)
            raise
        hit = None if affinity is None else conn.last_response_id == affinity
        self.counters.add_checkout(reused=not fresh, affinity_hit=hit)
        if not fresh:
            logger.debug("connection #%d reused", conn.id)
        return conn

    def _prepare_wait(self, waiter: Waiter, now: float) -> float:
        """Under the lock: the waiter's event, and when it must look again at the latest."""
        if waiter.event is None:
            waiter.event = threading.Event()
        return self._state.next_wake(waiter, now)

    def _wait(self, waiter: Waiter, timeout: float, wake_at: Optional[float]) -> None:
        """Block until ``waiter`` has its verdict, or raise ``PoolTimeoutError``.

        ``wake_at``: computed by the caller under the lock already, or ``None``. A grant sets
        the waiter's event; the verdict is always read under the lock.
        """
        state = self._state
        started = time.monotonic()
        try:
            while True:
                if wake_at is None:
                    with self._lock:
                        if waiter.granted():
                            return
                        wake_at = self._prepare_wait(waiter, time.monotonic())
                waiter.event.wait(max(0.0, wake_at - time.monotonic()))
                wake_at = None
                # Woken by a grant, or by the clock or a nudge: a hold may have run out or
                # the line may be overdue (the tick hands held connections over), or the
                # deadline passed.
                actions: Optional[Actions] = None
                left: Optional[Actions] = None
                try:
                    with self._lock:
                        now = time.monotonic()
                        if not waiter.granted():
                            waiter.event.clear()  # looking again; a later grant sets it anew
                            actions = _merged(self._take_unholds(now), state.tick(now))
                        done = waiter.granted()
                        if not done and now >= waiter.deadline:
                            left = state.timed_out(waiter, now)
                        if not done and left is None:
                            wake_at = self._prepare_wait(waiter, now)
                finally:
                    for pending in (actions, left):
                        if pending:
                            self._perform(pending)
                if done:
                    return
                if left is not None:
                    raise PoolTimeoutError(
                        f"no connection became free within {timeout:g}s "
                        f"(max_connections={self._config.max_connections}): raise "
                        "max_connections or pool_timeout, or share the client among fewer "
                        "threads"
                    )
        finally:
            self.counters.add("requests_wait_ms", int((time.monotonic() - started) * 1000))

    def _open_in_slot(self, waiter: Waiter) -> Connection:
        """Open a connection in the slot granted to ``waiter``."""
        try:
            conn = self._connect(self._config)
        except BaseException as error:
            self._step(self._state.open_failed, waiter, counted=isinstance(error, Exception))
            raise
        self._step(self._state.opened, waiter, conn, self._retire_at(conn))
        if waiter.error is not None:
            raise waiter.error  # closed during the handshake; the connection was closed
        return conn

    def _unfit(self, conn: Connection) -> Optional[str]:
        """Why a connection that sat idle must not be used; checked outside the lock."""
        if conn.closed or not conn.check_idle():
            return "lost"
        return None

    # -- checkin ---------------------------------------------------------------------------

    def release(self, conn: Connection, hold: bool = False) -> None:
        """Take back a connection whose response was read to its terminal event.

        ``hold``: keep it for the continuation of ``conn.last_response_id`` (a conversation's
        next turn) for at most ``affinity_wait`` seconds.
        """
        self._check_fork()
        hold_for = conn.last_response_id if hold else None
        if not self._step(self._state.release, conn, hold_for):
            self._not_ours(conn)

    def discard(self, conn: Connection, reason: str, lost: bool = False) -> None:
        """Close a connection that must not be reused (its response was not read to its end,
        or it broke) and free its slot. ``lost``: it broke rather than being abandoned."""
        self._check_fork()
        if not self._step(self._state.discard, conn, reason, lost=lost):
            self._not_ours(conn)

    def _not_ours(self, conn: Connection) -> None:
        with self._lock:
            known = self._state.state_of(conn) is not None
        if known:
            # Released twice: it is idle or serves someone else now. Leave it alone.
            logger.debug("connection #%d given back but not checked out: ignored", conn.id)
        else:
            # Inherited from before a fork (already abandoned) or never the pool's: drop it
            # without sending anything.
            conn.abandon()

    def release_hold(self, response_id: str, *, wait: bool = True) -> None:
        """End the hold kept for the continuation of ``response_id`` (its conversation ended):
        the connection goes to the oldest waiter, or stays idle for anyone.

        ``wait=False`` is for finalizers, which may run in any thread at any moment, even
        while that thread holds this pool's lock or the statistics' lock: it only queues the
        release (a lock-free append, no I/O). The pool's next step takes it, before it
        decides anything: the next request, return or tick, or the care round within a
        second.
        """
        self._unholds.append(response_id)
        if wait:
            self._step(self._state.tick)

    # -- transitions -----------------------------------------------------------------------

    def _step(
        self,
        transition: Callable[..., Optional[Actions]],
        *args: Any,
        filling: bool = False,
        **kwargs: Any,
    ) -> bool:
        """One transition under the lock (after the holds finalizers queued), then its I/O
        outside it. False when the transition did not apply (it returned ``None``).

        ``filling``: the fill worker's own step; True is then returned when the pool
        reserved another fill slot, which the worker opens itself.
        """
        actions: Optional[Actions] = None
        decided: Optional[Actions] = None
        more = False
        try:
            with self._lock:
                now = time.monotonic()
                drained = self._take_unholds(now) if self._unholds else None
                decided = transition(*args, now=now, **kwargs)
                actions = decided if drained is None else _merged(drained, decided)
        finally:
            if actions:
                more = self._perform(actions, filling=filling)
        return more if filling else decided is not None

    def _take_unholds(self, now: float) -> Optional[Actions]:
        """Under the lock: end every hold that finalizers queued (see ``release_hold``)."""
        if not self._unholds:
            return None
        ids = []
        while self._unholds:
            ids.append(self._unholds.popleft())
        return self._state.release_holds(ids, now)

    def _perform(self, actions: Actions, *, filling: bool = False) -> bool:
        """The I/O a transition asked for, outside the lock: wake-ups, closes, the fill.

        Returns True when a fill slot was reserved and ``filling`` (the worker continues).
        The reservation is honoured whatever happens to the closes: a slot never leaks.
        """
        for waiter in actions.woken:
            # A waiter reads its verdict under the lock, so a set after the lock is released
            # is never lost, at worst early (it looks again).
            event = waiter.event
            if event is not None:
                event.set()
        try:
            for conn, why in actions.close:
                conn.close()
                logger.debug("connection #%d %s (age %.1fs)", conn.id, why, self._age(conn))
        finally:
            if actions.fill and not filling:
                if self._background:
                    self._maintenance.start_fill()
                else:
                    self._fill_inline()
        return actions.fill and filling

    # -- maintenance (driven by _maintenance) ----------------------------------------------

    def care_interval(self) -> float:
        interval = self._config.ping_interval
        if interval is None:
            return _MAX_CARE_INTERVAL
        return max(_MIN_CARE_INTERVAL, min(_MAX_CARE_INTERVAL, interval / 2))

    def run_maintenance(self) -> float:
        """One round of idle care; returns the seconds until the next one is due.

        Ends the holds finalizers queued and those that ran out, retires idle connections
        past their age or ``idle_timeout``, looks after every idle connection (one at a
        time: each is back in the pool before the next is taken) and keeps
        ``min_connections`` open. The maintenance thread calls it; tests call it to drive
        the pool step by step.
        """
        if os.getpid() != self._pid:
            return self.care_interval()
        state = self._state
        actions: Optional[Actions] = None
        try:
            with self._lock:
                now = time.monotonic()
                state.fill_enabled = True  # this round may start the fill, background or not
                try:
                    actions = _merged(self._take_unholds(now), state.tick(now))
                finally:
                    state.fill_enabled = self._background
                due = state.care_due()
        finally:
            if actions:
                self._perform(actions)
        for conn in due:
            self._care_for(conn)
        with self._lock:
            delay = state.next_maintenance(self.care_interval())
        return max(_MIN_CARE_INTERVAL, delay)

    def _care_for(self, conn: Connection) -> None:
        with self._lock:
            if not self._state.begin_care(conn):
                return
        alive = False
        try:
            alive = conn.check_idle()
        except Exception:
            # Whatever went wrong, this connection is not trusted again and the others are
            # still looked after: it is closed, and the round goes on.
            logger.warning(
                "oaiws: looking after idle connection #%d failed", conn.id, exc_info=True
            )
            self.counters.add("maintenance_errors")
        finally:
            self._step(self._state.end_care, conn, alive)
        if not alive and not self._state.closed:
            logger.debug("connection #%d dropped while idle: dead", conn.id)

    def fill_one(self) -> bool:
        """Open one connection in the slot reserved for the fill (the fill worker's step);
        True when the pool reserved another one, which the worker opens next."""
        try:
            conn = self._connect(self._config)
        except BaseException as error:
            self._step(
                self._state.open_failed, None, counted=isinstance(error, Exception), filling=True
            )
            if not isinstance(error, Exception):
                raise
            if isinstance(error, OAIWSError):
                logger.debug("opening a warm connection failed: %s", type(error).__name__)
            else:
                logger.warning("oaiws: opening a warm connection failed", exc_info=True)
            return False
        return self._step(self._state.opened, None, conn, self._retire_at(conn), filling=True)

    def fill_not_started(self) -> None:
        """The fill worker could not start: give its reserved slot back."""
        self._step(self._state.open_failed, None, counted=False, filling=True)

    def count_failure(self) -> None:
        """An unexpected failure of a maintenance round (logged by the maintenance)."""
        self.counters.add("maintenance_errors")

    def _fill_inline(self) -> None:
        # Without a background thread (tests): the fill runs in the caller, one handshake at
        # a time, each success letting the pool reserve the next slot.
        with self._lock:
            self._state.fill_enabled = True
        try:
            while self.fill_one():
                pass
        finally:
            with self._lock:
                self._state.fill_enabled = self._background

    # -- lifetimes -------------------------------------------------------------------------

    def _retire_at(self, conn: Connection) -> float:
        config = self._config
        jitter = self._rng.uniform(0.0, _JITTER_FRACTION * config.max_connection_age)
        return conn.created_at + config.max_connection_age - config.effective_age_margin - jitter

    def retire_at(self, conn: Connection) -> Optional[float]:
        """When ``conn`` retires (age clock), or ``None`` when it is not the pool's."""
        with self._lock:
            return self._state.retire_at(conn)

    def _age(self, conn: Connection) -> float:
        return self._clock() - conn.created_at

    # -- stats, repr, close ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Gauges (``connections_open``, ``connections_idle``, ``connections_in_use``,
        ``connections_opening``, ``connections_held``, ``requests_waiting``) and every
        counter of the client's ``Stats``."""
        with self._lock:
            result: dict[str, Any] = self._state.gauges(time.monotonic())
        result.update(self.counters.counters())
        return result

    def check_invariants(self) -> None:
        """Raise AssertionError when the pool's state breaks one of its rules (for tests)."""
        with self._lock:
            self._state.check_invariants(time.monotonic())

    def __repr__(self) -> str:
        with self._lock:
            gauges = self._state.gauges(time.monotonic())
            closed = self._state.closed
        return (
            f"<Pool {'closed' if closed else 'open'} "
            f"open={gauges['connections_open']} idle={gauges['connections_idle']} "
            f"in_use={gauges['connections_in_use']} opening={gauges['connections_opening']} "
            f"waiting={gauges['requests_waiting']} max={self._config.max_connections}>"
        )

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def maintenance_thread(self) -> Optional[threading.Thread]:
        """The idle-care thread once started (``None`` before, and without background)."""
        return self._maintenance.care_thread

    def close(self) -> None:
        """Close idle connections now and in-use ones when they come back; wake every waiter.

        Idempotent. Later ``acquire`` calls raise ``ClientClosedError``.
        """
        actions: Optional[Actions] = None
        try:
            with self._lock:
                if self._state.closed:
                    return
                actions = self._state.close(time.monotonic())
                self._unholds.clear()  # nothing is held in a closed pool
        finally:
            # The maintenance thread ends at its next wake-up; not joined, because it may be
            # in a check (bounded) whose connection is then closed.
            self._maintenance.stop()
            if actions:
                self._perform(actions)
        logger.debug("pool closed")

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- fork ------------------------------------------------------------------------------

    def _check_fork(self) -> None:
        # Where os.register_at_fork exists (every platform with fork) the child is reset at
        # the fork itself, so the system call behind os.getpid() is spared on every checkout
        # and return; elsewhere this check does the same job late.
        if not RESET_AT_FORK and os.getpid() != self._pid:
            self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        """Start afresh in a child process, dropping the parent's sockets silently."""
        inherited = list(self._state.entries)
        closed = self._state.closed
        self.counters.reset()
        self._init_state()  # a new lock too: the parent's may have been held at the fork
        self._state.closed = closed
        for conn in inherited:
            conn.abandon()


def _merged(first: Optional[Actions], second: Optional[Actions]) -> Optional[Actions]:
    """Both transitions' decisions, to perform in one go."""
    if first is None:
        return second
    if second is not None:
        first.close.extend(second.close)
        first.woken.extend(second.woken)
        first.fill = first.fill or second.fill
    return first
