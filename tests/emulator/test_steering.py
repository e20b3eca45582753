"""response.steer: accepted, pending and failed steers, the steered response and its successor.

A response is held in flight by its delays, which an accepted steer cuts short (the emulator
wakes at once). A successor inherits those delays, so most tests stop reading at the
successor's ``response.created``; the one that reads a successor to its end keeps them short.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from oaiws.testing import expected_text

from .conftest import Client, final, text_of

pytestmark = pytest.mark.timeout(30)

# Deltas a little apart: a steer sent after the first arrives long before the last, and the
# response stops at the next boundary.
STREAMING = {"emulator_deltas": "10", "emulator_delta_delay_ms": "50"}
# Held before its first delta for ten seconds, which an accepted steer ends at once (for
# tests that never read a successor to its end).
HELD = {"emulator_delta_delay_ms": "10000"}
# All deltas at once, then held before the end of the output until a steer arrives.
FINISHING = {"emulator_deltas": "2", "emulator_finish_delay_ms": "10000"}
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def steer(client: Client, response_id: str, input: Any = "turn left", **extra: Any) -> None:
    client.send(
        {"type": "response.steer", "previous_response_id": response_id, "input": input, **extra}
    )


def read_until(client: Client, kind: str, count: int = 1) -> list[dict[str, Any]]:
    """Events up to and including the ``count``-th of type ``kind``."""
    events: list[dict[str, Any]] = []
    while sum(e["type"] == kind for e in events) < count:
        events.append(client.event())
    return events


def started(client: Client, **fields: Any) -> str:
    """Create a response and read its ``response.created``: the id a steer can name."""
    client.create(**fields)
    event = client.event()
    assert event["type"] == "response.created", event
    return str(event["response"]["id"])


def split(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the steered response's events, its successor's), cut at the successor's created."""
    second = next(i for i, e in enumerate(events) if e["type"] == "response.created" and i > 0)
    return events[:second], events[second:]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def test_an_accepted_steer_cuts_the_response_and_a_successor_carries_on(connect, emu):
    client = connect()
    client.create(input="hello", instructions="Be brief.", stream_id="lane", metadata=STREAMING)
    head = read_until(client, "response.output_text.delta")
    response_id = head[0]["response"]["id"]
    steer(client, response_id, "turn left")
    steered, successor = split(head + read_until(client, "response.completed"))

    # The steered response: its own numbering, the accepted steer interleaved into it.
    assert [e["sequence_number"] for e in steered] == list(range(len(steered)))
    assert all(e["stream_id"] == "lane" for e in steered + successor)
    (accepted,) = [e for e in steered if e["type"].startswith("response.steer")]
    assert accepted["type"] == "response.steer.accepted"
    assert accepted["steer"]["previous_response_id"] == response_id
    assert accepted["steer"]["id"].startswith("steer_")
    tail = [e["type"] for e in steered if e["type"] != "response.steer.accepted"][-4:]
    assert tail == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    cut = final(steered)
    assert cut["id"] == response_id and cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "steered"}
    partial = text_of(steered)
    assert 1 <= cut["usage"]["output_tokens"] < 10
    assert cut["usage"]["output_tokens"] == len(
        [e for e in steered if e["type"] == "response.output_text.delta"]
    )
    (item,) = cut["output"]
    assert item["content"][0]["text"] == partial and partial

    # The successor: a new response continuing the steered one, with everything inherited.
    assert [e["sequence_number"] for e in successor] == list(range(len(successor)))
    assert successor[0]["type"] == "response.created"
    done = final(successor)
    assert done["status"] == "completed" and done["id"] != response_id
    assert done["id"].startswith("resp_")
    assert done["previous_response_id"] == response_id
    assert (done["instructions"], done["metadata"]) == ("Be brief.", STREAMING)
    history = [user("hello"), item]
    text = expected_text("turn left", instructions="Be brief.", history=history, deltas=10)
    assert text_of(successor) == done["output"][0]["content"][0]["text"] == text

    # A replay of the whole transcript gives the same text on another connection...
    replay = connect().run(
        input=[user("hello"), item, user("turn left")],
        instructions="Be brief.",
        metadata={"emulator_deltas": "10"},
    )
    assert text_of(replay) == text
    # ... and the successor is the lane's cached latest.
    hits = emu.stats()["cache_hits"]
    nxt = client.run(input="more", previous_response_id=done["id"], stream_id="lane")
    assert final(nxt)["status"] == "completed"
    assert emu.stats()["cache_hits"] == hits + 1


