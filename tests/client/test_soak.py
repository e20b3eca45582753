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
from oaiws.testing import Fault, expected_text

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("OAIWS_SOAK_SECONDS", "30"))
THREADS = 8
MAX_CONNECTIONS = 4
SERVER_AGE = 1.5


def rotating_client(
    client_for: Any, emulator: Any, *, server_age: float, margin: float, **options: Any
) -> oaiws.Client:
    """A client whose connections rotate every few seconds (``margin`` before the server's
    ``server_age``), pinged and idle-closed quickly, so a soak meets all of it."""
    return client_for(
        emulator,
        max_connections=MAX_CONNECTIONS,
        max_connection_age=server_age,
        connection_age_margin=margin,
        ping_interval=0.2,
        idle_timeout=1.0,
        pool_timeout=30.0,
        read_timeout=10.0,
        **options,
    )


@pytest.mark.timeout(SECONDS + 120)
def test_soak_with_rotation_idle_care_and_early_exits(
    oaiws_emulator_factory: Any, client_for: Any
) -> None:
    emulator = oaiws_emulator_factory(max_connection_age=SERVER_AGE, ping_interval=0.5)
    client = rotating_client(client_for, emulator, server_age=SERVER_AGE, margin=0.3)
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


LANE_THREADS = 24


@pytest.mark.timeout(SECONDS + 120)
def test_soak_with_lanes_rotation_steering_faults_and_early_exits(
    oaiws_emulator_factory: Any, client_for: Any
) -> None:
    """The same with ``lanes=True``: plain requests, conversations and steered streams share
    four multiplexed connections, which rotate; some streams leave early (abandoned lanes)
    and the server cuts a connection now and then."""
    server_age = 3.0
    emulator = oaiws_emulator_factory(
        max_connection_age=server_age, ping_interval=0.5, delta_delay=0.002
    )
    client = rotating_client(client_for, emulator, server_age=server_age, margin=0.8, lanes=True)
    stop_at = time.monotonic() + SECONDS
    failures: list[str] = []
    counts = {"plain": 0, "turns": 0, "steered": 0, "abandoned": 0, "cut": 0}
    peak = [0]
    lock = threading.Lock()

    def count(name: str) -> None:
        with lock:
            counts[name] += 1

    def worker(number: int) -> None:
        rng = random.Random(number)
        conv = client.conversation(model="soak", store=False)
        history: list[Any] = []
        turn = 0
        while time.monotonic() < stop_at and not failures:
            turn += 1
            text = f"lane worker {number} turn {turn}"
            roll = rng.random()
            try:
                if roll < 0.01:
                    with client.generate_response(model="soak", input=text) as stream:
                        for index, _ in enumerate(stream):
                            if index == 3:
                                break  # abandoned: its connection retires
                    count("abandoned")
                elif roll < 0.15:
                    stream = client.generate_response(
                        model="soak", input=text, metadata={"emulator_deltas": "30"}
                    )
                    steer = None
                    try:
                        for event in stream:
                            if event.type == "response.output_text.delta" and steer is None:
                                steer = stream.steer("steer it")
                    except oaiws.StreamInterruptedError:
                        count("cut")  # the server cut the connection: shown, not retried
                        continue
                    if steer is None or not steer.settled:
                        failures.append(f"{text!r}: steer {steer!r} not settled at the end")
                    elif (
                        steer.status == "applied"
                        and stream.response is not None
                        and stream.response.id != steer.successor_id
                    ):
                        failures.append(f"{text!r}: the stream ended off its successor")
                    count("steered")
                elif roll < 0.45:
                    answer = conv.send(text).output_text
                    expected = expected_text(text, history=history)
                    history += [
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": answer},
                    ]
                    if answer != expected:
                        failures.append(f"{text!r}: a turn got another context's answer")
                    count("turns")
                else:
                    response = client.create_response(model="soak", input=text)
                    if response.output_text != expected_text(text):
                        failures.append(f"{text!r} got another caller's answer")
                    count("plain")
            except oaiws.OAIWSError as error:
                failures.append(f"{text!r}: {type(error).__name__}: {error}")
            stats = client.pool_stats()
            with lock:
                peak[0] = max(peak[0], stats["lane_connections"])
            if rng.random() < 0.05:
                threading.Event().wait(rng.uniform(0.1, 0.6))

    def cutter() -> None:
        rng = random.Random(99)
        while time.monotonic() < stop_at and not failures:
            threading.Event().wait(rng.uniform(0.5, 1.5))
            emulator.inject(Fault(close_after_events=rng.randint(2, 12)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(LANE_THREADS)]
    threads.append(threading.Thread(target=cutter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 60)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    assert not failures, failures[:5]
    assert counts["plain"] > LANE_THREADS * 5 and counts["turns"] > LANE_THREADS
    assert counts["steered"] > 0 and counts["abandoned"] > 0, counts
    assert peak[0] <= MAX_CONNECTIONS
    stats = client.pool_stats()
    assert stats["lanes_abandoned"] >= counts["abandoned"], (stats, counts)
    assert stats["lanes_waiting"] == 0
    assert emulator.stats()["connections_closed_max_age"] == 0, (
        "the client rotates lane connections before the server's limit"
    )
