"""Background responses over HTTP: queued at once, run on the emulator's loop, polled,
streamed from the start or resumed after a sequence number, cancelled, deleted, and stopped
cleanly with the emulator."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Optional

import pytest
import requests
from waiting import wait_for

from oaiws.testing import Emulator, Fault, expected_text

from .conftest import KEY, Client, text_of

AUTH = {"Authorization": f"Bearer {KEY}"}

# Paces that keep a run alive for as long as a test needs it: 30 s before the first delta
# (the run is in progress with an empty message), or 30 s in the queue.
STALLED = {"emulator_deltas": "2", "emulator_delta_delay_ms": "30000"}
QUEUED = {"emulator_first_event_delay_ms": "30000"}


class Sse:
    """The server-sent events of one streamed reply, read as they arrive."""

    def __init__(self, reply: requests.Response) -> None:
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("text/event-stream")
        self.reply = reply
        self.lines: Iterator[bytes] = reply.iter_lines(chunk_size=None)

    def next(self) -> Optional[dict[str, Any]]:
        """The next event, or None at the end of the body."""
        fields: dict[str, str] = {}
        for line in self.lines:
            if not line:
                if fields:
                    break
                continue
            name, _, value = line.decode().partition(": ")
            fields[name] = value
        if not fields:
            return None
        event: dict[str, Any] = json.loads(fields["data"])
        assert fields["event"] == event["type"]
        return event

    def take(self, count: int) -> list[dict[str, Any]]:
        events = [self.next() for _ in range(count)]
        assert None not in events
        return events

    def rest(self) -> list[dict[str, Any]]:
        events = []
        while (event := self.next()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self.reply.close()


def _url(emu: Emulator, suffix: str = "") -> str:
    return f"{emu.base_url}/responses{suffix}"


def post(emu: Emulator, *, stream: bool = False, verify: Any = True, **fields: Any) -> Any:
    body = {"model": "m", "input": "hello", "background": True, **fields}
    if stream:
        body["stream"] = True
    reply = requests.post(
        _url(emu), json=body, headers=AUTH, timeout=5, stream=stream, verify=verify
    )
    return Sse(reply) if stream else reply


def create(emu: Emulator, **fields: Any) -> dict[str, Any]:
    reply = post(emu, **fields)
    assert reply.status_code == 200, reply.text
    response: dict[str, Any] = reply.json()
    return response


def get(emu: Emulator, response_id: str, **params: Any) -> requests.Response:
    return requests.get(
        _url(emu, f"/{response_id}"), params=params, headers=AUTH, timeout=5, stream=True
    )


def snapshot(emu: Emulator, response_id: str) -> dict[str, Any]:
    reply = get(emu, response_id)
    assert reply.status_code == 200, reply.text
    response: dict[str, Any] = reply.json()
    return response


def follow(emu: Emulator, response_id: str, starting_after: Optional[int] = None) -> Sse:
    params: dict[str, Any] = {"stream": "true"}
    if starting_after is not None:
        params["starting_after"] = starting_after
    return Sse(get(emu, response_id, **params))


def cancel(emu: Emulator, response_id: str) -> requests.Response:
    return requests.post(_url(emu, f"/{response_id}/cancel"), headers=AUTH, timeout=5)


def wait_status(emu: Emulator, response_id: str, *statuses: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: (s := snapshot(emu, response_id))["status"] in statuses and s,
        what=f"{response_id} to be {' or '.join(statuses)}",
    )
    return found


def wait_run_stopped(emu: Emulator, response_id: str) -> None:
    """The run's task has ended: it can produce nothing more."""
    run = emu._background.get(response_id)
    assert run is not None and run.task is not None
    wait_for(run.task.done, what="the run's task to end")


def _sequence(events: list[dict[str, Any]]) -> list[int]:
    return [event["sequence_number"] for event in events]


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


# -- create, poll, stream ------------------------------------------------------------------


def test_create_answers_queued_at_once_and_the_run_completes(emu):
    response = create(emu, instructions="sys")
    assert response["status"] == "queued" and response["background"] is True
    assert response["id"].startswith("resp_") and response["output"] == []
    assert response["store"] is True and response["usage"] is None
    done = wait_status(emu, response["id"], "completed")
    assert done["background"] is True and done["created_at"] == response["created_at"]
    assert done["output"][0]["content"][0]["text"] == expected_text("hello", instructions="sys")
    assert done["usage"]["output_tokens"] == 8
    stats = emu.stats()
    assert stats["background_started"] == 1 and stats["responses_completed"] == 1
    assert stats["requests"] == 1


