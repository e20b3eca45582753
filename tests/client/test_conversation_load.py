"""Many conversations sharing one client: cache hits under contention, and exact transcripts
when connections die mid-conversation.

The cache-hit rate is read from the emulator's own counters:
``cache_hits / (requests - conversations)``, i.e. the share of the turns that had a previous
response to continue from (every turn but the first of each conversation) that the server
served from its connection cache. A replay is no cache hit, so it counts against the rate.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Callable

import pytest

import oaiws
from oaiws.testing import Emulator, Fault, expected_text

ClientFactory = Callable[..., oaiws.Client]

THREADS = 32
TURNS = 6
DELTAS = 4
INSTRUCTIONS = "Answer briefly."


def undisturbed_transcript(index: int) -> list[tuple[str, str]]:
    """What an undisturbed run of conversation ``index`` says, from the model's definition."""
    items: list[dict[str, Any]] = []
    for turn in range(TURNS):
        question = f"conversation {index}, question {turn}"
        answer = expected_text(question, instructions=INSTRUCTIONS, history=items, deltas=DELTAS)
        items += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    return [(item["role"], item["content"]) for item in items]


def spoken(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """A transcript as (role, text) pairs: what the conversation said, ids left aside."""
    pairs = []
    for item in history:
        content = item["content"]
        if not isinstance(content, str):
            content = "".join(part["text"] for part in content)
        pairs.append((item["role"], content))
    return pairs


def run_conversations(
    client: oaiws.Client,
    before_turn: Callable[[int, int], None] = lambda i, t: None,
    *,
    threads: int = THREADS,
    closed: bool = True,
) -> dict[int, list[dict[str, Any]]]:
    """``threads`` threads, each running one TURNS-turn store=false conversation, closed at
    the end (a ``with`` block) or just dropped; raises the first error any of them saw."""
    histories: dict[int, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def converse(index: int) -> None:
        try:
            start.wait()
            conv = client.conversation(model="gpt-test", instructions=INSTRUCTIONS, store=False)
            for turn in range(TURNS):
                before_turn(index, turn)
                response = conv.send(f"conversation {index}, question {turn}")
                assert response.status == "completed"
            histories[index] = conv.history
            if closed:
                conv.close()
            # else: dropped here, still holding its connection for a next turn
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=converse, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers), "a conversation hung"
    if errors:
        raise errors[0]
    return histories


def test_32_conversations_over_8_connections_hit_the_cache(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    emu = oaiws_emulator_factory(deltas=DELTAS)
    client = client_for(emu, max_connections=8)

    histories = run_conversations(client)

    stats = emu.stats()
    assert stats["requests"] == THREADS * TURNS, "every turn was sent once"
    continuations = stats["requests"] - THREADS
    hit_rate = stats["cache_hits"] / continuations
    assert hit_rate >= 0.99, (hit_rate, stats, client.pool_stats())
    assert stats["previous_response_not_found"] == 0
    assert stats["handshakes"] <= 8
    pool = client.pool_stats()
    assert pool["affinity_hits"] >= 0.99 * continuations
    assert pool["replays"] <= continuations - stats["cache_hits"]
    for index, history in histories.items():
        assert spoken(history) == undisturbed_transcript(index)


def test_without_holds_the_same_load_loses_its_chains(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    # The control experiment: the hit rate above comes from holding a conversation's
    # connection between its turns, not from luck. Answers stay right either way (replays).
    emu = oaiws_emulator_factory(deltas=DELTAS)
    client = client_for(emu, max_connections=8, affinity_wait=0)

    histories = run_conversations(client)

    stats = emu.stats()
    assert stats["cache_hits"] / (stats["requests"] - THREADS) < 0.5
    assert client.pool_stats()["replays"] > 0
    assert stats["previous_response_not_found"] == 0, "a replay is decided, never attempted"
    for index, history in histories.items():
        assert spoken(history) == undisturbed_transcript(index)


def test_connections_killed_mid_conversation_leave_every_transcript_exact(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    run_with_kills(oaiws_emulator_factory, client_for, seed=20240611)


@pytest.mark.slow
def test_many_rounds_of_kills_never_corrupt_a_transcript(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    for seed in range(10):
        run_with_kills(oaiws_emulator_factory, client_for, seed=seed)


def run_with_kills(
    emulator_factory: Callable[..., Emulator], client_for: ClientFactory, seed: int
) -> None:
    emu = emulator_factory(deltas=DELTAS)
    client = client_for(emu, max_connections=8, max_retries=6)
    rng = random.Random(seed)
    # Decided up front so that the run is reproducible: which turns are preceded by a kill.
    turns = [(i, t) for i in range(THREADS) for t in range(1, TURNS)]
    kills = {turn: rng.choice(("mid-response", "drop-all")) for turn in rng.sample(turns, 14)}

    def before_turn(index: int, turn: int) -> None:
        kind = kills.get((index, turn))
        if kind == "mid-response":
            # The next response anyone starts is cut after a few events, TCP dropped.
            emu.inject(Fault(close_after_events=rng.randint(1, 6), close_code=None))
        elif kind == "drop-all":
            emu.close_all_connections(code=rng.choice((1011, None)))

    histories = run_conversations(client, before_turn)

    assert len(histories) == THREADS
    for index, history in histories.items():
        assert spoken(history) == undisturbed_transcript(index)
    pool = client.pool_stats()
    assert pool["connections_lost"] > 0, "the kills happened"
    assert pool["replays"] > 0, "lost chains were replayed"
    stats = emu.stats()
    assert stats["faults_applied"] >= 1
    assert stats["previous_response_not_found"] == 0, "a replay is decided, never attempted"


def test_a_dropped_conversation_releases_its_connection_at_once(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    # Users forget `with`: a conversation that is dropped must cost the others no more than
    # one that is closed. Holds would otherwise keep each last connection for affinity_wait.
    emu = oaiws_emulator_factory(deltas=DELTAS)
    waited = {}
    for closed in (True, False):
        emu.reset_stats()
        client = client_for(emu, max_connections=4)
        run_conversations(client, threads=16, closed=closed)
        stats = emu.stats()
        hit_rate = stats["cache_hits"] / (stats["requests"] - 16)
        assert hit_rate >= 0.99, (closed, hit_rate, stats, client.pool_stats())
        pool = client.pool_stats()
        waited[closed] = pool["requests_wait_ms"]
        if not closed:
            assert pool["affinity_holds_released"] >= 1, "dropped conversations let go"
        client.close()
    # Both runs wait for connections (16 threads, 4 connections): no more than twice as
    # long when the conversations are dropped (plus 0.25 s for the machine's noise).
    assert waited[False] <= 2 * waited[True] + 250, waited
