"""The emulator's WebSocket mode as the official ``openai`` SDK sees it.

An independent client: ``client.responses.connect()`` sends every request, and every event
that comes back must parse into the SDK's specific typed class, validate strictly and
round-trip (see openai_support). Then continuation, cache misses, errors, limits and lanes
must behave as PROTOCOL.md says.
"""

from __future__ import annotations

import json
import threading

import pytest

from .conftest import OPENAI_MISSING

pytest.importorskip("openai.lib.responses_websocket", reason=OPENAI_MISSING)

import openai
import websockets
from openai.lib.responses_websocket import (
    ResponsesWebSocketError,
    ResponsesWebSocketLimits,
    ResponsesWebSocketSession,
)
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage
from openai.types.responses.responses_server_event import (
    ResponseWsCompleted,
    ResponseWsError,
    ResponseWsFailed,
    ResponseWsIncomplete,
)

from oaiws.testing import Fault, expected_text

from .conftest import TEXT_TURN
from .openai_support import (
    MODEL,
    check_response,
    connect,
    dump,
    http_client,
    receive,
    text_of,
    turn,
    until_terminal,
)

pytestmark = pytest.mark.timeout(30)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
SLOW = {"emulator_deltas": "6", "emulator_delta_delay_ms": "15"}


@pytest.fixture
def emu(oaiws_emulator_factory):
    return oaiws_emulator_factory()


def test_text_turn_parses_into_the_sdk_types(emu):
    with connect(emu) as conn:
        events = turn(conn, input="hello", instructions="Be brief.", metadata={"k": "v"})
    assert [e.type for e in events] == TEXT_TURN
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1]
    assert isinstance(done, ResponseWsCompleted) and done.stream_id is None
    response = done.response
    assert response.status == "completed" and response.id == events[0].response.id
    assert (
        response.output_text == text_of(events) == expected_text("hello", instructions="Be brief.")
    )
    (message,) = response.output
    assert isinstance(message, ResponseOutputMessage) and message.role == "assistant"
    assert {e.item_id for e in events if hasattr(e, "item_id")} == {message.id}
    assert response.usage is not None and response.usage.output_tokens == 8
    assert response.usage.total_tokens == response.usage.input_tokens + 8
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"}
    assert response.model == MODEL and response.completed_at is not None


def test_iterating_the_connection_yields_typed_events(emu):
    with connect(emu) as conn:
        conn.response.create(model=MODEL, input="iterate", metadata={"emulator_deltas": "3"})
        seen = []
        for event in conn:
            seen.append(event)
            if event.type == "response.completed":
                break
    assert [e.type for e in seen].count("response.output_text.delta") == 3
    check_response(dump(seen[-1].response))


def test_function_call_then_its_output_continues_the_chain(emu):
    with connect(emu) as conn:
        first = turn(conn, input="What is the weather in Paris? use get_weather", tools=[WEATHER])
        types = [e.type for e in first]
        assert types[2] == "response.output_item.added" and types[-2] == "response.output_item.done"
        assert "response.function_call_arguments.delta" in types
        arguments_done = next(e for e in first if e.type == "response.function_call_arguments.done")
        response = first[-1].response
        (call,) = response.output
        assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "example city", "unit": "c"}
        assert arguments_done.arguments == call.arguments
        assert call.call_id.startswith("call_") and call.status == "completed"
        assert response.tools[0].type == "function" and response.tools[0].strict is True

        output = {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}
        second = turn(conn, input=[output], previous_response_id=response.id, tools=[WEATHER])
    answer = second[-1].response
    assert answer.previous_response_id == response.id
    assert answer.output_text.startswith("Tool result: 18C.")
    assert emu.stats()["cache_hits"] == 1 and emu.stats()["hydrations"] == 0


