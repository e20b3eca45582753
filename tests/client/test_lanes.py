"""Lanes (``Client(lanes=True)``) against the emulator over real sockets: routing under
interleaving, the service's limits, abandoned lanes, errors with and without ``stream_id``,
rotation, conversations keeping their lane, servers without lanes, fork safety, deadlines."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socketserver
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import pytest
from support import read_client_frame, read_upgrade, text_frame, upgrade_answer
from waiting import wait_for

import oaiws
from oaiws import _mux
from oaiws._mux import MAX_ACTIVE, MAX_LANES
from oaiws.testing import Emulator, Fault, expected_text

ClientFactory = Callable[..., oaiws.Client]


def run_threads(count: int, work: Callable[[int], Any]) -> dict[int, Any]:
    """``work(i)`` in ``count`` threads started together; results (or exceptions) by index."""
    results: dict[int, Any] = {}
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a request thread hung"
    return results


# -- routing ---------------------------------------------------------------------------


def test_interleaved_streams_from_many_threads_each_get_exactly_their_own_events(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=30, delta_delay=0.001) as emu:
        client = client_for(emu, lanes=True, max_connections=2)

        def work(i: int) -> tuple[str, set[Any], list[int]]:
            text = []
            lanes = set()
            sequence = []
            for event in client.generate_response(model="m", input=f"question {i}"):
                lanes.add(event.get("stream_id"))
                sequence.append(event.sequence_number)
                if event.type == "response.output_text.delta":
                    text.append(event.delta)
            return "".join(text), lanes, sequence

        results = run_threads(24, work)
        for i, (text, lanes, sequence) in results.items():
            assert text == expected_text(f"question {i}", deltas=30)
            assert len(lanes) == 1 and None not in lanes, "one lane per request, always named"
            assert sequence == list(range(len(sequence))), "every event, in order, once"
        stats = client.pool_stats()
        assert stats["connections_opened"] <= 2
        assert stats["lane_requests"] == 24
        assert emu.stats()["handshakes"] <= 2
        wait_for(lambda: client.pool_stats()["lanes_active"] == 0, what="lanes given back")


def test_events_of_concurrent_lanes_really_interleave_on_one_socket(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=20, delta_delay=0.005) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        first = client.generate_response(model="m", input="one")
        second = client.generate_response(model="m", input="two")
        order: list[str] = []
        a, b = iter(first), iter(second)
        next(a)  # the probe request confirms lanes before another joins the connection
        next(b)
        done = set()
        while len(done) < 2:
            for name, stream in (("a", a), ("b", b)):
                if name in done:
                    continue
                event = next(stream, None)
                if event is None:
                    done.add(name)
                else:
                    order.append(name)
        assert first.until_done().output_text == expected_text("one", deltas=20)
        assert second.until_done().output_text == expected_text("two", deltas=20)
        assert emu.stats()["connections_total"] == 1
        assert "ab" in "".join(order) and "ba" in "".join(order)


# -- limits ------------------------------------------------------------------------------


def test_more_than_sixteen_at_once_open_another_connection(client_for: ClientFactory) -> None:
    with Emulator(deltas=4, delta_delay=0.05) as emu:
        client = client_for(emu, lanes=True, max_connections=4)
        client.create_response(model="m", input="warm")  # confirms lanes on connection 1
        peak: list[int] = []

        def work(i: int) -> str:
            stream = client.generate_response(model="m", input=f"q{i}")
            first = next(iter(stream))
            assert first.type == "response.created"
            peak.append(client.pool_stats()["lanes_active"])
            return stream.until_done().output_text

        results = run_threads(MAX_ACTIVE + 4, work)
        for i, text in results.items():
            assert text == expected_text(f"q{i}", deltas=4)
        assert emu.stats()["handshakes"] == 2, "16 on the first connection, the rest on one more"
        per_connection = defaultdict(int)
        for lane in client.lane_stats():
            per_connection[lane["connection"]] += lane["requests"]
        assert max(per_connection.values()) >= MAX_ACTIVE


def test_named_lanes_stop_at_thirty_two_per_connection(client_for: ClientFactory) -> None:
    with Emulator(deltas=2) as emu:
        client = client_for(emu, lanes=True, max_connections=3)
        conversations = [client.conversation(model="m", store=False) for _ in range(40)]
        for conv in conversations:
            conv.send("hello")
        lanes = client.lane_stats()
        by_connection = defaultdict(int)
        for lane in lanes:
            by_connection[lane["connection"]] += 1
        assert max(by_connection.values()) == MAX_LANES
        assert sum(1 for lane in lanes if lane["leased"]) == 40
        assert emu.stats()["errors_sent"] == 0, "never websocket_stream_limit_reached"
        # Every conversation's next turn finds its lane's cache.
        for conv in conversations:
            conv.send("again")
        assert emu.stats()["cache_hits"] == 40
        assert client.pool_stats()["replays"] == 0


def test_a_full_pool_waits_then_times_out_clearly(client_for: ClientFactory) -> None:
    with Emulator(deltas=2, delta_delay=0.5) as emu:
        client = client_for(emu, lanes=True, max_connections=1, pool_timeout=0.3)
        client.create_response(model="m", input="warm", metadata={"emulator_delta_delay_ms": "0"})
        streams = [client.generate_response(model="m", input=f"q{i}") for i in range(MAX_ACTIVE)]
        for stream in streams:
            next(iter(stream))
        started = time.monotonic()
        with pytest.raises(oaiws.PoolTimeoutError, match="no lane became free"):
            client.create_response(model="m", input="one too many")
        assert 0.25 < time.monotonic() - started < 5
        for stream in streams:
            stream.close()


def test_when_every_lane_is_leased_the_least_recently_used_idle_lease_gives_way(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=2) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        conversations = [client.conversation(model="m", store=False) for _ in range(MAX_LANES)]
        for conv in conversations:
            conv.send("hello")
        answer = client.create_response(model="m", input="a newcomer")
        assert answer.output_text == expected_text("a newcomer", deltas=2)
        assert client.pool_stats()["lane_evictions"] == 1
        # The oldest conversation lost its lane: its next turn replays (same answer).
        reply = conversations[0].send("again")
        history = [{"role": "user", "content": "hello"}, *conversations[0].history[1:2]]
        assert reply.output_text == expected_text("again", history=history, deltas=2)
        assert client.pool_stats()["replays"] >= 1


# -- abandoned lanes --------------------------------------------------------------------


def test_an_abandoned_lane_never_leaks_and_its_connection_closes_after_the_others(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=40, delta_delay=0.01) as emu:
        client = client_for(emu, lanes=True, max_connections=2)
        client.create_response(model="m", input="warm", metadata={"emulator_delta_delay_ms": "0"})
        keeps = [client.generate_response(model="m", input=f"keep {i}") for i in range(3)]
        for stream in keeps:
            next(iter(stream))
        # Much longer than the others: still running when they end.
        left = client.generate_response(
            model="m", input="left behind", metadata={"emulator_deltas": "2000"}
        )
        for _, event in zip(range(5), left):
            assert event.get("stream_id") is not None
        left.close()  # abandoned mid-response
        assert client.pool_stats()["lanes_abandoned"] == 1
        # A newcomer goes elsewhere: the abandoned connection takes nobody new.
        newcomer = client.create_response(model="m", input="newcomer")
        assert newcomer.output_text == expected_text("newcomer", deltas=40)
        for i, stream in enumerate(keeps):
            response = stream.until_done()
            assert response.output_text == expected_text(f"keep {i}", deltas=40)
            assert all(
                e.get("stream_id") == stream.events[0].get("stream_id") for e in stream.events
            )
        # With its other lanes done, the abandoned connection closed (stopping the response).
        wait_for(lambda: emu.stats()["connections_open"] == 1, what="the abandoned one closed")
        assert emu.stats()["responses_completed"] == 1 + 3 + 1, "the abandoned one was stopped"
        assert client.create_response(model="m", input="after").status == "completed"


def test_a_dropped_stream_on_a_lane_is_abandoned_safely(client_for: ClientFactory) -> None:
    with Emulator(deltas=30, delta_delay=0.01) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        stream = client.generate_response(model="m", input="dropped")
        next(iter(stream))
        del stream  # never closed: the generator's finalizer gives the lane up
        wait_for(lambda: emu.stats()["connections_open"] == 0, what="the connection closed")
        answer = client.create_response(model="m", input="next")
        assert answer.output_text == expected_text("next", deltas=30)


# -- errors ----------------------------------------------------------------------------


def test_an_error_with_stream_id_reaches_only_its_request(client_for: ClientFactory) -> None:
    with Emulator(deltas=20, delta_delay=0.005) as emu:
        client = client_for(emu, lanes=True, max_connections=1, max_retries=0)
        client.create_response(model="m", input="warm")
        others = [client.generate_response(model="m", input=f"other {i}") for i in range(3)]
        for stream in others:
            next(iter(stream))
        fault = json.dumps({"error_code": "invalid_value", "error_status": 400})
        with pytest.raises(oaiws.BadRequestError) as caught:
            client.create_response(model="m", input="bad", metadata={"emulator_fault": fault})
        assert caught.value.code == "invalid_value"
        for i, stream in enumerate(others):
            assert stream.until_done().output_text == expected_text(f"other {i}", deltas=20)
        assert emu.stats()["connections_total"] == 1, "the connection stayed up"
        assert client.create_response(model="m", input="after").status == "completed"


def test_an_error_without_stream_id_fails_every_request_on_that_socket(
    client_for: ClientFactory,
) -> None:
    # The connection-age limit is connection-level: the server names no lane.
    with Emulator(deltas=200, delta_delay=0.01, max_connection_age=1.0) as emu:
        client = client_for(emu, lanes=True, max_connections=1, max_connection_age=3600)
        streams = [client.generate_response(model="m", input=f"long {i}") for i in range(3)]
        for stream in streams:
            next(iter(stream))
        for stream in streams:
            with pytest.raises(oaiws.APIError) as caught:
                stream.until_done()
            assert caught.value.events, "the events received so far are kept"
        assert (
            client.create_response(
                model="m",
                input="after",
                metadata={"emulator_deltas": "2", "emulator_delta_delay_ms": "0"},
            ).status
            == "completed"
        )


def test_a_lost_connection_fails_its_lanes_and_a_fresh_start_is_retried(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=20, delta_delay=0.01) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        client.create_response(model="m", input="warm")
        stream = client.generate_response(model="m", input="cut")
        next(iter(stream))
        emu.inject(Fault(close_after_events=3))  # the next request's third event
        # Buffered: retried whole on a new connection (nothing reached the caller).
        answer = client.create_response(model="m", input="whole")
        assert answer.output_text == expected_text("whole", deltas=20)
        with pytest.raises(oaiws.StreamInterruptedError):
            stream.until_done()
        assert client.pool_stats()["retries"] >= 1


def test_a_lying_server_on_lanes_is_a_protocol_error(client_for: ClientFactory) -> None:
    with Emulator(deltas=20, delta_delay=0.01) as emu:
        client = client_for(emu, lanes=True, max_connections=1, max_retries=0)
        client.create_response(model="m", input="warm")
        stream = client.generate_response(model="m", input="innocent")
        next(iter(stream))
        fault = json.dumps({"malformed_frame": True})
        with pytest.raises(oaiws.ProtocolError):
            client.create_response(model="m", input="liar", metadata={"emulator_fault": fault})
        with pytest.raises(oaiws.ProtocolError):
            stream.until_done()
        assert client.create_response(model="m", input="after").status == "completed"


# -- deadlines ---------------------------------------------------------------------------


def test_a_lane_that_times_out_leaves_the_others_running(client_for: ClientFactory) -> None:
    with Emulator(deltas=10, delta_delay=0.02) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        client.create_response(model="m", input="warm")
        other = client.generate_response(model="m", input="patient")
        next(iter(other))
        slow = json.dumps({"stall_after_first_event": 5})
        started = time.monotonic()
        with pytest.raises(oaiws.StreamTimeoutError):
            for _ in client.generate_response(
                model="m", input="slow", timeout=0.5, metadata={"emulator_fault": slow}
            ):
                pass
        assert time.monotonic() - started < 3
        assert other.until_done().output_text == expected_text("patient", deltas=10)


# -- conversations -------------------------------------------------------------------------


def test_conversations_keep_their_lanes_between_turns_without_holding_anything(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=4) as emu:
        client = client_for(emu, lanes=True, max_connections=2, affinity_wait=0.05)
        conversations = [client.conversation(model="m", store=False) for _ in range(20)]

        def chat(i: int) -> list[str]:
            texts = []
            for turn in range(3):
                texts.append(conversations[i].send(f"c{i} t{turn}").output_text)
                time.sleep(0.1)  # think time, longer than affinity_wait
            return texts

        results = run_threads(20, chat)
        for i, texts in results.items():
            history: list[Any] = []
            for turn, text in enumerate(texts):
                assert text == expected_text(f"c{i} t{turn}", history=history, deltas=4)
                history += [
                    {"role": "user", "content": f"c{i} t{turn}"},
                    {"role": "assistant", "content": text},
                ]
        stats = client.pool_stats()
        assert stats["lane_hits"] == 40 and stats["lane_misses"] == 0
        assert stats["replays"] == 0
        assert emu.stats()["cache_hits"] == 40
        assert stats["lanes_leased"] == 20
        for conv in conversations:
            conv.close()
        assert client.pool_stats()["lanes_leased"] == 0


def test_a_conversation_whose_connection_is_gone_replays_on_another(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=4) as emu:
        client = client_for(emu, lanes=True, max_connections=2)
        conv = client.conversation(model="m", store=False)
        first = conv.send("one").output_text
        emu.close_all_connections()
        wait_for(lambda: client.pool_stats()["lane_connections"] == 0, what="loss noticed")
        reply = conv.send("two")
        history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": first}]
        assert reply.output_text == expected_text("two", history=history, deltas=4)
        stats = client.pool_stats()
        assert (stats["replays"], stats["lane_misses"], stats["lane_hits"]) == (1, 1, 0)


# -- rotation ----------------------------------------------------------------------------


def test_rotation_drains_lanes_at_turn_boundaries(client_for: ClientFactory) -> None:
    with Emulator(deltas=6, delta_delay=0.01, max_connection_age=4.0) as emu:
        client = client_for(
            emu, lanes=True, max_connections=2, max_connection_age=4.0, connection_age_margin=1.5
        )
        conversations = [client.conversation(model="m", store=False) for _ in range(6)]
        deadline = time.monotonic() + 6.5

        def chat(i: int) -> int:
            turns = 0
            while time.monotonic() < deadline:
                conversations[i].send(f"c{i} turn {turns}")
                turns += 1
            return turns

        results = run_threads(6, chat)
        assert all(isinstance(turns, int) and turns > 0 for turns in results.values()), results
        stats = emu.stats()
        assert stats["connections_closed_max_age"] == 0, "never cut by the server's limit"
        assert stats["connections_total"] >= 2, "connections were rotated"
        assert stats["responses_completed"] == sum(results.values())


# -- servers without lanes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["refuse", "ignore"])
def test_a_server_without_lanes_turns_them_off_with_a_warning_losing_nothing(
    client_for: ClientFactory, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Emulator(deltas=5, lanes=mode) as emu:
        client = client_for(emu, lanes=True, max_connections=3, max_retries=0)
        with caplog.at_level(logging.WARNING, logger="oaiws"):
            results = run_threads(
                8, lambda i: client.create_response(model="m", input=f"q{i}").output_text
            )
        for i, text in results.items():
            assert text == expected_text(f"q{i}", deltas=5)
        assert client.pool_stats()["lane_fallbacks"] >= 1
        warnings = [r for r in caplog.records if "lanes" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert client.create_response(model="m", input="later").status == "completed"
        assert emu.stats()["requests"] == 8 + 1 + (1 if mode == "refuse" else 0)


# -- fork --------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_no_lanes_and_leaves_the_parents_alone(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=4) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        conv = client.conversation(model="m", store=False)
        conv.send("before fork")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                text = client.create_response(model="m", input="child").output_text
                code = 0 if text == expected_text("child", deltas=4) else 2
            finally:
                os.write(write, str(code).encode())
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 10) == b"0" and status == 0
        os.close(read)
        reply = conv.send("after fork")
        assert client.pool_stats()["lane_hits"] == 1, "the parent's lane survived the child"
        assert reply.status == "completed"
        assert emu.stats()["handshakes"] == 2


# -- options -----------------------------------------------------------------------------


def test_lanes_refuse_a_stream_id_of_the_callers_and_http_transport() -> None:
    client = oaiws.Client(api_key="sk-test", base_url="http://127.0.0.1:9/v1", lanes=True)
    with pytest.raises(oaiws.ConfigurationError, match="names the lanes itself"):
        client.generate_response(model="m", input="x", stream_id="mine")
    client.close()
    with pytest.raises(oaiws.ConfigurationError, match="WebSocket mode"):
        oaiws.Client(api_key="sk-test", lanes=True, transport="http")
    with pytest.raises(oaiws.ConfigurationError, match="lanes must be True or False"):
        oaiws.Client(api_key="sk-test", lanes="yes")  # type: ignore[arg-type]


# -- a lying server, and a request that stops reading ----------------------------------


class _LyingLaneHandler(socketserver.StreamRequestHandler):
    """Confirms the probe's lane, then sends an event for a lane nobody asked for."""

    def handle(self) -> None:
        self.wfile.write(upgrade_answer(read_upgrade(self.rfile)))
        self.wfile.flush()
        self.request.recv(65536)  # the response.create (one small frame)
        created = {
            "type": "response.created",
            "stream_id": "oaiws-0",
            "response": {"id": "resp_1", "status": "in_progress", "output": []},
        }
        stray = {**created, "stream_id": "nobody-asked", "response": {"id": "resp_2"}}
        for event in (created, stray):
            self.wfile.write(text_frame(json.dumps(event).encode()))
        self.wfile.flush()
        self.request.recv(65536)  # until the client closes


