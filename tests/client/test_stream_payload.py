"""The response.create event is checked and built before any network traffic."""

from __future__ import annotations

from typing import Any

import pytest

from oaiws import ConfigurationError
from oaiws._payload import build_payload


def test_minimal_payload() -> None:
    assert build_payload({"model": "gpt-5.5", "input": "Hello"}) == {
        "type": "response.create",
        "model": "gpt-5.5",
        "input": "Hello",
    }


def test_none_values_are_left_out() -> None:
    payload = build_payload(
        {"model": "m", "input": "x", "instructions": None, "temperature": None, "stream": None}
    )
    assert payload == {"type": "response.create", "model": "m", "input": "x"}


def test_other_fields_pass_through() -> None:
    fields: dict[str, Any] = {
        "model": "m",
        "input": [{"role": "user", "content": "hi"}],
        "previous_response_id": "resp_1",
        "store": False,
        "tools": [{"type": "function", "name": "f", "parameters": {}}],
        "metadata": {"k": "v"},
        "max_output_tokens": 50,
        "temperature": 0.2,
        "generate": False,
        "stream_id": "lane.1",
        "some_future_field": {"x": 1},
    }
    payload = build_payload(fields)
    for key, value in fields.items():
        assert payload[key] == value


def test_input_tuple_becomes_a_list() -> None:
    payload = build_payload({"model": "m", "input": ({"role": "user", "content": "a"},)})
    assert payload["input"] == [{"role": "user", "content": "a"}]


def test_typed_models_are_dumped() -> None:
    class Item:
        def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
            return {"role": "user", "content": "typed"}

    payload = build_payload({"model": "m", "input": [Item()]})
    assert payload["input"] == [{"role": "user", "content": "typed"}]


def test_background_false_is_dropped() -> None:
    assert "background" not in build_payload({"model": "m", "input": "x", "background": False})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input": "x"}, "model must be a non-empty string"),
        ({"model": "", "input": "x"}, "model must be a non-empty string"),
        ({"model": 5, "input": "x"}, "model must be a non-empty string"),
        ({"model": "m"}, "input is required"),
        ({"model": "m", "input": 42}, "input must be a string or a list"),
        ({"model": "m", "input": ["bare string"]}, "each input item must be a dict"),
        ({"model": "m", "input": "x", "stream": True}, "always streams"),
        ({"model": "m", "input": "x", "stream": False}, "always streams"),
        ({"model": "m", "input": "x", "background": True}, "background mode is not supported"),
        ({"model": "m", "input": "x", "stream_options": {}}, "stream_options"),
        ({"model": "m", "input": "x", "type": "response.create"}, "type is set by oaiws"),
        (
            {"model": "m", "input": "x", "previous_response_id": 7},
            "previous_response_id must be a str",
        ),
        ({"model": "m", "input": "x", "previous_response_id": ""}, "must not be empty"),
        ({"model": "m", "input": "x", "instructions": ["a"]}, "instructions must be a str"),
        ({"model": "m", "input": "x", "store": "yes"}, "store must be True or False"),
        ({"model": "m", "input": "x", "tools": {"type": "function"}}, "tools must be a list"),
        ({"model": "m", "input": "x", "metadata": ["a"]}, "metadata must be a dict"),
        ({"model": "m", "input": "x", "metadata": {"a": 1}}, "metadata keys and values"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"model": "m", "input": "x", "temperature": "hot"}, "temperature must be a finite number"),
        ({"model": "m", "input": "x", "stream_id": "bad lane!"}, "stream_id"),
        ({"model": "m", "input": "x", "extra": object()}, "cannot be sent as JSON"),
    ],
)
def test_invalid_fields_are_refused_with_a_clear_message(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_payload(fields)


def test_continuation_needs_no_input() -> None:
    payload = build_payload({"model": "m", "previous_response_id": "resp_1", "generate": False})
    assert "input" not in payload
