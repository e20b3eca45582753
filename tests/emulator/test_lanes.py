"""Lanes (stream_id): FIFO per lane, concurrent across lanes, and their limits."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from oaiws.errors import ConfigurationError
from oaiws.testing import Emulator, EmulatorOptions, EmulatorProcess
from oaiws.testing._options import add_arguments, options_from_namespace

from .conftest import KEY, Client, final

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


def test_a_slot_freed_goes_to_the_oldest_waiting_create(connect):
    # 16 responses active: x1 (quick) and 15 slow ones; x2 waits behind x1 on its lane, y1
    # (sent after x2) waits for a slot. When x1 ends, x2 is the older create: it goes first.
    client = connect()
    client.create(input="x1", stream_id="x", metadata={"emulator_first_event_delay_ms": "100"})
    client.create(input="x2", stream_id="x")
    slow = {"emulator_deltas": "1", "emulator_first_event_delay_ms": "400"}
    for index in range(15):
        client.create(input="o", stream_id=f"o{index}", metadata=slow)
    client.create(input="y1", stream_id="y")
    events = []
    while sum(e["type"] == "response.completed" for e in events) < 18:
        events.append(client.event())
    created = [e["stream_id"] for e in events if e["type"] == "response.created"]
    assert created.index("y") > created.index("x", created.index("x") + 1), created


def test_lanes_ignore_serves_one_response_at_a_time_and_echoes_no_stream_id(
    oaiws_emulator_factory,
):
    emu = oaiws_emulator_factory(lanes="ignore")
    client = Client(emu.websocket_url)
    try:
        client.create(input="a", stream_id="lane-a", metadata=SLOW)
        client.create(input="b", stream_id="lane-b", metadata=SLOW)
        events = client.until_terminal() + client.until_terminal()
        assert all("stream_id" not in e for e in events)
        types = [e["type"] for e in events]
        assert types.index("response.completed") < types.index("response.created", 1)
        assert next(e for e in events if e["type"] == "response.completed")["response"]["output"]
        # Any value is ignored, and there is no limit on distinct names.
        for name in ["bad id", 5, None, *(f"n{index}" for index in range(40))]:
            (_, done) = client.run(input="x", stream_id=name, generate=False)
            assert done["type"] == "response.completed" and "stream_id" not in done
    finally:
        client.close()


def test_lanes_refuse_answers_stream_id_with_a_connection_level_error(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(lanes="refuse")
    client = Client(emu.websocket_url)
    try:
        for name in ("lane", "bad id", None):
            client.create(input="x", stream_id=name)
            error = client.event()
            assert error["type"] == "error" and error["status"] == 400
            assert (error["error"]["code"], error["error"]["param"]) == (
                "invalid_stream_id",
                "stream_id",
            )
            assert "stream_id" not in error
        assert final(client.run(input="x"))["status"] == "completed"
        stats = emu.stats()
        assert (stats["requests"], stats["errors_sent"]) == (4, 3)
    finally:
        client.close()


def test_lane_modes_are_validated_and_reach_the_cli_and_a_child_process():
    with pytest.raises(ConfigurationError, match="lanes"):
        EmulatorOptions(lanes="off")
    with pytest.raises(ConfigurationError, match="lanes"):
        Emulator(lanes="ON")
    assert EmulatorOptions(lanes="ignore").to_cli_args() == ["--lanes", "ignore"]
    assert EmulatorOptions().to_cli_args() == []
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_namespace(parser.parse_args(["--lanes", "refuse"]), KEY).lanes == "refuse"
    assert options_from_namespace(parser.parse_args([]), KEY).lanes == "on"
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        parser.parse_args(["--lanes", "maybe"])
    process = EmulatorProcess(lanes="refuse").start()
    try:
        assert process.options.lanes == "refuse"
        client = Client(process.websocket_url)
        client.create(input="x", stream_id="lane")
        assert client.event()["error"]["code"] == "invalid_stream_id"
        client.close()
    finally:
        process.stop()