def test_an_event_for_a_lane_that_serves_no_request_is_a_protocol_error(
    scripted_server: Callable[[Any], str],
) -> None:
    base_url = scripted_server(_LyingLaneHandler)
    with oaiws.Client(api_key="sk-test", base_url=base_url, lanes=True) as client:
        stream = client.generate_response(model="m", input="hi")
        assert next(iter(stream)).type == "response.created"
        with pytest.raises(oaiws.ProtocolError, match="nobody-asked"):
            stream.until_done()
        assert client.pool_stats()["lane_connections"] == 0


def test_a_request_that_stops_reading_fails_before_its_buffer_grows_without_bound(
    client_for: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mux, "MAX_BUFFERED_EVENTS", 50)
    with Emulator(deltas=300) as emu:
        client = client_for(emu, lanes=True, max_connections=2)
        # The first event alone, then (after a pause) the rest at once, unread.
        pause = json.dumps({"stall_after_first_event": 0.3})
        stream = client.generate_response(
            model="m", input="unread", metadata={"emulator_fault": pause}
        )
        next(iter(stream))
        wait_for(lambda: emu.stats()["responses_completed"] == 1, what="the response sent")
        with pytest.raises(oaiws.StreamInterruptedError, match="buffered 50 unread events"):
            stream.until_done()
        short = {"emulator_deltas": "5"}  # well within the lowered bound
        assert client.create_response(model="m", input="next", metadata=short).status == (
            "completed"
        )