def test_warm_up_without_generation_can_be_chained_from(emu):
    with connect(emu) as conn:
        warm = turn(conn, input="context", instructions="sys", generate=False)
        assert [e.type for e in warm] == ["response.created", "response.completed"]
        prepared = warm[-1].response
        assert prepared.status == "completed" and prepared.output == []
        assert prepared.usage is not None and prepared.usage.output_tokens == 0
        events = turn(conn, input="question", instructions="sys", previous_response_id=prepared.id)
    assert text_of(events) == expected_text("question", instructions="sys", history="context")
    assert emu.stats()["warmups"] == 1 and emu.stats()["cache_hits"] == 1


def test_continuation_on_the_same_connection_is_a_cache_hit(emu):
    with connect(emu) as conn:
        first = turn(conn, input="first").pop().response
        second = turn(conn, input="second", previous_response_id=first.id).pop().response
    history = [{"role": "user", "content": "first"}, *[dump(item) for item in first.output]]
    assert second.output_text == expected_text("second", history=history)
    assert second.usage is not None and second.usage.input_tokens_details.cached_tokens > 0
    stats = emu.stats()
    assert (stats["cache_hits"], stats["cache_misses"], stats["hydrations"]) == (1, 0, 0)


def test_a_new_connection_hydrates_a_stored_response(emu):
    with connect(emu) as conn:
        first = turn(conn, input="first").pop().response
    with connect(emu) as conn:
        second = turn(conn, input="second", previous_response_id=first.id).pop().response
    history = [{"role": "user", "content": "first"}, *[dump(item) for item in first.output]]
    assert second.status == "completed"
    assert second.output_text == expected_text("second", history=history)
    assert second.usage is not None and second.usage.input_tokens_details.cached_tokens == 0
    stats = emu.stats()
    assert (stats["cache_hits"], stats["cache_misses"], stats["hydrations"]) == (0, 1, 1)


def test_store_false_on_a_new_connection_is_previous_response_not_found(emu):
    with connect(emu) as conn:
        first = turn(conn, input="first", store=False).pop().response
        assert first.status == "completed"
    with connect(emu) as conn:
        (error,) = turn(conn, input="second", previous_response_id=first.id, store=False)
        assert isinstance(error, ResponseWsError) and error.status == 400
        assert error.error.type == "invalid_request_error"
        assert error.error.code == "previous_response_not_found"
        assert error.error.param == "previous_response_id"
        assert error.error.message == f"Previous response with id '{first.id}' not found."
        # The error ends that request only: the same connection carries the full replay.
        history = [{"role": "user", "content": "first"}, *[dump(item) for item in first.output]]
        second = {"role": "user", "content": "second"}
        replay = turn(conn, input=[*history, second], store=False).pop().response
    assert replay.output_text == expected_text("second", history=history)
    assert emu.stats()["previous_response_not_found"] == 1


def test_unhandled_error_events_raise_through_dispatch_events(emu):
    with connect(emu) as conn:
        conn.response.create(model=MODEL, input="x", previous_response_id="resp_missing")
        with pytest.raises(openai.OpenAIError, match="WebSocket error"):
            conn.dispatch_events()


def test_error_handlers_receive_the_typed_nested_error(emu):
    emu.inject(Fault(error_code="rate_limit_exceeded", retry_after=2))
    received: list[ResponseWsError] = []
    with connect(emu) as conn:

        @conn.on("error")
        def on_error(event):
            received.append(event)
            conn.close()

        conn.response.create(model=MODEL, input="x")
        conn.dispatch_events()
    (error,) = received
    assert isinstance(error, ResponseWsError) and error.status == 429
    assert error.error.code == "rate_limit_exceeded" and error.error.headers == {"retry-after": "2"}


def test_failed_and_incomplete_terminals(emu):
    with connect(emu) as conn:
        failed = turn(conn, input="x", metadata={"emulator_outcome": "failed"})
        capped = turn(conn, input="x", max_output_tokens=3)
        filtered = turn(
            conn,
            input="x",
            metadata={
                "emulator_outcome": "incomplete",
                "emulator_incomplete_reason": "content_filter",
            },
        )
    assert isinstance(failed[-1], ResponseWsFailed)
    response = failed[-1].response
    assert response.status == "failed" and response.error is not None
    assert response.error.code == "server_error" and response.output == []
    assert isinstance(capped[-1], ResponseWsIncomplete)
    response = capped[-1].response
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert [e.type for e in capped].count("response.output_text.delta") == 3
    assert response.output[0].status == "incomplete" and response.usage.output_tokens == 3
    reason = filtered[-1].response.incomplete_details
    assert reason is not None and reason.reason == "content_filter"