def test_a_steer_during_the_sleep_before_a_delta_is_served_at_once(connect):
    client = connect()
    response_id = started(client, input="hello", metadata=HELD)
    began = time.monotonic()
    steer(
        client, response_id, [{"role": "user", "content": [{"type": "input_text", "text": "go"}]}]
    )
    *steered, successor = read_until(client, "response.created")  # the successor's
    assert time.monotonic() - began < 5, "the steer waited for the ten-second delay"
    assert all("stream_id" not in e for e in [*steered, successor])  # no lane, no stream_id
    cut = final(steered)
    assert cut["incomplete_details"] == {"reason": "steered"} and cut["usage"]["output_tokens"] == 0
    assert cut["output"][0]["content"][0]["text"] == ""
    assert successor["sequence_number"] == 0
    assert successor["response"]["previous_response_id"] == response_id


def test_a_steer_after_the_last_delta_lets_the_response_complete_then_a_successor_follows(
    connect,
):
    client = connect()
    client.create(input="hello", stream_id="s", metadata=FINISHING)
    head = read_until(client, "response.output_text.delta", 2)
    response_id = head[0]["response"]["id"]
    steer(client, response_id, "and then?")
    # The successor inherits the hold before the end of its output: read it to its created.
    first, successor = split(head + read_until(client, "response.created"))
    types = [e["type"] for e in first]
    assert types[-5:] == [
        "response.steer.accepted",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in first] == list(range(len(first)))
    whole = final(first)
    assert whole["status"] == "completed" and whole["usage"]["output_tokens"] == 2
    assert whole["output"][0]["content"][0]["text"] == expected_text("hello", deltas=2)
    (created,) = successor
    assert created["response"]["previous_response_id"] == response_id
    assert (created["stream_id"], created["sequence_number"]) == ("s", 0)


def test_a_response_with_a_tool_call_completes_and_its_steers_wait_for_the_tool_output(
    connect, emu
):
    client = connect()
    response_id = started(
        client, input="please lookup the weather", tools=[LOOKUP], stream_id="t", metadata=FINISHING
    )
    steer(client, response_id, "in Celsius")
    events = read_until(client, "response.steer.pending")
    done = next(e for e in events if e["type"] == "response.completed")["response"]
    (call,) = done["output"]
    assert call["type"] == "function_call" and done["status"] == "completed"
    accepted, pending = (e for e in events if e["type"].startswith("response.steer"))
    assert events[-1] is pending and accepted["type"] == "response.steer.accepted"
    assert pending["steer"] == accepted["steer"]
    assert pending["reason"] == "waiting_for_required_input"
    assert pending["required_input"] == [
        {"type": "function_call_output", "call_id": call["call_id"], "name": "lookup"}
    ]
    assert pending["stream_id"] == "t"
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(1, len(events) + 1))  # created was 0
    # No successor runs by itself: the next event is the answer to the next create.
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    answered = client.run(input=[output], previous_response_id=response_id, stream_id="t")
    assert answered[0]["type"] == "response.created"
    history = [user("please lookup the weather"), call]
    assert text_of(answered) == expected_text([user("in Celsius"), output], history=history), (
        "the queued steer input was not prepended"
    )
    # Consumed: a second continuation of the same response gets only its own input.
    again = client.run(input=[output], previous_response_id=response_id, stream_id="t")
    assert text_of(again) == expected_text([output], history=history)
    assert emu.stats()["successors"] == 0


def test_pending_input_waits_for_a_create_on_the_same_lane_in_submission_order(connect):
    client = connect()
    response_id = started(client, input="lookup", tools=[LOOKUP], stream_id="t", metadata=FINISHING)
    parts = [{"type": "input_text", "text": "in "}, {"type": "input_text", "text": "Celsius"}]
    steer(client, response_id, [{"role": "user", "content": parts}, user("and wind")])
    call = final(read_until(client, "response.completed"))["output"][0]
    read_until(client, "response.steer.pending")
    steer(client, response_id, [{"type": "message", "role": "user", "content": "tomorrow"}])
    read_until(client, "response.steer.pending")
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
    history = [user("lookup"), call]
    other_lane = client.run(input=[output], previous_response_id=response_id, stream_id="u")
    assert text_of(other_lane) == expected_text([output], history=history)
    same_lane = client.run(input=[output], previous_response_id=response_id, stream_id="t")
    queued = [user("in Celsius"), user("and wind"), user("tomorrow")]
    assert text_of(same_lane) == expected_text([*queued, output], history=history)