def test_a_continuation_of_a_chain_of_ones_own_goes_to_the_lane_holding_it(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=3) as emu:
        client = client_for(emu, lanes=True, max_connections=2)
        for i in range(4):  # a few lanes in use on the connection
            client.create_response(model="m", input=f"filler {i}")
        first = client.create_response(model="m", input="start", store=False)
        for i in range(3):
            client.create_response(model="m", input=f"more filler {i}")
        follow = client.create_response(
            model="m", input="continue", previous_response_id=first.id, store=False
        )
        assert follow.status == "completed"
        assert emu.stats()["cache_hits"] == 1
        assert client.pool_stats()["lane_hits"] == 1


def test_requests_waiting_for_a_lane_are_served_in_arrival_order(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=4, delta_delay=0.02) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        client.create_response(model="m", input="warm")
        holders = [client.generate_response(model="m", input=f"hold {i}") for i in range(16)]
        for stream in holders:
            next(iter(stream))
        order: list[str] = []

        def waiter(name: str) -> None:
            stream = client.generate_response(model="m", input=name)
            next(iter(stream))
            order.append(name)
            stream.until_done()

        threads = []
        for count, name in enumerate(("first", "second", "third"), start=1):
            thread = threading.Thread(target=waiter, args=(name,))
            thread.start()
            threads.append(thread)
            wait_for(lambda n=count: client.pool_stats()["lanes_waiting"] == n, what="in line")
        for count, stream in enumerate(holders[:3], start=1):
            stream.until_done()  # one lane frees: the oldest waiter takes it
            wait_for(lambda n=count: len(order) == n, what="a waiter served")
        for thread in threads:
            thread.join(10)
        assert order == ["first", "second", "third"]
        for stream in holders[3:]:
            stream.until_done()


