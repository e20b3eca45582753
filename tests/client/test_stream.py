"""Streaming over real sockets against the emulator: events, the finished Response, reuse."""

from __future__ import annotations

from typing import Any

from waiting import wait_for

import oaiws


def text_of(events: Any) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_stream_yields_events_and_the_finished_response(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    stream = client.generate_response(model="gpt-5.5", input="Hello")
    assert oaiws_emulator.stats()["handshakes"] == 0  # nothing is sent before the first next()
    assert stream.response is None
    events = list(stream)
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert all(isinstance(event, oaiws.Event) for event in events)
    response = stream.response
    assert isinstance(response, oaiws.Response)
    assert response.status == "completed"
    assert response.id is not None and response.id.startswith("resp")
    assert response.output_text == text_of(events) != ""
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.error is None
    assert response.to_dict()["id"] == response.id
    delta = next(e for e in events if e.type == "response.output_text.delta")
    assert delta.delta == delta["delta"]


def test_context_manager_and_connection_reuse(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    for turn in range(3):
        with client.generate_response(model="gpt-5.5", input=f"turn {turn}") as stream:
            assert text_of(stream) != ""
        assert stream.response is not None
    # The emulator counts a response once its last event is out, after the client has it.
    wait_for(lambda: oaiws_emulator.stats()["responses_completed"] == 3, what="3 responses")
    stats = oaiws_emulator.stats()
    assert (stats["handshakes"], stats["requests"]) == (1, 3)
    pool = client.pool_stats()
    assert (pool["connections_open"], pool["connections_idle"], pool["connections_in_use"]) == (
        1,
        1,
        0,
    )


def test_create_response(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    response = client.create_response(model="gpt-5.5", input="Hello", instructions="Be brief.")
    assert response.status == "completed"
    assert response.output_text
    assert response.output[0].type == "message"


def test_failed_and_incomplete_are_not_exceptions(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    events = list(
        client.generate_response(
            model="gpt-5.5", input="x", metadata={"emulator_outcome": "failed"}
        )
    )
    assert events[-1].type == "response.failed"
    failed = client.create_response(
        model="gpt-5.5", input="x", metadata={"emulator_outcome": "failed"}
    )
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code
    incomplete = client.create_response(
        model="gpt-5.5", input="x", metadata={"emulator_outcome": "incomplete"}
    )
    assert incomplete.status == "incomplete"
    assert incomplete.incomplete_details is not None
    assert incomplete.incomplete_details.reason == "max_output_tokens"
    # Neither spoiled the connection: all went over one handshake.
    assert oaiws_emulator.stats()["handshakes"] == 1


def test_function_calls(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    response = client.create_response(
        model="gpt-5.5", input="Call get_weather for Paris please.", tools=[tool]
    )
    [call] = response.function_calls
    assert call.name == "get_weather"
    assert call.call_id
    assert isinstance(call.arguments, str) and call.arguments.startswith("{")


def test_continuation_is_routed_to_the_connection_holding_the_response(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, max_connections=2)
    first = client.create_response(model="gpt-5.5", input="Remember 7.", store=False)
    second = client.create_response(
        model="gpt-5.5", input="What number?", previous_response_id=first.id, store=False
    )
    assert second.status == "completed"
    assert oaiws_emulator.stats()["cache_hits"] == 1


def test_unknown_events_and_fields_pass_through(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    for event in client.generate_response(model="gpt-5.5", input="x"):
        assert event.to_dict()["type"] == event.type
        assert "sequence_number" not in event or isinstance(event.sequence_number, int)
