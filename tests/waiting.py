"""Waiting in tests for a fact, never for a guessed amount of time."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true (returned), for at most ``timeout``
    seconds; ``AssertionError`` naming ``what`` after that.

    For state that another thread or process changes asynchronously (the emulator counts a
    response after it has sent its last event; a pool notices a closed socket on its next
    round; a worker process starts).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)
