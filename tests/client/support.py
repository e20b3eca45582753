"""Helpers shared by the client tests (importable as ``support`` from the test modules)."""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll until ``condition()`` holds, for at most ``timeout`` seconds.

    For state another thread or process changes asynchronously (the emulator counts a
    response after it has sent its last event; a pool notices a closed socket on its next
    round): the test waits for the fact itself, never for a guessed amount of time.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.002)