def test_the_snapshot_shows_queued_then_in_progress_with_the_output_so_far(emu):
    queued = create(emu, metadata=QUEUED)
    assert snapshot(emu, queued["id"])["status"] == "queued"
    assert cancel(emu, queued["id"]).json()["status"] == "cancelled"

    running = create(emu, metadata=STALLED)
    current = wait_status(emu, running["id"], "in_progress")
    (message,) = wait_for(lambda: snapshot(emu, running["id"])["output"], what="the message")
    assert message["type"] == "message" and message["status"] == "in_progress"
    assert message["content"][0]["text"] == ""
    assert current["usage"] is None
    cancel(emu, running["id"])


def test_a_streamed_create_sends_the_whole_lifecycle_from_queued(emu):
    events = post(emu, stream=True, instructions="sys").rest()
    assert _types(events)[:4] == [
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert _sequence(events) == list(range(len(events)))
    assert [e["response"]["status"] for e in events[:3]] == ["queued", "queued", "in_progress"]
    assert all(e["response"]["background"] for e in events if "response" in e)
    assert events[-1]["type"] == "response.completed"
    assert text_of(events) == expected_text("hello", instructions="sys")
    response_id = events[0]["response"]["id"]
    assert snapshot(emu, response_id) == events[-1]["response"]


def test_streaming_a_finished_run_replays_it_and_resumes_after_a_sequence_number(emu):
    response = create(emu)
    wait_status(emu, response["id"], "completed")
    everything = follow(emu, response["id"]).rest()
    assert _sequence(everything) == list(range(len(everything)))
    assert everything[-1]["type"] == "response.completed"
    resumed = follow(emu, response["id"], starting_after=6).rest()
    assert resumed == everything[7:]
    assert follow(emu, response["id"], starting_after=len(everything) - 1).rest() == []
    assert follow(emu, response["id"], starting_after=10_000).rest() == []


def test_resuming_a_live_run_gives_the_kept_events_then_the_live_ones(emu):
    slow = {"emulator_deltas": "8", "emulator_delta_delay_ms": "250"}
    first = post(emu, stream=True, metadata=slow)
    seen = first.take(6)  # up to the first delta
    first.close()
    response_id = seen[0]["response"]["id"]
    assert snapshot(emu, response_id)["status"] == "in_progress"  # still generating
    resumed = follow(emu, response_id, starting_after=seen[-1]["sequence_number"]).rest()
    events = seen + resumed
    assert _sequence(events) == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert text_of(events) == expected_text("hello", deltas=8)


def test_a_follower_of_a_stalled_run_gets_the_kept_events_then_waits_for_live_ones(emu):
    response = create(emu, metadata=STALLED)
    wait_for(lambda: len(snapshot(emu, response["id"])["output"]) == 1, what="the message")
    follower = follow(emu, response["id"], starting_after=2)
    kept = follower.take(2)
    assert _types(kept) == ["response.output_item.added", "response.content_part.added"]
    assert cancel(emu, response["id"]).status_code == 200
    (end,) = follower.rest()  # the live end reaches the follower
    assert end["sequence_number"] == 5 and end["response"]["status"] == "cancelled"


def test_disconnecting_the_stream_does_not_stop_the_run(emu):
    stream = post(emu, stream=True, metadata={"emulator_delta_delay_ms": "50"})
    response_id = stream.take(3)[0]["response"]["id"]
    stream.close()
    done = wait_status(emu, response_id, "completed")
    assert done["output"][0]["content"][0]["text"] == expected_text("hello")
    assert emu.stats()["responses_completed"] == 1


def test_a_dropped_stream_fault_cuts_the_wire_not_the_run(emu):
    emu.inject(Fault(close_after_events=4, close_code=None))
    reply = requests.post(
        _url(emu),
        json={"model": "m", "input": "x", "background": True, "stream": True},
        headers=AUTH,
        timeout=5,
        stream=True,
    )
    stream = Sse(reply)
    seen = stream.take(4)
    with pytest.raises(requests.exceptions.RequestException):
        stream.rest()
    response_id = seen[0]["response"]["id"]
    wait_status(emu, response_id, "completed")
    events = seen + follow(emu, response_id, starting_after=3).rest()
    assert _sequence(events) == list(range(len(events)))
    assert text_of(events) == expected_text("x")
    assert emu.stats()["faults_applied"] == 1


def test_frame_faults_break_the_answer_of_a_json_create_not_the_run(emu):
    emu.inject(Fault(malformed_frame=True))
    garbled = post(emu, input="x")
    assert garbled.status_code == 200
    with pytest.raises(ValueError):
        garbled.json()
    emu.inject(Fault(close_after_events=1, close_code=None))
    with pytest.raises(requests.exceptions.RequestException):
        post(emu, input="x")
    wait_for(lambda: emu.stats()["responses_completed"] == 2, what="both runs to complete")
    assert emu.stats()["background_started"] == 2


def test_an_error_fault_fails_the_run(emu):
    emu.inject(Fault(error_code="rate_limit_exceeded"))
    response = create(emu)
    assert response["status"] == "queued"
    failed = wait_status(emu, response["id"], "failed")
    assert failed["error"]["code"] == "rate_limit_exceeded" and failed["output"] == []
    events = follow(emu, response["id"]).rest()
    assert _types(events) == ["response.created", "response.queued", "response.failed"]
    metadata_fault = {"emulator_fault": json.dumps({"error_code": "server_error"})}
    by_metadata = wait_status(emu, create(emu, metadata=metadata_fault)["id"], "failed")
    assert by_metadata["error"]["code"] == "server_error"
    modelled = create(emu, metadata={"emulator_outcome": "failed"})
    assert wait_status(emu, modelled["id"], "failed")["error"]["code"] == "server_error"
    stats = emu.stats()
    assert stats["responses_failed"] == 3 and stats["faults_applied"] == 2
    assert stats["errors_sent"] == 0


def test_incomplete_runs_and_chaining_from_a_background_response(emu):
    capped = create(emu, max_output_tokens=2)
    assert wait_status(emu, capped["id"], "incomplete")["incomplete_details"] == {
        "reason": "max_output_tokens"
    }
    first = create(emu, input="first")
    done = wait_status(emu, first["id"], "completed")
    second = requests.post(
        _url(emu),
        json={"model": "m", "input": "second", "previous_response_id": first["id"]},
        headers=AUTH,
        timeout=5,
    ).json()
    history = [{"role": "user", "content": "first"}, *done["output"]]
    assert second["output"][0]["content"][0]["text"] == expected_text("second", history=history)


def test_input_items_of_a_queued_background_response(emu):
    response = create(emu, input=[{"role": "user", "content": "one"}], metadata=QUEUED)
    items = requests.get(_url(emu, f"/{response['id']}/input_items"), headers=AUTH, timeout=5)
    assert [item["content"][0]["text"] for item in items.json()["data"]] == ["one"]
    cancel(emu, response["id"])


# -- cancel --------------------------------------------------------------------------------


def test_cancel_mid_run_ends_the_followers_and_stops_generating(emu):
    stream = post(emu, stream=True, metadata=STALLED)
    seen = stream.take(5)  # created .. content_part.added: the run waits for its first delta
    response_id = seen[0]["response"]["id"]
    reply = cancel(emu, response_id)
    assert reply.status_code == 200
    cancelled = reply.json()
    assert cancelled["status"] == "cancelled" and cancelled["background"] is True
    assert cancelled["usage"] is None and cancelled["error"] is None
    assert cancelled["output"][0]["status"] == "incomplete"
    (end,) = stream.rest()
    assert end["type"] == "response.incomplete" and end["sequence_number"] == 5
    assert end["response"] == cancelled
    wait_run_stopped(emu, response_id)
    assert snapshot(emu, response_id) == cancelled
    assert follow(emu, response_id).rest() == [*seen, end]
    again = cancel(emu, response_id)  # idempotent
    assert again.status_code == 200 and again.json() == cancelled
    stats = emu.stats()
    assert stats["background_cancelled"] == 1 and stats["responses_completed"] == 0
    assert stats["responses_incomplete"] == 0


def test_cancel_while_queued(emu):
    response = create(emu, metadata=QUEUED)
    cancelled = cancel(emu, response["id"]).json()
    assert cancelled["status"] == "cancelled" and cancelled["output"] == []
    wait_run_stopped(emu, response["id"])
    events = follow(emu, response["id"]).rest()
    assert _types(events) == ["response.created", "response.queued", "response.incomplete"]


def test_a_run_cancelled_before_its_first_event_still_streams_created_and_queued(emu):
    emu.inject(Fault(stall_before_first_event=30.0))
    response = create(emu)
    follower = follow(emu, response["id"], starting_after=1)  # headers now, events later
    assert cancel(emu, response["id"]).json()["status"] == "cancelled"
    assert _types(follower.rest()) == ["response.incomplete"]
    wait_run_stopped(emu, response["id"])
    events = follow(emu, response["id"]).rest()
    assert _types(events) == ["response.created", "response.queued", "response.incomplete"]
    assert _sequence(events) == [0, 1, 2]


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({}, "completed"),
        ({"metadata": {"emulator_outcome": "failed"}}, "failed"),
        ({"max_output_tokens": 1}, "incomplete"),
    ],
)
def test_a_finished_background_response_cannot_be_cancelled(emu, fields, status):
    response = create(emu, **fields)
    wait_status(emu, response["id"], status)
    refused = cancel(emu, response["id"])
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert f"status '{status}'" in error["message"] and "cannot be cancelled" in error["message"]
    assert snapshot(emu, response["id"])["status"] == status


