"""Lanes (stream_id): FIFO per lane, concurrent across lanes, and their limits."""

from __future__ import annotations

import pytest

from .conftest import final

SLOW = {"emulator_deltas": "4", "emulator_delta_delay_ms": "30"}


def test_lanes_run_concurrently_and_echo_their_stream_id(connect):
    client = connect()
    client.create(input="a", stream_id="lane-a", metadata=SLOW)
    client.create(input="b", stream_id="lane.b", metadata=SLOW)
    events, done = [], set()
    while len(done) < 2:
        event = client.event()
        events.append(event)
        if event["type"] == "response.completed":
            done.add(event["stream_id"])
    assert all(e["stream_id"] in ("lane-a", "lane.b") for e in events)
    lanes = [e["stream_id"] for e in events]
    first_done = next(i for i, e in enumerate(events) if e["type"] == "response.completed")
    assert {"lane-a", "lane.b"} <= set(lanes[:first_done]), "the second lane waited for the first"
    for lane in ("lane-a", "lane.b"):
        numbers = [e["sequence_number"] for e in events if e["stream_id"] == lane]
        assert numbers == list(range(len(numbers)))


def test_one_lane_is_fifo(connect):
    client = connect()
    client.create(input="1", stream_id="s", metadata=SLOW)
    client.create(input="2", stream_id="s")
    events = client.until_terminal() + client.until_terminal()
    types = [e["type"] for e in events]
    assert types.count("response.created") == 2
    # The second response starts only after the first completed.
    assert types.index("response.completed") < types.index("response.created", 1)


@pytest.mark.parametrize("name", ["", "has space", "x" * 257, "slash/", 5])
def test_bad_lane_names_are_refused(connect, name):
    client = connect()
    client.create(input="x", stream_id=name)
    error = client.event()
    assert error["type"] == "error" and error["error"]["code"] == "invalid_stream_id"
    assert "stream_id" not in error


def test_at_most_32_named_lanes(connect):
    client = connect()
    for index in range(32):
        assert final(client.run(input="x", stream_id=f"l{index}"))["status"] == "completed"
    error = client.run(input="x", stream_id="one-too-many")[-1]
    assert error["error"]["code"] == "websocket_stream_limit_reached"
    assert error["stream_id"] == "one-too-many"
    assert final(client.run(input="x", stream_id="l0"))["status"] == "completed"


def test_at_most_16_active_responses_further_creates_wait(connect):
    client = connect()
    slow = {"emulator_deltas": "2", "emulator_first_event_delay_ms": "300"}
    for index in range(16):
        client.create(input="x", stream_id=f"a{index}", metadata=slow)
    client.create(input="x", stream_id="a16")
    events = []
    while sum(e["type"] in ("response.completed", "error") for e in events) < 17:
        events.append(client.event())
    assert [e for e in events if e["type"] == "error"] == []
    order = [(e["type"], e["stream_id"]) for e in events]
    first_done = next(i for i, (kind, _) in enumerate(order) if kind == "response.completed")
    assert first_done < order.index(("response.created", "a16")), "a 17th response ran at once"
    assert ("response.completed", "a16") in order
