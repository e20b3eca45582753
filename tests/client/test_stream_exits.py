"""Leaving a stream early closes its connection at once; it never returns to the pool."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from waiting import wait_for

import oaiws
import oaiws.testing

SLOW = {"emulator_deltas": "200", "emulator_delta_delay_ms": "5"}


def _assert_discarded_and_usable(emulator: Any, client: oaiws.Client) -> None:
    # The server sees the socket close, so it stops generating (and billing) the response.
    wait_for(lambda: emulator.stats()["connections_open"] == 0)
    assert emulator.stats()["responses_completed"] == 0
    assert client.create_response(model="gpt-5.5", input="next").status == "completed"
    assert emulator.stats()["handshakes"] == 2


def test_break_closes_the_connection(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    stream = client.generate_response(model="gpt-5.5", input="x", metadata=SLOW)
    for event in stream:
        if event.type == "response.output_text.delta":
            break
    stream.close()
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_break_out_of_a_with_block(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    with client.generate_response(model="gpt-5.5", input="x", metadata=SLOW) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_break_from_an_unnamed_stream(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    for event in client.generate_response(model="gpt-5.5", input="x", metadata=SLOW):
        if event.type == "response.output_text.delta":
            break
    # No close(), no with: the stream was dropped when the loop ended.
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_abandoned_generator_is_closed_by_gc(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    stream = client.generate_response(model="gpt-5.5", input="x", metadata=SLOW)
    iterator = iter(stream)
    next(iterator)
    del stream, iterator
    gc.collect()
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_exception_inside_the_loop(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    with pytest.raises(ValueError, match="caller bug"):
        for _event in client.generate_response(model="gpt-5.5", input="x", metadata=SLOW):
            raise ValueError("caller bug")
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_keyboard_interrupt_inside_the_loop(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    stream = client.generate_response(model="gpt-5.5", input="x", metadata=SLOW)
    with pytest.raises(KeyboardInterrupt), stream:
        for _event in stream:
            raise KeyboardInterrupt
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_closing_does_not_block(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    stream = client.generate_response(
        model="gpt-5.5",
        input="x",
        metadata={"emulator_deltas": "50", "emulator_delta_delay_ms": "200"},
    )
    next(stream)
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 0.5
    _assert_discarded_and_usable(oaiws_emulator, client)


def test_a_stream_read_to_its_end_keeps_its_connection(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator, max_connections=1)
    with client.generate_response(model="gpt-5.5", input="x") as stream:
        for event in stream:
            if event.type == "response.completed":
                break
    # Breaking right at the terminal event is a complete read: the connection stays pooled.
    assert client.create_response(model="gpt-5.5", input="x").status == "completed"
    assert oaiws_emulator.stats()["handshakes"] == 1


def test_closing_an_unstarted_stream_sends_nothing(oaiws_emulator: Any, client_for: Any) -> None:
    client = client_for(oaiws_emulator)
    with client.generate_response(model="gpt-5.5", input="x"):
        pass
    assert oaiws_emulator.stats()["handshakes"] == 0


def test_until_done_after_close_says_the_caller_closed_it(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    stream = client.generate_response(model="gpt-5.5", input="x", metadata=SLOW)
    first = next(stream)
    stream.close()
    with pytest.raises(oaiws.StreamClosedError, match="closed before its response ended") as caught:
        stream.until_done()
    assert not isinstance(caught.value, oaiws.APIError), "nothing the server did"
    assert caught.value.events == [first]
    assert caught.value.partial_response is not None
    assert caught.value.response_id == first.response.id

    with client.generate_response(model="gpt-5.5", input="y", metadata=SLOW) as stream:
        for _ in stream:
            break
    with pytest.raises(oaiws.StreamClosedError):
        stream.until_done()


def test_until_done_after_a_failure_raises_that_failure_again(
    oaiws_emulator: Any, client_for: Any
) -> None:
    client = client_for(oaiws_emulator)
    oaiws_emulator.inject(oaiws.testing.Fault(close_after_events=3))
    stream = client.generate_response(model="gpt-5.5", input="x")
    with pytest.raises(oaiws.StreamInterruptedError) as first:
        list(stream)
    with pytest.raises(oaiws.StreamInterruptedError) as again:
        stream.until_done()
    assert again.value is first.value and len(again.value.events) == 3
