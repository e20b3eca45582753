"""The pool's rules, driven through an injected ``connect`` and a fake clock.

Real sockets are exercised in test_pool_emulator.py; here each rule is isolated so that a
failure names the rule. Threads synchronise on the pool's own gauges, never on sleeps.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any, Callable, Optional

import pytest
from waiting import wait_for

from oaiws import APIConnectionError, ClientClosedError, PoolTimeoutError
from oaiws._config import ClientConfig
from oaiws._pool import Pool


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConn:
    _ids = itertools.count(1)

    def __init__(self, clock: FakeClock) -> None:
        self.id = next(self._ids)
        self.created_at = clock()
        self.last_used_at = self.created_at
        self.requests_started = 0
        self.last_response_id: Optional[str] = None
        self.closed = False
        self.alive = True
        self.abandoned = False
        self.close_calls = 0
        self.checks = 0
        self.on_check: Optional[Callable[[], Any]] = None  # runs inside check_idle()

    def check_idle(self) -> bool:
        self.checks += 1
        if self.on_check is not None:
            self.on_check()
        return self.alive and not self.closed

    def close(self) -> None:
        self.close_calls += 1
        self.closed = True

    def abandon(self) -> None:
        self.abandoned = True
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeConn #{self.id}>"


class FakeNet:
    """``connect`` for the pool: records connections, can fail or block on a gate."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.opened: list[FakeConn] = []
        self.fail: Optional[BaseException] = None
        self.gate: Optional[threading.Event] = None
        self.entered = threading.Event()

    def connect(self, config: ClientConfig) -> Any:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        conn = FakeConn(self.clock)
        self.opened.append(conn)
        return conn


def make_pool(net: FakeNet, **options: Any) -> Pool:
    options.setdefault("api_key", "sk-secret-value")
    options.setdefault("ping_interval", None)
    config = ClientConfig.resolve(**options)
    return Pool(
        config, connect=net.connect, clock=net.clock, rng=random.Random(7), background=False
    )


wait_until = wait_for


def waiting_acquire(pool: Pool) -> tuple[threading.Thread, list[Any]]:
    """A thread that has joined the line for a connection, and the list it will put it in."""
    got: list[Any] = []
    waiting = pool.stats()["requests_waiting"]
    thread = threading.Thread(target=lambda: got.append(pool.acquire(5)))
    thread.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == waiting + 1)
    return thread, got


def assert_no_lost_slot(pool: Pool) -> None:
    # Every invariant of the pool's state: bounded, one state per connection, nobody
    # waiting next to a free slot or idle connection.
    pool.check_invariants()
    stats = pool.stats()
    assert stats["connections_open"] + stats["connections_opening"] <= stats["max_connections"]


@pytest.fixture
def net() -> FakeNet:
    return FakeNet()


# -- bounded, FIFO, timeout -------------------------------------------------------------


def test_a_returned_connection_goes_to_the_oldest_waiter(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    held = pool.acquire(1)
    got: dict[int, Any] = {}
    order: list[int] = []
    release_gate = threading.Event()

    def waiter(n: int) -> None:
        conn = pool.acquire(5)
        got[n] = conn
        order.append(n)
        assert release_gate.wait(5)
        pool.release(conn)

    threads = []
    for n in range(3):
        thread = threading.Thread(target=waiter, args=(n,))
        thread.start()
        threads.append(thread)
        wait_until(lambda n=n: pool.stats()["requests_waiting"] == n + 1)
    pool.release(held)
    wait_until(lambda: len(order) == 1)
    assert order == [0]
    release_gate.set()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2]
    assert all(conn is held for conn in got.values())
    assert pool.stats()["connections_opened"] == 1


