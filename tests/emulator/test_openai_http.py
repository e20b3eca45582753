"""The emulator's HTTP counterpart as the official ``openai`` SDK sees it: server-sent events,
the stream helper's accumulation, JSON creates, the REST calls on stored responses, and
errors mapped to the SDK's exceptions. The SDK client validates every answer strictly."""

from __future__ import annotations

import json

import pytest

from .conftest import OPENAI_MISSING

pytest.importorskip("openai.lib.responses_websocket", reason=OPENAI_MISSING)

import openai
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInputMessageItem,
)

from oaiws.testing import Fault, expected_text

from .openai_support import MODEL, check_http_event, check_response, dump, http_client

pytestmark = pytest.mark.timeout(30)

TOOL = {
    "type": "function",
    "name": "lookup",
    "description": None,
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    "strict": False,
}


@pytest.fixture
def emu(oaiws_emulator_factory):
    return oaiws_emulator_factory()


@pytest.fixture
def client(emu):
    return http_client(emu)


def test_streamed_create_yields_the_specific_sdk_event_types(client):
    with client.responses.create(model=MODEL, input="hello", stream=True) as stream:
        events = [check_http_event(event) for event in stream]
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events].count("response.output_text.delta") == 8
    done = events[-1]
    assert isinstance(done, ResponseCompletedEvent)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert done.response.output_text == text == expected_text("hello")
    assert not any(hasattr(e, "stream_id") for e in events)


def test_stream_helper_accumulates_the_final_response(client):
    with client.responses.stream(model=MODEL, input="hello", instructions="sys") as stream:
        snapshots = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    text = expected_text("hello", instructions="sys")
    assert snapshots[-1] == final.output_text == text
    assert all(text.startswith(snapshot) for snapshot in snapshots)
    assert final.status == "completed" and final.id.startswith("resp_")


def test_stream_helper_accumulates_function_call_arguments(client):
    with client.responses.stream(model=MODEL, input="please lookup it", tools=[TOOL]) as stream:
        snapshots = [
            e.snapshot for e in stream if e.type == "response.function_call_arguments.delta"
        ]
        final = stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "lookup"
    assert snapshots[-1] == call.arguments and json.loads(call.arguments) == {"q": "example q"}


def test_failed_and_incomplete_stream_terminals(client):
    with client.responses.create(
        model=MODEL, input="x", stream=True, metadata={"emulator_outcome": "failed"}
    ) as stream:
        failed = [check_http_event(e) for e in stream][-1]
    assert isinstance(failed, ResponseFailedEvent) and failed.response.error is not None
    assert failed.response.error.code == "server_error"
    with client.responses.create(
        model=MODEL, input="x", stream=True, max_output_tokens=2
    ) as stream:
        capped = [check_http_event(e) for e in stream][-1]
    assert isinstance(capped, ResponseIncompleteEvent)
    assert capped.response.incomplete_details is not None
    assert capped.response.incomplete_details.reason == "max_output_tokens"


def test_json_create_retrieve_input_items_and_delete(client):
    messages = [{"role": "user", "content": text} for text in ("one", "two", "three")]
    created = client.responses.create(model=MODEL, input=messages)
    assert isinstance(created, Response) and created.status == "completed"
    check_response(dump(created))
    assert created.output_text == expected_text(messages[2:], history=messages[:2])

    assert dump(client.responses.retrieve(created.id)) == dump(created)
    items = list(client.responses.input_items.list(created.id, limit=1, order="asc"))
    assert all(isinstance(item, ResponseInputMessageItem) for item in items)
    assert [item.content[0].text for item in items] == ["one", "two", "three"]
    page = client.responses.input_items.list(created.id)
    assert [item.content[0].text for item in page.data] == ["three", "two", "one"]
    assert not page.has_more

    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.retrieve(created.id)
    assert missing.value.status_code == 404 and missing.value.request_id.startswith("req_")
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_unstored_responses_are_not_retrievable(client):
    unstored = client.responses.create(model=MODEL, input="x", store=False)
    assert unstored.status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as chained:
        client.responses.create(model=MODEL, input="y", previous_response_id=unstored.id)
    assert chained.value.code == "previous_response_not_found"


def test_http_continuation_matches_the_replayed_conversation(client):
    first = client.responses.create(model=MODEL, input="first")
    second = client.responses.create(model=MODEL, input="second", previous_response_id=first.id)
    history = [{"role": "user", "content": "first"}, *[dump(item) for item in first.output]]
    assert second.previous_response_id == first.id
    assert second.output_text == expected_text("second", history=history)


def test_http_errors_map_to_the_sdk_exceptions(emu, client):
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        http_client(emu, api_key="sk-wrong").responses.create(model=MODEL, input="x")
    assert unauthorized.value.status_code == 401 and unauthorized.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(unauthorized.value.body)

    with pytest.raises(openai.BadRequestError) as not_found:
        client.responses.create(model=MODEL, input="x", previous_response_id="resp_gone")
    error = not_found.value
    assert error.code == "previous_response_not_found" and error.param == "previous_response_id"
    assert error.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as bad_tool:
        client.responses.create(
            model=MODEL, input="x", tools=[TOOL], tool_choice={"type": "function", "name": "nope"}
        )
    assert bad_tool.value.param == "tool_choice"

    emu.inject(Fault(error_code="rate_limit_exceeded", retry_after=3))
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model=MODEL, input="x", stream=True)
    assert limited.value.response.headers["retry-after"] == "3"

    emu.inject(Fault(error_code="server_is_overloaded"))
    with pytest.raises(openai.InternalServerError) as overloaded:
        client.responses.create(model=MODEL, input="x")
    assert overloaded.value.status_code == 503


def test_the_sdk_retries_a_transient_error_and_succeeds(emu):
    emu.inject(Fault(error_code="server_error"))
    client = http_client(emu).with_options(max_retries=1)
    response = client.responses.create(model=MODEL, input="again")
    assert response.output_text == expected_text("again")
    assert emu.stats()["faults_applied"] == 1 and emu.stats()["requests"] == 2