def test_cancel_errors(emu):
    unknown = cancel(emu, "resp_nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Response with id 'resp_nope' not found."
    plain = requests.post(_url(emu), json={"model": "m", "input": "x"}, headers=AUTH, timeout=5)
    refused = cancel(emu, plain.json()["id"])
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "Only responses created with background=true can be cancelled.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    unauthorized = requests.post(_url(emu, "/resp_nope/cancel"), timeout=5)
    assert unauthorized.status_code == 401


def test_delete_cancels_a_running_response_and_forgets_it(emu):
    stream = post(emu, stream=True, metadata=STALLED)
    response_id = stream.take(5)[0]["response"]["id"]
    deleted = requests.delete(_url(emu, f"/{response_id}"), headers=AUTH, timeout=5)
    assert deleted.json() == {"id": response_id, "object": "response.deleted", "deleted": True}
    (end,) = stream.rest()
    assert end["response"]["status"] == "cancelled"
    assert get(emu, response_id).status_code == 404
    assert get(emu, response_id, stream="true").status_code == 404
    assert cancel(emu, response_id).status_code == 404
    assert emu._background.get(response_id) is None
    finished = create(emu)
    wait_status(emu, finished["id"], "completed")
    assert requests.delete(_url(emu, f"/{finished['id']}"), headers=AUTH, timeout=5).ok
    assert get(emu, finished["id"]).status_code == 404


def test_the_oldest_finished_runs_are_forgotten_but_stay_retrievable(emu):
    emu._background._capacity = 2
    first = create(emu, metadata=QUEUED)
    assert cancel(emu, first["id"]).ok
    second = create(emu)
    wait_status(emu, second["id"], "completed")
    third = create(emu, metadata=QUEUED)  # a third run: the oldest finished one is dropped
    assert emu._background.get(first["id"]) is None and len(emu._background) == 2
    assert snapshot(emu, first["id"])["status"] == "cancelled"
    assert cancel(emu, first["id"]).json()["status"] == "cancelled"
    refused = get(emu, first["id"], stream="true")
    assert refused.status_code == 400 and "no longer kept" in refused.json()["error"]["message"]
    chained = requests.post(
        _url(emu),
        json={"model": "m", "input": "x", "previous_response_id": first["id"]},
        headers=AUTH,
        timeout=5,
    )
    assert chained.json()["error"]["code"] == "previous_response_not_found"
    assert requests.delete(_url(emu, f"/{first['id']}"), headers=AUTH, timeout=5).ok
    assert get(emu, first["id"]).status_code == 404
    cancel(emu, third["id"])


# -- refusals ------------------------------------------------------------------------------


def test_background_needs_store(emu):
    refused = post(emu, store=False)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "background"
    assert "store" in error["message"]
    streamed = requests.post(
        _url(emu),
        json={"model": "m", "background": True, "stream": True, "store": False},
        headers=AUTH,
        timeout=5,
    )
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "background"
    not_a_bool = post(emu, background="yes")
    assert not_a_bool.status_code == 400 and not_a_bool.json()["error"]["param"] == "background"
    assert emu.stats()["background_started"] == 0


def test_background_stays_refused_over_the_websocket(emu, connect):
    error = connect().run(input="x", background=True)[-1]
    assert error["type"] == "error" and error["error"]["param"] == "background"


def test_streaming_a_response_that_is_not_background_is_a_400(emu):
    plain = requests.post(_url(emu), json={"model": "m", "input": "x"}, headers=AUTH, timeout=5)
    refused = get(emu, plain.json()["id"], stream="true")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "stream"
    assert "background" in error["message"]
    assert get(emu, plain.json()["id"], stream="false").json() == plain.json()
    assert get(emu, "resp_nope", stream="true").status_code == 404


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"stream": "true", "starting_after": "-1"}, "starting_after"),
        ({"stream": "true", "starting_after": "x"}, "starting_after"),
        ({"stream": "maybe"}, "stream"),
    ],
)
def test_bad_stream_parameters(emu, params, param):
    response = create(emu)
    refused = get(emu, response["id"], **params)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param