def test_pool_timeout_raises_and_leaves_the_line(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    pool.acquire(1)
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError, match="max_connections=1"):
        pool.acquire(0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    stats = pool.stats()
    assert stats["requests_waiting"] == 0
    assert stats["requests_timeouts"] == 1
    assert stats["requests_wait_ms"] >= 150


def test_a_newcomer_never_overtakes_a_waiter_even_with_affinity(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    conn = pool.acquire(1)
    conn.last_response_id = "resp_X"
    winner: list[str] = []

    def wait_then_record(name: str, affinity: Optional[str]) -> None:
        got = pool.acquire(5, affinity=affinity)
        winner.append(name)
        pool.release(got)

    first = threading.Thread(target=wait_then_record, args=("first", None))
    first.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    second = threading.Thread(target=wait_then_record, args=("affine", "resp_X"))
    second.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == 2)
    pool.release(conn)
    first.join(5)
    second.join(5)
    assert winner == ["first", "affine"]


# -- LIFO and affinity ------------------------------------------------------------------


def test_idle_connections_are_taken_most_recently_used_first(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=3)
    a, b, c = pool.acquire(1), pool.acquire(1), pool.acquire(1)
    for conn in (a, b, c):
        pool.release(conn)
    assert pool.acquire(1) is c
    assert pool.acquire(1) is b
    stats = pool.stats()
    assert stats["checkouts"] == 5
    assert stats["reuses"] == 2


def test_affinity_prefers_the_idle_connection_holding_the_response(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=3)
    a, b = pool.acquire(1), pool.acquire(1)
    a.last_response_id, b.last_response_id = "resp_A", "resp_B"
    pool.release(a)
    pool.release(b)  # b is the most recently used: plain LIFO would pick it
    assert pool.acquire(1, affinity="resp_A") is a
    assert pool.acquire(1, affinity="resp_gone") is b  # falls back to LIFO
    stats = pool.stats()
    assert (stats["affinity_hits"], stats["affinity_misses"]) == (1, 1)


# -- handshakes and slots ---------------------------------------------------------------


def test_a_failed_handshake_frees_its_slot(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    net.fail = APIConnectionError("refused")
    with pytest.raises(APIConnectionError):
        pool.acquire(1)
    stats = pool.stats()
    assert (stats["connections_opening"], stats["handshake_errors"]) == (0, 1)
    assert_no_lost_slot(pool)
    net.fail = None
    assert pool.acquire(0.5) is net.opened[0]


def test_a_freed_slot_goes_to_the_oldest_waiter(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    held = pool.acquire(1)
    thread, result = waiting_acquire(pool)
    pool.discard(held, "not read to its end")
    thread.join(5)
    assert result and result[0] is net.opened[1], "the waiter opened a connection in the slot"
    assert held.closed
    stats = pool.stats()
    assert (stats["connections_discarded"], stats["connections_open"]) == (1, 1)
    assert_no_lost_slot(pool)


def test_the_lock_is_not_held_during_a_handshake(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    idle = pool.acquire(1)
    net.gate = threading.Event()
    opener = threading.Thread(target=lambda: pool.release(pool.acquire(5)))
    opener.start()
    assert net.entered.wait(5)
    # While the handshake blocks: the pool answers, and a release goes through.
    stats = pool.stats()
    assert stats["connections_opening"] == 1
    pool.release(idle)
    assert pool.acquire(0.5) is idle
    net.gate.set()
    opener.join(5)
    assert_no_lost_slot(pool)


def test_a_handshake_interrupted_by_an_unexpected_exception_frees_its_slot(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    net.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        pool.acquire(1)
    assert_no_lost_slot(pool)
    assert pool.stats()["connections_opening"] == 0


# -- rotation ---------------------------------------------------------------------------


def test_margin_is_clamped_and_jitter_only_shortens_a_life(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=50, max_connection_age=4.0)
    conns = [pool.acquire(1) for _ in range(50)]
    lives = [pool.retire_at(c) - c.created_at for c in conns]  # type: ignore[arg-type, operator]
    assert all(4.0 - 1.0 - 0.05 * 4.0 <= life <= 4.0 - 1.0 for life in lives)
    assert len(set(lives)) > 40, "a fleet opened together must not retire together"


def test_a_connection_near_its_age_limit_is_never_handed_out(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2, max_connection_age=100.0, connection_age_margin=10.0)
    old = pool.acquire(1)
    pool.release(old)
    net.clock.advance(90.0)  # inside the margin: could reach the limit during a response
    fresh = pool.acquire(1)
    assert fresh is not old and old.closed
    stats = pool.stats()
    assert (stats["connections_expired"], stats["connections_open"]) == (1, 1)
    assert_no_lost_slot(pool)


def test_a_connection_in_use_is_retired_on_return_not_mid_response(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1, max_connection_age=100.0, connection_age_margin=10.0)
    conn = pool.acquire(1)
    net.clock.advance(95.0)
    pool.run_maintenance()
    assert not conn.closed, "never closed while a response may be in flight"
    pool.release(conn)
    assert conn.closed
    assert pool.stats()["connections_expired"] == 1
    assert_no_lost_slot(pool)


def test_idle_connections_are_retired_in_the_background(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2, max_connection_age=100.0, connection_age_margin=10.0)
    conn = pool.acquire(1)
    pool.release(conn)
    net.clock.advance(91.0)
    pool.run_maintenance()
    assert conn.closed
    stats = pool.stats()
    assert (stats["connections_open"], stats["connections_expired"]) == (0, 1)


# -- idle care --------------------------------------------------------------------------


def test_dead_idle_connections_are_dropped_before_checkout(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    conn = pool.acquire(1)
    pool.release(conn)
    conn.alive = False
    pool.run_maintenance()
    assert conn.closed
    assert pool.stats()["connections_lost"] == 1
    assert pool.acquire(1) is not conn


def test_a_dead_connection_found_at_checkout_is_replaced_in_the_same_slot(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    conn = pool.acquire(1)
    pool.release(conn)
    conn.alive = False  # died since the last round of care
    replacement = pool.acquire(1)
    assert replacement is net.opened[1]
    assert pool.stats()["connections_lost"] == 1
    assert_no_lost_slot(pool)


def test_a_connection_handed_from_request_to_waiter_is_not_checked_but_an_idle_one_is(
    net: FakeNet,
) -> None:
    # The check is a system call (a GIL release): skipped for a connection whose request
    # has just ended, made for one that sat idle.
    pool = make_pool(net, max_connections=1)
    conn = pool.acquire(1)
    waiting, got = waiting_acquire(pool)
    pool.release(conn)
    waiting.join(5)
    assert got == [conn] and conn.checks == 0
    pool.release(conn)  # no one waits: it goes idle
    assert pool.acquire(1) is conn and conn.checks == 1
    assert pool.stats()["reuses"] == 2


def test_idle_connections_above_min_close_after_idle_timeout(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=3, min_connections=1, idle_timeout=30.0)
    pool.run_maintenance()  # opens the warm one
    conns = [pool.acquire(1) for _ in range(3)]
    for conn in conns:
        pool.release(conn)
    net.clock.advance(31.0)
    pool.run_maintenance()
    stats = pool.stats()
    assert stats["connections_open"] == 1, "min_connections stay open"
    assert pool.acquire(1) is conns[-1], "the most recently used one is kept"


def test_care_keeps_lifo_order(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=3)
    a, b = pool.acquire(1), pool.acquire(1)
    pool.release(a)
    net.clock.advance(1)
    pool.release(b)
    pool.run_maintenance()
    assert a.checks == 1 and b.checks == 1
    assert pool.acquire(1) is b


def test_min_connections_are_opened_in_the_background_and_refilled(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=4, min_connections=2)
    assert net.opened == []
    pool.run_maintenance()
    assert pool.stats()["connections_idle"] == 2
    net.opened[0].alive = False
    pool.run_maintenance()  # drops the dead one
    pool.run_maintenance()  # refills
    assert pool.stats()["connections_idle"] == 2
    assert len(net.opened) == 3


def test_a_failing_warm_up_backs_off(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2, min_connections=1)
    net.fail = APIConnectionError("refused")
    pool.run_maintenance()
    pool.run_maintenance()
    assert pool.stats()["handshake_errors"] == 1, "the second round waits for its back-off"
    net.fail = None
    net.clock.advance(1.0)
    pool.run_maintenance()
    assert pool.stats()["connections_idle"] == 1
    assert_no_lost_slot(pool)


# -- release, discard, close ------------------------------------------------------------


def test_releasing_twice_does_not_corrupt_the_pool(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    conn = pool.acquire(1)
    pool.release(conn)
    pool.release(conn)
    assert not conn.closed
    assert pool.stats()["connections_idle"] == 1
    assert_no_lost_slot(pool)


def test_close_wakes_waiters_closes_idle_and_in_use_on_return(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    idle, busy = pool.acquire(1), pool.acquire(1)
    pool.release(idle)
    pool.acquire(1)  # idle is in use again
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            pool.acquire(5)
        except ClientClosedError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    pool.close()
    thread.join(5)
    assert errors and "closed" in str(errors[0])
    assert not busy.closed
    pool.release(busy)
    pool.release(idle)
    assert busy.closed and idle.closed
    with pytest.raises(ClientClosedError, match="closed"):
        pool.acquire(1)
    assert pool.stats()["connections_open"] == 0
    pool.close()  # idempotent


def test_after_fork_the_pool_is_empty_and_inherited_sockets_are_abandoned(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    idle, busy = pool.acquire(1), pool.acquire(1)
    pool.release(idle)
    pool._after_fork_in_child()
    assert idle.abandoned and busy.abandoned
    assert idle.close_calls == 0 and busy.close_calls == 0, "nothing sent on a parent's socket"
    assert pool.stats()["connections_open"] == 0
    pool.discard(busy, "the stream that held it gives up")  # harmless
    assert busy.close_calls == 0
    assert pool.acquire(1) is net.opened[2]
    assert_no_lost_slot(pool)


def test_stats_names_every_gauge_and_counter(net: FakeNet) -> None:
    pool = make_pool(net)
    pool.counters.add("retries")
    stats = pool.stats()
    for key in (
        "connections_open",
        "connections_idle",
        "connections_in_use",
        "requests_waiting",
        "connections_opened",
        "connections_closed",
        "connections_expired",
        "connections_discarded",
        "connections_lost",
        "handshake_errors",
        "checkouts",
        "reuses",
        "requests_wait_ms",
        "retries",
        "affinity_hits",
        "affinity_misses",
    ):
        assert key in stats
    assert stats["retries"] == 1


def test_repr_shows_state_without_secrets(net: FakeNet) -> None:
    pool = make_pool(net)
    pool.acquire(1)
    text = repr(pool)
    assert "in_use=1" in text and "sk-secret-value" not in text


# -- contention -------------------------------------------------------------------------


def test_64_threads_sharing_4_connections_with_early_exits(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=4)
    owners: dict[int, int] = {}
    owners_lock = threading.Lock()
    peak = [0]
    failures: list[str] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        for _ in range(20):
            conn = pool.acquire(10)
            with owners_lock:
                if conn.id in owners:
                    failures.append(f"connection {conn.id} handed to two threads")
                owners[conn.id] = n
                peak[0] = max(peak[0], len(owners))
            time.sleep(rng.random() / 5000)
            with owners_lock:
                if owners.pop(conn.id) != n:
                    failures.append("ownership changed under a thread")
            if rng.random() < 0.3:
                pool.discard(conn, "early exit")
            else:
                pool.release(conn)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures
    assert peak[0] <= 4
    stats = pool.stats()
    assert stats["connections_in_use"] == 0 and stats["requests_waiting"] == 0
    assert stats["checkouts"] == 64 * 20
    assert stats["connections_open"] <= 4
    assert_no_lost_slot(pool)


# -- the defects the state machine removed: each failed on the pool it replaced -----------


def test_callers_never_wait_next_to_free_slots_while_idle_connections_are_cared_for(
    net: FakeNet,
) -> None:
    pool = make_pool(net, max_connections=10)
    first, second = pool.acquire(1), pool.acquire(1)
    pool.release(first)
    pool.release(second)
    in_care, gate = threading.Event(), threading.Event()
    first.on_check = lambda: (in_care.set(), gate.wait(10))  # care is slow on this one
    care = threading.Thread(target=pool.run_maintenance)
    care.start()
    got: list[Any] = []
    callers = [threading.Thread(target=lambda: got.append(pool.acquire(5))) for _ in range(3)]
    try:
        assert in_care.wait(5)
        for caller in callers:
            caller.start()
        # The idle one and a new one in a free slot at once; only one caller waits, for the
        # connection under care, which comes back within its check.
        wait_until(lambda: len(got) == 2 and pool.stats()["requests_waiting"] == 1)
        assert second in got and net.opened[2] in got
    finally:
        gate.set()
        care.join(5)
        for caller in callers:
            caller.join(5)
    assert len(got) == 3 and first in got
    assert_no_lost_slot(pool)


def test_an_unexpected_exception_in_idle_care_never_bricks_the_pool(
    net: FakeNet, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(net, max_connections=2)
    broken, healthy = pool.acquire(1), pool.acquire(1)
    pool.release(broken)
    pool.release(healthy)

    def bug() -> None:
        raise RuntimeError("a bug while looking after a connection")

    broken.on_check = bug
    pool.run_maintenance()  # contained: logged, counted, the round goes on
    assert broken.closed and not healthy.closed and healthy.checks == 1
    assert pool.stats()["maintenance_errors"] == 1
    assert "looking after idle connection" in caplog.text
    assert pool.acquire(0.5) is healthy
    assert pool.acquire(0.5) is net.opened[2], "the broken one's slot is free again"
    assert_no_lost_slot(pool)


def test_a_connection_granted_to_an_interrupted_waiter_after_close_is_closed(
    net: FakeNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(net, max_connections=1)
    conn = pool.acquire(1)

    class InterruptedWait(threading.Event):
        # The waiting caller: while it waits, its connection is handed to it and the pool
        # closes; then Ctrl-C arrives in its wait.
        def wait(self, timeout: Optional[float] = None) -> bool:
            pool.release(conn)
            pool.close()
            raise KeyboardInterrupt

    monkeypatch.setattr("oaiws._pool.threading.Event", InterruptedWait)
    with pytest.raises(KeyboardInterrupt):
        pool.acquire(5)
    assert conn.closed, "a closed pool owns no open socket"
    assert pool.stats()["connections_open"] == 0


def test_a_fork_during_a_checkout_check_never_exceeds_max_connections(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    conn = pool.acquire(1)
    pool.release(conn)
    in_child: list[Any] = []

    def fork_now() -> None:
        # The pool is reset for a child process in the middle of this connection's check,
        # and another request of the child takes the only slot.
        pool._after_fork_in_child()
        in_child.append(pool.acquire(1))

    conn.on_check = fork_now
    with pytest.raises(PoolTimeoutError):
        pool.acquire(0.3)  # the child's only slot is in use: wait, never open a second one
    assert conn.abandoned and len(in_child) == 1
    assert sum(1 for c in net.opened if not c.closed) == 1
    assert pool.stats()["connections_open"] == 1
    assert_no_lost_slot(pool)