def test_a_failed_continuation_evicts_its_parent_from_the_cache(emu):
    with connect(emu) as conn:
        first = turn(conn, input="a").pop().response
        failed = turn(
            conn,
            input="b",
            previous_response_id=first.id,
            metadata={"emulator_outcome": "failed"},
        )
        assert isinstance(failed[-1], ResponseWsFailed)
        again = turn(conn, input="b", previous_response_id=first.id).pop().response
    assert again.status == "completed"
    assert emu.stats()["hydrations"] == 1  # evicted from the cache, loaded from the store


def test_max_age_limit_reached_then_closed_1001(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(max_connection_age=0.5)
    with connect(emu) as conn:
        assert turn(conn, input="x")[-1].response.status == "completed"
        raw, error = receive(conn)
        assert isinstance(error, ResponseWsError) and error.stream_id is None
        assert error.error.code == "websocket_connection_limit_reached"
        assert "stream_id" not in raw
        with pytest.raises(websockets.ConnectionClosed) as closed:
            conn.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert emu.stats()["connections_closed_max_age"] == 1


def test_the_sdk_reconnects_after_the_age_limit_and_resends(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(max_connection_age=0.5)
    codes: list[int] = []
    holder: list = []

    def on_reconnecting(event):
        codes.append(event.close_code)
        # Sent while reconnecting: the SDK queues it for the new connection.
        holder[0].response.create(model=MODEL, input="resent")

    with connect(emu, on_reconnecting=on_reconnecting, initial_delay=0.01) as conn:
        holder.append(conn)
        seen = []
        for event in conn:
            seen.append(event)
            if event.type == "response.completed":
                break
    assert seen[0].type == "error" and seen[0].error.code == "websocket_connection_limit_reached"
    assert codes == [1001]
    assert seen[-1].response.output_text == expected_text("resent")
    assert emu.stats()["connections_total"] == 2


def test_lanes_echo_stream_id_run_concurrently_and_fifo(emu):
    with connect(emu) as conn:
        conn.response.create(model=MODEL, input="a1", stream_id="lane-a", metadata=SLOW)
        conn.response.create(model=MODEL, input="a2", stream_id="lane-a", metadata=SLOW)
        conn.response.create(model=MODEL, input="b1", stream_id="lane.b", metadata=SLOW)
        events, terminals = [], 0
        while terminals < 3:
            raw, event = receive(conn)
            assert raw["stream_id"] == event.stream_id
            events.append(event)
            terminals += event.type == "response.completed"
    lanes = [e.stream_id for e in events]
    assert set(lanes) == {"lane-a", "lane.b"}
    first_done = next(i for i, e in enumerate(events) if e.type == "response.completed")
    assert {"lane-a", "lane.b"} <= set(lanes[:first_done]), "lanes did not run concurrently"
    lane_a = [e for e in events if e.stream_id == "lane-a"]
    types = [e.type for e in lane_a]
    assert types.count("response.created") == 2
    assert types.index("response.completed") < types.index("response.created", 1), "not FIFO"
    texts = [e.response.output_text for e in lane_a if e.type == "response.completed"]
    assert texts == [expected_text("a1", deltas=6), expected_text("a2", deltas=6)]


def test_the_sdk_lane_session_routes_and_collects_final_responses(emu):
    limits = ResponsesWebSocketLimits(
        max_lanes=4,
        max_events_per_lane=64,
        max_events=256,
        max_bytes_per_lane=1 << 20,
        max_bytes=1 << 22,
    )
    with connect(emu) as conn, ResponsesWebSocketSession(conn, limits=limits) as session:
        lanes = {name: session.lane(name) for name in ("left", "right")}
        results: dict[str, object] = {}

        def consume(name):
            results[name] = lanes[name].get_final_response(timeout=10)

        for name, lane in lanes.items():
            lane.send({"type": "response.create", "model": MODEL, "input": name, "metadata": SLOW})
        threads = [threading.Thread(target=consume, args=(name,)) for name in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        for name in lanes:
            response = results[name]
            assert response.status == "completed"
            assert response.output_text == expected_text(name, deltas=6)
        lanes["left"].send(
            {
                "type": "response.create",
                "model": MODEL,
                "input": "x",
                "previous_response_id": "resp_no",
            }
        )
        with pytest.raises(ResponsesWebSocketError) as raised:
            lanes["left"].get_final_response(timeout=10)
    error = raised.value.event
    assert isinstance(error, ResponseWsError) and error.stream_id == "left"
    assert error.error.code == "previous_response_not_found"


def test_lane_errors_parse_and_name_their_lane(emu):
    with connect(emu) as conn:
        conn.send({"type": "response.create", "model": MODEL, "input": "x", "stream_id": "bad id"})
        (invalid,) = until_terminal(conn)
        assert isinstance(invalid, ResponseWsError) and invalid.status == 400
        assert invalid.error.code == "invalid_stream_id" and invalid.error.param == "stream_id"
        for index in range(32):
            turn(conn, input="x", generate=False, stream_id=f"lane{index}")
        (limit,) = turn(conn, input="x", stream_id="lane32")
        assert isinstance(limit, ResponseWsError) and limit.stream_id == "lane32"
        assert limit.error.code == "websocket_stream_limit_reached"
        assert turn(conn, input="x", stream_id="lane0")[-1].stream_id == "lane0"


def test_tls_websocket_and_https_through_the_sdk(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(tls=True)
    assert emu.base_url.startswith("https://")
    with connect(emu) as conn:
        first = turn(conn, input="secure").pop().response
    assert first.output_text == expected_text("secure")
    stored = http_client(emu).responses.retrieve(first.id)
    assert dump(stored) == dump(first)


def test_creates_beyond_16_active_responses_are_queued_not_refused(emu):
    # PROTOCOL.md: up to 16 active responses per connection; websocket_stream_limit_reached is
    # for a 33rd distinct stream_id. The service queues further creates until a slot frees.
    held = {"emulator_deltas": "2", "emulator_first_event_delay_ms": "300"}
    with connect(emu) as conn:
        for index in range(16):
            conn.response.create(model=MODEL, input="x", stream_id=f"busy{index}", metadata=held)
        conn.response.create(model=MODEL, input="late", stream_id="late")
        events = []
        while sum(e.type in ("response.completed", "error") for e in events) < 17:
            events.append(receive(conn)[1])
    assert [e for e in events if isinstance(e, ResponseWsError)] == []
    order = [(e.type, e.stream_id) for e in events]
    late_start = order.index(("response.created", "late"))
    first_done = next(i for i, (kind, _) in enumerate(order) if kind == "response.completed")
    assert first_done < late_start, "a 17th response ran while 16 were active"
    late = next(e for e in events if e.type == "response.completed" and e.stream_id == "late")
    assert late.response.output_text == expected_text("late")


def test_a_failed_fork_on_another_lane_keeps_the_parent_for_its_own_lane(emu):
    # A same-lane failed continuation evicts its parent (test above); a fork from another
    # lane that fails leaves the parent cached for the lane that produced it.
    with connect(emu) as conn:
        parent = turn(conn, input="a", store=False, stream_id="main").pop().response
        fork = turn(
            conn,
            input="b",
            store=False,
            stream_id="fork",
            previous_response_id=parent.id,
            metadata={"emulator_outcome": "failed"},
        )
        assert isinstance(fork[-1], ResponseWsFailed) and fork[-1].stream_id == "fork"
        again = turn(conn, input="c", store=False, stream_id="main", previous_response_id=parent.id)
    assert again[-1].response.status == "completed"
    assert emu.stats()["cache_hits"] == 2
