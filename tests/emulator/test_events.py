"""The event sequence of a text turn and the shapes the official SDK's types parse."""

from __future__ import annotations

import time

import pytest

from oaiws.testing import expected_text

from .conftest import OPENAI_MISSING, TEXT_TURN, final, text_of


def test_text_turn_has_the_full_event_sequence(connect):
    events = connect().run(input="hello", instructions="Be brief.", metadata={"k": "v"})
    assert [e["type"] for e in events] == TEXT_TURN
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    response = final(events)
    assert response["id"].startswith("resp_") and response["status"] == "completed"
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["id"] == response["id"]
    item = response["output"][0]
    assert item["id"].startswith("msg_") and item["role"] == "assistant"
    assert item["content"][0]["text"] == text_of(events) == events[-4]["text"]
    assert {e["item_id"] for e in events if "item_id" in e} == {item["id"]}
    usage = response["usage"]
    assert usage["output_tokens"] == 8
    assert usage["total_tokens"] == usage["input_tokens"] + 8
    assert response["instructions"] == "Be brief." and response["metadata"] == {"k": "v"}
    assert response["model"] == "gpt-test" and response["store"] is True


def test_sequence_numbers_restart_for_each_response(connect):
    client = connect()
    first, second = client.run(input="a"), client.run(input="b")
    assert first[0]["sequence_number"] == second[0]["sequence_number"] == 0


def test_events_and_responses_parse_as_the_official_sdk_types(connect):
    pydantic = pytest.importorskip("pydantic", reason=OPENAI_MISSING)
    sdk_types = pytest.importorskip("openai.types.responses", reason=OPENAI_MISSING)
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]
    events = connect().run(input="please lookup this", tools=tools)
    events += connect().run(input="hi", max_output_tokens=2)
    adapter = pydantic.TypeAdapter(sdk_types.ResponseStreamEvent)
    for event in events:
        parsed = adapter.validate_python(event)
        assert parsed.type == event["type"]
    sdk_types.Response.model_validate(final(events))


def test_text_is_the_documented_deterministic_function(connect):
    events = connect().run(input="hello", instructions="sys")
    assert text_of(events) == expected_text("hello", instructions="sys")
    assert text_of(connect().run(input="hello")) != text_of(events)


@pytest.mark.parametrize("how", ["metadata", "model"])
def test_per_request_delta_count(connect, how):
    fields = (
        {"metadata": {"emulator_deltas": "3"}}
        if how == "metadata"
        else {"model": "gpt-test@deltas=3"}
    )
    events = connect().run(input="x", **fields)
    assert sum(e["type"] == "response.output_text.delta" for e in events) == 3
    assert final(events)["usage"]["output_tokens"] == 3


def test_delta_delay_and_first_event_delay_pace_the_response(connect):
    start = time.monotonic()
    connect().run(
        input="x",
        metadata={
            "emulator_deltas": "4",
            "emulator_delta_delay_ms": "50",
            "emulator_first_event_delay_ms": "100",
        },
    )
    assert time.monotonic() - start >= 0.3


def test_model_can_come_from_the_url_query(emu, connect):
    client = connect(emu.websocket_url + "?model=from-query")
    client.send({"type": "response.create", "input": "x"})
    events = client.until_terminal()
    assert final(events)["model"] == "from-query"
