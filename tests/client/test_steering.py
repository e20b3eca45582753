"""Steering (``stream.steer``) against the emulator over real sockets, with and without lanes:
the three outcomes, the successor, steering from another thread, and the transcript of a
steered conversation giving the same context on replay."""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
from typing import Any, Callable

import pytest
from support import read_client_frame, read_upgrade, text_frame, upgrade_answer

import oaiws
from oaiws import _stream
from oaiws.testing import Emulator, Fault, expected_text

ClientFactory = Callable[..., oaiws.Client]

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}

SLOW = {"emulator_deltas": "40", "emulator_delta_delay_ms": "10"}


@pytest.fixture(params=[False, True], ids=["default", "lanes"])
def lanes(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def deltas_then_steer(stream: oaiws.ResponseStream, after: int, text: str) -> oaiws.Steer:
    """Read ``after`` text deltas, then steer; returns the submission."""
    seen = 0
    for event in stream:
        if event.type == "response.output_text.delta":
            seen += 1
            if seen == after:
                return stream.steer(text)
    raise AssertionError("the response ended before it could be steered")


def replayed_answer(emu: Emulator, history: list[Any], next_input: Any) -> str:
    """The answer to ``next_input`` after ``history`` sent in full on a fresh client."""
    with oaiws.Client(api_key=emu.api_key, base_url=emu.base_url) as fresh:
        items = next_input if isinstance(next_input, list) else [next_input]
        replay = fresh.create_response(
            model="m", input=[*history, *items], store=False, metadata=SLOW
        )
        return replay.output_text


def test_an_accepted_steer_ends_the_response_and_the_stream_follows_its_successor(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        stream = client.generate_response(model="m", input="a story", metadata=SLOW)
        steer = deltas_then_steer(stream, 5, "make it about cats")
        response = stream.until_done()
        kinds = [e.type for e in stream.events]
        accepted = kinds.index("response.steer.accepted")
        incomplete = kinds.index("response.incomplete")
        assert accepted < incomplete < kinds.index("response.created", 1) < len(kinds) - 1
        assert kinds[-1] == "response.completed"
        [steered] = stream.steered
        assert steered.status == "incomplete"
        assert steered.get("incomplete_details") == {"reason": "steered"}
        assert response.status == "completed"
        assert response.get("previous_response_id") == steered.id
        assert steer.status == "applied" and steer.settled
        assert steer.response_id == steered.id and steer.successor_id == response.id
        assert steer.id is not None and steer.id.startswith("steer_")
        history = [
            {"role": "user", "content": "a story"},
            {"role": "assistant", "content": steered.output_text},
        ]
        assert response.output_text == expected_text(
            "make it about cats", history=history, deltas=40
        )
        if lanes:
            lane = stream.events[0].get("stream_id")
            assert lane and all(e.get("stream_id") == lane for e in stream.events)
        # The connection is clean: the next request gets its own answer only.
        assert client.create_response(model="m", input="next").output_text == expected_text("next")
        assert emu.stats()["steers_accepted"] == 1 and emu.stats()["successors"] == 1


def test_steering_from_another_thread_while_the_stream_is_read(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        stream = client.generate_response(model="m", input="long answer", metadata=SLOW)
        started = threading.Event()
        outcome: dict[str, Any] = {}

        def steerer() -> None:
            started.wait(10)
            steer = stream.steer([{"role": "user", "content": "shorter please"}])
            outcome["settled"] = steer.wait(10)
            outcome["steer"] = steer

        thread = threading.Thread(target=steerer)
        thread.start()
        for event in stream:
            if event.type == "response.output_text.delta":
                started.set()
        thread.join(10)
        assert outcome["settled"] is True
        assert outcome["steer"].status == "applied"
        assert stream.response is not None and stream.response.id == outcome["steer"].successor_id
        assert len(stream.steered) == 1


def test_a_steer_sent_before_the_response_started_goes_out_at_its_creation(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        stream = client.generate_response(model="m", input="early", metadata=SLOW)
        steer = stream.steer("before anything")
        assert steer.status == "queued"
        response = stream.until_done()
        assert steer.status == "applied" and response.id == steer.successor_id


def test_a_failed_steer_is_shown_and_the_response_goes_on(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        metadata = {**SLOW, "emulator_steering": "unsupported"}
        stream = client.generate_response(model="m", input="steadfast", metadata=metadata)
        steer = deltas_then_steer(stream, 3, "change course")
        response = stream.until_done()
        assert response.status == "completed"
        assert response.output_text == expected_text("steadfast", deltas=40)
        assert not stream.steered
        assert steer.status == "failed"
        assert isinstance(steer.error, oaiws.SteerFailedError)
        assert steer.error.code == "steering_not_supported"
        assert steer.error.status_code == 400 and steer.error.steer_id == steer.id
        assert "response.steer.failed" in [e.type for e in stream.events]


def test_raise_on_failure_raises_after_the_final_event_with_the_response(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        metadata = {**SLOW, "emulator_steering": "successor_fails"}
        stream = client.generate_response(model="m", input="fragile", metadata=metadata)
        seen = 0
        with pytest.raises(oaiws.SteerFailedError) as caught:
            for event in stream:
                if event.type == "response.output_text.delta":
                    seen += 1
                    if seen == 3:
                        stream.steer("try this", raise_on_failure=True)
        error = caught.value
        assert error.code == "successor_creation_failed"
        assert error.response is not None and error.response.status == "incomplete"
        assert error.response_id == error.response.id
        assert "successor_creation_failed" in str(error)
        # The connection went back clean.
        assert client.create_response(model="m", input="after").status == "completed"


def test_steering_a_finished_response_or_with_bad_input_is_refused_before_sending(
    client_for: ClientFactory,
) -> None:
    with Emulator() as emu:
        client = client_for(emu)
        stream = client.generate_response(model="m", input="short")
        with pytest.raises(oaiws.ConfigurationError, match="user messages only"):
            stream.steer([{"role": "assistant", "content": "no"}])
        with pytest.raises(oaiws.ConfigurationError):
            stream.steer("")
        stream.until_done()
        with pytest.raises(oaiws.SteerFailedError) as caught:
            stream.steer("too late")
        assert caught.value.code == "response_already_completed"
        assert emu.stats()["steers_received"] == 0


def test_steering_over_http_fails_clearly(client_for: ClientFactory) -> None:
    with Emulator() as emu:
        client = client_for(emu, transport="http")
        stream = client.generate_response(model="m", input="over http", metadata=SLOW)
        steer = deltas_then_steer(stream, 2, "hello")
        assert steer.status == "failed"
        assert steer.error is not None and steer.error.code == "steering_not_supported"
        assert stream.until_done().status == "completed"


def test_steering_waits_for_tool_outputs_then_joins_the_next_turn(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        conv = client.conversation(model="m", tools=[WEATHER], store=False, metadata=SLOW)
        stream = conv.stream("use get_weather for Paris")
        steer = None
        for event in stream:
            if event.type == "response.function_call_arguments.delta" and steer is None:
                steer = stream.steer("and tell me about Rome too")
        assert steer is not None and steer.status == "pending"
        assert steer.required_input and steer.required_input[0]["type"] == "function_call_output"
        response = stream.response
        assert response is not None and response.status == "completed"
        kinds = [e.type for e in stream.events]
        assert kinds.index("response.completed") < kinds.index("response.steer.pending")
        assert kinds[-1] == "response.steer.pending"
        [call] = [item for item in response.output if item["type"] == "function_call"]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
        # The server holds the steering input for the request that continues the response,
        # and puts it first in that request's input: the transcript has it there already, so
        # a saved state keeps it too.
        steer_message = {"type": "message", "role": "user", "content": "and tell me about Rome too"}
        before = conv.history
        assert before[-1] == steer_message
        assert conv.state()["transcript"][-1] == steer_message
        answer = conv.send(output)
        assert conv.history[len(before)] == output
        assert answer.output_text == replayed_answer(emu, before, output)


def test_a_steered_conversation_replays_to_the_same_context(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        conv = client.conversation(model="m", store=False, metadata=SLOW)
        stream = conv.stream("first question")
        deltas_then_steer(stream, 4, "actually, a second question")
        final = stream.until_done()
        history = conv.history
        assert [item.get("role") for item in history] == ["user", "assistant", "user", "assistant"]
        assert history[1]["status"] == "incomplete"
        assert conv.last_response_id == final.id
        # The next turn continues from the successor (a cache hit) ...
        answer = conv.send("a third")
        assert emu.stats()["cache_hits"] >= 1
        # ... and the same transcript replayed in full gives the same answer.
        assert answer.output_text == replayed_answer(
            emu, history, {"role": "user", "content": "a third"}
        )
        # Resumed elsewhere from its saved state (store=False: the transcript), it replays.
        with oaiws.Client(api_key=emu.api_key, base_url=emu.base_url, lanes=lanes) as other:
            state = conv.state()
            resumed = other.conversation(state=state)
            follow = resumed.send("a fourth")
            again = conv.send("a fourth")
            assert follow.output_text == again.output_text


def test_steering_two_lanes_at_once_reaches_each_its_own_response(
    client_for: ClientFactory,
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=True, max_connections=1)
        first = client.generate_response(model="m", input="one", metadata=SLOW)
        second = client.generate_response(model="m", input="two", metadata=SLOW)
        a, b = iter(first), iter(second)
        next(a)
        next(b)
        steer_a = first.steer("steer one")
        steer_b = second.steer("steer two")
        for stream in (first, second):
            stream.until_done()
        assert emu.stats()["connections_total"] == 1
        for stream, steer, text in ((first, steer_a, "steer one"), (second, steer_b, "steer two")):
            assert steer.status == "applied"
            [steered] = stream.steered
            assert steer.response_id == steered.id
            history = [
                {"role": "user", "content": "one" if stream is first else "two"},
                {"role": "assistant", "content": steered.output_text},
            ]
            assert stream.response is not None
            assert stream.response.output_text == expected_text(text, history=history, deltas=40)


def test_steering_over_tls_from_another_thread(
    oaiws_emulator_factory: Any, client_for: ClientFactory, lanes: bool
) -> None:
    emu = oaiws_emulator_factory(tls=True)
    client = client_for(emu, verify=emu.ca_path, lanes=lanes)
    stream = client.generate_response(model="m", input="secure story", metadata=SLOW)
    steers: list[oaiws.Steer] = []
    ready = threading.Event()

    def steerer() -> None:
        ready.wait(10)
        steers.append(stream.steer("secure steer"))

    thread = threading.Thread(target=steerer)
    thread.start()
    for event in stream:
        if event.type == "response.output_text.delta":
            ready.set()
    thread.join(10)
    assert steers and steers[0].status == "applied"
    assert stream.response is not None and stream.response.id == steers[0].successor_id


# -- a server that does not know response.steer ----------------------------------------


class _NoSteeringHandler(socketserver.StreamRequestHandler):
    """Answers one response.create with a slow response, and a response.steer with the
    error a server that does not know the event type sends (no lane named)."""

    def handle(self) -> None:
        self.wfile.write(upgrade_answer(read_upgrade(self.rfile)))
        self.wfile.flush()
        sock = self.request
        _opcode, payload = read_client_frame(sock)
        create = json.loads(payload)
        lane = create.get("stream_id")

        def send(event: dict[str, Any]) -> None:
            if lane is not None:
                event["stream_id"] = lane
            self.wfile.write(text_frame(json.dumps(event).encode()))
            self.wfile.flush()

        response = {"id": "resp_old", "object": "response", "status": "in_progress", "output": []}
        send({"type": "response.created", "sequence_number": 0, "response": response})
        send(
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "output_index": 0,
                "content_index": 0,
                "item_id": "msg_1",
                "delta": "Hello",
            }
        )
        _opcode, payload = read_client_frame(sock)  # the steer
        assert json.loads(payload)["type"] == "response.steer"
        refusal = {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "unsupported_event_type",
                "message": "Unsupported event type 'response.steer'.",
                "param": "type",
            },
        }
        self.wfile.write(text_frame(json.dumps(refusal).encode()))  # names no lane
        self.wfile.flush()
        done = {
            **response,
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Hello world", "annotations": []}],
                }
            ],
        }
        send({"type": "response.completed", "sequence_number": 2, "response": done})
        with contextlib.suppress(ConnectionError, OSError):
            while read_client_frame(sock)[0] != 8:  # until the client's close frame
                pass


def test_a_server_that_does_not_know_steering_fails_the_steer_not_the_response(
    scripted_server: Callable[[Any], str], lanes: bool
) -> None:
    base_url = scripted_server(_NoSteeringHandler)
    with oaiws.Client(api_key="sk-test", base_url=base_url, lanes=lanes) as client:
        stream = client.generate_response(model="m", input="hi")
        steer = deltas_then_steer(stream, 1, "steer me")
        response = stream.until_done()
        assert response.status == "completed" and response.output_text == "Hello world"
        assert steer.status == "failed"
        assert steer.error is not None and steer.error.code == "steering_not_supported"
        assert "Unsupported event type" in steer.error.message
        failed = [e for e in stream.events if e.type == "response.steer.failed"]
        assert len(failed) == 1 and failed[0]["refused_by"]["error"]["code"] == (
            "unsupported_event_type"
        )


def test_a_steer_sent_as_the_response_ends_never_reaches_the_next_request(
    client_for: ClientFactory, lanes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream has read its terminal event and is finishing (about to give its connection
    # back) when another thread steers: the steer must be refused, never sent, or its answer
    # would arrive on a connection that serves the next request.
    finishing = threading.Event()
    steered = threading.Event()
    original = _stream._Request.finish

    def slow_finish(self: Any, data: Any, built: Any = None) -> None:
        finishing.set()
        steered.wait(10)
        original(self, data, built)

    monkeypatch.setattr(_stream._Request, "finish", slow_finish)
    with Emulator(deltas=3) as emu:
        client = client_for(emu, lanes=lanes, max_connections=1)
        stream = client.generate_response(model="m", input="ending")
        box: dict[str, Any] = {}

        def steer_at_the_end() -> None:
            finishing.wait(10)
            try:
                box["steer"] = stream.steer("too late?")
            except oaiws.SteerFailedError as error:
                box["error"] = error
            steered.set()

        racer = threading.Thread(target=steer_at_the_end)
        racer.start()
        assert stream.until_done().status == "completed"
        racer.join(10)
        assert "steer" not in box, "a steer was sent for a stream that had ended"
        assert box["error"].code == "response_already_completed"
        monkeypatch.setattr(_stream._Request, "finish", original)
        after = client.generate_response(model="m", input="after")
        kinds = [event.type for event in after]
        assert not [kind for kind in kinds if kind.startswith("response.steer")]
        assert after.response is not None
        assert after.response.output_text == expected_text("after", deltas=3)
        assert emu.stats()["steers_received"] == 0


def test_a_steer_queued_before_iterating_on_a_lane_is_owed_like_any_other(
    client_for: ClientFactory,
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=True)
        conv = client.conversation(model="m", store=False, metadata=SLOW)
        stream = conv.stream("tell a story")
        steer = stream.steer("make it about cats")  # queued: sent at response.created
        for event in stream:
            if event.type == "response.incomplete":
                break  # leave before the successor, which the server runs anyway
        assert steer.status == "accepted"
        stream.close()
        assert steer.status == "abandoned" and steer.error is None  # the server has it
        assert client.pool_stats()["lanes_abandoned"] == 1, "the lane still owed a successor"
        answer = conv.send("what is 2+2?")
        assert answer.output_text == expected_text("what is 2+2?", deltas=40)


def test_steers_of_a_stream_that_ends_early_fail_instead_of_waiting_forever(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        never_started = client.generate_response(model="m", input="x", metadata=SLOW)
        queued = never_started.steer("hello")
        never_started.close()
        assert queued.wait(5) and queued.status == "failed"
        assert queued.error is not None and queued.error.code == "stream_ended"
        left = client.generate_response(model="m", input="y", metadata=SLOW)
        sent = deltas_then_steer(left, 2, "hello")
        left.close()
        assert sent.wait(5) and sent.status == "abandoned"


class _CrossingHandler(socketserver.StreamRequestHandler):
    """A response that fails (a request-scoped error) just as a steer for it arrives: the
    steer's own answer follows the error. Alongside, a slow "bystander" response."""

    def handle(self) -> None:
        self.wfile.write(upgrade_answer(read_upgrade(self.rfile)))
        self.wfile.flush()
        lock = threading.Lock()
        lanes: dict[str, Any] = {}

        def send(event: dict[str, Any], lane: Any) -> None:
            if lane is not None:
                event["stream_id"] = lane
            with lock:
                self.wfile.write(text_frame(json.dumps(event).encode()))
                self.wfile.flush()

        def created(response_id: str) -> dict[str, Any]:
            return {
                "type": "response.created",
                "response": {"id": response_id, "status": "in_progress", "output": []},
            }

        def bystander(lane: Any) -> None:
            send(created("resp_bystander"), lane)
            for _ in range(10):
                time.sleep(0.02)
                send(
                    {
                        "type": "response.output_text.delta",
                        "item_id": "m",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": "x",
                    },
                    lane,
                )
            done = {"id": "resp_bystander", "status": "completed", "output": []}
            send({"type": "response.completed", "response": done}, lane)

        with contextlib.suppress(ConnectionError, OSError):
            while True:
                opcode, payload = read_client_frame(self.request)
                if opcode == 8:
                    return
                event = json.loads(payload)
                lane = event.get("stream_id")
                if event["type"] == "response.create" and event["input"] == "bystander":
                    threading.Thread(target=bystander, args=(lane,), daemon=True).start()
                elif event["type"] == "response.create":
                    lanes["steered"] = lane
                    send(created(f"resp_{event['input']}"), lane)
                    send(
                        {
                            "type": "response.output_text.delta",
                            "item_id": "m",
                            "output_index": 0,
                            "content_index": 0,
                            "delta": "y",
                        },
                        lane,
                    )
                    if event["input"] == "after":
                        done = {"id": "resp_after", "status": "completed", "output": []}
                        send({"type": "response.completed", "response": done}, lane)
                elif event["type"] == "response.steer":
                    lane = lanes["steered"]
                    error = {
                        "type": "invalid_request_error",
                        "code": "context_length_exceeded",
                        "message": "The context is too long.",
                    }
                    send({"type": "error", "status": 400, "error": error}, lane)
                    failed = {
                        "type": "response.steer.failed",
                        "steer": {"id": "steer_1", "previous_response_id": "resp_a"},
                        "error": {"code": "response_not_active", "message": "gone"},
                    }
                    send(failed, lane)


def test_an_error_crossing_a_steer_leaves_nothing_behind_for_anyone(
    scripted_server: Callable[[Any], str], lanes: bool
) -> None:
    base_url = scripted_server(_CrossingHandler)
    with oaiws.Client(
        api_key="sk-test", base_url=base_url, lanes=lanes, max_connections=2, max_retries=0
    ) as client:
        bystander = client.generate_response(model="m", input="bystander")
        iterator = iter(bystander)
        next(iterator)
        stream = client.generate_response(model="m", input="a")
        with pytest.raises(oaiws.BadRequestError, match="too long"):
            for event in stream:
                if event.type == "response.output_text.delta":
                    stream.steer("steer")
        for _ in iterator:
            pass
        assert bystander.response is not None and bystander.response.status == "completed"
        # The steer's late answer reached nobody: the next request sees its own events.
        after = client.generate_response(model="m", input="after")
        assert [event.type for event in after] == [
            "response.created",
            "response.output_text.delta",
            "response.completed",
        ]


def test_a_stream_whose_start_was_retried_can_still_steer(
    client_for: ClientFactory, lanes: bool
) -> None:
    with Emulator() as emu:
        client = client_for(emu, lanes=lanes)
        client.create_response(model="m", input="warm")
        emu.inject(Fault(error_code="server_error", error_status=500))  # the next request
        stream = client.generate_response(model="m", input="retried", metadata=SLOW)
        steer = deltas_then_steer(stream, 3, "after a retry")
        assert stream.until_done().status == "completed"
        assert steer.status == "applied"
        assert client.pool_stats()["retries"] == 1