class _UnknownFieldHandler(socketserver.StreamRequestHandler):
    """A server without lanes that refuses the unknown field as servers usually do."""

    def handle(self) -> None:
        self.wfile.write(upgrade_answer(read_upgrade(self.rfile)))
        self.wfile.flush()
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                opcode, payload = read_client_frame(self.request)
                if opcode == 8:
                    return
                event = json.loads(payload)
                if "stream_id" in event:
                    answer: dict[str, Any] = {
                        "type": "error",
                        "status": 400,
                        "error": {
                            "type": "invalid_request_error",
                            "code": "unknown_parameter",
                            "message": "Unknown parameter: 'stream_id'.",
                            "param": "stream_id",
                        },
                    }
                else:
                    answer = {
                        "type": "response.completed",
                        "response": {"id": "resp_1", "status": "completed", "output": []},
                    }
                self.wfile.write(text_frame(json.dumps(answer).encode()))
                self.wfile.flush()


def test_a_server_refusing_stream_id_as_an_unknown_parameter_turns_lanes_off(
    scripted_server: Callable[[Any], str],
) -> None:
    base_url = scripted_server(_UnknownFieldHandler)
    with oaiws.Client(api_key="sk-test", base_url=base_url, lanes=True) as client:
        for _ in range(3):
            assert client.create_response(model="m", input="x").status == "completed"
        assert client.pool_stats()["lane_fallbacks"] == 1


