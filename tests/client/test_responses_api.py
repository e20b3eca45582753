"""``client.responses`` over real sockets: every REST call and its 404, background responses
(create, poll, stream, resume from a sequence number, cancel), pagination, argument checks,
retries of a REST call, TLS."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import pytest
from support import Answer, RawRequest, RawServer
from waiting import wait_for

import oaiws
from oaiws import _retry
from oaiws.testing import Emulator, expected_text

ClientFactory = Callable[..., oaiws.Client]
SLOW = {"emulator_deltas": "40", "emulator_delta_delay_ms": "20"}


def _text(events: Any) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# -- the REST calls ---------------------------------------------------------------------------


def test_create_retrieve_input_items_delete(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    created = client.responses.create(model="m", input="hello")
    assert isinstance(created, oaiws.Response) and created.status == "completed"
    streamed = client.responses.create(model="m", input="hi", stream=True)
    assert isinstance(streamed, oaiws.ResponseStream)
    assert _text(streamed) == expected_text("hi")

    stored = client.responses.retrieve(created.id)
    assert isinstance(stored, oaiws.Response)
    assert stored.id == created.id and stored.output_text == created.output_text
    items = list(client.responses.input_items.list(created.id))
    assert [item["role"] for item in items] == ["user"]
    assert client.responses.delete(created.id) is None
    for call in (
        lambda: client.responses.retrieve(created.id),
        lambda: client.responses.delete(created.id),
        lambda: client.responses.cancel(created.id),
        lambda: list(client.responses.input_items.list(created.id)),
    ):
        with pytest.raises(oaiws.NotFoundError) as caught:
            call()
        assert caught.value.status_code == 404 and caught.value.request_id is not None
    assert client.pool_stats()["retries"] == 0, "a 404 is never retried"


def test_input_items_are_read_page_after_page(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    turns = [{"role": "user", "content": f"message {n}"} for n in range(5)]
    created = client.responses.create(model="m", input=turns)
    before = oaiws_emulator.stats()["http_requests"]
    pages = client.responses.input_items.list(created.id, limit=2, order="asc")
    assert oaiws_emulator.stats()["http_requests"] == before, "nothing fetched before iterating"
    contents = [item["content"][0]["text"] for item in pages]
    assert contents == [f"message {n}" for n in range(5)]
    assert oaiws_emulator.stats()["http_requests"] - before == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.responses.retrieve(""), "response_id"),
        (lambda c: c.responses.retrieve("../v1/other"), "response_id"),
        (lambda c: c.responses.delete(42), "response_id"),
        (lambda c: c.responses.retrieve("resp_1", starting_after=3), "stream=True"),
        (
            lambda c: c.responses.retrieve("resp_1", stream=True, starting_after=-1),
            "starting_after",
        ),
        (lambda c: c.responses.input_items.list("resp_1", limit=0), "limit"),
        (lambda c: c.responses.input_items.list("resp_1", order="up"), "order"),
        (lambda c: c.responses.retrieve("resp_1", include="x"), "include"),
        (lambda c: c.responses.create(model="m", input="x", stream="yes"), "stream"),
        (lambda c: c.responses.create(model="m", input="x", background=True, store=False), "store"),
        (lambda c: c.responses.cancel("resp_1", timeout=-1), "timeout"),
    ],
)
def test_arguments_are_checked_before_anything_is_sent(
    oaiws_emulator: Emulator, client_for: ClientFactory, call: Any, message: str
) -> None:
    client = client_for(oaiws_emulator)
    with pytest.raises(oaiws.ConfigurationError, match=message):
        call(client)
    assert oaiws_emulator.stats()["http_requests"] == 0


# -- background mode --------------------------------------------------------------------------


def test_a_background_response_is_queued_then_polled_to_its_end(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    queued = client.responses.create(model="m", input="hello", background=True)
    assert isinstance(queued, oaiws.Response) and queued.status == "queued"
    assert queued["background"] is True
    wait_for(
        lambda: client.responses.retrieve(queued.id).status == "completed",  # type: ignore[union-attr]
        what="the background response to finish",
    )
    done = client.responses.retrieve(queued.id)
    assert isinstance(done, oaiws.Response)
    assert done.output_text == expected_text("hello")
    assert oaiws_emulator.stats()["handshakes"] == 0, "background mode is HTTP only"


def test_a_background_stream_can_be_resumed_after_its_last_sequence_number(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    stream = client.responses.create(
        model="m", input="resume me", background=True, stream=True, metadata=SLOW
    )
    assert isinstance(stream, oaiws.ResponseStream)
    first = [next(stream) for _ in range(6)]  # then the connection breaks (we leave)
    stream.close()
    assert [e.type for e in first[:2]] == ["response.created", "response.queued"]
    response_id = first[0].response.id
    last = first[-1].sequence_number
    rest = client.responses.retrieve(response_id, stream=True, starting_after=last)
    assert isinstance(rest, oaiws.ResponseStream)
    events = list(rest)
    assert events[0].sequence_number == last + 1
    assert events[-1].type == "response.completed"
    assert _text(first) + _text(events) == expected_text("resume me", deltas=40)
    assert rest.response is not None and rest.response.status == "completed"


def test_cancelling_a_running_background_response_ends_its_followers(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator)
    queued = client.responses.create(model="m", input="x", background=True, metadata=SLOW)
    assert isinstance(queued, oaiws.Response)
    follower = client.responses.retrieve(queued.id, stream=True)
    assert isinstance(follower, oaiws.ResponseStream)
    seen = [next(follower) for _ in range(4)]
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    seen += list(follower)  # the follower ends with the run, at its cancelled terminal event
    assert follower.response is not None and follower.response.status == "cancelled"
    assert len(seen) < 40
    assert client.responses.cancel(queued.id).status == "cancelled", "idempotent"
    done = client.responses.create(model="m", input="y", background=True)
    assert isinstance(done, oaiws.Response)
    wait_for(lambda: client.responses.retrieve(done.id).status == "completed")  # type: ignore[union-attr]
    with pytest.raises(oaiws.BadRequestError, match="cannot be cancelled"):
        client.responses.cancel(done.id)
    plain = client.responses.create(model="m", input="z")
    assert isinstance(plain, oaiws.Response)
    with pytest.raises(oaiws.BadRequestError):
        client.responses.cancel(plain.id)
    with pytest.raises(oaiws.BadRequestError):
        list(client.responses.retrieve(plain.id, stream=True))  # type: ignore[arg-type]


# -- retries, TLS ---------------------------------------------------------------------------


def _scripted(script: list[tuple[int, Any]]) -> Answer:
    """Each request gets the next (status, body) of ``script``, on a kept-alive connection;
    status 0 closes the connection without an answer."""

    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        status, body = script.pop(0)
        if status == 0:
            return False  # closed unanswered, as a server drops an idle kept-alive connection
        payload = json.dumps(body).encode()
        wfile.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nretry-after: 0\r\n"
            f"x-request-id: req_scripted\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        return True

    return answer


def test_a_rest_call_retries_a_503_and_a_429_but_never_a_400(
    raw_server: Callable[[Answer], RawServer],
) -> None:
    busy = {"error": {"message": "busy", "type": "server_error", "code": "server_error"}}
    server = raw_server(
        _scripted(
            [
                (503, busy),
                (429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
                (200, {"id": "resp_1", "object": "response", "status": "completed"}),
                (400, {"error": {"message": "bad", "type": "invalid_request_error"}}),
            ]
        )
    )
    with oaiws.Client(api_key="sk-x", base_url=server.base_url, max_retries=2) as client:
        started = time.monotonic()
        response = client.responses.retrieve("resp_1")
        assert isinstance(response, oaiws.Response) and response.status == "completed"
        assert time.monotonic() - started < 2.0, "retry-after: 0 was honoured"
        assert client.pool_stats()["retries"] == 2
        with pytest.raises(oaiws.BadRequestError) as caught:
            client.responses.retrieve("resp_1")
        assert caught.value.request_id == "req_scripted"
        assert client.pool_stats()["retries"] == 2
    assert [request.path for request in server.requests] == ["/v1/responses/resp_1"] * 4


def test_rest_calls_over_tls_with_a_private_ca(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    emu = oaiws_emulator_factory(tls=True)
    client = client_for(emu, verify=emu.ca_path, transport="http")
    created = client.responses.create(model="m", input="tls")
    assert isinstance(created, oaiws.Response)
    stored = client.responses.retrieve(created.id)
    assert isinstance(stored, oaiws.Response) and stored.output_text == expected_text("tls")


def test_a_kept_alive_connection_the_server_dropped_is_retried_at_once(
    raw_server: Callable[[Answer], RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 30.0)  # a pause would show
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 30.0)
    ok = {"id": "resp_1", "object": "response", "status": "completed"}
    server = raw_server(_scripted([(200, ok), (0, None), (200, ok)]))
    with oaiws.Client(api_key="sk-x", base_url=server.base_url, max_retries=1) as client:
        assert client.responses.retrieve("resp_1").status == "completed"  # type: ignore[union-attr]
        started = time.monotonic()
        assert client.responses.retrieve("resp_1").status == "completed"  # type: ignore[union-attr]
        assert time.monotonic() - started < 5.0
        assert client.pool_stats()["retries"] == 1
    assert len(server.requests) == 3
