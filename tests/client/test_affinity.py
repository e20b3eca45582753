"""Affinity: holds kept for a conversation's next turn and their fairness bound (pool rules,
with an injected connect), and continuations routed, hydrated or refused (real sockets)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest
from test_pool import FakeNet, assert_no_lost_slot, make_pool, wait_until

import oaiws
from oaiws._pool import Pool
from oaiws.testing import Emulator, expected_text

ClientFactory = Callable[..., oaiws.Client]


@pytest.fixture
def net() -> FakeNet:
    return FakeNet()


def finish(pool: Pool, conn: Any, response_id: str, *, hold: bool = True) -> None:
    """What a stream does after a terminal event: note the cached response, give it back."""
    conn.last_response_id = response_id
    pool.release(conn, hold=hold)


def acquire_in_thread(pool: Pool, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    got: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        got["conn"] = pool.acquire(**kwargs)
        got["waited"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


# -- holds ----------------------------------------------------------------------------


def test_a_held_connection_is_kept_from_newcomers_for_its_continuation(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    conn = pool.acquire(1)
    finish(pool, conn, "resp_a")
    other = pool.acquire(1)
    assert other is not conn, "a newcomer opened a new connection rather than break the hold"
    assert pool.acquire(1, affinity="resp_a") is conn
    stats = pool.stats()
    assert (stats["affinity_holds"], stats["affinity_hits"]) == (1, 1)
    assert_no_lost_slot(pool)


def test_a_continuation_overtakes_waiters_to_take_its_held_connection(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1)
    conn = pool.acquire(1)
    finish(pool, conn, "resp_a")
    thread, got = acquire_in_thread(pool, timeout=5)
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    assert pool.acquire(1, affinity="resp_a") is conn
    finish(pool, conn, "resp_b", hold=False)
    thread.join(5)
    assert got["conn"] is conn, "the waiter gets it once the conversation lets go"
    assert_no_lost_slot(pool)


def test_a_waiter_takes_a_held_connection_after_affinity_wait(net: FakeNet) -> None:
    affinity_wait = 0.3
    pool = make_pool(net, max_connections=1, affinity_wait=affinity_wait)
    conn = pool.acquire(1)
    # Time is under test: the hold may delay a waiter by affinity_wait, never more.
    thread, got = acquire_in_thread(pool, timeout=5)
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    time.sleep(affinity_wait / 2)  # the connection stays in use a while: the waiter ages
    finish(pool, conn, "resp_a")  # the waiter is still young enough: the hold is granted
    assert pool.stats()["connections_held"] == 1
    thread.join(5)
    assert got["conn"] is conn
    assert affinity_wait * 0.9 <= got["waited"] < affinity_wait + 0.5
    assert pool.stats()["affinity_holds_preempted"] == 1
    finish(pool, conn, "resp_x", hold=False)
    assert pool.acquire(1, affinity="resp_a") is conn, "the chain moved on: any connection"
    assert pool.stats()["affinity_misses"] == 1
    assert_no_lost_slot(pool)


def test_no_hold_is_granted_while_the_oldest_waiter_has_waited_affinity_wait(
    net: FakeNet,
) -> None:
    pool = make_pool(net, max_connections=1, affinity_wait=0.2)
    conn = pool.acquire(1)
    thread, got = acquire_in_thread(pool, timeout=5)
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    time.sleep(0.25)  # the waiter's age is the condition under test
    finish(pool, conn, "resp_a")
    thread.join(5)
    assert got["conn"] is conn
    assert pool.stats()["affinity_holds_preempted"] == 1


def test_a_hold_that_runs_out_goes_to_a_waiter_who_joined_after_it(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1, affinity_wait=0.5)
    conn = pool.acquire(1)
    finish(pool, conn, "resp_a")
    time.sleep(0.3)  # the hold's remaining time is the condition under test
    thread, got = acquire_in_thread(pool, timeout=5)
    thread.join(5)
    assert got["conn"] is conn
    assert got["waited"] < 0.45, "served when the hold ran out, not a full affinity_wait later"


def test_release_hold_hands_the_connection_to_the_oldest_waiter_at_once(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=1, affinity_wait=30.0)
    conn = pool.acquire(1)
    finish(pool, conn, "resp_a")
    assert pool.stats()["connections_held"] == 1
    thread, got = acquire_in_thread(pool, timeout=5)
    wait_until(lambda: pool.stats()["requests_waiting"] == 1)
    pool.release_hold("resp_a")
    thread.join(5)
    assert got["conn"] is conn and got["waited"] < 5
    assert pool.stats()["connections_held"] == 0
    pool.release_hold("resp_unknown")  # nothing held for it: no effect


def test_without_affinity_wait_nothing_is_held(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2, affinity_wait=0.0)
    conn = pool.acquire(1)
    finish(pool, conn, "resp_a")
    assert pool.acquire(1) is conn
    assert pool.stats()["affinity_holds"] == 0


@pytest.mark.parametrize("bad", [-1, float("inf"), True, "1"])
def test_affinity_wait_is_checked_with_the_other_options(bad: Any) -> None:
    with pytest.raises(oaiws.ConfigurationError, match="affinity_wait"):
        oaiws.Client(api_key="sk-x", affinity_wait=bad)


def test_idle_care_keeps_a_hold(net: FakeNet) -> None:
    pool = make_pool(net, max_connections=2)
    conn = pool.acquire(1)
    finish(pool, conn, "resp_a")
    pool.run_maintenance()
    assert conn.checks >= 1, "the held connection was looked after"
    assert pool.acquire(1) is not conn
    assert pool.acquire(1, affinity="resp_a") is conn


def test_holds_never_starve_plain_callers(net: FakeNet) -> None:
    # Conversations that continue at once would keep their connections forever; plain
    # callers must still be served, each within affinity_wait plus the queue ahead of them.
    pool = make_pool(net, max_connections=3, affinity_wait=0.05)
    stop = threading.Event()
    served: list[float] = []
    errors: list[BaseException] = []

    def conversation(index: int) -> None:
        last = None
        try:
            while not stop.is_set():
                conn = pool.acquire(10, affinity=last)
                last = f"resp_{index}_{time.monotonic()}"
                finish(pool, conn, last)
        except BaseException as error:
            errors.append(error)

    def plain() -> None:
        try:
            for _ in range(5):
                started = time.monotonic()
                conn = pool.acquire(10)
                served.append(time.monotonic() - started)
                pool.release(conn)
        except BaseException as error:
            errors.append(error)

    talkers = [threading.Thread(target=conversation, args=(i,)) for i in range(3)]
    callers = [threading.Thread(target=plain) for _ in range(4)]
    for thread in talkers + callers:
        thread.start()
    for thread in callers:
        thread.join(20)
    stop.set()
    for thread in talkers:
        thread.join(20)
    assert not errors, errors
    assert len(served) == 20, "every plain caller was served"
    assert max(served) < 5.0
    assert pool.stats()["affinity_holds_preempted"] > 0
    assert_no_lost_slot(pool)


# -- continuations on real sockets ------------------------------------------------------


def test_a_continuation_goes_to_the_connection_that_holds_its_response(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, max_connections=4)
    # Two connections; the one that does not hold the chain is the most recently used.
    first = client.generate_response(model="m", input="one", store=False)
    other = client.generate_response(model="m", input="other", store=False)
    next(first)
    next(other)
    one = first.until_done()
    other.until_done()
    second = client.create_response(
        model="m", input="two", store=False, previous_response_id=one.id
    )
    assert second.output_text == expected_text(
        "two", history=[{"role": "user", "content": "one"}, *one["output"]]
    )
    stats = oaiws_emulator.stats()
    assert (stats["handshakes"], stats["cache_hits"], stats["cache_misses"]) == (2, 1, 0)
    assert client.pool_stats()["affinity_hits"] == 1


def test_a_lost_store_false_chain_raises_with_the_way_to_recover(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    first = client.create_response(model="m", input="one", store=False)
    oaiws_emulator.close_all_connections()
    with pytest.raises(oaiws.PreviousResponseNotFoundError) as caught:
        client.create_response(model="m", input="two", store=False, previous_response_id=first.id)
    message = str(caught.value)
    assert "without previous_response_id" in message and "conversation" in message
    stats = client.pool_stats()
    assert (stats["affinity_misses"], stats["replays"]) == (1, 0)
    # The closed connection is dropped at checkout, or, when its close had not arrived yet,
    # after the request went out on it: then one retry (a request on the wire counts).
    assert stats["retries"] <= 1


def test_a_lost_stored_chain_is_continued_by_the_server_loading_it(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    first = client.create_response(model="m", input="one")
    oaiws_emulator.close_all_connections()
    second = client.create_response(model="m", input="two", previous_response_id=first.id)
    assert second.output_text == expected_text(
        "two", history=[{"role": "user", "content": "one"}, *first["output"]]
    )
    assert oaiws_emulator.stats()["hydrations"] == 1


def test_warm_prepares_a_connection_the_first_request_continues_on(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, max_connections=2)
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    warm = client.warm(model="m", instructions="Be brief.", tools=tools, store=False)
    assert warm.status == "completed" and warm.output == []
    answer = client.create_response(
        model="m",
        instructions="Be brief.",
        tools=tools,
        store=False,
        input="hello",
        previous_response_id=warm.id,
    )
    assert answer.output_text == expected_text("hello", instructions="Be brief.")
    stats = oaiws_emulator.stats()
    assert (stats["warmups"], stats["cache_hits"], stats["handshakes"]) == (1, 1, 1)
    with pytest.raises(oaiws.ConfigurationError):
        client.warm(model="m", generate=True)


def test_after_a_failed_response_its_connection_holds_nothing_to_continue(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    first = client.create_response(model="m", input="one", store=False)
    failed = client.create_response(
        model="m",
        input="two",
        store=False,
        previous_response_id=first.id,
        metadata={"emulator_outcome": "failed"},
    )
    assert failed.status == "failed"
    # The server evicted the chain: continuing from the failed response is not an affinity
    # hit on this connection, and the server says so.
    with pytest.raises(oaiws.PreviousResponseNotFoundError):
        client.create_response(
            model="m", input="three", store=False, previous_response_id=failed.id
        )
    stats = client.pool_stats()
    assert (stats["affinity_hits"], stats["affinity_misses"]) == (1, 1)
