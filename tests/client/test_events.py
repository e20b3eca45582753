"""Event, Response and the accumulator that builds a Response from a request's events."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import oaiws
from oaiws import Event, Response
from oaiws._events import ResponseAccumulator
from oaiws.errors import error_from_event


def _text_turn(text_chunks: list[str], *, terminal_output: bool = True) -> list[dict[str, Any]]:
    text = "".join(text_chunks)
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {"id": "resp_1", "status": "in_progress", "output": []},
        },
        {"type": "response.in_progress", "response": {"id": "resp_1", "status": "in_progress"}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"id": "msg_1", "type": "message", "role": "assistant", "content": []},
        },
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ]
    events += [
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": chunk,
        }
        for chunk in text_chunks
    ]
    events.append(
        {
            "type": "response.completed",
            "response": {
                "id": "resp_1",
                "status": "completed",
                "output": [message] if terminal_output else [],
                "usage": {"input_tokens": 3, "output_tokens": len(text_chunks), "total_tokens": 9},
            },
        }
    )
    return events


def _accumulate(events: list[dict[str, Any]]) -> Response:
    accumulator = ResponseAccumulator()
    for event in events:
        accumulator.add(event)
    return accumulator.build()


def test_event_fields_by_attribute_and_key() -> None:
    raw = {"type": "response.output_text.delta", "delta": "Hel", "output_index": 0}
    event = Event(raw)
    assert event.type == "response.output_text.delta"
    assert event.delta == "Hel" == event["delta"]
    assert event.output_index == 0
    assert event.to_dict() is raw
    assert dict(event) == raw
    assert event == raw
    assert "delta" in event and len(event) == 3


def test_the_fields_read_on_every_event_behave_like_any_other_field() -> None:
    # delta, sequence_number, item and the like are served by properties (they are read on
    # every event); what they give must not differ from the general attribute path.
    raw = {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 0,
        "item": {"id": "fc_1", "type": "function_call", "arguments": ""},
        "text": None,
        "delta": 1.5,
    }
    event = Event(raw)
    assert event.sequence_number == 2 and event.output_index == 0 and event.delta == 1.5
    assert event.item.id == "fc_1" and event.item.arguments == ""
    assert event.text is None  # an explicit null reads as None, like any field
    assert not hasattr(event, "item_id") and hasattr(event, "text")
    with pytest.raises(AttributeError, match=r"has no field 'response' \(fields: delta, item"):
        _ = event.response


def test_event_nested_objects_by_attribute() -> None:
    event = Event(
        {"type": "response.completed", "response": {"id": "r", "usage": {"total_tokens": 5}}}
    )
    assert event.response.id == "r"
    assert event.response.usage.total_tokens == 5
    assert event["response"]["usage"] == {"total_tokens": 5}
    assert event.response["id"] == "r"


def test_unknown_attribute_names_the_event_type() -> None:
    event = Event({"type": "response.created", "response": {}})
    with pytest.raises(AttributeError, match=r"'response\.created' event has no field 'delta'"):
        _ = event.delta
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = event.response.nope


def test_unknown_event_types_pass_through_untouched() -> None:
    raw = {
        "type": "response.future_thing.delta",
        "sequence_number": 4,
        "payload": {"x": [1, {"y": 2}]},
    }
    event = Event(raw)
    assert event.type == "response.future_thing.delta"
    assert event.payload.x[1].y == 2
    assert event.to_dict() == raw
    accumulator = ResponseAccumulator()
    accumulator.add(raw)  # ignored, never a crash
    assert accumulator.build().status is None


def test_event_without_type() -> None:
    assert Event({"x": 1}).type is None


def test_event_copies_and_pickles_like_a_mapping() -> None:
    event = Event({"type": "t", "a": {"b": 1}})
    assert copy.deepcopy(event) == event
    assert "Event(" in repr(event)


def test_accumulator_prefers_the_terminal_output() -> None:
    response = _accumulate(_text_turn(["Hel", "lo", " there"]))
    assert response.id == "resp_1"
    assert response.status == "completed"
    assert response.output_text == "Hello there"
    assert response.usage is not None and response.usage.output_tokens == 3
    assert response.error is None and response.incomplete_details is None
    assert response.output[0].type == "message"
    assert response.to_dict()["output"][0]["id"] == "msg_1"


def test_accumulator_builds_the_output_when_the_terminal_event_has_none() -> None:
    response = _accumulate(_text_turn(["a", "b", "c"], terminal_output=False))
    assert response.status == "completed"
    assert response.output_text == "abc"
    assert response.output[0].content[0].text == "abc"


def test_accumulator_never_mutates_the_events_the_caller_holds() -> None:
    events = _text_turn(["x", "y"], terminal_output=False)
    before = copy.deepcopy(events)
    _accumulate(events)
    assert events == before


def test_partial_response_holds_the_text_so_far() -> None:
    accumulator = ResponseAccumulator()
    for event in _text_turn(["one ", "two ", "three"])[:-2]:
        accumulator.add(event)
    partial = accumulator.build()
    assert partial.status == "in_progress"
    assert partial.output_text == "one two "
    assert accumulator.terminal_type is None
    # Building again (as the final build will) never duplicates text.
    assert accumulator.build().output_text == "one two "


def test_done_events_replace_the_deltas() -> None:
    events = _text_turn(["a", "b"], terminal_output=False)
    events.insert(
        -1,
        {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "AB"},
    )
    assert _accumulate(events).output_text == "AB"


def test_function_call_arguments_are_accumulated() -> None:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "resp_2", "status": "in_progress"}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "",
            },
        },
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '{"city": '},
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": '"Paris"}'},
        {"type": "response.completed", "response": {"id": "resp_2", "status": "completed"}},
    ]
    response = _accumulate(events)
    [call] = response.function_calls
    assert call.name == "get_weather" and call.call_id == "call_1"
    assert call.arguments == '{"city": "Paris"}'
    assert response.output_text == ""


def test_failed_and_incomplete_terminals() -> None:
    failed = _accumulate(
        [
            {
                "type": "response.failed",
                "response": {
                    "id": "r",
                    "status": "failed",
                    "error": {"code": "server_error", "message": "m"},
                },
            }
        ]
    )
    assert (
        failed.status == "failed"
        and failed.error is not None
        and failed.error.code == "server_error"
    )
    incomplete = _accumulate(
        [
            {
                "type": "response.incomplete",
                "response": {
                    "id": "r",
                    "status": "incomplete",
                    "incomplete_details": {"reason": "max_output_tokens"},
                },
            }
        ]
    )
    assert incomplete.incomplete_details is not None
    assert incomplete.incomplete_details.reason == "max_output_tokens"


def test_response_done_is_terminal() -> None:
    accumulator = ResponseAccumulator()
    accumulator.add({"type": "response.done", "response": {"id": "r", "status": "completed"}})
    assert accumulator.terminal_type == "response.done"


def test_refusal_deltas() -> None:
    accumulator = ResponseAccumulator()
    accumulator.add(
        {"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": "no"}
    )
    response = accumulator.build()
    assert response.output[0].content[0].refusal == "no"
    assert response.output_text == ""


def test_partial_build_then_the_rest() -> None:
    events = _text_turn(["one ", "two ", "three"], terminal_output=False)
    accumulator = ResponseAccumulator()
    for event in events[:5]:
        accumulator.add(event)
    assert accumulator.build().output_text == "one "
    for event in events[5:]:
        accumulator.add(event)
    final = accumulator.build()
    assert final.status == "completed"
    assert final.output_text == "one two three"


def test_error_headers_keep_only_string_values() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    error = error_from_event(
        {
            "type": "error",
            "status": 429,
            "error": {"code": "rate_limit_exceeded", "headers": {"retry-after": "2", "x": deep}},
        }
    )
    assert error.headers == {"retry-after": "2"} and error.retry_after == 2.0


def _nested_lists(depth: int, innermost: Any) -> Any:
    value = innermost
    for _ in range(depth):
        value = [value]
    return value


def test_a_value_nested_as_deep_as_a_decoder_allows_can_be_read_and_shown() -> None:
    # orjson decodes up to 1024 levels, deeper than Python's own recursion goes.
    event = Event({"type": "x.y", "extra": _nested_lists(1020, {"a": 1})})
    shown = repr(event)
    assert shown.startswith("Event({") and "'type': 'x.y'" in shown and len(shown) < 200
    node, depth = event.extra, 0
    while isinstance(node, list):
        node, depth = node[0], depth + 1
    assert depth == 1020 and node.a == 1


def test_an_index_of_the_wrong_type_is_named_briefly_whatever_its_size() -> None:
    accumulator = ResponseAccumulator()
    event = {"type": "response.output_text.delta", "output_index": _nested_lists(1020, 0)}
    accumulator.add(event)
    with pytest.raises(oaiws.ProtocolError, match=r"output_index is \[\[\[\[.*not a") as caught:
        accumulator.build()
    assert len(str(caught.value)) < 300
    accumulator = ResponseAccumulator()
    accumulator.add({"type": "response.output_text.delta", "output_index": "9" * 100_000})
    with pytest.raises(oaiws.ProtocolError, match="output_index is '9999") as caught:
        accumulator.build()
    assert len(str(caught.value)) < 300
