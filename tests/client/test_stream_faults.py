"""Each retry rule and each failure class, over real sockets with the emulator's faults."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from waiting import wait_for

import oaiws
from oaiws import _retry
from oaiws._connection import Connection
from oaiws.testing import Fault, expected_text


def text_of(events: Any) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def _retries(client: oaiws.Client) -> int:
    return int(client.pool_stats().get("retries", 0))


def test_handshake_503_with_retry_after_is_retried(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(Fault(refuse_status=503, retry_after=0.2), on="connection")
    started = time.monotonic()
    response = client.create_response(model="gpt-5.5", input="x")
    assert response.status == "completed"
    assert time.monotonic() - started >= 0.2  # the server's retry-after was honoured
    assert _retries(client) == 1
    assert oaiws_emulator.stats()["refused_upgrades"] == 1


def test_rate_limit_error_event_is_retried_then_succeeds(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(Fault(error_code="rate_limit_exceeded"), on="request")
    events = list(client.generate_response(model="gpt-5.5", input="x"))
    assert events[-1].type == "response.completed"
    assert all(event.type != "error" for event in events)
    assert _retries(client) == 1
    assert oaiws_emulator.stats()["requests"] == 2


def test_retries_are_bounded_by_max_retries(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_retries=2)
    oaiws_emulator.inject(Fault(error_code="server_error"), on="request", times=5)
    with pytest.raises(oaiws.InternalServerError) as caught:
        client.create_response(model="gpt-5.5", input="x")
    assert caught.value.status_code == 500
    assert oaiws_emulator.stats()["requests"] == 3


def test_bad_request_error_event_is_raised_at_once(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    with pytest.raises(oaiws.BadRequestError) as caught:
        list(
            client.generate_response(
                model="gpt-5.5", input="x", metadata={"emulator_deltas": "lots"}
            )
        )
    error = caught.value
    assert error.status_code == 400
    assert error.code
    assert error.param == "metadata"
    assert oaiws_emulator.stats()["requests"] == 1
    assert _retries(client) == 0
    # A request-scoped error leaves the connection sound: the next request reuses it.
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"
    assert oaiws_emulator.stats()["handshakes"] == 1


def test_injected_400_is_not_retried(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(Fault(error_code="invalid_value", error_status=400), on="request")
    with pytest.raises(oaiws.BadRequestError):
        client.create_response(model="gpt-5.5", input="x")
    assert oaiws_emulator.stats()["requests"] == 1


def test_bad_key_is_not_retried_and_never_shown(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, api_key="sk-wrong-secret-123")
    with pytest.raises(oaiws.AuthenticationError) as caught:
        client.create_response(model="gpt-5.5", input="x")
    assert caught.value.status_code == 401
    assert oaiws_emulator.stats()["refused_upgrades"] == 1
    assert _retries(client) == 0
    assert "sk-wrong-secret-123" not in str(caught.value)
    assert "sk-wrong-secret-123" not in repr(caught.value)
    assert "sk-wrong-secret-123" not in repr(client)


def test_previous_response_not_found_says_how_to_recover(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    with pytest.raises(oaiws.PreviousResponseNotFoundError) as caught:
        client.create_response(
            model="gpt-5.5", input="x", previous_response_id="resp_unknown", store=False
        )
    error = caught.value
    assert error.status_code == 400
    assert error.param == "previous_response_id"
    assert "full input" in str(error) and "conversation" in str(error)


def test_a_pooled_connection_the_server_closed_is_replaced_before_anything_is_sent(
    oaiws_emulator: Any, client_for: Any
) -> None:
    # Idle care (every ping_interval / 2 here) notices the close; the next request never
    # sees that connection, so even max_retries=0 succeeds without a retry or a resend.
    client = client_for(oaiws_emulator, max_connections=1, max_retries=0, ping_interval=0.05)
    assert client.create_response(model="gpt-5.5", input="one").status == "completed"
    oaiws_emulator.close_all_connections()
    wait_for(lambda: client.pool_stats()["connections_lost"] == 1, what="the close noticed")
    assert client.create_response(model="gpt-5.5", input="two").status == "completed"
    assert oaiws_emulator.stats()["handshakes"] == 2
    stats = client.pool_stats()
    assert (stats["retries"], stats["resends"]) == (0, 0)


def test_connection_limit_reached_is_resent_at_once_on_a_new_connection(
    oaiws_emulator: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new connection cures it, so no pause; the request was on the wire, so it is a retry.
    monkeypatch.setattr(_retry, "INITIAL_BACKOFF", 30.0)
    monkeypatch.setattr(_retry, "MAX_BACKOFF", 30.0)
    client = client_for(oaiws_emulator, max_retries=1)
    oaiws_emulator.inject(Fault(error_code="websocket_connection_limit_reached"), on="request")
    started = time.monotonic()
    events = list(client.generate_response(model="gpt-5.5", input="x"))
    assert time.monotonic() - started < 5.0
    assert events[-1].type == "response.completed"
    stats = oaiws_emulator.stats()
    assert (stats["handshakes"], stats["requests"]) == (2, 2)
    assert _retries(client) == 1


def test_connection_limit_reached_with_no_retries_left_is_raised(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, max_retries=0)
    oaiws_emulator.inject(Fault(error_code="websocket_connection_limit_reached"), on="request")
    with pytest.raises(oaiws.ConnectionLimitReachedError):
        client.create_response(model="gpt-5.5", input="x")
    assert oaiws_emulator.stats()["requests"] == 1


def test_a_connection_closed_as_it_is_handed_to_a_waiter_is_replaced_unseen(
    oaiws_emulator: Any, client_for: Any
) -> None:
    # A connection handed straight from one request to a waiting one is not polled first
    # (see the pool's rules): if the server closed it right after the terminal event, the
    # waiter's request must still go through, on a new connection, at once: a free resend
    # when the send itself failed, else one retry without a pause (it was on the wire).
    client = client_for(oaiws_emulator, max_connections=1)
    fields = {"model": "gpt-5.5", "metadata": {"emulator_deltas": "3"}}
    length = len(list(client.generate_response(input="count", **fields)))
    oaiws_emulator.inject(Fault(close_after_events=length, close_code=None), on="request")
    first = client.generate_response(input="first", **fields)
    events = [next(first)]  # the only connection is now in use
    waiter: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: waiter.setdefault(
            "response", client.create_response(input="second", **fields)
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while client.pool_stats()["requests_waiting"] != 1:
        assert time.monotonic() < deadline, "the second request never waited"
        time.sleep(0.001)
    events += list(first)  # the terminal event: the connection goes to the waiter
    thread.join(10)
    assert events[-1].type == "response.completed" and len(events) == length
    assert waiter["response"].status == "completed"
    assert waiter["response"].output_text == expected_text("second", deltas=3)
    stats = client.pool_stats()
    assert stats["connections_lost"] == 1 and stats["connections_opened"] == 2
    assert stats["retries"] + stats["resends"] == 1


def test_mid_stream_close_raises_stream_interrupted_without_retry(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(Fault(close_after_events=5), on="request")
    seen: list[oaiws.Event] = []
    with pytest.raises(oaiws.StreamInterruptedError) as caught:
        for event in client.generate_response(model="gpt-5.5", input="x"):
            seen.append(event)
    error = caught.value
    assert len(error.events) == len(seen) == 5
    assert [e.type for e in error.events] == [e.type for e in seen]
    partial = error.partial_response
    assert partial is not None and partial.status == "in_progress"
    assert partial.output_text == text_of(seen)
    assert error.response_id == partial.id
    assert oaiws_emulator.stats()["requests"] == 1
    assert _retries(client) == 0
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"


def test_create_response_retries_a_mid_stream_close_whole(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(Fault(close_after_events=5), on="request")
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"
    assert oaiws_emulator.stats()["requests"] == 2
    assert _retries(client) == 1


@pytest.mark.parametrize("fault", [Fault(malformed_frame=True), Fault(binary_frame=True)])
def test_frames_outside_the_protocol_raise_protocol_error(
    oaiws_emulator: Any, client_for: Any, fault: Fault
) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(fault, on="request")
    with pytest.raises(oaiws.ProtocolError):
        list(client.generate_response(model="gpt-5.5", input="x"))
    assert oaiws_emulator.stats()["requests"] == 1
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"


def test_silence_before_the_first_event_times_out_quickly(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, read_timeout=0.3, max_retries=0)
    oaiws_emulator.inject(Fault(stall_before_first_event=5.0), on="request")
    started = time.monotonic()
    with pytest.raises(oaiws.APITimeoutError):
        list(client.generate_response(model="gpt-5.5", input="x"))
    assert 0.25 <= time.monotonic() - started < 2.0


def test_silence_before_the_first_event_is_retried(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, read_timeout=0.3)
    oaiws_emulator.inject(Fault(stall_before_first_event=5.0), on="request")
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"
    assert _retries(client) == 1


def test_silence_mid_stream_is_a_timeout_carrying_the_partial_response(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, read_timeout=0.3)
    oaiws_emulator.inject(Fault(stall_after_first_event=5.0), on="request")
    started = time.monotonic()
    with pytest.raises(oaiws.APITimeoutError) as caught:
        list(client.generate_response(model="gpt-5.5", input="x"))
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value, oaiws.StreamInterruptedError)
    assert len(caught.value.events) == 1
    assert oaiws_emulator.stats()["requests"] == 1


def test_total_timeout_bounds_a_slow_stream(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    slow = {"emulator_deltas": "100", "emulator_delta_delay_ms": "50"}
    started = time.monotonic()
    with pytest.raises(oaiws.APITimeoutError, match=r"timeout of 0\.4s"):
        list(client.generate_response(model="gpt-5.5", input="x", metadata=slow, timeout=0.4))
    assert 0.35 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    with pytest.raises(oaiws.APITimeoutError):
        client.create_response(model="gpt-5.5", input="x", metadata=slow, timeout=0.4)
    assert time.monotonic() - started < 1.5
    # The requests were not retried past their deadline.
    assert oaiws_emulator.stats()["requests"] == 2


def test_pool_wait_is_bounded_and_not_retried(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1, pool_timeout=0.2)
    with client.generate_response(model="gpt-5.5", input="x") as holder:
        next(holder)  # the only connection is now checked out
        started = time.monotonic()
        with pytest.raises(oaiws.PoolTimeoutError):
            client.create_response(model="gpt-5.5", input="y")
        assert 0.15 <= time.monotonic() - started < 1.0
    assert _retries(client) == 0


def test_a_hung_handshake_times_out(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, connect_timeout=0.3, max_retries=0)
    oaiws_emulator.inject(Fault(handshake_delay=1.0), on="connection")
    started = time.monotonic()
    with pytest.raises(oaiws.APITimeoutError):
        client.create_response(model="gpt-5.5", input="x")
    assert time.monotonic() - started < 0.9  # before the server would have answered


def test_a_request_is_on_the_wire_at_most_1_plus_max_retries_times(
    oaiws_emulator: Any, client_for: Any
) -> None:
    # Four pooled connections, and a server that closes each one right after reading the
    # request: each failure happened after the send, so each resend is a counted retry.
    client = client_for(oaiws_emulator, max_connections=4, max_retries=1)
    streams = [client.generate_response(model="gpt-5.5", input=f"warm {n}") for n in range(4)]
    for stream in streams:
        next(stream)  # four connections in use at once
    for stream in streams:
        stream.until_done()
    assert client.pool_stats()["connections_idle"] == 4
    oaiws_emulator.inject(Fault(close_after_events=0, close_code=None), times=20)
    before = oaiws_emulator.stats()["requests"]
    with pytest.raises(oaiws.APIConnectionError):
        client.create_response(model="gpt-5.5", input="x")
    assert oaiws_emulator.stats()["requests"] - before == 2
    assert client.pool_stats()["retries"] == 1


def test_a_failed_send_is_resent_for_free_and_nothing_reached_the_server(
    oaiws_emulator: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(oaiws_emulator, max_retries=0)
    real_send = Connection.send_json
    failures = [oaiws.APIConnectionError("sending failed: broken pipe")]

    def send_json(self: Connection, payload: Any) -> None:
        if failures:
            self.close()  # the socket is gone, as after a reset
            raise failures.pop()
        real_send(self, payload)

    monkeypatch.setattr(Connection, "send_json", send_json)
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"
    stats = client.pool_stats()
    assert (stats["resends"], stats["retries"]) == (1, 0)
    assert oaiws_emulator.stats()["requests"] == 1


def test_errors_raised_on_a_connection_carry_its_upgrade_request_id(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, max_connections=1, max_retries=0)
    oaiws_emulator.inject(Fault(error_code="invalid_value", error_status=400))
    with pytest.raises(oaiws.BadRequestError) as refused:
        client.create_response(model="gpt-5.5", input="x")
    oaiws_emulator.inject(Fault(close_after_events=2))
    with pytest.raises(oaiws.StreamInterruptedError) as interrupted:
        list(client.generate_response(model="gpt-5.5", input="y"))
    # One connection served both (a 400 leaves it in the pool): the id of its upgrade.
    assert refused.value.request_id is not None
    assert refused.value.request_id.startswith("req_")
    assert interrupted.value.request_id == refused.value.request_id
    assert refused.value.request_id in str(interrupted.value)