def test_min_connections_opens_nothing_ahead_with_lanes(client_for: ClientFactory) -> None:
    with Emulator(deltas=2) as emu:
        client = client_for(emu, lanes=True, min_connections=2, idle_timeout=0.2)
        assert client.create_response(model="m", input="one").status == "completed"
        assert emu.stats()["handshakes"] == 1, "the default pool opened its own connections"


def test_busy_conversations_do_not_starve_other_requests(client_for: ClientFactory) -> None:
    turns = {"emulator_deltas": "5", "emulator_delta_delay_ms": "20"}
    with Emulator() as emu:
        client = client_for(emu, lanes=True, max_connections=1, pool_timeout=3.0)
        client.create_response(model="m", input="warm")
        stop = threading.Event()
        failures: list[BaseException] = []

        def chat(i: int) -> None:
            conv = client.conversation(model="m", store=False)
            try:
                while not stop.is_set():
                    conv.send(f"turn {i}", metadata=turns)
            except BaseException as exc:  # reported below
                failures.append(exc)

        chats = [threading.Thread(target=chat, args=(i,)) for i in range(MAX_ACTIVE)]
        for thread in chats:
            thread.start()
        wait_for(
            lambda: client.pool_stats()["lane_requests"] > 3 * MAX_ACTIVE,
            what="the conversations in full swing",
        )
        try:
            # Every lane's connection slot is taken by a conversation turn at once, again
            # and again: a plain request still gets its turn in the line.
            for _ in range(3):
                answer = client.create_response(model="m", input="plain", metadata=turns)
                assert answer.status == "completed"
        finally:
            stop.set()
            for thread in chats:
                thread.join(10)
        assert not failures, failures


