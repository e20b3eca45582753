"""The pool's background work: idle care on a timer, and the fill, each in its own thread.

A blocking socket answers pings only while someone reads it, so idle connections need
looking after: the care thread runs a round every ``ping_interval / 2`` seconds (at least
once a second) in which the pool retires old connections, ends holds that ran out, and
checks every idle connection due for it, one at a time (``Pool.run_maintenance``).

Opening connections up to ``min_connections`` is a handshake, which may take up to
``connect_timeout``: it runs in a separate fill thread, started when the pool reserves a slot
for it, so that a slow or refusing server never stalls the care of the other connections.

Both threads hold the pool weakly, so a forgotten client is garbage-collected and its
threads end; an unexpected exception in one round is logged, counted
(``maintenance_errors``) and never ends the care for good.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Optional, Protocol

__all__ = ["Maintenance", "PoolTasks"]

logger = logging.getLogger("oaiws.pool")

# After an unexpected failure of a round, the pause before the next one (seconds).
_AFTER_FAILURE = 1.0


class PoolTasks(Protocol):
    """What the maintenance needs from its pool (``Pool`` implements it)."""

    @property
    def closed(self) -> bool: ...

    def run_maintenance(self) -> float:
        """One round of care; the seconds until the next one is due."""

    def fill_one(self) -> bool:
        """Open one connection in the reserved fill slot; True when another was reserved."""

    def fill_not_started(self) -> None:
        """Give back a reserved fill slot whose thread could not start."""

    def count_failure(self) -> None:
        """Count an unexpected failure of a round."""


class Maintenance:
    """Starts and stops one pool's care thread and fill threads."""

    def __init__(self, pool: PoolTasks, *, background: bool) -> None:
        self._pool_ref = weakref.ref(pool)
        self._background = background
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._care: Optional[threading.Thread] = None
        self._fill: Optional[threading.Thread] = None

    def ensure_started(self) -> None:
        """Start the care thread unless it runs already (or there is no background)."""
        if self._care is not None or not self._background:
            return
        with self._lock:
            if self._care is not None or self._stop.is_set():
                return
            thread = threading.Thread(
                target=_care_main,
                args=(self._pool_ref, self._stop),
                name="oaiws-pool-maintenance",
                daemon=True,
            )
            self._care = thread
        thread.start()

    def start_fill(self) -> None:
        """Open the slot the pool just reserved for the fill, in a thread of its own."""
        thread = threading.Thread(
            target=_fill_main, args=(self._pool_ref,), name="oaiws-pool-fill", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # the interpreter cannot start threads (shutting down, limits)
            pool = self._pool_ref()
            if pool is not None:
                pool.fill_not_started()
            logger.debug("oaiws: the fill thread could not start", exc_info=True)
            return
        with self._lock:
            self._fill = thread

    @property
    def care_thread(self) -> Optional[threading.Thread]:
        return self._care

    def stop(self) -> None:
        """The care thread ends at its next wake-up (not joined: it may be in a check)."""
        self._stop.set()


def _care_main(pool_ref: weakref.ReferenceType[PoolTasks], stop: threading.Event) -> None:
    while not stop.is_set():
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        try:
            delay = pool.run_maintenance()
        except Exception:  # one failed round must not end idle care for good
            logger.warning("oaiws pool maintenance round failed", exc_info=True)
            pool.count_failure()
            delay = _AFTER_FAILURE
        del pool
        if stop.wait(delay):
            return


def _fill_main(pool_ref: weakref.ReferenceType[PoolTasks]) -> None:
    pool = pool_ref()
    if pool is None:
        return
    try:
        while pool.fill_one():
            pass
    except Exception:
        logger.warning("oaiws pool fill failed", exc_info=True)
        pool.count_failure()
