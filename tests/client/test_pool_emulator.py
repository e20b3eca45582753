"""The pool on real sockets against the emulator: rotation, idle care, fork, contention."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from typing import Any, Callable

import pytest
from waiting import wait_for

from oaiws import AuthenticationError
from oaiws._config import ClientConfig
from oaiws._connection import Connection
from oaiws._pool import Pool
from oaiws.testing import Emulator, expected_text

TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


def make_pool(emu: Emulator, **options: Any) -> Pool:
    options.setdefault("api_key", emu.api_key)
    options.setdefault("base_url", emu.base_url)
    return Pool(ClientConfig.resolve(**options))


def request(pool: Pool, text: str, affinity: Any = None) -> tuple[Connection, dict[str, Any]]:
    conn = pool.acquire(5.0, affinity)
    try:
        conn.send_json({"type": "response.create", "model": "m", "input": text})
        while True:
            event = conn.recv_json(5.0)
            if event["type"] in TERMINAL:
                break
    except BaseException:
        pool.discard(conn, "test request failed", lost=True)
        raise
    pool.release(conn)
    return conn, event


def test_connections_are_reused_and_logged_without_content(
    oaiws_emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="oaiws")
    with make_pool(oaiws_emulator) as pool:
        first, _ = request(pool, "secret prompt one")
        second, _ = request(pool, "secret prompt two")
        assert first is second
        conn = pool.acquire(1)
        pool.discard(conn, "not read to its end")
        stats = pool.stats()
    assert (stats["connections_opened"], stats["reuses"], stats["checkouts"]) == (1, 2, 3)
    assert oaiws_emulator.stats()["handshakes"] == 1
    text = "\n".join(record.getMessage() for record in caplog.records)
    for word in ("opened", "reused", "discarded"):
        assert word in text
    assert "secret prompt" not in text and oaiws_emulator.api_key not in text


def test_affinity_routes_a_continuation_to_its_connection(oaiws_emulator: Emulator) -> None:
    with make_pool(oaiws_emulator) as pool:
        a, b = pool.acquire(1), pool.acquire(1)
        for conn, text in ((a, "first"), (b, "second")):
            conn.send_json({"type": "response.create", "model": "m", "input": text})
            while conn.recv_json(5.0)["type"] not in TERMINAL:
                pass
        pool.release(a)
        pool.release(b)
        assert a.last_response_id is not None
        conn, event = request(pool, "continue", affinity=a.last_response_id)
        assert conn is a
        assert pool.stats()["affinity_hits"] == 1
        assert event["type"] == "response.completed"


def test_refused_handshake_frees_the_slot(oaiws_emulator: Emulator) -> None:
    with make_pool(oaiws_emulator, api_key="sk-wrong", max_connections=1) as pool:
        with pytest.raises(AuthenticationError):
            pool.acquire(1)
        stats = pool.stats()
        assert (stats["connections_open"], stats["connections_opening"]) == (0, 0)
        assert stats["handshake_errors"] == 1


def test_rotation_before_the_servers_age_limit(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    emu = oaiws_emulator_factory(max_connection_age=2.0)
    with make_pool(emu, max_connection_age=2.0, connection_age_margin=0.5) as pool:
        # Requests run back to back for longer than a connection may live.
        until = time.monotonic() + 3.0
        while time.monotonic() < until:
            _, event = request(pool, "tick")
            assert event["type"] == "response.completed"
        stats = pool.stats()
    assert stats["connections_expired"] >= 1
    assert emu.stats()["connections_closed_max_age"] == 0, "the server's limit never cut in"


def test_idle_care_keeps_pooled_connections_alive(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    emu = oaiws_emulator_factory(idle_timeout=0.8)
    with make_pool(emu, ping_interval=0.2) as pool:
        conn, _ = request(pool, "warm")
        # Time itself is under test: the idle connection must outlive the server's timer.
        time.sleep(2.0)
        again, _ = request(pool, "still warm")
        assert again is conn
        assert emu.stats()["connections_closed_idle"] == 0
        assert emu.stats()["pings_received"] >= 3


def test_a_connection_closed_while_idle_is_dropped_before_checkout(
    oaiws_emulator: Emulator,
) -> None:
    with make_pool(oaiws_emulator, ping_interval=0.2) as pool:
        conn, _ = request(pool, "x")
        oaiws_emulator.close_all_connections(code=1001)
        wait_for(lambda: pool.stats()["connections_lost"] == 1)
        assert pool.stats()["connections_open"] == 0
        again, _ = request(pool, "y")
        assert again is not conn


def test_min_connections_are_opened_warm_in_the_background(oaiws_emulator: Emulator) -> None:
    with make_pool(oaiws_emulator, min_connections=2, max_connections=4) as pool:
        wait_for(lambda: pool.stats()["connections_idle"] == 2)
        request(pool, "x")
        assert pool.stats()["connections_opened"] == 2
    wait_for(lambda: oaiws_emulator.stats()["connections_open"] == 0)


def test_close_stops_the_maintenance_thread(oaiws_emulator: Emulator) -> None:
    pool = make_pool(oaiws_emulator)
    request(pool, "x")
    thread = pool.maintenance_thread
    assert thread is not None and thread.is_alive()
    pool.close()
    thread.join(5)
    assert not thread.is_alive()
    wait_for(lambda: oaiws_emulator.stats()["connections_open"] == 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_gives_the_child_a_fresh_pool_and_leaves_the_parent_alone(
    oaiws_emulator: Emulator,
) -> None:
    with make_pool(oaiws_emulator) as pool:
        held = pool.acquire(1)  # in use across the fork
        parent_conn, _ = request(pool, "before fork")  # idle across the fork
        assert parent_conn is not held
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave without running any teardown
            code = 1
            try:
                report: dict[str, Any] = {"fresh": pool.stats()["connections_open"] == 0}
                conn, event = request(pool, "in the child")
                report["event"] = event["type"]
                report["new_connection"] = conn is not parent_conn and conn is not held
                report["opened"] = pool.stats()["connections_opened"]
                os.write(write_end, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read_end) as pipe:
            report = json.loads(pipe.read() or "{}")
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
        assert report == {
            "fresh": True,
            "event": "response.completed",
            "new_connection": True,
            "opened": 1,
        }
        # The parent's connections were not touched by the child.
        again, event = request(pool, "after fork")
        assert again is parent_conn and event["type"] == "response.completed"
        held.send_json({"type": "response.create", "model": "m", "input": "held"})
        while held.recv_json(5.0)["type"] not in TERMINAL:
            pass
        pool.release(held)
        assert oaiws_emulator.stats()["handshakes"] == 3


def test_64_threads_share_4_connections_with_random_early_exits(
    oaiws_emulator_factory: Callable[..., Emulator],
) -> None:
    deltas = 6
    emu = oaiws_emulator_factory(deltas=deltas)
    pool = make_pool(emu, max_connections=4, pool_timeout=30.0)
    failures: list[str] = []
    peak = [0]
    lock = threading.Lock()

    def worker(n: int) -> None:
        rng = random.Random(n)
        for round_ in range(3):
            text = f"thread {n} round {round_}"
            conn = pool.acquire(30.0)
            with lock:
                peak[0] = max(peak[0], pool.stats()["connections_in_use"])
            stop_after = rng.randrange(1, 12) if rng.random() < 0.3 else None
            try:
                conn.send_json({"type": "response.create", "model": "m", "input": text})
                response_id = None
                deltas_seen: list[str] = []
                count = 0
                while True:
                    event = conn.recv_json(10.0)
                    count += 1
                    if event["type"] == "response.created":
                        response_id = event["response"]["id"]
                    elif "response" in event and event["response"]["id"] != response_id:
                        failures.append(f"thread {n}: an event of another response")
                    if event["type"] == "response.output_text.delta":
                        deltas_seen.append(event["delta"])
                    if event["type"] in TERMINAL:
                        if "".join(deltas_seen) != expected_text(text, deltas=deltas):
                            failures.append(f"thread {n}: text of another request")
                        pool.release(conn)
                        break
                    if stop_after is not None and count >= stop_after:
                        pool.discard(conn, "caller stopped early")
                        break
            except Exception as exc:
                failures.append(f"thread {n}: {type(exc).__name__}: {exc}")
                pool.discard(conn, "error", lost=True)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert not failures, failures[:5]
        assert peak[0] <= 4
        stats = pool.stats()
        assert stats["connections_in_use"] == 0 and stats["requests_waiting"] == 0
        assert stats["connections_open"] <= 4
        assert stats["checkouts"] == 64 * 3
        assert emu.stats()["connections_open"] <= 4
    finally:
        pool.close()