def test_a_client_dropped_without_close_lets_its_lane_connections_go() -> None:
    with Emulator(deltas=2) as emu:
        client = oaiws.Client(api_key=emu.api_key, base_url=emu.base_url, lanes=True)
        assert client.create_response(model="m", input="once").status == "completed"
        readers = [t for t in threading.enumerate() if t.name.startswith("oaiws-lanes-")]
        assert readers and emu.stats()["connections_open"] == 1
        del client
        gc.collect()
        wait_for(lambda: emu.stats()["connections_open"] == 0, what="the connection closed")
        for reader in readers:
            reader.join(5)
            assert not reader.is_alive(), "a reader thread outlived its client"


def test_closing_the_client_lets_running_lanes_finish_then_closes(
    client_for: ClientFactory,
) -> None:
    with Emulator(deltas=10, delta_delay=0.01) as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        streams = [client.generate_response(model="m", input=f"s{i}") for i in range(3)]
        for stream in streams:
            next(iter(stream))
        client.close()
        with pytest.raises(oaiws.ClientClosedError):
            client.create_response(model="m", input="refused")
        for i, stream in enumerate(streams):
            assert stream.until_done().output_text == expected_text(f"s{i}", deltas=10)
        wait_for(lambda: emu.stats()["connections_open"] == 0, what="the connection closed")
        assert emu.stats()["responses_completed"] == 3


def test_a_quiet_lane_connection_is_kept_alive_with_pings(client_for: ClientFactory) -> None:
    with Emulator(deltas=2) as emu:
        client = client_for(emu, lanes=True, ping_interval=0.2)
        conv = client.conversation(model="m", store=False)
        conv.send("hello")  # its lane keeps the quiet connection open
        wait_for(lambda: emu.stats()["pings_received"] >= 2, what="keepalive pings")
        assert conv.send("still there?").status == "completed"
        assert client.pool_stats()["lane_hits"] == 1 and emu.stats()["handshakes"] == 1
