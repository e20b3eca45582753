"""Fork safety in one place: what must start afresh in a child process registers here.

A pool (WebSocket, lanes, HTTP) inherited across ``fork()`` holds the parent's sockets, which
the parent still uses: the child must drop them without a word on them and start empty. Where
``os.register_at_fork`` exists (every platform with fork), every registered object's
``_after_fork_in_child()`` runs in the child at the fork itself; elsewhere each object checks
its process id on use (``RESET_AT_FORK`` is then false).
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

__all__ = ["RESET_AT_FORK", "ForkAware", "reset_in_child"]

logger = logging.getLogger("oaiws")


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_in_child(obj: ForkAware) -> None:
    """Have ``obj._after_fork_in_child()`` run in every child process forked from now on
    (for as long as ``obj`` lives)."""
    _registered.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_registered):
        try:
            obj._after_fork_in_child()
        except Exception:  # one object's failure must not leave the others with the parent's
            logger.warning("oaiws: resetting %r after fork failed", obj, exc_info=True)


RESET_AT_FORK = hasattr(os, "register_at_fork")
if RESET_AT_FORK:
    os.register_at_fork(after_in_child=_after_fork_in_child)
