"""Steering and lanes as the official ``openai`` SDK sees them.

Every steer event must parse into the SDK's own ``ResponseSteer*`` class, validate strictly and
round-trip (see openai_support); the steered response and its successor must be valid SDK
``Response`` objects; and the SDK's lane session must route concurrent lanes and their steers.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from .conftest import OPENAI_MISSING

pytest.importorskip("openai.lib.responses_websocket", reason=OPENAI_MISSING)

from openai.lib.responses_websocket import ResponsesWebSocketLimits, ResponsesWebSocketSession
from openai.types.responses import (
    Response,
    ResponseSteerAcceptedEvent,
    ResponseSteerFailedEvent,
    ResponseSteerPendingEvent,
)
from openai.types.responses.responses_server_event import ResponseWsError

from oaiws.testing import expected_text

from .openai_support import MODEL, check_response, connect, receive, strict, turn

pytestmark = pytest.mark.timeout(30)

# Held before its first delta for ten seconds, which an accepted steer ends at once. The
# successor inherits it, so the tests stop at the successor's response.created.
HELD = {"emulator_delta_delay_ms": "10000"}
FINISHING = {"emulator_deltas": "2", "emulator_finish_delay_ms": "10000"}
SLOW = {"emulator_deltas": "6", "emulator_delta_delay_ms": "15"}
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def emu(oaiws_emulator_factory):
    return oaiws_emulator_factory()


def until(conn: Any, kind: str) -> list[tuple[dict[str, Any], Any]]:
    """(raw, parsed) events up to and including the first of type ``kind``, each checked."""
    events = []
    while True:
        raw, parsed = receive(conn)
        events.append((raw, parsed))
        if raw["type"] == kind:
            return events


def test_accepted_steer_steered_response_and_successor_are_sdk_types(emu):
    with connect(emu) as conn:
        conn.response.create(model=MODEL, input="hello", stream_id="lane", metadata=HELD)
        (_, created), *_ = until(conn, "response.created")
        conn.response.steer(input="turn left", previous_response_id=created.response.id)
        events = until(conn, "response.incomplete")
        (successor_raw, successor), *_ = until(conn, "response.created")
    (accepted_raw, accepted) = next(e for e in events if e[0]["type"].startswith("response.steer"))
    assert isinstance(accepted, ResponseSteerAcceptedEvent)
    strict(ResponseSteerAcceptedEvent, accepted_raw)
    assert accepted.stream_id == "lane"
    assert accepted.steer.previous_response_id == created.response.id
    steered = events[-1][1].response
    assert isinstance(steered, Response) and steered.status == "incomplete"
    assert steered.incomplete_details is not None and steered.incomplete_details.reason == "steered"
    check_response(successor_raw["response"])
    assert successor.sequence_number == 0 and successor.stream_id == "lane"
    assert successor.response.previous_response_id == steered.id != successor.response.id
    assert successor.response.metadata == HELD


def test_pending_and_failed_steers_are_sdk_types(emu):
    with connect(emu) as conn:
        conn.response.create(
            model=MODEL, input="lookup", tools=[LOOKUP], stream_id="t", metadata=FINISHING
        )
        (_, created), *_ = until(conn, "response.created")
        response_id = created.response.id
        conn.response.steer(
            input=[{"type": "message", "role": "user", "content": "in Celsius"}],
            previous_response_id=response_id,
        )
        events = until(conn, "response.steer.pending")
        pending_raw, pending = events[-1]
        assert isinstance(pending, ResponseSteerPendingEvent)
        strict(ResponseSteerPendingEvent, pending_raw)
        call = next(e for e in events if e[0]["type"] == "response.completed")[1].response.output[0]
        (stub,) = pending.required_input
        assert (stub.type, stub.call_id, stub.name) == (
            "function_call_output",
            call.call_id,
            "lookup",
        )
        assert pending.stream_id == "t" and pending.reason == "waiting_for_required_input"

        # Failed before acceptance: a field a steer may not carry; the input comes back.
        conn.send(
            {
                "type": "response.steer",
                "previous_response_id": response_id,
                "input": "x",
                "stream_id": "t",
            }
        )
        (failed_raw, failed) = receive(conn)
        assert isinstance(failed, ResponseSteerFailedEvent)
        strict(ResponseSteerFailedEvent, failed_raw)
        assert (failed.error.code, failed.steer.input, failed.stream_id) == (
            "invalid_input",
            "x",
            "t",
        )

        for _ in range(3):
            conn.response.steer(input="more", previous_response_id=response_id)
            assert isinstance(receive(conn)[1], ResponseSteerAcceptedEvent)
            assert isinstance(receive(conn)[1], ResponseSteerPendingEvent)
        conn.response.steer(input="too many", previous_response_id=response_id)
        (raw, too_many) = receive(conn)
        strict(ResponseSteerFailedEvent, raw)
        assert too_many.error.code == "too_many_pending_steers"

        done = turn(conn, input="x", stream_id="t")[-1].response
        conn.response.steer(input="late", previous_response_id=done.id)
        (raw, late) = receive(conn)
        strict(ResponseSteerFailedEvent, raw)
        assert late.error.code == "response_already_completed" and late.stream_id == "t"
        conn.response.steer(input="where?", previous_response_id="resp_nowhere")
        (raw, lost) = receive(conn)
        strict(ResponseSteerFailedEvent, raw)
        assert lost.error.code == "response_not_found" and lost.stream_id is None


def test_successor_creation_failed_returns_the_accepted_input(emu):
    metadata = {**HELD, "emulator_steering": "successor_fails"}
    with connect(emu) as conn:
        conn.response.create(model=MODEL, input="x", metadata=metadata)
        (_, created), *_ = until(conn, "response.created")
        conn.response.steer(input="turn", previous_response_id=created.response.id)
        events = until(conn, "response.steer.failed")
    accepted = next(p for r, p in events if r["type"] == "response.steer.accepted")
    raw, failed = events[-1]
    strict(ResponseSteerFailedEvent, raw)
    assert failed.error.code == "successor_creation_failed"
    assert failed.steer.id == accepted.steer.id and failed.steer.input == "turn"


def test_the_sdk_lane_session_runs_concurrent_lanes_and_routes_their_steers(emu):
    limits = ResponsesWebSocketLimits(
        max_lanes=4,
        max_events_per_lane=128,
        max_events=512,
        max_bytes_per_lane=1 << 20,
        max_bytes=1 << 22,
    )
    results: dict[str, Any] = {}
    failures: list[BaseException] = []

    def plain(lane: Any, name: str) -> None:
        lane.send({"type": "response.create", "model": MODEL, "input": name, "metadata": SLOW})
        results[name] = [lane.get_final_response(timeout=10)]

    def steered(lane: Any, name: str) -> None:
        lane.send({"type": "response.create", "model": MODEL, "input": name, "metadata": HELD})
        created = lane.recv(timeout=10)
        assert created.type == "response.created" and created.stream_id == name
        lane.send(
            {
                "type": "response.steer",
                "previous_response_id": created.response.id,
                "input": f"steer {name}",
            }
        )
        seen = []
        while not seen or seen[-1].type != "response.steer.accepted":
            seen.append(lane.recv(timeout=10))
        assert isinstance(seen[-1], ResponseSteerAcceptedEvent) and seen[-1].stream_id == name
        cut = lane.get_final_response(timeout=10)
        successor = lane.recv(timeout=10)
        while successor.type != "response.created":
            successor = lane.recv(timeout=10)
        results[name] = [cut, successor]

    def run(target: Any, lane: Any, name: str) -> None:
        try:
            target(lane, name)
        except BaseException as exc:
            failures.append(exc)

    with connect(emu) as conn, ResponsesWebSocketSession(conn, limits=limits) as session:
        work = [(plain, "left"), (steered, "middle"), (steered, "right")]
        threads = [
            threading.Thread(target=run, args=(target, session.lane(name), name))
            for target, name in work
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        with pytest.raises(TimeoutError):  # nothing unrouted reached the default lane
            session.default.recv(timeout=0.05)
    assert failures == []
    (left,) = results["left"]
    assert left.status == "completed" and left.output_text == expected_text("left", deltas=6)
    for name in ("middle", "right"):
        cut, successor = results[name]
        assert cut.status == "incomplete" and cut.incomplete_details.reason == "steered"
        assert cut.metadata == HELD and cut.usage.output_tokens == 0
        assert successor.stream_id == name
        assert successor.response.previous_response_id == cut.id
    assert emu.stats()["successors"] == 2


def test_a_server_that_refuses_lanes_errors_without_a_stream_id(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(lanes="refuse")
    with connect(emu) as conn:
        (error,) = turn(conn, input="x", stream_id="lane")
        assert isinstance(error, ResponseWsError) and error.stream_id is None
        assert (error.error.code, error.error.param, error.status) == (
            "invalid_stream_id",
            "stream_id",
            400,
        )
        assert turn(conn, input="x")[-1].response.status == "completed"


def test_a_server_that_ignores_lanes_echoes_no_stream_id(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(lanes="ignore")
    with connect(emu) as conn:
        events = turn(conn, input="x", stream_id="lane")
    assert all(e.stream_id is None for e in events)
    assert events[-1].response.output_text == expected_text("x")