def test_a_background_create_is_checked_before_it_is_queued(emu):
    missing = post(emu, previous_response_id="resp_gone")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "previous_response_not_found"
    emu.inject(Fault(hostile_frame="not_json"))
    hostile = post(emu)
    assert hostile.status_code == 400 and "background" in hostile.json()["error"]["message"]
    assert emu.stats()["background_started"] == 0


# -- TLS, shutdown -------------------------------------------------------------------------


def test_background_over_tls(oaiws_emulator_factory):
    emu = oaiws_emulator_factory(tls=True)
    stream = post(emu, stream=True, verify=emu.ca_path)
    seen = stream.take(3)
    stream.close()
    response_id = seen[0]["response"]["id"]
    reply = requests.get(
        _url(emu, f"/{response_id}"),
        params={"stream": "true", "starting_after": 2},
        headers=AUTH,
        timeout=5,
        stream=True,
        verify=emu.ca_path,
    )
    events = seen + Sse(reply).rest()
    assert _sequence(events) == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"


def test_stop_ends_running_runs_cleanly_and_keeps_them(caplog):
    caplog.set_level(logging.DEBUG)
    before = set(threading.enumerate())
    emulator = Emulator().start()
    try:
        stream = post(emulator, stream=True, metadata=STALLED)
        response_id = stream.take(5)[0]["response"]["id"]
        queued = create(emulator, metadata=QUEUED)
        started = time.monotonic()
        emulator.stop()
        assert time.monotonic() - started < 5
        try:
            end = stream.rest()
        except requests.exceptions.RequestException:
            end = []  # the server went away before the end reached this client
        assert all(event["response"]["status"] == "failed" for event in end)
        assert set(threading.enumerate()) == before
        emulator.start()  # like a server restart: what was stored is still there
        for kept in (response_id, queued["id"]):
            failed = snapshot(emulator, kept)
            assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert follow(emulator, response_id).rest()[-1]["type"] == "response.failed"
    finally:
        emulator.stop()
    noisy = [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and record.name.split(".")[0] in ("asyncio", "aiohttp", "oaiws")
    ]
    assert noisy == []


def test_the_process_exits_cleanly_with_a_run_going():
    process = subprocess.Popen(
        [sys.executable, "-m", "oaiws.testing", "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        remote = SimpleNamespace(base_url=process.stdout.readline().strip())
        process.stdout.readline()
        response = create(remote, metadata=STALLED)
        wait_status(remote, response["id"], "in_progress")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0 and stderr == ""
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


def test_the_websocket_is_untouched_by_background_runs(emu):
    running = create(emu, metadata=STALLED)
    client = Client(emu.websocket_url)
    assert client.run(input="x")[-1]["type"] == "response.completed"
    client.close()
    cancel(emu, running["id"])