def failed(event: dict[str, Any], code: str) -> dict[str, Any]:
    assert event["type"] == "response.steer.failed", event
    assert event["error"]["code"] == code, event
    assert event["error"]["type"] == "invalid_request_error" and event["error"]["message"]
    return event


def test_an_unknown_response_is_not_found(connect):
    client = connect()
    client.run(input="x", stream_id="a")
    steer(client, "resp_unknown", "hi")
    event = failed(client.event(), "response_not_found")
    assert event["sequence_number"] == 0 and "stream_id" not in event
    assert event["steer"]["previous_response_id"] == "resp_unknown"
    assert event["steer"]["input"] == "hi" and event["steer"]["id"].startswith("steer_")


def test_a_response_of_another_connection_is_not_found(connect):
    response_id = final(connect().run(input="x"))["id"]
    client = connect()
    steer(client, response_id)
    failed(client.event(), "response_not_found")


@pytest.mark.parametrize(
    "bad",
    [
        {"input": ""},
        {"input": []},
        {"input": 42},
        {"input": None},
        {"input": [{"role": "assistant", "content": "x"}]},
        {"input": [{"role": "user", "content": "x", "id": "msg_1"}]},
        {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
        {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
        {"input": [{"role": "user", "content": []}]},
        {"input": ["text"]},
        {"stream_id": "lane"},
        {"metadata": {}},
    ],
)
def test_invalid_steers_fail_in_the_target_sequence(connect, bad):
    client = connect()
    events = client.run(input="x", stream_id="lane")
    response_id = final(events)["id"]
    payload = {"type": "response.steer", "previous_response_id": response_id, "input": "ok"}
    payload.update(bad)
    client.send(payload)
    event = failed(client.event(), "invalid_input")
    assert event["stream_id"] == "lane"
    assert event["sequence_number"] == len(events)  # continues the target's numbering
    assert event["steer"]["input"] == payload["input"]
    assert final(client.run(input="still usable"))["status"] == "completed"


def test_a_steer_without_input_fails_without_echoing_one(connect):
    client = connect()
    response_id = final(client.run(input="x"))["id"]
    client.send({"type": "response.steer", "previous_response_id": response_id})
    event = failed(client.event(), "invalid_input")
    assert "input" not in event["steer"]


@pytest.mark.parametrize("previous", [None, "", 5])
def test_a_steer_that_names_no_response_is_a_plain_error(connect, emu, previous):
    client = connect()
    payload: dict[str, Any] = {"type": "response.steer", "input": "x", "stream_id": "lane"}
    if previous is not None:
        payload["previous_response_id"] = previous
    client.send(payload)
    error = client.event()
    assert error["type"] == "error" and error["status"] == 400 and "stream_id" not in error
    assert error["error"]["param"] == "previous_response_id"
    assert error["error"]["type"] == "invalid_request_error"
    assert emu.stats()["errors_sent"] == 1 and emu.stats()["steers_failed"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        {
            "metadata": {
                "emulator_steering": "unsupported",
                "emulator_deltas": "3",
                "emulator_delta_delay_ms": "30",
            }
        },
        {"model": "gpt-test@steering=unsupported,deltas=3,delta_delay_ms=30"},
    ],
)
def test_steering_not_supported_leaves_the_response_running(connect, fields):
    client = connect()
    response_id = started(client, input="x", **fields)
    steer(client, response_id)
    events = read_until(client, "response.steer.failed")
    if events[-2]["type"] != "response.completed":
        events += read_until(client, "response.completed")
    event = failed(
        next(e for e in events if e["type"].startswith("response.steer")), "steering_not_supported"
    )
    assert event["steer"]["id"].startswith("steer_")
    assert final(events)["status"] == "completed" and len(text_of(events).split()) == 3
    steer(client, response_id)
    failed(client.event(), "steering_not_supported")


def test_an_unknown_steering_control_is_refused(connect):
    client = connect()
    error = client.run(input="x", metadata={"emulator_steering": "sometimes"})[-1]
    assert error["type"] == "error" and error["error"]["param"] == "metadata"


def test_at_most_four_steers_wait_per_response(connect, emu):
    client = connect()
    response_id = started(client, input="lookup", tools=[LOOKUP], metadata=FINISHING)
    steer(client, response_id, "one")
    read_until(client, "response.steer.pending")
    for text in ("two", "three", "four"):
        steer(client, response_id, text)
        assert client.event()["type"] == "response.steer.accepted"
        assert client.event()["type"] == "response.steer.pending"
    steer(client, response_id, "five")
    event = failed(client.event(), "too_many_pending_steers")
    assert event["steer"]["input"] == "five"
    stats = emu.stats()
    assert (stats["steers_received"], stats["steers_accepted"], stats["steers_pending"]) == (
        5,
        4,
        4,
    )
    assert stats["steers_failed"] == 1


def test_a_completed_response_is_already_completed(connect):
    client = connect()
    response_id = final(client.run(input="x", stream_id="a"))["id"]
    steer(client, response_id)
    assert failed(client.event(), "response_already_completed")["stream_id"] == "a"


def test_a_failed_response_is_not_active(connect):
    client = connect()
    response_id = final(client.run(input="x", metadata={"emulator_outcome": "failed"}))["id"]
    steer(client, response_id)
    failed(client.event(), "response_not_active")


def test_a_steered_response_is_not_active_once_its_successor_started(connect):
    client = connect()
    response_id = started(client, input="x", metadata=HELD)
    steer(client, response_id)
    read_until(client, "response.created")  # the successor's: the commit point
    steer(client, response_id, "late")
    events = read_until(client, "response.steer.failed")
    failed(events[-1], "response_not_active")


def test_a_successor_that_cannot_be_created_returns_the_input(connect, emu):
    client = connect()
    metadata = {**HELD, "emulator_steering": "successor_fails"}
    response_id = started(client, input="x", stream_id="f", metadata=metadata)
    steer(client, response_id, "turn")
    events = read_until(client, "response.steer.failed")
    accepted = next(e for e in events if e["type"] == "response.steer.accepted")
    incomplete = next(e for e in events if e["type"] == "response.incomplete")
    assert incomplete["response"]["incomplete_details"] == {"reason": "steered"}
    event = failed(events[-1], "successor_creation_failed")
    assert event["steer"] == {**accepted["steer"], "input": "turn"}
    assert event["stream_id"] == "f"
    assert event["sequence_number"] == incomplete["sequence_number"] + 1
    assert all(e["type"] != "response.created" for e in events)
    assert emu.stats()["successors"] == 0
    # The lane goes on with the next create; the steered response takes no more steers.
    assert final(client.run(input="next", stream_id="f"))["status"] == "completed"
    steer(client, response_id)
    failed(client.event(), "response_not_active")


def test_steering_counts_in_the_stats(connect, emu):
    client = connect()
    response_id = started(client, input="x", metadata=HELD)
    steer(client, response_id)
    read_until(client, "response.created")  # the successor's
    steer(client, "resp_nope")
    read_until(client, "response.steer.failed")
    stats = emu.stats()
    assert stats["requests"] == 1, "a successor is not a request"
    assert (stats["successors"], stats["responses_incomplete"]) == (1, 1)
    assert (stats["steers_received"], stats["steers_accepted"], stats["steers_failed"]) == (2, 1, 1)
    assert stats["steers_pending"] == 0


def test_steers_on_two_lanes_go_to_their_own_responses(connect):
    client = connect()
    client.create(input="left", stream_id="left", metadata=HELD)
    client.create(input="right", stream_id="right", metadata=HELD)
    ids: dict[str, str] = {}
    while len(ids) < 2:
        event = client.event()
        if event["type"] == "response.created":
            ids[event["stream_id"]] = event["response"]["id"]
    steer(client, ids["right"], "R")
    steer(client, ids["left"], "L")
    events: list[dict[str, Any]] = []
    while sum(e["type"] == "response.created" for e in events) < 2:  # both successors
        events.append(client.event())
    for lane in ("left", "right"):
        mine = [e for e in events if e["stream_id"] == lane]
        kinds = [e["type"] for e in mine]
        mine = mine[: kinds.index("response.created") + 1]  # up to its successor's created
        kinds = [e["type"] for e in mine]
        assert kinds.index("response.steer.accepted") < kinds.index("response.incomplete")
        assert kinds[-2:] == ["response.incomplete", "response.created"]
        (accepted,) = [e for e in mine if e["type"] == "response.steer.accepted"]
        assert accepted["steer"]["previous_response_id"] == ids[lane]
        assert final(mine[:-1])["id"] == ids[lane]
        assert mine[-1]["response"]["previous_response_id"] == ids[lane]
    assert not [e for e in events if e["type"] in {"error", "response.failed"}]
