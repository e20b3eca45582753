"""A soak: many threads, many requests, connections rotating every few seconds, idle care and
early exits all at once, for a while. Slow, so excluded by default: ``python -m pytest -m slow``
(``OAIWS_SOAK_SECONDS`` sets the length, default 30).

Every answer must be exactly the one its own input asks for (no event reaches another caller),
the pool must stay within its bound, and the server must never have to retire a connection
itself: the client rotates them first.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest

import oaiws
from oaiws.testing import expected_text

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("OAIWS_SOAK_SECONDS", "30"))
THREADS = 8
MAX_CONNECTIONS = 4
SERVER_AGE = 1.5


@pytest.mark.timeout(SECONDS + 120)
def test_soak_with_rotation_idle_care_and_early_exits(
    oaiws_emulator_factory: Any, client_for: Any
) -> None:
    emulator = oaiws_emulator_factory(max_connection_age=SERVER_AGE, ping_interval=0.5)
    client = client_for(
        emulator,
        max_connections=MAX_CONNECTIONS,
        max_connection_age=SERVER_AGE,
        connection_age_margin=0.3,
        ping_interval=0.2,
        idle_timeout=1.0,
        pool_timeout=30.0,
        read_timeout=10.0,
    )
    stop_at = time.monotonic() + SECONDS
    failures: list[str] = []
    completed = [0] * THREADS
    abandoned = [0] * THREADS
    peak_open = [0]
    lock = threading.Lock()

    def worker(number: int) -> None:
        rng = random.Random(number)
        turn = 0
        while time.monotonic() < stop_at and not failures:
            turn += 1
            text = f"worker {number} turn {turn}"
            try:
                if rng.random() < 0.003:
                    with client.generate_response(model="soak", input=text) as stream:
                        for index, _ in enumerate(stream):
                            if index == 3:
                                break  # leave early: the connection must be closed
                    abandoned[number] += 1
                    continue
                response = client.create_response(model="soak", input=text)
                if response.output_text != expected_text(text):
                    failures.append(f"{text!r} got another caller's answer")
                completed[number] += 1
            except oaiws.OAIWSError as error:
                failures.append(f"{text!r}: {type(error).__name__}: {error}")
            stats = client.pool_stats()
            with lock:
                peak_open[0] = max(peak_open[0], stats["connections_open"])
            if rng.random() < 0.05:
                # A quiet spell, so idle care and idle_timeout have something to do.
                threading.Event().wait(rng.uniform(0.1, 0.6))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 60)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    assert not failures, failures[:5]

    stats = client.pool_stats()
    assert sum(completed) > THREADS * 10
    assert peak_open[0] <= MAX_CONNECTIONS
    assert stats["connections_in_use"] == 0 and stats["requests_waiting"] == 0
    assert stats["connections_open"] <= MAX_CONNECTIONS
    assert stats["connections_expired"] > 0, f"connections were rotated: {stats}"
    assert stats["connections_discarded"] == sum(abandoned), (stats, sum(abandoned))
    assert emulator.stats()["connections_closed_max_age"] == 0, (
        "the client rotates connections before the server's limit"
    )
