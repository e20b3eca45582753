"""Function calls: the documented trigger, arguments from the schema, the loop back."""

from __future__ import annotations

import json

from .conftest import final, text_of

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 2},
            "detailed": {"type": "boolean"},
        },
        "required": ["city", "unit", "days", "detailed"],
    },
}
CLOCK = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


def test_naming_a_tool_in_the_user_message_calls_it(connect):
    events = connect().run(input="Use get_weather for Paris", tools=[CLOCK, WEATHER])
    types = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in types
    assert "response.output_text.delta" not in types
    item = final(events)["output"][0]
    assert item["type"] == "function_call" and item["name"] == "get_weather"
    assert item["call_id"].startswith("call_") and item["status"] == "completed"
    arguments = json.loads(item["arguments"])
    assert arguments == {"city": "example city", "unit": "celsius", "days": 2, "detailed": True}
    deltas = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert deltas == done["arguments"] == item["arguments"]


def test_no_tool_is_called_unless_named_or_required(connect):
    client = connect()
    assert (
        final(client.run(input="What is the weather?", tools=[WEATHER]))["output"][0]["type"]
        == "message"
    )
    required = final(client.run(input="anything", tools=[CLOCK, WEATHER], tool_choice="required"))
    assert required["output"][0]["name"] == "get_time"
    named = final(
        client.run(
            input="anything",
            tools=[CLOCK, WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
        )
    )
    assert named["output"][0]["name"] == "get_weather"
    none = final(client.run(input="call get_weather", tools=[WEATHER], tool_choice="none"))
    assert none["output"][0]["type"] == "message"


def test_the_next_turn_answers_from_the_function_output(connect):
    client = connect()
    first = final(client.run(input="call get_weather now", tools=[WEATHER]))
    call = first["output"][0]
    events = client.run(
        previous_response_id=first["id"],
        tools=[WEATHER],
        input=[
            {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21C"}
        ],
    )
    assert final(events)["status"] == "completed"
    assert "sunny, 21C" in text_of(events)


def test_a_tool_choice_naming_an_unknown_tool_is_refused(connect):
    events = connect().run(
        input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}
    )
    assert events[-1]["type"] == "error" and events[-1]["error"]["param"] == "tool_choice"
