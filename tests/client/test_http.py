"""The HTTP transport over real sockets: transport="http", the auto fallback and its memory,
strict WebSocket mode, errors, retries, deadlines, abandoned streams, redirects, TLS, fork."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest
from support import Answer, RawRequest, RawServer

import oaiws
from oaiws import _retry, _transport
from oaiws.testing import Emulator, Fault, expected_text

ClientFactory = Callable[..., oaiws.Client]


def _text(events: Any) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# -- the same surface over HTTP -----------------------------------------------------------


def test_http_transport_never_tries_an_upgrade_and_gives_the_same_events(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    over_http = client_for(oaiws_emulator, transport="http")
    over_ws = client_for(oaiws_emulator, transport="websocket")
    http_events = list(over_http.generate_response(model="m", input="hello"))
    ws_events = list(over_ws.generate_response(model="m", input="hello"))
    assert [e.type for e in http_events] == [e.type for e in ws_events]
    assert _text(http_events) == _text(ws_events) == expected_text("hello")
    assert all(isinstance(e, oaiws.Event) for e in http_events)
    response = over_http.create_response(model="m", input="hello")
    assert response.status == "completed" and response.output_text == expected_text("hello")
    assert oaiws_emulator.stats()["handshakes"] == 1, "only the websocket client upgraded"
    stats = over_http.pool_stats()
    assert stats["http_requests"] == 2 and stats["connections_opened"] == 0


def test_http_streams_reuse_their_tcp_connection_when_read_to_the_end(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    for n in range(5):
        assert client.create_response(model="m", input=f"turn {n}").status == "completed"
    # The emulator counts the TCP connections its HTTP side accepted.
    assert oaiws_emulator.stats()["http_connections"] == 1


def test_an_http_stream_left_midway_is_closed_never_reused(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    slow = {"emulator_deltas": "200", "emulator_delta_delay_ms": "5"}
    with client.generate_response(model="m", input="x", metadata=slow) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    # Its connection was closed with the stream (the rest of its body must never reach
    # another request): the next request comes on a new one.
    response = client.create_response(model="m", input="next")
    assert response.output_text == expected_text("next")
    assert oaiws_emulator.stats()["http_connections"] == 2


# -- auto: the fallback and its memory -----------------------------------------------------


def test_auto_falls_back_to_http_at_once_and_remembers(
    oaiws_emulator: Emulator,
    client_for: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="oaiws")
    client = client_for(oaiws_emulator, max_retries=0)
    oaiws_emulator.inject(Fault(refuse_status=404), on="connection", times=2)
    first = client.create_response(model="m", input="one")
    second = client.create_response(model="m", input="two")
    assert first.status == second.status == "completed"
    stats = oaiws_emulator.stats()
    assert stats["refused_upgrades"] == 1, "the second request did not pay a refused upgrade"
    pool = client.pool_stats()
    assert (pool["http_fallbacks"], pool["http_requests"], pool["retries"]) == (1, 2, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 404" in warnings[0].getMessage()
    assert oaiws_emulator.api_key not in caplog.text

    # Later, WebSocket mode is tried again: here the server refuses once more (no new
    # warning), then it offers WebSocket mode and the client uses it.
    monkeypatch.setattr(_transport, "REPROBE_AFTER", 0.0)
    assert client.create_response(model="m", input="three").status == "completed"
    assert oaiws_emulator.stats()["refused_upgrades"] == 2
    assert client.create_response(model="m", input="four").status == "completed"
    assert oaiws_emulator.stats()["handshakes"] == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
def test_auto_never_falls_back_on_a_real_error(
    oaiws_emulator: Emulator, client_for: ClientFactory, status: int
) -> None:
    client = client_for(oaiws_emulator, max_retries=0)
    oaiws_emulator.inject(Fault(refuse_status=status), on="connection")
    with pytest.raises(oaiws.APIStatusError) as caught:
        client.create_response(model="m", input="x")
    assert caught.value.status_code == status
    assert client.pool_stats()["http_fallbacks"] == 0
    assert oaiws_emulator.stats()["http_requests"] == 0


def test_strict_websocket_mode_raises_the_refusal(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="websocket", max_retries=0)
    oaiws_emulator.inject(Fault(refuse_status=404), on="connection")
    with pytest.raises(oaiws.NotFoundError):
        client.create_response(model="m", input="x")
    assert oaiws_emulator.stats()["http_requests"] == 0


def test_transport_is_validated() -> None:
    with pytest.raises(oaiws.ConfigurationError, match="transport must be one of"):
        oaiws.Client(api_key="sk-x", transport="sse")


# -- errors, retries and deadlines over HTTP ------------------------------------------------


def test_429_with_retry_after_over_http_is_retried_after_the_pause(
    oaiws_emulator: Emulator, client_for: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 30.0)  # only retry-after may set the pause
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 30.0)
    client = client_for(oaiws_emulator, transport="http")
    oaiws_emulator.inject(Fault(error_code="rate_limit_exceeded", retry_after=0.2))
    started = time.monotonic()
    response = client.create_response(model="m", input="x")
    assert response.status == "completed"
    assert 0.2 <= time.monotonic() - started < 5.0
    assert client.pool_stats()["retries"] == 1


def test_http_errors_are_the_documented_exceptions_with_their_ids(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http", max_retries=0)
    oaiws_emulator.inject(Fault(error_code="invalid_value", error_status=400))
    with pytest.raises(oaiws.BadRequestError) as caught:
        client.create_response(model="m", input="x")
    assert caught.value.status_code == 400 and caught.value.code == "invalid_value"
    assert caught.value.request_id is not None
    bad_key = client_for(oaiws_emulator, transport="http", api_key="sk-wrong-secret-key")
    with pytest.raises(oaiws.AuthenticationError) as refused:
        bad_key.create_response(model="m", input="x")
    assert "sk-wrong-secret-key" not in str(refused.value) + repr(refused.value.body)


def test_a_stream_cut_midway_over_http_is_an_interruption_with_what_arrived(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    oaiws_emulator.inject(Fault(close_after_events=4, close_code=None))
    seen: list[oaiws.Event] = []
    with pytest.raises(oaiws.StreamInterruptedError) as caught:
        for event in client.generate_response(model="m", input="x"):
            seen.append(event)
    assert len(caught.value.events) == len(seen) == 4
    assert caught.value.partial_response is not None
    assert oaiws_emulator.stats()["requests"] == 1, "never retried after output"


def test_read_timeout_bounds_the_silence_between_events_over_http(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http", read_timeout=0.3)
    oaiws_emulator.inject(Fault(stall_after_first_event=5.0))
    started = time.monotonic()
    with pytest.raises(oaiws.StreamTimeoutError):
        list(client.generate_response(model="m", input="x"))
    assert time.monotonic() - started < 3.0


def test_the_calls_timeout_bounds_a_request_over_http(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    oaiws_emulator.inject(Fault(stall_before_first_event=5.0))
    started = time.monotonic()
    with pytest.raises(oaiws.APITimeoutError):
        client.create_response(model="m", input="x", timeout=0.4)
    assert time.monotonic() - started < 3.0


def test_http_over_tls_with_a_private_ca(
    oaiws_emulator_factory: Callable[..., Emulator], client_for: ClientFactory
) -> None:
    emu = oaiws_emulator_factory(tls=True)
    client = client_for(emu, transport="http", verify=emu.ca_path)
    assert client.create_response(model="m", input="tls").output_text == expected_text("tls")
    untrusted = client_for(emu, transport="http", max_retries=0)
    with pytest.raises(oaiws.APIConnectionError, match="TLS"):
        untrusted.create_response(model="m", input="x")


# -- redirects: never followed, the key never sent elsewhere -------------------------------


def _redirect_to(location: str) -> Answer:
    def answer(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
        wfile.write(
            f"HTTP/1.1 307 Moved\r\nLocation: {location}\r\nConnection: close\r\n"
            "Content-Length: 5\r\n\r\nmoved".encode()
        )
        return False

    return answer


def _unreachable(request: RawRequest, wfile: Any, stop: threading.Event) -> bool:
    raise AssertionError("a request reached the redirect's target")


def test_an_http_redirect_is_never_followed_and_the_key_stays_home(
    raw_server: Callable[[Answer], RawServer],
) -> None:
    elsewhere = raw_server(_unreachable)
    redirecting = raw_server(_redirect_to(elsewhere.base_url + "/responses?token=SECRET"))
    with oaiws.Client(
        api_key="sk-secret-key", base_url=redirecting.base_url, transport="http", max_retries=0
    ) as client:
        with pytest.raises(oaiws.APIStatusError) as caught:
            client.create_response(model="m", input="x")
        with pytest.raises(oaiws.APIStatusError):
            client.responses.retrieve("resp_1")
    assert caught.value.status_code == 307 and "never followed" in str(caught.value)
    assert "SECRET" not in str(caught.value) and "sk-secret-key" not in str(caught.value)
    assert elsewhere.requests == [], "nothing went to the redirect's target"
    assert len(redirecting.requests) == 2


# -- fork -----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_gives_the_child_its_own_http_session(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    assert client.create_response(model="m", input="parent").status == "completed"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: exit with its verdict, never return into pytest
        code = 1
        try:
            ok = client.create_response(model="m", input="child").status == "completed"
            code = 0 if ok else 1
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    assert os.read(read, 1) == b"\x00"
    os.close(read)
    os.waitpid(pid, 0)
    assert client.create_response(model="m", input="parent again").status == "completed"
    assert oaiws_emulator.stats()["http_connections"] == 2, "the child opened its own"


def test_a_server_without_websocket_mode_is_served_over_http_until_it_gains_one(
    oaiws_emulator_factory: Callable[..., Emulator],
    client_for: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = oaiws_emulator_factory(websocket_status=404)  # a server with HTTP only
    client = client_for(emu)
    strict = client_for(emu, transport="websocket", max_retries=0)
    for n in range(3):
        assert client.create_response(model="m", input=f"q{n}").output_text == expected_text(
            f"q{n}"
        )
    assert emu.stats()["websocket_refused"] == 1, "refused once, then remembered"
    with pytest.raises(oaiws.NotFoundError):
        strict.create_response(model="m", input="x")
    emu.set_websocket_status(None)  # the server gains WebSocket mode
    monkeypatch.setattr(_transport, "REPROBE_AFTER", 0.0)
    assert client.create_response(model="m", input="now").status == "completed"
    assert emu.stats()["handshakes"] == 1
    assert client.pool_stats()["http_fallbacks"] == 1


def test_http_requests_in_flight_are_bounded_by_max_connections(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http", max_connections=2, pool_timeout=0.3)
    slow = {"emulator_deltas": "100", "emulator_delta_delay_ms": "10"}
    first = client.generate_response(model="m", input="a", metadata=slow)
    second = client.generate_response(model="m", input="b", metadata=slow)
    next(first), next(second)  # two HTTP streams in flight: the bound
    with pytest.raises(oaiws.PoolTimeoutError, match="max_connections=2"):
        client.create_response(model="m", input="c")
    first.close()  # its place is free again
    assert client.create_response(model="m", input="c").output_text == expected_text("c")
    second.close()


def test_a_conversation_over_http_replays_when_its_previous_response_is_gone(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    with client.conversation(model="m") as conv:
        first = conv.send("one")
        client.responses.delete(first.id)  # the chain's previous response is gone
        second = conv.send("two")
    assert second.status == "completed"
    # The server answered previous_response_not_found by HTTP status; the turn replayed the
    # transcript at once on the same request's place, as it does over WebSocket.
    assert client.pool_stats()["replays"] == 1
    assert second.output_text == expected_text(
        "two", history=[{"role": "user", "content": "one"}, *first.output]
    )


def test_warm_up_is_websocket_mode_s_and_says_so_over_http(
    oaiws_emulator: Emulator, client_for: ClientFactory
) -> None:
    client = client_for(oaiws_emulator, transport="http")
    with pytest.raises(oaiws.ConfigurationError, match="WebSocket mode"):
        client.warm(model="m")
    assert oaiws_emulator.stats()["requests"] == 0


def test_a_client_that_stays_on_websocket_never_imports_requests(oaiws_emulator: Emulator) -> None:
    # requests is a third of the package's import time: WebSocket users (and cold starts)
    # do not pay for it; the first HTTP request does.
    code = (
        "import sys, oaiws\n"
        "client = oaiws.Client(api_key=sys.argv[1], base_url=sys.argv[2])\n"
        "assert client.create_response(model='m', input='hi').status == 'completed'\n"
        "assert 'requests' not in sys.modules, 'requests imported on the WebSocket path'\n"
        "client.responses.retrieve(client.create_response(model='m', input='hi', store=True).id)\n"
        "assert 'requests' in sys.modules\n"
        "client.close()\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, oaiws_emulator.api_key, oaiws_emulator.base_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_closed_client_makes_no_http_transport(oaiws_emulator: Emulator) -> None:
    client = oaiws.Client(api_key=oaiws_emulator.api_key, base_url=oaiws_emulator.base_url)
    client.close()
    with pytest.raises(oaiws.ClientClosedError):
        client.responses.retrieve("resp_123")
