"""Background responses as the official ``openai`` SDK drives them over HTTP: create with
``background=True`` (JSON or streamed), poll with ``retrieve``, resume with ``retrieve(stream=True,
starting_after=N)`` and the stream helper, ``cancel``, ``delete`` and ``input_items``. Every answer
is validated strictly into the SDK's typed objects."""

from __future__ import annotations

import pytest
from waiting import wait_for

from .conftest import OPENAI_MISSING

pytest.importorskip("openai.lib.responses_websocket", reason=OPENAI_MISSING)

import openai
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseQueuedEvent,
)

from oaiws.testing import Fault, expected_text

from .openai_support import MODEL, check_http_event, check_response, dump, http_client

pytestmark = pytest.mark.timeout(30)

STALLED = {"emulator_deltas": "2", "emulator_delta_delay_ms": "30000"}


@pytest.fixture
def emu(oaiws_emulator_factory):
    return oaiws_emulator_factory()


@pytest.fixture
def client(emu):
    return http_client(emu)


def _until(client, response_id: str, *statuses: str) -> Response:
    def reached():
        response = client.responses.retrieve(response_id)
        return response if response.status in statuses else None

    found: Response = wait_for(reached, what=f"{response_id} to be {statuses}")
    check_response(dump(found))
    return found


def test_create_in_background_then_poll_to_completion(client):
    queued = client.responses.create(model=MODEL, input="hello", background=True)
    assert isinstance(queued, Response)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    check_response(dump(queued))
    done = _until(client, queued.id, "completed")
    assert done.background is True and done.output_text == expected_text("hello")
    assert done.usage is not None and done.usage.output_tokens == 8


def test_a_streamed_background_create_and_its_resumption(client):
    stream = client.responses.create(model=MODEL, input="hello", background=True, stream=True)
    seen = []
    for event in stream:
        seen.append(check_http_event(event))
        if len(seen) == 6:
            break
    stream.close()
    created, queued, in_progress = seen[:3]
    assert isinstance(created, ResponseCreatedEvent) and created.response.status == "queued"
    assert isinstance(queued, ResponseQueuedEvent) and queued.response.status == "queued"
    assert isinstance(in_progress, ResponseInProgressEvent)
    assert created.response.background is True
    response_id = created.response.id

    with client.responses.retrieve(response_id, stream=True, starting_after=5) as resumed:
        rest = [check_http_event(event) for event in resumed]
    events = seen + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert isinstance(events[-1], ResponseCompletedEvent)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text == expected_text("hello")

    with client.responses.stream(response_id=response_id, starting_after=5) as helper:
        helper_events = list(helper)
        final = helper.get_final_response()
    assert [e.sequence_number for e in helper_events] == [e.sequence_number for e in rest]
    assert final.output_text == expected_text("hello") and final.status == "completed"


def test_cancel_in_progress_is_idempotent_and_ends_the_stream(client):
    running = client.responses.create(model=MODEL, input="hello", background=True, metadata=STALLED)
    _until(client, running.id, "in_progress")
    cancelled = client.responses.cancel(running.id)
    assert isinstance(cancelled, Response) and cancelled.status == "cancelled"
    check_response(dump(cancelled))
    assert dump(client.responses.cancel(running.id)) == dump(cancelled)
    assert client.responses.retrieve(running.id).status == "cancelled"
    with client.responses.retrieve(running.id, stream=True) as replay:
        events = [check_http_event(event) for event in replay]
    end = events[-1]
    assert isinstance(end, ResponseIncompleteEvent) and end.response.status == "cancelled"
    assert dump(end.response) == dump(cancelled)


def test_cancel_and_stream_errors_map_to_the_sdk_exceptions(client):
    done = client.responses.create(model=MODEL, input="x", background=True)
    _until(client, done.id, "completed")
    with pytest.raises(openai.BadRequestError) as finished:
        client.responses.cancel(done.id)
    assert "cannot be cancelled" in finished.value.message
    plain = client.responses.create(model=MODEL, input="x")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)
    with pytest.raises(openai.BadRequestError) as not_background:
        client.responses.retrieve(plain.id, stream=True)
    assert not_background.value.param == "stream"
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_gone")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_gone", stream=True)
    with pytest.raises(openai.BadRequestError) as stateless:
        client.responses.create(model=MODEL, input="x", background=True, store=False)
    assert stateless.value.param == "background"


def test_a_failed_run_input_items_and_delete(emu, client):
    emu.inject(Fault(error_code="server_error"))
    queued = client.responses.create(
        model=MODEL, input=[{"role": "user", "content": "one"}], background=True
    )
    failed = _until(client, queued.id, "failed")
    assert failed.error is not None and failed.error.code == "server_error"
    with client.responses.retrieve(queued.id, stream=True) as replay:
        events = [check_http_event(event) for event in replay]
    assert isinstance(events[-1], ResponseFailedEvent)
    items = list(client.responses.input_items.list(queued.id))
    assert [item.content[0].text for item in items] == ["one"]
    assert client.responses.delete(queued.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(queued.id)
